"""Upload limits and ownership of files, in process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from tests.api.conftest import auth

LINE = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n"


@pytest.fixture(params=["local", "s3"])
def settings(request, tmp_path, monkeypatch):
    """This module's files in a local folder, and in a bucket of a real S3-compatible server."""
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        for name, value in server.environment(server.bucket(f"api-{uuid.uuid4().hex[:12]}")).items():
            monkeypatch.setenv(name, value)
    return request.getfixturevalue("settings_in")


def _stored(settings):
    from loraq.storage import open_storage

    return sorted(key.removeprefix("files/") for key in open_storage(settings).list("files/"))


def test_upload_over_the_cap_is_413_and_stores_nothing(app_client, settings):
    big = (LINE * 200).encode()  # > 4096 bytes
    response = app_client.post(
        "/v1/files", headers=auth("alice"), files={"file": ("big.jsonl", big)}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large" and response.json()["error"]["param"] == "file"
    assert _stored(settings) == []
    assert app_client.get("/v1/files", headers=auth("alice")).json()["data"] == []


def test_upload_is_hashed_and_owned(app_client, settings):
    import hashlib

    body = (LINE * 3).encode()
    response = app_client.post(
        "/v1/files", headers=auth("alice"), files={"file": ("../../etc/passwd", body)}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 200, response.text
    record = response.json()
    assert record["sha256"] == hashlib.sha256(body).hexdigest() and record["bytes"] == len(body)
    assert record["filename"] == "passwd"  # a label only; storage names come from the server's ids
    assert _stored(settings) == [f"{record['id']}.jsonl"]
    assert app_client.get(f"/v1/files/{record['id']}", headers=auth("bob")).status_code == 404
    assert app_client.get(f"/v1/files/{record['id']}/content", headers=auth("bob")).status_code == 404
    assert app_client.get(f"/v1/files/{record['id']}", headers=auth("alice")).status_code == 200


def test_api_does_not_import_the_training_stack(tmp_path):
    """DESIGN.md: api/ never imports torch. Checked in a clean interpreter, as the other tests load it."""
    code = "import api.main, sys; print([m for m in ('torch', 'transformers', 'peft', 'trl') if m in sys.modules])"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"LORAQ_DATA_DIR": str(tmp_path), "PATH": os.environ["PATH"]},
    )
    assert result.stdout.strip() == "[]"


def _upload(app_client, owner="alice") -> str:
    response = app_client.post(
        "/v1/files", headers=auth(owner), files={"file": ("t.jsonl", LINE.encode())}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 200, response.text
    return response.json()["id"]


def test_delete_removes_the_stored_bytes_and_their_tokenized_copies(app_client, settings, tmp_path):
    from loraq.storage import open_storage, tokenized_prefix

    file_id = _upload(app_client)
    assert len(_stored(settings)) == 1
    rows = tmp_path / "rows.arrow"
    rows.write_bytes(b"rows")
    storage = open_storage(settings)
    storage.put_file(tokenized_prefix(file_id) + "rows.arrow", rows)  # as the validation stage writes
    assert app_client.delete(f"/v1/files/{file_id}", headers=auth("alice")).json()["deleted"] is True
    assert _stored(settings) == [] and storage.list(tokenized_prefix(file_id)) == {}
    assert app_client.get(f"/v1/files/{file_id}", headers=auth("alice")).status_code == 404


def test_a_delete_whose_commit_fails_keeps_the_file(app_client, settings, monkeypatch):
    from sqlalchemy.orm import Session

    file_id = _upload(app_client)

    def failing_commit(self):
        raise RuntimeError("database went away")

    monkeypatch.setattr(Session, "commit", failing_commit)
    assert app_client.delete(f"/v1/files/{file_id}", headers=auth("alice")).status_code == 500
    monkeypatch.undo()
    assert len(_stored(settings)) == 1
    listed = app_client.get(f"/v1/files/{file_id}/content", headers=auth("alice"))
    assert listed.status_code == 200 and listed.content == LINE.encode()
