"""The job task. It receives only the job id; the job row says everything else."""

from __future__ import annotations

import logging

from celery.signals import worker_ready, worker_shutting_down

from loraq.settings import get_settings
from worker.celery_app import RUN_JOB_TASK, celery_app
from worker.reconciler import start_reconciler_thread
from worker.supervisor import SHUTTING_DOWN, JobSupervisor
from worker.webhook_delivery import start_webhook_thread

logger = logging.getLogger("loraq.worker")


@celery_app.task(name=RUN_JOB_TASK, bind=True)
def run_job(self, job_id: str) -> str:
    """Claim the job and supervise its training run; a second delivery of a claimed job does nothing."""
    return JobSupervisor(job_id, get_settings(), node=self.request.hostname).run()


@worker_ready.connect
def _start_background_threads(**_kwargs) -> None:
    # In every worker and validator process: repairs, and the webhook outbox's deliveries.
    start_reconciler_thread(get_settings())
    start_webhook_thread(get_settings())


@worker_shutting_down.connect
def _hand_back_running_job(**_kwargs) -> None:
    # A warm shutdown (SIGTERM, a redeploy): the running job checkpoints and goes back to the queue.
    SHUTTING_DOWN.set()
