"""Progress records the training run appends to a JSONL file, and the stop file it obeys.

The worker's supervisor tails the file and turns records into job events and checkpoint rows; run
alone (`loraq train`), the same records go to the log. The file is the child's only channel out, so
the training program needs no database, broker or HTTP.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from transformers import TrainerCallback

from training import distributed
from training.checkpoints import fault_injection_point, mark_complete

logger = logging.getLogger("loraq.training")


class ProgressWriter:
    """Appends one JSON object per line and flushes it at once, so a reader never sees half a record."""

    def __init__(self, path: str | None):
        self.path = Path(path) if path else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record_type: str, **fields) -> None:
        record = {"type": record_type, "time": time.time(), **fields}
        logger.info("%s", describe(record))
        if self.path:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
                handle.flush()
                os.fsync(handle.fileno())


def describe(record: dict) -> str:
    """One readable log line for a progress record."""
    kind = record["type"]
    if kind == "metrics":
        rewards = (
            f"  reward margin {record['rewards_margin']:.3f}  accuracy {record['rewards_accuracy']:.2f}"
            if "rewards_margin" in record and "rewards_accuracy" in record
            else ""
        )
        return (
            f"step {record['step']}/{record['total_steps']}  loss {record['train_loss']:.4f}  "
            f"lr {record['learning_rate']:.3g}  epoch {record['epoch']:.2f}  {record['tokens_per_second']:.0f} tok/s"
            + rewards
        )
    details = {k: v for k, v in record.items() if k not in ("type", "time", "metrics")}
    return f"{kind}: " + ", ".join(f"{k}={v}" for k, v in details.items())


# DPO's figures as TRL logs them (the mean over the logging steps' pairs) -> their names in metrics records:
# the implicit rewards beta * log(policy / reference) of the preferred and non-preferred outputs, their
# margin, and the share of pairs where the preferred output's reward is the higher (preference accuracy).
REWARD_METRICS = {
    "rewards/chosen": "rewards_chosen",
    "rewards/rejected": "rewards_rejected",
    "rewards/margins": "rewards_margin",
    "rewards/accuracies": "rewards_accuracy",
}


class ProgressCallback(TrainerCallback):
    """Reports metrics per logging step and each checkpoint; stops at the next step once asked to."""

    def __init__(self, writer: ProgressWriter, stop_path: str | None, max_seconds: float | None = None):
        self.writer = writer
        self.stop_path = Path(stop_path) if stop_path else None
        self.max_seconds = max_seconds
        self.stopped_early = False
        self.stop_reason: str | None = None
        self.time_limited = False
        self._started = time.monotonic()
        self.last_metrics: dict = {}
        self._last_log = (time.monotonic(), 0)

    def on_train_begin(self, args, state, control, **kwargs):
        self._started = time.monotonic()
        self._last_log = (time.monotonic(), state.num_input_tokens_seen)
        self.writer.write("started", total_steps=state.max_steps, epochs=args.num_train_epochs)

    def on_step_end(self, args, state, control, **kwargs):
        # Rank 0 decides and every rank follows, so that all of them stop after the same step.
        stop_reason, time_limited = distributed.from_main_process(self._stop_wanted())
        if stop_reason is not None:
            # The supervisor writes why: `cancel` stops at once; `handoff` (the worker is shutting down)
            # and `deadline` (the run-time limit) save a checkpoint first, so the work is kept.
            self.stop_reason = stop_reason
            self.stopped_early = True
            control.should_training_stop = True
            control.should_save = self.stop_reason != "cancel"
        elif time_limited:
            self.time_limited = True
            control.should_training_stop = True

    def _stop_wanted(self) -> tuple[str | None, bool]:
        """(the stop file's reason, whether the time limit has passed), as this process sees them."""
        if self.stop_path is not None and self.stop_path.exists():
            return self.stop_path.read_text().strip() or "cancel", False
        return None, self.max_seconds is not None and time.monotonic() - self._started >= self.max_seconds

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" not in logs:
            return
        now, tokens = time.monotonic(), state.num_input_tokens_seen
        then, tokens_then = self._last_log
        self._last_log = (now, tokens)
        self.last_metrics = {
            "step": state.global_step,
            "total_steps": state.max_steps,
            "train_loss": logs["loss"],
            "learning_rate": logs.get("learning_rate"),
            "epoch": round(state.epoch or 0.0, 4),
            "tokens_seen": tokens,
            "tokens_per_second": round((tokens - tokens_then) / max(now - then, 1e-9), 2),
            "train_mean_token_accuracy": logs.get("mean_token_accuracy"),
            **{name: logs[key] for key, name in REWARD_METRICS.items() if key in logs},
        }
        self.writer.write("metrics", **self.last_metrics)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = metrics or {}
        self.last_metrics.update(
            {
                "valid_loss": metrics.get("eval_loss"),
                "valid_mean_token_accuracy": metrics.get("eval_mean_token_accuracy"),
                **{
                    f"valid_{name}": metrics[f"eval_{k}"]
                    for k, name in REWARD_METRICS.items()
                    if f"eval_{k}" in metrics
                },
            }
        )
        self.writer.write("evaluation", step=state.global_step, **{k: metrics[k] for k in sorted(metrics)})

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        fault_injection_point("checkpoint", state.global_step)
        distributed.wait_for_all()  # every rank's files (its RNG state) are written before the marker
        if not distributed.is_main_process():
            return
        mark_complete(folder, state.global_step)
        metrics = dict(self.last_metrics, step=state.global_step)
        self.writer.write("checkpoint", step=state.global_step, path=str(folder), metrics=metrics)
