"""Webhook endpoints: an owner registers URLs for job status events (succeeded, failed, cancelled, paused),
delivered by the workers from the outbox, signed per Standard Webhooks; and each endpoint's delivery log.

Served at /v1/webhook_endpoints, where the `openai` SDK's `client.webhooks` calls (create, retrieve, list, delete,
update, rotate_secret, test), and at /v1/webhooks, loraq's older name for the same routes.

- update: a new URL passes the same rules as at registration; later deliveries, and pending ones (made due at
  once), go to the new URL; later events follow the new event types.
- rotate_secret: a new secret, shown once. With `keep_old_secret_active_for_24_hours` every delivery in the
  next 24 hours carries a signature by each secret, else the old one stops at once. The worker signs at send
  time with the secrets active then, so this applies to deliveries already waiting in the outbox too.
- test: the API itself sends a sample event (about SAMPLE_JOB_ID) through the worker's code path
  (loraq.webhook_attempts: the URL rules, the signatures), with a short timeout, because the SDK expects the
  receiver's answer in the response; the attempt is logged with the endpoint's deliveries. At most
  TESTS_AT_ONCE per API process, since each holds a thread while it waits (one more is a 429).
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from sqlalchemy import func, select

from api.deps import CurrentOwner, SessionDep, SettingsDep, WebhookDep, visible_to
from api.errors import APIError, error_response
from api.idempotency import IdempotencyKey, claim_key, complete, fingerprint
from api.pagination import page, page_after
from api.schemas import ID_PATTERN
from api.webhook_schemas import (
    WebhookCreate,
    WebhookDeliveriesPublic,
    WebhookDeliveryPublic,
    WebhookEndpointDeleted,
    WebhookEndpointPublic,
    WebhookEndpointsPublic,
    WebhookEndpointTestResult,
    WebhookEndpointWithSecret,
    WebhookEventTypes,
    WebhookSecretRotation,
    WebhookTestRequest,
    WebhookUpdate,
)
from loraq.settings import Settings
from loraq.webhook_attempts import attempt_client, attempt_delivery
from loraq.webhook_signing import new_secret
from loraq.webhook_urls import WebhookURLError, checked_address
from models import WebhookDelivery, WebhookEndpoint, new_id, utcnow
from models.webhook_outbox import EVENT_TYPES, make_pending_due, record_test_delivery, sample_event

router = APIRouter(tags=["webhooks"])
event_types_router = APIRouter(prefix="/v1/webhook_event_types", tags=["webhooks"])
PREFIX = "/v1/webhook_endpoints"
OTHER_PREFIX = "/v1/webhooks"  # the same routes, left out of the OpenAPI schema

Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[str | None, Query(pattern=ID_PATTERN)]
KEEP_OLD_SECRET_FOR = timedelta(hours=24)
TEST_TIMEOUT_SECONDS = 5.0  # at most: the caller waits for the receiver's answer
# A test holds one of the API's few threads (LORAQ_API_THREADS) while the receiver answers: at most this many
# at once per API process, so that a slow receiver cannot take the threads every other request needs.
TESTS_AT_ONCE = 2
_test_slots = threading.BoundedSemaphore(TESTS_AT_ONCE)


def check_url(url: str, settings: Settings) -> None:
    """The URL rules (loraq.webhook_urls) as a 400 naming `url`. A blocking DNS lookup: call it from a route
    that runs in the thread pool."""
    try:
        checked_address(url, settings.webhook_allowed_host_set)
    except WebhookURLError as exc:
        raise APIError(400, str(exc), param="url", code="invalid_webhook_url") from None


@router.post("", response_model=WebhookEndpointWithSecret)
def create_webhook(body: WebhookCreate, session: SessionDep, principal: CurrentOwner, settings: SettingsDep):
    """Register a URL for job status events; the answer holds its signing secret, shown this once."""
    check_url(body.url, settings)
    count = session.scalar(select(func.count()).where(WebhookEndpoint.owner == principal.owner)) or 0
    if count >= settings.max_webhooks_per_owner:
        # 400, not 409 (the SDK retries 409) nor 429 (waiting does not help): delete one first.
        raise APIError(
            400,
            f"You have {count} webhook endpoints, the most allowed ({settings.max_webhooks_per_owner}); delete one "
            "first.",
            code="too_many_webhook_endpoints",
        )
    endpoint = WebhookEndpoint(
        id=new_id("wh"), owner=principal.owner, name=body.name, url=body.url, event_types=body.event_types,
        secret=new_secret(),
    )  # fmt: skip
    session.add(endpoint)
    session.flush()
    return WebhookEndpointWithSecret.of(endpoint)


@router.get("", response_model=WebhookEndpointsPublic)
def list_webhooks(session: SessionDep, principal: CurrentOwner, after: Cursor = None, limit: Limit = 20):
    """Your webhook endpoints, newest first."""
    query = select(WebhookEndpoint).where(visible_to(principal, WebhookEndpoint))
    rows, has_more = page_after(session, query, WebhookEndpoint, after, limit)
    data = [WebhookEndpointPublic.of(e) for e in rows]
    return page(WebhookEndpointsPublic, data, has_more)


@router.get("/{webhook_endpoint_id}", response_model=WebhookEndpointPublic)
def retrieve_webhook(endpoint: WebhookDep):
    """One endpoint (without its secret)."""
    return WebhookEndpointPublic.of(endpoint)


@router.post("/{webhook_endpoint_id}", response_model=WebhookEndpointPublic)
def update_webhook(
    endpoint: WebhookDep, session: SessionDep, settings: SettingsDep, body: WebhookUpdate | None = None
):  # fmt: skip
    """Change an endpoint's URL, event types or name (the fields given); `updated_at` moves only on a change."""
    body = body or WebhookUpdate()
    if body.url is not None:
        check_url(body.url, settings)
    changes = {field: getattr(body, field) for field in body.model_fields_set}
    changes = {field: value for field, value in changes.items() if getattr(endpoint, field) != value}
    if not changes:
        return WebhookEndpointPublic.of(endpoint)
    for field, value in changes.items():
        setattr(endpoint, field, value)
    endpoint.updated_at = utcnow()
    if "url" in changes:
        make_pending_due(session, endpoint.id)
    session.flush()
    return WebhookEndpointPublic.of(endpoint)


@router.post("/{webhook_endpoint_id}/rotate_secret", response_model=WebhookEndpointWithSecret)
def rotate_webhook_secret(
    endpoint: WebhookDep, session: SessionDep, principal: CurrentOwner, body: WebhookSecretRotation | None = None,
    idempotency_key: IdempotencyKey = None,
):  # fmt: skip
    """A new signing secret, shown this once; the old one signs too for 24 hours if asked, else stops now. Only
    the secret just replaced is kept: a second rotation ends the first one's grace period."""
    keep_old = body is not None and body.keep_old_secret_active_for_24_hours
    record = None
    if idempotency_key:  # the SDK sends one and retries with it: a retry must not rotate (and drop a secret) again
        claimed = claim_key(
            session, principal.owner, "webhook_rotate_secret", idempotency_key, fingerprint(endpoint.id, keep_old)
        )
        if isinstance(claimed, JSONResponse):
            return claimed
        record = claimed
    now = utcnow()
    endpoint.previous_secret = endpoint.secret if keep_old else None
    endpoint.previous_secret_expires_at = now + KEEP_OLD_SECRET_FOR if keep_old else None
    endpoint.secret = new_secret()
    endpoint.updated_at = now
    session.flush()
    public = WebhookEndpointWithSecret.of(endpoint)
    complete(record, 200, public.model_dump(mode="json"))
    return public


@router.post("/{webhook_endpoint_id}/test", response_model=WebhookEndpointTestResult)
def send_test_event(endpoint: WebhookDep, body: WebhookTestRequest, session: SessionDep, settings: SettingsDep):
    """Send a sample event of `event_type` now and report the receiver's HTTP status; logged as a delivery."""
    if not _test_slots.acquire(blocking=False):
        raise APIError(429, f"{TESTS_AT_ONCE} webhook tests are in progress already; try again in a few seconds.",
                       code="too_many_webhook_tests", headers={"Retry-After": "5"})  # fmt: skip
    now = utcnow()
    message_id, payload = sample_event(body.event_type, now)
    try:
        with attempt_client(min(settings.webhook_timeout_seconds, TEST_TIMEOUT_SECONDS)) as client:
            attempt = attempt_delivery(
                client, endpoint.url, endpoint.signing_secrets(now), message_id, payload,
                settings.webhook_allowed_host_set,
            )  # fmt: skip
    finally:
        _test_slots.release()
    record_test_delivery(session, endpoint.id, message_id, payload, now, attempt.status_code, attempt.error)
    # No HTTP answer, so no result to report: a 400 (not a 5xx, which the SDK would retry), returned rather than
    # raised so that the failed attempt stays in the log.
    if attempt.url_refused:
        return error_response(APIError(400, attempt.error or "", param="url", code="invalid_webhook_url"))
    if attempt.status_code is None:
        message = f"The test event got no answer from {endpoint.url}: {attempt.error}"
        return error_response(APIError(400, message, code="webhook_endpoint_unreachable"))
    return WebhookEndpointTestResult(
        webhook_endpoint_id=endpoint.id, event_type=body.event_type, status_code=attempt.status_code
    )


@router.delete("/{webhook_endpoint_id}", response_model=WebhookEndpointDeleted)
def delete_webhook(endpoint: WebhookDep, session: SessionDep):
    """Delete an endpoint; its pending deliveries are dropped with it."""
    session.delete(endpoint)
    return WebhookEndpointDeleted(id=endpoint.id)


@router.get("/{webhook_endpoint_id}/deliveries", response_model=WebhookDeliveriesPublic)
def list_deliveries(endpoint: WebhookDep, session: SessionDep, after: Cursor = None, limit: Limit = 20):
    """The endpoint's delivery log, newest first: per event, its attempts, last answer and next retry."""
    query = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
    rows, has_more = page_after(session, query, WebhookDelivery, after, limit)
    data = [WebhookDeliveryPublic.of(d) for d in rows]
    return page(WebhookDeliveriesPublic, data, has_more)


@event_types_router.get("", response_model=WebhookEventTypes)
def list_event_types(_principal: CurrentOwner):
    """The events loraq sends (`client.webhooks.event_types.list()`)."""
    return WebhookEventTypes(data=list(EVENT_TYPES))
