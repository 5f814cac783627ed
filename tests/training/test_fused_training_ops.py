"""The two shortcuts PackedSFTTrainer takes give what the plain computation gives: LoRA projections as one
autograd function with dropout drawn by dropped position (the same Bernoulli masks, the same outputs and
gradients as PEFT for a given mask, the same saved adapter, PEFT's own forward wherever the function does
not apply) and an LM head that scores only supervised positions (the same loss and metrics)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn
from transformers import AutoModelForCausalLM

from training.speedups.fused_lora import FusedLoraLinear, _LoraLinearFunction, dropped_positions, fuse_lora_layers
from training.speedups.supervised_head import score_supervised_positions_only
from training.tiny_model import write_tiny_model

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return write_tiny_model(Path(tempfile.mkdtemp()) / "tiny")


def lora_model(tiny_dir: Path, dropout: float):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules=PROJECTIONS, task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            nn.init.normal_(param, std=0.05)  # PEFT starts B at zero, which would hide the adapter's path
    return model


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_dropped_positions_are_a_bernoulli_mask(p):
    torch.manual_seed(1)
    count = 400_000
    positions = dropped_positions(count, p, torch.device("cpu"))
    assert positions.dtype == torch.int64
    assert bool((positions[1:] > positions[:-1]).all()) and int(positions[0]) >= 0 and int(positions[-1]) < count
    mask = torch.zeros(count)
    mask[positions] = 1
    sigma = (p * (1 - p) / count) ** 0.5
    assert abs(float(mask.mean()) - p) < 5 * sigma
    # Independent: a drop right after a drop is as likely as any drop, and so is one 7 elements later.
    for lag in (1, 7):
        after = float((mask[lag:] * mask[:-lag]).sum() / mask[:-lag].sum())
        assert abs(after - p) < 6 * (p * (1 - p) / float(mask.sum())) ** 0.5
    # Positions past the first batch of draws are covered too (the top-up loop).
    assert float(mask[-count // 10 :].mean()) == pytest.approx(p, abs=6 * (p * (1 - p) / (count // 10)) ** 0.5)


def _plain_lora(x, weight, bias, lora_a, lora_b, scaling, p, dropped):
    """PEFT's computation written out, with the dropout mask given by `dropped`."""
    keep = torch.ones(x.numel(), dtype=x.dtype)
    keep[dropped] = 0
    return x @ weight.t() + bias + ((x * keep.view_as(x) / (1 - p)) @ lora_a.t() @ lora_b.t()) * scaling


@pytest.mark.parametrize("p", [0.3, 0.0])
def test_fused_function_is_peft_lora_for_the_drawn_mask(p):
    torch.manual_seed(2)
    dtype = torch.float64
    x = torch.randn(2, 9, 12, dtype=dtype, requires_grad=True)
    weight, bias = torch.randn(5, 12, dtype=dtype), torch.randn(5, dtype=dtype)  # frozen
    lora_a = torch.randn(4, 12, dtype=dtype, requires_grad=True)
    lora_b = torch.randn(5, 4, dtype=dtype, requires_grad=True)
    scaling = 2.0
    state = torch.get_rng_state()
    out = _LoraLinearFunction.apply(x, weight, bias, lora_a, lora_b, scaling, p)
    grad = torch.randn_like(out)
    out.backward(grad)

    torch.set_rng_state(state)
    dropped = dropped_positions(x.numel(), p, x.device) if p else torch.empty(0, dtype=torch.long)
    leaves = [t.detach().clone().requires_grad_() for t in (x, lora_a, lora_b)]
    expected = _plain_lora(leaves[0], weight, bias, leaves[1], leaves[2], scaling, p, dropped)
    expected.backward(grad)
    torch.testing.assert_close(out, expected)
    for fused, plain in zip((x, lora_a, lora_b), leaves, strict=True):
        torch.testing.assert_close(fused.grad, plain.grad)

    def replayed(x, lora_a, lora_b):
        torch.set_rng_state(state)
        return _LoraLinearFunction.apply(x, weight, bias, lora_a, lora_b, scaling, p)

    assert torch.autograd.gradcheck(replayed, tuple(t.detach().requires_grad_() for t in (x, lora_a, lora_b)))


def _loss_and_grads(model, ids):
    model.zero_grad()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_fused_model_trains_and_saves_like_plain_lora(tiny_dir, tmp_path):
    ids = torch.randint(3, 700, (1, 40))
    plain, fused = lora_model(tiny_dir, 0.1), lora_model(tiny_dir, 0.1)
    keys = set(plain.state_dict())
    parameters = {name: id(param) for name, param in fused.named_parameters()}
    assert fuse_lora_layers(fused) == 4 * len(PROJECTIONS)
    assert fuse_lora_layers(fused) == 0  # already fused
    assert set(fused.state_dict()) == keys
    assert {name: id(param) for name, param in fused.named_parameters()} == parameters  # the optimizer's tensors
    assert all(isinstance(m, LoraLinear) for m in fused.modules() if isinstance(m, FusedLoraLinear))

    plain.eval(), fused.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(input_ids=ids).logits, plain(input_ids=ids).logits)
    fused.train()
    calls = []
    original = _LoraLinearFunction.apply
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_LoraLinearFunction, "apply", lambda *args: calls.append(args[6]) or original(*args))
        first, second = (fused(input_ids=ids, labels=ids).loss for _ in range(2))
    assert calls == [0.1] * (2 * 4 * len(PROJECTIONS)), "every projection of both passes ran fused"
    assert not torch.equal(first, second), "dropout is applied while training"
    second.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in fused.named_parameters() if "lora_A" in n)

    fused.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), tmp_path / "adapter").eval()
    fused.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, fused(input_ids=ids).logits)


def test_without_dropout_fused_training_equals_peft_exactly(tiny_dir):
    ids = torch.randint(3, 700, (1, 40))
    plain, fused = lora_model(tiny_dir, 0.0).train(), lora_model(tiny_dir, 0.0).train()
    assert fuse_lora_layers(fused) == 4 * len(PROJECTIONS)
    plain_loss, plain_grads = _loss_and_grads(plain, ids)
    fused_loss, fused_grads = _loss_and_grads(fused, ids)
    torch.testing.assert_close(fused_loss, plain_loss)
    assert fused_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, msg=name)


def test_checkpointed_recomputation_replays_the_same_dropout(tiny_dir):
    ids = torch.randint(3, 700, (1, 40))
    model = lora_model(tiny_dir, 0.1).train()
    fuse_lora_layers(model)
    torch.manual_seed(7)
    loss, grads = _loss_and_grads(model, ids)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    calls = []
    original = _LoraLinearFunction.forward
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_LoraLinearFunction, "forward", staticmethod(lambda *a: calls.append(1) or original(*a)))
        torch.manual_seed(7)
        checkpointed_loss, checkpointed_grads = _loss_and_grads(model, ids)
    assert len(calls) == 2 * 4 * len(PROJECTIONS), "each layer's forward ran again in the backward pass"
    torch.testing.assert_close(checkpointed_loss, loss)
    for name, grad in grads.items():
        torch.testing.assert_close(checkpointed_grads[name], grad, msg=name)


def test_calls_the_fused_function_cannot_compute_go_to_peft(tiny_dir):
    ids = torch.randint(3, 700, (1, 40))
    model = lora_model(tiny_dir, 0.1)
    fuse_lora_layers(model)
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    calls = []
    original = _LoraLinearFunction.apply
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_LoraLinearFunction, "apply", lambda *args: calls.append(1) or original(*args))
        model.train()
        with torch.no_grad():
            model(input_ids=ids)  # no gradients: PEFT's forward, its dropout still on
        with model.disable_adapter(), torch.no_grad():
            model.eval()
            torch.testing.assert_close(model(input_ids=ids).logits, base(input_ids=ids).logits)
        model.eval()
        model(input_ids=ids).logits.sum().backward()  # evaluation mode
        layer = model.base_model.model.model.layers[0].self_attn.q_proj
        layer.base_layer.weight.requires_grad_(True)  # a trained base weight
        model.train()
        model(input_ids=ids).logits.sum().backward()
    assert layer.base_layer.weight.grad is not None
    assert len(calls) == 4 * len(PROJECTIONS) - 1, "only the last training pass ran fused, q_proj of layer 0 not"


def test_lm_head_scores_only_supervised_positions_with_the_same_loss(tiny_dir, monkeypatch):
    from trl.trainer import utils as trl_utils

    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    ids = torch.randint(3, 700, (1, 60))
    labels = ids.clone()
    labels[:, :45] = -100  # a prompt of 45 tokens, 15 supervised
    scored = []
    original = trl_utils._ChunkedLogProbFunction.apply

    def spy(hidden, *args):
        scored.append(hidden.shape[0])
        return original(hidden, *args)

    monkeypatch.setattr(trl_utils._ChunkedLogProbFunction, "apply", spy)
    from trl.kernels.chunked_logprob import _use_triton as triton_only

    monkeypatch.setattr(trl_utils, "_use_triton", triton_only)  # TRL as shipped (a trainer may have patched it)
    with torch.no_grad():
        full = model(input_ids=ids, labels=labels, fused_lm_head=True)
        assert score_supervised_positions_only()
        assert score_supervised_positions_only()  # idempotent
        compact = model(input_ids=ids, labels=labels, fused_lm_head=True)
        logits = model(input_ids=ids).logits
    assert scored == [59, 15]
    expected = nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100)
    torch.testing.assert_close(compact.loss, expected)
    torch.testing.assert_close(compact.loss, full.loss)
    for field in ("log_probs", "entropy", "is_top1"):
        torch.testing.assert_close(getattr(compact, field), getattr(full, field))


def test_trainer_on_a_cpu_takes_the_shortcuts(tiny_dir, tmp_path):
    from trl.trainer import utils as trl_utils

    from loraq.job_spec import Hyperparameters
    from tests.facts import chat_rows, write_jsonl
    from training.config import TrainingConfig
    from training.progress import ProgressCallback, ProgressWriter
    from training.sft import build_trainer

    hp = Hyperparameters()
    assert hp.lora_dropout > 0
    config = TrainingConfig(
        base_model=str(tiny_dir),
        train_path=str(write_jsonl(tmp_path / "t.jsonl", chat_rows())),
        output_dir=str(tmp_path / "adapter"),
        checkpoint_dir=str(tmp_path / "ckpt"),
        hyperparameters=hp,
    )
    trainer = build_trainer(config, str(tiny_dir), ProgressCallback(ProgressWriter(None), None))
    fused = [m for m in trainer.model.modules() if isinstance(m, FusedLoraLinear)]
    assert len(fused) == 4 * len(hp.target_modules)
    assert all(m.lora_dropout["default"].p == hp.lora_dropout for m in fused)
    assert getattr(trl_utils._use_triton, "loraq_compact", False)
    assert trainer.last_layer.modules[-1] is trainer.model.base_model.model.model.layers[-1].mlp  # scored_rows
    trainer.create_optimizer()
    assert trainer.optimizer.defaults["fused"], "AdamW's fused CPU kernel"
