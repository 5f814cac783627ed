"""The speedups setting: `auto` is every trick on a CPU and none on CUDA, names are checked, and the plain
path (no tricks: the GPU default) trains padding-free batches correctly."""

from __future__ import annotations

import itertools

import pytest
import torch
from pydantic import ValidationError

from training.config import TrainingConfig
from training.speedups import SPEEDUPS, resolve_speedups


def config(**fields) -> TrainingConfig:
    paths = {"train_path": "t.jsonl", "output_dir": "o", "checkpoint_dir": "c"}
    return TrainingConfig(base_model="loraq-tiny-chat", **{**paths, **fields})


def test_auto_is_every_trick_on_a_cpu_and_none_on_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_speedups(config().speedups) == set(SPEEDUPS)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_speedups(config().speedups) == set()
    assert resolve_speedups("all") == set(SPEEDUPS) and resolve_speedups("none") == set()
    assert resolve_speedups(["scored_rows"]) == {"scored_rows"}


def test_explicit_names_are_checked():
    assert config(speedups=["fused_lora", "scored_rows"]).speedups == ["fused_lora", "scored_rows"]
    assert config(speedups="fused_lora, scored_rows").speedups == ["fused_lora", "scored_rows"]  # as an env var
    assert config(speedups=["none"]).speedups == "none" and config(speedups=[]).speedups == []
    with pytest.raises(ValidationError, match=r"unknown speedup 'warp_drive'.*fused_lora"):
        config(speedups=["fused_lora", "warp_drive"])
    with pytest.raises(ValidationError, match="unknown speedup 'auto'"):
        config(speedups=["auto", "fused_lora"])
    with pytest.raises(ValueError, match="unknown speedup 'warp_drive'"):
        resolve_speedups(["warp_drive"])


def test_plain_sdpa_keeps_packed_examples_apart(tmp_path):
    """Without packed_sdpa (the plain path where FlashAttention 2 is missing), transformers' SDPA masks each
    example of a padding-free row to itself, from the position ids, as long as no cache is kept (TRL's
    compute_loss passes use_cache=False)."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from training.tiny_model import write_tiny_model

    model = AutoModelForCausalLM.from_pretrained(write_tiny_model(tmp_path / "tiny"), attn_implementation="sdpa")
    examples = [{"input_ids": [(n * 37 + i) % 700 + 3 for i in range(length)]} for n, length in enumerate([7, 19, 4])]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(examples)
    with torch.no_grad():
        together = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        for start, end in itertools.pairwise(batch["cu_seq_lens_q"].tolist()):
            alone = model(input_ids=batch["input_ids"][:, start:end]).logits[0]
            torch.testing.assert_close(together[start:end], alone, atol=1e-5, rtol=1e-4)


@pytest.mark.training
def test_none_builds_the_plain_trainer_which_learns_and_all_installs_every_trick(tmp_path):
    from loraq.job_spec import Hyperparameters
    from tests.facts import chat_rows, write_jsonl
    from training.progress import ProgressCallback, ProgressWriter
    from training.sft import build_trainer
    from training.speedups.fused_lora import FusedLoraLinear
    from training.tiny_model import write_tiny_model

    base = write_tiny_model(tmp_path / "tiny")
    rows = write_jsonl(tmp_path / "t.jsonl", chat_rows())
    hp = Hyperparameters(n_epochs=6, learning_rate=2e-3, gradient_accumulation_steps=2, logging_steps=1)

    def built(speedups):
        settings = config(speedups=speedups, train_path=str(rows), checkpoint_dir=str(tmp_path / speedups))
        settings.hyperparameters = hp
        return build_trainer(settings, str(base), ProgressCallback(ProgressWriter(None), None))

    every = built("all")
    assert every.speedups >= set(SPEEDUPS) - {"hub_kernels"}  # hub_kernels needs the `kernels` package
    assert every.model.get_base_model().config._attn_implementation == "loraq_packed_sdpa"
    assert any(isinstance(m, FusedLoraLinear) for m in every.model.modules()) and every.last_layer is not None
    plain = built("none")
    assert plain.speedups == set() and plain.last_layer is None
    assert plain.model.get_base_model().config._attn_implementation == "sdpa"
    assert not any(isinstance(m, FusedLoraLinear) for m in plain.model.modules())
    plain.train()
    losses = [row["loss"] for row in plain.state.log_history if "loss" in row]
    assert losses[-1] < losses[0] * 0.7, losses
