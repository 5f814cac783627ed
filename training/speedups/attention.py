"""`packed_sdpa`: attention for padding-free batches run once per example.

loraq trains without padding: the examples of a micro-batch are concatenated into one row, with position
ids restarting at each example and `cu_seq_lens_q` (from TRL's padding-free collator) marking where each
one starts. FlashAttention 2 reads those boundaries natively; transformers' own SDPA derives a
block-diagonal mask over the whole row from the position ids (training.hardware picks between them).
`loraq_packed_sdpa` instead runs PyTorch's scaled-dot-product attention once per example, causal within
it: no cross-example attention and no work spent on the masked-out blocks. Without packing boundaries
(generation, a single example) it is plain SDPA. In the last layer during a training step only the
queries the loss needs are computed (training.speedups.scored_rows).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from training.speedups.scored_rows import SCORED_ROWS_ATTRIBUTE

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
    rows = getattr(module, SCORED_ROWS_ATTRIBUTE, None)  # the last layer during a training step
    if query.shape[0] != 1 or attention_mask is not None or (cu_seq_lens_q is None and rows is None):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    bounds = cu_seq_lens_q.tolist() if cu_seq_lens_q is not None else [0, query.shape[2]]
    grouped = query.shape[1] != key.shape[1]
    dropout = dropout if module.training else 0.0
    if rows is not None:
        return _scored_query_attention(query, key, value, bounds, rows, scaling, dropout, grouped), None
    outputs = [
        F.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            is_causal=True,
            scale=scaling,
            dropout_p=dropout,
            enable_gqa=grouped,
        )
        for start, end in itertools.pairwise(bounds)
        if end > start
    ]
    output = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
    return output.transpose(1, 2).contiguous(), None


def _scored_query_attention(query, key, value, bounds, rows, scaling, dropout, grouped) -> torch.Tensor:
    """Attention of the queries at the flat positions `rows` only, each over its own example's keys up to
    itself; zeros at every other position (training.speedups.scored_rows: nothing reads them)."""
    rows = rows.to(query.device)
    edges = torch.searchsorted(rows, torch.tensor(bounds, device=rows.device)).tolist()
    parts = []
    for (start, end), (first, last) in zip(itertools.pairwise(bounds), itertools.pairwise(edges), strict=True):
        if last > first:
            positions = rows[first:last]
            visible = torch.arange(start, end, device=query.device) <= positions[:, None]  # causal, by position
            parts.append(
                F.scaled_dot_product_attention(
                    query.index_select(2, positions),
                    key[:, :, start:end],
                    value[:, :, start:end],
                    attn_mask=visible,
                    scale=scaling,
                    dropout_p=dropout,
                    enable_gqa=grouped,
                )
            )
    output = query.new_zeros(query.shape)
    if parts:
        output = output.index_copy(2, rows, torch.cat(parts, dim=2))
    return output.transpose(1, 2).contiguous()


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
