"""The job supervisor: claims a job, runs the training program as a child process and records the outcome.

The child gets a fresh process (a fresh CUDA context, hard-killable) and talks back only through its
progress file; the supervisor turns those records into events and checkpoint rows, renews the lease,
stops the child when the job is cancelled, and marks the job `succeeded` only once the adapter archive
is on disk with its checksum recorded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from loraq.base_models import find_model
from loraq.settings import Settings
from loraq.storage import Storage, build_archive, read_tail
from models import FileRecord, Job, JobStatus
from models.session import session_scope
from training.config import Hyperparameters, TrainingConfig
from worker.claims import add_event, claim_job, finish_job, record_checkpoint, record_metrics, renew_lease

logger = logging.getLogger("loraq.worker")

POLL_SECONDS = 0.5
STOP_GRACE_SECONDS = 60


def worker_identity(node: str | None = None) -> str:
    """`<celery node>:<pid>`: which worker process holds a job's lease."""
    return f"{node or socket.gethostname()}:{os.getpid()}"


class ProgressTail:
    """Reads the complete lines appended to the child's progress file since the last read."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
        self.offset += end
        return [json.loads(line) for line in data[:end].splitlines() if line.strip()]


@dataclass
class RunOutcome:
    final: dict[str, Any] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)


def build_training_config(job: Job, settings: Settings, storage: Storage, session) -> TrainingConfig:
    entry = find_model(settings, job.model)
    if entry is None:
        raise LookupError(f"base model {job.model!r} is no longer offered by this server")
    files = {
        f.id: storage.resolve(f.storage_key)
        for f in session.scalars(select(FileRecord).where(FileRecord.id.in_(_job_files(job))))
    }
    job_dir = storage.job_dir(job.id)
    return TrainingConfig(
        base_model=entry.source,
        trust_remote_code=entry.trust_remote_code,
        model_cache_dir=str(settings.model_cache_dir),
        train_path=str(files[job.training_file]),
        eval_path=str(files[job.validation_file]) if job.validation_file else None,
        output_dir=str(storage.adapter_dir(job.id)),
        checkpoint_dir=str(storage.checkpoints_dir(job.id)),
        progress_path=str(job_dir / "progress.jsonl"),
        stop_path=str(job_dir / "stop"),
        seed=job.seed,
        hyperparameters=Hyperparameters.model_validate(job.hyperparameters),
        extra_metadata={"job_id": job.id, "model": job.model, "fine_tuned_model": job.fine_tuned_name},
    )


def _job_files(job: Job) -> list[str]:
    return [f for f in (job.training_file, job.validation_file) if f]


class JobSupervisor:
    def __init__(self, job_id: str, settings: Settings, node: str | None = None):
        self.job_id = job_id
        self.settings = settings
        self.db = settings.resolved_database_url
        self.storage = Storage(settings.resolved_storage_root)
        self.worker_id = worker_identity(node)

    # ------------------------------------------------------------------ entry point
    def run(self) -> str:
        with session_scope(self.db) as session:
            job = claim_job(session, self.job_id, self.worker_id, self.settings.lease_seconds)
            if job is None:
                logger.info("job %s: not claimable (taken, finished or cancelled); skipping", self.job_id)
                return "skipped"
            try:
                config = build_training_config(job, self.settings, self.storage, session)
            except LookupError as exc:
                finish_job(
                    session,
                    self.job_id,
                    self.worker_id,
                    JobStatus.failed,
                    error=_error("model_not_found", exc),
                )
                add_event(session, self.job_id, f"Job failed: {exc}", level="error")
                return "failed"
            devices = os.environ.get("CUDA_VISIBLE_DEVICES")
            add_event(
                session,
                self.job_id,
                f"Fine-tuning job started (attempt {job.attempts}) on {self.worker_id}"
                + (f", GPU {devices}" if devices else ""),
                data={"worker": self.worker_id, "attempt": job.attempts, "cuda_visible_devices": devices},
            )
        logger.info("job %s: claimed by %s", self.job_id, self.worker_id)
        try:
            return self._train_and_record(config)
        except Exception as exc:  # our own crash: the job must not hang in `running`
            logger.exception("job %s: supervisor error", self.job_id)
            self._fail("internal_error", f"The worker failed while running the job: {type(exc).__name__}: {exc}")
            return "failed"

    # ------------------------------------------------------------------ child process
    def _train_and_record(self, config: TrainingConfig) -> str:
        job_dir = self.storage.job_dir(self.job_id)
        job_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("progress.jsonl", "stop"):
            (job_dir / stale).unlink(missing_ok=True)
        config_path = job_dir / "config.json"
        config_path.write_text(config.model_dump_json(indent=2))
        log_path = job_dir / "train.log"
        with log_path.open("ab") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", "training.run", "--config", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # our signals (Ctrl-C at the terminal) reach the child only via us
                preexec_fn=_die_with_parent,
            )
        outcome = self._watch(child, ProgressTail(Path(config.progress_path)), Path(config.stop_path))
        return self._record_outcome(child.returncode, outcome, log_path)

    def _watch(self, child: subprocess.Popen, tail: ProgressTail, stop_path: Path) -> RunOutcome:
        outcome = RunOutcome()
        renew_every = self.settings.lease_seconds / 3
        last_renew = time.monotonic()
        stop_asked_at: float | None = None
        try:
            while True:
                exited = child.poll() is not None
                self._apply(tail.read(), outcome)
                if exited:
                    return outcome
                renew_due = time.monotonic() - last_renew >= renew_every
                if stop_asked_at is None and not self._still_ours(renew=renew_due):
                    stop_path.touch()
                    stop_asked_at = time.monotonic()
                    logger.info("job %s: cancelled or no longer ours; stopping the child", self.job_id)
                if renew_due:
                    last_renew = time.monotonic()
                if stop_asked_at is not None and time.monotonic() - stop_asked_at > STOP_GRACE_SECONDS:
                    _kill(child)
                time.sleep(POLL_SECONDS)
        except BaseException:
            _kill(child)
            raise

    def _still_ours(self, renew: bool) -> bool:
        """False once the job is cancelled or claimed by someone else; renews the lease when asked."""
        with session_scope(self.db) as session:
            job = session.scalars(select(Job).where(Job.id == self.job_id)).one()
            if job.cancel_requested or job.status != JobStatus.running or job.lease_owner != self.worker_id:
                return False
            if renew:
                return renew_lease(session, self.job_id, self.worker_id, self.settings.lease_seconds)
        return True

    def _apply(self, records: list[dict[str, Any]], outcome: RunOutcome) -> None:
        if not records:
            return
        with session_scope(self.db) as session:
            for record in records:
                kind = record["type"]
                if kind == "metrics":
                    record_metrics(session, self.job_id, self.worker_id, record)
                elif kind == "checkpoint":
                    key = self.storage.relative(Path(record["path"]))
                    record_checkpoint(session, self.job_id, record, key)
                elif kind == "evaluation":
                    loss = record.get("eval_loss")
                    data = {k: v for k, v in record.items() if k not in ("type", "time")}
                    add_event(
                        session,
                        self.job_id,
                        f"Step {record['step']}: validation loss={loss:.4f}",
                        kind="metrics",
                        data=data,
                    )
                elif kind == "started":
                    add_event(
                        session,
                        self.job_id,
                        f"Training started: {record['total_steps']} steps",
                        data={"total_steps": record["total_steps"]},
                    )
                elif kind in ("completed", "stopped", "failed"):
                    outcome.final = record
                outcome.records.append(record)

    # ------------------------------------------------------------------ outcome
    def _record_outcome(self, returncode: int, outcome: RunOutcome, log_path: Path) -> str:
        final = outcome.final or {}
        if final.get("type") == "completed" and returncode == 0:
            return self._succeed(final)
        with session_scope(self.db) as session:
            job = session.scalars(select(Job).where(Job.id == self.job_id)).one()
            if job.status == JobStatus.cancelled or job.cancel_requested:
                step = final.get("steps", job.completed_steps)
                add_event(session, self.job_id, f"Training stopped at step {step} after cancellation")
                return "cancelled"
        if final.get("type") == "failed":
            self._fail(final.get("code", "training_error"), final.get("message", "training failed"))
        else:
            reason = _exit_reason(returncode)
            self._fail("training_crashed", f"The training process {reason}. Log tail: {read_tail(log_path, 600)}")
        return "failed"

    def _succeed(self, final: dict[str, Any]) -> str:
        adapter = Path(final["adapter_dir"])
        sha256, size = build_archive(adapter, self.storage.adapter_archive(self.job_id), arcname=self.job_id)
        with session_scope(self.db) as session:
            job = session.scalars(select(Job).where(Job.id == self.job_id)).one()
            name = job.fine_tuned_name
            done = finish_job(
                session,
                self.job_id,
                self.worker_id,
                JobStatus.succeeded,
                fine_tuned_model=name,
                trained_tokens=final.get("trained_tokens"),
                completed_steps=final.get("steps"),
                adapter_sha256=sha256,
                adapter_bytes=size,
            )
            if not done:
                add_event(session, self.job_id, "Training finished after the job was cancelled; adapter discarded")
                return "cancelled"
            add_event(session, self.job_id, f"New fine-tuned model created: {name}", data={"fine_tuned_model": name})
            add_event(session, self.job_id, "The job has successfully completed")
        return "succeeded"

    def _fail(self, code: str, message: str) -> None:
        with session_scope(self.db) as session:
            if finish_job(session, self.job_id, self.worker_id, JobStatus.failed, error=_error(code, message)):
                add_event(session, self.job_id, f"Job failed: {message}", level="error")


def _error(code: str, message: Any) -> dict[str, Any]:
    return {"code": code, "message": str(message), "param": None}


def _exit_reason(returncode: int) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (the kernel's out-of-memory killer sends SIGKILL)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {returncode}"


def _die_with_parent() -> None:
    """In the child, before exec: the kernel kills it if this worker process dies (Linux)."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _kill(child: subprocess.Popen) -> None:
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
