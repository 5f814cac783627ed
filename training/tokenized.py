"""Tokenized datasets on storage: a chat file's rows tokenized once, into an Arrow file that training
memory-maps.

The validation stage writes it (the same tokenization and loss masks as training.dataset), keyed by
everything that determines its rows: the file's sha256, the tokenizer and chat template, `max_seq_length`
and `train_on_inputs`. Rows are written in record batches to a temporary name and renamed into place, so a
reader never sees half a file. Training opens it with `datasets.Dataset.from_file`, which maps it into
memory: the rows stay on disk (the page cache) and a training process's memory does not grow with the
dataset. The format is the `datasets` library's own (an Arrow IPC stream).

Imports no torch; pyarrow only when rows are written or read.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset

# Raised whenever the rows a given input produces change (the tokenization, the masks, the columns).
FORMAT_VERSION = 1
BATCH_ROWS = 1024


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A digest of what the tokenizer does to a conversation: its vocabulary and rules (the fast tokenizer's
    full JSON), its special tokens and its chat template. Two folders holding the same tokenizer agree."""
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update(
        backend.to_str().encode() if backend is not None else repr(sorted(tokenizer.get_vocab().items())).encode()
    )
    digest.update(json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str).encode())
    digest.update((tokenizer.chat_template or "").encode() if isinstance(tokenizer.chat_template, str) else
                  json.dumps(tokenizer.chat_template, sort_keys=True).encode())  # fmt: skip
    return digest.hexdigest()


def cache_name(file_sha256: str, fingerprint: str, max_seq_length: int, train_on_inputs: bool) -> str:
    """The file name of the tokenized rows for these inputs (the same inputs always give the same rows)."""
    key = json.dumps(
        {
            "format": FORMAT_VERSION,
            "file_sha256": file_sha256,
            "tokenizer": fingerprint,
            "max_seq_length": max_seq_length,
            "train_on_inputs": train_on_inputs,
        },
        sort_keys=True,
    )
    return hashlib.sha256(key.encode()).hexdigest()[:32] + ".arrow"


def id_type_for(vocab_size: int) -> str:
    """The narrowest unsigned type that holds every token id."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


class TokenizedWriter:
    """Writes tokenized rows (`input_ids`, `labels` with -100 where the loss does not look, and the file's
    `line`) to `final`, in record batches, under a temporary name until `commit`. Used as a context manager,
    an exception discards the partial file."""

    def __init__(self, final: Path, vocab_size: int):
        import pyarrow as pa

        self.final = Path(final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        id_type = getattr(pa, id_type_for(vocab_size))()
        self.schema = pa.schema(
            [("input_ids", pa.list_(id_type)), ("labels", pa.list_(pa.int32())), ("line", pa.int64())]
        )
        fd, name = tempfile.mkstemp(prefix=f".{self.final.name}.", dir=self.final.parent)
        os.close(fd)
        self.staging = Path(name)
        self._sink = pa.OSFile(str(self.staging), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self.schema)
        self._rows: dict[str, list] = {"input_ids": [], "labels": [], "line": []}
        self.rows = 0

    def write(self, input_ids: list[int], labels: list[int], line: int) -> None:
        self._rows["input_ids"].append(input_ids)
        self._rows["labels"].append(labels)
        self._rows["line"].append(line)
        self.rows += 1
        if len(self._rows["line"]) >= BATCH_ROWS:
            self._flush()

    def write_batch(self, batch: Any) -> None:
        """Append a pyarrow RecordBatch or Table of this schema (rows tokenized elsewhere, e.g. in another
        process)."""
        self._flush()
        self._writer.write(batch)
        self.rows += batch.num_rows

    def _flush(self) -> None:
        import pyarrow as pa

        if self._rows["line"]:
            self._writer.write_batch(pa.record_batch(self._rows, schema=self.schema))
            self._rows = {"input_ids": [], "labels": [], "line": []}

    def commit(self) -> Path:
        """Close the file, flush it to disk and rename it into place."""
        self._flush()
        self._writer.close()
        self._sink.close()
        with open(self.staging, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(self.staging, self.final)
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


def open_tokenized(path: str | Path) -> Dataset:
    """The rows as a `datasets.Dataset` backed by the memory-mapped file (nothing is read into memory)."""
    from datasets import Dataset

    return Dataset.from_file(str(path))
