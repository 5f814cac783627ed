"""loraq's speed tricks, each one opt-in, installed by one call: `apply_speedups(trainer, enabled)`.

Without them a run is plain TRL + PEFT on loraq's padding-free, token-budgeted micro-batches
(training.packing), with FlashAttention 2 where installed and transformers' SDPA otherwise
(training.hardware), and TRL's own loss: its default `loss_type="nll"` already projects through the LM
head in chunks without building the full logits (TRL 1.x offers no other memory-saving loss to switch on;
`chunked_nll` is a deprecated alias of `nll`, and Liger kernels are a separate, optional package). Each
trick gives the plain computation's results (tested); its gain, as measured so far, all on the 2-core CPU
of bench/seed_vs_loraq.py (the tiny model; README, "Performance"):

- fused_lora: each LoRA projection as one autograd function, its dropout drawn by dropped position
  (fused_lora.py). Not measured alone: with scored_rows and fused AdamW it took loraq from about 1.9x to
  2.4x the seed recipe's tokens per second. Built for float32 on CPUs.
- supervised_head: TRL's chunked LM head scores only supervised positions on CPUs too (supervised_head.py);
  scoring the others was about a tenth of a CPU step. TRL already does this on CUDA: no effect there.
- scored_rows: the last decoder layer runs only at the positions the loss scores, but for its keys and
  values (scored_rows.py): most of one layer in four on the tiny model, a few per cent of a 28-layer one;
  cutting its attention queries too moved the benchmark from 2.18x to about 2.4x (timing noise ~20 %).
- packed_sdpa: SDPA run once per example instead of over the whole row with a block-diagonal mask
  (attention.py); skipped where FlashAttention 2 is loaded. Not measured alone.
- train_mode_once: `model.train()` once per optimizer step instead of per micro-batch (train_mode.py): a
  few per cent of a step on small models.
- hub_kernels: transformers' Hub kernels (`use_kernels`, the `kernels` package); no kernel applies to these
  models on a CPU, so no effect measured there.

All together against none, on that CPU: 2.47x against 1.82x the seed recipe's tokens per second
(`bench/seed_vs_loraq.py --examples 8 --epochs 1 --repeats 1 --speedups none all`: one short round, noisy).

None is yet measured on a GPU (bench/gpu.sh takes `--speedups`). So `auto`, the default, enables all of
them on a CPU (where the figures above come from) and none on CUDA, where each is opt-in
(TrainingConfig.speedups; LORAQ_TRAINING_SPEEDUPS on a worker, --speedups on the command line).

With several processes (training.distributed) every trick is kept: each acts within one process's forward
and backward passes, and a two-process run with all of them learns what one process learns
(tests/training/test_distributed.py, on the CPU, where `auto` enables them all).

This module imports no torch (the worker's config and the command line's flags read the names); the tricks
are imported when applied.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Set
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from training.packing import PackedSFTTrainer

logger = logging.getLogger("loraq.training")

SPEEDUPS = ("fused_lora", "supervised_head", "scored_rows", "packed_sdpa", "train_mode_once", "hub_kernels")
KEYWORDS = ("auto", "all", "none")

SpeedupsSetting = Literal["auto", "all", "none"] | list[str]


def parse_speedups(value: object) -> object:
    """A setting as TrainingConfig stores it: `auto`, `all`, `none`, or a list of known names; a string of
    comma-separated names, or a one-keyword list from the command line, is read as such. Anything else is
    returned for pydantic to refuse."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        return value
    names = [name.strip() for item in value for name in item.split(",") if name.strip()]
    if len(names) == 1 and names[0] in KEYWORDS:
        return names[0]
    return known_names(names)


def known_names(names: list[str]) -> list[str]:
    """`names` without repeats; an unknown one is a ValueError naming it and the known ones."""
    unknown = [name for name in names if name not in SPEEDUPS]
    if unknown:
        raise ValueError(
            f"unknown speedup {', '.join(map(repr, unknown))}: choose auto, all, none or names from "
            f"{', '.join(SPEEDUPS)}"
        )
    return list(dict.fromkeys(names))


def resolve_speedups(setting: SpeedupsSetting, cuda: bool | None = None) -> frozenset[str]:
    """The tricks a setting enables: `auto` is all of them on a CPU and none on CUDA (`cuda`: whether the run
    trains on a CUDA device; by default, whether torch sees one)."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if setting == "auto":
        return frozenset() if cuda else frozenset(SPEEDUPS)
    if setting == "all":
        return frozenset(SPEEDUPS)
    if setting == "none":
        return frozenset()
    return frozenset(known_names(list(setting)))


def apply_speedups(trainer: PackedSFTTrainer, enabled: Set[str]) -> frozenset[str]:
    """Install the `enabled` tricks on a freshly built trainer (its model already wrapped by PEFT); returns
    those applied (a trick that does not apply here is logged and skipped)."""
    from training.speedups.attention import PACKED_SDPA
    from training.speedups.fused_lora import fuse_lora_layers
    from training.speedups.scored_rows import LastLayerAtScoredRows
    from training.speedups.supervised_head import score_supervised_positions_only
    from training.speedups.train_mode import train_mode_set_once

    model = trainer.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    applied = set()
    if "hub_kernels" in enabled and _hub_kernels(base):
        applied.add("hub_kernels")
    if "packed_sdpa" in enabled:
        if base.config._attn_implementation == "flash_attention_2":
            logger.info("packed_sdpa skipped: FlashAttention 2 already attends per example")
        else:
            base.set_attn_implementation(PACKED_SDPA)
            applied.add("packed_sdpa")
    if "fused_lora" in enabled:
        fuse_lora_layers(model)
        applied.add("fused_lora")
    if "supervised_head" in enabled and score_supervised_positions_only():
        applied.add("supervised_head")
    if "scored_rows" in enabled:
        trainer.last_layer = LastLayerAtScoredRows(model)
        trainer.around_micro_batch = trainer.last_layer.during  # its forward and backward passes
        applied.add("scored_rows")
    if "train_mode_once" in enabled:
        trainer.around_step = train_mode_set_once
        applied.add("train_mode_once")
    trainer.speedups = frozenset(applied)
    logger.info("speedups: %s", ", ".join(sorted(applied)) or "none")
    return trainer.speedups


def _hub_kernels(base) -> bool:
    """Load transformers' Hub kernels into the model; a kernel missing from the local Hub cache (or the
    `kernels` package) must not fail the job."""
    if importlib.util.find_spec("kernels") is None:
        logger.warning("hub_kernels skipped: the `kernels` package is not installed")
        return False
    try:
        base.set_use_kernels(True)
    except Exception as exc:
        logger.warning("hub_kernels unavailable (%s); training without them", exc)
        return False
    return True
