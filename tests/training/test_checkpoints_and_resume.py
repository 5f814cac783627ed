"""Checkpoint completeness, and that a run stopped for a handoff and resumed learns what an
uninterrupted run learns."""

from __future__ import annotations

import pytest

from loraq.job_spec import Hyperparameters
from tests.facts import assert_same_adapter, chat_rows, write_jsonl
from training.checkpoints import mark_complete, newest_complete, remove_incomplete
from training.config import TrainingConfig


def _checkpoint(root, step, complete=True):
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"x" * step)
    if complete:
        mark_complete(folder, step)
    return folder


def test_only_marked_intact_checkpoints_count(tmp_path):
    _checkpoint(tmp_path, 10)
    twenty = _checkpoint(tmp_path, 20)
    _checkpoint(tmp_path, 30, complete=False)  # the process died while writing it
    assert newest_complete(tmp_path) == twenty
    (twenty / "adapter_model.safetensors").write_bytes(b"truncated")  # a file changed after marking
    assert newest_complete(tmp_path).name == "checkpoint-10"
    removed = {p.name for p in remove_incomplete(tmp_path)}
    assert removed == {"checkpoint-20", "checkpoint-30"}
    assert newest_complete(tmp_path / "missing") is None


@pytest.mark.training
def test_handoff_then_resume_matches_an_uninterrupted_run(tmp_path):
    from training.sft import train

    data = write_jsonl(tmp_path / "train.jsonl", chat_rows())
    hp = Hyperparameters(
        n_epochs=2, gradient_accumulation_steps=1, learning_rate=1e-3, save_steps=100, logging_steps=4, lora_dropout=0.0
    )

    def config(name, **extra):
        return TrainingConfig(
            base_model="loraq-tiny-chat",
            model_cache_dir=str(tmp_path / "cache"),
            train_path=str(data),
            output_dir=str(tmp_path / name / "adapter"),
            checkpoint_dir=str(tmp_path / name / "checkpoints"),
            hyperparameters=hp,
            **extra,
        )

    straight = train(config("straight"))
    assert straight["steps"] == 16

    stop = tmp_path / "stop"
    stop.write_text("handoff")  # present from the start: the run checkpoints after its first step and stops
    first = train(config("interrupted", stop_path=str(stop)))
    assert first["type"] == "stopped" and first["reason"] == "handoff" and first["steps"] == 1
    checkpoint = newest_complete(tmp_path / "interrupted" / "checkpoints")
    assert checkpoint.name == "checkpoint-1"
    stop.unlink()
    resumed = train(config("interrupted", resume_from=str(checkpoint)))
    assert resumed["type"] == "completed" and resumed["steps"] == 16

    assert_same_adapter(tmp_path / "straight" / "adapter", tmp_path / "interrupted" / "adapter")
