"""`loraq worker --gpus 0,1,...`: one Celery worker process per GPU, each seeing only its device.

The parent never touches CUDA; it starts the workers, restarts one that dies, and passes SIGTERM or
Ctrl-C on to all of them. Each worker's training processes get an equal share of the CPU cores (or
`--threads`), so workers sharing a machine do not oversubscribe it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time

from cli.processes import spawn, thread_environment, worker_command

logger = logging.getLogger("loraq.worker")

RESTART_DELAY_SECONDS = 5.0
STOP_TIMEOUT_SECONDS = 60.0


def gpu_environment(gpu: str, threads: int) -> dict[str, str]:
    """One GPU, and its share of the CPU cores for the training process's CPU-side threads."""
    return dict(os.environ, CUDA_VISIBLE_DEVICES=gpu, CUDA_DEVICE_ORDER="PCI_BUS_ID", **thread_environment(threads))


def run_fleet(gpus: list[str], queues: str, name: str, threads: int | None = None) -> int:
    threads = threads or max(1, (os.cpu_count() or 1) // len(gpus))
    workers: dict[str, subprocess.Popen] = {}
    stopping = False

    def _stop(_signum, _frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    for gpu in gpus:
        workers[gpu] = spawn(worker_command(queues, f"{name}-gpu{gpu}"), gpu_environment(gpu, threads))
    while not stopping:
        for gpu, process in list(workers.items()):
            if process.poll() is not None:
                logger.warning("worker for GPU %s exited with code %s; restarting", gpu, process.returncode)
                time.sleep(RESTART_DELAY_SECONDS)
                workers[gpu] = spawn(worker_command(queues, f"{name}-gpu{gpu}"), gpu_environment(gpu, threads))
        time.sleep(0.5)
    for process in workers.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for process in workers.values():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
    return 0
