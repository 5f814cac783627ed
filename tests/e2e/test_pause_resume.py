"""Pause and resume, and the job list's filters, with the official `openai` SDK against the running service."""

from __future__ import annotations

import io
import re
import tarfile
import time
import uuid
from pathlib import Path

import openai
import pytest

from tests.e2e.calls import events, first_running, upload_ok
from tests.facts import assert_same_adapter, chat_rows

pytestmark = pytest.mark.e2e

# 8 examples x 3 epochs = 24 steps; no checkpoint but the pause's; no dropout, so that two runs of the same job
# give the same tensors (as in tests/training/test_checkpoints_and_resume.py).
SHORT = {
    "n_epochs": 3, "learning_rate": 2e-3, "gradient_accumulation_steps": 1, "logging_steps": 4, "save_steps": 1000,
    "lora_dropout": 0.0,
}  # fmt: skip


def sdk_wait(client: openai.OpenAI, job_id: str, until: tuple[str, ...], timeout: float = 240):
    deadline = time.monotonic() + timeout
    while (job := client.fine_tuning.jobs.retrieve(job_id)).status not in until:
        assert time.monotonic() < deadline, f"{job_id} still {job.status}"
        time.sleep(0.3)
    return job


def adapter_folder(http, job_id: str, folder: Path) -> Path:
    archive = http.get(f"/v1/fine_tuning/jobs/{job_id}/adapter")
    assert archive.status_code == 200, archive.text
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        tar.extractall(folder, filter="data")
    return folder / job_id


def messages(http, job_id: str) -> list[str]:
    return [e["message"] for e in events(http, job_id)]


def test_pause_frees_the_worker_and_resume_continues_exactly(service, client, tmp_path):
    sdk = service.openai()
    file_id = upload_ok(client, chat_rows())
    method = {"type": "supervised", "supervised": {"hyperparameters": SHORT}}
    pair = [sdk.fine_tuning.jobs.create(model="loraq-tiny-chat", training_file=file_id, method=method) for _ in "ab"]
    # One worker: whichever job it takes first is paused while it runs; the other, paused while it waits in the
    # queue, is resumed first and runs uninterrupted on the freed worker: the reference.
    running, waiting = (job["id"] for job in first_running(client, [job.model_dump() for job in pair]))

    assert sdk_wait(sdk, waiting, ("queued",)).status == "queued"
    assert sdk.fine_tuning.jobs.pause(waiting).status == "paused"  # a queued job pauses at once
    # While its model loads: it checkpoints after its first step (or the step it has reached) and pauses.
    asked = sdk.fine_tuning.jobs.pause(running)
    assert asked.status == "running" and asked.to_dict()["pause_requested"] is True

    paused = sdk_wait(sdk, running, ("paused", "succeeded", "failed"))
    assert paused.status == "paused", paused.error
    step = paused.to_dict()["completed_steps"]
    assert 1 <= step < 24 and paused.to_dict()["pause_requested"] is False
    assert f"Job paused at step {step} (checkpointed)" in messages(client, running)[-1]

    # The worker is free: the other job runs to the end while the first stays paused.
    assert sdk.fine_tuning.jobs.resume(waiting).status == "queued"
    reference = sdk_wait(sdk, waiting, ("succeeded", "failed", "cancelled"))
    assert reference.status == "succeeded", reference.error
    assert sdk.fine_tuning.jobs.retrieve(running).status == "paused"
    held_log = messages(client, waiting)
    # Its first queue message reached the worker while it was paused (or was overtaken by its resume's): it ran once.
    assert sum(m.startswith("Fine-tuning job started") for m in held_log) == 1
    assert held_log.index(next(m for m in held_log if m.startswith("Job resumed by key"))) < held_log.index(
        next(m for m in held_log if m.startswith("Fine-tuning job started"))
    )
    assert re.search(r"^Job paused by key '[^']+' \(key-\w+\)$", "\n".join(held_log), re.MULTILINE)

    assert sdk.fine_tuning.jobs.resume(running).status == "queued"
    resumed = sdk_wait(sdk, running, ("succeeded", "failed", "cancelled"))
    assert resumed.status == "succeeded", resumed.error
    log = events(client, running)
    resumes = [e["data"]["resumed_from_step"] for e in log if "resumed_from_step" in (e["data"] or {})]
    assert resumes == [step]  # the second attempt started from the pause's checkpoint
    assert any(e["message"].startswith("Pause requested by key") for e in log)
    assert any(e["message"].startswith("Job resumed by key") and f"at step {step}" in e["message"] for e in log)
    paused_once, uninterrupted = (adapter_folder(client, j, tmp_path / j) for j in (running, waiting))
    assert_same_adapter(paused_once, uninterrupted)

    with pytest.raises(openai.BadRequestError) as finished:
        sdk.fine_tuning.jobs.pause(running)
    assert finished.value.body["code"] == "job_finished" and finished.value.body["param"] == "job_id"
    with pytest.raises(openai.BadRequestError) as not_paused:
        sdk.fine_tuning.jobs.resume(waiting)
    assert not_paused.value.body["code"] == "job_not_paused"


def test_list_filters_by_metadata_and_status(service, client):
    sdk = service.openai()
    run = uuid.uuid4().hex[:12]
    file_id = upload_ok(client, chat_rows()[:1])

    def create(**metadata: str):
        return sdk.fine_tuning.jobs.create(
            model="loraq-tiny-chat", training_file=file_id, metadata={"run": run, **metadata}, hyperparameters={}
        ).id

    kept, held, other = create(kind="keep", note='a "quoted" value'), create(kind="hold"), create(kind="keep")
    for job_id in (held, other):
        sdk.fine_tuning.jobs.pause(job_id)  # pending while its files are validated, then paused
    sdk.fine_tuning.jobs.cancel(kept)
    for job_id in (held, other):
        assert sdk_wait(sdk, job_id, ("paused",)).status == "paused"
    with service.client(service.new_key("filters-other-owner")) as stranger:
        foreign = stranger.post(
            "/v1/fine_tuning/jobs",
            json={"model": "loraq-tiny-chat", "training_file": upload_ok(stranger, chat_rows()[:1]),
                  "metadata": {"run": run, "kind": "keep"}},
        ).json()["id"]  # fmt: skip
        stranger.post(f"/v1/fine_tuning/jobs/{foreign}/cancel")
        own = stranger.get("/v1/fine_tuning/jobs", params={"metadata[run]": run}).json()["data"]
        assert [job["id"] for job in own] == [foreign]  # another owner's jobs never match

    ids = lambda page: [job.id for job in page]  # noqa: E731  (every page, following `after` cursors)
    # The deployments' key is an admin's, which sees every owner's jobs: the stranger's too.
    assert ids(sdk.fine_tuning.jobs.list(metadata={"run": run}, limit=1)) == [foreign, other, held, kept]
    assert ids(sdk.fine_tuning.jobs.list(metadata={"run": run, "kind": "keep"})) == [foreign, other, kept]
    assert ids(sdk.fine_tuning.jobs.list(metadata={"note": 'a "quoted" value', "run": run})) == [kept]
    paused = sdk.fine_tuning.jobs.list(metadata={"run": run}, limit=1, extra_query={"status": "paused"})
    assert ids(paused) == [other, held] and {job.status for job in paused} == {"paused"}
    both = {"status": "cancelled,paused"}
    assert ids(sdk.fine_tuning.jobs.list(metadata={"run": run, "kind": "keep"}, extra_query=both)) == [
        foreign, other, kept,
    ]  # fmt: skip

    with pytest.raises(openai.BadRequestError) as bad:
        sdk.fine_tuning.jobs.list(extra_query={"status": "done"})
    assert bad.value.body["param"] == "status"
    for job_id in (held, other):  # a paused job can be cancelled
        assert sdk.fine_tuning.jobs.cancel(job_id).status == "cancelled"
