"""The preference (DPO) JSONL checker, and how a file's format is found, line by line."""

from __future__ import annotations

import json

import pytest

from loraq.dataset_format import DatasetFormatError, check_file, read_examples
from tests.facts import chat_rows, preference_rows

GOOD = {
    "input": {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital of Zorbania?"}],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}],
        "parallel_tool_calls": True,
    },
    "preferred_output": [{"role": "assistant", "content": "Quillton."}],
    "non_preferred_output": [{"role": "assistant", "content": "Paris."}],
}


def write(tmp_path, rows: list) -> object:
    path = tmp_path / "data.jsonl"
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def test_a_preference_file_is_detected_and_counted(tmp_path):
    path = write(tmp_path, [GOOD, "", *preference_rows()])
    report = check_file(path)
    assert report.ok and report.format == "preference" and report.examples == 1 + len(preference_rows())
    assert read_examples(path, "preference")[0] == GOOD
    assert check_file(write(tmp_path, chat_rows())).format == "chat"


def _with(**changes):
    example = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if value is None:
            example.pop(key)
        else:
            example[key] = value
    return example


USER = {"role": "user", "content": "q"}
REPLY = [{"role": "assistant", "content": "a"}]


@pytest.mark.parametrize(
    ("example", "message"),
    [
        (_with(input=None), "`input` must be an object holding `messages`"),
        (_with(input={"messages": []}), "`input.messages` must be a non-empty list"),
        (_with(input={"messages": [{"role": "robot", "content": "q"}]}), "input.messages[0].role must be one of"),
        (_with(input={"messages": [{"role": "user", "content": ""}]}), "input.messages[0].content must be a non-"),
        (_with(input={"messages": [USER, REPLY[0]]}), "`input.messages` must end with a user message"),
        (_with(input={"messages": [USER], "tools": "lookup"}), "`input.tools` must be a list of objects"),
        (_with(preferred_output=None), "`preferred_output` must be a list of exactly one assistant message"),
        (_with(non_preferred_output=REPLY * 2), "`non_preferred_output` must be a list of exactly one assistant"),
        (_with(preferred_output=[USER]), "preferred_output[0].role must be assistant"),
        (_with(non_preferred_output=[{"role": "assistant", "content": 3}]), "non_preferred_output[0].content must"),
        (_with(non_preferred_output=[{"role": "assistant", "content": "Quillton."}]), "hold the same reply"),
    ],
)
def test_invalid_preference_examples_name_the_line_and_the_field(tmp_path, example, message):
    path = write(tmp_path, [GOOD, GOOD, example])  # the file is a preference file from line 1
    report = check_file(path)
    assert report.error_count == 1 and report.errors[0].startswith("line 3: ") and message in report.errors[0]
    with pytest.raises(DatasetFormatError, match="line 3"):
        read_examples(path, "preference")


def test_mixed_formats_are_errors_named_by_line(tmp_path):
    chat_line = chat_rows()[0]
    report = check_file(write(tmp_path, [GOOD, chat_line, GOOD]))
    assert report.format == "preference" and report.error_count == 1
    assert report.errors[0].startswith("line 2: a chat example (`messages`) in a preference file")
    report = check_file(write(tmp_path, [chat_line, GOOD]))
    assert report.format == "chat" and report.errors[0].startswith("line 2: a preference example (`input`")


def test_a_line_of_neither_format_says_what_a_line_holds(tmp_path):
    report = check_file(write(tmp_path, [{"prompt": "x", "chosen": "y"}, GOOD]))
    assert report.errors[0].startswith("line 1: `messages` must be a non-empty list (a chat example), or the line")
    assert report.format == "preference" and report.examples == 1


def test_a_chat_reader_refuses_a_preference_file_by_line(tmp_path):
    with pytest.raises(DatasetFormatError, match="line 1: a preference example"):
        read_examples(write(tmp_path, [GOOD]))
