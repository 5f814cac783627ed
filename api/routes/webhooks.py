"""Webhook endpoints: an owner registers URLs for job status events (succeeded, failed, cancelled, paused),
delivered by the workers from the outbox, signed per Standard Webhooks; and each endpoint's delivery log.

Served at /v1/webhook_endpoints, where the `openai` SDK's `client.webhooks` calls (create, retrieve, list, delete,
update, rotate_secret, test), and at /v1/webhooks, loraq's older name for the same routes.

- update: a new URL passes the same rules as at registration; later deliveries, and pending ones (made due at
  once), go to the new URL; later events follow the new event types.
- rotate_secret: a new secret, shown once. With `keep_old_secret_active_for_24_hours` the replaced secret (and
  those replaced before it, while their own 24 hours last) keep signing beside the new one, else every earlier
  one stops at once. The worker signs at send time with the secrets active then, so this applies to
  deliveries already waiting in the outbox too.
- test: the API itself sends a sample event (about SAMPLE_JOB_ID) through the worker's code path
  (loraq.webhook_attempts: the URL rules, the signatures), with a short timeout, because the SDK expects the
  receiver's answer in the response, within TEST_TIMEOUT_SECONDS in all; the attempt is logged with the
  endpoint's deliveries. At most TESTS_AT_ONCE per API process and one per owner, since each holds a thread
  while it waits (one more is a 429).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from api.deps import CurrentOwner, SessionDep, SettingsDep, WebhookDep, visible_to
from api.errors import APIError, error_response, not_found
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
from loraq.webhook_attempts import attempt_delivery_within
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
KEEP_SECRETS_AT_MOST = 3  # rotated-out secrets signing at once (each adds a signature to every delivery)
TEST_TIMEOUT_SECONDS = 5.0  # at most, for the whole attempt: the caller waits for the receiver's answer
# A test holds one of the API's few threads (LORAQ_API_THREADS) while the receiver answers: at most this many
# at once per API process and one per owner, so that a slow receiver cannot take the threads every other
# request needs, nor one owner every test slot.
TESTS_AT_ONCE = 2
_test_lock = threading.Lock()
_testing_owners: set[str] = set()


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
def rotate_webhook_secret(endpoint: WebhookDep, session: SessionDep, body: WebhookSecretRotation | None = None):
    """A new signing secret, shown this once. With keep-old, the secret replaced keeps signing for 24 hours
    beside the new one, and so do those replaced before it while their 24 hours last (the newest
    KEEP_SECRETS_AT_MOST): a rotation retried after a lost answer (the SDK retries by itself) then leaves the
    secret the receivers hold working, as a first rotation does. Without keep-old every earlier secret stops."""
    session.refresh(endpoint, with_for_update=True)  # two rotations at once apply one after the other
    now = utcnow()
    kept: list[dict[str, str]] = []
    if body is not None and body.keep_old_secret_active_for_24_hours:
        replaced = {"secret": endpoint.secret, "until": (now + KEEP_OLD_SECRET_FOR).isoformat()}
        kept = [replaced, *endpoint.active_retired_secrets(now)][:KEEP_SECRETS_AT_MOST]
    endpoint.retired_secrets = kept or None
    endpoint.secret = new_secret()
    endpoint.updated_at = now
    session.flush()
    return WebhookEndpointWithSecret.of(endpoint)


@router.post("/{webhook_endpoint_id}/test", response_model=WebhookEndpointTestResult)
def send_test_event(
    endpoint: WebhookDep, body: WebhookTestRequest, session: SessionDep, settings: SettingsDep,
    principal: CurrentOwner,
):  # fmt: skip
    """Send a sample event of `event_type` now and report the receiver's HTTP status; logged as a delivery."""
    with test_slot(principal.owner):
        now = utcnow()
        message_id, payload = sample_event(body.event_type, now)
        deadline = min(settings.webhook_timeout_seconds, TEST_TIMEOUT_SECONDS)
        attempt = attempt_delivery_within(
            deadline, deadline, endpoint.url, endpoint.signing_secrets(now), message_id, payload,
            settings.webhook_allowed_host_set,
        )  # fmt: skip
    endpoint_id = endpoint.id
    try:
        record_test_delivery(session, endpoint_id, message_id, payload, now, attempt.status_code, attempt.error)
        session.flush()
    except IntegrityError:  # the endpoint was deleted while its test waited for the answer
        session.rollback()
        raise not_found("webhook endpoint", endpoint_id) from None
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


@contextmanager
def test_slot(owner: str) -> Iterator[None]:
    """One test at a time per owner, TESTS_AT_ONCE in all per API process (each holds an API thread for at
    most its deadline); one more is a 429."""
    with _test_lock:
        busy = owner in _testing_owners
        if busy or len(_testing_owners) >= TESTS_AT_ONCE:
            whose = "Your previous webhook test is" if busy else f"{TESTS_AT_ONCE} webhook tests are"
            raise APIError(429, f"{whose} still in progress; try again in a few seconds.",
                           code="too_many_webhook_tests", headers={"Retry-After": "5"})  # fmt: skip
        _testing_owners.add(owner)
    try:
        yield
    finally:
        with _test_lock:
            _testing_owners.discard(owner)


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
