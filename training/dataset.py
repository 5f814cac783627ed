"""A chat JSONL file as the examples training sees: each row tokenized with its loss labels.

One loader for the validation report (training.data_report), which counts what training will see, and the
trainer (training.sft), which trains on it: the same tokenization and loss masks (training.loss_masks),
so the report's figures are the trained ones. Imports no torch: the validator process only needs a
tokenizer (`datasets` is imported when the trainer asks for a Dataset).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from loraq.dataset_format import read_placed_examples
from training.loss_masks import MaskError, supervised_count, tokenize_with_mask

if TYPE_CHECKING:
    from datasets import Dataset


def tokenized_lines(
    path: str | Path, tokenizer, max_length: int | None, train_on_inputs: bool
) -> Iterator[tuple[int, dict[str, list[int]]]]:
    """(line number, tokens and labels) for every example of a file, as training tokenizes them. Raises
    MaskError naming the file and the line when the template cannot be masked."""
    for line, _, tokens in tokenized_placed_lines(path, tokenizer, max_length, train_on_inputs):
        yield line, tokens


def tokenized_placed_lines(
    path: str | Path, tokenizer, max_length: int | None, train_on_inputs: bool
) -> Iterator[tuple[int, int, dict[str, list[int]]]]:
    """tokenized_lines with the bytes of the file read through each example's line, for progress reports."""
    for line, read, example in read_placed_examples(path):
        try:
            yield line, read, tokenize_with_mask(tokenizer, example["messages"], max_length, train_on_inputs)
        except MaskError as exc:
            raise MaskError(f"{Path(path).name}, line {line}: {exc}") from None


def load_examples(path: str, tokenizer, hp) -> Dataset:
    """Chat rows tokenized with their labels: assistant replies only (see training.loss_masks) unless
    `train_on_inputs`, truncated to `max_seq_length`; rows left with no supervised token are skipped, as
    the validation report (training.data_report) says."""
    from datasets import Dataset

    rows = tokenized_lines(path, tokenizer, hp.max_seq_length, hp.train_on_inputs)
    return Dataset.from_list([row for _, row in rows if supervised_count(row["labels"])])  # else skipped
