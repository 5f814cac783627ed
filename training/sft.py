"""One LoRA SFT run from its TrainingConfig: load data -> build trainer -> train -> save.

The seed document's script done right on TRL 1.x / transformers 5.x: the loss covers assistant tokens
(and their end-of-turn token) of any chat template unless `train_on_inputs`, batches carry no padding and
attention stays inside each example, activation checkpointing only when memory needs it, bf16 only on a
GPU that has it, no paged optimizer, and the adapter folder is written under a temporary name and renamed
into place with a `loraq.json` beside the weights. The adapter is a new one, or for continued training the
one `init_adapter` names, loaded trainable (training.lora). The speed tricks the config enables
(training.speedups) are installed by one call once the trainer is built. The command line around it is
training.run.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, Trainer
from trl import SFTConfig

from loraq.dataset_format import CHAT, PREFERENCE
from loraq.storage import sha256_of, staged_directory
from training import distributed
from training.config import TrainingConfig
from training.hardware import (
    HardwareError,
    pick_attention_implementation,
    pick_precision,
    quantization_config,
    use_gradient_checkpointing,
)
from training.lora import attach_lora, with_adapter_shape
from training.loss_masks import MASK_REMEDY, MaskError
from training.packing import PackedSFTTrainer, token_budget
from training.preference import COLUMNS as PREFERENCE_COLUMNS
from training.progress import ProgressCallback, ProgressWriter
from training.results import write_samples, write_step_metrics
from training.speedups import apply_speedups, resolve_speedups
from training.tiny_model import model_source
from training.tokenized import open_tokenized, row_lengths, tokenize_file

logger = logging.getLogger("loraq.training")


# --------------------------------------------------------------------------- model and data


def resolve_base_model(config: TrainingConfig) -> str:
    """The built-in tiny model is generated on first use; anything else is a hub id or a local folder."""
    return model_source(config.base_model, config.model_cache_dir or Path.home() / ".cache" / "loraq")


def load_model(config: TrainingConfig, model_path: str, precision: dict):
    """The base model on this worker's hardware: dtype, attention for padding-free batches, 4-bit weights if
    asked. Plain layers: transformers' Hub kernels are a speedup (training.speedups), off until applied."""
    kwargs = {
        "dtype": precision["dtype"],
        "trust_remote_code": config.trust_remote_code,
        "attn_implementation": pick_attention_implementation(torch.cuda.is_available()),
        "use_kernels": False,
    }
    quantization = quantization_config(config.hyperparameters.load_in_4bit, precision["dtype"])
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    return AutoModelForCausalLM.from_pretrained(model_path, **kwargs)


def with_dataset_hashes(config: TrainingConfig) -> TrainingConfig:
    """The config with its files' sha256: the ones recorded at upload (the worker passes them), else hashed
    here (`loraq train`). They name the tokenized copies and are recorded in loraq.json."""
    hashes = {}
    if config.train_sha256 is None:
        hashes["train_sha256"] = sha256_of(config.train_path)
    if config.eval_path and config.eval_sha256 is None:
        hashes["eval_sha256"] = sha256_of(config.eval_path)
    return config.model_copy(update=hashes) if hashes else config


# The columns training reads of a tokenized file, by format (training.dataset, training.preference).
TRAINED_COLUMNS = {CHAT: ["input_ids", "labels"], PREFERENCE: list(PREFERENCE_COLUMNS)}


def load_rows(config: TrainingConfig, tokenizer, role: str, file_format: str = CHAT):
    """A file's training rows, memory-mapped from its tokenized copy: the one the validation stage wrote, or
    one written now if there is none (training.tokenized). A chat file's: tokens and labels (assistant-only
    masks for any template, truncated to max_seq_length, rows with nothing to learn left out); a preference
    file's: TRL's prompt, chosen and rejected tokens (prompts that fill max_seq_length left out)."""
    hp = config.hyperparameters
    if role == "train":
        path, sha256, folder = config.train_path, config.train_sha256, config.train_tokenized_dir
    else:
        path, sha256, folder = config.eval_path, config.eval_sha256, config.eval_tokenized_dir
    assert path is not None and sha256 is not None  # with_dataset_hashes ran
    started = time.monotonic()
    found = tokenize_file(
        path, sha256, tokenizer, folder or Path(config.checkpoint_dir) / "tokenized",
        hp.max_seq_length, hp.train_on_inputs, processes=os.cpu_count() or 1, file_format=file_format,
    )  # fmt: skip
    how = "reusing the tokenized rows at" if found.reused else "tokenized into"
    logger.info("%s file: %s %s (%.2f s)", role, how, found.path, time.monotonic() - started)
    return open_tokenized(found.path).select_columns(TRAINED_COLUMNS[file_format])


# --------------------------------------------------------------------------- trainer


def load_tokenizer(config: TrainingConfig, model_path: str):
    """The base model's tokenizer, padding on the right (with its end-of-text token if it has no pad token)."""
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=config.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def shared_arguments(config: TrainingConfig, precision: dict, checkpointing: bool, evaluating: bool) -> dict:
    """The trainer arguments every method sets alike (SFTConfig here, DPOConfig in training.dpo): schedule,
    precision, checkpoints, evaluation, logging, seeds and the processes' part."""
    hp = config.hyperparameters
    return {
        "activation_checkpointing": checkpointing and not distributed.sharded(config),  # FSDP does its own
        "activation_checkpointing_kwargs": {"use_reentrant": False},  # reentrant marks LoRA grads twice under DDP
        "learning_rate": hp.effective_learning_rate,
        "lr_scheduler_type": hp.lr_scheduler_type,
        "warmup_steps": hp.warmup_ratio,  # a float below 1 is a ratio of the total steps in transformers 5
        "optim": precision["optim"],
        "bf16": precision["bf16"],
        "fp16": precision["fp16"],
        "save_strategy": "steps",
        "save_steps": hp.save_steps,
        "eval_strategy": "steps" if evaluating else "no",
        "eval_steps": hp.save_steps,
        "logging_steps": hp.logging_steps,
        "seed": config.seed,
        "data_seed": config.seed,
        "include_num_input_tokens_seen": "non_padding",
        "report_to": "none",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": torch.cuda.is_available(),
        **distributed.trainer_arguments(config, checkpointing),
    }


def build_trainer(config: TrainingConfig, model_path: str, callback: ProgressCallback) -> PackedSFTTrainer:
    config = with_dataset_hashes(config)
    hp = config.hyperparameters
    precision = pick_precision()
    tokenizer = load_tokenizer(config, model_path)
    model = load_model(config, model_path, precision)
    # The rows come tokenized with their labels and memory-mapped (nothing of the dataset is copied into
    # memory: TRL's preparation is skipped, and the trainer's sampler and resume work on row indices); its
    # padding-free collator concatenates each optimizer step's examples and PackedSFTTrainer cuts them into
    # micro-batches of at most `budget` tokens (training.packing).
    with distributed.main_process_first():  # rank 0 tokenizes a file that has no tokenized copy yet; the others read it
        train_ds = load_rows(config, tokenizer, "train")
        eval_ds = load_rows(config, tokenizer, "eval") if config.eval_path else None
    budget = token_budget(row_lengths(train_ds), hp.batch_size)
    checkpointing = use_gradient_checkpointing(hp.gradient_checkpointing, model, budget, precision["dtype"])
    args = SFTConfig(
        output_dir=config.checkpoint_dir,
        max_length=None,  # truncated to max_seq_length while tokenizing
        packing=False,
        padding_free=True,
        num_train_epochs=hp.n_epochs,
        max_steps=hp.max_steps or -1,  # -1: the epochs decide
        # One optimizer step's examples, shared evenly by the processes (training.config checks they can be).
        per_device_train_batch_size=hp.batch_size * hp.gradient_accumulation_steps // config.nproc_per_node,
        per_device_eval_batch_size=hp.batch_size,
        gradient_accumulation_steps=1,
        **shared_arguments(config, precision, checkpointing, evaluating=eval_ds is not None),
        dataset_kwargs={"skip_prepare_dataset": True},  # already tokenized, masked and truncated
    )
    model, peft_config = attach_lora(model, config)  # a new adapter, or continued training's (training.lora)
    trainer = PackedSFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[callback],
        token_budget=budget,
    )
    apply_speedups(trainer, resolve_speedups(config.speedups))
    trainer.remove_callback(PrinterCallback)  # our ProgressCallback reports the same, readably
    return trainer


# --------------------------------------------------------------------------- save


def library_versions() -> dict:
    import datasets
    import peft
    import transformers
    import trl

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "trl": trl.__version__,
        "datasets": datasets.__version__,
    }


def save_adapter(trainer: Trainer, config: TrainingConfig, summary: dict, weights: dict | None = None) -> Path:
    """Write adapter, tokenizer, chat template and loraq.json to a temporary folder, then rename it. `weights`:
    the gathered state dict of a sharded model (training.distributed.gathered_weights)."""
    final = Path(config.output_dir)
    config = with_dataset_hashes(config)
    # `loraq train --output_dir` keeps the seed's layout (checkpoints beside the adapter), so an existing
    # folder is updated file by file; the worker's adapter folder is new and appears in one rename.
    with staged_directory(final, merge_into_existing=True) as staging:
        options: dict = {"state_dict": weights} if weights is not None else {}
        if "ref" in getattr(trainer.model, "peft_config", {}):  # DPO's copy of a continued job's starting adapter
            options["selected_adapters"] = ["default"]
        trainer.model.save_pretrained(staging, **options)
        trainer.processing_class.save_pretrained(staging)
        record = {
            "config": json.loads(config.model_dump_json()),
            "datasets": {
                "train_sha256": config.train_sha256,
                "eval_sha256": config.eval_sha256,
            },
            "versions": library_versions(),
            "speedups": sorted(getattr(trainer, "speedups", ())),  # DPO runs TRL's own path, without them
            "metrics": summary,
            # Continued training: the model it started from (the worker's record: job, step, model name).
            "parent": config.extra_metadata.get("parent")
            or ({"adapter": config.init_adapter} if config.init_adapter else None),
        }
        (staging / "loraq.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    return final


# --------------------------------------------------------------------------- train


TrainerBuilder = Callable[[TrainingConfig, str, ProgressCallback], Trainer]


def train(config: TrainingConfig, build: TrainerBuilder = build_trainer) -> dict:
    """Train and save; returns the outcome record (also appended to the progress file). `build` makes the
    method's trainer (this module's for SFT, training.dpo's for DPO); the rest is the same for both."""
    writer = ProgressWriter(config.progress_path if distributed.is_main_process() else None)
    callback = ProgressCallback(writer, config.stop_path, config.max_train_seconds)
    torch.manual_seed(config.seed)
    distributed.join_process_group(config)
    config = with_adapter_shape(with_dataset_hashes(config))
    with distributed.main_process_first():  # the built-in tiny model is generated once, by rank 0
        model_path = resolve_base_model(config)
    trainer = build(config, model_path, callback)
    started = time.monotonic()
    output = trainer.train(resume_from_checkpoint=config.resume_from)
    state = trainer.state
    summary = {
        "steps": state.global_step,
        "total_steps": state.max_steps,
        "trained_tokens": int(state.num_input_tokens_seen),
        "train_loss": output.training_loss,
        "train_runtime_s": round(time.monotonic() - started, 3),
        "time_limited": callback.time_limited,
        **(
            {"peak_device_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20)}
            if torch.cuda.is_available()
            else {}
        ),
        **{k: v for k, v in callback.last_metrics.items() if k.startswith(("valid_", "train_mean", "rewards_"))},
    }
    if callback.stopped_early:
        writer.write("stopped", reason=callback.stop_reason, **summary)
        return {"type": "stopped", "reason": callback.stop_reason, **summary}
    weights = distributed.gathered_weights(trainer, config)
    if not distributed.is_main_process():  # rank 0 saves the adapter and the result files
        return {"type": "completed", **summary}
    folder = save_adapter(trainer, config, summary, weights)
    results = write_results(trainer, config)
    writer.write("completed", adapter_dir=str(folder), result_files=results, **summary)
    return {"type": "completed", "adapter_dir": str(folder), "result_files": results, **summary}


def write_results(trainer: Trainer, config: TrainingConfig) -> list[str]:
    """Result files beside the adapter folder: metrics per step, and samples when there is a validation file."""
    folder = Path(config.results_dir or Path(config.output_dir) / "results")
    folder.mkdir(parents=True, exist_ok=True)
    paths = [write_step_metrics(trainer.state.log_history, folder / "step_metrics.csv")]
    if config.eval_path and distributed.sharded(config):
        # Generating on a sharded model would need every rank in step; the samples are left out.
        logger.info("samples.jsonl is not written for FSDP jobs")
    elif config.eval_path:
        samples = folder / "samples.jsonl"
        paths.append(write_samples(trainer.model, trainer.processing_class, config.eval_path, samples, config.method))
    return [str(p) for p in paths]


# Errors of the filesystem under shared storage (full, read-only, not permitted, a folder turned into a file).
STORAGE_ERRNOS = {
    errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EEXIST, errno.EIO
}  # fmt: skip


def describe_failure(exc: BaseException) -> dict:
    """A reason a user can act on; out-of-memory names the knobs to lower."""
    if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
        return {
            "code": "storage_error",
            "message": f"Writing to shared storage failed: {exc}. "
            "No adapter was published; the operator must free or repair the storage, then resubmit.",
        }
    if isinstance(exc, MaskError):
        return {
            "code": "invalid_chat_template",
            "message": f"Cannot train on assistant tokens only: {exc}. {MASK_REMEDY}",
        }
    if isinstance(exc, HardwareError):
        return {"code": "unsupported_hardware", "message": str(exc)}
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return {
            "code": "out_of_memory",
            "message": "Training ran out of memory. Lower hyperparameters.batch_size or "
            "hyperparameters.max_seq_length (raise gradient_accumulation_steps to keep the effective batch), "
            "or lora_r.",
        }
    return {"code": "training_error", "message": f"{type(exc).__name__}: {exc}"[:2000]}
