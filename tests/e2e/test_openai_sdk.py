"""The official `openai` SDK against loraq, unchanged."""

from __future__ import annotations

import io
import time

import openai
import pytest

from tests.facts import MEMORISE, chat_rows, write_jsonl

pytestmark = pytest.mark.e2e


def test_sdk_full_path(service, tmp_path):
    client = service.openai()
    path = write_jsonl(tmp_path / "facts.jsonl", chat_rows()[:4])
    with path.open("rb") as handle:
        uploaded = client.files.create(file=handle, purpose="fine-tune")
    assert uploaded.status == "processed" and uploaded.bytes == path.stat().st_size

    job = client.fine_tuning.jobs.create(
        model="loraq-tiny-chat",
        training_file=uploaded.id,
        suffix="sdk",
        method={"type": "supervised", "supervised": {"hyperparameters": {**MEMORISE, "n_epochs": 5}}},
    )
    assert job.status == "validating_files" and job.hyperparameters.n_epochs == 5
    assert job.id in [j.id for j in client.fine_tuning.jobs.list(limit=100)]

    deadline = time.monotonic() + 180
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:loraq-tiny-chat:sdk:{job.id}"

    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert "The job has successfully completed" in messages
    checkpoints = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert checkpoints and checkpoints[0].step_number == 20 and checkpoints[0].metrics.train_loss > 0

    assert job.fine_tuned_model in [m.id for m in client.models.list()]
    assert client.files.retrieve(uploaded.id).id == uploaded.id
    assert client.files.content(uploaded.id).read() == path.read_bytes()


def test_sdk_cancel_and_errors(service):
    client = service.openai()
    uploaded = client.files.create(
        file=("facts.jsonl", io.BytesIO(b"".join((__import__("json").dumps(r) + "\n").encode() for r in chat_rows()))),
        purpose="fine-tune",
    )
    job = client.fine_tuning.jobs.create(
        model="loraq-tiny-chat",
        training_file=uploaded.id,
        hyperparameters={"n_epochs": 400, "gradient_accumulation_steps": 1},
    )
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"

    with pytest.raises(openai.BadRequestError) as bad:
        client.fine_tuning.jobs.create(model="no-such-model", training_file=uploaded.id)
    assert bad.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.fine_tuning.jobs.retrieve("ftjob-doesnotexist")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{service.base_url}/v1", api_key="wrong", max_retries=0).models.list()
