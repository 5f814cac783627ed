"""SQLAlchemy models of loraq's records and the session handling. The database is the source of truth."""

from models.base import Base, new_id, utcnow
from models.records import (
    ApiKey,
    Checkpoint,
    DeliveryStatus,
    FileRecord,
    FileStatus,
    IdempotencyRecord,
    Job,
    JobEvent,
    JobStatus,
    WebhookDelivery,
    WebhookEndpoint,
)

__all__ = [
    "ApiKey",
    "Base",
    "Checkpoint",
    "DeliveryStatus",
    "FileRecord",
    "FileStatus",
    "IdempotencyRecord",
    "Job",
    "JobEvent",
    "JobStatus",
    "WebhookDelivery",
    "WebhookEndpoint",
    "new_id",
    "utcnow",
]
