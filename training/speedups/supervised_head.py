"""Score only the supervised positions in TRL's fused LM head, on every device.

TRL 1.x's SFTTrainer projects the hidden states through the LM head in vocabulary tiles
(`fused_lm_head`), never building the full logits. On CUDA and XPU it scores only the positions whose
next-token label is set; everywhere else it scores every position and masks afterwards, so that
compiling backends (Neuron) see the same tile shapes on every batch. loraq trains eagerly, and with
assistant-only loss most positions are prompt: on a CPU, the LM head, its softmax and the entropy and
accuracy metrics on positions whose loss is zero were about a tenth of every training step. The loss,
gradients and metrics are the same either way (tested).
"""

from __future__ import annotations

import logging

logger = logging.getLogger("loraq.training")

EAGER_DEVICES = ("cpu", "mps")


def score_supervised_positions_only() -> bool:
    """Make TRL's fused LM head compact on eager devices too; False if this TRL has no such switch."""
    import trl.trainer.utils as trl_utils

    compact_on = getattr(trl_utils, "_use_triton", None)
    if compact_on is None:
        logger.warning("this TRL version scores every position in the LM head; training is slower, not wrong")
        return False
    if getattr(compact_on, "loraq_compact", False):
        return True

    def compact(device) -> bool:
        return device.type in EAGER_DEVICES or compact_on(device)

    compact.loraq_compact = True
    trl_utils._use_triton = compact  # read in trl.trainer.utils only to choose compact scoring
    return True
