"""The reconciler's re-sends on a real SQLite database built by the migrations (the broker calls replaced:
these are unit tests of one function): a job a validator is checking is never sent again while the
validator's lease lives, and is once it has expired."""

from __future__ import annotations

import time

import pytest

from loraq.migrate import upgrade
from loraq.settings import Settings
from models import job_state
from models.records import Job
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
