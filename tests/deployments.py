"""Running loraq for the end-to-end tests: the embedded mode (`loraq up`), or the production shape
(`loraq migrate`, `loraq api` with two uvicorn workers, N `loraq worker` processes) on PostgreSQL and a
standalone Redis server, with its storage in a shared folder or in a bucket of an S3-compatible server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.servers import PostgresServer, RedisServer, S3Server, free_port

API_KEY = "lq-test-key-0123456789abcdef"
FAST_RECOVERY = {  # short enough for tests to watch the reconciler work
    "LORAQ_LEASE_SECONDS": "6",
    "LORAQ_RECONCILE_SECONDS": "1",
    "LORAQ_REQUEUE_AFTER_SECONDS": "3",
    "LORAQ_KEY_CACHE_SECONDS": "1",
    "LORAQ_MAX_ACTIVE_JOBS_PER_OWNER": "10",
    "LORAQ_MAX_EXAMPLES_PER_FILE": "500",
}


EVENT_STREAMS = {  # a limit the tests can reach, and heartbeats they need not wait long for
    "LORAQ_MAX_EVENT_STREAMS_PER_OWNER": "4",
    "LORAQ_EVENT_HEARTBEAT_SECONDS": "1",
}


WEBHOOKS = {  # the tests' receivers listen on loopback; retries and a dead worker's lease come round quickly
    "LORAQ_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
    "LORAQ_WEBHOOK_RETRY_BASE_SECONDS": "0.5",
    "LORAQ_WEBHOOK_TIMEOUT_SECONDS": "2",
    "LORAQ_WEBHOOK_POLL_SECONDS": "0.5",
}


def base_environment(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAQ_")}
    env.update(
        {"LORAQ_BOOTSTRAP_API_KEY": API_KEY, "PYTHONUNBUFFERED": "1", **FAST_RECOVERY, **EVENT_STREAMS, **WEBHOOKS,
         **extra}
    )  # fmt: skip
    return env


def loraq(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


class Deployment:
    def __init__(self, name: str, folder: Path, env: dict[str, str]):
        self.name, self.folder, self.env = name, folder, env
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.api_key = API_KEY
        self.processes: dict[str, subprocess.Popen] = {}
        self.servers: list = []
        self.s3: S3Server | None = None

    # ---------------------------------------------------------------- processes
    def start_process(self, label: str, command: list[str]) -> subprocess.Popen:
        log = (self.folder / f"{label}.log").open("ab")
        env = {**self.env, "LORAQ_WORK_DIR": str(self.folder / "work" / label)} if self.s3 else self.env
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes[label] = process
        return process

    def stop_process(self, label: str, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        process = self.processes.pop(label)
        if process.poll() is None:
            os.killpg(process.pid, sig)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for label, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{label} exited early:\n{self.log(label)[-4000:]}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.name} not ready within {timeout}s")

    def log(self, label: str) -> str:
        path = self.folder / f"{label}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        for label in list(self.processes):
            self.stop_process(label)
        for server in reversed(self.servers):
            server.stop()

    # ---------------------------------------------------------------- clients
    def client(self, key: str | None = API_KEY) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30)

    def new_key(self, owner: str, admin: bool = False) -> str:
        """A new API key for `owner`, made as the operator would (`loraq keys create`)."""
        from models.api_keys import create_key
        from models.session import session_scope

        with session_scope(self.database_url) as session:
            return create_key(session, owner=owner, name=f"{owner}-test", is_admin=admin)

    def openai(self):
        import openai

        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=self.api_key, max_retries=0)


def embedded(folder: Path, extra_env: dict[str, str]) -> Deployment:
    """`loraq up`: SQLite, the embedded Redis, the API and one worker."""
    deployment = Deployment("sqlite+embedded-redis", folder, base_environment(extra_env))
    deployment.database_url = f"sqlite:///{folder / 'data' / 'loraq.db'}"
    deployment.start_process("up", loraq("up", "--port", str(deployment.port), "--data-dir", str(folder / "data")))
    deployment.wait_ready()
    return deployment


def production(folder: Path, extra_env: dict[str, str], workers: int = 1, s3: bool = False) -> Deployment:
    """PostgreSQL and redis-server, `loraq migrate`, `loraq api --workers 2`, a validator and `workers` workers;
    storage is a folder they share, or with `s3` a bucket of `rclone serve s3` (each process then has its own
    local work folder, as on separate machines)."""
    postgres = PostgresServer().start()
    redis = RedisServer(folder / "redis").start()
    servers: list = [postgres, redis]
    storage = {"LORAQ_STORAGE_ROOT": str(folder / "storage")}
    if s3:
        servers.append(S3Server(folder / "s3").start())
        storage = servers[-1].environment(servers[-1].bucket("loraq"))
    env = base_environment(
        {
            "LORAQ_ENVIRONMENT": "production",
            "LORAQ_DATABASE_URL": postgres.url,
            "LORAQ_BROKER_URL": redis.url,
            **storage,
            "LORAQ_DATA_DIR": str(folder / "data"),
            **extra_env,
        }
    )
    deployment = Deployment("postgres+redis-server" + ("+s3" if s3 else ""), folder, env)
    deployment.servers = servers
    deployment.s3 = servers[2] if s3 else None
    deployment.database_url = postgres.url
    deployment.redis = redis
    subprocess.run(loraq("migrate"), env=env, check=True, capture_output=True)
    deployment.start_process(
        "api", loraq("api", "--host", "127.0.0.1", "--port", str(deployment.port), "--workers", "2")
    )
    deployment.start_process("validator", loraq("validator"))
    for index in range(workers):
        deployment.start_process(f"worker{index + 1}", loraq("worker", "--name", f"w{index + 1}"))
    deployment.wait_ready()
    return deployment
