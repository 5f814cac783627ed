"""`loraq up`: everything on one machine, no other setup.

Starts an embedded Redis, applies the migrations to the SQLite database, makes sure an API key exists,
then runs the API (uvicorn), one validator and one worker (Celery) as child processes sharing one data folder.
Ctrl-C (or SIGTERM) stops all of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from cli.embedded_redis import start_redis
from cli.processes import api_command, spawn, validator_command, worker_command
from loraq.migrate import upgrade
from loraq.settings import Settings

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


def wait_healthy(url: str, processes: list[subprocess.Popen], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args[2]} exited with code {process.returncode} during start-up")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


def stop_all(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_embedded(host: str, port: int, data_dir: Path) -> int:
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    os.environ["LORAQ_DATA_DIR"] = str(data_dir)
    settings = Settings()
    processes: list[subprocess.Popen] = []
    stopping = False

    def _stop(signum, _frame):
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt

    # Installed explicitly: a process started in the background by a shell inherits an ignored SIGINT.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        if settings.broker_url is None:
            processes.append(start_redis(settings.redis_socket))
        upgrade(settings.resolved_database_url)
        key = bootstrap_api_key(settings)
        env = dict(os.environ, LORAQ_DATA_DIR=str(data_dir))
        processes.append(spawn(worker_command(settings.queue), env))
        processes.append(spawn(validator_command(settings.validation_queue, concurrency=1), env))
        processes.append(spawn(api_command(host, port), env))
        base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        wait_healthy(f"{base}/healthz", processes)
        print(
            f"\nloraq is up at {base}/v1  (data: {data_dir})\n"
            f"API key: {key}\n"
            f"  export OPENAI_BASE_URL={base}/v1 OPENAI_API_KEY={key}\n"
            "Press Ctrl-C to stop.\n",
            flush=True,
        )
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        failed = next(p for p in processes if p.poll() is not None)
        print(f"{failed.args[0]} exited with code {failed.returncode}; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping loraq ...", flush=True)
        return 0
    finally:
        # API and worker first (a running job checkpoints and is handed back), Redis last.
        redis_server = processes[:1] if settings.broker_url is None else []
        stop_all([p for p in processes if p not in redis_server])
        stop_all(redis_server)
