"""The Celery app and everything that touches the broker: sending job ids, and reading its queues.

The API imports this module (and nothing else of worker/) to enqueue jobs and to report on the broker, so it
must not import torch."""

from __future__ import annotations

import base64
import json

from celery import Celery

from loraq.settings import get_settings

RUN_JOB_TASK = "loraq.run_job"
VALIDATE_JOB_TASK = "loraq.validate_job"


def make_celery(broker_url: str, queue: str) -> Celery:
    app = Celery("loraq", broker=broker_url, include=["worker.tasks", "worker.validation"])
    app.conf.update(
        task_default_queue=queue,
        task_ignore_result=True,  # the database holds every outcome
        # Acknowledge on receipt. A message left unacknowledged for a multi-hour job would be delivered
        # again by Redis once its visibility timeout passes; instead the job row carries a lease, and
        # the reconciler re-sends jobs whose worker vanished or whose message was lost.
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        worker_disable_prefetch=True,  # no second job reserved behind a running one
        worker_concurrency=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": 24 * 3600},
        worker_hijack_root_logger=False,
    )
    return app


def send_job(job_id: str, queue: str) -> None:
    """Send a job id to its queue; callers commit the job row first."""
    celery_app.send_task(RUN_JOB_TASK, args=[job_id], queue=queue)


def send_validation(job_id: str, queue: str) -> None:
    """Send a new job to the validators (`loraq validator`) on LORAQ_VALIDATION_QUEUE; callers commit the job
    row first."""
    celery_app.send_task(VALIDATE_JOB_TASK, args=[job_id], queue=queue)


_settings = get_settings()
celery_app = make_celery(_settings.resolved_broker_url, _settings.queue)


def check_broker() -> None:
    """Raises if the broker cannot be reached within a couple of seconds."""
    with celery_app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)


def queue_depths(queues: set[str]) -> dict[str, int]:
    """Messages waiting in each Redis queue."""
    with celery_app.connection_for_read() as connection:
        client = connection.default_channel.client
        return {queue: client.llen(queue) for queue in queues}


def job_ids_in_queue(queue: str) -> set[str]:
    """Job ids of the messages waiting in a Redis queue."""
    with celery_app.connection_for_read() as connection:
        raw = connection.default_channel.client.lrange(queue, 0, -1)
    ids = set()
    for item in raw:
        try:
            message = json.loads(item)
            args = json.loads(base64.b64decode(message["body"]))[0]
            ids.add(args[0])
        except (ValueError, KeyError, IndexError, TypeError):
            continue
    return ids
