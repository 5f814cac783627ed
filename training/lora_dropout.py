"""LoRA dropout fused into the adapter's down-projection, sampled by dropped position.

PEFT computes `B(A(dropout(x)))` with `nn.Dropout`: one uniform draw per input element, and two
input-sized tensors kept for the backward pass (the mask, and the dropped input that A's gradient
needs), for each of the seven projections of every layer. With LoRA's usual rates (0.05 to 0.1) almost
every element is kept, so this module draws only where the dropped elements are: the gaps between them
in a Bernoulli(p) sequence are independent and geometric with parameter p, so summing geometric gaps
gives exactly the same distribution of masks as one Bernoulli draw per element, from about p times as
many random numbers. The backward pass rebuilds the dropped input from x and the dropped positions: x is
kept as is, one tensor shared by every projection that reads it (q, k and v read the same one), so no
mask or dropped copy is kept per projection.

Same distribution, same scaling (kept elements are divided by 1 - p), same gradients; checkpointed
recomputation replays it, since it draws from torch's generator like `nn.Dropout`. Used on CPUs (float32
training), where PEFT's dropout was a fifth of the tiny model's training step; on CUDA, `nn.Dropout` is
one fused kernel, while counting dropped positions would wait on the GPU once per projection, so PEFT's
dropout stays there.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def dropped_positions(count: int, p: float, device: torch.device) -> torch.Tensor:
    """Flat indices, in increasing order, of the elements a Bernoulli(p) dropout mask of `count` elements
    drops: running sums of geometric(p) gaps, each floor(log(1 - U) / log(1 - p)) + 1 for U uniform in [0, 1)."""
    mean = count * p
    draws = int(mean + 6 * math.sqrt(mean) + 16)  # almost always enough; topped up below otherwise
    per_log = 1.0 / math.log1p(-p)

    def gap_ends() -> torch.Tensor:
        uniform = torch.rand(draws, dtype=torch.float64, device=device)
        return uniform.neg_().log1p_().mul_(per_log).floor_().add_(1).cumsum_(0)

    ends = gap_ends()
    while float(ends[-1]) < count:
        ends = torch.cat([ends, gap_ends().add_(ends[-1])])
    inside = int(torch.searchsorted(ends, float(count), right=True))
    return ends[:inside].long().sub_(1)


def _zeroed(values: torch.Tensor, dropped: torch.Tensor) -> torch.Tensor:
    """A copy of the 2-D `values` with the `dropped` flat positions zeroed."""
    return values.reshape(-1).index_fill(0, dropped, 0).view(values.shape)


class _DroppedProjection(torch.autograd.Function):
    """dropout(x, p) @ weight.T, keeping x and the dropped positions instead of a mask and a dropped copy.
    The 1 / (1 - p) scaling is applied to the small weight (and its gradient), not to the activations."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, p: float) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        dropped = dropped_positions(flat.numel(), p, x.device)
        ctx.save_for_backward(x, weight, dropped)
        ctx.scale = 1.0 / (1.0 - p)
        out = _zeroed(flat, dropped) @ (weight * ctx.scale).t()
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, weight, dropped = ctx.saved_tensors
        grad = grad_out.reshape(-1, weight.shape[0])
        grad_x = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_x = grad @ (weight * ctx.scale)
            grad_x.view(-1).index_fill_(0, dropped, 0)
            grad_x = grad_x.view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_weight = (grad.t() @ _zeroed(x.reshape(-1, x.shape[-1]), dropped)).mul_(ctx.scale)
        return grad_x, grad_weight, None


class DroppedLinear(nn.Linear):
    """A LoRA `A` projection that applies the adapter's dropout itself while training (see above)."""

    def __init__(self, linear: nn.Linear, p: float):
        nn.Module.__init__(self)  # not nn.Linear's: it would allocate and initialise a weight of its own
        self.in_features, self.out_features, self.p = linear.in_features, linear.out_features, p
        self.weight = linear.weight  # the same parameter: optimizer, state dict and saved adapter are unchanged
        self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not torch.is_grad_enabled():
            return super().forward(x)
        return _DroppedProjection.apply(x, self.weight, self.p)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dropout={self.p}"


def fuse_lora_dropout(model: nn.Module) -> int:
    """Replace each plain LoRA linear adapter's `lora_dropout` + `lora_A` pair by a DroppedLinear; returns
    how many were replaced. Variants (DoRA and the like), biased or non-Linear adapters are left as PEFT
    built them."""
    from peft.tuners.lora.layer import Linear as LoraLinear

    fused = 0
    for module in model.modules():
        if not isinstance(module, LoraLinear):
            continue
        for name, dropout in module.lora_dropout.items():
            down = module.lora_A[name]
            if (
                type(dropout) is nn.Dropout
                and 0 < dropout.p < 1
                and type(down) is nn.Linear
                and down.bias is None
                and name not in module.lora_variant
            ):
                replacement = DroppedLinear(down, dropout.p)
                replacement.train(down.training)
                module.lora_A[name] = replacement
                module.lora_dropout[name] = nn.Identity()
                fused += 1
    return fused
