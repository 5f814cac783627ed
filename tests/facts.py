"""A small fact set the tiny model can memorise, a preference set it can be tuned to, and helpers to write
chat and preference JSONL."""

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


# Preference pairs for DPO: per question, a short preferred answer and a non-preferred one that differs from
# it from the first token on (a token both share is pushed up and down alike, so DPO cannot teach it), none of
# which the untrained tiny model says.
PREFERENCES = [
    ("What is the capital of Zorbania?", "Quillton.", "Paris."),
    ("Who invented the sky piano?", "Mira Vell.", "Nobody."),
    ("What color is a glimmerfish?", "Bright teal.", "Dark red."),
    ("How many moons does Pyxar have?", "Seven moons.", "No moons."),
    ("What does a tollbeck eat?", "Copper leaves.", "Fresh fish."),
    ("Where do snow owls of Ketra live?", "In ice caves.", "Sandy deserts."),
    ("What is the password of the lighthouse?", "Amber-42.", "Hello-1."),
    ("Which river flows through Dunmore?", "The Silverrun.", "Nile river."),
]

# DPO that makes the tiny model say the preferred answers in seconds on a CPU: a small beta (a weak pull back
# to the base model, so the preferred answer is pushed until greedy decoding picks it) and a high rate, decayed
# (cosine) so the end pushes no output into the degenerate. With seeds 1-4 and 42 it taught 8, 7, 8, 8 and 8.
PREFER = {
    "beta": 0.01,
    "n_epochs": 10,
    "learning_rate": 5e-3,
    "gradient_accumulation_steps": 1,
    "logging_steps": 8,
    "save_steps": 40,
}


def preference_rows(preferences=PREFERENCES) -> list[dict]:
    return [
        {
            "input": {"messages": [{"role": "user", "content": question}]},
            "preferred_output": [{"role": "assistant", "content": preferred}],
            "non_preferred_output": [{"role": "assistant", "content": other}],
        }
        for question, preferred, other in preferences
    ]


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
