"""`loraq worker --gpus 0,1,... [--gpus-per-job N]`: one Celery worker process per group of N GPUs (one GPU
by default), each seeing only its devices and running one job at a time across all of them.

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


def gpu_environment(gpus: list[str], threads: int) -> dict[str, str]:
    """Its GPUs, and their share of the CPU cores for the training processes' CPU-side threads."""
    return dict(
        os.environ, CUDA_VISIBLE_DEVICES=",".join(gpus), CUDA_DEVICE_ORDER="PCI_BUS_ID", **thread_environment(threads)
    )


def gpu_groups(gpus: list[str], per_job: int) -> list[list[str]]:
    """The GPUs in consecutive groups of `per_job` (neighbours by index: on most machines, by interconnect)."""
    if per_job < 1 or len(gpus) % per_job:
        raise ValueError(f"--gpus lists {len(gpus)} GPUs, which do not form groups of --gpus-per-job {per_job}")
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"--gpus lists a GPU twice: {','.join(gpus)}")
    return [gpus[i : i + per_job] for i in range(0, len(gpus), per_job)]


def run_fleet(gpus: list[str], queues: str, name: str, threads: int | None = None, per_job: int = 1) -> int:
    groups = gpu_groups(gpus, per_job)
    threads = threads or max(1, (os.cpu_count() or 1) // len(groups))
    workers = ProcessGroup(STOP_TIMEOUT_SECONDS)
    stop_on_signals()
    try:
        for group in groups:
            label = "-".join(group)
            workers.spawn(
                f"worker for GPU {','.join(group)}",
                worker_command(queues, f"{name}-gpu{label}"),
                gpu_environment(group, threads),
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
