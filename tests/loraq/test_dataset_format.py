"""The chat JSONL checker, line by line."""

from __future__ import annotations

import json

import pytest

from loraq.dataset_format import DatasetFormatError, check_file, read_examples, read_placed_examples

GOOD = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello", "weight": 1},
    ]
}


def write(tmp_path, data: bytes):
    path = tmp_path / "data.jsonl"
    path.write_bytes(data)
    return path


def test_valid_file_counts_examples_and_skips_blank_lines(tmp_path):
    path = write(tmp_path, (json.dumps(GOOD) + "\n\n" + json.dumps(GOOD) + "\n").encode())
    report = check_file(path)
    assert report.ok and report.examples == 2
    assert len(read_examples(path)) == 2


def test_placed_examples_carry_the_bytes_read_through_their_line(tmp_path):
    line = (json.dumps(GOOD) + "\n").encode()
    path = write(tmp_path, line + b"\n" + line)  # a blank line 2 between them
    assert [(number, read) for number, read, _ in read_placed_examples(path)] == [
        (1, len(line)),
        (3, 2 * len(line) + 1),  # the last one ends at the file's size
    ]


def test_reports_first_errors_with_line_numbers_and_counts_the_rest(tmp_path):
    lines = [json.dumps(GOOD)] + ["{bad"] * 15
    report = check_file(write(tmp_path, "\n".join(lines).encode()), max_errors=3)
    assert not report.ok and report.error_count == 15 and len(report.errors) == 3
    assert report.errors[0].startswith("line 2: invalid JSON")
    assert report.summary().endswith("and 12 more invalid line(s)")


@pytest.mark.parametrize(
    ("example", "message"),
    [
        ({"messages": []}, "`messages` must be a non-empty list"),
        ({"prompt": "x"}, "`messages` must be a non-empty list"),
        ({"messages": ["hi"]}, "messages[0] must be an object"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role must be one of"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content must be a non-empty string"),
        ({"messages": [{"role": "user", "content": "   "}]}, "messages[0].content must be a non-empty string"),
        ({"messages": [{"role": "user", "content": "x", "weight": 0}]}, "messages[0].weight is only allowed"),
        ({"messages": [{"role": "assistant", "content": "x", "weight": True}]}, "weight must be 0 or 1"),
        ({"messages": [{"role": "user", "content": "x"}]}, "no assistant message"),
    ],
)
def test_invalid_examples_name_the_field(tmp_path, example, message):
    path = write(tmp_path, (json.dumps(example) + "\n").encode())
    report = check_file(path)
    assert report.error_count == 1 and message in report.errors[0] and report.errors[0].startswith("line 1:")
    with pytest.raises(DatasetFormatError, match="line 1"):
        read_examples(path)


def test_weight_zero_assistant_is_valid(tmp_path):
    example = {
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "a", "weight": 0},
            {"role": "user", "content": "q2"},
            {"role": "assistant", "content": "b"},
        ]
    }
    assert check_file(write(tmp_path, (json.dumps(example) + "\n").encode())).ok


def test_empty_and_deeply_nested_files(tmp_path):
    assert not check_file(write(tmp_path, b"")).ok
    assert "no examples" in check_file(write(tmp_path, b"")).summary()
    nested = b"[" * 100000 + b"]" * 100000 + b"\n"
    report = check_file(write(tmp_path, nested))
    assert report.error_count == 1 and report.errors[0].startswith("line 1:")


def test_a_null_line_is_an_error_not_a_blank_line(tmp_path):
    report = check_file(write(tmp_path, b"null\n\n"))
    assert report.error_count == 1 and report.errors == ["line 1: expected a JSON object, got NoneType"]
