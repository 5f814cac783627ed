"""`loraq jobs watch`: a job's status, steps (with ETA), losses, learning rate and speed, live, until it ends
or is paused (exit status 0 succeeded, 1 failed or cancelled, 3 paused: EXIT_PAUSED).

The figures come from the job's metrics events (worker/supervisor.py records the training program's
progress records, training/progress.py: `step`, `total_steps`, `train_loss`, `learning_rate`, `epoch`,
`tokens_per_second`; evaluation events carry `eval_loss`) over the event stream, and the status and
estimated finish from the job, read every couple of seconds.
"""

from __future__ import annotations

import queue
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from rich.console import Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn
from rich.table import Table
from rich.text import Text

from cli.client.connection import CommandError, Connection
from cli.client.events import follow
from cli.client.output import err, interactive, out, when

FINISHED = ("succeeded", "failed", "cancelled")
JOB_REFRESH_SECONDS = 2.0
STATUS_STYLES = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan", "paused": "magenta"}
EXIT_PAUSED = 3  # not finished, and not a failure: a script can tell it apart from both


@dataclass
class JobView:
    job: dict[str, Any]
    step: int = 0
    total: int | None = None
    train_loss: float | None = None
    valid_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    epoch: float | None = None
    last_message: str = ""

    def apply_job(self, job: dict[str, Any]) -> None:
        self.job = job
        self.total = job.get("total_steps") or self.total
        self.step = max(self.step, job.get("completed_steps") or 0)

    def apply_event(self, event: dict[str, Any]) -> None:
        self.last_message = event["message"]
        data = event.get("data") or {}
        if data.get("total_steps"):
            self.total = data["total_steps"]
        if event["type"] != "metrics":
            return
        if "train_loss" in data:
            self.step = max(self.step, data.get("step") or 0)
            self.train_loss = data["train_loss"]
            self.learning_rate = data.get("learning_rate")
            self.tokens_per_second = data.get("tokens_per_second")
            self.epoch = data.get("epoch")
        if data.get("eval_loss") is not None:
            self.valid_loss = data["eval_loss"]

    def eta(self) -> str:
        finish = self.job.get("estimated_finish")
        if not finish or self.job["status"] in FINISHED:
            return "-"
        seconds = max(int(finish - time.time()), 0)
        return (
            f"{seconds // 3600}h {seconds // 60 % 60:02d}m {seconds % 60:02d}s"
            if seconds >= 3600
            else (f"{seconds // 60}m {seconds % 60:02d}s")
        )


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(view: JobView, progress: Progress, task: TaskID) -> Group:
    status = view.job["status"]
    progress.update(task, total=view.total, completed=view.step, eta=view.eta())
    header = Text.assemble((view.job["id"], "bold"), "  ", view.job["model"], "  ",
                           (status, STATUS_STYLES.get(status, "")))  # fmt: skip
    figures = Table.grid(padding=(0, 3))
    for _ in range(5):
        figures.add_column()
    figures.add_row("train loss", "valid loss", "learning rate", "tokens/s", "epoch", style="dim")
    figures.add_row(
        _number(view.train_loss, ".4f"), _number(view.valid_loss, ".4f"), _number(view.learning_rate, ".3g"),
        _number(view.tokens_per_second, ",.0f"), _number(view.epoch, ".2f"),
    )  # fmt: skip
    return Group(header, progress, figures, Text(view.last_message, style="dim", overflow="ellipsis", no_wrap=True))


def _read_events(connection: Connection, job_id: str, updates: queue.Queue) -> None:
    try:
        for kind, value in follow(connection, job_id):
            updates.put((kind, value))
    except CommandError as error:
        updates.put(("error", error))
    finally:
        connection.close()


def watch(connection: Connection, job_id: str) -> int:
    """Follow the job until it ends or pauses; 0 if it succeeded, 1 if it failed or was cancelled, 3 if paused."""
    view = JobView(connection.get(f"fine_tuning/jobs/{job_id}"))
    view.apply_job(view.job)
    if view.job["status"] == "paused":
        return report_outcome(view.job)
    updates: queue.Queue = queue.Queue()
    threading.Thread(target=_read_events, args=(connection.clone(), job_id, updates), daemon=True).start()
    progress = Progress(TextColumn("steps"), BarColumn(), MofNCompleteColumn(), TextColumn("ETA {task.fields[eta]}"))
    task = progress.add_task("steps", total=view.total, eta="-")
    refreshed = time.monotonic()
    live = Live(render(view, progress, task), console=out, refresh_per_second=4) if interactive() else None
    with live or nullcontext():
        while True:
            try:
                kind, value = updates.get(timeout=0.5)
            except queue.Empty:
                kind, value = None, None
            if kind == "error":
                raise value
            if kind == "end":
                view.apply_job(value)
                break
            if kind == "event":
                view.apply_event(value)
                if not live:
                    out.print(f"{when(value['created_at'])}  {value['message']}", soft_wrap=True)
            if time.monotonic() - refreshed >= JOB_REFRESH_SECONDS:
                refreshed = time.monotonic()
                try:
                    view.apply_job(connection.get(f"fine_tuning/jobs/{job_id}"))
                except CommandError as error:
                    if error.status is not None and error.status < 500:
                        raise
                    # unreachable for now: the event stream reconnects by itself; the status catches up later
            if live:
                live.update(render(view, progress, task))
            if view.job["status"] == "paused":  # the stream stays open for a paused job: it is not finished
                break
    return report_outcome(view.job)


def report_outcome(job: dict[str, Any], quiet: bool = False) -> int:
    """0 if the job succeeded, 3 if it is paused, else 1; said on stdout (success) or stderr, unless `quiet`."""
    status = job["status"]
    if quiet:
        return 0 if status == "succeeded" else EXIT_PAUSED if status == "paused" else 1
    if status == "paused":
        err.print(f"{job['id']} paused at step {job.get('completed_steps') or 0}: `loraq jobs resume {job['id']}` "
                  "continues it", soft_wrap=True)  # fmt: skip
        return EXIT_PAUSED
    if status == "succeeded":
        out.print(f"{job['id']} succeeded: {job['fine_tuned_model']} ({job.get('trained_tokens') or 0:,} tokens)")
        return 0
    error = (job.get("error") or {}).get("message") or "no reason recorded"
    err.print(f"error: {job['id']} {status}" + (f": {error}" if status == "failed" else ""), soft_wrap=True)
    return 1
