"""A preference file tokenized as DPO trains on it: TRL's own rows, the validation report, the cached copy."""

from __future__ import annotations

import types

import pytest

from tests.facts import preference_rows, write_jsonl
from training.data_report import describe
from training.preference import COLUMNS, encode_preferences, preference_report
from training.tiny_model import build_tiny_tokenizer
from training.tokenized import open_tokenized, tokenize_file

SENTENCE = "Tell me everything about the quick brown fox and the lazy dog, in great detail please. "
MULTI_TURN = {
    "input": {
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."},
            {"role": "user", "content": "And how many legs does a spider have?"},
        ]
    },
    "preferred_output": [{"role": "assistant", "content": "Eight legs."}],
    "non_preferred_output": [{"role": "assistant", "content": "It is blue."}],
}


def _rows() -> list[dict]:
    """The preference set, a multi-turn prompt, a long preferred output and (last) a long prompt."""
    long_output = preference_rows()[0] | {"preferred_output": [{"role": "assistant", "content": SENTENCE * 3}]}
    long_prompt = preference_rows()[0] | {"input": {"messages": [{"role": "user", "content": SENTENCE * 2}]}}
    return [*preference_rows(), MULTI_TURN, long_output, long_prompt]


def test_rows_are_the_ones_trl_prepares_for_dpo(tmp_path):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    tokenizer = build_tiny_tokenizer()
    rows = _rows()
    ours = encode_preferences(tokenizer, rows)
    as_trl_takes_them = Dataset.from_list(
        [{"prompt": r["input"]["messages"], "chosen": r["preferred_output"], "rejected": r["non_preferred_output"]}
         for r in rows]
    )  # fmt: skip
    args = DPOConfig(output_dir=str(tmp_path), max_length=None, bf16=False, report_to="none")
    stub = types.SimpleNamespace(_tokenizer=tokenizer)  # all that TRL's preparation reads of its trainer
    theirs = DPOTrainer._prepare_dataset(stub, as_trl_takes_them, tokenizer, args, "train")
    assert [tuple(row[name] for name in COLUMNS) for row in theirs] == [tuple(map(list, row)) for row in ours]
    assert all(prompt and chosen and rejected for prompt, chosen, rejected in ours)


def test_report_counts_tokens_and_names_long_and_dropped_lines(tmp_path):
    tokenizer = build_tiny_tokenizer()
    rows = _rows()
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    encoded = encode_preferences(tokenizer, rows)
    max_length = len(encoded[-1][0])  # the long prompt alone fills it: dropped; the long output is truncated
    assert max_length > max(len(p) for p, _, _ in encoded[:-1])

    seen = []
    report = preference_report(path, tokenizer, max_length, progress=lambda n, read: seen.append(n))
    assert seen == list(range(1, len(rows) + 1))
    assert report["format"] == "preference" and report["examples"] == len(rows)
    assert report["prompt_tokens"] == sum(len(p) for p, _, _ in encoded)
    assert report["chosen_tokens"] == sum(len(c) for _, c, _ in encoded)
    assert report["rejected_tokens"] == sum(len(r) for _, _, r in encoded)
    assert report["dropped_examples"]["count"] == 1 and report["dropped_examples"]["lines"] == [len(rows)]
    assert report["long_examples"]["count"] == 1 and report["long_examples"]["lines"] == [len(rows) - 1]
    assert report["usable_examples"] == len(rows) - 1
    kept = encoded[:-1]
    assert report["trained_tokens_per_epoch"] == sum(
        min(len(p) + len(c), max_length) + min(len(p) + len(r), max_length) for p, c, r in kept
    )
    line = describe(report, "training")
    assert f"{len(rows)} preference examples" in line and f"1 dropped (line {len(rows)})" in line


def test_tokenized_copy_holds_the_kept_rows_and_is_reused(tmp_path):
    tokenizer = build_tiny_tokenizer()
    rows = _rows()
    path = write_jsonl(tmp_path / "prefs.jsonl", rows)
    max_length = len(encode_preferences(tokenizer, rows[-1:])[0][0])
    first = tokenize_file(path, "a" * 64, tokenizer, tmp_path / "tok", max_length, False, file_format="preference")
    assert not first.reused and first.report["usable_examples"] == len(rows) - 1
    stored = open_tokenized(first.path)
    assert stored.column_names == [*COLUMNS, "line"] and stored["line"] == list(range(1, len(rows)))
    assert [tuple(row[c] for c in COLUMNS) for row in stored] == [
        tuple(map(list, row)) for row in encode_preferences(tokenizer, rows[:-1])
    ]
    again = tokenize_file(path, "a" * 64, tokenizer, tmp_path / "tok", max_length, False, file_format="preference")
    assert again.reused and again.path == first.path and again.report == first.report
    # The same bytes read as a chat file would be other rows: never the same cached copy.
    with pytest.raises(ValueError, match="line 1: a preference example"):
        tokenize_file(path, "a" * 64, tokenizer, tmp_path / "tok", max_length, False)
