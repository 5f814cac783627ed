"""The job state machine on real SQLite and PostgreSQL databases built by the migrations: each change applies
only from the state it names, so of two actors racing exactly one wins, and every change leaves its event."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select

from loraq.migrate import upgrade
from loraq.settings import Settings
from models import job_state
from models.api_keys import Principal
from models.base import Base, utcnow
from models.job_state import estimate_finish
from models.records import Job, JobEvent, JobStatus
from models.session import session_scope
from tests.servers import PostgresServer

WORKER, OTHER = "node-a:1", "node-b:2"
VALIDATOR, OTHER_VALIDATOR = "validator@a:3/t0", "validator@b:4/t0"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database(request, tmp_path_factory):
    """Every state change on both databases the service runs on, built by the migrations: the rules are SQL
    conditions and row claims, and these tests are where PostgreSQL's answers to them are checked (the e2e
    pause and cancel cases run on the embedded deployment only by default)."""
    if request.param == "sqlite":
        url = Settings(data_dir=tmp_path_factory.mktemp("state")).resolved_database_url
        upgrade(url)
        yield url
        return
    server = PostgresServer().start()
    upgrade(server.url)
    yield server.url
    server.stop()


@pytest.fixture
def db(database) -> Iterator[str]:
    yield database
    with session_scope(database) as session:  # a clean slate for the next test on this database
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(table.delete())


def new_job(db: str, job_id: str = "ftjob-state0000000000000000000") -> str:
    with session_scope(db) as session:
        job_state.create_job(
            session, Job(id=job_id, owner="alice", model="m", training_file="file-x", hyperparameters={}, seed=0)
        )
    return job_id


def status(db: str, job_id: str) -> JobStatus:
    with session_scope(db) as session:
        return job_state.get_job(session, job_id).status


def messages(db: str, job_id: str) -> list[str]:
    with session_scope(db) as session:
        return list(session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))


def validating(db: str, job_id: str = "ftjob-state0000000000000000000", lease_seconds: int = 60) -> str:
    """A new job whose files VALIDATOR is checking."""
    new_job(db, job_id)
    with session_scope(db) as session:
        assert job_state.claim_validation(session, job_id, VALIDATOR, lease_seconds) is not None
    return job_id


def queued(db: str) -> str:
    job_id = validating(db)
    with session_scope(db) as session:
        assert job_state.finish_validation(session, job_id, VALIDATOR, total_steps=10, estimated_tokens=1000)
    return job_id


def claimed(db: str, worker: str = WORKER, lease_seconds: int = 60) -> str:
    job_id = queued(db)
    with session_scope(db) as session:
        assert job_state.claim_job(session, job_id, worker, lease_seconds) is not None
    return job_id


def test_a_new_job_validates_then_queues_once(db):
    job_id = new_job(db)
    assert status(db, job_id) == JobStatus.validating_files
    assert messages(db, job_id) == [f"Created fine-tuning job: {job_id}", "Validating training file"]
    with session_scope(db) as session:
        assert not job_state.finish_validation(session, job_id, VALIDATOR, total_steps=10, estimated_tokens=1000)
        assert job_state.claim_validation(session, job_id, VALIDATOR, 60) is not None
        assert job_state.finish_validation(session, job_id, VALIDATOR, total_steps=10, estimated_tokens=1000)
        assert not job_state.finish_validation(session, job_id, VALIDATOR, total_steps=10, estimated_tokens=1000)
        assert not job_state.fail_validation(session, job_id, VALIDATOR, "invalid_training_file", "bad")
    with session_scope(db) as session:
        job = job_state.get_job(session, job_id)
        assert (job.status, job.total_steps, job.estimated_tokens) == (JobStatus.queued, 10, 1000)
        assert (job.lease_owner, job.lease_expires_at, job.validation_progress) == (None, None, None)


def test_validation_failure_names_the_reason_and_a_cancel_wins_over_it(db):
    job_id = validating(db)
    with session_scope(db) as session:
        assert job_state.fail_validation(
            session, job_id, VALIDATOR, "invalid_training_file", "2 usable examples", "training_file"
        )
    with session_scope(db) as session:
        job = job_state.get_job(session, job_id)
        assert job.status == JobStatus.failed and job.finished_at is not None
        assert job.error == {"code": "invalid_training_file", "message": "2 usable examples", "param": "training_file"}
    assert messages(db, job_id)[-1] == "Validation failed: 2 usable examples"

    other = validating(db, "ftjob-state1111111111111111111")
    with session_scope(db) as session:
        assert job_state.cancel_job(session, other, was=JobStatus.validating_files)
        assert not job_state.finish_validation(session, other, VALIDATOR, total_steps=1, estimated_tokens=1)
        assert not job_state.fail_validation(session, other, VALIDATOR, "x", "y")
    assert status(db, other) == JobStatus.cancelled


def test_one_validator_at_a_time_and_only_the_lease_holder_decides(db):
    job_id = validating(db)
    with session_scope(db) as session:
        assert job_state.claim_validation(session, job_id, OTHER_VALIDATOR, 60) is None  # a second delivery
        assert job_state.claim_validation(session, job_id, VALIDATOR, 60) is None  # even the holder's own
        assert not job_state.renew_validation(session, job_id, OTHER_VALIDATOR, 60)
        assert not job_state.finish_validation(session, job_id, OTHER_VALIDATOR, total_steps=1, estimated_tokens=1)
        assert not job_state.fail_validation(session, job_id, OTHER_VALIDATOR, "x", "y")
        assert not job_state.release_validation(session, job_id, OTHER_VALIDATOR, "not mine")
        assert job_state.renew_validation(session, job_id, VALIDATOR, 60)
    with session_scope(db) as session:
        job = job_state.get_job(session, job_id)
        assert (job.status, job.lease_owner) == (JobStatus.validating_files, VALIDATOR)


def test_a_dead_validators_expired_lease_passes_to_another(db):
    job_id = validating(db, lease_seconds=-1)  # the validator was killed: its lease lapsed
    with session_scope(db) as session:
        assert job_state.claim_validation(session, job_id, OTHER_VALIDATOR, 60) is not None
        assert not job_state.renew_validation(session, job_id, VALIDATOR, 60)  # the first one, if it wakes up
        assert not job_state.finish_validation(session, job_id, VALIDATOR, total_steps=1, estimated_tokens=1)
        assert job_state.finish_validation(session, job_id, OTHER_VALIDATOR, total_steps=1, estimated_tokens=1)
    assert status(db, job_id) == JobStatus.queued


def test_progress_is_recorded_under_the_lease_and_cleared_when_validation_ends(db):
    job_id = validating(db)
    figures = {"file": "training", "rows_done": 10, "rows_estimated": 100, "bytes_done": 1, "bytes_total": 10,
               "eta_seconds": 9}  # fmt: skip
    with session_scope(db) as session:
        assert not job_state.record_validation_progress(session, job_id, OTHER_VALIDATOR, figures, "not mine")
        assert job_state.record_validation_progress(session, job_id, VALIDATOR, figures, "Validating: 10 rows")
    with session_scope(db) as session:
        assert job_state.get_job(session, job_id).validation_progress == figures
        assert job_state.cancel_job(session, job_id, was=JobStatus.validating_files)
        assert not job_state.record_validation_progress(session, job_id, VALIDATOR, figures, "too late")
        assert not job_state.renew_validation(session, job_id, VALIDATOR, 60)  # how the validator learns of it
    with session_scope(db) as session:
        assert job_state.get_job(session, job_id).validation_progress is None
    assert messages(db, job_id)[-2:] == ["Validating: 10 rows", "Job cancelled"]


def test_a_stopping_validator_hands_the_job_back_for_another(db):
    job_id = validating(db)
    with session_scope(db) as session:
        before = job_state.get_job(session, job_id).enqueued_at
        assert job_state.record_validation_progress(session, job_id, VALIDATOR, {"rows_done": 1}, "Validating")
        assert job_state.release_validation(session, job_id, VALIDATOR, "Validation interrupted")
        assert not job_state.release_validation(session, job_id, VALIDATOR, "twice")
    with session_scope(db) as session:
        job = job_state.get_job(session, job_id)
        assert (job.status, job.lease_owner, job.lease_expires_at) == (JobStatus.validating_files, None, None)
        assert job.validation_progress is None and job.enqueued_at > before
        assert job_state.claim_validation(session, job_id, OTHER_VALIDATOR, 60) is not None
    assert messages(db, job_id)[-1] == "Validation interrupted"


def test_only_one_worker_claims_and_a_cancelled_job_is_never_claimed(db):
    job_id = queued(db)
    with session_scope(db) as session:
        assert job_state.claim_job(session, job_id, WORKER, 60) is not None
        assert job_state.claim_job(session, job_id, OTHER, 60) is None  # lease still valid
    with session_scope(db) as session:
        job = job_state.get_job(session, job_id)
        assert (job.status, job.lease_owner, job.attempts) == (JobStatus.running, WORKER, 1)
    other = queued_with_id(db, "ftjob-state2222222222222222222")
    with session_scope(db) as session:
        assert job_state.cancel_job(session, other, was=JobStatus.queued)
        assert job_state.claim_job(session, other, WORKER, 60) is None
    assert messages(db, other)[-1] == "Job cancelled"


def queued_with_id(db: str, job_id: str) -> str:
    validating(db, job_id)
    with session_scope(db) as session:
        assert job_state.finish_validation(session, job_id, VALIDATOR, total_steps=1, estimated_tokens=1)
    return job_id


def test_an_expired_lease_is_claimed_again_by_another_worker(db):
    job_id = claimed(db, lease_seconds=-1)
    with session_scope(db) as session:
        assert job_state.claim_job(session, job_id, OTHER, 60) is not None
        assert not job_state.renew_lease(session, job_id, WORKER, 60)  # the first worker lost it
        assert not job_state.finish_job(session, job_id, WORKER, JobStatus.succeeded)
        assert job_state.renew_lease(session, job_id, OTHER, 60)
    with session_scope(db) as session:
        assert job_state.get_job(session, job_id).attempts == 2


def test_a_cancel_wins_over_the_running_worker(db):
    job_id = claimed(db)
    with session_scope(db) as session:
        assert job_state.cancel_job(session, job_id, was=JobStatus.running)
        assert not job_state.cancel_job(session, job_id, was=JobStatus.running)
    with session_scope(db) as session:
        assert not job_state.is_held_by(session, job_id, WORKER)
        assert not job_state.renew_lease(session, job_id, WORKER, 60)
        assert not job_state.fail_job(session, job_id, WORKER, "training_error", "boom")
        assert job_state.release_job(session, job_id, WORKER, "handing back") is None
    assert status(db, job_id) == JobStatus.cancelled
    assert messages(db, job_id)[-1] == "Job cancelled; training stops at its next step"


def test_finish_fail_and_release_apply_to_the_lease_holder_only(db):
    job_id = claimed(db)
    with session_scope(db) as session:
        assert job_state.is_held_by(session, job_id, WORKER)
        assert not job_state.is_held_by(session, job_id, OTHER)
        assert job_state.release_job(session, job_id, OTHER, "not mine") is None
        released = job_state.release_job(session, job_id, WORKER, "Worker is shutting down")
        assert released is not None and released.status == JobStatus.queued and released.lease_owner is None
    assert messages(db, job_id)[-1] == "Worker is shutting down"
    with session_scope(db) as session:
        assert job_state.claim_job(session, job_id, OTHER, 60) is not None
        assert job_state.fail_job(session, job_id, OTHER, "training_crashed", "killed", completed_steps=3)
    with session_scope(db) as session:
        job = job_state.get_job(session, job_id)
        assert (job.status, job.completed_steps, job.lease_expires_at) == (JobStatus.failed, 3, None)
        assert job.error == {"code": "training_crashed", "message": "killed", "param": None}
    assert messages(db, job_id)[-1] == "Job failed: killed"


def test_a_lost_job_is_requeued_then_failed_after_its_attempts(db):
    job_id = claimed(db, lease_seconds=-1)
    with session_scope(db) as session:
        assert job_state.recover_lost_job(session, job_id, 1, WORKER, max_attempts=2) == JobStatus.queued
        assert job_state.recover_lost_job(session, job_id, 1, WORKER, max_attempts=2) is None  # repaired once
    assert messages(db, job_id)[-1] == f"Worker {WORKER} stopped renewing its lease; job re-queued"
    with session_scope(db) as session:
        assert job_state.claim_job(session, job_id, OTHER, -1) is not None
        assert job_state.recover_lost_job(session, job_id, 2, OTHER, max_attempts=2) == JobStatus.failed
    with session_scope(db) as session:
        assert job_state.get_job(session, job_id).error["code"] == "worker_lost"


def test_a_live_lease_is_not_recovered(db):
    job_id = claimed(db)
    with session_scope(db) as session:
        assert job_state.recover_lost_job(session, job_id, 1, WORKER, max_attempts=3) is None
    assert status(db, job_id) == JobStatus.running


def test_a_lost_message_is_resent_by_one_reconciler_only(db):
    job_id = queued(db)
    with session_scope(db) as session:
        enqueued_at = job_state.get_job(session, job_id).enqueued_at
    with session_scope(db) as session:
        assert job_state.mark_resent(session, job_id, JobStatus.queued, enqueued_at)
    with session_scope(db) as session:  # a second reconciler that read the same row
        assert not job_state.mark_resent(session, job_id, JobStatus.queued, enqueued_at)
    assert messages(db, job_id).count("Job message was missing from the broker; sent again") == 1


def test_a_job_being_validated_is_not_resent_until_its_lease_expires(db):
    job_id = validating(db)
    with session_scope(db) as session:
        enqueued_at = job_state.get_job(session, job_id).enqueued_at
        assert not job_state.mark_resent(session, job_id, JobStatus.validating_files, enqueued_at)
    other = validating(db, "ftjob-state3333333333333333333", lease_seconds=-1)  # its validator died
    with session_scope(db) as session:
        enqueued_at = job_state.get_job(session, other).enqueued_at
        assert job_state.mark_resent(session, other, JobStatus.validating_files, enqueued_at)


def test_metrics_update_progress_only_for_the_lease_holder(db):
    job_id = claimed(db)
    record = {"type": "metrics", "step": 2, "total_steps": 10, "train_loss": 1.5, "tokens_seen": 200,
              "tokens_per_second": 100.0}  # fmt: skip
    with session_scope(db) as session:
        job_state.record_metrics(session, job_id, OTHER, record)
    with session_scope(db) as session:
        assert job_state.get_job(session, job_id).completed_steps == 0
        job_state.record_metrics(session, job_id, WORKER, record)
    with session_scope(db) as session:
        job = job_state.get_job(session, job_id)
        assert (job.completed_steps, job.trained_tokens, job.estimated_finish is not None) == (2, 200, True)
    assert messages(db, job_id).count("Step 2/10: training loss=1.5000") == 2  # the events are kept either way


def test_estimated_finish_uses_tokens_left_at_the_measured_speed():
    now = utcnow()
    job = Job(
        estimated_tokens=10_000, started_at=now - timedelta(seconds=50), completed_steps=10, total_steps=100,
        trained_tokens=2_000, tokens_per_second=400.0,
    )  # fmt: skip
    assert estimate_finish(job, now) == now + timedelta(seconds=20)
    job.estimated_tokens = None  # an older job: steps left at the average step time
    assert estimate_finish(job, now) == now + timedelta(seconds=450)


# ---------------------------------------------------------------------------------------------- pause and resume
KEY = Principal(owner="alice", key_id="key-abc", key_name="ci")


def pending_pause(db: str, job_id: str) -> bool:
    with session_scope(db) as session:
        return job_state.get_job(session, job_id).pause_requested


def test_a_queued_job_pauses_at_once_its_message_is_dropped_and_resume_queues_it_again(db):
    job_id = queued(db)
    with session_scope(db) as session:
        assert job_state.pause_job(session, job_id, was=JobStatus.queued, by=KEY)
        assert not job_state.pause_job(session, job_id, was=JobStatus.queued, by=KEY)  # it is no longer queued
    assert status(db, job_id) == JobStatus.paused
    assert messages(db, job_id)[-1] == "Job paused by key 'ci' (key-abc)"
    with session_scope(db) as session:
        assert job_state.claim_job(session, job_id, WORKER, 60) is None  # its message arrives: dropped
        enqueued_at = job_state.get_job(session, job_id).enqueued_at
        assert not job_state.mark_resent(session, job_id, JobStatus.queued, enqueued_at)  # no reconciler sends it
        assert job_state.resume_job(session, job_id, by=KEY)
        assert not job_state.resume_job(session, job_id, by=KEY)  # once
    assert (
        messages(db, job_id)[-1]
        == "Job resumed by key 'ci' (key-abc): queued to continue from the start (it had no checkpoint)"
    )
    with session_scope(db) as session:
        job = job_state.get_job(session, job_id)
        assert (job.status, job.paused_at) == (JobStatus.queued, None) and job.enqueued_at > enqueued_at
        assert job_state.claim_job(session, job_id, WORKER, 60) is not None


def test_a_running_job_pauses_only_once_its_worker_has_checkpointed(db):
    job_id = claimed(db)
    with session_scope(db) as session:
        assert job_state.pause_job(session, job_id, was=JobStatus.running, by=KEY)
        assert not job_state.pause_job(session, job_id, was=JobStatus.running, by=KEY)  # already pending
    assert messages(db, job_id)[-1] == (
        "Pause requested by key 'ci' (key-abc): the job pauses once training checkpoints at its next step"
    )
    with session_scope(db) as session:
        job = job_state.held_job(session, job_id, WORKER)  # still the worker's, which sees the pending pause
        assert job is not None and job.status == JobStatus.running and job.pause_requested
        assert job_state.renew_lease(session, job_id, WORKER, 60)  # it keeps its lease while it checkpoints
        assert job_state.claim_job(session, job_id, OTHER, -1) is None
        assert job_state.release_job(session, job_id, WORKER, "re-queued") is None  # never back to the queue
        assert not job_state.pause_running_job(session, job_id, OTHER, "not mine")
        assert job_state.pause_running_job(session, job_id, WORKER, "Job paused at step 4", completed_steps=4)
        assert not job_state.renew_lease(session, job_id, WORKER, 60)
    with session_scope(db) as session:
        job = job_state.get_job(session, job_id)
        assert (job.status, job.pause_requested, job.lease_owner, job.completed_steps) == (
            JobStatus.paused, False, None, 4,
        )  # fmt: skip
        assert job.paused_at is not None and job.finished_at is None
        job_state.record_checkpoint(session, job_id, {"step": 4}, "jobs/x/checkpoints/checkpoint-4")
    with session_scope(db) as session:
        assert job_state.resume_job(session, job_id, by=KEY)
        assert job_state.claim_job(session, job_id, OTHER, 60) is not None
    assert "queued to continue from its checkpoint at step 4" in messages(db, job_id)[-1]


def test_a_validating_job_finishes_its_validation_then_pauses(db):
    job_id = validating(db)
    with session_scope(db) as session:
        assert job_state.pause_job(session, job_id, was=JobStatus.validating_files, by=KEY)
    assert status(db, job_id) == JobStatus.validating_files and pending_pause(db, job_id)
    assert messages(db, job_id)[-1].endswith("the job pauses once its files are validated")
    with session_scope(db) as session:
        assert job_state.renew_validation(session, job_id, VALIDATOR, 60)  # the validation goes on
        stage = job_state.finish_validation(session, job_id, VALIDATOR, total_steps=10, estimated_tokens=1000)
        assert stage == JobStatus.paused
    with session_scope(db) as session:
        job = job_state.get_job(session, job_id)
        assert (job.status, job.total_steps, job.lease_owner, job.pause_requested) == (
            JobStatus.paused,
            10,
            None,
            False,
        )
        assert job_state.resume_job(session, job_id, by=KEY)
    assert status(db, job_id) == JobStatus.queued


def test_a_cancel_wins_over_a_pending_pause_and_a_paused_job_can_be_cancelled(db):
    job_id = claimed(db)
    with session_scope(db) as session:
        assert job_state.pause_job(session, job_id, was=JobStatus.running, by=KEY)
        assert job_state.cancel_job(session, job_id, was=JobStatus.running)
        assert not job_state.pause_running_job(session, job_id, WORKER, "too late")
    assert status(db, job_id) == JobStatus.cancelled and not pending_pause(db, job_id)

    other = queued_with_id(db, "ftjob-state4444444444444444444")
    with session_scope(db) as session:
        assert job_state.pause_job(session, other, was=JobStatus.queued, by=KEY)
        assert job_state.cancel_job(session, other, was=JobStatus.paused)
        assert not job_state.resume_job(session, other, by=KEY)
        assert not job_state.pause_job(session, other, was=JobStatus.cancelled, by=KEY)
    assert status(db, other) == JobStatus.cancelled


def test_a_job_that_finishes_before_its_pause_lands_succeeds(db):
    job_id = claimed(db)
    with session_scope(db) as session:
        assert job_state.pause_job(session, job_id, was=JobStatus.running, by=KEY)
        assert job_state.finish_job(session, job_id, WORKER, JobStatus.succeeded)
    assert status(db, job_id) == JobStatus.succeeded and not pending_pause(db, job_id)


def test_a_dead_workers_pausing_job_is_paused_not_requeued(db):
    job_id = claimed(db, lease_seconds=-1)
    with session_scope(db) as session:
        assert job_state.pause_job(session, job_id, was=JobStatus.running, by=KEY)
        assert job_state.claim_job(session, job_id, OTHER, 60) is None  # a second delivery does not take it
        assert job_state.recover_lost_job(session, job_id, 1, WORKER, max_attempts=3) == JobStatus.paused
        assert job_state.recover_lost_job(session, job_id, 1, WORKER, max_attempts=3) is None
    assert status(db, job_id) == JobStatus.paused
    assert "while the job was pausing; paused at its newest complete checkpoint" in messages(db, job_id)[-1]


def test_time_spent_paused_is_left_out_of_the_run_time_limit(db):
    job_id = queued(db)
    with session_scope(db) as session:
        assert job_state.pause_job(session, job_id, was=JobStatus.queued, by=KEY)
        job_state.get_job(session, job_id).paused_at = utcnow() - timedelta(seconds=100)  # paused 100 s ago
    with session_scope(db) as session:
        assert job_state.resume_job(session, job_id, by=KEY)
    with session_scope(db) as session:
        assert 100 <= job_state.get_job(session, job_id).paused_seconds <= 102
