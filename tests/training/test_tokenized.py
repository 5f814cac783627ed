"""Tokenizing once: the one-render masks and batched tokenizer calls give exactly the row-by-row reference's
tokens and labels for every template shape; the tokenized copy holds exactly the rows training used to build
row by row, in file order, whether one process or a pool tokenized it; it is found and reused; training
memory-maps it."""

from __future__ import annotations

import json
import time

import psutil
import pytest

import training.dataset as dataset_module
from loraq.dataset_format import DatasetFormatError
from tests.facts import chat_rows, write_jsonl
from tests.training.test_loss_masks import LLAMA3_TEMPLATE, MULTI, QWEN25_TEMPLATE, SINGLE, WEIGHTED
from training.data_report import file_report
from training.dataset import tokenized_lines
from training.loss_masks import (
    MaskError,
    ReplyMarkers,
    encode_with_masks,
    reply_markers,
    supervised_count,
    tokenize_with_mask,
)
from training.tiny_model import CHAT_TEMPLATE, build_tiny_tokenizer
from training.tokenized import open_tokenized, row_lengths, tokenize_file, tokenizer_fingerprint

TEMPLATES = {"tiny": CHAT_TEMPLATE, "qwen2.5": QWEN25_TEMPLATE, "llama3": LLAMA3_TEMPLATE}
REPEATED_REPLY = [
    {"role": "user", "content": "Say OK."},
    {"role": "assistant", "content": "OK."},
    {"role": "user", "content": "Again."},
    {"role": "assistant", "content": "OK."},
]
WHITESPACE = [{"role": "user", "content": " padded "}, {"role": "assistant", "content": "ends with a newline\n"}]
CONVERSATIONS = [SINGLE, MULTI, WEIGHTED, REPEATED_REPLY, *[row["messages"] for row in chat_rows()]]


def tokenizer_with(template: str):
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = template
    return tokenizer


def assert_same_as_reference(tokenizer, conversations, train_on_inputs):
    fast = encode_with_masks(tokenizer, conversations, train_on_inputs)
    for (input_ids, labels), messages in zip(fast, conversations, strict=True):
        reference = tokenize_with_mask(tokenizer, messages, None, train_on_inputs)
        assert input_ids.tolist() == reference["input_ids"] and labels.tolist() == reference["labels"]


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("train_on_inputs", [False, True])
def test_one_render_gives_the_incremental_tokens_and_labels(name, train_on_inputs):
    tokenizer = tokenizer_with(TEMPLATES[name])
    assert isinstance(reply_markers(tokenizer), ReplyMarkers)  # the fast path is the one under test
    assert_same_as_reference(tokenizer, CONVERSATIONS, train_on_inputs)


def test_a_reply_the_markers_cannot_place_falls_back_to_the_incremental_render():
    tokenizer = tokenizer_with(QWEN25_TEMPLATE)
    markers = reply_markers(tokenizer)
    rendered = tokenizer.apply_chat_template(REPEATED_REPLY, tokenize=False)
    assert markers.spans(rendered, REPEATED_REPLY) is None  # "OK." twice: not found exactly once
    assert_same_as_reference(tokenizer, [REPEATED_REPLY, WHITESPACE], False)
    # Llama 3's template trims the content: a padded reply is not found, and the incremental render refuses it.
    llama = tokenizer_with(LLAMA3_TEMPLATE)
    with pytest.raises(MaskError, match="rewrites"):
        tokenize_with_mask(llama, WHITESPACE)
    with pytest.raises(MaskError, match="rewrites") as raised:
        encode_with_masks(llama, [SINGLE, WHITESPACE], False)
    assert raised.value.index == 1


def test_a_template_without_markers_is_rendered_incrementally():
    # No generation prompt: each turn's text starts with its header, so the reply is not what follows it.
    no_prompt = CHAT_TEMPLATE.split("{%- if add_generation_prompt")[0]
    tokenizer = tokenizer_with(no_prompt)
    assert reply_markers(tokenizer) is None
    assert_same_as_reference(tokenizer, CONVERSATIONS, False)


# --------------------------------------------------------------------------- the file, in chunks


def mixed_file(path, copies=40):
    """Blank lines, weight-0 only rows, long rows and ordinary rows, repeated: many chunks once they are small."""
    long_row = {"messages": [{"role": "user", "content": "word " * 5}, {"role": "assistant", "content": "fine " * 80}]}
    nothing = {"messages": WEIGHTED[:2]}
    rows = [json.dumps(r) for r in (*chat_rows(), long_row, nothing)]
    path.write_text("".join("\n".join(rows) + "\n\n" for _ in range(copies)))
    return path


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 2 kB and a pool from 8 kB up, so a small file goes through many chunks and the processes."""
    monkeypatch.setattr(dataset_module, "CHUNK_BYTES", 2048)
    monkeypatch.setattr(dataset_module, "POOL_MIN_BYTES", 8192)


def reference_rows(path, tokenizer, max_length, train_on_inputs):
    """What training used to build in memory (load_examples): every row tokenized, the unsupervised left out."""
    rows = tokenized_lines(path, tokenizer, max_length, train_on_inputs)
    return [(line, row) for line, row in rows if supervised_count(row["labels"])]


@pytest.mark.parametrize("processes", [1, 2])
@pytest.mark.parametrize("train_on_inputs", [False, True])
def test_the_tokenized_copy_holds_the_reference_rows_in_file_order(tmp_path, small_chunks, processes, train_on_inputs):
    tokenizer = build_tiny_tokenizer()
    path = mixed_file(tmp_path / "t.jsonl")
    seen = []
    found = tokenize_file(
        path, "f" * 64, tokenizer, tmp_path / "tokenized", 64, train_on_inputs,
        progress=lambda rows, read: seen.append((rows, read)), processes=processes,
    )  # fmt: skip
    assert not found.reused and found.path.parent == tmp_path / "tokenized"
    dataset = open_tokenized(found.path)
    expected = reference_rows(path, tokenizer, 64, train_on_inputs)
    assert len(dataset) == len(expected) == found.report["usable_examples"]
    assert dataset["line"] == [line for line, _ in expected]
    assert dataset["input_ids"] == [row["input_ids"] for _, row in expected]
    assert dataset["labels"] == [row["labels"] for _, row in expected]
    assert row_lengths(dataset).tolist() == [len(row["input_ids"]) for _, row in expected]
    # The report is the one-process, unchunked report; progress came after every example, bytes in order.
    assert found.report == file_report(path, tokenizer, 64, train_on_inputs)
    assert [rows for rows, _ in seen] == list(range(1, found.report["examples"] + 1))
    assert [read for _, read in seen] == sorted(read for _, read in seen)


def test_a_second_pass_finds_the_copy_and_its_report(tmp_path):
    tokenizer = build_tiny_tokenizer()
    path = write_jsonl(tmp_path / "t.jsonl", chat_rows())
    first = tokenize_file(path, "a" * 64, tokenizer, tmp_path / "tok", 2048, False)
    written = first.path.stat().st_mtime_ns
    tokenizer(["padded", "and truncated"], padding=True, truncation=True, max_length=4)  # state each call resets
    tokenizer.pad_token = None  # the trainer sets it where a model has none
    again = tokenize_file(path, "a" * 64, tokenizer, tmp_path / "tok", 2048, False)
    assert again.reused and again.path == first.path and again.report == first.report
    assert again.path.stat().st_mtime_ns == written
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == sorted([first.path.name, f"{first.path.stem}.json"])
    # Anything that changes the rows names another copy: the file, the settings, the template.
    other_settings = tokenize_file(path, "a" * 64, tokenizer, tmp_path / "tok", 2048, True)
    other_file = tokenize_file(path, "b" * 64, tokenizer, tmp_path / "tok", 2048, False)
    assert not other_settings.reused and not other_file.reused
    assert len({first.path, other_settings.path, other_file.path}) == 3
    assert tokenizer_fingerprint(tokenizer) != tokenizer_fingerprint(tokenizer_with(QWEN25_TEMPLATE))


def test_two_validators_tokenizing_one_file_at_once_both_succeed(tmp_path, monkeypatch):
    """Jobs on one file are validated at once by different validators; neither may fail on the other's
    staging file. Both stage their report before either renames (the race CI met)."""
    import threading

    import training.tokenized as tokenized

    path = write_jsonl(tmp_path / "t.jsonl", chat_rows())
    staged = threading.Barrier(2, timeout=60)
    rename = tokenized.fsync_rename

    def rename_once_both_staged(staging, final):
        if final.suffix == ".json":
            staged.wait()
        rename(staging, final)

    monkeypatch.setattr(tokenized, "fsync_rename", rename_once_both_staged)
    results: list = []

    def validate(tokenizer):
        results.append(tokenize_file(path, "a" * 64, tokenizer, tmp_path / "tok", 2048, False))

    threads = [threading.Thread(target=validate, args=(build_tiny_tokenizer(),)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0].report == results[1].report
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == sorted(
        [results[0].path.name, f"{results[0].path.stem}.json"]
    )
    assert open_tokenized(results[0].path).num_rows == results[0].report["examples"]


@pytest.mark.parametrize("processes", [1, 2])
def test_errors_come_at_their_line_after_the_rows_before_them(tmp_path, small_chunks, processes):
    tokenizer = build_tiny_tokenizer()
    path = mixed_file(tmp_path / "t.jsonl", copies=20)
    lines = path.read_text().splitlines(keepends=True)
    lines[150] = "{not json\n"
    path.write_text("".join(lines))
    seen = []
    with pytest.raises(DatasetFormatError, match="line 151"):
        tokenize_file(
            path, "c" * 64, tokenizer, tmp_path / "tok", 64, False, lambda rows, _: seen.append(rows), processes
        )
    assert seen[-1] == sum(1 for line in lines[:150] if line.strip())
    assert not list((tmp_path / "tok").iterdir())  # no copy, and no half-written one
    unmaskable = tokenizer_with("{{ messages[-1]['role'] + ': ' + messages[-1]['content'] }}")
    with pytest.raises(MaskError, match=r"t\.jsonl, line 1: the chat template"):
        tokenize_file(path, "c" * 64, unmaskable, tmp_path / "tok", 64, False, None, processes)


def tokenizing_processes(parent: psutil.Process) -> list[psutil.Process]:
    """A pool's processes (multiprocessing's resource tracker, also a child, lives on)."""
    return [child for child in parent.children() if "spawn_main" in " ".join(child.cmdline())]


def test_a_stop_from_the_progress_callback_ends_the_processes(tmp_path, small_chunks):
    class Stop(Exception):
        pass

    def stop_at(rows: int, _read: int) -> None:
        if rows == 100:
            raise Stop

    path = mixed_file(tmp_path / "t.jsonl", copies=200)
    with pytest.raises(Stop):
        tokenize_file(path, "d" * 64, build_tiny_tokenizer(), tmp_path / "tok", 64, False, stop_at, processes=2)
    deadline = time.monotonic() + 5
    while tokenizing_processes(psutil.Process()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not list((tmp_path / "tok").iterdir())


# --------------------------------------------------------------------------- training on it


@pytest.mark.training
def test_training_memory_maps_the_copy_and_records_the_given_sha256(tmp_path):
    from transformers import AutoTokenizer

    from loraq.job_spec import Hyperparameters
    from training.config import TrainingConfig
    from training.progress import ProgressCallback, ProgressWriter
    from training.sft import build_trainer, resolve_base_model, train

    data = write_jsonl(tmp_path / "t.jsonl", chat_rows())
    config = TrainingConfig(
        base_model="loraq-tiny-chat",
        model_cache_dir=str(tmp_path / "cache"),
        train_path=str(data),
        train_sha256="e" * 64,  # as the upload recorded it: never hashed again
        train_tokenized_dir=str(tmp_path / "tokenized"),
        output_dir=str(tmp_path / "adapter"),
        checkpoint_dir=str(tmp_path / "checkpoints"),
        hyperparameters=Hyperparameters(n_epochs=1, max_steps=1, gradient_accumulation_steps=1),
    )
    model_path = resolve_base_model(config)
    tokenizer = AutoTokenizer.from_pretrained(model_path)  # as the validator loads it
    validated = tokenize_file(data, "e" * 64, tokenizer, tmp_path / "tokenized", 2048, False)
    trainer = build_trainer(config, model_path, ProgressCallback(ProgressWriter(None), None))
    assert [f["filename"] for f in trainer.train_dataset.cache_files] == [str(validated.path)]  # mapped, not copied
    assert trainer.train_dataset.column_names == ["input_ids", "labels"]
    assert trainer.train_dataset["input_ids"] == open_tokenized(validated.path)["input_ids"]
    assert train(config)["type"] == "completed"
    record = json.loads((tmp_path / "adapter" / "loraq.json").read_text())
    assert record["datasets"] == {"train_sha256": "e" * 64, "eval_sha256": None}
    assert sorted(p.name for p in (tmp_path / "tokenized").iterdir()) == sorted(
        [validated.path.name, f"{validated.path.stem}.json"]
    )  # the validation stage's copy, reused: nothing written beside it
