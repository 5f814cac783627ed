"""Webhook endpoints: an owner registers URLs for job status events (succeeded, failed, cancelled, paused),
delivered by the workers from the outbox, signed per Standard Webhooks; and each endpoint's delivery log.

Served at /v1/webhook_endpoints, where the `openai` SDK's `client.webhooks` (create, retrieve, list, delete)
calls, and at /v1/webhooks, loraq's older name for the same routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from api.deps import CurrentOwner, SessionDep, SettingsDep, WebhookDep, visible_to
from api.errors import APIError
from api.pagination import page, page_after
from api.schemas import ID_PATTERN
from api.webhook_schemas import (
    WebhookCreate,
    WebhookDeliveriesPublic,
    WebhookDeliveryPublic,
    WebhookEndpointDeleted,
    WebhookEndpointPublic,
    WebhookEndpointsPublic,
    WebhookEndpointWithSecret,
    WebhookEventTypes,
)
from loraq.webhook_signing import new_secret
from loraq.webhook_urls import WebhookURLError, checked_address
from models import WebhookDelivery, WebhookEndpoint, new_id
from models.webhook_outbox import EVENT_TYPES

router = APIRouter(tags=["webhooks"])
event_types_router = APIRouter(prefix="/v1/webhook_event_types", tags=["webhooks"])
PREFIX = "/v1/webhook_endpoints"
OTHER_PREFIX = "/v1/webhooks"  # the same routes, left out of the OpenAPI schema

Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[str | None, Query(pattern=ID_PATTERN)]


@router.post("", response_model=WebhookEndpointWithSecret)
def create_webhook(body: WebhookCreate, session: SessionDep, principal: CurrentOwner, settings: SettingsDep):
    """Register a URL for job status events; the answer holds its signing secret, shown this once."""
    try:  # a blocking DNS lookup: this route runs in the thread pool
        checked_address(body.url, settings.webhook_allowed_host_set)
    except WebhookURLError as exc:
        raise APIError(400, str(exc), param="url", code="invalid_webhook_url") from None
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
