"""In-process API tests on a real SQLite database built by the migrations (no broker needed for files)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from loraq.migrate import upgrade
from loraq.settings import Settings
from models.api_keys import create_key
from models.session import session_scope

OWNER_KEYS = {"alice": "lq-alice-key-000000000000", "bob": "lq-bob-key-00000000000000"}


@pytest.fixture
def settings_in(tmp_path):
    """Settings read from the environment (a test module may point storage elsewhere first), with a small upload
    cap, and a database with the owners' keys."""
    settings = Settings(data_dir=tmp_path, max_upload_bytes=4096)
    upgrade(settings.resolved_database_url)
    with session_scope(settings.resolved_database_url) as session:
        for owner, key in OWNER_KEYS.items():
            create_key(session, owner=owner, name="test", key=key)
    return settings


@pytest.fixture
def settings(settings_in):
    return settings_in


@pytest.fixture
def app_client(settings):
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def auth(owner: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {OWNER_KEYS[owner]}"}
