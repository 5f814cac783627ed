"""The webhook outbox: job status events written beside the status change, and the delivery protocol's steps.

    job_state._transition ──(same transaction)──▶ queue_job_event: one pending row per matching endpoint
    api: record_test_delivery (a sample event the API sent itself: one attempt, already final, never claimed)
    worker: claim_delivery (a conditional UPDATE: pending, due, no live lease) ──▶ POST
            ──▶ mark_delivered (2xx: never sent again) | record_failed_attempt (retry later, or give up)

Each step is one conditional UPDATE, so two workers never hold one row at once (on SQLite and PostgreSQL
alike), and a worker that died mid-delivery leaves a lease that expires: the row is claimed again and sent
again with the same `webhook-id` (delivery is at-least-once; receivers deduplicate on that id).
"""

from __future__ import annotations

import json
import secrets
import string
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session

from models.base import utcnow
from models.records import DeliveryStatus, Job, WebhookDelivery, WebhookEndpoint

# The job statuses that are announced, as OpenAI names their events (`paused` is loraq's own).
EVENT_TYPES = (
    "fine_tuning.job.succeeded",
    "fine_tuning.job.failed",
    "fine_tuning.job.cancelled",
    "fine_tuning.job.paused",
)
_ALPHABET = string.ascii_letters + string.digits
# The job a test event names: never a real job's id (those are `ftjob-` and 24 letters and digits).
SAMPLE_JOB_ID = "ftjob-webhook_test_sample"


def event_type_for(status: str) -> str | None:
    """The event a job entering `status` announces, if any."""
    event_type = f"fine_tuning.job.{status}"
    return event_type if event_type in EVENT_TYPES else None


def _token(prefix: str) -> str:
    # OpenAI's event ids and Standard Webhooks' message ids use an underscore (`evt_…`, `msg_…`).
    return prefix + "_" + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def event_body(event_id: str, event_type: str, job_id: str, created_at: datetime) -> str:
    """OpenAI's webhook payload shape, serialised once: every attempt sends (and signs) these exact bytes."""
    event = {"object": "event", "id": event_id, "type": event_type, "created_at": int(created_at.timestamp()),
             "data": {"id": job_id}}  # fmt: skip
    return json.dumps(event, separators=(",", ":"))


def queue_job_event(session: Session, job_id: str, status: str) -> int:
    """In the caller's transaction: one outbox row per endpoint of the job's owner that takes this status's
    event. Returns how many."""
    event_type = event_type_for(status)
    if event_type is None:
        return 0
    endpoints = session.execute(
        select(WebhookEndpoint.id, WebhookEndpoint.event_types)
        .join(Job, Job.owner == WebhookEndpoint.owner)
        .where(Job.id == job_id)
    ).all()
    now, event_id = utcnow(), _token("evt")
    body = event_body(event_id, event_type, job_id, now)
    rows = [(endpoint_id, _token("msg")) for endpoint_id, event_types in endpoints if event_type in event_types]
    for endpoint_id, message_id in rows:
        session.add(WebhookDelivery(
            id=message_id, endpoint_id=endpoint_id, event_id=event_id, event_type=event_type, job_id=job_id,
            payload=body, status=DeliveryStatus.pending, attempts=0, next_attempt_at=now, created_at=now,
        ))  # fmt: skip
    return len(rows)


def sample_event(event_type: str, now: datetime) -> tuple[str, str]:
    """A test event of `event_type` about SAMPLE_JOB_ID: its message id (`webhook-id`) and body."""
    return _token("msg"), event_body(_token("evt"), event_type, SAMPLE_JOB_ID, now)


def record_test_delivery(
    session: Session, endpoint_id: str, message_id: str, body: str, attempted_at: datetime,
    status_code: int | None, error: str | None,
) -> None:  # fmt: skip
    """Log a test event the API sent itself (one attempt; `error` None for a 2xx). It is final, delivered or
    failed, so no worker claims it; its `job_id` is empty, since the sample job does not exist."""
    event = json.loads(body)
    delivered = error is None
    session.add(WebhookDelivery(
        id=message_id, endpoint_id=endpoint_id, event_id=event["id"], event_type=event["type"], job_id=None,
        payload=body, status=DeliveryStatus.delivered if delivered else DeliveryStatus.failed, attempts=1,
        last_attempt_at=attempted_at, last_status_code=status_code, last_error=error[:1000] if error else None,
        delivered_at=utcnow() if delivered else None, next_attempt_at=None, created_at=attempted_at,
    ))  # fmt: skip


def make_pending_due(session: Session, endpoint_id: str) -> int:
    """The endpoint's pending deliveries are due now (its URL changed: a retry need not wait out a backoff meant
    for the old one). Returns how many."""
    result = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == DeliveryStatus.pending)
        .values(next_attempt_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount  # type: ignore[attr-defined]  # a CursorResult for UPDATE statements


# ---------------------------------------------------------------------------------------------- delivery
def _update(session: Session, delivery_id: str, *conditions: ColumnElement[bool], **values: Any) -> bool:
    """One conditional UPDATE of a delivery row; True if it applied (the row was still as `conditions` say)."""
    result = session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, *conditions)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]  # a CursorResult for UPDATE statements


def _due(now: datetime) -> tuple[ColumnElement[bool], ...]:
    """Pending, its time has come, and no live lease on it (never tried, waiting for its retry, or held by a
    worker that died)."""
    lease_is_free = or_(WebhookDelivery.lease_expires_at.is_(None), WebhookDelivery.lease_expires_at < now)
    return WebhookDelivery.status == DeliveryStatus.pending, WebhookDelivery.next_attempt_at <= now, lease_is_free


def claim_delivery(session: Session, worker_id: str, lease_seconds: float) -> WebhookDelivery | None:
    """Take the most overdue due delivery under a lease (the attempt counts from here). None if none is due, or
    other workers took each candidate first."""
    now = utcnow()
    candidates = session.scalars(
        select(WebhookDelivery.id).where(*_due(now)).order_by(WebhookDelivery.next_attempt_at).limit(5)
    ).all()
    lease = {"lease_owner": worker_id, "lease_expires_at": now + timedelta(seconds=lease_seconds)}
    for delivery_id in candidates:
        if _update(session, delivery_id, *_due(now), attempts=WebhookDelivery.attempts + 1, last_attempt_at=now,
                   **lease):  # fmt: skip
            return session.scalars(select(WebhookDelivery).where(WebhookDelivery.id == delivery_id)).one()
    return None


_LEASE_ENDS = {"lease_owner": None, "lease_expires_at": None}


def mark_delivered(session: Session, delivery_id: str, status_code: int) -> bool:
    """A 2xx came back: the row is done, whoever holds it now (no worker claims it again)."""
    return _update(
        session, delivery_id, WebhookDelivery.status == DeliveryStatus.pending,
        status=DeliveryStatus.delivered, delivered_at=utcnow(), last_status_code=status_code, last_error=None,
        next_attempt_at=None, **_LEASE_ENDS,
    )  # fmt: skip


def record_failed_attempt(
    session: Session, delivery_id: str, worker_id: str, status_code: int | None, error: str,
    retry_at: datetime | None,
) -> bool:  # fmt: skip
    """The attempt got no 2xx: try again at `retry_at`, or give up (`failed`) when it is None. Only while we
    hold the row (a worker whose lease lapsed records nothing over its successor's attempt)."""
    outcome = {"next_attempt_at": retry_at} if retry_at else {"status": DeliveryStatus.failed, "next_attempt_at": None}
    return _update(
        session, delivery_id, WebhookDelivery.status == DeliveryStatus.pending,
        WebhookDelivery.lease_owner == worker_id,
        last_status_code=status_code, last_error=error[:1000], **outcome, **_LEASE_ENDS,
    )  # fmt: skip
