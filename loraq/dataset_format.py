"""The chat JSONL format: one `{"messages": [{"role", "content"}, ...]}` object per line.

Shared by the API (checked at upload, line by line, without reading the file into memory) and by the
training program (which reads the rows it trains on through the same parser).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")
MAX_REPORTED_ERRORS = 10


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


def check_example(obj: Any) -> dict:
    """Return the example if it is a valid chat example, else raise ValueError naming the field."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("`messages` must be a non-empty list")
    has_assistant = False
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ValueError(f"{where} must be an object")
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"{where}.role must be one of {', '.join(ROLES)} (got {role!r})")
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"{where}.content must be a non-empty string")
        if "weight" in message:
            if role != "assistant":
                raise ValueError(f"{where}.weight is only allowed on assistant messages")
            if message["weight"] not in (0, 1) or isinstance(message["weight"], bool):
                raise ValueError(f"{where}.weight must be 0 or 1 (got {message['weight']!r})")
        has_assistant = has_assistant or role == "assistant"
    if not has_assistant:
        raise ValueError("`messages` has no assistant message to learn from")
    return obj


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as handle:
        yield from enumerate(handle, start=1)


def parse_line(number: int, raw: bytes) -> dict | None:
    """Parse one line; None for a blank line; DatasetFormatError for anything invalid."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(number, f"not valid UTF-8 (byte {exc.start})") from None
    if number == 1 and text.startswith("\ufeff"):
        raise DatasetFormatError(number, "starts with a UTF-8 byte-order mark; save the file without a BOM")
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except RecursionError:
        raise DatasetFormatError(number, "JSON nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(number, f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    try:
        return check_example(obj)
    except ValueError as exc:
        raise DatasetFormatError(number, str(exc)) from None


def check_file(
    path: str | Path, max_examples: int | None = None, max_errors: int = MAX_REPORTED_ERRORS
) -> FormatReport:
    """Check every line of a JSONL file, keeping the first `max_errors` messages."""
    report = FormatReport()
    for number, raw in _lines(Path(path)):
        if max_examples is not None and report.examples >= max_examples and raw.strip():
            report.too_many = max_examples
            break
        try:
            example = parse_line(number, raw)
        except DatasetFormatError as exc:
            report.error_count += 1
            if len(report.errors) < max_errors:
                report.errors.append(str(exc))
            continue
        if example is not None:
            report.examples += 1
    return report


def read_numbered_examples(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, example) for every example of a file, raising DatasetFormatError at an invalid line."""
    for number, _, example in read_placed_examples(path):
        yield number, example


def read_placed_examples(path: str | Path) -> Iterator[tuple[int, int, dict]]:
    """(line number, bytes read through the end of that line, example): read_numbered_examples with the
    position in the file, for reporting progress through a large one."""
    read = 0
    for number, raw in _lines(Path(path)):
        read += len(raw)
        example = parse_line(number, raw)
        if example is not None:
            yield number, read, example


def read_examples(path: str | Path) -> list[dict]:
    """All examples of a file, raising DatasetFormatError at the first invalid line."""
    return [example for _, example in read_numbered_examples(path)]
