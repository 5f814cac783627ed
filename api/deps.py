"""Request dependencies, as `Annotated` aliases so route functions read like the API they serve.

The session dependency owns the transaction: it commits after the route returns (before the response
is sent) and only then runs the work queued with `after_commit` (sending job ids to the broker), so a
worker never receives an id whose row it cannot see, and a rolled-back request sends nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select, true
from sqlalchemy.orm import Session

from api.auth import PrincipalCache
from api.errors import APIError, not_found
from api.schemas import ID_PATTERN
from loraq.settings import Settings
from models import FileRecord, Job, WebhookEndpoint
from models.api_keys import Principal, authenticate
from models.session import session_scope

logger = logging.getLogger("loraq.api")


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    with session_scope(settings.resolved_database_url) as session:
        session.info["after_commit"] = []
        yield session
    for action in session.info["after_commit"]:
        try:
            action()
        except Exception:
            logger.exception("post-commit action failed; the reconciler will repair it")


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def after_commit(session: Session, action: Callable[[], None]) -> None:
    session.info["after_commit"].append(action)


def _lookup_principal(database_url: str, key: str) -> Principal | None:
    with session_scope(database_url) as session:
        return authenticate(session, key)


async def get_principal(request: Request) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        raise APIError(
            401,
            "Missing API key: send 'Authorization: Bearer <key>'.",
            code="missing_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    cache: PrincipalCache = request.app.state.principal_cache
    principal = cache.get(key)
    if principal is None:
        database_url = request.app.state.settings.resolved_database_url
        principal = await run_in_threadpool(_lookup_principal, database_url, key)
        if principal is None:
            raise APIError(
                401, "Incorrect API key provided.", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
            )
        cache.put(key, principal)
    return principal


CurrentOwner = Annotated[Principal, Depends(get_principal)]


def visible_to(principal: Principal, model):
    """A WHERE clause limiting rows to the caller's own (admins see all)."""
    return true() if principal.is_admin else model.owner == principal.owner


def load_job(job_id: Annotated[str, Path(pattern=ID_PATTERN)], session: SessionDep, principal: CurrentOwner) -> Job:
    job = session.scalars(select(Job).where(Job.id == job_id, visible_to(principal, Job))).first()
    if job is None:
        raise not_found("fine-tuning job", job_id)
    return job


def load_file(
    file_id: Annotated[str, Path(pattern=ID_PATTERN)], session: SessionDep, principal: CurrentOwner
) -> FileRecord:
    record = session.scalars(
        select(FileRecord).where(
            FileRecord.id == file_id, FileRecord.deleted.is_(False), visible_to(principal, FileRecord)
        )
    ).first()
    if record is None:
        raise not_found("file", file_id)
    return record


JobDep = Annotated[Job, Depends(load_job)]
FileDep = Annotated[FileRecord, Depends(load_file)]


def load_webhook(
    webhook_endpoint_id: Annotated[str, Path(pattern=ID_PATTERN)], session: SessionDep, principal: CurrentOwner
) -> WebhookEndpoint:
    endpoint = session.scalars(
        select(WebhookEndpoint).where(WebhookEndpoint.id == webhook_endpoint_id, visible_to(principal, WebhookEndpoint))
    ).first()
    if endpoint is None:
        raise not_found("webhook endpoint", webhook_endpoint_id)
    return endpoint


WebhookDep = Annotated[WebhookEndpoint, Depends(load_webhook)]
