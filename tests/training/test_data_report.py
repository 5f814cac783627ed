"""The validation report: examples and tokens as the base model's tokenizer sees them, long examples and
examples with nothing to learn named by line, and the run's estimated steps and tokens."""

from __future__ import annotations

import pytest

from tests.facts import chat_rows, write_jsonl
from training.data_report import describe, file_report, training_estimate
from training.loss_masks import MaskError, tokenize_with_mask
from training.tiny_model import build_tiny_tokenizer

WEIGHT_0 = {"messages": [{"role": "user", "content": "Say A."}, {"role": "assistant", "content": "B", "weight": 0}]}
LONG = {"messages": [{"role": "user", "content": "word " * 5}, {"role": "assistant", "content": "fine " * 80}]}
LATE_REPLY = {"messages": [{"role": "user", "content": "word " * 100}, {"role": "assistant", "content": "ok"}]}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def test_counts_match_the_training_tokenization(tmp_path, tokenizer):
    rows = chat_rows()
    report = file_report(write_jsonl(tmp_path / "t.jsonl", rows), tokenizer, 2048, train_on_inputs=False)
    examples = [tokenize_with_mask(tokenizer, r["messages"]) for r in rows]
    assert report["examples"] == report["usable_examples"] == len(rows)
    assert report["tokens"] == report["trained_tokens_per_epoch"] == sum(len(e["input_ids"]) for e in examples)
    assert report["supervised_tokens"] == sum(sum(x != -100 for x in e["labels"]) for e in examples)
    assert report["max_example_tokens"] == max(len(e["input_ids"]) for e in examples)
    assert report["long_examples"]["count"] == report["unsupervised_examples"]["count"] == 0


def test_long_and_unsupervised_examples_are_named_by_line(tmp_path, tokenizer):
    # Line 2 is blank (not an example); lines are the file's own numbers.
    path = tmp_path / "t.jsonl"
    write_jsonl(path, [chat_rows()[0]])
    with path.open("a") as handle:
        handle.write("\n")
    rows_after_blank = [LONG, WEIGHT_0, LATE_REPLY]
    with path.open("a") as handle:
        import json

        handle.writelines(json.dumps(r) + "\n" for r in rows_after_blank)
    report = file_report(path, tokenizer, 64, train_on_inputs=False)
    assert report["examples"] == 4
    assert report["long_examples"]["lines"] == [3, 5] and report["long_examples"]["count"] == 2
    # Line 4 has only a weight-0 reply; line 5's reply lies entirely past the 64-token cut.
    assert report["unsupervised_examples"]["lines"] == [4, 5]
    assert report["usable_examples"] == 2
    assert report["trained_tokens_per_epoch"] == len(tokenize_with_mask(tokenizer, chat_rows()[0]["messages"])[
        "input_ids"]) + 64  # fmt: skip
    text = describe(report, "training")
    assert "2 longer than 64 tokens (lines 3, 5): truncated to 64 tokens" in text
    assert "2 skipped (lines 4, 5)" in text
    # Training on whole conversations: nothing is unsupervised.
    assert file_report(path, tokenizer, 64, train_on_inputs=True)["usable_examples"] == 4


def test_estimate_is_steps_of_one_optimizer_batch(tmp_path, tokenizer):
    report = {"usable_examples": 10, "trained_tokens_per_epoch": 1000}
    assert training_estimate(report, batch_size=1, gradient_accumulation_steps=4, epochs=3) == {
        "estimated_steps": 9,  # ceil(10 / 4) = 3 per epoch
        "estimated_tokens": 3000,
        "examples_per_step": 4,
    }


def test_estimate_with_max_steps_is_that_many_steps_whatever_the_epochs():
    report = {"usable_examples": 10, "trained_tokens_per_epoch": 1000}
    # 3 steps per epoch: 6 steps are two epochs; 2 steps are two thirds of one.
    assert training_estimate(report, 1, 4, epochs=1, max_steps=6)["estimated_steps"] == 6
    assert training_estimate(report, 1, 4, epochs=1, max_steps=6)["estimated_tokens"] == 2000
    assert training_estimate(report, 1, 4, epochs=3, max_steps=2) == {
        "estimated_steps": 2,
        "estimated_tokens": 667,
        "examples_per_step": 4,
    }


def test_progress_reports_rows_and_bytes_without_changing_the_figures(tmp_path, tokenizer):
    path = tmp_path / "t.jsonl"
    write_jsonl(path, chat_rows())
    with path.open("a") as handle:
        handle.write("\n")  # a trailing blank line: read, but no example
    seen = []
    report = file_report(path, tokenizer, 2048, False, progress=lambda rows, read: seen.append((rows, read)))
    assert report == file_report(path, tokenizer, 2048, False)
    assert [rows for rows, _ in seen] == list(range(1, len(chat_rows()) + 1))
    reads = [read for _, read in seen]
    assert reads == sorted(reads) and reads[-1] == path.stat().st_size - 1

    class Stop(Exception):
        pass

    def stop_at_three(rows: int, _read: int) -> None:
        if rows == 3:
            raise Stop

    with pytest.raises(Stop):  # how a validator stops mid-file (cancelled, or shutting down)
        file_report(path, tokenizer, 2048, False, progress=stop_at_three)


def test_a_template_that_cannot_be_masked_names_the_line(tmp_path, tokenizer):
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = "{{ messages[-1]['role'] + ': ' + messages[-1]['content'] }}"
    path = write_jsonl(tmp_path / "t.jsonl", chat_rows()[:2])
    with pytest.raises(MaskError, match="line 1: the chat template"):
        file_report(path, tokenizer, 64, train_on_inputs=False)
