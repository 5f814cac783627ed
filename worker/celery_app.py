"""The Celery app. Imported by the API to send job ids, so it must not import torch."""

from __future__ import annotations

from celery import Celery

from loraq.settings import get_settings

RUN_JOB_TASK = "loraq.run_job"


def make_celery(broker_url: str, queue: str) -> Celery:
    app = Celery("loraq", broker=broker_url, include=["worker.tasks"])
    app.conf.update(
        task_default_queue=queue,
        task_ignore_result=True,  # the database holds every outcome
        task_acks_late=True,  # a job whose worker dies before finishing is delivered again ...
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # ... and no second job waits behind a running one
        worker_concurrency=1,
        broker_connection_retry_on_startup=True,
        # A second delivery of a long job finds the claim taken and does nothing, but there is no
        # reason to invite it: keep the unacked message invisible for a day.
        broker_transport_options={"visibility_timeout": 24 * 3600},
        worker_hijack_root_logger=False,
    )
    return app


_settings = get_settings()
celery_app = make_celery(_settings.resolved_broker_url, _settings.queue)
