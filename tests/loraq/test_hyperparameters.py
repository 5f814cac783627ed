"""Hyperparameter defaults are the seed document's, and bad values are refused by name."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from loraq.job_spec import DEFAULT_TARGET_MODULES, Hyperparameters


def test_defaults_are_the_seed_recipe():
    hp = Hyperparameters()
    assert (hp.lora_r, hp.lora_alpha, hp.lora_dropout) == (16, 32, 0.05)
    assert hp.target_modules == DEFAULT_TARGET_MODULES
    assert (hp.learning_rate, hp.n_epochs, hp.batch_size, hp.gradient_accumulation_steps) == (1e-4, 3, 1, 4)
    assert (hp.max_seq_length, hp.lr_scheduler_type, hp.warmup_ratio) == (2048, "cosine", 0.03)
    assert (hp.save_steps, hp.logging_steps, hp.train_on_inputs) == (100, 10, False)


def test_multiplier_scales_learning_rate_and_auto_means_default():
    hp = Hyperparameters(learning_rate=2e-4, learning_rate_multiplier=0.5, n_epochs="auto")
    assert hp.effective_learning_rate == pytest.approx(1e-4) and hp.n_epochs == 3


def test_unknown_field_is_an_error():
    with pytest.raises(ValidationError, match="lora_rank"):
        Hyperparameters(lora_rank=8)


def test_max_steps_is_unset_by_default_and_at_least_one():
    assert Hyperparameters().max_steps is None  # the epochs decide
    assert Hyperparameters(max_steps=5).max_steps == 5
    with pytest.raises(ValidationError, match="max_steps"):
        Hyperparameters(max_steps=0)
