"""Will the adapter serve? vLLM's rules for loading a PEFT LoRA adapter, checked on its `adapter_config.json`.

From vLLM's source (vllm/config/lora.py, vllm/lora/peft_helper.py, `PEFTHelper.validate_legal` and
`_validate_features`), an adapter is refused when
  - its rank `r` is above the server's `--max-lora-rank`, which must be one of 1, 8, 16, 32, 64, 128, 256,
    320, 512 (`MaxLoRARanks`) and defaults to 16: above 512 no vLLM server loads it, above 16 only one
    started with a larger `--max-lora-rank`;
  - it has `modules_to_save` (whole copies of layers), uses DoRA (`use_dora`), or has a `bias` other than
    "none".
A rank below the server's maximum is padded to it, so a rank that is not itself one of those values (4, 12,
24, ...) loads, but `--max-lora-rank` cannot be set to it: the server needs the next allowed value. loraq
always writes bias "none", no modules_to_save and no DoRA; its `lora_r` (1 to 1024) is what a job can get
wrong. `target_modules` are checked against the base model's Linear layers before a job is queued, which are
the layers vLLM's LoRA supports for the common architectures; that is not checked again here.

Pure Python: the API warns at create (`serving_warnings` on the job), the tests check adapter folders.
"""

from __future__ import annotations

from typing import Any

from loraq.job_spec import Hyperparameters

VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
VLLM_DEFAULT_MAX_LORA_RANK = 16


def planned_adapter_config(hyperparameters: Hyperparameters) -> dict[str, Any]:
    """The fields of `adapter_config.json` that vLLM checks, as loraq's training writes them for these
    hyperparameters (training.lora.lora_config)."""
    return {
        "r": hyperparameters.lora_r,
        "lora_alpha": hyperparameters.lora_alpha,
        "target_modules": list(hyperparameters.target_modules),
        "bias": "none",
        "modules_to_save": None,
        "use_dora": False,
        "use_rslora": False,
    }


def _warning(setting: str, message: str) -> dict[str, str]:
    return {"engine": "vllm", "setting": setting, "message": message}


def _rank_warning(rank: int) -> dict[str, str] | None:
    fitting = [value for value in VLLM_MAX_LORA_RANKS if value >= rank]
    if not fitting:
        return _warning(
            "lora_r",
            f"vLLM will not load this adapter: its rank ({rank}) is above the largest --max-lora-rank vLLM accepts "
            f"({VLLM_MAX_LORA_RANKS[-1]}). Train with lora_r {VLLM_MAX_LORA_RANKS[-1]} or lower to serve it with vLLM.",
        )
    if rank > VLLM_DEFAULT_MAX_LORA_RANK:
        return _warning(
            "lora_r",
            f"vLLM refuses this adapter under its default --max-lora-rank ({VLLM_DEFAULT_MAX_LORA_RANK}): its rank "
            f"is {rank}. Start vLLM with --max-lora-rank {fitting[0]} (or more) to serve it.",
        )
    if rank not in VLLM_MAX_LORA_RANKS:
        return _warning(
            "lora_r",
            f"lora_r {rank} is not one of vLLM's --max-lora-rank values ({', '.join(map(str, VLLM_MAX_LORA_RANKS))}): "
            f"`--max-lora-rank {rank}` stops vLLM at startup. Serve it under --max-lora-rank {fitting[0]} or more "
            f"(the default, {VLLM_DEFAULT_MAX_LORA_RANK}, works), where it is padded to that rank.",
        )
    return None


def vllm_warnings(adapter_config: dict[str, Any]) -> list[dict[str, str]]:
    """What in an adapter's `adapter_config.json` vLLM would refuse, or need a setting for: one
    {"engine": "vllm", "setting", "message"} per problem, the setting named as in loraq's hyperparameters where
    it is one of them, else as in the adapter config. Empty when it loads under vLLM's defaults."""
    warnings = []
    rank = _rank_warning(int(adapter_config.get("r", 8)))
    if rank:
        warnings.append(rank)
    if adapter_config.get("modules_to_save"):
        warnings.append(_warning("modules_to_save", "vLLM will not load an adapter with modules_to_save."))
    if adapter_config.get("use_dora"):
        warnings.append(_warning("use_dora", "vLLM will not load a DoRA adapter (use_dora)."))
    if adapter_config.get("bias", "none") != "none":
        warnings.append(_warning("bias", f"vLLM will not load an adapter with bias {adapter_config['bias']!r}."))
    return warnings
