"""Continued training in the training program: a run that starts from another run's checkpoint starts from
its weights (its first loss is the parent's loss at the next step), a continued run stopped and resumed from
its own checkpoint ends where an uninterrupted one does, and its adapter folder loads with PEFT unchanged and
passes vLLM's loading rules."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from loraq.job_spec import Hyperparameters
from loraq.serving import vllm_warnings
from tests.facts import chat_rows, write_jsonl
from training.checkpoints import newest_complete
from training.config import TrainingConfig

pytestmark = pytest.mark.training

# One optimizer step covers the whole file (4 examples), so a logged loss is the whole file's loss at the
# weights before that step; no dropout, so it is exactly reproducible.
PARENT = Hyperparameters(
    n_epochs=8, batch_size=4, gradient_accumulation_steps=1, learning_rate=1e-2, logging_steps=1, save_steps=5,
    lora_dropout=0.0, lora_r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
)  # fmt: skip
# The child asks for nothing of the shape: it comes from the parent's adapter.
CHILD = Hyperparameters(
    max_steps=3, batch_size=4, gradient_accumulation_steps=1, learning_rate=1e-3, logging_steps=1, save_steps=100,
    lora_dropout=0.0,
)  # fmt: skip


def _losses(progress) -> dict[int, float]:
    records = [json.loads(line) for line in progress.read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in records if r["type"] == "metrics"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from training.sft import train

    tmp = tmp_path_factory.mktemp("continued")
    data = write_jsonl(tmp / "train.jsonl", chat_rows()[:4])

    def config(name, hp, **extra):
        return TrainingConfig(
            base_model="loraq-tiny-chat", model_cache_dir=str(tmp / "cache"), train_path=str(data),
            output_dir=str(tmp / name / "adapter"), checkpoint_dir=str(tmp / name / "checkpoints"),
            progress_path=str(tmp / name / "progress.jsonl"), hyperparameters=hp, **extra,
        )  # fmt: skip

    train(config("parent", PARENT))
    start = str(tmp / "parent" / "checkpoints" / "checkpoint-5")
    extra = {"init_adapter": start, "extra_metadata": {"parent": {"job": "ftjob-parent", "step": 5}}}
    straight = train(config("straight", CHILD, **extra))
    stop = tmp / "stop"
    stop.write_text("handoff")  # present from the start: the child checkpoints after its first step and stops
    first = train(config("interrupted", CHILD, stop_path=str(stop), **extra))
    assert first["type"] == "stopped" and first["steps"] == 1
    stop.unlink()
    own = newest_complete(tmp / "interrupted" / "checkpoints")
    resumed = train(config("interrupted", CHILD, resume_from=str(own), **extra))
    return {"tmp": tmp, "straight": straight, "resumed": resumed}


def test_a_child_starts_from_its_parents_weights(runs):
    tmp = runs["tmp"]
    parent, child = _losses(tmp / "parent" / "progress.jsonl"), _losses(tmp / "straight" / "progress.jsonl")
    # The child's first step is measured on checkpoint-5's weights, as the parent's sixth step was.
    assert child[1] == pytest.approx(parent[6], rel=1e-4)
    assert child[1] < 0.5 * parent[1]  # far below the base model's loss on the same data


def test_a_resumed_child_continues_from_its_own_checkpoint(runs):
    tmp = runs["tmp"]
    assert runs["straight"]["steps"] == runs["resumed"]["steps"] == 3
    a = load_file(tmp / "straight" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp / "interrupted" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5)
    assert _losses(tmp / "interrupted" / "progress.jsonl")[3] == pytest.approx(
        _losses(tmp / "straight" / "progress.jsonl")[3], rel=1e-4
    )


def test_the_child_keeps_the_parents_shape_records_its_lineage_and_loads_with_peft(runs):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = runs["tmp"] / "straight" / "adapter"
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    assert (adapter_config["r"], adapter_config["lora_alpha"]) == (8, 32)
    assert sorted(adapter_config["target_modules"]) == ["down_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert vllm_warnings(adapter_config) == []  # what loraq.serving checks, on what training wrote
    record = json.loads((folder / "loraq.json").read_text())
    assert record["parent"] == {"job": "ftjob-parent", "step": 5}
    assert record["config"]["hyperparameters"]["lora_r"] == 8  # the adapter's shape, not the default 16

    base = AutoModelForCausalLM.from_pretrained(runs["tmp"] / "cache" / "loraq-tiny-chat")
    model = PeftModel.from_pretrained(base, folder)  # the folder as it is, nothing renamed or removed
    saved = load_file(folder / "adapter_model.safetensors")
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(loaded) == len(saved) > 0
    parent = load_file(runs["tmp"] / "parent" / "checkpoints" / "checkpoint-5" / "adapter_model.safetensors")
    assert any(not torch.equal(saved[k], parent[k]) for k in saved)  # trained further
