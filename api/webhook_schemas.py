"""Webhook endpoint and delivery bodies, in the shapes of the `openai` SDK's `client.webhooks` (3.x)."""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from api.schemas import unix
from loraq.webhook_signing import secret_hint
from models import WebhookDelivery, WebhookEndpoint
from models.webhook_outbox import EVENT_TYPES


def _known_event_types(value: list[str]) -> list[str]:
    unknown = [t for t in value if t not in EVENT_TYPES]
    if unknown or not value:
        raise ValueError(f"loraq sends {', '.join(EVENT_TYPES)}; got {', '.join(unknown) or 'none'}")
    return list(dict.fromkeys(value))


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2048, description="https:// URL that receives the deliveries")
    event_types: list[str] = Field(
        default_factory=lambda: list(EVENT_TYPES),
        validation_alias=AliasChoices("event_types", "events"),
        description=f"Events to deliver (default: all of {', '.join(EVENT_TYPES)}); `events` is accepted too",
    )
    name: str = Field(
        "", max_length=255, validation_alias=AliasChoices("name", "description"), description="A label for people"
    )

    _known_events = field_validator("event_types")(_known_event_types)


class WebhookUpdate(BaseModel):
    """`client.webhooks.update(id, ...)`: the fields given replace the endpoint's; the others stay."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(None, max_length=2048, description="A new https:// URL, checked as at registration")
    event_types: list[str] | None = Field(
        None, validation_alias=AliasChoices("event_types", "events"), description="The complete new set of events"
    )
    name: str | None = Field(None, max_length=255, validation_alias=AliasChoices("name", "description"))

    @field_validator("url", "event_types", "name", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        # Only a given field is validated: leaving one out keeps it, an explicit null is a mistake.
        if value is None:
            raise ValueError("may be left out to keep it, but not null")
        return value

    _known_events = field_validator("event_types")(_known_event_types)


class WebhookSecretRotation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keep_old_secret_active_for_24_hours: bool = Field(
        False, description="Sign deliveries with the old secret too for 24 hours (else it stops at once)"
    )


class WebhookTestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_type: str = Field(description=f"The sample event to send: one of {', '.join(EVENT_TYPES)}")

    _known_event = field_validator("event_type")(lambda value: _known_event_types([value])[0])  # the same message


class WebhookEndpointTestResult(BaseModel):
    """The receiver's answer to a test event (`success` is always true: `status_code` says how it answered)."""

    object: Literal["webhook_endpoint.test"] = "webhook_endpoint.test"
    webhook_endpoint_id: str
    event_type: str
    status_code: int
    success: Literal[True] = True


class WebhookEndpointPublic(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    created_at: int
    updated_at: int
    name: str
    url: str
    event_types: list[str]
    signing_secret_hint: str

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> WebhookEndpointPublic:
        return cls(
            id=endpoint.id, created_at=unix(endpoint.created_at), updated_at=unix(endpoint.updated_at),
            name=endpoint.name, url=endpoint.url, event_types=endpoint.event_types,
            signing_secret_hint=secret_hint(endpoint.secret),
        )  # fmt: skip


class WebhookEndpointWithSecret(WebhookEndpointPublic):
    """Only the answers to a create and to a secret rotation hold the secret."""

    signing_secret: str = Field(description="whsec_...: verify each delivery's webhook-signature with it")

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> WebhookEndpointWithSecret:
        return cls(**WebhookEndpointPublic.of(endpoint).model_dump(), signing_secret=endpoint.secret)


class WebhookEndpointsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[WebhookEndpointPublic]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class WebhookEndpointDeleted(BaseModel):
    id: str
    object: Literal["webhook_endpoint.deleted"] = "webhook_endpoint.deleted"
    deleted: bool = True


class WebhookDeliveryPublic(BaseModel):
    """One event for one endpoint: its `id` is the `webhook-id` header of every attempt."""

    id: str
    object: Literal["webhook_endpoint.delivery"] = "webhook_endpoint.delivery"
    event_id: str
    event_type: str
    job_id: str | None = Field(description="The job the event is about; null for a test event")
    test: bool = Field(description="A sample event sent by `POST /webhook_endpoints/{id}/test`")
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status_code: int | None
    last_error: str | None
    last_attempt_at: int | None
    next_attempt_at: int | None = Field(description="When a pending delivery is tried next")
    delivered_at: int | None
    created_at: int

    @classmethod
    def of(cls, row: WebhookDelivery) -> WebhookDeliveryPublic:
        return cls(
            id=row.id, event_id=row.event_id, event_type=row.event_type, job_id=row.job_id, test=row.job_id is None,
            status=row.status.value,
            attempts=row.attempts, last_status_code=row.last_status_code, last_error=row.last_error,
            last_attempt_at=unix(row.last_attempt_at), next_attempt_at=unix(row.next_attempt_at),
            delivered_at=unix(row.delivered_at), created_at=unix(row.created_at),
        )  # fmt: skip


class WebhookDeliveriesPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[WebhookDeliveryPublic]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class WebhookEventTypes(BaseModel):
    object: Literal["list"] = "list"
    data: list[str]
