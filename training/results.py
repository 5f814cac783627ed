"""The job's result files (OpenAI's `result_files`): metrics per step, and held-out samples.

`step_metrics.csv` has OpenAI's columns (step, train_loss, train_accuracy, valid_loss,
valid_mean_token_accuracy) from the trainer's log history. With a validation file, `samples.jsonl` holds,
for a few of its conversations, the prompt, the reference reply, and the base model's and the adapter's
greedy answers side by side.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from loraq.dataset_format import read_examples
from loraq.job_spec import METHOD_FORMATS

SAMPLE_COUNT = 3
MAX_NEW_TOKENS = 64
COLUMNS = ["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"]


def write_step_metrics(log_history: list[dict], path: Path) -> Path:
    rows: dict[int, dict] = {}
    for entry in log_history:
        row = rows.setdefault(entry.get("step", 0), {"step": entry.get("step", 0)})
        if "loss" in entry:
            row["train_loss"] = entry["loss"]
            row["train_accuracy"] = entry.get("mean_token_accuracy")
        if "eval_loss" in entry:
            row["valid_loss"] = entry["eval_loss"]
            row["valid_mean_token_accuracy"] = entry.get("eval_mean_token_accuracy")
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for step in sorted(rows):
            if len(rows[step]) > 1:
                writer.writerow(rows[step])
    return path


def _answer(model, tokenizer, prompt: list[dict]) -> str:
    inputs = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    output = model.generate(
        **inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def _prompt_and_reference(example: dict, method: str) -> tuple[list[dict], str]:
    """What the model is asked, and the reply it was taught: a chat example up to its last assistant reply,
    or a preference example's input and preferred output."""
    if method == "dpo":
        prompt = example["input"]["messages"]
        return [{"role": m["role"], "content": m["content"]} for m in prompt], example["preferred_output"][0]["content"]
    messages = [{"role": m["role"], "content": m["content"]} for m in example["messages"]]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last], messages[last]["content"]


def write_samples(model, tokenizer, eval_path: str, path: Path, method: str = "supervised") -> Path:
    """Base and adapter answers for the first few validation examples (chat conversations up to their last
    reply, or preference prompts, whose reference is the preferred output)."""
    samples = []
    model.eval()
    file_format = METHOD_FORMATS[method]
    with torch.no_grad():
        for example in read_examples(eval_path, file_format)[:SAMPLE_COUNT]:
            prompt, reference = _prompt_and_reference(example, method)
            adapter_answer = _answer(model, tokenizer, prompt)
            with model.disable_adapter():
                base_answer = _answer(model, tokenizer, prompt)
            samples.append({"prompt": prompt, "reference": reference, "base": base_answer, "adapter": adapter_answer})
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    return path
