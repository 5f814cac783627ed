"""Shared fixtures. `service` runs the real thing: `loraq up` (API process, Celery worker process,
embedded Redis server, SQLite) in a temporary data folder, driven over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

API_KEY = "lq-test-key-0123456789abcdef"
LOCAL_MODEL = "tiny-local"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    def __init__(self, data_dir: Path, port: int, process: subprocess.Popen):
        self.data_dir, self.port, self.process = data_dir, port, process
        self.base_url = f"http://127.0.0.1:{port}"
        self.api_key = API_KEY

    def client(self, key: str | None = API_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)

    def openai(self):
        import openai

        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=self.api_key, max_retries=0)


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    from training.tiny_model import write_tiny_model

    data_dir = tmp_path_factory.mktemp("loraq-data")
    # An operator-listed base model from a local folder: loaded through the same code as a hub id.
    local_model = write_tiny_model(tmp_path_factory.mktemp("operator-models") / "tiny-local")
    port = free_port()
    env = dict(
        os.environ,
        LORAQ_BOOTSTRAP_API_KEY=API_KEY,
        PYTHONUNBUFFERED="1",
        LORAQ_BASE_MODELS=json.dumps({LOCAL_MODEL: {"source": str(local_model)}}),
    )
    for name in ("LORAQ_DATABASE_URL", "LORAQ_BROKER_URL", "LORAQ_STORAGE_ROOT"):
        env.pop(name, None)
    log = (data_dir / "service.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "loraq.cli", "up", "--port", str(port), "--data-dir", str(data_dir)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    svc = Service(data_dir, port, process)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"loraq up exited early:\n{(data_dir / 'service.log').read_text()[-4000:]}")
        try:
            if httpx.get(f"{svc.base_url}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.3)
    else:
        process.kill()
        pytest.fail("the service did not become ready within 90 s")
    yield svc
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
    log.close()
    if process.returncode != 0:
        print((data_dir / "service.log").read_text()[-4000:])


@pytest.fixture
def client(service):
    with service.client() as c:
        yield c
