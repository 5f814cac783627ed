"""The worker's side of the reliability protocol: claim, lease, events, checkpoints and outcome.

Each function is one short transaction; the job row in the database is the truth that both the API
and every worker read.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from models import Checkpoint, Job, JobEvent, JobStatus, new_id, utcnow


def claim_job(session: Session, job_id: str, worker_id: str, lease_seconds: int) -> Job | None:
    """Take the job with one atomic update: queued, or running under an expired lease. None if taken."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.cancel_requested.is_(False),
            or_(
                Job.status == JobStatus.queued,
                and_(Job.status == JobStatus.running, Job.lease_expires_at < now),
            ),
        )
        .values(
            status=JobStatus.running,
            lease_owner=worker_id,
            lease_expires_at=now + timedelta(seconds=lease_seconds),
            attempts=Job.attempts + 1,
            started_at=now,
            first_started_at=func.coalesce(Job.first_started_at, now),
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    return session.scalars(select(Job).where(Job.id == job_id)).one()


def renew_lease(session: Session, job_id: str, worker_id: str, lease_seconds: int) -> bool:
    """Extend our lease; False if the job is no longer ours to run (cancelled or re-claimed)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == worker_id, Job.status == JobStatus.running)
        .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def add_event(
    session: Session, job_id: str, message: str, *, level: str = "info", kind: str = "message", data=None
) -> None:
    session.add(JobEvent(id=new_id("ftevent"), job_id=job_id, message=message, level=level, type=kind, data=data))


def record_metrics(session: Session, job_id: str, worker_id: str, record: dict[str, Any]) -> None:
    """A metrics event, and the job's progress figures (steps, tokens, estimated finish)."""
    step, total = record["step"], record["total_steps"]
    data = {k: v for k, v in record.items() if k not in ("type", "time")}
    loss = record.get("train_loss")
    add_event(session, job_id, f"Step {step}/{total}: training loss={loss:.4f}", kind="metrics", data=data)
    job = session.scalars(select(Job).where(Job.id == job_id)).one()
    if job.lease_owner != worker_id:
        return
    now = utcnow()
    job.total_steps, job.completed_steps = total, step
    job.trained_tokens = record.get("tokens_seen")
    job.tokens_per_second = record.get("tokens_per_second")
    job.estimated_finish = estimate_finish(job, now)


def estimate_finish(job: Job, now):
    """From the job's progress: the tokens left (against the validation stage's count) at the measured
    speed; else the steps left at the average time per step so far."""
    if job.estimated_tokens and job.trained_tokens is not None and job.tokens_per_second:
        return now + timedelta(seconds=max(job.estimated_tokens - job.trained_tokens, 0) / job.tokens_per_second)
    if job.started_at and job.completed_steps:
        return now + (now - job.started_at) / job.completed_steps * max(job.total_steps - job.completed_steps, 0)
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


def finish_job(session: Session, job_id: str, worker_id: str, status: JobStatus, **values: Any) -> bool:
    """Record the outcome, only if the job is still running under our lease (a cancel wins)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == worker_id, Job.status == JobStatus.running)
        .values(
            status=status,
            finished_at=utcnow(),
            lease_expires_at=None,
            estimated_finish=None,
            tokens_per_second=None,
            **values,
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def release_job(session: Session, job_id: str, worker_id: str) -> Job | None:
    """Give a running job of ours back to the queue (a handoff or a retry); None if it is not ours."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == worker_id, Job.status == JobStatus.running)
        .values(
            status=JobStatus.queued,
            lease_owner=None,
            lease_expires_at=None,
            enqueued_at=utcnow(),
            tokens_per_second=None,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        return None
    return session.scalars(select(Job).where(Job.id == job_id)).one()
