"""/metrics in Prometheus format, computed from the database and the broker at scrape time, so every API
process reports the same figures whichever one is scraped."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import func, select

from api.deps import SettingsDep
from loraq.settings import Settings
from models import FileRecord, Job, JobStatus
from models.session import session_scope
from worker.celery_app import queue_depths

router = APIRouter(tags=["health"])


class LoraqCollector:
    def __init__(self, settings: Settings):
        self.settings = settings

    def collect(self):
        with session_scope(self.settings.resolved_database_url) as session:
            by_status = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            running = session.execute(
                select(Job.lease_owner, func.count(), func.coalesce(func.sum(Job.tokens_per_second), 0.0))
                .where(Job.status == JobStatus.running)
                .group_by(Job.lease_owner)
            ).all()
            queues = set(session.scalars(select(Job.queue).distinct())) | {self.settings.queue}
            upload_bytes = session.scalar(select(func.coalesce(func.sum(FileRecord.bytes), 0)))

        jobs = GaugeMetricFamily("loraq_jobs", "Fine-tuning jobs by status", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], by_status.get(status, 0))
        yield jobs

        depth = GaugeMetricFamily("loraq_queue_depth", "Job messages waiting in each broker queue", labels=["queue"])
        for queue, waiting in sorted(queue_depths(queues).items()):
            depth.add_metric([queue], waiting)
        yield depth

        per_worker = GaugeMetricFamily("loraq_running_jobs", "Jobs running, per worker", labels=["worker"])
        speed = GaugeMetricFamily(
            "loraq_training_tokens_per_second", "Training throughput of running jobs, per worker", labels=["worker"]
        )
        for owner, count, tokens_per_second in running:
            per_worker.add_metric([owner or "unknown"], count)
            speed.add_metric([owner or "unknown"], float(tokens_per_second or 0.0))
        yield per_worker
        yield speed

        uploads = CounterMetricFamily("loraq_upload_bytes", "Bytes of datasets uploaded")
        uploads.add_metric([], int(upload_bytes or 0))
        yield uploads


def render_metrics(settings: Settings) -> bytes:
    registry = CollectorRegistry()
    registry.register(LoraqCollector(settings))
    return generate_latest(registry)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(settings: SettingsDep):
    """Prometheus metrics: jobs by status, queue depth, running jobs per worker, tokens/s, upload bytes."""
    body = await run_in_threadpool(render_metrics, settings)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
