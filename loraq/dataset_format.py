"""The dataset formats, one JSON object per line, checked line by line:

- `chat` (supervised fine-tuning): `{"messages": [{"role", "content"}, ...]}`;
- `preference` (DPO, OpenAI's shape): `{"input": {"messages": [...], "tools"?: [...]}, "preferred_output":
  [{"role": "assistant", "content"}], "non_preferred_output": [{"role": "assistant", "content"}]}`.

A file's format is the one its first example has; every line must have it. Shared by the API (checked at
upload, line by line, without reading the file into memory) and by the training program (which reads the
rows it trains on through the same parser).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")
MAX_REPORTED_ERRORS = 10
CHAT, PREFERENCE = "chat", "preference"
FORMATS = (CHAT, PREFERENCE)
# The keys that make a line a preference example (a chat example has `messages`).
PREFERENCE_KEYS = ("input", "preferred_output", "non_preferred_output")
OUTPUT_KEYS = ("preferred_output", "non_preferred_output")


class DatasetFormatError(ValueError):
    """A line that is not a valid chat example; the message names the line and the field."""

    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line, self.reason = line, message

    def __reduce__(self):  # raised in a process that tokenizes part of a file, re-raised by its parent
        return type(self), (self.line, self.reason)


@dataclass
class FormatReport:
    examples: int = 0
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    too_many: int | None = None  # the example limit, when the file exceeds it
    format: str | None = None  # the format of its first example (None: no line showed one)

    @property
    def ok(self) -> bool:
        return self.error_count == 0 and self.examples > 0 and self.too_many is None

    def summary(self) -> str:
        if self.too_many is not None:
            return f"the file holds more than {self.too_many} examples, the most one file may have"
        if self.examples == 0 and self.error_count == 0:
            return "the file holds no examples (every line is blank)"
        more = self.error_count - len(self.errors)
        tail = f"; and {more} more invalid line(s)" if more > 0 else ""
        return "; ".join(self.errors) + tail


def example_format(obj: Any) -> str | None:
    """The format a parsed line has by its keys (before its fields are checked), or None when it shows none."""
    if not isinstance(obj, dict):
        return None
    if any(key in obj for key in PREFERENCE_KEYS):
        return PREFERENCE
    return CHAT if "messages" in obj else None


def _check_message(message: Any, where: str) -> None:
    if not isinstance(message, dict):
        raise ValueError(f"{where} must be an object")
    role = message.get("role")
    if role not in ROLES:
        raise ValueError(f"{where}.role must be one of {', '.join(ROLES)} (got {role!r})")
    content = message.get("content")
    if not isinstance(content, str) or not content.strip():
        raise ValueError(f"{where}.content must be a non-empty string")


def check_example(obj: Any) -> dict:
    """Return the example if it is a valid chat example, else raise ValueError naming the field."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if example_format(obj) == PREFERENCE:
        raise ValueError(_mixed(PREFERENCE, CHAT))
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("`messages` must be a non-empty list")
    has_assistant = False
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        _check_message(message, where)
        role = message["role"]
        if "weight" in message:
            if role != "assistant":
                raise ValueError(f"{where}.weight is only allowed on assistant messages")
            if message["weight"] not in (0, 1) or isinstance(message["weight"], bool):
                raise ValueError(f"{where}.weight must be 0 or 1 (got {message['weight']!r})")
        has_assistant = has_assistant or role == "assistant"
    if not has_assistant:
        raise ValueError("`messages` has no assistant message to learn from")
    return obj


def check_preference_example(obj: Any) -> dict:
    """Return the example if it is a valid preference (DPO) example, else raise ValueError naming the field:
    a prompt ending with a user turn, and one assistant reply preferred over another."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if example_format(obj) == CHAT:
        raise ValueError(_mixed(CHAT, PREFERENCE))
    prompt = obj.get("input")
    if not isinstance(prompt, dict):
        raise ValueError("`input` must be an object holding `messages`")
    messages = prompt.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("`input.messages` must be a non-empty list")
    for i, message in enumerate(messages):
        _check_message(message, f"input.messages[{i}]")
    if messages[-1]["role"] != "user":
        raise ValueError(
            f"`input.messages` must end with a user message, the turn the outputs answer (got {messages[-1]['role']!r})"
        )
    tools = prompt.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
        raise ValueError("`input.tools` must be a list of objects")
    for key in OUTPUT_KEYS:
        output = obj.get(key)
        if not isinstance(output, list) or len(output) != 1:
            raise ValueError(f"`{key}` must be a list of exactly one assistant message")
        _check_message(output[0], f"{key}[0]")
        if output[0]["role"] != "assistant":
            raise ValueError(f"{key}[0].role must be assistant (got {output[0]['role']!r})")
    if obj["preferred_output"][0]["content"] == obj["non_preferred_output"][0]["content"]:
        raise ValueError("`preferred_output` and `non_preferred_output` hold the same reply, nothing to prefer")
    return obj


def _mixed(found: str, expected: str) -> str:
    keys = {CHAT: "`messages`", PREFERENCE: "`input`, `preferred_output`, `non_preferred_output`"}
    return (
        f"a {found} example ({keys[found]}) in a {expected} file: every line must have the format of the "
        f"file's first example ({expected}: {keys[expected]})"
    )


CHECKS = {CHAT: check_example, PREFERENCE: check_preference_example}
UNKNOWN_FORMAT = (
    "`messages` must be a non-empty list (a chat example), or the line must hold `input`, `preferred_output` and "
    "`non_preferred_output` (a preference example)"
)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        yield from enumerate(handle, start=1)


BLANK = object()  # what _decode returns for a blank line (a line `null` decodes to None, which is an error)


def _decode(number: int, raw: bytes) -> Any:
    """A line's JSON value; BLANK for a blank line; DatasetFormatError when it is not JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(number, f"not valid UTF-8 (byte {exc.start})") from None
    if number == 1 and text.startswith("\ufeff"):
        raise DatasetFormatError(number, "starts with a UTF-8 byte-order mark; save the file without a BOM")
    if not text.strip():
        return BLANK
    try:
        return json.loads(text)
    except RecursionError:
        raise DatasetFormatError(number, "JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(number, f"invalid JSON ({exc.msg} at column {exc.colno})") from None


def _checked(number: int, obj: Any, file_format: str) -> dict:
    try:
        return CHECKS[file_format](obj)
    except ValueError as exc:
        raise DatasetFormatError(number, str(exc)) from None


def parse_line(number: int, raw: bytes, file_format: str = CHAT) -> dict | None:
    """Parse one line of a file of `file_format`; None for a blank line; DatasetFormatError for anything invalid."""
    obj = _decode(number, raw)
    return None if obj is BLANK else _checked(number, obj, file_format)


def check_file(
    path: str | Path, max_examples: int | None = None, max_errors: int = MAX_REPORTED_ERRORS
) -> FormatReport:
    """Check every line of a JSONL file, keeping the first `max_errors` messages. The file's format is its
    first example's (a line that shows none before then is an error saying what a line must hold)."""
    report = FormatReport()
    for number, raw in _lines(Path(path)):
        if max_examples is not None and report.examples >= max_examples and raw.strip():
            report.too_many = max_examples
            break
        try:
            obj = _decode(number, raw)
            if obj is BLANK:
                continue
            file_format = report.format or example_format(obj)
            if file_format is None and isinstance(obj, dict):
                raise DatasetFormatError(number, UNKNOWN_FORMAT)
            _checked(number, obj, file_format or CHAT)
        except DatasetFormatError as exc:
            report.error_count += 1
            if len(report.errors) < max_errors:
                report.errors.append(str(exc))
            continue
        report.format = file_format
        report.examples += 1
    return report


def read_numbered_examples(path: str | Path, file_format: str = CHAT) -> Iterator[tuple[int, dict]]:
    """(line number, example) for every example of a file, raising DatasetFormatError at an invalid line."""
    for number, _, example in read_placed_examples(path, file_format):
        yield number, example


def read_placed_examples(path: str | Path, file_format: str = CHAT) -> Iterator[tuple[int, int, dict]]:
    """(line number, bytes read through the end of that line, example): read_numbered_examples with the
    position in the file, for reporting progress through a large one."""
    read = 0
    for number, raw in _lines(Path(path)):
        read += len(raw)
        example = parse_line(number, raw, file_format)
        if example is not None:
            yield number, read, example


def read_examples(path: str | Path, file_format: str = CHAT) -> list[dict]:
    """All examples of a file, raising DatasetFormatError at the first invalid line."""
    return [example for _, example in read_numbered_examples(path, file_format)]
