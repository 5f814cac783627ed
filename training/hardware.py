"""What the worker's hardware decides: precision, attention, 4-bit base weights, activation checkpointing.

- Precision: bf16 on a GPU that has it, fp16 on an older GPU, float32 on a CPU.
- Attention for padding-free batches: FlashAttention 2 on a GPU that has the `flash-attn` package, which
  reads the examples' boundaries natively; transformers' SDPA everywhere else, which keeps each example to
  itself with a block-diagonal mask derived from the position ids (the `packed_sdpa` speedup runs it per
  example instead, training.speedups).
- 4-bit base weights (QLoRA, NF4 through bitsandbytes) only on CUDA; anywhere else the job fails with a
  reason instead of quietly training something else.
- Activation checkpointing trades a second forward pass for memory. TRL 1.x turns it on by default; loraq
  turns it on only when the estimated activations of the largest micro-batch would take more than half of
  the memory left after loading the model (or when the job asks for it).
"""

from __future__ import annotations

import importlib.util
import logging
import os

import torch

logger = logging.getLogger("loraq.training")

# Saved activations per token per decoder layer, in elements, for LoRA on every projection without
# checkpointing (norm inputs, q/k/v/o, the dropped-out LoRA inputs, the MLP's gate/up/act/product...).
# Measured on the tiny model (~41 x hidden); the formula rounds up for wide MLPs.
ACTIVATION_ELEMENTS_PER_HIDDEN = 34
ACTIVATION_ELEMENTS_PER_INTERMEDIATE = 5
CHECKPOINTING_MEMORY_SHARE = 0.5


class HardwareError(RuntimeError):
    """The job asks for something this worker's hardware or software cannot do."""


def pick_precision() -> dict:
    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return {"dtype": torch.bfloat16, "bf16": True, "fp16": False, "optim": "adamw_torch_fused"}
        return {"dtype": torch.float16, "bf16": False, "fp16": True, "optim": "adamw_torch_fused"}
    return {"dtype": torch.float32, "bf16": False, "fp16": False, "optim": "adamw_torch_fused"}  # CPU kernel too


def quantization_config(load_in_4bit: bool, dtype: torch.dtype):
    """NF4 base weights with double quantisation, computing in the training dtype; None when not asked."""
    if not load_in_4bit:
        return None
    if not torch.cuda.is_available():
        raise HardwareError(
            "hyperparameters.load_in_4bit needs a worker with an NVIDIA GPU (bitsandbytes 4-bit kernels run on "
            "CUDA); this worker has none. Submit without load_in_4bit, or route the job to a GPU queue."
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise HardwareError(
            "hyperparameters.load_in_4bit needs the bitsandbytes package on the worker; install loraq[gpu]."
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def pick_attention_implementation(cuda: bool) -> str:
    """FlashAttention 2 on a GPU that has the package; transformers' SDPA everywhere else."""
    if cuda and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def activation_bytes(model_config, tokens: int, dtype: torch.dtype) -> int:
    """Estimated activations saved for backward by one micro-batch of `tokens` tokens."""
    text = model_config.get_text_config()
    hidden = text.hidden_size
    intermediate = getattr(text, "intermediate_size", None) or 4 * hidden
    per_layer = ACTIVATION_ELEMENTS_PER_HIDDEN * hidden + ACTIVATION_ELEMENTS_PER_INTERMEDIATE * intermediate
    return tokens * text.num_hidden_layers * per_layer * dtype.itemsize


def available_memory_bytes() -> int:
    """Free memory on the training device: the GPU's, or the machine's available RAM."""
    if torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def use_gradient_checkpointing(requested, model, tokens: int, dtype: torch.dtype) -> bool:
    """`requested` is True, False or "auto" (on only when activations would crowd the device)."""
    if requested != "auto":
        return bool(requested)
    needed, free = activation_bytes(model.config, tokens, dtype), available_memory_bytes()
    if torch.cuda.is_available():  # weights still on the CPU will move to the GPU before training
        free -= sum(p.numel() * p.element_size() for p in model.parameters() if p.device.type != "cuda")
    decision = needed > CHECKPOINTING_MEMORY_SHARE * free
    logger.info(
        "activation checkpointing %s: ~%.1f GiB of activations per micro-batch of %d tokens, %.1f GiB free",
        "on" if decision else "off",
        needed / 2**30,
        tokens,
        free / 2**30,
    )
    return decision
