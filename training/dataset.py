"""A chat JSONL file as the examples training sees: each row tokenized with its loss labels.

One loader for the validation report (training.data_report), which counts what training will see, and the
tokenized copy training memory-maps (training.tokenized): the same tokenization and loss masks
(training.loss_masks), so the report's figures are the trained ones. The file is cut into chunks of whole
lines, each tokenized with one batched tokenizer call; the chunks are tokenized in this process or, for a
large file, by a pool of processes, and always come back in file order, so every figure, line number and
row is the one a row-by-row pass gives (`tokenized_lines`, the reference the tests hold the chunks to).
Imports no torch: the validator process only needs a tokenizer.
"""

from __future__ import annotations

import os
import signal
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from loraq.dataset_format import DatasetFormatError, parse_line, read_placed_examples
from training.loss_masks import IGNORE_INDEX, MaskError, encode_with_masks, tokenize_with_mask

# A few hundred rows: a fraction of a second of work, so a stop (cancel, shutdown) is seen quickly.
CHUNK_BYTES = 1 << 18
# Smaller files are tokenized in the calling process: starting processes would cost more than it saves.
POOL_MIN_BYTES = 8 * CHUNK_BYTES
CHUNKS_PER_PROCESS = 2  # queued ahead, so no process waits for the next chunk to be read


def tokenized_lines(
    path: str | Path, tokenizer, max_length: int | None, train_on_inputs: bool
) -> Iterator[tuple[int, dict[str, list[int]]]]:
    """(line number, tokens and labels) for every example of a file, one row at a time: the reference path.
    Raises MaskError naming the file and the line when the template cannot be masked."""
    for line, _, example in read_placed_examples(path):
        try:
            yield line, tokenize_with_mask(tokenizer, example["messages"], max_length, train_on_inputs)
        except MaskError as exc:
            raise MaskError(f"{Path(path).name}, line {line}: {exc}") from None


# --------------------------------------------------------------------------- rows as Arrow


def row_schema(id_type: str) -> Any:
    """The tokenized rows' columns: token ids (the narrowest type holding the vocabulary), labels (-100
    where the loss does not look) and the file's line number."""
    import pyarrow as pa

    return pa.schema(
        [("input_ids", pa.list_(getattr(pa, id_type)())), ("labels", pa.list_(pa.int32())), ("line", pa.int64())]
    )


def rows_batch(input_ids: list[np.ndarray], labels: list[np.ndarray], lines: list[int], id_type: str) -> Any:
    """One pyarrow RecordBatch of rows, built from whole arrays (no Python list per token)."""
    import pyarrow as pa

    offsets = pa.array(np.cumsum([0] + [len(row) for row in input_ids], dtype=np.int32))
    schema = row_schema(id_type)
    columns = [
        pa.ListArray.from_arrays(offsets, pa.array(_flat(input_ids, id_type))),
        pa.ListArray.from_arrays(offsets, pa.array(_flat(labels, "int32"))),
        pa.array(lines, type=pa.int64()),
    ]
    return pa.record_batch(columns, schema=schema)


def _flat(rows: list[np.ndarray], dtype: str) -> np.ndarray:
    return np.concatenate(rows).astype(dtype) if rows else np.zeros(0, dtype=dtype)


# --------------------------------------------------------------------------- chunks


@dataclass
class Chunk:
    """Whole lines of a file: the first one's number, the bytes before it, and the bytes."""

    first_line: int
    offset: int
    data: bytes


@dataclass
class TokenizedChunk:
    """A chunk's examples, in file order: per example its line, the bytes read through it, its tokens and
    supervised tokens (whole), and whether training keeps it (a supervised token left after truncation);
    `rows` holds the kept rows, truncated. `error` is the first invalid line or unmaskable example: the
    examples before it are here, and the reader raises it after them, as a row-by-row pass would."""

    lines: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    supervised: list[int] = field(default_factory=list)
    kept: list[bool] = field(default_factory=list)
    rows: Any = None
    error: Exception | None = None


def file_chunks(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Chunk]:
    """The file in chunks of about `chunk_bytes`, each ending at the end of a line (or of the file)."""
    first_line, offset, carry = 1, 0, b""
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            data = carry + block
            cut = data.rfind(b"\n") + 1
            if cut == 0:  # one line longer than a block: keep reading it
                carry = data
                continue
            yield Chunk(first_line, offset, data[:cut])
            first_line += data.count(b"\n", 0, cut)
            offset += cut
            carry = data[cut:]
    if carry:
        yield Chunk(first_line, offset, carry)


def _raw_lines(data: bytes) -> Iterator[bytes]:
    """The lines of `data` with their newlines, as iterating over a file opened in binary mode gives them."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start) + 1 or len(data)
        yield data[start:end]
        start = end


def tokenize_chunk(tokenizer, chunk: Chunk, max_length: int | None, train_on_inputs: bool, id_type: str):
    """Parse and tokenize one chunk (training.loss_masks.encode_with_masks: one batched tokenizer call)."""
    out = TokenizedChunk()
    conversations, read = [], chunk.offset
    for number, raw in enumerate(_raw_lines(chunk.data), start=chunk.first_line):
        read += len(raw)
        try:
            example = parse_line(number, raw)
        except DatasetFormatError as exc:
            out.error = exc
            break
        if example is not None:
            out.lines.append(number)
            out.ends.append(read)
            conversations.append(example["messages"])
    try:
        encoded = encode_with_masks(tokenizer, conversations, train_on_inputs)
    except MaskError as exc:
        index = getattr(exc, "index", 0)
        out.error = MaskError(f"line {out.lines[index]}: {exc}")
        del out.lines[index:], out.ends[index:]
        encoded = encode_with_masks(tokenizer, conversations[:index], train_on_inputs)
    kept_ids, kept_labels, kept_lines = [], [], []
    for line, (input_ids, labels) in zip(out.lines, encoded, strict=True):
        out.lengths.append(len(input_ids))
        out.supervised.append(_supervised(labels))
        kept = _supervised(labels[:max_length]) > 0
        out.kept.append(kept)
        if kept:
            kept_ids.append(input_ids[:max_length])
            kept_labels.append(labels[:max_length])
            kept_lines.append(line)
    out.rows = rows_batch(kept_ids, kept_labels, kept_lines, id_type)
    return out


def _supervised(labels: np.ndarray) -> int:
    """training.loss_masks.supervised_count of an array: the first token's label never counts."""
    return int(np.count_nonzero(labels[1:] != IGNORE_INDEX))


def tokenized_chunks(
    path: str | Path, tokenizer, max_length: int | None, train_on_inputs: bool, id_type: str, processes: int = 1
) -> Iterator[TokenizedChunk]:
    """Every chunk of the file tokenized, in file order: in this process, or by `processes` processes for a
    file of POOL_MIN_BYTES or more. Closing the iterator early (an exception in the caller's loop) stops
    the processes once their current chunk is done."""
    if processes <= 1 or os.path.getsize(path) < POOL_MIN_BYTES:
        for chunk in file_chunks(path):
            yield tokenize_chunk(tokenizer, chunk, max_length, train_on_inputs, id_type)
        return
    import multiprocessing

    # Spawned (fresh interpreters, a second or two to start), not forked from the validator's threads, and
    # children of this thread, so the kernel ends them with it (a fork server's children would outlive a
    # killed validator: each holds the server's keep-alive pipe, and the server waits for them).
    executor = ProcessPoolExecutor(
        processes, mp_context=multiprocessing.get_context("spawn"), initializer=_start_process,
        initargs=(os.getpid(), tokenizer, max_length, train_on_inputs, id_type),
    )  # fmt: skip
    try:
        pending: deque = deque()
        for chunk in file_chunks(path):
            pending.append(executor.submit(_tokenize_in_process, chunk))
            if len(pending) >= CHUNKS_PER_PROCESS * processes:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


_process_job: tuple = ()


def _start_process(parent: int, tokenizer, max_length: int | None, train_on_inputs: bool, id_type: str) -> None:
    """In each pool process: the kernel kills it when its parent (thread) ends, even by SIGKILL; Ctrl-C and
    SIGTERM are the parent's to handle (it closes the pool); the job's settings are kept for its chunks."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism; threads would contend
    global _process_job
    _process_job = (tokenizer, max_length, train_on_inputs, id_type)


def _tokenize_in_process(chunk: Chunk) -> TokenizedChunk:
    tokenizer, max_length, train_on_inputs, id_type = _process_job
    return tokenize_chunk(tokenizer, chunk, max_length, train_on_inputs, id_type)
