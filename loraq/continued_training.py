"""Continued training: a job whose `model` is a fine-tuned model of the caller, or one of its checkpoints.

Such a job trains on the parent's base model, starting from the parent's adapter weights, so its LoRA shape
(rank, alpha, target modules) is the parent's; lora_dropout is a training knob and may change. Pure Python:
the API resolves names and shapes with it, the training program reads an adapter's shape with it.

Names, as loraq publishes them (models.records.Job.fine_tuned_name, api.schemas.CheckpointPublic):
    ft:<base>:<suffix>:<job id>                   the adapter of a job that succeeded
    ft:<base>:<suffix>:<job id>:ckpt-step-<N>     one of a job's checkpoints
The base model's name may itself hold colons; the suffix may not (api.schemas.SUFFIX_PATTERN), so the job id
is the last field (of the part before `:ckpt-step-N`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from loraq.job_spec import Hyperparameters

_CHECKPOINT = re.compile(r"^(?P<model>.+):ckpt-step-(?P<step>[0-9]{1,9})$")
_JOB_ID = re.compile(r"^ftjob-[A-Za-z0-9]{1,58}$")

# The hyperparameters that are the adapter's shape: its weights' sizes and scale, and which layers carry them.
SHAPE_FIELDS = ("lora_r", "lora_alpha", "target_modules")


@dataclass(frozen=True)
class FineTunedName:
    """What a fine-tuned model's name points at: a job, and one of its checkpoints when `step` is set."""

    job_id: str
    step: int | None = None


def parse_fine_tuned_name(name: str) -> FineTunedName | None:
    """The job (and checkpoint step) a name of loraq's form points at; None for any other name."""
    if not name.startswith("ft:"):
        return None
    step = None
    checkpoint = _CHECKPOINT.match(name)
    if checkpoint:
        name, step = checkpoint["model"], int(checkpoint["step"])
    job_id = name.rsplit(":", 1)[-1]
    if name.count(":") < 3 or not _JOB_ID.match(job_id):
        return None
    return FineTunedName(job_id, step)


def checkpoint_model_name(fine_tuned_name: str, step: int) -> str:
    """The `fine_tuned_model_checkpoint` of a job's checkpoint at `step`."""
    return f"{fine_tuned_name}:ckpt-step-{step}"


@dataclass(frozen=True)
class ShapeConflict:
    """An explicitly given hyperparameter that does not match the parent adapter's shape."""

    field: str
    given: Any
    parent: Any

    @property
    def message(self) -> str:
        return (
            f"{self.field} {_show(self.given)} conflicts with the parent adapter's {self.field} {_show(self.parent)}: "
            f"continued training keeps the adapter's LoRA shape (lora_r, lora_alpha, target_modules); leave "
            f"{self.field} out or set it to {_show(self.parent)}"
        )


def _show(value: Any) -> str:
    return (
        ", ".join(sorted(value))
        if isinstance(value, list | set)
        else f"{value:g}"
        if isinstance(value, float)
        else str(value)
    )


def _same(field: str, a: Any, b: Any) -> bool:
    if field == "target_modules":
        return set(a) == set(b)
    return float(a) == float(b)


def inherit_lora_shape(given: Hyperparameters, parent: Hyperparameters) -> Hyperparameters | ShapeConflict:
    """The child's hyperparameters: the parent's shape, and its lora_dropout unless the child sets one; or the
    first shape field the child set to something else."""
    for field in SHAPE_FIELDS:
        if field in given.model_fields_set and not _same(field, getattr(given, field), getattr(parent, field)):
            return ShapeConflict(field, getattr(given, field), getattr(parent, field))
    inherited = {field: getattr(parent, field) for field in SHAPE_FIELDS}
    if "lora_dropout" not in given.model_fields_set:
        inherited["lora_dropout"] = parent.lora_dropout
    return given.model_copy(update=inherited)


def adapter_shape(adapter_config: dict[str, Any]) -> dict[str, Any]:
    """The shape fields (as hyperparameters) of a PEFT `adapter_config.json`."""
    modules = adapter_config.get("target_modules")
    shape: dict[str, Any] = {"lora_r": int(adapter_config["r"]), "lora_alpha": float(adapter_config["lora_alpha"])}
    if isinstance(modules, list):  # a regex string (not loraq's) cannot become a list of names
        shape["target_modules"] = sorted(modules)
    return shape
