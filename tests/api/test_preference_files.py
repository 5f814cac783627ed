"""Preference (DPO) files at upload, and files of the wrong format for a job's method: 400s naming the line
or the field, before anything is queued."""

from __future__ import annotations

import json

import pytest

from tests.api.conftest import auth
from tests.facts import chat_rows, preference_rows


def _jsonl(rows: list) -> bytes:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows).encode()


def _upload(app_client, rows: list):
    files = {"file": ("data.jsonl", _jsonl(rows))}
    return app_client.post("/v1/files", headers=auth("alice"), files=files, data={"purpose": "fine-tune"})


def test_a_preference_file_shows_its_format(app_client):
    response = _upload(app_client, preference_rows())
    assert response.status_code == 200, response.text
    record = response.json()
    assert record["format"] == "preference" and record["examples"] == len(preference_rows())
    assert record["status"] == "processed"
    assert app_client.get(f"/v1/files/{record['id']}", headers=auth("alice")).json()["format"] == "preference"
    assert _upload(app_client, chat_rows()).json()["format"] == "chat"


def test_malformed_preference_lines_are_named_by_line_and_field(app_client):
    good = preference_rows()
    same = good[1] | {"non_preferred_output": good[1]["preferred_output"]}
    no_output = {k: v for k, v in good[2].items() if k != "preferred_output"}
    rows = [good[0], same, "{not json", no_output, chat_rows()[0], good[3]]
    response = _upload(app_client, rows)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "file" and error["code"] == "invalid_file_format"
    message = error["message"]
    assert "line 2: `preferred_output` and `non_preferred_output` hold the same reply" in message
    assert "line 3: invalid JSON" in message
    assert "line 4: `preferred_output` must be a list of exactly one assistant message" in message
    assert "line 5: a chat example (`messages`) in a preference file" in message
    assert "line 1" not in message and "line 6" not in message
    kept = app_client.get(f"/v1/files/{error['file_id']}", headers=auth("alice")).json()
    assert kept["status"] == "error" and kept["format"] == "preference"


def _job(app_client, **body):
    return app_client.post("/v1/fine_tuning/jobs", headers=auth("alice"), json={"model": "loraq-tiny-chat", **body})


@pytest.fixture
def files(app_client) -> dict[str, str]:
    return {
        "chat": _upload(app_client, chat_rows()).json()["id"],
        "preference": _upload(app_client, preference_rows()).json()["id"],
    }


DPO = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}}


@pytest.mark.parametrize(
    ("method", "training", "validation", "param", "words"),
    [
        (None, "preference", None, "training_file", "holds preference examples (`input`, `preferred_output`"),
        ({"type": "supervised"}, "preference", None, "training_file", "a supervised job trains on chat examples"),
        (DPO, "chat", None, "training_file", "holds chat examples (`messages`), but a dpo job trains on preference"),
        (DPO, "preference", "chat", "validation_file", "holds chat examples"),
        (None, "chat", "preference", "validation_file", "holds preference examples"),
    ],
)
def test_a_file_of_the_other_format_is_a_400_naming_it(app_client, files, method, training, validation, param, words):
    body = {"training_file": files[training], **({"method": method} if method else {})}
    if validation:
        body["validation_file"] = files[validation]
    response = _job(app_client, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["code"] == "invalid_file_format" and words in error["message"]


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}}, "method.dpo.hyperparameters.beta", ""),
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": {"train_on_inputs": True}}}},
            "method.dpo.hyperparameters.train_on_inputs",
            "does not apply to DPO",
        ),
        ({"method": {"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}}}, None, "beta"),
        ({"method": {"type": "supervised", "dpo": {}}}, "method", "method.dpo is given but method.type"),
        ({"method": {"type": "dpo"}, "hyperparameters": {"n_epochs": 2}}, None, "method.dpo.hyperparameters"),
        ({"method": {"type": "reinforcement"}}, "method.type", ""),
    ],
)
def test_dpo_settings_are_checked_naming_the_field(app_client, files, body, param, words):
    response = _job(app_client, training_file=files["preference"], **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert words in error["message"]
    if param:
        assert error["param"] == param
