"""target_modules checked against the base model's module tree, built from its config on the meta device:
PEFT's suffix matching, the LM head refused, and the names LoRA can adapt listed."""

from __future__ import annotations

import pytest

from training.target_modules import module_tree, target_module_problems
from training.tiny_model import model_source


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return module_tree(model_source("loraq-tiny-chat", tmp_path_factory.mktemp("models")))


def test_the_linear_leaf_names_are_the_projections_and_nothing_is_loaded(tree):
    assert tree.linear_leaf_names == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert tree.head == ("lm_head",)
    assert "model.layers.0.self_attn.q_proj" in tree.linear


def test_entries_match_by_name_suffix_as_peft_matches_them(tree):
    assert target_module_problems(["q_proj", "self_attn.v_proj", "model.layers.1.mlp.down_proj"], tree) == []
    assert target_module_problems(["proj", "attn.q_proj"], tree) == [  # whole name parts only
        "'proj' matches no module",
        "'attn.q_proj' matches no module",
    ]


def test_each_bad_entry_is_named_with_its_reason(tree):
    problems = target_module_problems(["q_proj", "nonexistent_proj", "lm_head", "embed_tokens", "mlp"], tree)
    assert problems[0] == "'nonexistent_proj' matches no module"
    assert problems[1].startswith("'lm_head' is the model's LM head") and "never train" in problems[1]
    assert problems[2:] == [
        "'embed_tokens' is not a Linear layer (Embedding)",
        "'mlp' is not a Linear layer (Qwen2MLP)",
    ]
