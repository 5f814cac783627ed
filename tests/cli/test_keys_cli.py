"""`loraq keys create/list/revoke` against an embedded deployment's data folder."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import select

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
