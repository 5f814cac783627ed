"""What a file holds for one base model: its examples and tokens as that model's tokenizer sees them.

Computed before a job is queued (the `validating_files` stage), with the loader training uses
(training.dataset: the same tokenization and loss masks), so the figures are the ones training will see:

- examples, tokens, supervised tokens (the ones the loss covers);
- examples longer than `max_seq_length`: they are truncated to it (the tail, and any supervised tokens
  in it, is not trained on);
- examples with no supervised tokens (no assistant reply with weight 1, or every reply cut off by the
  truncation): they are skipped, and named by line;
- the tokens and optimizer steps the job will train on.

Imports no torch: the validator process only needs a tokenizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from training.dataset import tokenized_chunks
from training.loss_masks import MaskError

LISTED_LINES = 20  # line numbers listed per finding; the counts are always complete


def file_report(
    path: str | Path,
    tokenizer,
    max_seq_length: int,
    train_on_inputs: bool,
    progress: Callable[[int, int], None] | None = None,
    processes: int = 1,
    rows: Any = None,
) -> dict[str, Any]:
    """Token figures of one chat JSONL file. Raises MaskError naming the line when masks cannot be derived.
    `progress(examples, bytes read)` is called after each example; an exception it raises ends the report
    (and stops the processes). With `rows` (a training.tokenized.TokenizedWriter) the rows training keeps,
    truncated, are written to it in the same pass. `processes`: how many processes tokenize a large file."""
    examples = tokens = supervised = trained_tokens = usable = longest = 0
    long = {"count": 0, "lines": [], "action": f"truncated to {max_seq_length} tokens"}
    skipped = {
        "count": 0,
        "lines": [],
        "action": "skipped: no assistant tokens to learn from (no reply with weight 1, or all cut by truncation)",
    }
    id_type = rows.id_type if rows is not None else "uint32"
    chunks = tokenized_chunks(path, tokenizer, max_seq_length, train_on_inputs, id_type, processes)
    with closing(chunks):
        for chunk in chunks:
            for line, read, length, chunk_supervised, kept in zip(
                chunk.lines, chunk.ends, chunk.lengths, chunk.supervised, chunk.kept, strict=True
            ):
                examples += 1
                if progress is not None:
                    progress(examples, read)
                tokens += length
                supervised += chunk_supervised
                longest = max(longest, length)
                if length > max_seq_length:
                    note_line(long, line)
                if not kept:
                    note_line(skipped, line)
                    continue
                usable += 1
                trained_tokens += min(length, max_seq_length)
            if rows is not None:
                rows.write_batch(chunk.rows)
            if isinstance(chunk.error, MaskError):
                raise MaskError(f"{Path(path).name}, {chunk.error}")
            if chunk.error is not None:
                raise chunk.error
    return {
        "examples": examples,
        "tokens": tokens,
        "supervised_tokens": supervised,
        "max_example_tokens": longest,
        "max_seq_length": max_seq_length,
        "long_examples": long,
        "unsupervised_examples": skipped,
        "usable_examples": usable,
        "trained_tokens_per_epoch": trained_tokens,
    }


def note_line(finding: dict[str, Any], line: int) -> None:
    finding["count"] += 1
    if len(finding["lines"]) < LISTED_LINES:
        finding["lines"].append(line)


def training_estimate(
    report: dict[str, Any],
    batch_size: int,
    gradient_accumulation_steps: int,
    epochs: int,
    max_steps: int | None = None,
) -> dict:
    """Optimizer steps and tokens the job will train on (one step is batch_size x accumulation examples).
    With `max_steps` the run is that many steps whatever the epochs (the trainer's own rule), and its tokens
    are those steps' share of an epoch's (exact at whole epochs; the examples of a partial epoch vary)."""
    per_step = batch_size * gradient_accumulation_steps
    steps_per_epoch = math.ceil(report["usable_examples"] / per_step)
    if max_steps is None:
        steps, tokens = steps_per_epoch * epochs, report["trained_tokens_per_epoch"] * epochs
    else:
        steps = max_steps
        tokens = round(report["trained_tokens_per_epoch"] * max_steps / steps_per_epoch) if steps_per_epoch else 0
    return {"estimated_steps": steps, "estimated_tokens": tokens, "examples_per_step": per_step}


def describe(report: dict[str, Any], role: str) -> str:
    """One readable line for the job's events."""
    if report.get("format") == "preference":
        from training.preference import describe_preferences  # which builds on this module

        return describe_preferences(report, role)
    text = (
        f"{role.capitalize()} file: {plural(report['examples'], 'example')}, {report['tokens']} tokens "
        f"({report['supervised_tokens']} supervised), longest {report['max_example_tokens']} tokens"
    )
    long, skipped = report["long_examples"], report["unsupervised_examples"]
    if long["count"]:
        limit = report["max_seq_length"]
        text += f"; {long['count']} longer than {limit} tokens ({lines_text(long)}): {long['action']}"
    if skipped["count"]:
        text += f"; {skipped['count']} skipped ({lines_text(skipped)}), no assistant tokens to learn from"
    return text


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def lines_text(finding: dict) -> str:
    shown = ", ".join(str(n) for n in finding["lines"])
    more = finding["count"] - len(finding["lines"])
    return f"line{'s' if finding['count'] > 1 else ''} {shown}" + (f" and {more} more" if more > 0 else "")
