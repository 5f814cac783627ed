"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.deps import SettingsDep
from loraq.storage import open_storage
from models.session import get_engine
from worker.celery_app import check_broker

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz():
    """The API process is up."""
    return {"status": "ok"}


def _check(settings) -> dict[str, str]:
    checks = {}
    try:
        with get_engine(settings.resolved_database_url).connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        check_broker()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {type(exc).__name__}"
    try:
        open_storage(settings).check()
        checks["storage"] = "ok"
    except Exception as exc:  # the operator reads why (no credentials are in these messages)
        checks["storage"] = f"error: {exc}"
    return checks


@router.get("/readyz", responses={503: {"description": "The database, the broker or storage is unreachable"}})
async def readyz(settings: SettingsDep):
    """The database, the broker and storage are reachable."""
    checks = await run_in_threadpool(_check, settings)
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks}, status_code=200 if ready else 503
    )
