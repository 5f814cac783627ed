"""A validator's hold on the job whose files it reads: the lease, kept alive by a heartbeat thread, and its
progress through a large file.

The row loop (training.data_report.file_report) calls the progress callback after each example; the
callback only notes the figures, and raises ValidationStopped once the job is no longer ours (cancelled,
or claimed by another validator after our lease lapsed) or this validator is stopping, so the validation
ends at the next example. The heartbeat thread does the database work: every few seconds it renews the
lease (a failed renewal is how a cancel is seen), and every `validation_progress_seconds` it writes the
progress, as an event and on the job (`validation_progress`), in the same transaction.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraq.settings import Settings
from models.job_state import record_validation_progress, renew_validation
from models.session import session_scope

logger = logging.getLogger("loraq.validator")

# Set when Celery begins a warm shutdown (SIGTERM, Ctrl-C of `loraq up`): a validation in progress stops
# at its next example and hands the job back (Celery waits for running tasks before the process exits).
STOPPING = threading.Event()

# The heartbeat's period at most (lease_seconds / 3 or validation_progress_seconds when shorter): a cancel
# is seen within it.
CHECK_SECONDS = 2.0


class ValidationStopped(Exception):
    """The validation ended before its outcome: `cancelled` (the job is no longer ours) or `stopping`."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class FileProgress:
    """How far the validator is in one file; `position` (examples, bytes read) is replaced whole by the row
    loop and read by the heartbeat thread."""

    role: str
    bytes_total: int
    started: float
    position: tuple[int, int] = (0, 0)

    def figures(self) -> dict[str, Any]:
        rows, read = self.position
        elapsed = time.monotonic() - self.started
        return {
            "file": self.role,
            "rows_done": rows,
            "rows_estimated": _about(rows * self.bytes_total / read) if read else None,
            "bytes_done": read,
            "bytes_total": self.bytes_total,
            "eta_seconds": round(elapsed * (self.bytes_total - read) / read) if read else None,
        }


def describe_progress(figures: dict[str, Any]) -> str:
    """'Validating training file: 41,000 of ~120,000 rows, 210 MB of 600 MB, about 1 min 20 s left'."""
    text = f"Validating {figures['file']} file: {figures['rows_done']:,} of ~{figures['rows_estimated']:,} rows, "
    text += f"{_size(figures['bytes_done'])} of {_size(figures['bytes_total'])}"
    return text + (f", about {_duration(figures['eta_seconds'])} left" if figures["eta_seconds"] is not None else "")


class ValidationLease:
    """Use as a context manager around the reading of a job's files, after claim_validation succeeded."""

    def __init__(self, settings: Settings, job_id: str, validator_id: str):
        self.db = settings.resolved_database_url
        self.job_id, self.validator_id = job_id, validator_id
        self.lease_seconds = settings.lease_seconds
        self.report_every = settings.validation_progress_seconds
        self.period = min(settings.lease_seconds / 3, CHECK_SECONDS, self.report_every)
        self.lost = threading.Event()
        self._done = threading.Event()
        self._file: FileProgress | None = None
        self._thread = threading.Thread(target=self._beat, name=f"lease-{job_id}", daemon=True)

    def __enter__(self) -> ValidationLease:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join()

    def reading(self, role: str, path: Path) -> Callable[[int, int], None]:
        """Start on one file; returns the progress callback for its rows."""
        self._file = file = FileProgress(role, os.path.getsize(path), time.monotonic())

        def row(examples: int, read: int) -> None:
            if self.lost.is_set():
                raise ValidationStopped("cancelled")
            if STOPPING.is_set():
                raise ValidationStopped("stopping")
            file.position = (examples, read)

        return row

    def _beat(self) -> None:
        reported = time.monotonic()
        while not self._done.wait(self.period):
            file = self._file
            # Reported at the last beat before the interval would pass, so no gap is longer than the interval.
            due = time.monotonic() - reported >= self.report_every - self.period
            report = due and file is not None and file.position[1] > 0
            try:
                with session_scope(self.db) as session:
                    ours = renew_validation(session, self.job_id, self.validator_id, self.lease_seconds)
                    if ours and report and file is not None:
                        figures = {**file.figures(), "validator": self.validator_id}
                        record_validation_progress(
                            session, self.job_id, self.validator_id, figures, describe_progress(figures)
                        )
                        reported = time.monotonic()
            except Exception:  # the database is unreachable: keep reading; the lease may still hold when it is back
                logger.warning("job %s: could not renew the validation lease; retrying", self.job_id, exc_info=True)
                continue
            if not ours:
                logger.info("job %s: no longer ours (cancelled, or taken after our lease lapsed)", self.job_id)
                self.lost.set()
                return


def _about(count: float) -> int:
    """A count to three significant figures: an estimate should not look exact."""
    return int(float(f"{count:.3g}"))


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            value = count / scale
            return f"{value:.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"
    return f"{count} bytes"


def _duration(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        minutes, rest = divmod(seconds, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, rest = divmod(seconds, 3600)
    return f"{hours} h {rest // 60} min"
