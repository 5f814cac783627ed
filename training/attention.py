"""Attention for padding-free batches: each example in a packed row attends only to itself.

loraq trains without padding: the examples of a micro-batch are concatenated into one row, with position
ids restarting at each example and `cu_seq_lens_q` (from TRL's padding-free collator) marking where each
one starts. FlashAttention 2 reads those boundaries natively. Everywhere else (a CPU, a GPU without the
flash-attn package) `loraq_packed_sdpa` runs PyTorch's scaled-dot-product attention once per example,
causal within it: no cross-example attention and, unlike a block-diagonal mask over the whole row, no
work spent on the masked-out blocks. Without packing boundaries (generation, a single example) it is
plain SDPA.
"""

from __future__ import annotations

import importlib.util
import itertools

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

PACKED_SDPA = "loraq_packed_sdpa"


def packed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    cu_seq_lens_q: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query (1, heads, tokens, dim), key/value (1, kv_heads, tokens, dim) -> (1, tokens, heads, dim)."""
    if cu_seq_lens_q is None or query.shape[0] != 1 or attention_mask is not None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    bounds = cu_seq_lens_q.tolist()
    grouped = query.shape[1] != key.shape[1]
    outputs = [
        F.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            is_causal=True,
            scale=scaling,
            dropout_p=dropout if module.training else 0.0,
            enable_gqa=grouped,
        )
        for start, end in itertools.pairwise(bounds)
        if end > start
    ]
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)


def pick_attention_implementation(cuda: bool) -> str:
    """FlashAttention 2 on a GPU that has the package; per-example SDPA everywhere else."""
    if cuda and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return PACKED_SDPA
