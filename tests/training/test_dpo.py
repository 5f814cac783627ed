"""DPO on the LoRA adapter: the reference is the base model with the adapter disabled (no second copy), the
metrics carry the reward margin and preference accuracy, and a run stopped for a handoff and resumed from its
checkpoint ends with the adapter of an uninterrupted run."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from loraq.job_spec import DpoHyperparameters
from tests.facts import preference_rows, write_jsonl
from training.checkpoints import newest_complete
from training.config import TrainingConfig

pytestmark = pytest.mark.training

HP = DpoHyperparameters(
    beta=0.1, n_epochs=2, gradient_accumulation_steps=1, learning_rate=1e-3, save_steps=100, logging_steps=4
)


def _config(tmp_path, name, **extra) -> TrainingConfig:
    return TrainingConfig(
        **{
            "method": "dpo",
            "base_model": "loraq-tiny-chat",
            "model_cache_dir": str(tmp_path / "cache"),
            "train_path": str(tmp_path / "prefs.jsonl"),
            "output_dir": str(tmp_path / name / "adapter"),
            "checkpoint_dir": str(tmp_path / name / "checkpoints"),
            "progress_path": str(tmp_path / name / "progress.jsonl"),
            "hyperparameters": HP,
            **extra,
        }
    )


def test_the_reference_is_the_base_model_under_the_adapter(tmp_path):
    from peft import PeftModel

    from training.dpo import build_dpo_trainer
    from training.progress import ProgressCallback, ProgressWriter
    from training.sft import resolve_base_model

    write_jsonl(tmp_path / "prefs.jsonl", preference_rows())
    config = _config(tmp_path, "built")
    trainer = build_dpo_trainer(config, resolve_base_model(config), ProgressCallback(ProgressWriter(None), None))
    assert trainer.ref_model is None and isinstance(trainer.model, PeftModel)
    assert list(trainer.model.peft_config) == ["default"]  # no reference adapter: the base model is the reference
    assert trainer.beta == 0.1 and trainer.args.max_length == HP.max_seq_length
    assert len(trainer.train_dataset) == len(preference_rows())  # the validated rows, as they were tokenized


def test_dpo_trains_reports_rewards_and_resumes_exactly(tmp_path):
    from training.dpo import build_dpo_trainer
    from training.sft import train

    write_jsonl(tmp_path / "prefs.jsonl", preference_rows())
    straight = train(_config(tmp_path, "straight"), build_dpo_trainer)
    assert straight["type"] == "completed" and straight["steps"] == 16

    records = [json.loads(line) for line in (tmp_path / "straight" / "progress.jsonl").read_text().splitlines()]
    metrics = [r for r in records if r["type"] == "metrics"]
    assert [m["step"] for m in metrics] == [4, 8, 12, 16]
    assert all(
        {"rewards_margin", "rewards_accuracy", "rewards_chosen", "rewards_rejected"} <= m.keys() for m in metrics
    )
    assert metrics[-1]["rewards_margin"] > metrics[0]["rewards_margin"] and metrics[-1]["rewards_accuracy"] == 1.0
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] < 0.7  # from about log 2, DPO's loss at the start
    loraq_json = json.loads((tmp_path / "straight" / "adapter" / "loraq.json").read_text())
    assert loraq_json["config"]["method"] == "dpo" and loraq_json["config"]["hyperparameters"]["beta"] == 0.1
    assert loraq_json["metrics"]["rewards_accuracy"] == 1.0

    stop = tmp_path / "stop"
    stop.write_text("handoff")  # present from the start: the run checkpoints after its first step and stops
    first = train(_config(tmp_path, "interrupted", stop_path=str(stop)), build_dpo_trainer)
    assert first["type"] == "stopped" and first["reason"] == "handoff" and first["steps"] == 1
    checkpoint = newest_complete(tmp_path / "interrupted" / "checkpoints")
    assert checkpoint.name == "checkpoint-1"
    stop.unlink()
    resumed = train(_config(tmp_path, "interrupted", resume_from=str(checkpoint)), build_dpo_trainer)
    assert resumed["type"] == "completed" and resumed["steps"] == 16

    a = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "interrupted" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any(name.endswith("lora_B.weight") for name in a)
    assert any(a[name].abs().sum() > 0 for name in a if name.endswith("lora_B.weight"))  # it learned
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)


def test_a_validation_file_is_evaluated_with_rewards_and_sampled(tmp_path):
    from training.dpo import build_dpo_trainer
    from training.results import SAMPLE_COUNT
    from training.sft import train

    rows = preference_rows()
    write_jsonl(tmp_path / "prefs.jsonl", rows)
    write_jsonl(tmp_path / "valid.jsonl", rows[:4])
    hp = HP.model_copy(update={"n_epochs": 1, "save_steps": 4})
    result = train(_config(tmp_path, "run", eval_path=str(tmp_path / "valid.jsonl"), hyperparameters=hp),
                   build_dpo_trainer)  # fmt: skip
    assert result["type"] == "completed" and result["steps"] == 8
    records = [json.loads(line) for line in (tmp_path / "run" / "progress.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if r["type"] == "evaluation"]
    assert [e["step"] for e in evaluations] == [4, 8]
    assert all({"eval_loss", "eval_rewards/margins", "eval_rewards/accuracies"} <= e.keys() for e in evaluations)
    final = json.loads((tmp_path / "run" / "adapter" / "loraq.json").read_text())["metrics"]
    assert final["valid_loss"] == evaluations[-1]["eval_loss"]
    assert final["valid_rewards_accuracy"] == evaluations[-1]["eval_rewards/accuracies"]
    assert final["valid_rewards_margin"] == evaluations[-1]["eval_rewards/margins"]
    samples = [json.loads(line) for line in (tmp_path / "run" / "adapter" / "results" / "samples.jsonl").open()]
    assert len(samples) == SAMPLE_COUNT and samples[0]["reference"] == rows[0]["preferred_output"][0]["content"]
    assert {"base", "adapter"} <= samples[0].keys()


@pytest.mark.slow
def test_two_processes_learn_what_one_learns(tmp_path):
    """DDP (torchrun, gloo on the CPU): the same global batch split over two processes, the same adapter."""
    from tests.training.test_distributed import _assert_same_adapter, _losses, _run
    from training.dpo import build_dpo_trainer
    from training.sft import train

    data = write_jsonl(tmp_path / "prefs.jsonl", preference_rows())
    hp = HP.model_copy(update={"gradient_accumulation_steps": 4, "logging_steps": 1})
    train(_config(tmp_path, "one", hyperparameters=hp), build_dpo_trainer)
    flags = [f"--{name}={value}" for name, value in hp.model_dump(exclude_defaults=True).items()]
    _run(
        [sys.executable, "-m", "cli", "train", "--method", "dpo", "--base_model", "loraq-tiny-chat",
         "--model_cache_dir", str(tmp_path / "cache"), "--train_path", str(data), "--output_dir", str(tmp_path / "two"),
         "--nproc_per_node", "2", *flags]
    )  # fmt: skip
    _assert_same_adapter(tmp_path / "one" / "adapter", tmp_path / "two")
    one = _losses(tmp_path / "one" / "progress.jsonl")
    assert len(one) == 4 and _losses(tmp_path / "two" / "progress.jsonl") == pytest.approx(one, rel=1e-4)


def test_dpo_continuing_an_sft_adapter_starts_from_it_with_it_as_the_reference(tmp_path):
    """The common path, SFT then DPO: the DPO run starts from the SFT adapter's weights, keeps a copy of them
    ("ref") as its reference instead of the bare base model, and saves only the trained adapter."""
    from peft import PeftModel

    from loraq.job_spec import Hyperparameters
    from tests.facts import chat_rows
    from training.dpo import build_dpo_trainer
    from training.sft import build_trainer, resolve_base_model, train

    write_jsonl(tmp_path / "prefs.jsonl", preference_rows())
    write_jsonl(tmp_path / "chat.jsonl", chat_rows())
    sft_hp = Hyperparameters(n_epochs=2, gradient_accumulation_steps=1, learning_rate=1e-3)
    sft = _config(tmp_path, "sft", method="supervised", train_path=str(tmp_path / "chat.jsonl"), hyperparameters=sft_hp)
    assert train(sft, build_trainer)["type"] == "completed"
    start = sft.output_dir

    config = _config(tmp_path, "dpo", init_adapter=start)
    trainer = build_dpo_trainer(config, resolve_base_model(config), silent_callback())
    assert trainer.ref_model is None and isinstance(trainer.model, PeftModel)
    assert set(trainer.model.peft_config) == {"default", "ref"}
    sft_weights = load_file(f"{start}/adapter_model.safetensors")
    state = trainer.model.state_dict()
    for name, tensor in sft_weights.items():  # both adapters start as the SFT adapter
        default = name.replace(".weight", ".default.weight")
        reference = name.replace(".weight", ".ref.weight")
        assert torch.equal(state[default], tensor) and torch.equal(state[reference], tensor), name

    assert train(config, build_dpo_trainer)["type"] == "completed"
    saved = tmp_path / "dpo" / "adapter"
    assert not (saved / "ref").exists()
    trained = load_file(saved / "adapter_model.safetensors")
    assert trained.keys() == sft_weights.keys()
    assert any(not torch.equal(trained[name], sft_weights[name]) for name in trained)


def silent_callback():
    """A progress callback that reports nowhere."""
    from training.progress import ProgressCallback, ProgressWriter

    return ProgressCallback(ProgressWriter(None), None)
