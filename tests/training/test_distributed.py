"""One training program on two processes (torchrun, gloo on the CPU) learns what one process learns with the
same global batch, keeps every rank's RNG state in its checkpoints, and resumes from them exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from loraq.job_spec import Hyperparameters
from tests.facts import FACTS, chat_rows, write_jsonl
from training.checkpoints import MARKER
from training.config import TrainingConfig

REPO = Path(__file__).resolve().parents[2]

# One long conversation among short ones: the rank that draws it needs more micro-batches in a step than
# the other (the token budget is one longest example), so the padding passes that keep the ranks in step run.
ROWS = chat_rows(FACTS[:7]) + chat_rows([("Tell me everything about Zorbania.", " ".join(a for _, a in FACTS * 3))])
HYPERPARAMETERS = {
    "n_epochs": 2, "gradient_accumulation_steps": 4, "learning_rate": 1e-3, "lora_dropout": 0.0,  # no dropout:
    "logging_steps": 1, "save_steps": 2,  # each process would draw its own masks, and only those would differ
}  # fmt: skip


def test_a_step_must_split_evenly_over_the_processes():
    with pytest.raises(ValidationError, match="cannot be split evenly over 3 GPUs"):
        TrainingConfig(base_model="m", train_path="t", output_dir="o", checkpoint_dir="c", nproc_per_node=3)
    TrainingConfig(
        base_model="m", train_path="t", output_dir="o", checkpoint_dir="c", nproc_per_node=2,
        hyperparameters=Hyperparameters(batch_size=1, gradient_accumulation_steps=2),
    )  # fmt: skip


def test_the_command_line_names_the_flag(tmp_path):
    from training.flags import build_parser, config_from_args

    parser = build_parser()
    args = parser.parse_args(["--train_path", "t", "--output_dir", str(tmp_path), "--nproc_per_node", "3"])
    with pytest.raises(SystemExit):
        config_from_args(parser, args)


def _train_command(data: Path, output: Path, cache: Path, processes: int, *extra: str) -> list[str]:
    flags = [f"--{name}={value}" for name, value in HYPERPARAMETERS.items()]
    return [
        sys.executable, "-m", "cli", "train", "--base_model", "loraq-tiny-chat", "--model_cache_dir", str(cache),
        "--train_path", str(data), "--output_dir", str(output), "--nproc_per_node", str(processes), *flags, *extra,
    ]  # fmt: skip


def _run(command: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _assert_same_adapter(a_dir: Path, b_dir: Path) -> None:
    a = load_file(a_dir / "adapter_model.safetensors")
    b = load_file(b_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        # The same sums, added in another order (two processes, other micro-batches): float32 rounding only.
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def _losses(progress: Path) -> list[float]:
    records = [json.loads(line) for line in progress.read_text().splitlines()]
    return [r["train_loss"] for r in records if r["type"] == "metrics"]


def _one_process(data: Path, output: Path, cache: Path) -> list[float]:
    """The reference: the same run in this process; its losses per step."""
    from training.sft import train

    train(
        TrainingConfig(
            base_model="loraq-tiny-chat", model_cache_dir=str(cache), train_path=str(data), output_dir=str(output),
            checkpoint_dir=str(output), progress_path=str(output / "progress.jsonl"),
            hyperparameters=Hyperparameters(**HYPERPARAMETERS),
        )
    )  # fmt: skip
    losses = _losses(output / "progress.jsonl")
    assert len(losses) == 4  # 8 examples, 4 a step, 2 epochs: the steps of any number of processes
    return losses


@pytest.mark.training
def test_two_processes_learn_what_one_learns(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    one = _one_process(data, tmp_path / "one", tmp_path / "cache")
    _run(_train_command(data, tmp_path / "two", tmp_path / "cache", 2))

    _assert_same_adapter(tmp_path / "one", tmp_path / "two")
    assert _losses(tmp_path / "two" / "progress.jsonl") == pytest.approx(one, rel=1e-4)  # the step's, both ranks
    # Every rank's RNG state is in the checkpoint, and its completeness marker lists them.
    checkpoint = tmp_path / "two" / "checkpoint-2"
    listed = json.loads((checkpoint / MARKER).read_text())["files"]
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(listed)


@pytest.mark.training
@pytest.mark.slow
def test_two_sharded_processes_learn_what_one_learns(tmp_path):
    """FSDP2 (gloo runs it on the CPU too): the weights gathered from both ranks' shards are the adapter."""
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    one = _one_process(data, tmp_path / "one", tmp_path / "cache")
    _run(_train_command(data, tmp_path / "sharded", tmp_path / "cache", 2, "--strategy", "fsdp"))

    _assert_same_adapter(tmp_path / "one", tmp_path / "sharded")
    assert _losses(tmp_path / "sharded" / "progress.jsonl") == pytest.approx(one, rel=1e-4)


@pytest.mark.training
@pytest.mark.slow
def test_two_processes_resume_exactly(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", ROWS)
    cache = tmp_path / "cache"
    _run(_train_command(data, tmp_path / "straight", cache, 2))
    stop = tmp_path / "stop"
    stop.write_text("handoff")  # ends the run at step 1 after a checkpoint
    config = TrainingConfig(
        base_model="loraq-tiny-chat", model_cache_dir=str(cache), train_path=str(data),
        output_dir=str(tmp_path / "resumed" / "adapter"), checkpoint_dir=str(tmp_path / "resumed" / "checkpoints"),
        progress_path=str(tmp_path / "resumed" / "progress.jsonl"), stop_path=str(stop), nproc_per_node=2,
        hyperparameters=Hyperparameters(**HYPERPARAMETERS),
    )  # fmt: skip
    config_path = tmp_path / "job.json"
    config_path.write_text(config.model_dump_json())
    _run([sys.executable, "-m", "training.run", "--config", str(config_path)])
    assert (tmp_path / "resumed" / "checkpoints" / "checkpoint-1" / "rng_state_1.pth").exists()
    stop.unlink()
    checkpoint = tmp_path / "resumed" / "checkpoints" / "checkpoint-1"
    config_path.write_text(config.model_copy(update={"resume_from": str(checkpoint)}).model_dump_json())
    _run([sys.executable, "-m", "training.run", "--config", str(config_path)])
    _assert_same_adapter(tmp_path / "straight", tmp_path / "resumed" / "adapter")
