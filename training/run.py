"""Run one LoRA SFT job: parse config -> load data -> build trainer -> train -> save.

    python -m training.run --config job.json

This is the seed document's script done right on TRL 1.x / transformers 5.x: conversational rows go to
TRL as `messages`, the loss covers assistant tokens (and their end-of-turn token) unless
`train_on_inputs`, bf16 only on a GPU that has it, no paged optimizer, and the adapter folder is written
under a temporary name and renamed into place with a `loraq.json` beside the weights.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import platform
import sys
import time
import traceback
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback
from trl import SFTConfig, SFTTrainer
from trl.chat_template_utils import has_generation_markers

from loraq.dataset_format import read_examples
from loraq.storage import sha256_of, staged_directory
from training.config import TrainingConfig
from training.loss_masks import MaskError, tokenize_with_mask
from training.progress import ProgressCallback, ProgressWriter
from training.results import write_samples, write_step_metrics
from training.tiny_model import TINY_MODEL_NAME, ensure_tiny_model

logger = logging.getLogger("loraq.training")


# --------------------------------------------------------------------------- model and data


def resolve_base_model(config: TrainingConfig) -> str:
    """The built-in tiny model is generated on first use; anything else is a hub id or a local folder."""
    if config.base_model == TINY_MODEL_NAME:
        cache = Path(config.model_cache_dir or Path.home() / ".cache" / "loraq")
        return str(ensure_tiny_model(cache / TINY_MODEL_NAME))
    return config.base_model


def pick_precision() -> dict:
    """bf16 on a GPU that supports it, fp16 on an older GPU, float32 on a CPU."""
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return {"dtype": torch.bfloat16, "bf16": True, "fp16": False, "optim": "adamw_torch_fused"}
        return {"dtype": torch.float16, "bf16": False, "fp16": True, "optim": "adamw_torch_fused"}
    return {"dtype": torch.float32, "bf16": False, "fp16": False, "optim": "adamw_torch"}


def load_conversations(path: str) -> Dataset:
    """Chat rows as TRL conversations; each message gets an explicit `weight` so the columns line up."""
    rows = []
    for example in read_examples(path):
        messages = [
            {"role": m["role"], "content": m["content"], "weight": int(m.get("weight", 1))} for m in example["messages"]
        ]
        rows.append({"messages": messages})
    return Dataset.from_list(rows)


def load_masked(path: str, tokenizer, max_length: int) -> Dataset:
    """Chat rows tokenized with assistant-only labels (see training.loss_masks)."""
    rows = []
    for number, example in enumerate(read_examples(path), start=1):
        try:
            rows.append(tokenize_with_mask(tokenizer, example["messages"], max_length))
        except MaskError as exc:
            raise MaskError(f"{Path(path).name}, example {number}: {exc}") from None
    return Dataset.from_list(rows)


# --------------------------------------------------------------------------- trainer


def build_trainer(config: TrainingConfig, model_path: str, callback: ProgressCallback) -> SFTTrainer:
    hp = config.hyperparameters
    precision = pick_precision()
    tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=config.trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=precision["dtype"], trust_remote_code=config.trust_remote_code
    )
    # Assistant-only loss: TRL derives the mask from `{% generation %}` markers where the template has
    # them (the built-in model's does); for any other template the mask is derived here by incremental
    # rendering and the rows go to TRL already tokenized, with their labels.
    derive_masks = not hp.train_on_inputs and not has_generation_markers(tokenizer.chat_template)
    load = (lambda path: load_masked(path, tokenizer, hp.max_seq_length)) if derive_masks else load_conversations
    train_ds = load(config.train_path)
    eval_ds = load(config.eval_path) if config.eval_path else None
    args = SFTConfig(
        output_dir=config.checkpoint_dir,
        max_length=hp.max_seq_length,
        packing=False,
        num_train_epochs=hp.n_epochs,
        per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        learning_rate=hp.effective_learning_rate,
        lr_scheduler_type=hp.lr_scheduler_type,
        warmup_steps=hp.warmup_ratio,  # a float below 1 is a ratio of the total steps in transformers 5
        optim=precision["optim"],
        bf16=precision["bf16"],
        fp16=precision["fp16"],
        save_strategy="steps",
        save_steps=hp.save_steps,
        eval_strategy="steps" if eval_ds is not None else "no",
        eval_steps=hp.save_steps,
        logging_steps=hp.logging_steps,
        seed=config.seed,
        data_seed=config.seed,
        assistant_only_loss=not hp.train_on_inputs and not derive_masks,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    peft_config = LoraConfig(
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=hp.target_modules,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[callback],
    )
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


def save_adapter(trainer: SFTTrainer, config: TrainingConfig, summary: dict) -> Path:
    """Write adapter, tokenizer, chat template and loraq.json to a temporary folder, then rename it."""
    final = Path(config.output_dir)
    # `loraq train --output_dir` keeps the seed's layout (checkpoints beside the adapter), so an existing
    # folder is updated file by file; the worker's adapter folder is new and appears in one rename.
    with staged_directory(final, merge_into_existing=True) as staging:
        trainer.model.save_pretrained(staging)
        trainer.processing_class.save_pretrained(staging)
        record = {
            "config": json.loads(config.model_dump_json()),
            "datasets": {
                "train_sha256": sha256_of(config.train_path),
                "eval_sha256": sha256_of(config.eval_path) if config.eval_path else None,
            },
            "versions": library_versions(),
            "metrics": summary,
        }
        (staging / "loraq.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    return final


# --------------------------------------------------------------------------- main


def train(config: TrainingConfig) -> dict:
    """Train and save; returns the outcome record (also appended to the progress file)."""
    writer = ProgressWriter(config.progress_path)
    callback = ProgressCallback(writer, config.stop_path, config.max_train_seconds)
    torch.manual_seed(config.seed)
    model_path = resolve_base_model(config)
    trainer = build_trainer(config, model_path, callback)
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
        **{k: v for k, v in callback.last_metrics.items() if k.startswith(("valid_", "train_mean"))},
    }
    if callback.stopped_early:
        writer.write("stopped", reason=callback.stop_reason, **summary)
        return {"type": "stopped", "reason": callback.stop_reason, **summary}
    folder = save_adapter(trainer, config, summary)
    results = write_results(trainer, config)
    writer.write("completed", adapter_dir=str(folder), result_files=results, **summary)
    return {"type": "completed", "adapter_dir": str(folder), "result_files": results, **summary}


def write_results(trainer: SFTTrainer, config: TrainingConfig) -> list[str]:
    """Result files beside the adapter folder: metrics per step, and samples when there is a validation file."""
    folder = Path(config.results_dir or Path(config.output_dir) / "results")
    folder.mkdir(parents=True, exist_ok=True)
    paths = [write_step_metrics(trainer.state.log_history, folder / "step_metrics.csv")]
    if config.eval_path:
        paths.append(write_samples(trainer.model, trainer.processing_class, config.eval_path, folder / "samples.jsonl"))
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
            "message": f"Cannot train on assistant tokens only: {exc}. "
            "Set hyperparameters.train_on_inputs to true to train on whole conversations.",
        }
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return {
            "code": "out_of_memory",
            "message": "Training ran out of memory. Lower hyperparameters.batch_size or "
            "hyperparameters.max_seq_length (raise gradient_accumulation_steps to keep the effective batch), "
            "or lora_r.",
        }
    return {"code": "training_error", "message": f"{type(exc).__name__}: {exc}"[:2000]}


def configure_logging() -> None:
    """Readable progress lines; no progress bars in logs."""
    import datasets
    import transformers

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="Path of a TrainingConfig JSON file")
    args = parser.parse_args(argv)
    configure_logging()
    config = TrainingConfig.model_validate_json(Path(args.config).read_text())
    try:
        train(config)
    except BaseException as exc:
        traceback.print_exc()
        ProgressWriter(config.progress_path).write("failed", **describe_failure(exc))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
