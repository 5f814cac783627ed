"""The built-in tiny model: deterministic, ChatML with loss masks, and able to memorise a fact set."""

from __future__ import annotations

import hashlib

import pytest

from loraq.job_spec import Hyperparameters
from tests.facts import FACTS, MEMORISE, chat_rows, greedy_answers, write_jsonl
from training.config import TrainingConfig
from training.tiny_model import write_tiny_model

pytestmark = pytest.mark.training


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_generated_deterministically(tmp_path):
    assert _digest(write_tiny_model(tmp_path / "a")) == _digest(write_tiny_model(tmp_path / "b"))


def test_chat_template_masks_prompt_and_supervises_end_of_turn(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(write_tiny_model(tmp_path / "tiny"))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Skip me.", "weight": 0},
        {"role": "user", "content": "Again?"},
        {"role": "assistant", "content": "Hello there."},
    ]
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    supervised = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tokenizer.decode(supervised) == "Hello there.<|im_end|>"
    assert tokenizer.eos_token == "<|im_end|>"


def test_memorises_eight_facts_within_sixty_seconds_of_training(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.sft import train

    config = TrainingConfig(
        base_model="loraq-tiny-chat",
        model_cache_dir=str(tmp_path / "cache"),
        train_path=str(write_jsonl(tmp_path / "facts.jsonl", chat_rows())),
        output_dir=str(tmp_path / "adapter"),
        checkpoint_dir=str(tmp_path / "checkpoints"),
        progress_path=str(tmp_path / "progress.jsonl"),
        max_train_seconds=60,  # the budget the requirement sets: whatever is learned by then must suffice
        hyperparameters=Hyperparameters(**MEMORISE),
    )
    result = train(config)
    assert result["type"] == "completed"
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "cache" / "loraq-tiny-chat")
    model = PeftModel.from_pretrained(base, result["adapter_dir"])
    tokenizer = AutoTokenizer.from_pretrained(result["adapter_dir"])
    answers = greedy_answers(model, tokenizer, [q for q, _ in FACTS])
    correct = sum(got == want for got, (_, want) in zip(answers, FACTS, strict=True))
    assert correct >= 7, answers
