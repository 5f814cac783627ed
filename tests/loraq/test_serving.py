"""vLLM's rules for loading a LoRA adapter (vllm/config/lora.py, vllm/lora/peft_helper.py), on the
adapter_config.json loraq writes for a job's hyperparameters."""

from __future__ import annotations

import pytest

from loraq.job_spec import Hyperparameters
from loraq.serving import VLLM_MAX_LORA_RANKS, planned_adapter_config, vllm_warnings


def _rank_warnings(rank: int) -> list[dict]:
    return vllm_warnings(planned_adapter_config(Hyperparameters(lora_r=rank)))


@pytest.mark.parametrize("rank", [1, 8, 16])
def test_ranks_vllm_serves_by_default_get_no_warning(rank):
    assert _rank_warnings(rank) == []


def test_the_default_job_serves_as_it_is():
    assert vllm_warnings(planned_adapter_config(Hyperparameters())) == []


def test_a_rank_that_is_no_max_lora_rank_value_names_lora_r_and_the_value_to_use():
    (warning,) = _rank_warnings(4)
    assert warning["engine"] == "vllm" and warning["setting"] == "lora_r"
    assert "--max-lora-rank 4" in warning["message"] and "--max-lora-rank 8" in warning["message"]


@pytest.mark.parametrize(("rank", "needed"), [(32, 32), (24, 32), (100, 128), (300, 320), (512, 512)])
def test_a_rank_above_the_default_max_lora_rank_says_which_to_start_vllm_with(rank, needed):
    (warning,) = _rank_warnings(rank)
    assert warning["setting"] == "lora_r" and f"--max-lora-rank {needed} " in warning["message"]
    assert "refuses" in warning["message"]


@pytest.mark.parametrize("rank", [513, 1024])
def test_a_rank_above_512_never_loads(rank):
    (warning,) = _rank_warnings(rank)
    assert warning["setting"] == "lora_r" and "will not load" in warning["message"]


def test_every_rank_loraq_accepts_is_judged():
    for rank in range(1, 1025):
        warnings = _rank_warnings(rank)
        assert bool(warnings) == (rank not in VLLM_MAX_LORA_RANKS or rank > 16), rank


@pytest.mark.parametrize(
    ("setting", "config"),
    [
        ("modules_to_save", {"modules_to_save": ["lm_head"]}),
        ("use_dora", {"use_dora": True}),
        ("bias", {"bias": "lora_only"}),
        ("bias", {"bias": "all"}),
    ],
)
def test_what_vllm_refuses_in_any_adapter_config(setting, config):
    adapter = {"r": 16, "lora_alpha": 32, "target_modules": ["q_proj"], "bias": "none", **config}
    assert [w["setting"] for w in vllm_warnings(adapter)] == [setting]
