"""Shared fixtures.

`service` runs the real thing and is parametrised over both deployments: the embedded mode (`loraq up`:
API process, Celery worker process, embedded Redis server, SQLite) and the production shape (PostgreSQL,
a standalone redis-server, `loraq api`, `loraq worker`). Tests drive it over HTTP.
"""

from __future__ import annotations

import json

import pytest

from tests.deployments import API_KEY, embedded, production
from tests.servers import free_port

__all__ = ["API_KEY", "LOCAL_MODEL", "free_port"]

LOCAL_MODEL = "tiny-local"


@pytest.fixture(scope="session")
def operator_models(tmp_path_factory) -> dict[str, str]:
    """An operator-listed base model from a local folder: loaded through the same code as a hub id."""
    from training.tiny_model import write_tiny_model

    local_model = write_tiny_model(tmp_path_factory.mktemp("operator-models") / LOCAL_MODEL)
    return {"LORAQ_BASE_MODELS": json.dumps({LOCAL_MODEL: {"source": str(local_model)}})}


@pytest.fixture(scope="session", params=["sqlite+embedded-redis", "postgres+redis-server"])
def service(request, tmp_path_factory, operator_models):
    folder = tmp_path_factory.mktemp("deployment")
    start = embedded if request.param.startswith("sqlite") else production
    deployment = start(folder, operator_models)
    yield deployment
    deployment.stop()


@pytest.fixture
def client(service):
    with service.client() as c:
        yield c
