"""The training program's command line (`python -m training.run`, `loraq train`): flags generated from the
config models, the seed script's flags, a config file, one-line errors; and `loraq models build-tiny`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from loraq.job_spec import Hyperparameters
from tests.facts import chat_rows, write_jsonl
from training.config import TrainingConfig
from training.flags import SEED_DEFAULT_MODEL, build_parser, config_from_args


def flags_config(*argv: str) -> TrainingConfig:
    parser = build_parser()
    return config_from_args(parser, parser.parse_args(list(argv)))


def test_every_hyperparameter_has_a_flag_with_its_help():
    actions = {action.dest: action for action in build_parser()._actions}
    for name, field in Hyperparameters.model_fields.items():
        assert name in actions, f"no flag for Hyperparameters.{name}"
        assert f"--{name}" in actions[name].option_strings
        assert field.description and field.description in actions[name].help.replace("%%", "%")


def test_seed_flags_map_onto_the_config(tmp_path):
    config = flags_config(
        "--train_path", "t.jsonl", "--output_dir", str(tmp_path / "out"), "--num_train_epochs", "2",
        "--eval_path", "", "--seed", "3", "--gradient_checkpointing", "false", "--train_on_inputs",
        "--load_in_4bit", "--trust_remote_code", "--model_cache_dir", "cache", "--lora_alpha", "8",
        "--target_modules", "q_proj", "v_proj", "--lr_scheduler_type", "linear", "--warmup_ratio", "0.1",
    )  # fmt: skip
    hp = config.hyperparameters
    assert config.base_model == SEED_DEFAULT_MODEL and config.eval_path is None and config.seed == 3
    assert config.output_dir == config.checkpoint_dir == str((tmp_path / "out").resolve())
    assert config.progress_path == str((tmp_path / "out").resolve() / "progress.jsonl")
    assert config.trust_remote_code and config.model_cache_dir == "cache"
    assert (hp.n_epochs, hp.gradient_checkpointing, hp.train_on_inputs, hp.load_in_4bit) == (2, False, True, True)
    assert (hp.lora_alpha, hp.target_modules, hp.lr_scheduler_type, hp.warmup_ratio) == (
        8, ["q_proj", "v_proj"], "linear", 0.1
    )  # fmt: skip
    defaults = flags_config("--train_path", "t.jsonl", "--output_dir", "o")
    assert defaults.hyperparameters == Hyperparameters() and defaults.seed == 42 and defaults.speedups == "auto"
    assert flags_config("--train_path", "t", "--output_dir", "o", "--train_on_inputs", "false").hyperparameters == (
        Hyperparameters()
    )
    chosen = flags_config("--train_path", "t", "--output_dir", "o", "--speedups", "scored_rows", "fused_lora")
    assert chosen.speedups == ["scored_rows", "fused_lora"]


def test_a_config_file_is_read_as_the_worker_writes_it(tmp_path):
    config = TrainingConfig(
        base_model="loraq-tiny-chat", train_path="t.jsonl", output_dir="o", checkpoint_dir="c", speedups="none"
    )
    path = tmp_path / "job.json"
    path.write_text(config.model_dump_json())
    assert flags_config("--config", str(path)) == config


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--lora_r", "x"], "argument --lora_r: invalid int value: 'x'"),
        (["--lora_r", "0"], "argument --lora_r: Input should be greater than or equal to 1"),
        (["--num_train_epochs", "0"], "argument --n_epochs/--num_train_epochs: Input should be greater than"),
        (["--gradient_checkpointing", "sometimes"], "argument --gradient_checkpointing: invalid choice"),
        (["--speedups", "warp_drive"], "argument --speedups: unknown speedup 'warp_drive'"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_flag(argv, expected, tmp_path):
    command = [sys.executable, "-m", "training.run", "--train_path", "t.jsonl", "--output_dir", str(tmp_path), *argv]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.training
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


@pytest.mark.training
def test_build_tiny_command(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "cli", "models", "build-tiny", str(tmp_path / "tiny")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "tiny").iterdir()}


@pytest.mark.training
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
