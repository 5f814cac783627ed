"""The job supervisor: the worker side of the reliability protocol in DESIGN.md.

It claims a job (one atomic update), resumes it from its newest complete checkpoint, runs the training
program as a child process and turns the child's progress records into events and checkpoint rows. While
the child trains it renews the lease and asks the child to stop when the job is cancelled or claimed by
another worker (`cancel`), when a pause is asked (`pause`: checkpoint, then `paused`, and this worker takes
its next job), when this worker is shutting down (`handoff`: checkpoint, then back to the queue), or when
the run-time limit passes (`deadline`: checkpoint, then fail; time spent paused is not counted). A child
killed from outside is retried from its last checkpoint, up to `max_attempts`. The job is `succeeded` only
once its adapter archive is in storage with its sha256 recorded.

The child trains in the job's workspace (loraq.storage: the storage folder itself, or local scratch when
storage is S3). The supervisor publishes each complete checkpoint to storage before recording it, its
marker last (worker.checkpoint_store), and the final adapter, result files and adapter archive (last)
before the job succeeds; a run resumes from the newest checkpoint complete in storage, fetched back.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from loraq.settings import Settings
from loraq.storage import build_archive, job_key, open_storage, read_tail, sha256_of
from models import Checkpoint, FileRecord, FileStatus, Job, JobStatus, new_id, utcnow
from models.job_state import (
    add_event,
    claim_job,
    fail_job,
    finish_job,
    get_job,
    held_job,
    pause_running_job,
    record_checkpoint,
    record_metrics,
    release_job,
    renew_lease,
)
from models.session import session_scope
from training.checkpoints import is_adapter_file, step_of
from training.config import TrainingConfig
from worker import checkpoint_store
from worker.celery_app import send_job
from worker.child_process import ProgressTail, dead_rank, exit_reason, kill, request_stop, start_training
from worker.errors import JobTaskError, ModelNotOffered, StorageFailure
from worker.job_config import LocalFile, build_training_config, job_files
from worker.parent_adapter import fetch_parent_adapter

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
    paused = "paused"  # checkpointed and paused, as asked; it waits for a resume, not in the queue
    lost = "lost"  # the lease passed to another worker meanwhile; nothing of ours to record


# Set when Celery begins a warm shutdown (SIGTERM): the running job checkpoints and goes back to the queue.
SHUTTING_DOWN = threading.Event()


class JobSupervisor:
    def __init__(self, job_id: str, settings: Settings, node: str | None = None):
        self.job_id = job_id
        self.settings = settings
        self.db = settings.resolved_database_url
        self.storage = open_storage(settings)
        self.paths = self.storage.job_workspace(job_id)
        self.worker_id = worker_identity(node)
        self.deadline: datetime | None = None
        self.time_limit: int | None = None  # seconds, from the job's first start
        self.attempt = 0
        self.final: dict[str, Any] = {}  # the child's last record: completed, stopped or failed
        self.processes = 1  # training processes (ranks under torchrun when more than one)
        self.pause_requested = False  # seen on the job's row by the last lease check

    # ------------------------------------------------------------------ entry point
    def run(self) -> Outcome:
        with session_scope(self.db) as session:
            job = claim_job(session, self.job_id, self.worker_id, self.settings.lease_seconds)
            if job is None:
                logger.info("job %s: not claimable (taken, finished or cancelled); skipping", self.job_id)
                return Outcome.skipped
            self.attempt = job.attempts
            self.deadline = self._deadline(job)
            stored = job_files(job, session)
            parent = job.parent
            recorded = set(session.scalars(select(Checkpoint.step_number).where(Checkpoint.job_id == self.job_id)))
        logger.info("job %s: claimed by %s (attempt %s)", self.job_id, self.worker_id, self.attempt)
        outcome = Outcome.lost
        try:
            # Downloads (S3) happen outside any transaction (the job's row is not held meanwhile), under the lease.
            try:
                with self._lease_kept():
                    files = {file_id: f.fetch(self.storage) for file_id, f in stored.items()}
                    if parent:  # continued training starts from it; a resumed run, from its own checkpoint
                        fetch_parent_adapter(self.storage, parent, self.paths)
                    resume_from, unreported = self._checkpoints_in_storage(recorded)
            except OSError as exc:
                logger.exception("job %s: storage error", self.job_id)
                return self._fail(
                    StorageFailure(f"Reading the job's files, parent adapter or checkpoints from storage failed: {exc}")
                )
            config = self._start(files, resume_from)
            if config is None:
                return Outcome.failed
            self._record_unreported_checkpoints(unreported, self.attempt - 1)
            outcome = self._train_and_record(config)
            return outcome
        except OSError as exc:
            logger.exception("job %s: storage error", self.job_id)
            outcome = self._fail(StorageFailure(f"Writing to shared storage failed: {exc}. No adapter was published."))
            return outcome
        except Exception as exc:  # our own crash: the job must not hang in `running`
            logger.exception("job %s: supervisor error", self.job_id)
            outcome = self._fail(JobTaskError(f"The worker failed while running the job: {type(exc).__name__}: {exc}"))
            return outcome
        finally:
            if outcome != Outcome.lost:  # a lost job's workspace may be its new holder's on this machine
                self.storage.release_workspace(self.job_id)

    def _start(self, files: dict[str, LocalFile], resume_from: str | None) -> TrainingConfig | None:
        """The run's config, announced; None when the job failed instead (its model is no longer offered)."""
        with session_scope(self.db) as session:
            job = get_job(session, self.job_id)
            try:
                config = build_training_config(job, self.settings, self.paths, files)
            except ModelNotOffered as exc:  # it never runs
                fail_job(session, self.job_id, self.worker_id, exc.code, exc.message)
                return None
            config.resume_from = resume_from
            self._announce_start(session, job, config)
        return config

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
        return job.first_started_at + timedelta(seconds=self.time_limit + (job.paused_seconds or 0))

    # ------------------------------------------------------------------ checkpoints in storage
    def _checkpoints_in_storage(self, recorded: set[int]) -> tuple[str | None, list[tuple[int, Path]]]:
        """The newest complete checkpoint of an earlier attempt (fetched into the workspace), and the complete
        ones with no database record (fetched too): a worker that died may have completed a checkpoint without
        recording it; storage is the truth. Half-written ones are deleted."""
        steps = checkpoint_store.complete_steps(self.storage, self.job_id)
        checkpoint_store.forget_others(self.paths, steps)
        fetch = lambda step: checkpoint_store.fetch(self.storage, self.job_id, step, self.paths)  # noqa: E731
        newest = fetch(steps[-1]) if steps else None
        unreported = [(step, fetch(step)) for step in steps if step not in recorded]
        return (str(newest) if newest else None), unreported

    def _key(self, path: Path) -> str:
        """The storage key of a file or folder of the workspace."""
        return job_key(self.job_id, Path(path).resolve().relative_to(self.paths.root.resolve()))

    def _record_unreported_checkpoints(self, checkpoints: list[tuple[int, Path]], previous_attempt: int) -> None:
        """Record them for the attempt that wrote them, archived first, outside any transaction (the job's
        row is not held while adapter files are read)."""
        if not checkpoints:
            return
        archives = {step: self._archive_checkpoint(path, step) for step, path in checkpoints}
        with session_scope(self.db) as session:
            for step, path in checkpoints:
                record_checkpoint(
                    session, self.job_id, {"step": step, "metrics": {}}, self._key(path),
                    attempt=previous_attempt, archive=archives[step],
                )  # fmt: skip

    def _archive_checkpoint(self, folder: Path, step: int) -> tuple[str, int] | None:
        """The checkpoint's adapter files (no optimizer or trainer state) as one downloadable archive."""
        archive = self.paths.checkpoint_archive(step)
        try:
            built = build_archive(folder, archive, f"{self.job_id}-step-{step}", include=is_adapter_file)
            self.storage.put_file(self._key(archive), archive)
            return built
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
        if self.pause_requested:
            return "pause"
        if SHUTTING_DOWN.is_set():
            return "handoff"
        if self.deadline is not None and utcnow() >= self.deadline:
            return "deadline"
        return None

    @contextmanager
    def _lease_kept(self) -> Iterator[None]:
        """Renew the lease from a thread meanwhile: storage transfers (downloads before a run, a checkpoint's
        upload) may outlast it, and the job must not be given to another worker for that."""
        done = threading.Event()

        def renew() -> None:
            while not done.wait(self.settings.lease_seconds / 3):
                try:
                    self._still_ours(renew=True)
                except Exception:  # the database is down too: the main loop's next renewal says so
                    logger.warning("job %s: could not renew the lease during a transfer", self.job_id)

        thread = threading.Thread(target=renew, name=f"lease-{self.job_id}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _still_ours(self, renew: bool) -> bool:
        """False once the job is cancelled or claimed by someone else; renews the lease when asked, and notes
        whether a pause is pending."""
        with session_scope(self.db) as session:
            job = held_job(session, self.job_id, self.worker_id)
            if job is None:
                return False
            self.pause_requested = job.pause_requested
            if renew:
                return renew_lease(session, self.job_id, self.worker_id, self.settings.lease_seconds)
        return True

    # ------------------------------------------------------------------ the child's progress records
    def _apply(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        # Checkpoints are archived and published before the transaction opens (no database transaction waits
        # on storage), so a checkpoint recorded in the database is always complete in storage.
        archives = {}
        checkpoints = [r for r in records if r["type"] == "checkpoint"]
        if checkpoints:
            with self._lease_kept():
                for record in checkpoints:
                    archives[record["step"]] = self._archive_checkpoint(Path(record["path"]), record["step"])
                    checkpoint_store.publish(self.storage, self.job_id, record["step"], Path(record["path"]))
        with session_scope(self.db) as session:
            for record in records:
                handler = self.RECORD_HANDLERS.get(record["type"])
                if handler is not None:
                    handler(self, session, record, archives)

    def _on_metrics(self, session: Session, record: dict[str, Any], _archives: dict) -> None:
        record_metrics(session, self.job_id, self.worker_id, record)

    def _on_checkpoint(self, session: Session, record: dict[str, Any], archives: dict) -> None:
        key = self._key(Path(record["path"]))
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
            reason, step = final.get("reason"), final.get("steps")
            if reason == "pause":
                return self._hand_back(f"Training stopped at step {step} after a checkpoint; re-queued", step)
            if reason == "handoff":
                return self._hand_back(
                    f"Worker {self.worker_id} is shutting down: checkpointed at step {step} and re-queued", step
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

    def _hand_back(self, message: str, checkpointed_at: int | None = None) -> Outcome:
        """Release the job, keeping its checkpoints: to `paused` if a pause was asked of it, else to the queue,
        and send it again."""
        where = f"at step {checkpointed_at} (checkpointed)" if checkpointed_at else "at its newest complete checkpoint"
        paused = f"Job paused {where}; worker {self.worker_id} is free for other jobs"
        progress = {"completed_steps": checkpointed_at} if checkpointed_at else {}
        with session_scope(self.db) as session:
            if pause_running_job(session, self.job_id, self.worker_id, paused, **progress):
                return Outcome.paused
            job = release_job(session, self.job_id, self.worker_id, message)
            if job is None:
                return Outcome.lost
        try:
            send_job(job.id, job.queue)
        except Exception:  # the broker is down too: the reconciler sends queued jobs again
            logger.warning("job %s: re-queued in the database, but the broker refused it", self.job_id)
        return Outcome.requeued

    def _succeed(self, final: dict[str, Any]) -> Outcome:
        adapter, results = Path(final["adapter_dir"]), [Path(p) for p in final.get("result_files", [])]
        with self._lease_kept():
            sha256, size = build_archive(adapter, self.paths.adapter_archive, arcname=self.job_id)
            self.storage.put_folder(self._key(adapter) + "/", adapter)
            for path in results:
                self.storage.put_file(self._key(path), path)
            self.storage.put_file(self._key(self.paths.adapter_archive), self.paths.adapter_archive)  # last
        with session_scope(self.db) as session:
            job = get_job(session, self.job_id)
            name = job.fine_tuned_name
            result_ids = [self._register_result_file(session, job, path) for path in results]
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
            storage_key=self._key(path),
        )  # fmt: skip
        session.add(record)
        return record.id

    def _fail(self, error: JobTaskError, **values: Any) -> Outcome:
        with session_scope(self.db) as session:
            fail_job(session, self.job_id, self.worker_id, error.code, error.message, **values)
        return Outcome.failed
