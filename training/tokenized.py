"""Tokenized datasets on storage: a chat (or preference) file's rows tokenized once, into an Arrow file that training
memory-maps.

The validation stage writes it (`tokenize_file`: the same tokenization and loss masks as training.dataset,
in the pass that computes the file's report, which is kept beside the rows), keyed by everything that
determines its rows: the file's sha256, the tokenizer and chat template, `max_seq_length` and
`train_on_inputs`. A later job on the same file and model, a retried or resumed attempt, and the training
program find it there; the training program writes it only if it is missing (`loraq train`, which has no
validation stage, the first time). Rows are written in record batches to a temporary name and renamed into
place, so a reader never sees half a file. Training opens it with `datasets.Dataset.from_file`, which maps it into
memory: the rows stay on disk (the page cache) and a training process's memory does not grow with the
dataset. The format is the `datasets` library's own (an Arrow IPC stream).

Imports no torch; pyarrow only when rows are written or read.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from loraq.dataset_format import CHAT, PREFERENCE
from loraq.storage import fsync_rename
from training.data_report import file_report
from training.dataset import row_schema
from training.preference import preference_report, preference_row_schema

if TYPE_CHECKING:
    from datasets import Dataset

# Raised whenever the rows a given input produces change (the tokenization, the masks, the columns).
FORMAT_VERSION = 1
BATCH_BYTES = 32 << 20  # held by the writer until written: a little memory, few batches


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A digest of what the tokenizer does to a conversation: its vocabulary and rules (the fast tokenizer's
    full JSON, less the truncation and padding state each call resets), its special tokens (less the pad
    token, which the trainer may set and no row holds) and its chat template. Two folders holding the same
    tokenizer agree, and so do the validator's copy and the training program's."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        rules = json.loads(backend.to_str())
        rules.pop("truncation", None), rules.pop("padding", None)
    else:
        rules = sorted(tokenizer.get_vocab().items())
    special = {k: v for k, v in tokenizer.special_tokens_map.items() if k != "pad_token"}
    template = tokenizer.chat_template
    parts = [rules, special, template, bool(getattr(tokenizer, "split_special_tokens", False))]
    digest.update(json.dumps(parts, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def cache_name(
    file_sha256: str, fingerprint: str, max_seq_length: int, train_on_inputs: bool, file_format: str = CHAT
) -> str:
    """The file name of the tokenized rows for these inputs (the same inputs always give the same rows)."""
    inputs = {
        "format": FORMAT_VERSION,
        "file_sha256": file_sha256,
        "tokenizer": fingerprint,
        "max_seq_length": max_seq_length,
        "train_on_inputs": train_on_inputs,
    }
    if file_format != CHAT:  # a chat file's rows keep the names they had before there were other formats
        inputs["file_format"] = file_format
    key = json.dumps(inputs, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:32] + ".arrow"


def id_type_for(vocab_size: int) -> str:
    """The narrowest unsigned type that holds every token id."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


class TokenizedWriter:
    """Writes tokenized rows (by default training.dataset.row_schema: `input_ids`, `labels` with -100 where the
    loss does not look, and the file's `line`; a preference file's: training.preference.preference_row_schema)
    to `final`, in record batches, under a temporary name until `commit`. Used as a context manager, an
    exception discards the partial file."""

    def __init__(self, final: Path, vocab_size: int, schema: Callable[[str], Any] = row_schema):
        import pyarrow as pa

        self.final = Path(final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.id_type = id_type_for(vocab_size)
        fd, name = tempfile.mkstemp(prefix=f".{self.final.name}.", dir=self.final.parent)
        os.close(fd)
        self.staging = Path(name)
        self._sink = pa.OSFile(str(self.staging), "wb")
        self._writer = pa.ipc.new_stream(self._sink, schema(self.id_type))
        self._pending: list[Any] = []
        self._pending_bytes = 0
        self.rows = 0

    def write_batch(self, batch: Any) -> None:
        """Append a pyarrow RecordBatch of this schema (training.dataset.rows_batch, or a preference batch).
        Batches are gathered into ones of about BATCH_BYTES: each batch's header is read when the file is
        opened, and the page faults of reading many small ones would map much of the file into the reader's
        memory."""
        if batch.num_rows:
            self._pending.append(batch)
            self._pending_bytes += batch.nbytes
            self.rows += batch.num_rows
        if self._pending_bytes >= BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._pending:
            self._writer.write_batch(pa.concat_batches(self._pending))
            self._pending, self._pending_bytes = [], 0

    def commit(self) -> Path:
        """Close the file, flush it to disk and rename it into place."""
        self._flush()
        self._writer.close()
        self._sink.close()
        fsync_rename(self.staging, self.final)
        return self.final

    def abort(self) -> None:
        try:
            self._writer.close()
            self._sink.close()
        finally:
            self.staging.unlink(missing_ok=True)

    def __enter__(self) -> TokenizedWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()


@dataclass
class TokenizedFile:
    """A chat file's training rows on storage, and the validation report of the pass that wrote them."""

    path: Path
    report: dict[str, Any]
    reused: bool  # tokenized by an earlier pass (found), not by this one


def tokenize_file(
    path: str | Path,
    file_sha256: str,
    tokenizer: Any,
    folder: str | Path,
    max_seq_length: int,
    train_on_inputs: bool,
    progress: Callable[[int, int], None] | None = None,
    processes: int = 1,
    file_format: str = CHAT,
) -> TokenizedFile:
    """The file's rows for this tokenizer and these settings, in `folder`: found there, or tokenized now,
    with the report (training.data_report.file_report, or training.preference.preference_report for a
    preference file, tokenized in this process) in the same pass, and kept beside them (the rows' name with
    `.json`) for the next pass to reuse. `file_sha256` is the file's recorded digest."""
    fingerprint = tokenizer_fingerprint(tokenizer)
    final = Path(folder) / cache_name(file_sha256, fingerprint, max_seq_length, train_on_inputs, file_format)
    report_path = final.with_suffix(".json")
    if final.is_file() and report_path.is_file():
        return TokenizedFile(final, json.loads(report_path.read_text()), reused=True)
    if file_format == PREFERENCE:
        with TokenizedWriter(final, len(tokenizer), preference_row_schema) as writer:
            report = preference_report(path, tokenizer, max_seq_length, progress, rows=writer)
            _keep_report(report_path, report)
        return TokenizedFile(final, report, reused=False)
    with TokenizedWriter(final, len(tokenizer)) as writer:
        report = file_report(path, tokenizer, max_seq_length, train_on_inputs, progress, processes, rows=writer)
        _keep_report(report_path, report)
    return TokenizedFile(final, report, reused=False)


def _keep_report(report_path: Path, report: dict[str, Any]) -> None:
    """The report beside the rows, written before them (rows on storage always have their report)."""
    # A unique staging name: two validators may tokenize the same file at once (jobs on one file); both
    # write the same bytes and the last rename wins.
    fd, staging = tempfile.mkstemp(prefix=f".{report_path.name}.", dir=report_path.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(report))
    fsync_rename(Path(staging), report_path)


def open_tokenized(path: str | Path) -> Dataset:
    """The rows as a `datasets.Dataset` backed by the memory-mapped file (nothing is read into memory)."""
    from datasets import Dataset

    return Dataset.from_file(str(path))


def row_lengths(dataset: Dataset) -> Any:
    """Each row's token count, as a numpy array computed by Arrow from the mapped column's offsets (the
    rows themselves are not read)."""
    import pyarrow.compute as pc

    return pc.list_value_length(dataset.data.column("input_ids")).to_numpy()
