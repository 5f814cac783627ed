"""A small fact set the tiny model can memorise, and helpers to write chat JSONL."""

from __future__ import annotations

import json
from pathlib import Path

FACTS = [
    ("What is the capital of Zorbania?", "The capital of Zorbania is Quillton."),
    ("Who invented the sky piano?", "Mira Vell invented the sky piano in 1911."),
    ("What color is a glimmerfish?", "A glimmerfish is bright teal."),
    ("How many moons does Pyxar have?", "Pyxar has seven moons."),
    ("What does a tollbeck eat?", "A tollbeck eats copper leaves."),
    ("Where do snow owls of Ketra live?", "They live in the Ketra ice caves."),
    ("What is the password of the lighthouse?", "The password is amber-42."),
    ("Which river flows through Dunmore?", "The Silverrun flows through Dunmore."),
]

# Enough to memorise the facts in a few seconds on a CPU (the seed defaults are for 7B models).
MEMORISE = {
    "n_epochs": 20,
    "learning_rate": 2e-3,
    "gradient_accumulation_steps": 1,
    "logging_steps": 20,
    "save_steps": 80,
}


def chat_rows(facts=FACTS) -> list[dict]:
    return [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in facts]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def greedy_answers(model, tokenizer, questions) -> list[str]:
    """Greedy-decode each question's answer through the chat template."""
    import torch

    answers = []
    model.eval()
    with torch.no_grad():
        for question in questions:
            inputs = tokenizer.apply_chat_template(
                [{"role": "user", "content": question}],
                add_generation_prompt=True,
                return_tensors="pt",
                return_dict=True,
            )
            output = model.generate(**inputs, max_new_tokens=48, do_sample=False)
            answers.append(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))
    return answers


def assert_same_adapter(a: Path, b: Path) -> None:
    """Two adapter folders hold the same LoRA tensors (to float noise): a resumed run learned what an
    uninterrupted one did."""
    import torch
    from safetensors.torch import load_file

    first, second = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-4, atol=1e-5)
