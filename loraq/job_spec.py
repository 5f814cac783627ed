"""The job spec shared by the API, the workers and the training program: the hyperparameters a user may set.

Defaults are the seed document's recipe (LoRA r 16 / alpha 32 / dropout 0.05 on all projections,
lr 1e-4, 3 epochs, batch 1 x grad-accum 4, max length 2048, cosine, 3 % warm-up, save every 100 steps,
log every 10, seed 42). Pure pydantic: the API validates user input with the same model the trainer reads.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

LrSchedulerType = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
]


class Hyperparameters(BaseModel):
    """What a user may set on a job: OpenAI's three fields plus the LoRA and trainer knobs."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: int = Field(3, ge=1, le=1000, description="Passes over the training file")
    max_steps: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="Train exactly this many optimizer steps, overriding n_epochs (the file is repeated or cut "
        "short as needed; the learning-rate schedule spans these steps); default: n_epochs decides",
    )
    batch_size: int = Field(1, ge=1, le=1024, description="Examples per device per forward pass")
    learning_rate_multiplier: float = Field(
        1.0, gt=0, le=1000, description="Scales learning_rate (OpenAI's knob; 1.0 keeps it)"
    )
    learning_rate: float = Field(1e-4, gt=0, le=1.0, description="Peak learning rate before the multiplier")
    lora_r: int = Field(16, ge=1, le=1024, description="LoRA rank")
    lora_alpha: float = Field(32, gt=0, le=65536, description="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA branch")
    target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        min_length=1,
        max_length=64,
        description="Module names LoRA adapts",
    )
    max_seq_length: int = Field(2048, ge=16, le=131072, description="Longer examples are truncated")
    gradient_accumulation_steps: int = Field(4, ge=1, le=1024, description="Forward passes per optimizer step")
    warmup_ratio: float = Field(0.03, ge=0, le=1, description="Fraction of steps spent warming up")
    lr_scheduler_type: LrSchedulerType = Field("cosine", description="Learning-rate schedule")
    save_steps: int = Field(100, ge=1, le=1_000_000, description="Optimizer steps between checkpoints")
    logging_steps: int = Field(10, ge=1, le=1_000_000, description="Optimizer steps between metrics events")
    train_on_inputs: bool = Field(False, description="Also train on prompt tokens (default: assistant only)")
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto", description="Recompute activations in backward; auto: only when they would crowd device memory"
    )
    load_in_4bit: bool = Field(False, description="QLoRA: NF4 base weights through bitsandbytes (CUDA workers only)")

    @model_validator(mode="before")
    @classmethod
    def _auto_means_default(cls, data: Any) -> Any:
        # OpenAI clients send "auto" for n_epochs, batch_size and learning_rate_multiplier.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v != "auto"}
        return data

    @field_validator("target_modules")
    @classmethod
    def _module_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not name or len(name) > 128 or not all(c.isalnum() or c in "._-" for c in name):
                raise ValueError(f"invalid module name {name!r}")
        return names

    @property
    def effective_learning_rate(self) -> float:
        return self.learning_rate * self.learning_rate_multiplier


# --------------------------------------------------------------------------- methods

Method = Literal["supervised", "dpo"]
METHODS: tuple[str, ...] = ("supervised", "dpo")


class DpoHyperparameters(Hyperparameters):
    """A DPO job's: OpenAI's DPO fields (beta, batch_size, learning_rate_multiplier, n_epochs) and the same LoRA
    and trainer knobs as a supervised job, which mean the same here (max_seq_length bounds prompt plus output)."""

    beta: float = Field(
        0.1, gt=0, le=100, description="DPO's beta: how far the adapter may move from the base model (higher: less)"
    )

    @field_validator("train_on_inputs")
    @classmethod
    def _outputs_only(cls, value: bool) -> bool:
        if value:
            raise ValueError("does not apply to DPO, whose loss compares the preferred and non-preferred outputs only")
        return value


def hyperparameters_class(method: str) -> type[Hyperparameters]:
    """The hyperparameters a job of `method` takes."""
    return DpoHyperparameters if method == "dpo" else Hyperparameters


# The training file format each method trains on (loraq.dataset_format).
METHOD_FORMATS = {"supervised": "chat", "dpo": "preference"}


# --------------------------------------------------------------------------- resources

MAX_GPUS_PER_JOB = 64
Strategy = Literal["ddp", "fsdp"]


class Resources(BaseModel):
    """The devices a job trains on: several GPUs of one worker, one training program across them."""

    model_config = ConfigDict(extra="forbid")

    gpus: int = Field(1, ge=1, le=MAX_GPUS_PER_JOB, description="GPUs (processes) the job trains on")
    strategy: Strategy = Field(
        "ddp",
        description="ddp: every GPU holds the whole model (the default); fsdp: parameters, gradients and "
        "optimizer state are sharded over the GPUs, for models that do not fit on one",
    )


def step_split_error(hyperparameters: Hyperparameters, gpus: int) -> str | None:
    """Why an optimizer step of `batch_size x gradient_accumulation_steps` examples cannot be shared evenly by
    `gpus` processes (each takes an equal part of every step, so the step, the schedule and the results
    do not depend on the GPU count); None when it can."""
    examples = hyperparameters.batch_size * hyperparameters.gradient_accumulation_steps
    if examples % gpus == 0:
        return None
    return (
        f"an optimizer step of batch_size x gradient_accumulation_steps = {examples} examples cannot be split "
        f"evenly over {gpus} GPUs; ask for a number of GPUs that divides {examples}, or make "
        f"gradient_accumulation_steps a multiple of {gpus}"
    )


def queue_for_gpus(queue: str, gpus: int) -> str:
    """The broker queue of jobs on `gpus` GPUs: the model's queue for one, `<queue>.gpus<N>` for more (the
    queue `loraq worker --gpus-per-job N` consumes)."""
    return queue if gpus == 1 else f"{queue}.gpus{gpus}"
