"""`loraq worker --gpus 0,1,...`: one Celery worker process per GPU, each seeing only its device.

The parent never touches CUDA; it starts the workers, restarts one that dies, and passes SIGTERM or
Ctrl-C on to all of them. Each worker's training processes get an equal share of the CPU cores (or
`--threads`), so workers sharing a machine do not oversubscribe it.
"""

from __future__ import annotations

import logging
import os
import time

from cli.processes import ProcessGroup, stop_on_signals, thread_environment, worker_command

logger = logging.getLogger("loraq.worker")

RESTART_DELAY_SECONDS = 5.0
STOP_TIMEOUT_SECONDS = 60.0


def gpu_environment(gpu: str, threads: int) -> dict[str, str]:
    """One GPU, and its share of the CPU cores for the training process's CPU-side threads."""
    return dict(os.environ, CUDA_VISIBLE_DEVICES=gpu, CUDA_DEVICE_ORDER="PCI_BUS_ID", **thread_environment(threads))


def run_fleet(gpus: list[str], queues: str, name: str, threads: int | None = None) -> int:
    threads = threads or max(1, (os.cpu_count() or 1) // len(gpus))
    workers = ProcessGroup(STOP_TIMEOUT_SECONDS)
    stop_on_signals()
    try:
        for gpu in gpus:
            workers.spawn(
                f"worker for GPU {gpu}", worker_command(queues, f"{name}-gpu{gpu}"), gpu_environment(gpu, threads)
            )
        while True:
            for worker in workers.exited():
                logger.warning("%s exited with code %s; restarting", worker.name, worker.returncode)
                time.sleep(RESTART_DELAY_SECONDS)
                workers.restart(worker)
            time.sleep(0.5)
    except KeyboardInterrupt:
        return 0
    finally:
        workers.stop()
