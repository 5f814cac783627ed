"""Request and response bodies, in OpenAI's shapes, named by role."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loraq.dataset_format import FORMATS
from loraq.job_spec import DpoHyperparameters, Hyperparameters, Method, Resources, hyperparameters_class
from models import Checkpoint, FileRecord, Job, JobEvent

SUFFIX_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Server-generated ids (`file-…`, `ftjob-…`): anything else cannot name an object, and never reaches SQL.
ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


def unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment else None


# ---------------------------------------------------------------- errors


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow")
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error, in OpenAI's shape."""

    error: ErrorDetail


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {400: "Invalid request (the message names the field or line)", 401: "Missing or unknown API key",
                    404: "No such object for this key", 413: "Upload too large",
                    429: "Too many active jobs, or open event streams", 500: "Server error"}  # fmt: skip
    return {code: {"model": ErrorResponse, "description": descriptions[code]} for code in codes}


# ---------------------------------------------------------------- files


class FilePublic(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    status_details: str | None = None
    expires_at: int | None = None
    sha256: str
    examples: int
    format: Literal[FORMATS] = Field(  # type: ignore[valid-type]
        "chat",
        description="loraq's extension: what its lines hold, `chat` (`messages`, for supervised jobs) or "
        "`preference` (`input`, `preferred_output`, `non_preferred_output`, for DPO jobs)",
    )
    token_reports: dict[str, Any] | None = Field(
        None, description="Per base model: examples, tokens, long and skipped examples (from job validation)"
    )

    @classmethod
    def of(cls, record: FileRecord) -> FilePublic:
        return cls(
            id=record.id,
            bytes=record.bytes,
            created_at=unix(record.created_at),
            filename=record.filename,
            purpose=record.purpose,
            status=record.status.value,
            status_details=record.status_details,
            sha256=record.sha256,
            examples=record.examples,
            format=record.format,
            token_reports=record.token_reports,
        )


class FilesPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[FilePublic]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True


# ---------------------------------------------------------------- jobs


class SupervisedMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: Hyperparameters | None = None


class DpoMethod(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: DpoHyperparameters | None = None


class MethodCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Method = Field("supervised", description="supervised (a chat file) or dpo (a preference file)")
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None

    @model_validator(mode="after")
    def _settings_of_its_type(self) -> MethodCreate:
        other = "dpo" if self.type == "supervised" else "supervised"
        if getattr(self, other) is not None:
            raise ValueError(f"method.{other} is given but method.type is {self.type!r}")
        return self

    @property
    def hyperparameters(self) -> Hyperparameters | None:
        settings = self.dpo if self.type == "dpo" else self.supervised
        return settings.hyperparameters if settings else None


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        max_length=255,
        description="A base model from GET /v1/models, or one of your fine-tuned models or their checkpoints "
        "(`fine_tuned_model_checkpoint`) to continue training from its adapter on the same base model",
    )
    training_file: str = Field(pattern=ID_PATTERN, description="Id of an uploaded file with purpose fine-tune")
    validation_file: str | None = Field(None, pattern=ID_PATTERN)
    hyperparameters: Hyperparameters | None = None
    method: MethodCreate | None = None
    suffix: str | None = Field(None, description="Up to 64 characters of A-Z a-z 0-9 . _ -")
    seed: int | None = Field(None, ge=0, le=2**31 - 1)
    metadata: dict[str, str] | None = None
    max_runtime_seconds: int | None = Field(
        None, ge=1, le=60 * 86400, description="Stop the job (after a final checkpoint) once it has run this long"
    )
    integrations: list[Any] | None = Field(None, max_length=0, description="Not supported; must be empty")
    resources: Resources | None = Field(
        None, description='loraq\'s extension: the GPUs the job trains on, {"gpus": N, "strategy": "ddp"|"fsdp"}'
    )

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, value: str | None) -> str | None:
        if value is not None and not SUFFIX_PATTERN.match(value):
            raise ValueError("must be 1-64 characters of A-Z a-z 0-9 . _ -")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > 16:
            raise ValueError("at most 16 key-value pairs")
        for key, item in value.items():
            if "\x00" in key or "\x00" in item:
                raise ValueError("keys and values must not contain NUL characters")
            if len(key) > 64:
                raise ValueError(f"key {key[:20]!r}... is longer than 64 characters")
            if len(item) > 512:
                raise ValueError(f"value of {key!r} is longer than 512 characters")
        return value

    @model_validator(mode="after")
    def _one_place_for_hyperparameters(self) -> JobCreate:
        if self.hyperparameters is not None and self.method_type == "dpo":
            # The top-level field is OpenAI's deprecated place for supervised ones; DPO's (beta) live in the method.
            raise ValueError("give a dpo job's hyperparameters in method.dpo.hyperparameters")
        if self.hyperparameters is not None and self.method and self.method.hyperparameters is not None:
            raise ValueError(f"give hyperparameters either at the top level or in method.{self.method_type}, not both")
        return self

    @property
    def method_type(self) -> str:
        return self.method.type if self.method else "supervised"

    @property
    def hyperparameters_param(self) -> str:
        """Where the request gave its hyperparameters, for error messages."""
        in_method = self.hyperparameters is None and self.method and self.method.hyperparameters is not None
        return f"method.{self.method_type}.hyperparameters" if in_method else "hyperparameters"

    def resolved_hyperparameters(self) -> Hyperparameters:
        """The method's hyperparameters (DpoHyperparameters for a DPO job), from wherever they were given."""
        given = self.hyperparameters or (self.method.hyperparameters if self.method else None)
        values = given.model_dump(exclude_unset=True) if given is not None else {}
        return hyperparameters_class(self.method_type).model_validate(values)


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class ValidationProgress(BaseModel):
    """How far the validator has read one of the job's files."""

    file: Literal["training", "validation"] = Field(description="Which of the job's files is being read")
    rows_done: int = Field(description="Examples tokenized so far")
    rows_estimated: int | None = Field(description="Examples the file holds, estimated from the bytes read")
    bytes_done: int = Field(description="Bytes of the file read so far")
    bytes_total: int = Field(description="The file's size in bytes")
    eta_seconds: int | None = Field(description="Seconds left for this file at the speed so far")


class JobParent(BaseModel):
    """The fine-tuned model (or checkpoint) a continued job started from."""

    job: str = Field(description="The parent job's id")
    step: int = Field(description="The parent's training step the adapter was taken at")
    model: str = Field(description="The name given as `model`: a fine_tuned_model or fine_tuned_model_checkpoint")
    checkpoint: str | None = Field(None, description="The checkpoint's id, when started from a checkpoint")


class ServingWarning(BaseModel):
    """A reason the job's adapter will not load in a serving engine as it is (loraq.serving)."""

    engine: str = Field(description="The serving engine, e.g. vllm")
    setting: str = Field(description="The hyperparameter or adapter setting at fault, e.g. lora_r")
    message: str


class JobPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    finished_at: int | None
    model: str
    fine_tuned_model: str | None
    organization_id: str
    status: str
    hyperparameters: dict[str, Any]
    method: dict[str, Any]
    training_file: str
    validation_file: str | None
    result_files: list[str] = Field(default_factory=list)
    trained_tokens: int | None
    error: JobError | None
    seed: int
    user_provided_suffix: str | None
    metadata: dict[str, str] | None
    estimated_finish: int | None
    integrations: list[Any] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources, description="The GPUs the job trains on")
    total_steps: int | None = None
    completed_steps: int = 0
    estimated_tokens: int | None = None
    validation_progress: ValidationProgress | None = Field(
        None,
        description="While the job is in validating_files: how far its files have been read, refreshed every "
        "LORAQ_VALIDATION_PROGRESS_SECONDS (10) during a long validation; null otherwise",
    )
    parent: JobParent | None = Field(
        None, description="loraq's extension: the fine-tuned model or checkpoint this job continues training from"
    )
    serving_warnings: list[ServingWarning] = Field(
        default_factory=list,
        description="loraq's extension: where the adapter will not load for serving as it is (e.g. vLLM and lora_r)",
    )
    pause_requested: bool = Field(
        False,
        description="loraq's extension: a pause is pending; the job becomes `paused` once training has checkpointed "
        "at its next step (running) or once its files are validated (validating_files)",
    )

    @classmethod
    def of(cls, job: Job) -> JobPublic:
        return cls(
            id=job.id,
            created_at=unix(job.created_at),
            finished_at=unix(job.finished_at),
            model=job.model,
            fine_tuned_model=job.fine_tuned_model,
            organization_id=job.owner,
            status=job.status.value,
            hyperparameters=job.hyperparameters,
            method={"type": job.method, job.method: {"hyperparameters": job.hyperparameters}},
            training_file=job.training_file,
            validation_file=job.validation_file,
            result_files=job.result_files or [],
            trained_tokens=job.trained_tokens,
            error=JobError(**job.error) if job.error else None,
            seed=job.seed,
            user_provided_suffix=job.suffix,
            metadata=job.user_metadata,
            estimated_finish=unix(job.estimated_finish),
            resources=Resources.model_validate(job.resources or {}),
            total_steps=job.total_steps,
            completed_steps=job.completed_steps,
            estimated_tokens=job.estimated_tokens,
            validation_progress=ValidationProgress(**job.validation_progress) if job.validation_progress else None,
            parent=JobParent(**job.parent) if job.parent else None,
            serving_warnings=[ServingWarning(**w) for w in job.serving_warnings or []],
            pause_requested=bool(job.pause_requested),
        )


class JobsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobPublic]
    has_more: bool


class EventPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any] | None = None

    @classmethod
    def of(cls, event: JobEvent) -> EventPublic:
        return cls(
            id=event.id,
            created_at=unix(event.created_at),
            level=event.level,
            message=event.message,
            type=event.type,
            data=event.data,
        )


class EventsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[EventPublic]
    has_more: bool


class CheckpointPublic(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any]

    @classmethod
    def of(cls, checkpoint: Checkpoint, job: Job) -> CheckpointPublic:
        base = job.fine_tuned_model or job.fine_tuned_name
        return cls(
            id=checkpoint.id,
            created_at=unix(checkpoint.created_at),
            fine_tuned_model_checkpoint=f"{base}:ckpt-step-{checkpoint.step_number}",
            fine_tuning_job_id=job.id,
            step_number=checkpoint.step_number,
            metrics=checkpoint.metrics,
        )


class CheckpointsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[CheckpointPublic]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


# ---------------------------------------------------------------- models


class ModelPublic(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str | None = None
    parent: str | None = None


class ModelsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelPublic]
