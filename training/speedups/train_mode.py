"""`train_mode_once`: `model.train()` once per optimizer step instead of once per micro-batch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from training.speedups.shadowing import shadowed


@contextlib.contextmanager
def train_mode_set_once(model: torch.nn.Module) -> Iterator[None]:
    """Trainer.training_step calls `model.train()` for every micro-batch, walking every module of the model
    (a few per cent of a step on small models); within one optimizer step nothing leaves training mode, so
    it is done once here and is a no-op until the step's micro-batches are done."""
    model.train()
    with shadowed(model, "train", lambda mode=True: model):
        yield
