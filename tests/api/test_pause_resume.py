"""Pause and resume over HTTP, in-process on SQLite: what each status allows, who is named in the events, the
active-job limit, and the queue a resumed job is sent to (the broker call recorded: the e2e suite sends it for
real, tests/e2e/test_pause_resume.py)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from api.routes import jobs as job_routes
from models import Job, JobEvent, JobStatus, job_state
from models.session import session_scope
from tests.api.conftest import auth


@pytest.fixture
def settings(settings_in):
    return settings_in.model_copy(update={"max_active_jobs_per_owner": 1})


@pytest.fixture
def sent(monkeypatch) -> list[tuple[str, str]]:
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(job_routes, "send_job", lambda job_id, queue: calls.append((job_id, queue)))
    return calls


def add_job(settings, job_id: str, status: JobStatus, owner: str = "alice", **values) -> str:
    """A job of `owner` put straight into `status` (the case's starting point)."""
    url = settings.resolved_database_url
    with session_scope(url) as session:
        job = Job(id=job_id, owner=owner, model="loraq-tiny-chat", training_file="file-x", hyperparameters={}, seed=0)
        job_state.create_job(session, job)
    with session_scope(url) as session:
        job = job_state.get_job(session, job_id)
        job.status = status
        for name, value in values.items():
            setattr(job, name, value)
    return job_id


def last_event(settings, job_id: str) -> str:
    with session_scope(settings.resolved_database_url) as session:
        return session.scalars(
            select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.seq.desc())
        ).first()


def test_a_queued_job_pauses_at_once_and_resumes_to_its_own_queue(app_client, settings, sent):
    job_id = add_job(settings, "ftjob-paused-queued", JobStatus.queued, queue="loraq.gpus2")
    paused = app_client.post(f"/v1/fine_tuning/jobs/{job_id}/pause", headers=auth("alice"))
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert last_event(settings, job_id).startswith("Job paused by key 'test' (key-")
    again = app_client.post(f"/v1/fine_tuning/jobs/{job_id}/pause", headers=auth("alice"))
    assert again.status_code == 200 and again.json()["status"] == "paused"  # nothing to do twice
    assert sent == []

    resumed = app_client.post(f"/v1/fine_tuning/jobs/{job_id}/resume", headers=auth("alice"))
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
    assert sent == [(job_id, "loraq.gpus2")]  # after the commit, to the queue its GPUs route it to
    assert last_event(settings, job_id).startswith("Job resumed by key 'test' (key-")


def test_a_running_job_is_asked_to_pause_and_cannot_be_resumed_before_it_has(app_client, settings, sent):
    job_id = add_job(settings, "ftjob-paused-running", JobStatus.running, lease_owner="node:1")
    asked = app_client.post(f"/v1/fine_tuning/jobs/{job_id}/pause", headers=auth("alice")).json()
    assert (asked["status"], asked["pause_requested"]) == ("running", True)
    early = app_client.post(f"/v1/fine_tuning/jobs/{job_id}/resume", headers=auth("alice"))
    assert early.status_code == 400 and early.json()["error"]["code"] == "job_not_paused"
    assert "a pause is pending" in early.json()["error"]["message"]
    cancelled = app_client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel", headers=auth("alice")).json()
    assert (cancelled["status"], cancelled["pause_requested"]) == ("cancelled", False)


def test_state_mistakes_are_400s_never_409s_and_another_owners_job_is_404(app_client, settings, sent):
    done = add_job(settings, "ftjob-paused-done", JobStatus.succeeded)
    refused = app_client.post(f"/v1/fine_tuning/jobs/{done}/pause", headers=auth("alice"))
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "job_id"
    assert (
        refused.json()["error"]["code"] == "job_finished" and "cannot be paused" in refused.json()["error"]["message"]
    )
    not_paused = app_client.post(f"/v1/fine_tuning/jobs/{done}/resume", headers=auth("alice"))
    assert not_paused.status_code == 400 and not_paused.json()["error"]["code"] == "job_not_paused"

    mine = add_job(settings, "ftjob-paused-mine", JobStatus.paused)
    for action in ("pause", "resume"):
        response = app_client.post(f"/v1/fine_tuning/jobs/{mine}/{action}", headers=auth("bob"))
        assert response.status_code == 404 and response.json()["error"]["code"] == "fine-tuning_job_not_found"
    cancelled = app_client.post(f"/v1/fine_tuning/jobs/{mine}/cancel", headers=auth("alice"))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert sent == []


def test_paused_jobs_leave_room_under_the_active_job_limit_but_a_resume_must_fit(app_client, settings, sent):
    # LORAQ_MAX_ACTIVE_JOBS_PER_OWNER is 1 here.
    active = add_job(settings, "ftjob-limit-active", JobStatus.queued)
    waiting = add_job(settings, "ftjob-limit-paused", JobStatus.paused)
    refused = app_client.post(f"/v1/fine_tuning/jobs/{waiting}/resume", headers=auth("alice"))
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_active_jobs"
    assert int(refused.headers["retry-after"]) > 0
    assert app_client.get(f"/v1/fine_tuning/jobs/{waiting}", headers=auth("alice")).json()["status"] == "paused"

    assert app_client.post(f"/v1/fine_tuning/jobs/{active}/pause", headers=auth("alice")).status_code == 200
    resumed = app_client.post(f"/v1/fine_tuning/jobs/{waiting}/resume", headers=auth("alice"))
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued"  # the other, paused, does not count
    assert sent == [(waiting, "loraq")]


def test_a_paused_jobs_files_cannot_be_deleted(app_client, settings, sent):
    row = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    uploaded = app_client.post(
        "/v1/files", headers=auth("alice"), files={"file": ("f.jsonl", row.encode())}, data={"purpose": "fine-tune"}
    ).json()
    add_job(settings, "ftjob-paused-files", JobStatus.paused, training_file=uploaded["id"])
    refused = app_client.delete(f"/v1/files/{uploaded['id']}", headers=auth("alice"))
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "file_in_use"  # a resume trains on it
