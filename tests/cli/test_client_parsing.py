"""The client commands' own parsing: --hp values, where the server and key come from, SSE frames."""

from __future__ import annotations

import argparse

import pytest

from cli.client.connection import EMBEDDED_URL, CommandError, resolve_target
from cli.client.events import Frame, parse_frames
from cli.client.parser import hyperparameter


def test_hyperparameter_values_are_json_where_they_parse():
    assert hyperparameter("n_epochs=3") == ("n_epochs", 3)
    assert hyperparameter("learning_rate=2e-4") == ("learning_rate", 2e-4)
    assert hyperparameter('target_modules=["q_proj","v_proj"]') == ("target_modules", ["q_proj", "v_proj"])
    assert hyperparameter("train_on_inputs=true") == ("train_on_inputs", True)
    assert hyperparameter("lr_scheduler_type=linear") == ("lr_scheduler_type", "linear")
    assert hyperparameter("suffix=a=b") == ("suffix", "a=b")
    with pytest.raises(argparse.ArgumentTypeError):
        hyperparameter("n_epochs")


def test_server_and_key_come_from_flags_then_loraq_then_openai_then_the_data_folder(monkeypatch, tmp_path):
    for name in ("LORAQ_BASE_URL", "LORAQ_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LORAQ_DATA_DIR", str(tmp_path))
    with pytest.raises(CommandError, match="no API key"):
        resolve_target(None, None)
    (tmp_path / "api_key").write_text("lq-embedded\n")
    assert resolve_target(None, None) == (EMBEDDED_URL, "lq-embedded")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://openai-like/v1/")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")
    assert resolve_target(None, None) == ("http://openai-like/v1", "sk-openai")
    monkeypatch.setenv("LORAQ_BASE_URL", "http://loraq/v1")
    monkeypatch.setenv("LORAQ_API_KEY", "lq-env")
    assert resolve_target(None, None) == ("http://loraq/v1", "lq-env")
    assert resolve_target("http://flag/v1", "lq-flag") == ("http://flag/v1", "lq-flag")


def test_sse_frames():
    lines = [": ping", "", "id: ftevent-1", 'data: {"a": 1}', "", "event: end", 'data: {"status": "failed"}', ""]
    assert list(parse_frames(lines)) == [
        Frame("message", '{"a": 1}', "ftevent-1"),
        Frame("end", '{"status": "failed"}', None),
    ]
