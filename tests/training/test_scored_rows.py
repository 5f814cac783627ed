"""The last layer's MLP, query and output projections computed only at scored positions give exactly the
loss and gradients of the full computation, with and without activation checkpointing, and leave the model
untouched outside a step."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM

from training.fused_lora import _LoraLinearFunction, fuse_lora_layers
from training.scored_rows import computed_at_rows, last_layer_row_modules, scored_rows
from training.tiny_model import write_tiny_model

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return write_tiny_model(Path(tempfile.mkdtemp()) / "tiny")


def lora_model(tiny_dir: Path) -> nn.Module:
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=PROJECTIONS, task_type="CAUSAL_LM")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), config)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(param, std=0.05)  # PEFT starts B at zero, which would hide the adapter's path
    return model.train()


def two_examples() -> dict:
    """Two conversations packed in one row: prompts unsupervised, a reply at the end of each."""
    ids = torch.randint(3, 700, (1, 50))
    labels = torch.full_like(ids, -100)
    labels[0, 20:28] = ids[0, 20:28]  # first example: tokens 0-27, reply 20-27
    labels[0, 44:50] = ids[0, 44:50]  # second example: tokens 28-49, reply 44-49
    return {"input_ids": ids, "labels": labels}


def loss_and_grads(model, batch, rows=None):
    model.zero_grad()
    with computed_at_rows(last_layer_row_modules(model), rows):
        loss = model(**batch).loss
        loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_scored_rows_are_the_positions_before_supervised_tokens():
    batch = two_examples()
    assert scored_rows(batch).tolist() == [*range(19, 27), *range(43, 49)]
    shifted = torch.full((1, 6), -100)
    shifted[0, 2] = 5
    assert scored_rows({"shift_labels": shifted, "labels": batch["labels"]}).tolist() == [2]
    assert scored_rows({"input_ids": batch["input_ids"]}) is None


def test_last_layer_modules_are_found_through_peft_and_skipped_for_experts(tiny_dir):
    model = lora_model(tiny_dir)
    last = model.base_model.model.model.layers[-1]
    assert last_layer_row_modules(model) == [last.self_attn.q_proj, last.self_attn.o_proj, last.mlp]
    moe = Qwen2MoeForCausalLM(
        Qwen2MoeConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
        )
    )  # fmt: skip
    assert last_layer_row_modules(moe) == []
    assert last_layer_row_modules(nn.Linear(2, 2)) == []


@pytest.mark.parametrize("fused", [False, True])
def test_loss_and_gradients_are_those_of_the_full_mlp(tiny_dir, fused):
    batch = two_examples()
    model = lora_model(tiny_dir)
    if fused:
        fuse_lora_layers(model)
    modules = last_layer_row_modules(model)
    q_proj, o_proj, mlp = modules
    watched = {
        id(q_proj.base_layer.weight): "q",
        id(o_proj.base_layer.weight): "o",
        id(mlp.gate_proj.base_layer.weight): "mlp",
    }
    seen = []

    def record(module, args):
        seen.append((watched[id(module.weight)], args[0].numel() // args[0].shape[-1]))

    def record_fused(x, weight, *rest):
        if id(weight) in watched:
            seen.append((watched[id(weight)], x.numel() // x.shape[-1]))
        return original(x, weight, *rest)

    original = _LoraLinearFunction.apply
    hooks = [m.base_layer.register_forward_pre_hook(record) for m in (q_proj, o_proj, mlp.gate_proj)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_LoraLinearFunction, "apply", record_fused)
        full_loss, full_grads = loss_and_grads(model, batch)
        loss, grads = loss_and_grads(model, batch, scored_rows(batch))
    for hook in hooks:
        hook.remove()
    full, pruned = seen[:3], seen[3:]
    assert full == [("q", 50), ("o", 50), ("mlp", 50)], seen
    assert pruned == [("q", 14), ("o", 14), ("mlp", 14)], "pruned: q, o and the MLP at the 14 scored positions"
    torch.testing.assert_close(loss, full_loss)
    assert grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(grad, full_grads[name], msg=name)
        torch.testing.assert_close(grads[name], grad, msg=name)
    last_layer = [g for n, g in grads.items() if "layers.3." in n and any(k in n for k in ("mlp", "q_proj", "o_proj"))]
    assert len(last_layer) == 2 * (2 + 3) and all(g.abs().sum() > 0 for g in last_layer), "still learning"
    assert not any("forward" in vars(m) for m in modules), "the model is untouched after the step"


def test_checkpointed_recomputation_runs_pruned_too(tiny_dir):
    batch = two_examples()
    model = lora_model(tiny_dir)
    full_loss, full_grads = loss_and_grads(model, batch)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    loss, grads = loss_and_grads(model, batch, scored_rows(batch))
    torch.testing.assert_close(loss, full_loss)
    for name, grad in full_grads.items():
        torch.testing.assert_close(grads[name], grad, msg=name)
