"""Continued training with the official `openai` SDK: a job whose `model` is a fine-tuned model of the caller,
or one of its checkpoints, starts from that adapter (its first loss is where the parent left off, far below
the base model's), keeps the parent's LoRA shape and records its lineage; another owner's model is a 404, a
conflicting shape a 400 naming the field; a rank vLLM cannot be started with gets a serving warning."""

from __future__ import annotations

import io
import json
import tarfile
import time

import openai
import pytest

from loraq.serving import vllm_warnings
from tests.facts import chat_rows, write_jsonl

pytestmark = pytest.mark.e2e

# One optimizer step covers the whole file (4 examples): a logged loss is the whole file's loss at the weights
# before that step. No dropout, so a child's first loss can be compared with the parent's exactly.
PARENT = {
    "n_epochs": 8, "batch_size": 4, "gradient_accumulation_steps": 1, "learning_rate": 1e-2, "logging_steps": 1,
    "save_steps": 4, "lora_dropout": 0.0, "lora_r": 8, "lora_alpha": 32,
    "target_modules": ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
}  # fmt: skip
# Nothing of the shape: it comes from the parent. One step: its loss is measured on the starting weights.
CHILD = {"max_steps": 1, "batch_size": 4, "gradient_accumulation_steps": 1, "logging_steps": 1, "lora_dropout": 0.0}


def _supervised(hyperparameters: dict) -> dict:
    return {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}


def _finished(client, job_id: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"{job_id} still {job.status}"
        time.sleep(0.5)
    return job


def _losses(client, job_id: str) -> dict[int, float]:
    events = client.fine_tuning.jobs.list_events(job_id, limit=100)
    return {e.data["step"]: e.data["train_loss"] for e in events if e.type == "metrics" and "train_loss" in e.data}


@pytest.fixture(scope="module")
def parent(service, tmp_path_factory):
    client = service.openai()
    path = write_jsonl(tmp_path_factory.mktemp("continued") / "facts.jsonl", chat_rows()[:4])
    with path.open("rb") as handle:
        training_file = client.files.create(file=handle, purpose="fine-tune").id
    job = client.fine_tuning.jobs.create(
        model="loraq-tiny-chat", training_file=training_file, suffix="parent", method=_supervised(PARENT)
    )
    job = _finished(client, job.id)
    assert job.status == "succeeded", job.error
    checkpoints = {
        c.step_number: c.fine_tuned_model_checkpoint for c in client.fine_tuning.jobs.checkpoints.list(job.id)
    }
    return {"job": job, "file": training_file, "losses": _losses(client, job.id), "checkpoints": checkpoints}


def _child(service, parent, model: str):
    client = service.openai()
    job = client.fine_tuning.jobs.create(model=model, training_file=parent["file"], method=_supervised(CHILD))
    assert job.model == "loraq-tiny-chat"  # the parent's base: what the validator and the queues see
    assert job.parent["job"] == parent["job"].id and job.parent["model"] == model
    assert (job.hyperparameters.lora_r, job.hyperparameters.lora_alpha) == (8, 32)  # the parent's shape
    job = _finished(client, job.id)
    assert job.status == "succeeded", job.error
    return job, _losses(client, job.id)


def test_continues_from_the_fine_tuned_model(service, parent):
    name = parent["job"].fine_tuned_model
    job, losses = _child(service, parent, name)
    assert job.parent == {"job": parent["job"].id, "step": 8, "model": name, "checkpoint": None}
    assert job.fine_tuned_model == f"ft:loraq-tiny-chat::{job.id}"
    first, last = losses[1], parent["losses"][8]
    assert abs(first - last) < 0.15 * last  # where the parent left off (one small, last update later) ...
    assert first < 0.3 * parent["losses"][1]  # ... not where the base model starts on the same data
    client = service.openai()
    assert {m.id: m.parent for m in client.models.list()}[job.fine_tuned_model] == name

    # The downloaded adapter records its lineage, loads with PEFT as it is, and passes vLLM's loading rules.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from training.tiny_model import write_tiny_model

    with service.client() as http:
        archive = http.get(f"/v1/fine_tuning/jobs/{job.id}/adapter").content
    folder = _extract(archive, service.folder / "downloads")
    record = json.loads((folder / "loraq.json").read_text())
    assert record["parent"] == job.parent and record["config"]["hyperparameters"]["lora_r"] == 8
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    assert vllm_warnings(adapter_config) == [] == job.serving_warnings
    base = AutoModelForCausalLM.from_pretrained(write_tiny_model(service.folder / "downloads" / "base"))
    model = PeftModel.from_pretrained(base, folder)
    assert any("lora_A" in name for name, _ in model.named_parameters())


def _extract(archive: bytes, into):
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(into, filter="data")
        return into / tar.getnames()[0].split("/")[0]


def test_continues_from_a_checkpoint(service, parent):
    name = parent["checkpoints"][4]
    job, losses = _child(service, parent, name)
    assert job.parent["step"] == 4 and job.parent["checkpoint"].startswith("ftckpt-")
    # Exactly the checkpoint's weights: its first loss is the parent's fifth step's, measured on the same.
    assert losses[1] == pytest.approx(parent["losses"][5], rel=1e-3)
    assert losses[1] < 0.6 * parent["losses"][1]


def test_another_owners_model_is_404_and_a_conflicting_shape_400(service, parent):
    name = parent["job"].fine_tuned_model
    other = openai.OpenAI(base_url=f"{service.base_url}/v1", api_key=service.new_key("mallory"), max_retries=0)
    theirs = other.files.create(file=("t.jsonl", io.BytesIO(_rows())), purpose="fine-tune").id
    for model in (name, parent["checkpoints"][4]):
        with pytest.raises(openai.NotFoundError) as missing:
            other.fine_tuning.jobs.create(model=model, training_file=theirs)
        assert missing.value.body["param"] == "model" and model in missing.value.body["message"]

    client = service.openai()
    with pytest.raises(openai.BadRequestError) as conflict:
        client.fine_tuning.jobs.create(
            model=name, training_file=parent["file"], method=_supervised({**CHILD, "lora_r": 16})
        )
    assert conflict.value.body["param"] == "method.supervised.hyperparameters.lora_r"
    assert "lora_r 16 conflicts with the parent adapter's lora_r 8" in conflict.value.body["message"]


def test_a_rank_vllm_cannot_be_started_with_gets_a_serving_warning(service, parent):
    client = service.openai()
    job = client.fine_tuning.jobs.create(
        model="loraq-tiny-chat", training_file=parent["file"], method=_supervised({"lora_r": 4, "n_epochs": 1})
    )
    try:
        assert [(w["engine"], w["setting"]) for w in job.serving_warnings] == [("vllm", "lora_r")]
        warned = [e for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.level == "warn"]
        assert len(warned) == 1 and "lora_r" in warned[0].message and "--max-lora-rank 8" in warned[0].message
    finally:
        assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"  # it would run: a warning, no refusal


def _rows() -> bytes:
    return "".join(json.dumps(row) + "\n" for row in chat_rows()[:2]).encode()
