"""The validator's lease on a real SQLite database: the heartbeat renews it and writes progress, sees a
cancel, and the row loop's callback then stops the validation; a validator stopping stops it too."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from loraq.migrate import upgrade
from loraq.settings import Settings
from models import job_state
from models.records import Job, JobEvent, JobStatus
from models.session import session_scope
from worker.validation_lease import STOPPING, ValidationLease, ValidationStopped, describe_progress

JOB_ID = "ftjob-validationlease000000000"
VALIDATOR = "validator@a:1/t0"


@pytest.fixture
def settings(tmp_path) -> Settings:
    settings = Settings(data_dir=tmp_path, lease_seconds=3, validation_progress_seconds=0.1)  # a beat a second
    upgrade(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as session:
        job = Job(id=JOB_ID, owner="alice", model="m", training_file="file-x", hyperparameters={}, seed=0)
        job_state.create_job(session, job)
        assert job_state.claim_validation(session, JOB_ID, VALIDATOR, settings.lease_seconds) is not None
    return settings


def test_progress_reads_like_a_person_wrote_it():
    figures = {"file": "training", "rows_done": 41_000, "rows_estimated": 120_000, "bytes_done": 210_000_000,
               "bytes_total": 600_000_000, "eta_seconds": 80}  # fmt: skip
    assert describe_progress(figures) == (
        "Validating training file: 41,000 of ~120,000 rows, 210 MB of 600 MB, about 1 min 20 s left"
    )


def test_the_heartbeat_reports_progress_and_a_cancel_stops_the_rows(settings, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"x" * 1000)
    db = settings.resolved_database_url
    with ValidationLease(settings, JOB_ID, VALIDATOR) as lease:
        row = lease.reading("training", path)
        row(10, 250)
        deadline = time.monotonic() + 10
        while not _progress(db):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        figures = _progress(db)
        assert (figures["rows_done"], figures["rows_estimated"], figures["bytes_total"]) == (10, 40, 1000)
        with session_scope(db) as session:
            event = session.scalars(select(JobEvent).where(JobEvent.job_id == JOB_ID).order_by(JobEvent.seq)).all()[-1]
            assert event.message.startswith("Validating training file: 10 of ~40 rows, 250 bytes of 1.0 kB")
            assert event.data == figures
            assert job_state.cancel_job(session, JOB_ID, was=JobStatus.validating_files)
        cancelled = time.monotonic()
        with pytest.raises(ValidationStopped, match="cancelled"):
            while True:
                assert time.monotonic() - cancelled < 5  # the heartbeat beats every second here
                row(11, 260)
                time.sleep(0.05)
    assert _progress(db) is None


def test_a_stopping_validator_stops_at_the_next_row(settings, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_bytes(b"x" * 10)
    with ValidationLease(settings, JOB_ID, VALIDATOR) as lease:
        row = lease.reading("training", path)
        row(1, 5)
        STOPPING.set()
        try:
            with pytest.raises(ValidationStopped, match="stopping"):
                row(2, 10)
        finally:
            STOPPING.clear()


def _progress(db: str) -> dict | None:
    with session_scope(db) as session:
        return job_state.get_job(session, JOB_ID).validation_progress
