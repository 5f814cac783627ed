"""LoRA linear layers as one autograd function on CPUs, with the dropout drawn by dropped position.

PEFT computes a LoRA projection as `base(x) + lora_B(lora_A(dropout(x))) * scaling`: a base matmul,
`nn.Dropout` (one uniform draw per input element, the mask and the dropped input kept for the backward
pass), two small matmuls, a multiply and an add, each its own autograd node. With a small model on a CPU
most of that time is operator dispatch, seven projections per layer, forward and backward. FusedLoraLinear
computes the same function in one `torch.autograd.Function`:

    out = x @ W.T + bias + dropout(x) @ (A * scaling / (1 - p)).T @ B.T

as a base matmul and two small ones, with `B`'s product accumulated into the base output in place, and a
backward pass of five matmuls that writes x's gradient in place the same way. The LoRA scaling and the
dropout's 1 / (1 - p) go onto the small `A` matrix instead of the activations.

Dropout: with LoRA's usual rates (0.05 to 0.1) almost every element is kept, so only the dropped positions
are drawn: the gaps between drops in a Bernoulli(p) sequence are independent and geometric with parameter
p, so summing geometric gaps gives exactly the distribution of masks one Bernoulli draw per element gives,
from about p times as many random numbers. What the backward pass keeps is the dropped input (A's gradient
needs it) and the dropped positions (to mask x's gradient): no mask, and not x itself, which the frozen base
weight's product never needed; `nn.Dropout` under PEFT keeps both a mask and the dropped input.

Same function, same distribution of masks, same gradients for a given mask (tested against PEFT); the
module keeps PEFT's class (a subclass), parameters and state-dict keys, so the optimizer and the saved
adapter do not change. Anything else (evaluation, generation, disabled or merged adapters, several active
adapters, LoRA variants such as DoRA, mixed dtypes, autocast) runs PEFT's own forward. Draws come from
torch's generator like `nn.Dropout`, so checkpointed recomputation replays the same mask. Used on CPUs
(float32): on CUDA, PEFT's dropout is one fused kernel and counting dropped positions would wait on the
GPU once per projection.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import Linear as LoraLinear
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


def _dropped(flat: torch.Tensor, dropped: torch.Tensor | None) -> torch.Tensor:
    """The 2-D `flat` with the `dropped` flat positions zeroed (a copy), or `flat` itself without dropout."""
    if dropped is None:
        return flat
    return flat.reshape(-1).index_fill(0, dropped, 0).view(flat.shape)


class _LoraLinearFunction(torch.autograd.Function):
    """x @ weight.T + bias + dropout(x, p) @ (lora_a * scaling / (1 - p)).T @ lora_b.T for frozen weight and
    bias; keeps the dropped input, the dropped positions and the small A product (which B's gradient needs)."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float, p: float):
        flat = x.reshape(-1, x.shape[-1])
        dropped = dropped_positions(flat.numel(), p, x.device) if p > 0 else None
        factor = scaling / (1.0 - p)
        lora_a_scaled = lora_a * factor
        kept = _dropped(flat, dropped)
        down = kept @ lora_a_scaled.t()
        out = F.linear(flat, weight, bias).addmm_(down, lora_b.t())
        ctx.save_for_backward(kept, weight, lora_a_scaled, lora_b, down, dropped)
        ctx.factor, ctx.x_shape = factor, x.shape
        return out.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        kept, weight, lora_a_scaled, lora_b, down, dropped = ctx.saved_tensors
        grad = grad_out.reshape(-1, weight.shape[0])
        needs_x, needs_a, needs_b = ctx.needs_input_grad[0], ctx.needs_input_grad[3], ctx.needs_input_grad[4]
        grad_x = grad_a = grad_b = None
        grad_down = grad @ lora_b if needs_x or needs_a else None
        if needs_b:
            grad_b = grad.t() @ down
        if needs_a:
            grad_a = (grad_down.t() @ kept).mul_(ctx.factor)
        if needs_x:
            grad_x = grad_down @ lora_a_scaled
            if dropped is not None:
                grad_x.view(-1).index_fill_(0, dropped, 0)
            grad_x = grad_x.addmm_(grad, weight).view(ctx.x_shape)
        return grad_x, None, None, grad_a, grad_b, None, None


class FusedLoraLinear(LoraLinear):
    """PEFT's LoRA Linear whose training forward pass is _LoraLinearFunction (see above)."""

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        adapter = None if args or kwargs else self._fusable_adapter(x)
        if adapter is None:
            return super().forward(x, *args, **kwargs)
        dropout = self.lora_dropout[adapter]
        return _LoraLinearFunction.apply(
            x,
            self.base_layer.weight,
            self.base_layer.bias,
            self.lora_A[adapter].weight,
            self.lora_B[adapter].weight,
            self.scaling[adapter],
            dropout.p if isinstance(dropout, nn.Dropout) else 0.0,
        )

    def _fusable_adapter(self, x: torch.Tensor) -> str | None:
        """The one active plain-LoRA adapter, when this call is a training pass the fused function computes
        exactly; None sends the call to PEFT."""
        if not (self.training and torch.is_grad_enabled()) or self.disable_adapters or self.merged:
            return None
        if len(self.active_adapters) != 1 or torch.is_autocast_enabled(x.device.type):
            return None
        adapter = self.active_adapters[0]
        if adapter not in self.lora_A or adapter in self.lora_variant:
            return None
        base, lora_a, lora_b = self.base_layer, self.lora_A[adapter], self.lora_B[adapter]
        dropout = self.lora_dropout[adapter]
        if base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
            return None  # a trained base weight or bias needs gradients this function does not compute
        if type(lora_a) is not nn.Linear or type(lora_b) is not nn.Linear or lora_a.bias is not None:
            return None
        if lora_b.bias is not None or type(dropout) not in (nn.Dropout, nn.Identity):
            return None
        if not (x.dtype == base.weight.dtype == lora_a.weight.dtype == lora_b.weight.dtype):
            return None
        return adapter


def fuse_lora_layers(model: nn.Module) -> int:
    """Turn each PEFT LoRA Linear over a plain `nn.Linear` into a FusedLoraLinear (same module, parameters
    and state dict); returns how many were turned. Each call still checks that it can be fused (see
    FusedLoraLinear._fusable_adapter) and otherwise runs PEFT's forward."""
    fused = 0
    for module in model.modules():
        if type(module) is LoraLinear and type(module.base_layer) is nn.Linear:
            module.__class__ = FusedLoraLinear
            fused += 1
    return fused
