"""One settings object, read from `LORAQ_*` environment variables, shared by the API and the workers."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class BaseModelEntry(BaseModel):
    """A base model the operator offers: a hub id or a local folder."""

    source: str = Field(description="Hugging Face hub id or local folder of the model")
    trust_remote_code: bool = Field(False, description="Allow the model's own Python code to run")
    queue: str | None = Field(None, description="Broker queue for this model's jobs (default: LORAQ_QUEUE)")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORAQ_", extra="ignore")

    environment: Literal["development", "production"] = Field(
        "development", description="`production` refuses unsafe defaults"
    )
    data_dir: Path = Field(Path("loraq-data"), description="Folder for the embedded database, Redis and files")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default: SQLite in the data folder")
    broker_url: str | None = Field(None, description="Redis URL; default: the embedded Redis socket")
    storage_url: str | None = Field(
        None,
        description="Shared storage: a folder (mounted on every machine), or s3://bucket/prefix with the standard "
        "AWS_* credentials; default: data_dir/storage",
    )
    storage_root: Path | None = Field(None, description="Shared storage folder (older name of LORAQ_STORAGE_URL)")
    s3_endpoint_url: str | None = Field(
        None, description="Endpoint of an S3-compatible server (MinIO, rclone, Ceph...); default: AWS S3"
    )
    work_dir: Path | None = Field(
        None,
        description="Local scratch with S3 storage: jobs train here and objects are cached here; default: "
        "data_dir/work",
    )
    queue: str = Field("loraq", description="Broker queue that jobs are sent to and workers listen on")
    validation_queue: str = Field(
        "loraq.validation", description="Broker queue of the validating_files stage (`loraq validator` listens)"
    )
    gpus_per_job: str = Field(
        "1",
        description="GPU counts the fleet runs jobs on, comma-separated (e.g. 1,2,4): the group sizes of its "
        "workers (`loraq worker --gpus-per-job N` takes jobs on N GPUs from the queue <LORAQ_QUEUE>.gpusN); a job "
        "asking for another count is refused with a 400",
    )
    min_training_examples: int = Field(
        1, ge=1, description="Fewest usable examples (with assistant tokens to learn from) a training file needs"
    )
    base_models: dict[str, BaseModelEntry] = Field(
        default_factory=dict,
        description='Extra base models as JSON: {"name": {"source": "org/model", "trust_remote_code": false}}',
    )
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1, description="Largest accepted upload")
    max_examples_per_file: int = Field(1_000_000, ge=1, description="Most examples one dataset file may hold")
    max_active_jobs_per_owner: int = Field(
        20, ge=1, description="Queued plus running jobs one owner may have; more are refused with 429"
    )
    max_event_streams_per_owner: int = Field(
        20,
        ge=1,
        description="Open event streams (events?stream=true) one owner may hold across all API processes; "
        "more are refused with 429",
    )
    event_poll_seconds: float = Field(
        0.5,
        ge=0.05,
        le=10,
        description="How often each API process reads a streamed job's new events (one query "
        "per job, shared by all its streams)",
    )
    event_heartbeat_seconds: float = Field(
        15, gt=0, description="Seconds of silence after which an event stream sends a `: ping` comment"
    )
    lease_seconds: int = Field(
        60, ge=2, description="How long a worker's (or a validator's) claim on a job lasts unrenewed"
    )
    validator_processes: int | None = Field(
        None,
        ge=1,
        description="Processes one validation tokenizes a large file with (default: the machine's cores); "
        "a validator validating --concurrency jobs at once may use that many times this",
    )
    validation_progress_seconds: float = Field(
        10, gt=0, description="How often a validator reports its progress through a large file (an event)"
    )
    max_job_seconds: int | None = Field(
        None, ge=1, description="Server-wide limit on a job's run time (from its first start); none by default"
    )
    max_attempts: int = Field(3, ge=1, description="Runs of a job (after lost workers or crashes) before it fails")
    reconcile_seconds: float = Field(30, gt=0, description="How often each worker repairs lost or stuck jobs")
    requeue_after_seconds: float = Field(
        120, gt=0, description="A queued job absent from the broker this long is sent again"
    )
    api_threads: int = Field(
        8, ge=1, le=256, description="Worker threads per API process for database calls (and pool size)"
    )
    key_cache_seconds: float = Field(
        10, ge=0, description="How long an API process trusts a verified key (a revocation takes this long)"
    )
    webhook_allowed_hosts: str = Field(
        "",
        description="Webhook hosts exempt from the public-address check, comma-separated (e.g. 127.0.0.1,localhost "
        "or an internal name): they may use http:// and resolve to any address. Every other endpoint must be "
        "https:// on a host whose addresses are all public",
    )
    webhook_timeout_seconds: float = Field(
        10,
        gt=0,
        le=60,
        description="How long a webhook delivery waits to connect and for each read of the answer (twice this in all)",
    )
    webhook_retry_base_seconds: float = Field(
        10, gt=0, description="First retry delay of a failed webhook delivery; it doubles per attempt (with jitter)"
    )
    webhook_retry_for_seconds: float = Field(
        86400, gt=0, description="How long after the event a webhook delivery is retried before it is given up"
    )
    webhook_poll_seconds: float = Field(
        2, gt=0, le=60, description="How often each worker looks for due webhook deliveries when it has none"
    )
    max_webhooks_per_owner: int = Field(20, ge=1, description="Webhook endpoints one owner may register")
    bootstrap_api_key: str | None = Field(None, description="API key created at start-up (embedded mode)")
    training_speedups: str = Field(
        "auto",
        description="Workers' training speed tricks (training.speedups): auto (all on a CPU, none on a GPU until "
        "measured there), all, none, or comma-separated names such as scored_rows,packed_sdpa",
    )

    @model_validator(mode="after")
    def _refuse_unsafe_production_defaults(self) -> Settings:
        if self.environment == "production":
            missing = [n for n in ("database_url", "broker_url") if getattr(self, n) is None]
            if self.storage_url is None and self.storage_root is None:
                missing.append("storage_url")
            if missing:
                raise ValueError(f"production needs explicit LORAQ_{', LORAQ_'.join(m.upper() for m in missing)}")
        return self

    @model_validator(mode="after")
    def _gpu_counts(self) -> Settings:
        counts = self.gpus_per_job.replace(" ", "").split(",")
        if not all(c.isdigit() and int(c) >= 1 for c in counts):
            raise ValueError(f"LORAQ_GPUS_PER_JOB: expected GPU counts such as 1,2,4, got {self.gpus_per_job!r}")
        return self

    @property
    def job_gpu_counts(self) -> frozenset[int]:
        """The GPU counts a job may ask for (LORAQ_GPUS_PER_JOB)."""
        return frozenset(int(c) for c in self.gpus_per_job.replace(" ", "").split(","))

    @property
    def webhook_allowed_host_set(self) -> frozenset[str]:
        """LORAQ_WEBHOOK_ALLOWED_HOSTS as lower-case host names (IPv6 literals without brackets)."""
        hosts = (h.strip().lower().strip("[]") for h in self.webhook_allowed_hosts.split(","))
        return frozenset(h for h in hosts if h)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'loraq.db').resolve()}"

    @property
    def redis_socket(self) -> Path:
        """Unix socket of the embedded Redis server."""
        return (self.data_dir / "redis" / "redis.sock").resolve()

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or f"redis+socket://{self.redis_socket}"

    @property
    def resolved_storage_url(self) -> str:
        """s3://bucket/prefix, or the absolute path of the storage folder."""
        url = self.storage_url or str(self.storage_root or self.data_dir / "storage")
        return url if url.startswith("s3://") else str(Path(url.removeprefix("file://")).resolve())

    @property
    def resolved_work_dir(self) -> Path:
        return (self.work_dir or self.data_dir / "work").resolve()

    @property
    def resolved_validator_processes(self) -> int:
        return self.validator_processes or os.cpu_count() or 1

    @property
    def model_cache_dir(self) -> Path:
        """Where the built-in tiny model is generated."""
        return (self.data_dir / "models").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
