"""Padding-free optimizer steps, split into micro-batches by a token budget.

The seed recipe's optimizer step is `batch_size x gradient_accumulation_steps` examples, each forward pass
one padded batch of `batch_size`. loraq keeps the step (same examples per step, same loss: the sum over
supervised tokens divided by the step's supervised-token count) but feeds it differently: the step's
examples are concatenated without padding (TRL's padding-free collator; attention stays inside each
example: FlashAttention 2 or SDPA, see training.hardware) and cut, at example boundaries, into micro-batches of at most
`token_budget` tokens. The budget is what one padded forward pass of the unpacked recipe holds at its
largest (`batch_size` times the longest example), so activation memory does not grow, while short
examples share a forward pass instead of each paying for one.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import torch
from trl import SFTTrainer

from training.distributed import largest

ROW_KEYS = ("input_ids", "labels", "position_ids", "seq_idx", "shift_labels")
SPAN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k")
LENGTH_KEYS = ("max_length_q", "max_length_k")


def token_budget(lengths: Sequence[int] | np.ndarray, batch_size: int) -> int:
    """Tokens one micro-batch may hold: a padded batch of the longest examples."""
    return batch_size * (int(np.max(lengths)) if len(lengths) else 1)


def split_packed_batch(batch: dict[str, Any], budget: int) -> list[dict[str, Any]]:
    """Cut one padding-free batch (a single row of concatenated examples) into rows of <= `budget` tokens.

    An example is never split; one longer than the budget gets a micro-batch of its own.
    """
    bounds = [int(b) for b in batch["cu_seq_lens_q"].tolist()]
    if bounds[-1] <= budget:
        return [batch]
    groups, start = [], 0
    for index in range(1, len(bounds)):
        if bounds[index] - bounds[start] > budget and index - 1 > start:
            groups.append((start, index - 1))
            start = index - 1
    groups.append((start, len(bounds) - 1))
    return [_slice(batch, bounds[first : last + 1]) for first, last in groups]


def _slice(batch: dict[str, Any], bounds: list[int]) -> dict[str, Any]:
    begin, end = bounds[0], bounds[-1]
    part: dict[str, Any] = {}
    for key, value in batch.items():
        if key in ROW_KEYS:
            part[key] = value[:, begin:end]
        elif key in SPAN_KEYS:
            part[key] = torch.tensor([b - begin for b in bounds], dtype=value.dtype, device=value.device)
        elif key in LENGTH_KEYS:
            part[key] = max(right - left for left, right in itertools.pairwise(bounds))
        else:
            part[key] = value
    if "seq_idx" in part:
        part["seq_idx"] = part["seq_idx"] - part["seq_idx"][:, :1]
    return part


class PackedSFTTrainer(SFTTrainer):
    """SFTTrainer whose training step is one optimizer step's examples, run as token-budgeted micro-batches.

    `num_items_in_batch` (the step's supervised tokens) normalises every micro-batch's loss, so the
    gradients add up to exactly the step's token-mean loss, as with gradient accumulation. Speed tricks
    (training.speedups) that act per step set `around_step` (entered once per optimizer step) and
    `around_micro_batch` (around each micro-batch's forward and backward passes); by default both do nothing.
    """

    def __init__(self, *args, token_budget: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.token_budget = token_budget
        self.around_step: Callable[[torch.nn.Module], AbstractContextManager] = _nothing
        self.around_micro_batch: Callable[[dict[str, Any]], AbstractContextManager] = _nothing
        self.speedups: frozenset[str] = frozenset()  # those applied (training.speedups.apply_speedups)
        self.last_layer: Any = None  # the scored_rows speedup's LastLayerAtScoredRows, when applied

    def training_step(self, model, inputs, num_items_in_batch=None):
        packed = "cu_seq_lens_q" in inputs
        micro_batches = split_packed_batch(inputs, self.token_budget) if packed else [inputs]
        # With several processes every rank must run as many forward and backward passes per step (TRL
        # gathers metrics in each, and gradients are reduced in the last): a rank with fewer micro-batches
        # than the busiest repeats its last one with no weight in the loss.
        passes = largest(len(micro_batches), self.args.device)
        normalisers = [num_items_in_batch] * len(micro_batches) + [_NO_WEIGHT] * (passes - len(micro_batches))
        micro_batches += [micro_batches[-1]] * (passes - len(micro_batches))
        total = None
        with self.around_step(model):
            for index, (micro_batch, normaliser) in enumerate(zip(micro_batches, normalisers, strict=True)):
                # Gradients are reduced across ranks once per step, with the last micro-batch's backward pass.
                sync = contextlib.nullcontext() if index == passes - 1 else self.accelerator.no_sync(model)
                with sync, self.around_micro_batch(micro_batch):
                    loss = super().training_step(model, micro_batch, _on(normaliser, num_items_in_batch))
                total = loss if total is None else total + loss
        return total


# A padding pass's loss normaliser: its summed loss divided by infinity weighs nothing, nor do its gradients.
_NO_WEIGHT = float("inf")


def _on(normaliser: Any, like: Any) -> Any:
    """The normaliser as the trainer passes it (a tensor on the device, when the step's count is one)."""
    if normaliser is _NO_WEIGHT and torch.is_tensor(like):
        return torch.full_like(like, _NO_WEIGHT, dtype=torch.float32)
    return normaliser


def _nothing(_: Any) -> AbstractContextManager:
    return contextlib.nullcontext()
