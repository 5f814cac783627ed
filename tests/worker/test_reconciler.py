"""The reconciler's re-sends on a real SQLite database built by the migrations (the broker calls replaced:
these are unit tests of one function): a job a validator is checking is never sent again while the
validator's lease lives, and is once it has expired."""

from __future__ import annotations

import time

import pytest

from loraq.migrate import upgrade
from loraq.settings import Settings
from models import job_state
from models.api_keys import Principal
from models.records import Job, JobStatus
from models.session import session_scope
from worker import reconciler

JOB_ID = "ftjob-reconciler00000000000000"


@pytest.fixture
def settings(tmp_path, monkeypatch) -> tuple[Settings, list]:
    settings = Settings(data_dir=tmp_path, requeue_after_seconds=0.01)
    upgrade(settings.resolved_database_url)
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(reconciler, "job_ids_in_queue", lambda queue: set())  # the message is gone
    monkeypatch.setattr(reconciler, "send_validation", lambda job_id, queue: sent.append((job_id, queue)))
    monkeypatch.setattr(reconciler, "send_job", lambda job_id, queue: sent.append((job_id, queue)))
    return settings, sent


def validating(settings: Settings, lease_seconds: int) -> None:
    with session_scope(settings.resolved_database_url) as session:
        job = Job(id=JOB_ID, owner="alice", model="m", training_file="file-x", hyperparameters={}, seed=0)
        job_state.create_job(session, job)
        assert job_state.claim_validation(session, JOB_ID, "validator@a:1/t0", lease_seconds) is not None
    time.sleep(0.05)  # older than requeue_after_seconds


def test_a_job_under_a_live_validation_lease_is_not_resent(settings):
    settings, sent = settings
    validating(settings, lease_seconds=60)
    assert reconciler.Reconciler(settings).resend_missing_messages() == []
    assert sent == []


def test_a_job_whose_validator_died_is_resent_once_its_lease_expired(settings):
    settings, sent = settings
    validating(settings, lease_seconds=-1)
    assert reconciler.Reconciler(settings).resend_missing_messages() == [JOB_ID]
    assert sent == [(JOB_ID, settings.validation_queue)]


def test_a_paused_job_is_never_sent_again(settings):
    """Paused while queued (its message dropped by the worker), or while a dead worker was pausing it: neither
    is re-sent nor re-queued; only a resume queues it."""
    settings, sent = settings
    key = Principal(owner="alice", key_id="key-1", key_name="ci")
    validating(settings, lease_seconds=60)
    url = settings.resolved_database_url
    with session_scope(url) as session:
        assert job_state.finish_validation(session, JOB_ID, "validator@a:1/t0", total_steps=1, estimated_tokens=1)
        assert job_state.pause_job(session, JOB_ID, was=JobStatus.queued, by=key)
        pausing = Job(id=JOB_ID + "2", owner="alice", model="m", training_file="file-x", hyperparameters={}, seed=0)
        job_state.create_job(session, pausing)
    with session_scope(url) as session:
        job_state.get_job(session, pausing.id).status = JobStatus.queued
    with session_scope(url) as session:
        assert job_state.claim_job(session, pausing.id, "node-a:1", lease_seconds=-1) is not None  # then it died
        assert job_state.pause_job(session, pausing.id, was=JobStatus.running, by=key)
    time.sleep(0.05)
    assert reconciler.Reconciler(settings).run_once() == {"requeued": [], "resent": []}
    assert sent == []
    with session_scope(url) as session:
        assert {job_state.get_job(session, job_id).status for job_id in (JOB_ID, pausing.id)} == {JobStatus.paused}
