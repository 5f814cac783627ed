"""The commands that start loraq's long-running processes, shared by `loraq up`, `loraq api`,
`loraq worker` and `loraq validator`."""

from __future__ import annotations

import subprocess
import sys


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


def spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    # Own session: Ctrl-C at the terminal reaches only the parent, which stops its children in order.
    return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
