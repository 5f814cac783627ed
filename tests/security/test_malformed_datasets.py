"""A corpus of malformed dataset files: each gets a 400 naming its line, and the server stays healthy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.calls import upload

pytestmark = pytest.mark.e2e

CORPUS = Path(__file__).resolve().parents[1] / "data" / "malformed"
EXPECTED = json.loads((CORPUS / "expected.json").read_text())


def _rejected(client, content: bytes, name: str, fragment: str) -> None:
    response = upload(client, content, filename=name)
    assert response.status_code == 400, (name, response.status_code, response.text[:300])
    error = response.json()["error"]
    assert fragment in error["message"], (name, error["message"][:300])
    assert error["param"] == "file" and error["code"] == "invalid_file_format"
    assert client.get("/healthz").status_code == 200


def test_corpus_has_at_least_thirty_files():
    assert len(EXPECTED) >= 30 and all((CORPUS / name).exists() for name in EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_malformed_file_rejected_with_its_line(client, name):
    _rejected(client, (CORPUS / name).read_bytes(), name, EXPECTED[name])


def test_a_single_50_mb_line(client):
    content = json.dumps({"messages": [{"role": "user", "content": "a" * (50 * 1024 * 1024)}]}).encode() + b"\n"
    _rejected(client, content, "huge-line.jsonl", "line 1: `messages` has no assistant message")


def test_deeply_nested_json(client):
    _rejected(client, b"[" * 200_000 + b"]" * 200_000 + b"\n", "nested.jsonl", "line 1: ")
