"""`loraq train` with the seed script's flags, and `loraq models build-tiny`, run as commands."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.facts import chat_rows, write_jsonl

pytestmark = pytest.mark.training


def test_loraq_train_accepts_the_seed_flags(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows())
    evaluation = write_jsonl(tmp_path / "eval.jsonl", chat_rows()[:2])
    out = tmp_path / "output"
    command = [
        sys.executable, "-m", "cli", "train", "--base_model", "loraq-tiny-chat", "--train_path", str(train),
        "--eval_path", str(evaluation), "--output_dir", str(out), "--max_seq_length", "256",
        "--learning_rate", "1e-3", "--num_train_epochs", "2", "--batch_size", "2",
        "--gradient_accumulation_steps", "2", "--save_steps", "2", "--logging_steps", "1", "--seed", "3",
        "--lora_r", "8", "--lora_alpha", "16", "--lora_dropout", "0.0", "--model_cache_dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "adapter saved to" in result.stdout
    assert {"adapter_config.json", "adapter_model.safetensors", "loraq.json", "checkpoint-2"} <= {
        p.name for p in out.iterdir()
    }
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["r"] == 8 and adapter_config["lora_alpha"] == 16
    record = json.loads((out / "loraq.json").read_text())
    hp = record["config"]["hyperparameters"]
    assert (hp["n_epochs"], hp["batch_size"], hp["gradient_accumulation_steps"], hp["max_seq_length"]) == (2, 2, 2, 256)
    assert record["config"]["seed"] == 3 and record["metrics"]["steps"] == 4
    assert record["metrics"]["valid_loss"] > 0  # evaluated at each checkpoint on --eval_path


def test_build_tiny_command(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cli", "models", "build-tiny", str(tmp_path / "tiny")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "tiny").iterdir()}


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_4bit_without_cuda_is_a_clear_error_not_a_traceback(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows()[:2])
    command = [
        sys.executable, "-m", "cli", "train", "--base_model", "loraq-tiny-chat", "--train_path", str(train),
        "--output_dir", str(tmp_path / "out"), "--load_in_4bit", "--model_cache_dir", str(tmp_path / "cache"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "loraq train: unsupported_hardware: hyperparameters.load_in_4bit needs a worker with an NVIDIA GPU" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr
