"""`loraq keys create/list/revoke` against an embedded deployment's data folder."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import select

from cli.main import build_parser
from models import ApiKey
from models.api_keys import authenticate, hash_key
from models.session import session_scope


def keys(data_dir, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cli", "keys", "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_create_list_revoke(tmp_path):
    created = keys(tmp_path, "create", "--name", "ci-bot", "--owner", "team-a", "--admin")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("lq-") and "shown once" in created.stderr
    url = f"sqlite:///{tmp_path / 'loraq.db'}"
    with session_scope(url) as session:
        row = session.scalars(select(ApiKey)).one()
        assert row.key_hash == hash_key(key) and key not in (row.key_hash, row.name)  # stored hashed only
        assert authenticate(session, key).owner == "team-a" and authenticate(session, key).is_admin
    listed = keys(tmp_path, "list").stdout
    assert "owner=team-a" in listed and "admin" in listed and "active" in listed and key not in listed
    key_id = listed.split()[0]
    assert keys(tmp_path, "revoke", key_id).returncode == 0
    assert "revoked" in keys(tmp_path, "list").stdout
    with session_scope(url) as session:
        assert authenticate(session, key) is None
    assert keys(tmp_path, "revoke", key_id).returncode == 1  # already revoked


@pytest.mark.parametrize("command", [["create", "--name", "other"], ["list"], ["revoke", "key-1"]])
def test_data_dir_is_accepted_before_and_after_the_key_command(command):
    before = build_parser().parse_args(["keys", "--data-dir", "D", *command])
    after = build_parser().parse_args(["keys", *command, "--data-dir", "D"])
    assert before == after and after.data_dir == "D"
    assert build_parser().parse_args(["keys", *command]).data_dir is None  # then the LORAQ_* settings


def test_create_with_data_dir_after_the_key_command(tmp_path):
    created = subprocess.run(
        [sys.executable, "-m", "cli", "keys", "create", "--name", "other", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert created.returncode == 0, created.stderr
    assert "owner=other" in keys(tmp_path, "list").stdout
