"""Padding-free optimizer steps, split into micro-batches by a token budget.

The seed recipe's optimizer step is `batch_size x gradient_accumulation_steps` examples, each forward pass
one padded batch of `batch_size`. loraq keeps the step (same examples per step, same loss: the sum over
supervised tokens divided by the step's supervised-token count) but feeds it differently: the step's
examples are concatenated without padding (TRL's padding-free collator; attention stays inside each
example, see training.attention) and cut, at example boundaries, into micro-batches of at most
`token_budget` tokens. The budget is what one padded forward pass of the unpacked recipe holds at its
largest (`batch_size` times the longest example), so activation memory does not grow, while short
examples share a forward pass instead of each paying for one.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import torch
from trl import SFTTrainer

from training.fused_lora import fuse_lora_layers
from training.scored_rows import LastLayerAtScoredRows
from training.shadowing import shadowed
from training.supervised_head import score_supervised_positions_only

ROW_KEYS = ("input_ids", "labels", "position_ids", "seq_idx", "shift_labels")
SPAN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k")
LENGTH_KEYS = ("max_length_q", "max_length_k")


def token_budget(lengths: list[int], batch_size: int) -> int:
    """Tokens one micro-batch may hold: a padded batch of the longest examples."""
    return batch_size * max(lengths, default=1)


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
    gradients add up to exactly the step's token-mean loss, as with gradient accumulation. On a CPU, each
    LoRA projection runs as one autograd function with its dropout drawn by dropped position
    (training.fused_lora); everywhere, the LM head scores only supervised positions
    (training.supervised_head) and the last layer runs only there but for its keys and values
    (training.scored_rows): same results, less time and memory.
    """

    def __init__(self, *args, token_budget: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.token_budget = token_budget
        if self.args.device.type == "cpu":
            fuse_lora_layers(self.model)
        score_supervised_positions_only()
        self.last_layer = LastLayerAtScoredRows(self.model)

    def training_step(self, model, inputs, num_items_in_batch=None):
        packed = "cu_seq_lens_q" in inputs
        micro_batches = split_packed_batch(inputs, self.token_budget) if packed else [inputs]
        total = None
        with _train_mode_set_once(model):
            for micro_batch in micro_batches:
                with self.last_layer.during(micro_batch):  # its forward and backward passes
                    loss = super().training_step(model, micro_batch, num_items_in_batch)
                total = loss if total is None else total + loss
        return total


@contextlib.contextmanager
def _train_mode_set_once(model: torch.nn.Module):
    """Trainer.training_step calls `model.train()` for every micro-batch, walking every module of the model
    (a few per cent of a step on small models); within one optimizer step nothing leaves training mode, so
    it is done once here and is a no-op until the step's micro-batches are done."""
    model.train()
    with shadowed(model, "train", lambda mode=True: model):
        yield
