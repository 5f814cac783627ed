"""The last layer computed only at scored positions (but for its keys and values) gives exactly the loss and
gradients of the full computation, packed or not, fused or not, with and without activation checkpointing,
and leaves the model untouched outside a step."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM, Qwen2MoeConfig, Qwen2MoeForCausalLM

from training.speedups.attention import PACKED_SDPA
from training.speedups.fused_lora import _LoraLinearFunction, fuse_lora_layers
from training.speedups.scored_rows import SCORED_ROWS_ATTRIBUTE, LastLayerAtScoredRows, scored_rows
from training.tiny_model import write_tiny_model

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return write_tiny_model(Path(tempfile.mkdtemp()) / "tiny")


def lora_model(tiny_dir: Path) -> nn.Module:
    torch.manual_seed(0)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=PROJECTIONS, task_type="CAUSAL_LM")
    base = AutoModelForCausalLM.from_pretrained(tiny_dir, attn_implementation=PACKED_SDPA)
    model = get_peft_model(base, config)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(param, std=0.05)  # PEFT starts B at zero, which would hide the adapter's path
    return model.train()


def two_examples(packed: bool = False) -> dict:
    """Two conversations in one row: prompts unsupervised, a reply at the end of each; `packed` marks where
    each starts, as TRL's padding-free collator does (attention then stays inside each)."""
    ids = torch.randint(3, 700, (1, 50))
    labels = torch.full_like(ids, -100)
    labels[0, 20:28] = ids[0, 20:28]  # first example: tokens 0-27, reply 20-27
    labels[0, 44:50] = ids[0, 44:50]  # second example: tokens 28-49, reply 44-49
    batch = {"input_ids": ids, "labels": labels}
    if packed:
        bounds = torch.tensor([0, 28, 50], dtype=torch.int32)
        batch["position_ids"] = torch.cat([torch.arange(28), torch.arange(22)])[None]
        batch.update(cu_seq_lens_q=bounds, cu_seq_lens_k=bounds, max_length_q=28, max_length_k=28)
    return batch


def loss_and_grads(model, batch, pruned: bool = False):
    model.zero_grad()
    with LastLayerAtScoredRows(model).during(batch) if pruned else contextlib.nullcontext():
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


def test_last_layer_parts_are_found_through_peft_and_skipped_for_experts(tiny_dir):
    model = lora_model(tiny_dir)
    last = model.base_model.model.model.layers[-1]
    parts = LastLayerAtScoredRows(model)
    assert parts.modules == [last.self_attn.q_proj, last.self_attn.o_proj, last.mlp]
    assert parts.attention is last.self_attn
    moe = Qwen2MoeForCausalLM(
        Qwen2MoeConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
        )
    )  # fmt: skip
    assert LastLayerAtScoredRows(moe).modules == [] and LastLayerAtScoredRows(moe).attention is None
    assert LastLayerAtScoredRows(nn.Linear(2, 2)).modules == []


@pytest.mark.parametrize(("fused", "packed"), [(False, False), (True, False), (False, True), (True, True)])
def test_loss_and_gradients_are_those_of_the_full_layer(tiny_dir, fused, packed):
    batch = two_examples(packed)
    model = lora_model(tiny_dir)
    if fused:
        fuse_lora_layers(model)
    parts = LastLayerAtScoredRows(model)
    q_proj, o_proj, mlp = parts.modules
    watched = {id(q_proj.base_layer.weight): "q", id(o_proj.base_layer.weight): "o"}
    watched[id(mlp.gate_proj.base_layer.weight)] = "mlp"
    seen = []

    def record(module, args):
        seen.append((watched[id(module.weight)], args[0].numel() // args[0].shape[-1]))

    def record_fused(x, weight, *rest):
        if id(weight) in watched:
            seen.append((watched[id(weight)], x.numel() // x.shape[-1]))
        return linear(x, weight, *rest)

    def record_attention(query, *args, **kwargs):
        seen.append(("attention", query.shape[2]))
        return attention(query, *args, **kwargs)

    linear, attention = _LoraLinearFunction.apply, nn.functional.scaled_dot_product_attention
    hooks = [m.base_layer.register_forward_pre_hook(record) for m in (q_proj, o_proj, mlp.gate_proj)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_LoraLinearFunction, "apply", record_fused)
        patch.setattr(nn.functional, "scaled_dot_product_attention", record_attention)
        full_loss, full_grads = loss_and_grads(model, batch)
        full = seen[:]
        seen.clear()
        loss, grads = loss_and_grads(model, batch, pruned=True)
    for hook in hooks:
        hook.remove()
    last_layer = 5 if packed else 4  # q, one attention call per example, o, the MLP
    queries = [("attention", 28), ("attention", 22)] if packed else [("attention", 50)]
    assert full[-last_layer:] == [("q", 50), *queries, ("o", 50), ("mlp", 50)], full
    queries = [("attention", 8), ("attention", 6)] if packed else [("attention", 14)]
    assert seen[-last_layer:] == [("q", 14), *queries, ("o", 14), ("mlp", 14)], seen
    torch.testing.assert_close(loss, full_loss)
    assert grads.keys() == full_grads.keys()
    for name, grad in full_grads.items():
        torch.testing.assert_close(grads[name], grad, msg=name)
    last = [g for n, g in grads.items() if "layers.3." in n and any(k in n for k in ("mlp", "q_proj", "o_proj"))]
    assert len(last) == 2 * (2 + 3) and all(g.abs().sum() > 0 for g in last), "the last layer still learns"
    assert not any("forward" in vars(m) for m in parts.modules), "the model is untouched after the step"
    assert not hasattr(parts.attention, SCORED_ROWS_ATTRIBUTE)


def test_a_forward_set_on_the_instance_is_put_back(tiny_dir):
    model = lora_model(tiny_dir)
    parts = LastLayerAtScoredRows(model)
    mlp = parts.modules[-1]
    kernel = mlp.forward
    mlp.forward = kernel  # as a kernel library might install one
    with parts.during(two_examples()):
        assert mlp.forward is not kernel
    assert vars(mlp)["forward"] is kernel


def test_checkpointed_recomputation_runs_pruned_too(tiny_dir):
    batch = two_examples(packed=True)
    model = lora_model(tiny_dir)
    full_loss, full_grads = loss_and_grads(model, batch)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    loss, grads = loss_and_grads(model, batch, pruned=True)
    torch.testing.assert_close(loss, full_loss)
    for name, grad in full_grads.items():
        torch.testing.assert_close(grads[name], grad, msg=name)
