"""Safe retries: a POST sent with an `Idempotency-Key` header returns its first result when retried.

The record is written in the same transaction as the resource it describes, so a request either
created both or neither; two concurrent requests with one key race on the unique constraint and the
loser replays the winner's response.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from fastapi import Header
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.errors import APIError
from models import IdempotencyRecord

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=255, description="Retries with the same key return the first result"),
]


def fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def replay(session: Session, owner: str, endpoint: str, key: str, request_fingerprint: str) -> JSONResponse | None:
    """The stored response for this key, or None if it is new; a key reused for another request is a 400."""
    record = session.scalars(
        select(IdempotencyRecord).where(
            IdempotencyRecord.owner == owner, IdempotencyRecord.endpoint == endpoint, IdempotencyRecord.key == key
        )
    ).first()
    if record is None:
        return None
    if record.fingerprint != request_fingerprint:
        raise APIError(
            400,
            "This Idempotency-Key was already used with a different request.",
            param="Idempotency-Key",
            code="idempotency_key_reused",
        )
    return JSONResponse(record.body, status_code=record.status_code, headers={"Idempotent-Replayed": "true"})


def claim_key(
    session: Session, owner: str, endpoint: str, key: str, request_fingerprint: str
) -> IdempotencyRecord | JSONResponse:
    """Take the key for this request before creating anything, or return the response it already has.

    The record is inserted first in the request's transaction; a concurrent request with the same key
    waits on the unique constraint until this one commits, then replays its response.
    """
    stored = replay(session, owner, endpoint, key, request_fingerprint)
    if stored is not None:
        return stored
    record = IdempotencyRecord(
        owner=owner, endpoint=endpoint, key=key, fingerprint=request_fingerprint, status_code=0, body={}
    )
    session.add(record)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        stored = replay(session, owner, endpoint, key, request_fingerprint)
        if stored is None:
            raise APIError(
                400,
                "A request with this Idempotency-Key failed; retry it.",
                param="Idempotency-Key",
                code="idempotency_key_retry",
            ) from None
        return stored
    return record


def complete(record: IdempotencyRecord | None, status_code: int, body: dict) -> None:
    if record is not None:
        record.status_code, record.body = status_code, body
