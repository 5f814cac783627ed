"""The last decoder layer computed only at the positions the loss scores, except for its keys and values.

With assistant-only loss most positions of a conversation (system prompt, user turns) are not scored: the
LM head reads the last layer's output only where the next token is supervised (training.speedups.supervised_head
scores just those). Every earlier layer still matters at every position, since later positions attend to
their keys and values; in the last layer, only the keys and values do. Its MLP and attention output
projection write to the residual stream, which at a position goes only to the final norm and the head at
that same position; its queries and attention output at a position feed only that position. So while a
training step runs, the last layer's query projection, attention queries, output projection and MLP are
computed at the scored positions only and give zeros elsewhere, which nothing reads; keys and values are
computed everywhere. The loss and every gradient are exactly those of the full computation (tested). With
about one position in eight supervised, as in typical chat data, that removes most of the last layer's
work (about a fifth of a 4-layer model's, a few per cent of a 28-layer one's).

The attention part needs loraq's per-example SDPA (the `packed_sdpa` speedup, training.speedups.attention),
which reads the rows from the attention module; with another attention implementation the last layer
computes every query as usual. Only dense MLPs (a module named `...MLP` in a model without experts: Llama,
Qwen2, Mistral, Gemma and the like) are cut; a mixture-of-experts block would route a different set of
tokens and change its balancing loss, so such a model is left alone. Outside training steps (evaluation,
generation, saving) the model is untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from training.speedups.shadowing import shadowed

IGNORE_INDEX = -100
EXPERT_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
# Attribute on the last layer's attention module, read by training.speedups.attention, while a step runs.
SCORED_ROWS_ATTRIBUTE = "loraq_scored_rows"


def scored_rows(batch: dict) -> torch.Tensor | None:
    """Flat indices, ascending, of the positions whose next token is supervised (the ones the LM head scores)."""
    if batch.get("shift_labels") is not None:
        scored = batch["shift_labels"] != IGNORE_INDEX
    elif batch.get("labels") is not None:
        labels = batch["labels"]
        scored = torch.zeros_like(labels, dtype=torch.bool)
        scored[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    else:
        return None
    return scored.reshape(-1).nonzero().squeeze(1)


class LastLayerAtScoredRows:
    """The last decoder layer's parts of a (PEFT-wrapped) causal LM that can run at scored positions only:
    `modules` (its attention's q_proj and o_proj, and a dense MLP) and `attention` (for the queries)."""

    def __init__(self, model: nn.Module):
        self.modules: list[nn.Module] = []
        self.attention: nn.Module | None = None
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        config = getattr(base, "config", None)
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        if text_config is None or any(getattr(text_config, field, None) for field in EXPERT_FIELDS):
            return
        decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
        layers = getattr(decoder, "layers", None)
        if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
            return
        attention, mlp = getattr(layers[-1], "self_attn", None), getattr(layers[-1], "mlp", None)
        if isinstance(attention, nn.Module):
            self.attention = attention
            projections = (getattr(attention, "q_proj", None), getattr(attention, "o_proj", None))
            self.modules += [m for m in projections if isinstance(m, nn.Module)]
        if isinstance(mlp, nn.Module) and type(mlp).__name__.endswith("MLP"):
            self.modules.append(mlp)

    @contextlib.contextmanager
    def during(self, batch: dict) -> Iterator[None]:
        """While inside (a training step's forward and backward passes, including a checkpointed
        recomputation), the parts compute only the scored positions of `batch`."""
        rows = scored_rows(batch)
        if rows is None:
            yield
            return
        with contextlib.ExitStack() as stack:
            for module in self.modules:
                stack.enter_context(_at_rows(module, rows))
            if self.attention is not None:
                stack.enter_context(shadowed(self.attention, SCORED_ROWS_ATTRIBUTE, rows))
            yield


def _at_rows(module: nn.Module, rows: torch.Tensor) -> contextlib.AbstractContextManager:
    """`module` computes only the flat positions `rows` of its input and returns zeros elsewhere."""
    full_forward = module.forward

    def forward(hidden_states: torch.Tensor) -> torch.Tensor:
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        at = rows.to(flat.device)
        part = full_forward(flat.index_select(0, at))
        out = part.new_zeros(flat.shape[0], part.shape[-1]).index_copy(0, at, part)
        return out.view(*hidden_states.shape[:-1], part.shape[-1])

    return shadowed(module, "forward", forward)  # a forward set on the instance before (a kernel's) comes back
