"""The FastAPI application."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from api.auth import PrincipalCache
from api.errors import install_error_handlers
from api.event_stream import close_streams_on_exit_signals
from api.event_tails import EventHub
from api.job_reads import JobReader
from api.routes import files, health, jobs, metrics, models, webhooks
from api.routes.dashboard import install_dashboard
from api.schemas import error_responses
from api.stream_slots import StreamSlots
from loraq import __version__
from loraq.settings import Settings, get_settings


@asynccontextmanager
async def lifespan(app: FastAPI):
    # Few threads, each with a pooled connection: more only adds GIL and database contention.
    settings = app.state.settings
    anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
    app.state.event_hub = EventHub(settings.resolved_database_url, settings.event_poll_seconds)
    app.state.job_reader = JobReader(settings.resolved_database_url, settings.api_threads, app.state.event_hub.wake)
    await app.state.job_reader.open()
    app.state.stream_slots = StreamSlots(settings.resolved_broker_url, settings.max_event_streams_per_owner)
    close_streams_on_exit_signals(app.state.event_hub.close)
    try:
        yield
    finally:
        await app.state.event_hub.aclose()
        await app.state.stream_slots.aclose()
        await app.state.job_reader.close()


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="loraq", version=__version__, description="OpenAI-compatible LoRA fine-tuning service", lifespan=lifespan
    )
    app.state.settings = settings or get_settings()
    app.state.principal_cache = PrincipalCache(ttl=app.state.settings.key_cache_seconds)
    install_error_handlers(app)
    for module in (health, metrics):
        app.include_router(module.router, responses=error_responses(500))
    app.include_router(files.router, responses=error_responses(400, 401, 404, 413, 500))
    app.include_router(jobs.router, responses=error_responses(400, 401, 404, 429, 500))
    app.include_router(models.router, responses=error_responses(400, 401, 404, 500))
    app.include_router(webhooks.router, prefix=webhooks.PREFIX, responses=error_responses(400, 401, 404, 429, 500))
    app.include_router(webhooks.router, prefix=webhooks.OTHER_PREFIX, include_in_schema=False)
    app.include_router(webhooks.event_types_router, responses=error_responses(401, 500))
    install_dashboard(app)
    logging.getLogger("loraq").setLevel(logging.INFO)
    return app
