"""Continued training's names and LoRA shape: which job (and checkpoint) a fine-tuned model's name points at,
and the child's hyperparameters taking the parent adapter's shape."""

from __future__ import annotations

import pytest

from loraq.continued_training import (
    FineTunedName,
    ShapeConflict,
    adapter_shape,
    checkpoint_model_name,
    inherit_lora_shape,
    parse_fine_tuned_name,
)
from loraq.job_spec import DEFAULT_TARGET_MODULES, Hyperparameters

JOB = "ftjob-3kF9aZ0qLm2Xw8RtYu5VbN1c"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (f"ft:loraq-tiny-chat:facts:{JOB}", FineTunedName(JOB)),
        (f"ft:loraq-tiny-chat::{JOB}", FineTunedName(JOB)),  # no suffix
        (f"ft:loraq-tiny-chat:facts:{JOB}:ckpt-step-20", FineTunedName(JOB, 20)),
        (f"ft:qwen2.5:7b:v1.2:{JOB}:ckpt-step-5", FineTunedName(JOB, 5)),  # a base model name with a colon
        ("loraq-tiny-chat", None),  # a base model
        ("ft:loraq-tiny-chat", None),
        (f"ft:{JOB}", None),
        ("ft:loraq-tiny-chat:facts:file-abc", None),  # not a job id
        (f"ft:loraq-tiny-chat:facts:{JOB}:ckpt-step-", None),
        (f"ft:loraq-tiny-chat:facts:{JOB}:ckpt-step-x", None),
        (f"xft:loraq-tiny-chat:facts:{JOB}", None),
    ],
)
def test_names_point_at_a_job_and_a_checkpoint(name, expected):
    assert parse_fine_tuned_name(name) == expected


def test_checkpoint_names_parse_back():
    name = checkpoint_model_name(f"ft:loraq-tiny-chat:s:{JOB}", 40)
    assert name == f"ft:loraq-tiny-chat:s:{JOB}:ckpt-step-40"
    assert parse_fine_tuned_name(name) == FineTunedName(JOB, 40)


PARENT = Hyperparameters(lora_r=8, lora_alpha=24, lora_dropout=0.1, target_modules=["q_proj", "v_proj"])


def test_the_child_takes_the_parents_shape_and_dropout_and_keeps_its_own_knobs():
    child = inherit_lora_shape(Hyperparameters(learning_rate=5e-4, n_epochs=2), PARENT)
    assert isinstance(child, Hyperparameters)
    assert (child.lora_r, child.lora_alpha, child.lora_dropout) == (8, 24, 0.1)
    assert child.target_modules == ["q_proj", "v_proj"]
    assert (child.learning_rate, child.n_epochs) == (5e-4, 2)


def test_the_same_shape_given_explicitly_is_fine_and_dropout_may_change():
    given = Hyperparameters(lora_r=8, lora_alpha=24.0, target_modules=["v_proj", "q_proj"], lora_dropout=0.0)
    child = inherit_lora_shape(given, PARENT)
    assert isinstance(child, Hyperparameters) and child.lora_dropout == 0.0 and child.lora_r == 8


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"lora_r": 16}, "lora_r"),
        ({"lora_alpha": 32}, "lora_alpha"),
        ({"target_modules": ["q_proj"]}, "target_modules"),
        ({"lora_r": 16, "lora_alpha": 32}, "lora_r"),  # the first one is named
    ],
)
def test_a_conflicting_shape_names_the_field(given, field):
    conflict = inherit_lora_shape(Hyperparameters(**given), PARENT)
    assert isinstance(conflict, ShapeConflict) and conflict.field == field
    assert conflict.message.startswith(f"{field} ") and "leave" in conflict.message


def test_a_default_valued_field_that_was_not_given_is_no_conflict():
    # lora_r 16 is the default: only fields the request set count
    assert isinstance(inherit_lora_shape(Hyperparameters(), PARENT), Hyperparameters)


def test_adapter_shape_reads_peft_adapter_config():
    config = {"r": 16, "lora_alpha": 32, "target_modules": list(reversed(DEFAULT_TARGET_MODULES)), "bias": "none"}
    assert adapter_shape(config) == {"lora_r": 16, "lora_alpha": 32.0, "target_modules": sorted(DEFAULT_TARGET_MODULES)}
    assert adapter_shape({"r": 4, "lora_alpha": 8, "target_modules": ".*proj"}) == {"lora_r": 4, "lora_alpha": 8.0}
