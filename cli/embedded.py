"""`loraq up`: everything on one machine, no other setup.

Starts an embedded Redis, applies the migrations to the SQLite database, makes sure an API key exists,
then runs the API (uvicorn), one validator and one worker (Celery) as child processes sharing one data folder.
Ctrl-C (or SIGTERM) stops all of it.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from pathlib import Path

from cli.embedded_redis import redis_command, wait_for_redis
from cli.processes import ProcessGroup, api_command, stop_on_signals, validator_command, worker_command
from loraq.migrate import upgrade
from loraq.settings import Settings
from loraq.storage import open_storage

STOP_TIMEOUT = 60.0  # time for a running job to checkpoint and be handed back


def bootstrap_api_key(settings: Settings) -> str:
    """The key from LORAQ_BOOTSTRAP_API_KEY, else the one saved in the data folder, else a new one."""
    from models.api_keys import ensure_key, generate_key
    from models.session import session_scope

    key_file = settings.data_dir / "api_key"
    key = settings.bootstrap_api_key
    if not key and key_file.exists():
        key = key_file.read_text().strip()
    if not key:
        key = generate_key()
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
    with session_scope(settings.resolved_database_url) as session:
        ensure_key(session, owner="default", name="bootstrap", key=key, is_admin=True)
    return key


def wait_healthy(url: str, children: ProcessGroup, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if exited := children.exited():
            raise RuntimeError(f"{exited[0].name} exited with code {exited[0].returncode} during start-up")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def run_embedded(host: str, port: int, data_dir: Path) -> int:
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["LORAQ_DATA_DIR"] = str(data_dir)
    settings = Settings()
    try:  # a bucket that cannot be reached is said now, not at the first upload
        open_storage(settings).check()
    except OSError as exc:
        print(f"loraq: storage is not usable: {exc}", file=sys.stderr)
        return 1
    # API and worker stop first (a running job checkpoints and is handed back), Redis last.
    children = ProcessGroup(STOP_TIMEOUT)
    stop_on_signals()
    try:
        if settings.broker_url is None:
            redis_server = children.spawn("redis-server", redis_command(settings.redis_socket), stopped_last=True)
            wait_for_redis(redis_server.process, settings.redis_socket)
        upgrade(settings.resolved_database_url)
        key = bootstrap_api_key(settings)
        env = dict(os.environ, LORAQ_DATA_DIR=str(data_dir))
        children.spawn("worker", worker_command(settings.queue), env)
        children.spawn("validator", validator_command(settings.validation_queue, concurrency=1), env)
        children.spawn("api", api_command(host, port), env)
        base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        wait_healthy(f"{base}/healthz", children)
        print(
            f"\nloraq is up at {base}/v1  (data: {data_dir}; storage: {settings.resolved_storage_url})\n"
            f"Dashboard: {base}/ui/  (sign in with the API key)\n"
            f"API key: {key}\n"
            f"  export OPENAI_BASE_URL={base}/v1 OPENAI_API_KEY={key}\n"
            "Press Ctrl-C to stop.\n",
            flush=True,
        )
        while not (exited := children.exited()):
            time.sleep(0.5)
        print(f"{exited[0].name} exited with code {exited[0].returncode}; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping loraq ...", flush=True)
        return 0
    finally:
        children.stop()
