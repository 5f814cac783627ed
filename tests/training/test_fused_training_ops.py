"""The two shortcuts PackedSFTTrainer takes give what the plain computation gives: LoRA dropout fused into
the adapter (the same Bernoulli masks, the same outputs and gradients for a given mask, the same saved
adapter) and an LM head that scores only supervised positions (the same loss and metrics)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers import AutoModelForCausalLM

from training.lora_dropout import DroppedLinear, _DroppedProjection, dropped_positions, fuse_lora_dropout
from training.supervised_head import score_supervised_positions_only
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


def test_fused_projection_is_dropout_then_linear_for_the_drawn_mask():
    torch.manual_seed(2)
    x = torch.randn(2, 9, 12, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 12, dtype=torch.float64, requires_grad=True)
    p = 0.3
    state = torch.get_rng_state()
    out = _DroppedProjection.apply(x, weight, p)
    grad = torch.randn_like(out)
    out.backward(grad)

    torch.set_rng_state(state)
    dropped = dropped_positions(x.numel(), p, x.device)
    keep = torch.ones(x.numel(), dtype=torch.float64)
    keep[dropped] = 0
    x2, weight2 = x.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    out2 = (x2 * keep.view_as(x) / (1 - p)) @ weight2.t()
    out2.backward(grad)
    torch.testing.assert_close(out, out2)
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(weight.grad, weight2.grad)

    def replayed(a, b):
        torch.set_rng_state(state)
        return _DroppedProjection.apply(a, b, p)

    assert torch.autograd.gradcheck(replayed, (x.detach().requires_grad_(), weight.detach().requires_grad_()))


def test_fused_model_trains_and_saves_like_plain_lora(tiny_dir, tmp_path):
    ids = torch.randint(3, 700, (1, 40))
    plain, fused = lora_model(tiny_dir, 0.1), lora_model(tiny_dir, 0.1)
    keys = set(plain.state_dict())
    parameters = {name: id(param) for name, param in fused.named_parameters()}
    assert fuse_lora_dropout(fused) == 4 * len(PROJECTIONS)
    assert fuse_lora_dropout(fused) == 0  # already fused
    assert set(fused.state_dict()) == keys
    assert {name: id(param) for name, param in fused.named_parameters()} == parameters  # the optimizer's tensors
    assert sum(isinstance(m, DroppedLinear) for m in fused.modules()) == 4 * len(PROJECTIONS)

    plain.eval(), fused.eval()
    with torch.no_grad():
        torch.testing.assert_close(fused(input_ids=ids).logits, plain(input_ids=ids).logits)
    fused.train()
    first, second = (fused(input_ids=ids, labels=ids).loss for _ in range(2))
    assert not torch.equal(first, second), "dropout is applied while training"
    second.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in fused.named_parameters() if "lora_A" in n)

    fused.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), tmp_path / "adapter").eval()
    fused.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, fused(input_ids=ids).logits)


def test_no_dropout_leaves_peft_as_built(tiny_dir):
    model = lora_model(tiny_dir, 0.0)
    assert fuse_lora_dropout(model) == 0
    assert not any(isinstance(m, DroppedLinear) for m in model.modules())


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


def test_trainer_on_a_cpu_takes_both_shortcuts(tiny_dir, tmp_path):
    from trl.trainer import utils as trl_utils

    from tests.facts import chat_rows, write_jsonl
    from training.config import Hyperparameters, TrainingConfig
    from training.progress import ProgressCallback, ProgressWriter
    from training.run import build_trainer

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
    fused = [m for m in trainer.model.modules() if isinstance(m, DroppedLinear)]
    assert len(fused) == 4 * len(hp.target_modules) and all(m.p == hp.lora_dropout for m in fused)
    assert getattr(trl_utils._use_triton, "loraq_compact", False)
