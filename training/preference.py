"""A preference (DPO) file as the rows DPO trains on, and its report.

Each example becomes TRL's own DPO row (trl.DPOTrainer's dataset preparation, which the tests hold these rows
equal to): `prompt_ids`, the prompt (`input.messages`, with `input.tools`) rendered by the chat template with
its generation prompt; `chosen_ids` and `rejected_ids`, the rest of the prompt and each output rendered
together, from where they part from the prompt alone (a template may render the prompt's end differently
once a reply follows). The validation stage writes these rows once, memory-mapped by training
(training.tokenized), with the report in the same pass:

- examples; prompt, chosen (preferred) and rejected (non-preferred) tokens;
- examples longer than `max_seq_length` (prompt plus an output): truncated to it, the output's end cut;
- examples dropped for length: the prompt alone fills `max_seq_length`, so no output token is left to
  compare (TRL drops them too; their rows are not written);
- the tokens and optimizer steps the job will train on (each example is two sequences, prompt + chosen
  and prompt + rejected).

Imports no torch: the validator process only needs a tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from loraq.dataset_format import PREFERENCE, read_placed_examples
from training.data_report import lines_text, note_line, plural

BATCH_EXAMPLES = 256  # examples tokenized in one batched tokenizer call and written as one record batch
COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


def preference_row_schema(id_type: str) -> Any:
    """The tokenized rows' columns: TRL's three token lists (the narrowest type holding the vocabulary) and
    the file's line number."""
    import pyarrow as pa

    return pa.schema([*((name, pa.list_(getattr(pa, id_type)())) for name in COLUMNS), ("line", pa.int64())])


def _rendered(tokenizer, example: dict) -> list[str]:
    """The prompt with its generation prompt, and the prompt followed by each output, as text."""
    prompt, tools = example["input"]["messages"], example["input"].get("tools")
    render = lambda messages, prompting: tokenizer.apply_chat_template(  # noqa: E731
        messages, tools=tools, tokenize=False, add_generation_prompt=prompting
    )
    return [
        render(prompt, True),
        render(prompt + example["preferred_output"], False),
        render(prompt + example["non_preferred_output"], False),
    ]


def _common_prefix(a: list[int], b: list[int]) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length


def encode_preferences(tokenizer, examples: list[dict]) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt_ids, chosen_ids, rejected_ids) per example, as TRL's DPO preparation computes them: rendered
    one by one (each with its own tools), tokenized in one batched call without added special tokens (what
    `apply_chat_template(tokenize=True)` does)."""
    if not examples:
        return []
    texts = [text for example in examples for text in _rendered(tokenizer, example)]
    ids = tokenizer(
        texts, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False, verbose=False
    )["input_ids"]
    rows = []
    for index in range(0, len(ids), 3):
        prompt, chosen, rejected = ids[index : index + 3]
        start = min(_common_prefix(prompt, chosen), _common_prefix(prompt, rejected))
        rows.append((prompt[:start], chosen[start:], rejected[start:]))
    return rows


def _rows_batch(rows: list[tuple[list[int], list[int], list[int]]], lines: list[int], id_type: str) -> Any:
    import pyarrow as pa

    columns = []
    for position in range(3):
        values = [row[position] for row in rows]
        offsets = np.cumsum([0] + [len(v) for v in values], dtype=np.int32)
        flat = np.fromiter((t for v in values for t in v), dtype=id_type, count=int(offsets[-1]))
        columns.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)))
    columns.append(pa.array(lines, type=pa.int64()))
    return pa.record_batch(columns, schema=preference_row_schema(id_type))


def _batches(path: str | Path) -> Iterator[list[tuple[int, int, dict]]]:
    batch: list[tuple[int, int, dict]] = []
    for placed in read_placed_examples(path, PREFERENCE):
        batch.append(placed)
        if len(batch) == BATCH_EXAMPLES:
            yield batch
            batch = []
    if batch:
        yield batch


def preference_report(
    path: str | Path,
    tokenizer,
    max_seq_length: int,
    progress: Callable[[int, int], None] | None = None,
    rows: Any = None,
) -> dict[str, Any]:
    """Token figures of one preference JSONL file (the module docstring's list). `progress(examples, bytes
    read)` is called after each example; an exception it raises ends the report. With `rows` (a
    training.tokenized.TokenizedWriter of preference_row_schema) the rows DPO trains on are written to it in
    the same pass, untruncated as TRL keeps them (its collator truncates each batch)."""
    count = {"examples": 0, "prompt_tokens": 0, "chosen_tokens": 0, "rejected_tokens": 0, "longest": 0}
    usable = trained_tokens = 0
    long = {"count": 0, "lines": [], "action": f"truncated to {max_seq_length} tokens, the output's end cut"}
    dropped = {
        "count": 0,
        "lines": [],
        "action": f"dropped: the prompt alone fills max_seq_length ({max_seq_length} tokens), no output is left "
        "to compare",
    }
    for batch in _batches(path):
        kept_rows, kept_lines = [], []
        for (line, read, _), (prompt, chosen, rejected) in zip(
            batch, encode_preferences(tokenizer, [example for _, _, example in batch]), strict=True
        ):
            count["examples"] += 1
            if progress is not None:
                progress(count["examples"], read)
            count["prompt_tokens"] += len(prompt)
            count["chosen_tokens"] += len(chosen)
            count["rejected_tokens"] += len(rejected)
            longest = len(prompt) + max(len(chosen), len(rejected))
            count["longest"] = max(count["longest"], longest)
            if len(prompt) >= max_seq_length:
                note_line(dropped, line)
                continue
            if longest > max_seq_length:
                note_line(long, line)
            usable += 1
            trained_tokens += min(len(prompt) + len(chosen), max_seq_length)
            trained_tokens += min(len(prompt) + len(rejected), max_seq_length)
            kept_rows.append((prompt, chosen, rejected))
            kept_lines.append(line)
        if rows is not None:
            rows.write_batch(_rows_batch(kept_rows, kept_lines, rows.id_type))
    return {
        "format": PREFERENCE,
        "examples": count["examples"],
        "prompt_tokens": count["prompt_tokens"],
        "chosen_tokens": count["chosen_tokens"],
        "rejected_tokens": count["rejected_tokens"],
        "max_example_tokens": count["longest"],
        "max_seq_length": max_seq_length,
        "long_examples": long,
        "dropped_examples": dropped,
        "usable_examples": usable,
        "trained_tokens_per_epoch": trained_tokens,
    }


def describe_preferences(report: dict[str, Any], role: str) -> str:
    """One readable line for the job's events."""
    text = (
        f"{role.capitalize()} file: {plural(report['examples'], 'preference example')}, {report['prompt_tokens']} "
        f"prompt tokens, {report['chosen_tokens']} preferred and {report['rejected_tokens']} non-preferred output "
        f"tokens, longest {report['max_example_tokens']} tokens"
    )
    long, dropped = report["long_examples"], report["dropped_examples"]
    if long["count"]:
        text += f"; {long['count']} longer than {report['max_seq_length']} tokens ({lines_text(long)}): truncated"
    if dropped["count"]:
        text += f"; {dropped['count']} dropped ({lines_text(dropped)}), the prompt alone fills max_seq_length"
    return text
