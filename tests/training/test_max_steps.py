"""`max_steps`: the run is exactly that many optimizer steps whatever `n_epochs` says (cut short, or the file
repeated), and the learning-rate schedule spans those steps."""

from __future__ import annotations

import json

import pytest

from loraq.job_spec import Hyperparameters
from tests.facts import chat_rows, write_jsonl
from training.config import TrainingConfig


@pytest.mark.training
@pytest.mark.parametrize(("n_epochs", "max_steps"), [(3, 3), (1, 10)])  # 8 rows, one per step: 24 and 8 steps
def test_a_run_with_max_steps_stops_at_that_step(tmp_path, n_epochs, max_steps):
    from training.sft import train

    hp = Hyperparameters(
        n_epochs=n_epochs, max_steps=max_steps, gradient_accumulation_steps=1, learning_rate=1e-3,
        lr_scheduler_type="linear", warmup_ratio=0.0, logging_steps=1, save_steps=1000,
    )  # fmt: skip
    config = TrainingConfig(
        base_model="loraq-tiny-chat",
        model_cache_dir=str(tmp_path / "cache"),
        train_path=str(write_jsonl(tmp_path / "train.jsonl", chat_rows())),
        output_dir=str(tmp_path / "adapter"),
        checkpoint_dir=str(tmp_path / "checkpoints"),
        progress_path=str(tmp_path / "progress.jsonl"),
        hyperparameters=hp,
    )
    outcome = train(config)
    assert outcome["type"] == "completed" and outcome["steps"] == outcome["total_steps"] == max_steps
    records = [json.loads(line) for line in (tmp_path / "progress.jsonl").read_text().splitlines()]
    assert records[0]["type"] == "started" and records[0]["total_steps"] == max_steps
    rates = [r["learning_rate"] for r in records if r["type"] == "metrics"]
    # Each step's rate on the linear schedule reaching zero at max_steps (not at the end of the epochs).
    assert rates == pytest.approx([1e-3 * (1 - step / max_steps) for step in range(max_steps)])
