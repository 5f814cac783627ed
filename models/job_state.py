"""The job state machine: every change of a job's status, and the events that record it.

    validating_files ──▶ queued ──▶ running ──▶ succeeded | failed
          │                ▲  │        │  ▲
          └──▶ failed      │  └────────┼──┘ claim (queued, or running under an expired lease)
                           └───────────┘ release (handoff, retry) / requeue (lost worker)
    cancel: validating_files | queued | running | paused ──▶ cancelled
    pause:  queued ──▶ paused at once; validating_files | running: `pause_requested`, and ──▶ paused once the
            files are validated, or once training has checkpointed (its worker hands it back; the reconciler
            does it for a dead worker's job); resume: paused ──▶ queued, to continue from that checkpoint

A job in `validating_files` is checked under a lease too (the same two columns, free until it is queued):
a validator claims it when no live lease is on it, renews while it reads the files, and only the lease
holder may queue it, fail it or hand it back; a validator that died leaves a lease that expires, and the
reconciler sends the job to the validators again.

Each change is one conditional UPDATE (`_transition`) that names the state it leaves, so two actors racing
(a cancel and a claim, two reconcilers, a dead worker and its successor) can never both win: the function
returns whether it applied, and the caller that lost does nothing. The API, the validator, the supervisor
and the reconciler all call down into this module; nobody else writes `Job.status`. A change into a status
that webhooks announce (succeeded, failed, cancelled, paused) writes its outbox rows in the same transaction
(models.webhook_outbox).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session

from models.api_keys import Principal
from models.base import new_id, utcnow
from models.records import Checkpoint, Job, JobEvent, JobStatus
from models.webhook_outbox import queue_job_event


def _transition(session: Session, job_id: str, *conditions: ColumnElement[bool], **values: Any) -> bool:
    """One conditional UPDATE of the job's row; True if it applied (the row was still as `conditions` say)."""
    result = session.execute(
        update(Job).where(Job.id == job_id, *conditions).values(**values).execution_options(synchronize_session=False)
    )
    applied = result.rowcount == 1  # type: ignore[attr-defined]  # a CursorResult for UPDATE statements
    if applied and "status" in values:
        # The owner's webhooks for the new status, in this transaction: committed with it, or not at all.
        queue_job_event(session, job_id, values["status"])
    return applied


def get_job(session: Session, job_id: str) -> Job:
    return session.scalars(select(Job).where(Job.id == job_id)).one()


def find_job(session: Session, job_id: str) -> Job | None:
    return session.scalars(select(Job).where(Job.id == job_id)).one_or_none()


def add_event(
    session: Session,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    kind: str = "message",
    data: dict[str, Any] | None = None,
) -> None:
    session.add(JobEvent(id=new_id("ftevent"), job_id=job_id, message=message, level=level, type=kind, data=data))


def _error(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param}


# ---------------------------------------------------------------------------------------------- API
def create_job(session: Session, job: Job) -> Job:
    """A new job enters `validating_files`: its files are tokenized before it may be queued."""
    job.status = JobStatus.validating_files
    job.enqueued_at = utcnow()
    session.add(job)
    session.flush()
    add_event(session, job.id, f"Created fine-tuning job: {job.id}")
    if job.parent:
        parent = job.parent
        add_event(
            session, job.id,
            f"Continuing training from {parent['model']} (job {parent['job']}, step {parent['step']}): its adapter's "
            f"weights and LoRA shape, on the base model {job.model}",
            data={"parent": parent},
        )  # fmt: skip
    for warning in job.serving_warnings or []:
        add_event(
            session, job.id, f"Serving warning ({warning['engine']}, {warning['setting']}): {warning['message']}",
            level="warn", data={"serving_warning": warning},
        )  # fmt: skip
    add_event(session, job.id, "Validating training file" + (" and validation file" if job.validation_file else ""))
    return job


def cancel_job(session: Session, job_id: str, was: JobStatus) -> bool:
    """Cancel a job still in `was`; a running one stops at its next step (its supervisor sees the flag)."""
    cancelled = _transition(
        session, job_id, Job.status == was,
        status=JobStatus.cancelled, cancel_requested=True, finished_at=utcnow(), estimated_finish=None,
        validation_progress=None, pause_requested=False, paused_at=None,
    )  # fmt: skip
    if cancelled:
        note = "; training stops at its next step" if was == JobStatus.running else ""
        add_event(session, job_id, f"Job cancelled{note}")
    return cancelled


# ---------------------------------------------------------------------------------------------- pause and resume
def _pause(session: Session, job_id: str, *conditions: ColumnElement[bool], **values: Any) -> bool:
    """The one change into `paused` (a queued job paused, a validated or checkpointed one whose pause was
    pending, a dead worker's pausing job): no lease, nothing pending, the pause's start recorded."""
    return _transition(
        session, job_id, *conditions,
        status=JobStatus.paused, pause_requested=False, paused_at=utcnow(), lease_owner=None, lease_expires_at=None,
        estimated_finish=None, tokens_per_second=None, validation_progress=None, **values,
    )  # fmt: skip


def pause_job(session: Session, job_id: str, was: JobStatus, by: Principal) -> bool:
    """Pause a job still in `was`: a queued one at once; a validating or running one is asked to (it pauses
    once its files are validated, or once training has checkpointed at its next step). False if it moved on
    meanwhile, or a pause is already pending."""
    actor = {"paused_by": by.label}
    if was == JobStatus.queued:
        paused = _pause(session, job_id, Job.status == JobStatus.queued)
        if paused:
            add_event(session, job_id, f"Job paused by {by.label}", data=actor)
        return paused
    if was not in (JobStatus.validating_files, JobStatus.running):
        return False
    asked = _transition(session, job_id, Job.status == was, Job.pause_requested.is_(False), pause_requested=True)
    if asked:
        then = "training checkpoints at its next step" if was == JobStatus.running else "its files are validated"
        add_event(session, job_id, f"Pause requested by {by.label}: the job pauses once {then}", data=actor)
    return asked


def pause_running_job(session: Session, job_id: str, worker_id: str, message: str, **values: Any) -> bool:
    """running → paused, once training stopped after a checkpoint because a pause was asked; only if the job is
    still ours (a cancel wins)."""
    paused = _pause(session, job_id, *_held_by(worker_id), Job.pause_requested.is_(True), **values)
    if paused:
        add_event(session, job_id, message)
    return paused


def resume_job(session: Session, job_id: str, by: Principal) -> bool:
    """paused → queued (the caller sends it after commit); it continues from its newest complete checkpoint.
    The time it spent paused is left out of its run-time limit. False if it is no longer paused."""
    job = get_job(session, job_id)
    now = utcnow()
    paused_for = int((now - job.paused_at).total_seconds()) if job.paused_at else 0
    resumed = _transition(
        session, job_id, Job.status == JobStatus.paused,
        status=JobStatus.queued, enqueued_at=now, paused_at=None, paused_seconds=Job.paused_seconds + paused_for,
    )  # fmt: skip
    if resumed:
        step = session.scalar(select(func.max(Checkpoint.step_number)).where(Checkpoint.job_id == job_id))
        where = f"from its checkpoint at step {step}" if step else "from the start (it had no checkpoint)"
        add_event(
            session, job_id, f"Job resumed by {by.label}: queued to continue {where}",
            data={"resumed_by": by.label, "paused_seconds": paused_for},
        )  # fmt: skip
    return resumed


# ---------------------------------------------------------------------------------------------- validation
def lease_is_free(now: datetime) -> ColumnElement[bool]:
    """No live lease on the job: never claimed, released, or its holder stopped renewing before `now`."""
    return or_(Job.lease_expires_at.is_(None), Job.lease_expires_at < now)


def _validated_by(validator_id: str) -> tuple[ColumnElement[bool], ...]:
    return (Job.lease_owner == validator_id, Job.status == JobStatus.validating_files)


_LEASE_ENDS = {"lease_owner": None, "lease_expires_at": None, "validation_progress": None}


def claim_validation(session: Session, job_id: str, validator_id: str, lease_seconds: int) -> Job | None:
    """Take a job's files to check: in `validating_files` with no live lease. None if another validator
    holds it (a second delivery of its message), or it was cancelled or has moved on."""
    now = utcnow()
    claimed = _transition(
        session, job_id, Job.status == JobStatus.validating_files, lease_is_free(now),
        lease_owner=validator_id, lease_expires_at=now + timedelta(seconds=lease_seconds), validation_progress=None,
    )  # fmt: skip
    return get_job(session, job_id) if claimed else None


def renew_validation(session: Session, job_id: str, validator_id: str, lease_seconds: int) -> bool:
    """Extend our validation lease; False once the job is no longer ours to check (cancelled, or claimed by
    another validator after our lease lapsed)."""
    return _transition(
        session, job_id, *_validated_by(validator_id), lease_expires_at=utcnow() + timedelta(seconds=lease_seconds)
    )


def record_validation_progress(
    session: Session, job_id: str, validator_id: str, progress: dict[str, Any], message: str
) -> bool:
    """The job's `validation_progress` and an event with the same figures, only while we hold its lease."""
    recorded = _transition(session, job_id, *_validated_by(validator_id), validation_progress=progress)
    if recorded:
        add_event(session, job_id, message, data=progress)
    return recorded


def finish_validation(
    session: Session, job_id: str, validator_id: str, *, total_steps: int, estimated_tokens: int
) -> JobStatus | None:
    """validating_files → queued with the validation stage's estimate, or → paused if a pause was asked
    meanwhile (the caller writes its event); None if cancelled meanwhile or no longer ours."""
    estimate = {"total_steps": total_steps, "estimated_tokens": estimated_tokens}
    ours = _validated_by(validator_id)
    if _transition(
        session, job_id, *ours, Job.pause_requested.is_(False),
        status=JobStatus.queued, enqueued_at=utcnow(), **estimate, **_LEASE_ENDS,
    ):  # fmt: skip
        return JobStatus.queued
    if _pause(session, job_id, *ours, **estimate):
        return JobStatus.paused
    return None


def fail_validation(
    session: Session, job_id: str, validator_id: str, code: str, message: str, param: str | None = None
) -> bool:
    """validating_files → failed, naming what is wrong; False if cancelled meanwhile or no longer ours."""
    failed = _transition(
        session, job_id, *_validated_by(validator_id),
        status=JobStatus.failed, finished_at=utcnow(), error=_error(code, message, param), pause_requested=False,
        **_LEASE_ENDS,
    )  # fmt: skip
    if failed:
        add_event(session, job_id, f"Validation failed: {message}", level="error")
    return failed


def release_validation(session: Session, job_id: str, validator_id: str, message: str) -> bool:
    """Hand a job we were checking back (the validator is stopping): it stays in `validating_files` with no
    lease, to be validated again from the start once its message is sent again. False if it is not ours."""
    released = _transition(session, job_id, *_validated_by(validator_id), enqueued_at=utcnow(), **_LEASE_ENDS)
    if released:
        add_event(session, job_id, message, level="warn")
    return released


# ---------------------------------------------------------------------------------------------- worker
def _held_by(worker_id: str) -> tuple[ColumnElement[bool], ...]:
    return (Job.lease_owner == worker_id, Job.status == JobStatus.running)


def claim_job(session: Session, job_id: str, worker_id: str, lease_seconds: int) -> Job | None:
    """Take the job: queued, or running under an expired lease (unless it was pausing: the reconciler pauses
    it). None if taken, finished, cancelled or paused (a paused job's message is dropped here)."""
    now = utcnow()
    claimed = _transition(
        session, job_id,
        Job.cancel_requested.is_(False), Job.pause_requested.is_(False),
        or_(Job.status == JobStatus.queued, and_(Job.status == JobStatus.running, Job.lease_expires_at < now)),
        status=JobStatus.running, lease_owner=worker_id, lease_expires_at=now + timedelta(seconds=lease_seconds),
        attempts=Job.attempts + 1, started_at=now, first_started_at=func.coalesce(Job.first_started_at, now),
    )  # fmt: skip
    return get_job(session, job_id) if claimed else None


def held_job(session: Session, job_id: str, worker_id: str) -> Job | None:
    """The job if it is still ours to run (running under our lease, not cancelled; a pause may be pending)."""
    job = get_job(session, job_id)
    held = not job.cancel_requested and job.status == JobStatus.running and job.lease_owner == worker_id
    return job if held else None


def is_held_by(session: Session, job_id: str, worker_id: str) -> bool:
    """Whether the job is still ours to run: running under our lease and not cancelled."""
    return held_job(session, job_id, worker_id) is not None


def renew_lease(session: Session, job_id: str, worker_id: str, lease_seconds: int) -> bool:
    """Extend our lease; False if the job is no longer ours to run (cancelled or re-claimed)."""
    return _transition(
        session, job_id, *_held_by(worker_id), lease_expires_at=utcnow() + timedelta(seconds=lease_seconds)
    )


def finish_job(session: Session, job_id: str, worker_id: str, status: JobStatus, **values: Any) -> bool:
    """Record the outcome, only if the job is still running under our lease (a cancel wins)."""
    return _transition(
        session, job_id, *_held_by(worker_id),
        status=status, finished_at=utcnow(), lease_expires_at=None, estimated_finish=None, tokens_per_second=None,
        pause_requested=False, **values,
    )  # fmt: skip


def fail_job(session: Session, job_id: str, worker_id: str, code: str, message: str, **values: Any) -> bool:
    """running → failed with a reason, if still ours."""
    failed = finish_job(session, job_id, worker_id, JobStatus.failed, error=_error(code, message), **values)
    if failed:
        add_event(session, job_id, f"Job failed: {message}", level="error")
    return failed


def release_job(session: Session, job_id: str, worker_id: str, message: str) -> Job | None:
    """Give a running job of ours back to the queue (a handoff or a retry); None if it is not ours, or a pause
    is pending (pause_running_job then)."""
    released = _transition(
        session, job_id, *_held_by(worker_id), Job.pause_requested.is_(False),
        status=JobStatus.queued, lease_owner=None, lease_expires_at=None, enqueued_at=utcnow(), tokens_per_second=None,
    )  # fmt: skip
    if not released:
        return None
    add_event(session, job_id, message, level="warn")
    return get_job(session, job_id)


# ---------------------------------------------------------------------------------------------- reconciler
def recover_lost_job(
    session: Session, job_id: str, attempts: int, owner: str | None, max_attempts: int
) -> JobStatus | None:
    """A running job whose lease expired (its worker died): back to `queued`, or `failed` once it has used up
    its attempts, or `paused` if it was pausing (at its newest complete checkpoint). None if someone else
    repaired it or the worker renewed in time."""
    now = utcnow()
    expired = (Job.status == JobStatus.running, Job.lease_expires_at < now)
    if _pause(session, job_id, *expired, Job.pause_requested.is_(True)):
        add_event(
            session, job_id,
            f"Worker {owner} stopped renewing its lease while the job was pausing; paused at its newest complete "
            "checkpoint",
            level="warn",
        )  # fmt: skip
        return JobStatus.paused
    if attempts >= max_attempts:
        message = (
            f"The job's worker stopped responding {attempts} time(s) (last: {owner}); "
            "giving up after the maximum number of attempts."
        )
        if not _transition(
            session, job_id, *expired,
            status=JobStatus.failed, finished_at=now, lease_expires_at=None, error=_error("worker_lost", message),
        ):  # fmt: skip
            return None
        add_event(session, job_id, message, level="error")
        return JobStatus.failed
    if not _transition(
        session, job_id, *expired, status=JobStatus.queued, lease_owner=None, lease_expires_at=None, enqueued_at=now
    ):
        return None
    add_event(session, job_id, f"Worker {owner} stopped renewing its lease; job re-queued", level="warn")
    return JobStatus.queued


def mark_resent(session: Session, job_id: str, status: JobStatus, enqueued_at: datetime | None) -> bool:
    """A job whose broker message was lost is about to be sent again: only one reconciler may do it, and
    never while a validator holds a live lease on it (its message was consumed because it is being checked)."""
    now = utcnow()
    resent = _transition(
        session, job_id, Job.status == status, Job.enqueued_at == enqueued_at, lease_is_free(now), enqueued_at=now
    )
    if resent:
        add_event(session, job_id, "Job message was missing from the broker; sent again")
    return resent


# ---------------------------------------------------------------------------------------------- progress
def record_metrics(session: Session, job_id: str, worker_id: str, record: dict[str, Any]) -> None:
    """A metrics event, and the job's progress figures (steps, tokens, estimated finish)."""
    step, total = record["step"], record["total_steps"]
    data = {k: v for k, v in record.items() if k not in ("type", "time")}
    message = f"Step {step}/{total}: training loss={record.get('train_loss'):.4f}"
    margin, accuracy = record.get("rewards_margin"), record.get("rewards_accuracy")
    if margin is not None and accuracy is not None:  # a DPO job's
        message += f", reward margin={margin:.4f}, preference accuracy={accuracy:.2f}"
    add_event(session, job_id, message, kind="metrics", data=data)
    job = get_job(session, job_id)
    if job.lease_owner != worker_id:
        return
    job.total_steps, job.completed_steps = total, step
    job.trained_tokens = record.get("tokens_seen")
    job.tokens_per_second = record.get("tokens_per_second")
    job.estimated_finish = estimate_finish(job, utcnow())


def estimate_finish(job: Job, now: datetime) -> datetime | None:
    """From the job's progress: the tokens left (against the validation stage's count) at the measured
    speed; else the steps left at the average time per step so far."""
    if job.estimated_tokens and job.trained_tokens is not None and job.tokens_per_second:
        return now + timedelta(seconds=max(job.estimated_tokens - job.trained_tokens, 0) / job.tokens_per_second)
    if job.started_at and job.completed_steps:
        left = max((job.total_steps or 0) - job.completed_steps, 0)
        return now + (now - job.started_at) / job.completed_steps * left
    return None


def record_checkpoint(
    session: Session,
    job_id: str,
    record: dict[str, Any],
    storage_key: str,
    attempt: int | None = None,
    archive: tuple[str, int] | None = None,
) -> None:
    step = record["step"]
    metrics = {k: v for k, v in record.get("metrics", {}).items() if v is not None}
    sha256, size = archive or (None, None)
    session.add(
        Checkpoint(
            id=new_id("ftckpt"), job_id=job_id, step_number=step, metrics=metrics, storage_key=storage_key,
            adapter_sha256=sha256, adapter_bytes=size,
        )
    )  # fmt: skip
    add_event(session, job_id, f"Checkpoint created at step {step}", data={"step": step, "attempt": attempt})
