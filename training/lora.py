"""The LoRA adapter a run trains: a new one of the hyperparameters' shape, or, for continued training, an
existing adapter's weights loaded trainable (`TrainingConfig.init_adapter`).

`attach_lora` is what a trainer builder calls (training.sft; a preference trainer does the same): it returns
the model and the `peft_config` to hand to TRL, which wraps the model itself for a new adapter and must not
be given one for a model that already carries its adapter (TRL raises if both are given).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from peft import LoraConfig, PeftModel

from loraq.continued_training import adapter_shape
from loraq.job_spec import Hyperparameters
from training.config import TrainingConfig

logger = logging.getLogger("loraq.training")


def lora_config(hp: Hyperparameters) -> LoraConfig:
    """A new adapter of these hyperparameters (loraq.serving.planned_adapter_config says what it writes)."""
    return LoraConfig(
        r=hp.lora_r,
        lora_alpha=hp.lora_alpha,
        lora_dropout=hp.lora_dropout,
        bias="none",
        task_type="CAUSAL_LM",
        target_modules=hp.target_modules,
    )


def with_adapter_shape(config: TrainingConfig) -> TrainingConfig:
    """With `init_adapter`: the config whose hyperparameters have that adapter's rank, alpha and target
    modules (the shape of its weights; the API has already refused a job that asked for another), so that
    loraq.json records what was trained. Unchanged otherwise."""
    if not config.init_adapter:
        return config
    adapter = json.loads((Path(config.init_adapter) / "adapter_config.json").read_text())
    shape = adapter_shape(adapter)
    hp = config.hyperparameters
    if set(shape.get("target_modules", hp.target_modules)) == set(hp.target_modules):
        shape.pop("target_modules", None)  # the same names: keep their order as given
    changed = {k: v for k, v in shape.items() if getattr(hp, k) != v}
    if changed:
        logger.info("continued training: the adapter's shape replaces the hyperparameters' %s", changed)
    return config.model_copy(update={"hyperparameters": hp.model_copy(update=shape)})


def load_trainable_adapter(model, folder: str | Path, hp: Hyperparameters) -> PeftModel:
    """The adapter at `folder` on `model`, its weights trainable, with this run's lora_dropout (a training knob,
    not part of the weights)."""
    config = LoraConfig.from_pretrained(str(folder))
    config.lora_dropout = hp.lora_dropout
    return PeftModel.from_pretrained(model, str(folder), config=config, is_trainable=True)


def attach_lora(model, config: TrainingConfig) -> tuple[object, LoraConfig | None]:
    """The model and the peft_config to give TRL's trainer: a new adapter (TRL wraps the model), or with
    `init_adapter` the model already wrapped around that adapter, and no peft_config."""
    if config.init_adapter:
        return load_trainable_adapter(model, config.init_adapter, config.hyperparameters), None
    return model, lora_config(config.hyperparameters)
