"""The reconciler: repairs what the broker or a dead worker lost, from the database's point of view.

It runs as a thread inside every worker process (so no extra service can be forgotten), and every
repair is a conditional update, so any number of reconcilers can run at once:

- a `running` job whose lease expired (its worker died) goes back to `queued` and is sent again, or
  fails once it has used up its attempts, or is `paused` if a pause was pending (never sent);
- a `queued` job that has waited longer than `requeue_after_seconds` and whose message is not in the
  broker's queue (the broker was down at submit time, or Redis restarted without its data) is sent again;
  so is a job in `validating_files` whose validation message is lost. A job a validator is checking is
  never sent again while the validator's lease lives (its message was consumed because it is being
  checked); a validator that dies mid-file stops renewing, and once its lease has expired the job is sent
  again and validated from the start by another.

A `paused` job is never sent or re-queued: only a resume puts it back in the queue.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import select

from loraq.settings import Settings
from models import Job, JobStatus, utcnow
from models.job_state import lease_is_free, mark_resent, recover_lost_job
from models.session import session_scope
from worker.celery_app import job_ids_in_queue, send_job, send_validation

logger = logging.getLogger("loraq.reconciler")


class Reconciler:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.db = settings.resolved_database_url

    def run_once(self) -> dict[str, list[str]]:
        return {"requeued": self.requeue_lost_jobs(), "resent": self.resend_missing_messages()}

    # ---------------------------------------------------------------- dead workers
    def requeue_lost_jobs(self) -> list[str]:
        now = utcnow()
        with session_scope(self.db) as session:
            lost = session.execute(
                select(Job.id, Job.attempts, Job.lease_owner, Job.queue).where(
                    Job.status == JobStatus.running, Job.lease_expires_at < now
                )
            ).all()
        requeued = []
        for job_id, attempts, owner, queue in lost:
            with session_scope(self.db) as session:
                outcome = recover_lost_job(session, job_id, attempts, owner, self.settings.max_attempts)
            if outcome == JobStatus.queued:
                send_job(job_id, queue)
                requeued.append(job_id)
        return requeued

    # ---------------------------------------------------------------- lost messages
    def resend_missing_messages(self) -> list[str]:
        """Jobs waiting for validation or for a worker whose message the broker no longer holds."""
        validation = self.settings.validation_queue
        return self._resend(JobStatus.validating_files, lambda _queue: validation, send_validation) + self._resend(
            JobStatus.queued, lambda queue: queue, send_job
        )

    def _resend(self, status: JobStatus, queue_of, send) -> list[str]:
        now = utcnow()
        cutoff = now - timedelta(seconds=self.settings.requeue_after_seconds)
        with session_scope(self.db) as session:
            stale = session.execute(
                select(Job.id, Job.queue, Job.enqueued_at).where(
                    Job.status == status, Job.enqueued_at < cutoff, lease_is_free(now)
                )
            ).all()
        waiting: dict[str, set[str]] = {}
        resent = []
        for job_id, job_queue, enqueued_at in stale:
            queue = queue_of(job_queue)
            if queue not in waiting:
                waiting[queue] = job_ids_in_queue(queue)
            if job_id in waiting[queue]:
                continue  # still waiting its turn behind other jobs
            with session_scope(self.db) as session:
                if not mark_resent(session, job_id, status, enqueued_at):
                    continue
            send(job_id, queue)
            resent.append(job_id)
        return resent


def start_reconciler_thread(settings: Settings) -> threading.Event:
    """Run the reconciler every `reconcile_seconds` in a daemon thread; set the returned event to stop."""
    stop = threading.Event()
    reconciler = Reconciler(settings)

    def loop() -> None:
        while True:
            try:
                repaired = reconciler.run_once()
                if any(repaired.values()):
                    logger.info("reconciler: %s", repaired)
            except Exception:
                logger.exception("reconciler pass failed; retrying")
            if stop.wait(settings.reconcile_seconds):
                return

    threading.Thread(target=loop, name="loraq-reconciler", daemon=True).start()
    return stop
