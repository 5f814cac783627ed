"""The job supervisor: the worker side of the reliability protocol in DESIGN.md.

It claims a job (one atomic update), resumes it from its newest complete checkpoint, runs the training
program as a child process and turns the child's progress records into events and checkpoint rows. While
the child trains it renews the lease and asks the child to stop when the job is cancelled or claimed by
another worker (`cancel`), when this worker is shutting down (`handoff`: checkpoint, then back to the
queue), or when the run-time limit passes (`deadline`: checkpoint, then fail). A child killed from outside
is retried from its last checkpoint, up to `max_attempts`. The job is `succeeded` only once its adapter
archive is on disk with its sha256 recorded.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from loraq.settings import Settings
from loraq.storage import Storage, build_archive, read_tail, sha256_of
from models import Checkpoint, FileRecord, FileStatus, Job, JobStatus, new_id, utcnow
from models.job_state import (
    add_event,
    claim_job,
    fail_job,
    finish_job,
    get_job,
    is_held_by,
    record_checkpoint,
    record_metrics,
    release_job,
    renew_lease,
)
from models.session import session_scope
from training.checkpoints import is_adapter_file, is_complete, newest_complete, remove_incomplete, step_of
from training.config import TrainingConfig
from worker.celery_app import send_job
from worker.child_process import ProgressTail, dead_rank, exit_reason, kill, request_stop, start_training
from worker.errors import JobTaskError, ModelNotOffered, StorageFailure
from worker.job_config import build_training_config

logger = logging.getLogger("loraq.worker")

POLL_SECONDS = 0.5
STOP_GRACE_SECONDS = 60


def worker_identity(node: str | None = None) -> str:
    """`<celery node>:<pid>`: which worker process holds a job's lease."""
    return f"{node or socket.gethostname()}:{os.getpid()}"


class Outcome(enum.StrEnum):
    """How one delivery of the job task ended (the Celery task's result)."""

    skipped = "skipped"  # not claimable: taken by another worker, finished or cancelled
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    requeued = "requeued"  # handed back to the queue with its checkpoints (shutdown, or a retry)
    lost = "lost"  # the lease passed to another worker meanwhile; nothing of ours to record


# Set when Celery begins a warm shutdown (SIGTERM): the running job checkpoints and goes back to the queue.
SHUTTING_DOWN = threading.Event()


class JobSupervisor:
    def __init__(self, job_id: str, settings: Settings, node: str | None = None):
        self.job_id = job_id
        self.settings = settings
        self.db = settings.resolved_database_url
        self.storage = Storage(settings.resolved_storage_root)
        self.paths = self.storage.job_paths(job_id)
        self.worker_id = worker_identity(node)
        self.deadline: datetime | None = None
        self.time_limit: int | None = None  # seconds, from the job's first start
        self.attempt = 0
        self.final: dict[str, Any] = {}  # the child's last record: completed, stopped or failed
        self.processes = 1  # training processes (ranks under torchrun when more than one)

    # ------------------------------------------------------------------ entry point
    def run(self) -> Outcome:
        with session_scope(self.db) as session:
            job = claim_job(session, self.job_id, self.worker_id, self.settings.lease_seconds)
            if job is None:
                logger.info("job %s: not claimable (taken, finished or cancelled); skipping", self.job_id)
                return Outcome.skipped
            self.attempt = job.attempts
            self.deadline = self._deadline(job)
            try:
                config = build_training_config(job, self.settings, self.storage, session)
            except ModelNotOffered as exc:  # failed in the claim's own transaction: it never runs
                fail_job(session, self.job_id, self.worker_id, exc.code, exc.message)
                return Outcome.failed
            config.resume_from = self._resume_point()
            unreported = self._unreported_checkpoints(session)
            self._announce_start(session, job, config)
        logger.info("job %s: claimed by %s (attempt %s)", self.job_id, self.worker_id, self.attempt)
        try:
            self._record_unreported_checkpoints(unreported, self.attempt - 1)
            return self._train_and_record(config)
        except OSError as exc:
            logger.exception("job %s: storage error", self.job_id)
            return self._fail(StorageFailure(f"Writing to shared storage failed: {exc}. No adapter was published."))
        except Exception as exc:  # our own crash: the job must not hang in `running`
            logger.exception("job %s: supervisor error", self.job_id)
            return self._fail(JobTaskError(f"The worker failed while running the job: {type(exc).__name__}: {exc}"))

    def _announce_start(self, session: Session, job: Job, config: TrainingConfig) -> None:
        devices = os.environ.get("CUDA_VISIBLE_DEVICES")
        processes = config.nproc_per_node
        add_event(
            session, self.job_id,
            f"Fine-tuning job started (attempt {job.attempts}) on {self.worker_id}"
            + (f", GPU {devices}" if devices else "")
            + (f", {processes} processes ({config.strategy})" if processes > 1 else ""),
            data={
                "worker": self.worker_id, "attempt": job.attempts, "cuda_visible_devices": devices,
                "processes": processes, "strategy": config.strategy,
                "cpu_threads": int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1),
            },
        )  # fmt: skip
        if config.resume_from:
            step = step_of(Path(config.resume_from))
            add_event(
                session, self.job_id, f"Resuming from the checkpoint at step {step}",
                data={"resumed_from_step": step, "attempt": job.attempts},
            )  # fmt: skip

    def _deadline(self, job: Job) -> datetime | None:
        limits = [x for x in (self.settings.max_job_seconds, job.max_runtime_seconds) if x]
        if not limits or job.first_started_at is None:
            return None
        self.time_limit = min(limits)
        return job.first_started_at + timedelta(seconds=self.time_limit)

    # ------------------------------------------------------------------ checkpoints on storage
    def _resume_point(self) -> str | None:
        """The newest complete checkpoint of an earlier attempt; half-written ones are deleted."""
        for folder in remove_incomplete(self.paths.checkpoints):
            logger.warning("job %s: removed incomplete checkpoint %s", self.job_id, folder.name)
        newest = newest_complete(self.paths.checkpoints)
        return str(newest) if newest else None

    def _unreported_checkpoints(self, session: Session) -> list[tuple[int, Path]]:
        """(step, folder) of the complete checkpoints on storage with no database record: a worker that died
        may have completed a checkpoint without recording it; storage is the truth."""
        recorded = set(session.scalars(select(Checkpoint.step_number).where(Checkpoint.job_id == self.job_id)))
        folder = self.paths.checkpoints
        complete = [(step_of(p), p) for p in folder.iterdir() if is_complete(p)] if folder.is_dir() else []
        return sorted((step, p) for step, p in complete if step is not None and step not in recorded)

    def _record_unreported_checkpoints(self, checkpoints: list[tuple[int, Path]], previous_attempt: int) -> None:
        """Record them for the attempt that wrote them, archived first, outside any transaction (the job's
        row is not held while adapter files are read)."""
        if not checkpoints:
            return
        archives = {step: self._archive_checkpoint(path, step) for step, path in checkpoints}
        with session_scope(self.db) as session:
            for step, path in checkpoints:
                record_checkpoint(
                    session, self.job_id, {"step": step, "metrics": {}}, self.storage.relative(path),
                    attempt=previous_attempt, archive=archives[step],
                )  # fmt: skip

    def _archive_checkpoint(self, folder: Path, step: int) -> tuple[str, int] | None:
        """The checkpoint's adapter files (no optimizer or trainer state) as one downloadable archive."""
        try:
            return build_archive(
                folder, self.paths.checkpoint_archive(step), f"{self.job_id}-step-{step}", include=is_adapter_file
            )
        except OSError as exc:  # the checkpoint stays usable for resuming; only its download is missing
            logger.warning("job %s: could not archive checkpoint %s: %s", self.job_id, folder.name, exc)
            return None

    # ------------------------------------------------------------------ child process
    def _train_and_record(self, config: TrainingConfig) -> Outcome:
        self.processes = config.nproc_per_node
        self.paths.root.mkdir(parents=True, exist_ok=True)
        for stale in (self.paths.progress, self.paths.stop):
            stale.unlink(missing_ok=True)
        self.paths.config.write_text(config.model_dump_json(indent=2))
        child = start_training(self.paths.config, self.paths.log)
        self._watch(child, ProgressTail(self.paths.progress))
        return self._record_outcome(child.returncode)

    def _watch(self, child: subprocess.Popen, tail: ProgressTail) -> None:
        renew_every = self.settings.lease_seconds / 3
        last_renew = time.monotonic()
        stop_asked_at: float | None = None
        try:
            while True:
                exited = child.poll() is not None
                self._apply(tail.read())
                if exited:
                    return
                renew_due = time.monotonic() - last_renew >= renew_every
                if stop_asked_at is None:
                    reason = self._stop_reason(renew_due)
                    if reason:
                        request_stop(self.paths.stop, reason)
                        stop_asked_at = time.monotonic()
                        logger.info("job %s: asked the training process to stop (%s)", self.job_id, reason)
                if renew_due:
                    last_renew = time.monotonic()
                    if stop_asked_at is not None:
                        self._still_ours(renew=True)  # keep the lease while the child checkpoints
                if stop_asked_at is not None and time.monotonic() - stop_asked_at > STOP_GRACE_SECONDS:
                    kill(child)
                time.sleep(POLL_SECONDS)
        except BaseException:
            kill(child)
            raise

    def _stop_reason(self, renew_due: bool) -> str | None:
        if not self._still_ours(renew=renew_due):
            return "cancel"
        if SHUTTING_DOWN.is_set():
            return "handoff"
        if self.deadline is not None and utcnow() >= self.deadline:
            return "deadline"
        return None

    def _still_ours(self, renew: bool) -> bool:
        """False once the job is cancelled or claimed by someone else; renews the lease when asked."""
        with session_scope(self.db) as session:
            if not is_held_by(session, self.job_id, self.worker_id):
                return False
            if renew:
                return renew_lease(session, self.job_id, self.worker_id, self.settings.lease_seconds)
        return True

    # ------------------------------------------------------------------ the child's progress records
    def _apply(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        # Archives are written before the transaction opens: no database transaction waits on file I/O.
        archives = {
            r["step"]: self._archive_checkpoint(Path(r["path"]), r["step"])
            for r in records
            if r["type"] == "checkpoint"
        }
        with session_scope(self.db) as session:
            for record in records:
                handler = self.RECORD_HANDLERS.get(record["type"])
                if handler is not None:
                    handler(self, session, record, archives)

    def _on_metrics(self, session: Session, record: dict[str, Any], _archives: dict) -> None:
        record_metrics(session, self.job_id, self.worker_id, record)

    def _on_checkpoint(self, session: Session, record: dict[str, Any], archives: dict) -> None:
        key = self.storage.relative(Path(record["path"]))
        record_checkpoint(session, self.job_id, record, key, attempt=self.attempt, archive=archives[record["step"]])

    def _on_evaluation(self, session: Session, record: dict[str, Any], _archives: dict) -> None:
        data = {k: v for k, v in record.items() if k not in ("type", "time")}
        message = f"Step {record['step']}: validation loss={record.get('eval_loss'):.4f}"
        add_event(session, self.job_id, message, kind="metrics", data=data)

    def _on_started(self, session: Session, record: dict[str, Any], _archives: dict) -> None:
        total = record["total_steps"]
        add_event(session, self.job_id, f"Training started: {total} steps", data={"total_steps": total})

    def _on_final(self, _session: Session, record: dict[str, Any], _archives: dict) -> None:
        self.final = record

    RECORD_HANDLERS: dict[str, Callable[[JobSupervisor, Session, dict[str, Any], dict], None]] = {
        "metrics": _on_metrics,
        "checkpoint": _on_checkpoint,
        "evaluation": _on_evaluation,
        "started": _on_started,
        "completed": _on_final,
        "stopped": _on_final,
        "failed": _on_final,
    }

    # ------------------------------------------------------------------ outcome
    def _record_outcome(self, returncode: int) -> Outcome:
        final = self.final
        if final.get("type") == "completed" and returncode == 0:
            return self._succeed(final)
        if final.get("type") == "stopped":
            reason = final.get("reason")
            if reason == "handoff":
                return self._hand_back(
                    f"Worker {self.worker_id} is shutting down: checkpointed at step {final.get('steps')} and re-queued"
                )
            if reason == "deadline":
                return self._fail(
                    JobTaskError(
                        f"The job ran past its {self.time_limit}-second run-time limit; "
                        f"stopped at step {final.get('steps')} after a final checkpoint.",
                        code="time_limit_exceeded",
                    ),
                    completed_steps=final.get("steps"),
                    trained_tokens=final.get("trained_tokens"),
                )
        with session_scope(self.db) as session:
            job = get_job(session, self.job_id)
            if job.status == JobStatus.cancelled or job.cancel_requested:
                step = final.get("steps", job.completed_steps)
                add_event(session, self.job_id, f"Training stopped at step {step} after cancellation")
                return Outcome.cancelled
            if job.lease_owner != self.worker_id or job.status != JobStatus.running:
                return Outcome.lost  # the reconciler gave the job to another worker; nothing of ours to record
        if final.get("type") == "failed":
            code = final.get("code", "training_error")
            return self._fail(JobTaskError(final.get("message", "training failed"), code=code))
        return self._retry_or_fail(returncode)

    def _retry_or_fail(self, returncode: int) -> Outcome:
        reason = exit_reason(returncode)
        # With several processes the child is torchrun: it exits 1 when a rank died without reporting a
        # failure of its own (a rank that fails reports it, and the others do not), and says which.
        rank_died = self.processes > 1 and returncode != 0
        if rank_died:
            reason = f"lost a rank ({dead_rank(read_tail(self.paths.log, 20_000)) or 'see the job log'})"
        if (returncode < 0 or rank_died) and self.attempt < self.settings.max_attempts:
            # Killed from outside (the kernel's OOM killer, an operator): worth another attempt, which
            # resumes from the last complete checkpoint.
            return self._hand_back(
                f"The training process {reason}; retrying from the last checkpoint "
                f"(attempt {self.attempt + 1} of {self.settings.max_attempts})"
            )
        hint = " Lower hyperparameters.batch_size or max_seq_length if it ran out of memory." if returncode < 0 else ""
        return self._fail(
            JobTaskError(
                f"The training process {reason} (attempt {self.attempt} of "
                f"{self.settings.max_attempts}).{hint} Log tail: {read_tail(self.paths.log, 600)}",
                code="training_crashed",
            )
        )

    def _hand_back(self, message: str) -> Outcome:
        """Release the job to the queue (keeping its checkpoints) and send it again."""
        with session_scope(self.db) as session:
            job = release_job(session, self.job_id, self.worker_id, message)
            if job is None:
                return Outcome.lost
        try:
            send_job(job.id, job.queue)
        except Exception:  # the broker is down too: the reconciler sends queued jobs again
            logger.warning("job %s: re-queued in the database, but the broker refused it", self.job_id)
        return Outcome.requeued

    def _succeed(self, final: dict[str, Any]) -> Outcome:
        adapter = Path(final["adapter_dir"])
        sha256, size = build_archive(adapter, self.paths.adapter_archive, arcname=self.job_id)
        with session_scope(self.db) as session:
            job = get_job(session, self.job_id)
            name = job.fine_tuned_name
            result_ids = [self._register_result_file(session, job, Path(p)) for p in final.get("result_files", [])]
            done = finish_job(
                session, self.job_id, self.worker_id, JobStatus.succeeded,
                fine_tuned_model=name, trained_tokens=final.get("trained_tokens"), completed_steps=final.get("steps"),
                adapter_sha256=sha256, adapter_bytes=size, result_files=result_ids,
            )  # fmt: skip
            if not done:
                add_event(session, self.job_id, "Training finished after the job was cancelled; adapter discarded")
                return Outcome.cancelled
            add_event(session, self.job_id, f"New fine-tuned model created: {name}", data={"fine_tuned_model": name})
            add_event(session, self.job_id, "The job has successfully completed")
        return Outcome.succeeded

    def _register_result_file(self, session: Session, job: Job, path: Path) -> str:
        """A result file becomes a file of the job's owner (purpose `fine-tune-results`), where it lies."""
        record = FileRecord(
            id=new_id("file"), owner=job.owner, filename=path.name, purpose="fine-tune-results",
            bytes=path.stat().st_size, sha256=sha256_of(path), status=FileStatus.processed, examples=0,
            storage_key=self.storage.relative(path),
        )  # fmt: skip
        session.add(record)
        return record.id

    def _fail(self, error: JobTaskError, **values: Any) -> Outcome:
        with session_scope(self.db) as session:
            fail_job(session, self.job_id, self.worker_id, error.code, error.message, **values)
        return Outcome.failed
