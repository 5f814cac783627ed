"""How the supervisor ends a run when a pause is pending, on a real SQLite database built by the migrations (the
broker call recorded: a unit test of the supervisor's outcome, the e2e suite runs the whole path)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from loraq.migrate import upgrade
from loraq.settings import Settings
from models import job_state
from models.api_keys import Principal
from models.records import Job, JobEvent, JobStatus
from models.session import session_scope
from worker import supervisor
from worker.supervisor import JobSupervisor, Outcome

JOB_ID = "ftjob-pauseoutcome000000000000"
KEY = Principal(owner="alice", key_id="key-1", key_name="ci")


@pytest.fixture
def run(tmp_path, monkeypatch) -> tuple[JobSupervisor, list]:
    """A supervisor holding the job's lease (as after its claim), and the job ids it sends to the broker."""
    settings = Settings(data_dir=tmp_path, max_attempts=3)
    upgrade(settings.resolved_database_url)
    sent: list[str] = []
    monkeypatch.setattr(supervisor, "send_job", lambda job_id, queue: sent.append(job_id))
    run = JobSupervisor(JOB_ID, settings, node="node-a")
    with session_scope(run.db) as session:
        job = Job(id=JOB_ID, owner="alice", model="m", training_file="file-x", hyperparameters={}, seed=0)
        job_state.create_job(session, job)
        assert job_state.claim_validation(session, JOB_ID, "validator", 60)
        assert job_state.finish_validation(session, JOB_ID, "validator", total_steps=20, estimated_tokens=100)
        run.attempt = job_state.claim_job(session, JOB_ID, run.worker_id, 60).attempts
    return run, sent


def job(run: JobSupervisor) -> Job:
    with session_scope(run.db) as session:
        return job_state.get_job(session, JOB_ID)


def ask_pause(run: JobSupervisor) -> None:
    with session_scope(run.db) as session:
        assert job_state.pause_job(session, JOB_ID, was=JobStatus.running, by=KEY)
    assert run._stop_reason(renew_due=True) == "pause"  # what the watch loop writes to the stop file


def last_message(run: JobSupervisor) -> str:
    with session_scope(run.db) as session:
        query = select(JobEvent.message).where(JobEvent.job_id == JOB_ID).order_by(JobEvent.seq.desc())
        return session.scalars(query).first()


def test_stopped_for_a_pause_the_job_is_paused_at_its_checkpoint_and_not_sent(run):
    run, sent = run
    ask_pause(run)
    run.final = {"type": "stopped", "reason": "pause", "steps": 5}
    assert run._record_outcome(0) == Outcome.paused
    paused = job(run)
    assert (paused.status, paused.completed_steps, paused.lease_owner, paused.pause_requested) == (
        JobStatus.paused, 5, None, False,
    )  # fmt: skip
    assert last_message(run) == f"Job paused at step 5 (checkpointed); worker {run.worker_id} is free for other jobs"
    assert sent == []


def test_a_pause_asked_during_a_handoff_pauses_instead_of_requeueing(run):
    run, sent = run
    run.final = {"type": "stopped", "reason": "handoff", "steps": 7}  # the worker was stopping first
    with session_scope(run.db) as session:
        assert job_state.pause_job(session, JOB_ID, was=JobStatus.running, by=KEY)
    assert run._record_outcome(0) == Outcome.paused
    assert (job(run).status, sent) == (JobStatus.paused, [])


def test_a_killed_training_process_with_a_pause_pending_pauses_at_the_last_checkpoint(run):
    run, sent = run
    ask_pause(run)
    run.final = {}  # killed before it could report
    assert run._record_outcome(-9) == Outcome.paused
    assert job(run).status == JobStatus.paused and sent == []
    assert last_message(run).startswith("Job paused at its newest complete checkpoint")


def test_without_a_pause_a_handoff_goes_back_to_the_queue(run):
    run, sent = run
    run.final = {"type": "stopped", "reason": "handoff", "steps": 7}
    assert run._record_outcome(0) == Outcome.requeued
    assert (job(run).status, sent) == (JobStatus.queued, [JOB_ID])
