"""The tables: API keys, uploaded files, fine-tuning jobs, their events and checkpoints, webhook endpoints and
their delivery outbox."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Enum,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, UTCDateTime, utcnow


class FileStatus(enum.StrEnum):
    processed = "processed"
    error = "error"


class JobStatus(enum.StrEnum):
    validating_files = "validating_files"
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    paused = "paused"  # held (checkpointed, if it had started) until resumed; not finished

    @property
    def finished(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


class DeliveryStatus(enum.StrEnum):
    pending = "pending"  # waiting for its next attempt (or being attempted, under a lease)
    delivered = "delivered"  # a 2xx was recorded: never sent again
    failed = "failed"  # gave up after retrying for LORAQ_WEBHOOK_RETRY_FOR_SECONDS


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    return Enum(cls, name=name, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e])


class ApiKey(Base):
    __tablename__ = "api_keys"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(128))
    # sha256 of the key: keys are random and long, so a fast hash is enough and lookups stay indexed.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class FileRecord(Base):
    __tablename__ = "files"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[FileStatus] = mapped_column(_enum(FileStatus, "file_status"))
    status_details: Mapped[str | None] = mapped_column(Text, nullable=True)
    examples: Mapped[int] = mapped_column(Integer, default=0)
    # What its lines hold (loraq.dataset_format): `chat` (supervised jobs) or `preference` (DPO jobs).
    format: Mapped[str] = mapped_column(String(16), default="chat", server_default="chat")
    # Token figures per base model, from the validating_files stage of jobs (training.data_report).
    token_reports: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    storage_key: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class Job(Base):
    __tablename__ = "jobs"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str] = mapped_column(String(255))
    training_file: Mapped[str] = mapped_column(String(40))
    validation_file: Mapped[str | None] = mapped_column(String(40), nullable=True)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    # How it trains (loraq.job_spec.Method): `supervised` (SFT) or `dpo`; its hyperparameters are that method's.
    method: Mapped[str] = mapped_column(String(16), default="supervised", server_default="supervised")
    suffix: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seed: Mapped[int] = mapped_column(Integer)
    user_metadata: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "job_status"), index=True)
    # The devices it trains on ({"gpus": N, "strategy": "ddp" | "fsdp"}, loraq.job_spec.Resources); None before
    # migration 0011, read as one GPU.
    resources: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Broker queue the job is sent to (operators route base models to GPU classes, jobs on N GPUs go to
    # `<queue>.gpusN`), and when it last was.
    queue: Mapped[str] = mapped_column(String(64), default="loraq", server_default="loraq")
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    fine_tuned_model: Mapped[str | None] = mapped_column(String(255), nullable=True, unique=True)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    estimated_tokens: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # from validating_files
    total_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completed_steps: Mapped[int] = mapped_column(Integer, default=0)
    tokens_per_second: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    first_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    max_runtime_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    estimated_finish: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # A pause asked of a job in `validating_files` or `running`: it becomes `paused` once its files are validated,
    # or once training has checkpointed at its next step (models.job_state); cleared when it leaves that status.
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)  # while `paused`: since when
    # Seconds spent paused so far, which the run-time limit (max_runtime_seconds) leaves out.
    paused_seconds: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The claim: which worker runs the job, or which validator checks its files, and until when, unless it renews.
    lease_owner: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    adapter_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    adapter_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    result_files: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    # While a validator reads the job's files: how far it is in the current one (worker.validation); else None.
    validation_progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Continued training: the fine-tuned model or checkpoint it starts from ({"job", "step", "model",
    # "checkpoint"}, api.parent_models); None for a job that starts from its base model (`model`).
    parent: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Where its adapter will not load, or needs a setting, for serving ([{"engine", "setting", "message"}],
    # loraq.serving), found at create; None or empty when it serves as it is.
    serving_warnings: Mapped[list[dict[str, str]] | None] = mapped_column(JSON, nullable=True)

    @property
    def fine_tuned_name(self) -> str:
        """The name the adapter is published under once the job succeeds."""
        return f"ft:{self.model}:{self.suffix or ''}:{self.id}"


class JobEvent(Base):
    __tablename__ = "job_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    level: Mapped[str] = mapped_column(String(8), default="info")
    type: Mapped[str] = mapped_column(String(16), default="message")
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class Checkpoint(Base):
    __tablename__ = "checkpoints"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    storage_key: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The checkpoint's adapter files as one archive (GET .../checkpoints/{id}/adapter).
    adapter_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    adapter_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


class IdempotencyRecord(Base):
    """The first response to a request sent with an `Idempotency-Key`, replayed to its retries."""

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("owner", "endpoint", "key"),)

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookEndpoint(Base):
    """A URL an owner registered for job status events, signed with its own secret (Standard Webhooks)."""

    __tablename__ = "webhook_endpoints"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    url: Mapped[str] = mapped_column(String(2048))
    event_types: Mapped[list[str]] = mapped_column(JSON)
    # `whsec_<base64>`: kept as is, since every delivery is signed with it (it cannot be a hash).
    secret: Mapped[str] = mapped_column(String(128))
    # Rotated-out secrets still signing, newest first: [{"secret": "whsec_...", "until": ISO 8601 time}, ...].
    retired_secrets: Mapped[list[dict[str, str]] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    def signing_secrets(self, now: datetime) -> list[str]:
        """The secrets a delivery sent at `now` is signed with: the current one, and those rotated out while they
        are kept active (each gives one signature in `webhook-signature`; receivers accept any that matches)."""
        return [self.secret] + [kept["secret"] for kept in self.active_retired_secrets(now)]

    def active_retired_secrets(self, now: datetime) -> list[dict[str, str]]:
        return [kept for kept in self.retired_secrets or [] if datetime.fromisoformat(kept["until"]) > now]


class WebhookDelivery(Base):
    """The outbox: one event for one endpoint, written in the transaction that changed the job's status, and
    its delivery log. Workers claim a due row under a lease, send it, and record the outcome."""

    __tablename__ = "webhook_deliveries"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # The Standard Webhooks message id (`webhook-id`): the same on every attempt, so receivers deduplicate on it.
    id: Mapped[str] = mapped_column(String(40), unique=True)
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True)
    event_id: Mapped[str] = mapped_column(String(40), index=True)
    event_type: Mapped[str] = mapped_column(String(64))
    # None for a test event (`POST /webhook_endpoints/{id}/test`), which names a sample job, not a real one.
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=True, index=True)
    # The exact body sent on every attempt (the signature covers these bytes).
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[DeliveryStatus] = mapped_column(_enum(DeliveryStatus, "webhook_delivery_status"))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)
    lease_owner: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
