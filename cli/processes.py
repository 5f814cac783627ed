"""Starting and stopping loraq's long-running processes, shared by `loraq up`, `loraq api`, `loraq worker`
(one process, or one per GPU) and `loraq validator`."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType

# ---------------------------------------------------------------- commands


def _celery_worker(queues: str, name: str, pool: str, concurrency: int) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app:celery_app", "worker",
        "--pool", pool, "--concurrency", str(concurrency), "--queues", queues, "--hostname", f"{name}@%h",
        "--loglevel", "INFO", "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def worker_command(queues: str, name: str = "worker") -> list[str]:
    """One Celery worker process: solo pool, one job at a time (its training runs in a child process)."""
    return _celery_worker(queues, name, "solo", 1)


def validator_command(queue: str, name: str = "validator", concurrency: int = 2) -> list[str]:
    """A Celery worker for the validating_files stage: threads, tokenizers only (no training, no GPU)."""
    return _celery_worker(queue, name, "threads", concurrency)


def api_command(host: str, port: int, workers: int = 1) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "api.main:app", "--host", host, "--port", str(port),
            "--workers", str(workers), "--no-access-log"]  # fmt: skip


def thread_environment(threads: int) -> dict[str, str]:
    """Caps the intra-op threads of torch (and the BLAS below it) in the processes that inherit it."""
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


# ---------------------------------------------------------------- starting and stopping


def _start(command: list[str], env: dict[str, str] | None) -> subprocess.Popen[bytes]:
    # Own session: Ctrl-C at the terminal reaches only the parent, which stops its children in order.
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True)


@dataclass
class Child:
    name: str
    command: list[str]
    env: dict[str, str] | None
    process: subprocess.Popen[bytes]
    stopped_last: bool = False

    @property
    def returncode(self) -> int | None:
        return self.process.poll()


class ProcessGroup:
    """The child processes one `loraq` command runs. Stopping sends SIGTERM to each, waits up to `stop_timeout`
    and kills what is left: first every child, then those marked `stopped_last`."""

    def __init__(self, stop_timeout: float) -> None:
        self.stop_timeout = stop_timeout
        self.children: list[Child] = []

    def spawn(
        self, name: str, command: list[str], env: dict[str, str] | None = None, stopped_last: bool = False
    ) -> Child:
        child = Child(name, command, env, _start(command, env), stopped_last)
        self.children.append(child)
        return child

    def restart(self, child: Child) -> None:
        child.process = _start(child.command, child.env)

    def exited(self) -> list[Child]:
        return [child for child in self.children if child.returncode is not None]

    def stop(self) -> None:
        _stop([c.process for c in self.children if not c.stopped_last], self.stop_timeout)
        _stop([c.process for c in self.children if c.stopped_last], self.stop_timeout)


def _stop(processes: list[subprocess.Popen[bytes]], timeout: float) -> None:
    # SIGTERM to the process only, not its session: each one stops its own children in its own order.
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt, once: a second one does not cut the orderly stop short."""
    stopping = False

    def _stop_requested(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt

    # Installed explicitly: a process started in the background by a shell inherits an ignored SIGINT.
    signal.signal(signal.SIGTERM, _stop_requested)
    signal.signal(signal.SIGINT, _stop_requested)
