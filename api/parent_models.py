"""Continued training at create: a job's `model` that names a fine-tuned model of the caller, or one of its
checkpoints, becomes the parent's base model, the parent record, and the parent's LoRA shape.

Another owner's model and a name that points at nothing are the same 404 (never confirm that an id
exists); a job of the caller that has not succeeded has no fine-tuned model yet, a 400 that says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import visible_to
from api.errors import APIError
from loraq.continued_training import ShapeConflict, checkpoint_model_name, inherit_lora_shape, parse_fine_tuned_name
from loraq.job_spec import Hyperparameters
from models import Checkpoint, Job, JobStatus
from models.api_keys import Principal


@dataclass(frozen=True)
class ParentModel:
    """What a continued job starts from."""

    base_model: str  # the parent's base model: the child trains on it
    record: dict[str, Any]  # Job.parent: {"job", "step", "model", "checkpoint"}
    hyperparameters: Hyperparameters  # the parent's, whose LoRA shape the child keeps


def _unknown(name: str) -> APIError:
    return APIError(
        404,
        f"No such model: '{name}'. Continued training takes one of your fine-tuned models (fine_tuned_model of a "
        "job that succeeded) or one of their checkpoints (fine_tuned_model_checkpoint); see GET /v1/models.",
        param="model",
        code="model_not_found",
    )


def find_parent(session: Session, principal: Principal, name: str) -> ParentModel | None:
    """The parent a `model` names, None when it is not a fine-tuned model's name (a base model, or unknown)."""
    parsed = parse_fine_tuned_name(name)
    if parsed is None:
        return None
    job = session.scalars(select(Job).where(Job.id == parsed.job_id, visible_to(principal, Job))).first()
    if job is None:
        raise _unknown(name)
    hyperparameters = Hyperparameters.model_validate(job.hyperparameters)
    if parsed.step is None:
        if name != job.fine_tuned_name:
            raise _unknown(name)
        if job.status != JobStatus.succeeded:
            raise APIError(
                400,
                f"Model '{name}' does not exist yet: job '{job.id}' has status '{job.status.value}', and its "
                "fine-tuned model exists once it succeeds. Its checkpoints (GET /v1/fine_tuning/jobs/"
                f"{job.id}/checkpoints) can be continued from by their fine_tuned_model_checkpoint.",
                param="model",
                code="model_not_ready",
            )
        record = {"job": job.id, "step": job.completed_steps, "model": name, "checkpoint": None}
        return ParentModel(job.model, record, hyperparameters)
    checkpoint = session.scalars(
        select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.step_number == parsed.step)
    ).first()
    if checkpoint is None or name != checkpoint_model_name(job.fine_tuned_name, parsed.step):
        raise _unknown(name)
    record = {"job": job.id, "step": parsed.step, "model": name, "checkpoint": checkpoint.id}
    return ParentModel(job.model, record, hyperparameters)


def continued_hyperparameters(parent: ParentModel, given: Hyperparameters, param: str) -> Hyperparameters:
    """The child's hyperparameters with the parent's LoRA shape; a 400 naming the first field given otherwise.
    `param` is where the request put them (`hyperparameters` or `method.supervised.hyperparameters`)."""
    resolved = inherit_lora_shape(given, parent.hyperparameters)
    if isinstance(resolved, ShapeConflict):
        raise APIError(
            400,
            f"{resolved.message} (the parent is '{parent.record['model']}').",
            param=f"{param}.{resolved.field}",
            code="lora_shape_conflict",
        )
    return resolved
