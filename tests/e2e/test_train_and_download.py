"""The product path over plain HTTP: upload, create, poll, events, checkpoints, download, load, generate."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.e2e.calls import create_job, events, upload_ok, wait_for
from tests.facts import FACTS, MEMORISE, chat_rows, greedy_answers

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def trained_job(service):
    with service.client() as client:
        file_id = upload_ok(client, chat_rows())
        validation_id = upload_ok(client, chat_rows()[:3])
        response = create_job(
            client,
            file_id,
            validation_file=validation_id,
            suffix="facts",
            seed=7,
            metadata={"team": "qa"},
            hyperparameters=MEMORISE,
        )
        assert response.status_code == 200, response.text
        job = response.json()
        assert job["status"] == "validating_files"
        return wait_for(client, job["id"], timeout=300)  # a 2-core machine shared with other test runs


def test_job_succeeds_with_openai_shaped_record(trained_job):
    job = trained_job
    assert job["status"] == "succeeded", job["error"]
    assert job["fine_tuned_model"] == f"ft:loraq-tiny-chat:facts:{job['id']}"
    assert job["trained_tokens"] > 0
    assert job["seed"] == 7 and job["metadata"] == {"team": "qa"}
    assert job["hyperparameters"]["n_epochs"] == 20 and job["hyperparameters"]["lora_r"] == 16
    assert job["completed_steps"] == job["total_steps"] == 8 * 20
    assert job["finished_at"] >= job["created_at"]


def test_validation_stage_reports_tokens_and_estimates_the_run(client, trained_job):
    """validating_files tokenized both files with the base model's tokenizer; the estimate was exact."""
    job = trained_job
    history = events(client, job["id"])
    reports = {e["data"]["file"]: e["data"] for e in history if e["data"] and "usable_examples" in e["data"]}
    assert reports["training"]["examples"] == reports["training"]["usable_examples"] == len(chat_rows())
    assert reports["validation"]["examples"] == 3
    assert 0 < reports["training"]["supervised_tokens"] < reports["training"]["tokens"]
    assert reports["training"]["long_examples"]["count"] == 0
    estimate = next(e["data"] for e in history if e["message"].startswith("Files validated"))
    assert estimate["estimated_steps"] == job["total_steps"] == 8 * 20
    # Tokens trained on, as counted by the trainer, are the ones the validation counted.
    assert estimate["estimated_tokens"] == job["estimated_tokens"] == job["trained_tokens"]
    messages = [e["message"] for e in history]
    assert messages.index("Job queued") < next(i for i, m in enumerate(messages) if m.startswith("Training started"))
    # The file record carries the report for this base model.
    record = client.get(f"/v1/files/{job['training_file']}").json()
    assert record["token_reports"]["loraq-tiny-chat"] == {k: v for k, v in reports["training"].items() if k != "file"}


def test_events_report_lifecycle_and_metrics(client, trained_job):
    history = events(client, trained_job["id"])
    messages = [e["message"] for e in history]
    assert messages[0].startswith("Created fine-tuning job")
    assert messages[-1] == "The job has successfully completed"
    metrics = [e for e in history if e["type"] == "metrics"]
    train_metrics = [m for m in metrics if "train_loss" in m["data"]]
    assert [m["data"]["step"] for m in train_metrics] == list(range(20, 161, 20))
    for event in train_metrics:
        assert {"step", "total_steps", "train_loss", "learning_rate", "tokens_per_second", "epoch"} <= set(
            event["data"]
        )
        assert event["data"]["total_steps"] == 160
    assert train_metrics[-1]["data"]["train_loss"] < train_metrics[0]["data"]["train_loss"] / 10
    assert any(m["message"].startswith("Step 80: validation loss=") for m in metrics)


def test_checkpoints_listed_with_metrics(client, trained_job):
    page = client.get(f"/v1/fine_tuning/jobs/{trained_job['id']}/checkpoints").json()
    steps = [c["step_number"] for c in page["data"]]
    assert steps == [160, 80]  # newest first; save_steps 80, plus the final step
    assert all(c["metrics"]["train_loss"] > 0 for c in page["data"])
    # With a validation file, each checkpoint also carries the evaluation figures.
    assert all(c["metrics"]["valid_loss"] > 0 for c in page["data"])
    assert page["data"][0]["metrics"]["valid_loss"] < page["data"][1]["metrics"]["valid_loss"]
    assert page["data"][0]["fine_tuned_model_checkpoint"].endswith(":ckpt-step-160")


def test_models_list_includes_the_adapter(client, trained_job):
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert "loraq-tiny-chat" in ids and trained_job["fine_tuned_model"] in ids


def test_adapter_download_supports_etag_and_range(client, trained_job):
    url = f"/v1/fine_tuning/jobs/{trained_job['id']}/adapter"
    full = client.get(url)
    assert full.status_code == 200 and full.headers["content-type"] == "application/gzip"
    etag = full.headers["etag"]
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    part = client.get(url, headers={"Range": "bytes=10-99"})
    assert part.status_code == 206 and part.content == full.content[10:100]
    stale = client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert stale.status_code == 200 and stale.content == full.content


def test_each_checkpoint_adapter_downloads_without_trainer_state(client, trained_job, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from training.tiny_model import write_tiny_model

    job_id = trained_job["id"]
    checkpoint = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"][-1]  # step 80
    url = f"/v1/fine_tuning/jobs/{job_id}/checkpoints/{checkpoint['id']}/adapter"
    response = client.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "application/gzip"
    assert client.get(url, headers={"If-None-Match": response.headers["etag"]}).status_code == 304
    with tarfile.open(fileobj=io.BytesIO(response.content)) as archive:
        names = {Path(n).name for n in archive.getnames()}
        archive.extractall(tmp_path, filter="data")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    assert not [n for n in names if n.startswith(("optimizer", "scheduler", "rng_state", "trainer_state"))]
    folder = tmp_path / f"{job_id}-step-80"
    base = AutoModelForCausalLM.from_pretrained(write_tiny_model(tmp_path / "base"))
    PeftModel.from_pretrained(base, folder)  # loads as an adapter
    missing = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints/ftckpt-nope/adapter")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "checkpoint_id"


def test_downloaded_adapter_learned_the_facts(client, trained_job, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.tiny_model import write_tiny_model

    archive = client.get(f"/v1/fine_tuning/jobs/{trained_job['id']}/adapter").content
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(tmp_path, filter="data")
    adapter_dir = tmp_path / trained_job["id"]
    names = {p.name for p in adapter_dir.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
        "loraq.json",
    } <= names
    record = json.loads((adapter_dir / "loraq.json").read_text())
    assert record["config"]["hyperparameters"]["learning_rate"] == 2e-3
    assert len(record["datasets"]["train_sha256"]) == 64 and "torch" in record["versions"]

    weights = load_file(adapter_dir / "adapter_model.safetensors")
    assert weights and all("lora_" in name for name in weights)  # only LoRA weights ship
    assert all(w.abs().sum() > 0 for n, w in weights.items() if "lora_B" in n)  # B starts at zero: it moved

    base_dir = write_tiny_model(tmp_path / "base")  # deterministic: the same base the server trained on
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = PeftModel.from_pretrained(base, adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    answers = greedy_answers(model, tokenizer, [q for q, _ in FACTS])
    assert answers == [a for _, a in FACTS]
    after = dict(model.get_base_model().named_parameters())
    for name, value in before.items():
        module, _, leaf = name.rpartition(".")
        key = name if name in after else f"{module}.base_layer.{leaf}"  # LoRA wraps the targeted layers
        assert key in after, name
        assert (after[key] == value).all(), f"base weight {name} changed"


def test_result_files_hold_step_metrics_and_samples(client, trained_job):
    import csv

    job = client.get(f"/v1/fine_tuning/jobs/{trained_job['id']}").json()
    assert len(job["result_files"]) == 2
    files = {f["id"]: f for f in client.get("/v1/files").json()["data"]}
    names = {files[i]["filename"]: i for i in job["result_files"]}
    assert set(names) == {"step_metrics.csv", "samples.jsonl"}
    assert all(files[i]["purpose"] == "fine-tune-results" for i in job["result_files"])

    rows = list(csv.DictReader(io.StringIO(client.get(f"/v1/files/{names['step_metrics.csv']}/content").text)))
    assert [int(r["step"]) for r in rows if r["train_loss"]] == list(range(20, 161, 20))
    assert [int(r["step"]) for r in rows if r["valid_loss"]] == [80, 160]

    samples = [json.loads(line) for line in client.get(f"/v1/files/{names['samples.jsonl']}/content").text.splitlines()]
    assert len(samples) == 3
    for sample, (question, answer) in zip(samples, FACTS, strict=False):
        assert sample["prompt"] == [{"role": "user", "content": question}] and sample["reference"] == answer
        assert sample["adapter"] == answer and sample["base"] != answer  # the adapter learned; the base never knew
