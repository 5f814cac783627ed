"""Which modules of a base model LoRA can adapt, known before any weights are loaded.

The model is built from its config alone on the meta device (no weights and no memory for them; a 72B
model's tree takes a few seconds on a CPU), so the validation stage can refuse a misspelt `target_modules`
before a GPU worker loads the model. Entries are matched the way PEFT matches a list of `target_modules`:
an entry matches a module whose full name equals it or ends with "." followed by it (`q_proj`,
`self_attn.q_proj`).

What LoRA can adapt here: Linear layers (and GPT-2's Conv1D, a Linear with its weight transposed), except
the LM head: TRL computes the loss from the head's weight directly (its fused LM head), so an adapter on it
would never train (TRL refuses it too, but only once the trainer is built on a GPU worker).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModuleTree:
    """A model's module names: the adaptable layers, its LM head, and every other module (with its class)."""

    linear: tuple[str, ...]
    head: tuple[str, ...]
    other: dict[str, str]

    @property
    def linear_leaf_names(self) -> list[str]:
        """The names a user writes in `target_modules`: the last part of each adaptable layer's name."""
        return sorted({name.rsplit(".", 1)[-1] for name in self.linear})


def module_tree(model_path: str, trust_remote_code: bool = False) -> ModuleTree:
    """The module tree of the model at `model_path` (a hub id or a folder), from its config only."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    head_module = model.get_output_embeddings()
    linear, head, other = [], [], {}
    for name, module in model.named_modules():
        if not name:
            continue
        if head_module is not None and module is head_module:
            head.append(name)
        elif isinstance(module, torch.nn.Linear | Conv1D):
            linear.append(name)
        else:
            other[name] = type(module).__name__
    return ModuleTree(tuple(linear), tuple(head), other)


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def target_module_problems(targets: list[str], tree: ModuleTree) -> list[str]:
    """One sentence per entry of `targets` that LoRA cannot adapt on this model; empty if every entry can."""
    problems = []
    for target in targets:
        if any(_matches(name, target) for name in tree.head):
            problems.append(
                f"'{target}' is the model's LM head, whose weight the loss is computed from directly, "
                "so a LoRA adapter there would never train"
            )
        elif not any(_matches(name, target) for name in tree.linear):
            kinds = sorted({kind for name, kind in tree.other.items() if _matches(name, target)})
            problems.append(
                f"'{target}' is not a Linear layer ({', '.join(kinds)})" if kinds else f"'{target}' matches no module"
            )
    return problems
