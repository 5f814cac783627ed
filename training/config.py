"""The training program's own config: everything one run needs, written as JSON by the worker or built
from the command line's flags. The user-settable part is the shared job spec (loraq.job_spec)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, field_validator, model_validator

from loraq.job_spec import MAX_GPUS_PER_JOB, Hyperparameters, Method, Strategy, hyperparameters_class, step_split_error
from training.speedups import SpeedupsSetting, parse_speedups


class TrainingConfig(BaseModel):
    """Everything one training run needs; written as JSON by the worker, or built from the seed's flags."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(description="Hub id, local folder, or `loraq-tiny-chat`")
    trust_remote_code: bool = Field(False, description="Allow the model's own code (operator-trusted only)")
    model_cache_dir: str | None = Field(None, description="Where the built-in tiny model is generated")
    method: Method = Field(
        "supervised",
        description="supervised: SFT on chat `messages` rows; dpo: DPO on preference rows (`input`, "
        "`preferred_output`, `non_preferred_output`), the base model with the adapter disabled as the reference",
    )
    train_path: str = Field(description="Training JSONL (chat rows, or preference rows for --method dpo)")
    eval_path: str | None = Field(None, description="Optional validation JSONL, in the training file's format")
    train_sha256: str | None = Field(
        None, description="The training file's sha256 as recorded at upload (hashed from the file when not given)"
    )
    eval_sha256: str | None = Field(None, description="The validation file's sha256 (hashed when not given)")
    train_tokenized_dir: str | None = Field(
        None,
        description="Folder of the training file's tokenized copies (training.tokenized): the copy for this "
        "tokenizer and these settings is memory-mapped if there (the validation stage wrote it), else written "
        "there first (default: <checkpoint_dir>/tokenized, which for `loraq train` is <output_dir>/tokenized)",
    )
    eval_tokenized_dir: str | None = Field(
        None, description="Folder of the validation file's tokenized copies (default: <checkpoint_dir>/tokenized)"
    )
    output_dir: str = Field(description="Final adapter folder (written to a temporary name, then renamed)")
    checkpoint_dir: str = Field(description="Folder for checkpoint-N folders")
    results_dir: str | None = Field(None, description="Folder for result files (default: output_dir/results)")
    progress_path: str | None = Field(None, description="JSONL file the run appends progress records to")
    stop_path: str | None = Field(None, description="If this file appears, training stops at the next step")
    seed: int = Field(42, description="Random seed")
    resume_from: str | None = Field(None, description="A complete checkpoint folder to continue from")
    init_adapter: str | None = Field(
        None,
        description="Continued training: a LoRA adapter folder (adapter_config.json and weights) whose weights "
        "training starts from instead of a new adapter; its rank, alpha and target modules replace the "
        "hyperparameters' (a checkpoint given with resume_from still wins: its weights are loaded over these)",
    )
    max_train_seconds: float | None = Field(
        None, gt=0, description="Stop training after this long and save the adapter learned so far"
    )
    # The method's own class (DpoHyperparameters for dpo), serialised with its fields.
    hyperparameters: SerializeAsAny[Hyperparameters] = Field(default_factory=Hyperparameters)
    nproc_per_node: int = Field(
        1,
        ge=1,
        le=MAX_GPUS_PER_JOB,
        description="Training processes on this machine, one per GPU (on a CPU, each a share of the cores): "
        "above 1 the run is relaunched under torchrun and each optimizer step's examples are split evenly "
        "between the processes",
    )
    strategy: Strategy = Field(
        "ddp", description="With several processes: ddp (each holds the model) or fsdp (the model is sharded)"
    )
    speedups: SpeedupsSetting = Field(
        "auto",
        description="Speed tricks to install (training.speedups: fused_lora, supervised_head, scored_rows, "
        "packed_sdpa, train_mode_once, hub_kernels): auto (all on a CPU, none on CUDA until measured on a GPU), "
        "all, none, or names",
    )
    extra_metadata: dict[str, Any] = Field(default_factory=dict, description="Copied into loraq.json")

    @model_validator(mode="before")
    @classmethod
    def _method_hyperparameters(cls, data: Any) -> Any:
        if isinstance(data, dict):
            method = data.get("method", "supervised")
            given = data.get("hyperparameters", {})
            if isinstance(given, Hyperparameters):
                given = given.model_dump(exclude_unset=True)
            if isinstance(given, dict):
                data = {**data, "hyperparameters": hyperparameters_class(method).model_validate(given)}
        return data

    @field_validator("speedups", mode="before")
    @classmethod
    def _speedup_names(cls, value: Any) -> Any:
        return parse_speedups(value)

    @model_validator(mode="after")
    def _step_splits_over_processes(self) -> TrainingConfig:
        error = step_split_error(self.hyperparameters, self.nproc_per_node)
        if error:
            raise ValueError(f"nproc_per_node: {error}")
        return self
