"""Padding-free batches: attention stays inside each example, micro-batches respect the token budget and
never cut an example, and the hardware decisions (checkpointing, 4-bit) say what they do."""

from __future__ import annotations

import itertools

import pytest
import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from training.hardware import HardwareError, activation_bytes, quantization_config, use_gradient_checkpointing
from training.packing import split_packed_batch, token_budget
from training.speedups.attention import PACKED_SDPA


def packed(lengths: list[int]) -> dict:
    """A padding-free batch from TRL's own collator, examples of the given lengths (labels = ids)."""
    examples = []
    for number, length in enumerate(lengths):
        ids = [(number * 37 + i) % 700 + 3 for i in range(length)]
        examples.append({"input_ids": ids, "labels": ids})
    return DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)


def test_budget_is_a_padded_batch_of_the_longest_example():
    assert token_budget([5, 40, 12], batch_size=2) == 80


@pytest.mark.parametrize(
    ("lengths", "budget", "expected"),
    [
        ([10, 10, 10], 30, [[10, 10, 10]]),
        ([10, 10, 10], 20, [[10, 10], [10]]),
        ([10, 25, 5, 5], 20, [[10], [25], [5, 5]]),
        ([3, 3, 3, 3, 3], 7, [[3, 3], [3, 3], [3]]),
    ],
    ids=["fits", "split", "oversize-example-alone", "many-small"],
)
def test_micro_batches_keep_examples_whole(lengths, budget, expected):
    batch = packed(lengths)
    parts = split_packed_batch(batch, budget)
    assert [p["cu_seq_lens_q"].diff().tolist() for p in parts] == expected
    assert torch.equal(torch.cat([p["input_ids"] for p in parts], dim=1), batch["input_ids"])
    assert torch.equal(torch.cat([p["labels"] for p in parts], dim=1), batch["labels"])
    for part in parts:
        assert part["cu_seq_lens_q"][0] == 0 and part["cu_seq_lens_q"][-1] == part["input_ids"].shape[1]
        assert part["max_length_q"] == max(part["cu_seq_lens_q"].diff().tolist())
        assert part["position_ids"][0, 0] == 0 and part["seq_idx"][0, 0] == 0
    # Every example's first token is unsupervised (nothing predicts it), in every micro-batch.
    assert sum(int((p["labels"] != -100).sum()) for p in parts) == sum(lengths) - len(lengths)


@pytest.fixture(scope="module")
def tiny_model():
    import tempfile
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    from training.tiny_model import write_tiny_model

    folder = write_tiny_model(Path(tempfile.mkdtemp()) / "tiny")
    return AutoModelForCausalLM.from_pretrained(folder, attn_implementation=PACKED_SDPA).eval()


def test_packed_examples_see_only_themselves(tiny_model):
    """Logits of each example inside a packed row equal its logits alone: no cross-example attention."""
    batch = packed([7, 19, 4])
    inputs = {k: batch[k] for k in ("input_ids", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k")}
    with torch.no_grad():
        together = tiny_model(**inputs, max_length_q=19, max_length_k=19).logits[0]
        bounds = batch["cu_seq_lens_q"].tolist()
        for start, end in itertools.pairwise(bounds):
            alone = tiny_model(input_ids=batch["input_ids"][:, start:end]).logits[0]
            torch.testing.assert_close(together[start:end], alone, atol=1e-5, rtol=1e-4)


def test_micro_batches_give_the_whole_steps_gradient(tiny_model):
    """Splitting a step and normalising each part by the step's supervised tokens adds up to the same
    gradient as the step in one forward pass (what PackedSFTTrainer relies on)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(tiny_model, LoraConfig(r=4, target_modules=["q_proj", "down_proj"], lora_dropout=0.0))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    batch = packed([9, 14, 6, 11])
    supervised = int((batch["labels"][:, 1:] != -100).sum())

    def gradients(parts):
        model.zero_grad()
        for part in parts:
            logits = model(input_ids=part["input_ids"], position_ids=part["position_ids"],
                           cu_seq_lens_q=part["cu_seq_lens_q"], cu_seq_lens_k=part["cu_seq_lens_k"],
                           max_length_q=part["max_length_q"], max_length_k=part["max_length_k"]).logits  # fmt: skip
            loss = torch.nn.functional.cross_entropy(
                logits[0, :-1], part["labels"][0, 1:], ignore_index=-100, reduction="sum"
            )
            (loss / supervised).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    whole = gradients([batch])
    split = gradients(split_packed_batch(batch, budget=20))
    for name in whole:
        torch.testing.assert_close(split[name], whole[name], atol=1e-6, rtol=1e-4)
    model.unload()


def test_checkpointing_is_on_only_when_activations_crowd_memory(monkeypatch):
    from training import hardware
    from training.tiny_model import build_tiny_model

    model = build_tiny_model(vocab_size=768, eos_token_id=1, pad_token_id=0)
    per_token = activation_bytes(model.config, 1, torch.float32)
    monkeypatch.setattr(hardware, "available_memory_bytes", lambda: per_token * 10_000)
    assert use_gradient_checkpointing("auto", model, 1_000, torch.float32) is False
    assert use_gradient_checkpointing("auto", model, 8_000, torch.float32) is True
    assert use_gradient_checkpointing(True, model, 1, torch.float32) is True
    assert use_gradient_checkpointing(False, model, 10**9, torch.float32) is False


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a worker without CUDA")
def test_4bit_base_weights_are_refused_without_cuda():
    assert quantization_config(False, torch.float32) is None
    with pytest.raises(HardwareError, match="load_in_4bit needs a worker with an NVIDIA GPU"):
        quantization_config(True, torch.float32)
