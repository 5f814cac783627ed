"""`loraq train`: the seed document's command line, running the same training code as the worker.

loraq train --base_model loraq-tiny-chat --train_path data/train.jsonl --output_dir ./output
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from loraq.job_spec import Hyperparameters
from training.config import TrainingConfig

SEED_DEFAULT_MODEL = "Qwen/Qwen2.5-7B-Instruct"


def build_parser() -> argparse.ArgumentParser:
    defaults = Hyperparameters()
    p = argparse.ArgumentParser(prog="loraq train", description="LoRA SFT of a chat model on a JSONL file")
    p.add_argument("--base_model", default=SEED_DEFAULT_MODEL, help="Hub id, local folder, or loraq-tiny-chat")
    p.add_argument("--train_path", required=True, help="Training JSONL with chat `messages` rows")
    p.add_argument("--eval_path", default="", help="Optional validation JSONL")
    p.add_argument("--output_dir", required=True, help="Checkpoints and the final adapter go here")
    p.add_argument("--max_seq_length", type=int, default=defaults.max_seq_length, help="Max tokens per example")
    p.add_argument("--learning_rate", type=float, default=defaults.learning_rate, help="Peak learning rate")
    p.add_argument("--num_train_epochs", type=int, default=defaults.n_epochs, help="Epochs")
    p.add_argument("--batch_size", type=int, default=defaults.batch_size, help="Per-device batch size")
    p.add_argument(
        "--gradient_accumulation_steps",
        type=int,
        default=defaults.gradient_accumulation_steps,
        help="Forward passes per optimizer step",
    )
    p.add_argument("--save_steps", type=int, default=defaults.save_steps, help="Steps between checkpoints")
    p.add_argument("--logging_steps", type=int, default=defaults.logging_steps, help="Steps between log lines")
    p.add_argument("--seed", type=int, default=42, help="Random seed")
    p.add_argument("--lora_r", type=int, default=defaults.lora_r, help="LoRA rank")
    p.add_argument("--lora_alpha", type=float, default=defaults.lora_alpha, help="LoRA alpha")
    p.add_argument("--lora_dropout", type=float, default=defaults.lora_dropout, help="LoRA dropout")
    p.add_argument("--train_on_inputs", action="store_true", help="Also train on prompt tokens")
    p.add_argument(
        "--gradient_checkpointing",
        choices=["auto", "true", "false"],
        default="auto",
        help="Recompute activations in backward (auto: only when memory needs it)",
    )
    p.add_argument("--load_in_4bit", action="store_true", help="QLoRA: 4-bit base weights (CUDA only)")
    p.add_argument("--trust_remote_code", action="store_true", help="Allow the model's own Python code to run")
    p.add_argument("--model_cache_dir", default=None, help="Where loraq-tiny-chat is generated")
    return p


def config_from_args(args: argparse.Namespace) -> TrainingConfig:
    output = Path(args.output_dir).resolve()
    return TrainingConfig(
        base_model=args.base_model,
        trust_remote_code=args.trust_remote_code,
        model_cache_dir=args.model_cache_dir,
        train_path=args.train_path,
        eval_path=args.eval_path or None,
        output_dir=str(output),
        checkpoint_dir=str(output),
        progress_path=str(output / "progress.jsonl"),
        seed=args.seed,
        hyperparameters=Hyperparameters(
            n_epochs=args.num_train_epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            lora_r=args.lora_r,
            lora_alpha=args.lora_alpha,
            lora_dropout=args.lora_dropout,
            max_seq_length=args.max_seq_length,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            save_steps=args.save_steps,
            logging_steps=args.logging_steps,
            train_on_inputs=args.train_on_inputs,
            gradient_checkpointing={"true": True, "false": False}.get(args.gradient_checkpointing, "auto"),
            load_in_4bit=args.load_in_4bit,
        ),
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from training.run import configure_logging, describe_failure, train  # torch loads once the flags are good

    configure_logging()
    try:
        result = train(config_from_args(args))
    except Exception as exc:
        failure = describe_failure(exc)
        if failure["code"] == "training_error":
            raise  # ours: the traceback is what helps
        print(f"loraq train: {failure['code']}: {failure['message']}", file=sys.stderr)
        return 1
    print(f"adapter saved to {result.get('adapter_dir')} ({result['steps']} steps, loss {result['train_loss']:.4f})")
    return 0
