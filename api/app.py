"""The FastAPI application."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from api.errors import install_error_handlers
from api.routes import files, health, jobs, metrics, models
from loraq import __version__
from loraq.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(title="loraq", version=__version__, description="OpenAI-compatible LoRA fine-tuning service")
    app.state.settings = settings or get_settings()
    install_error_handlers(app)
    for module in (health, metrics, files, jobs, models):
        app.include_router(module.router)
    logging.getLogger("loraq").setLevel(logging.INFO)
    return app
