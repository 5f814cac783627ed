"""Measure uploads and downloads through the API with each storage: a local folder and an S3 bucket.

    python bench/storage_transfer.py [--megabytes 1024] [--storage local,s3]

For each storage, starts `loraq api` (one uvicorn process, SQLite; uploads need no broker) and, for S3,
`rclone serve s3` on loopback (tests/servers.py). After a small upload that makes the storage client (once per
process), it uploads one generated chat JSONL file of the given size, streamed from the client in 1 MiB
pieces (multipart/form-data with a known length), then downloads it whole and as a resumed second half
(Range). Prints MB/s for each and the API process's resident memory before and at its peak during each
transfer (sampled every 20 ms from /proc), so memory growth per upload is visible.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.api_load import wait_http  # noqa: E402
from tests.servers import S3Server, free_port  # noqa: E402

KEY = "lq-bench-key-0123456789abcdef"
ROW = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}\n'
PIECE = 1 << 20
BOUNDARY = "loraqbenchboundary"


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class PeakRSS:
    """Peak resident memory of a process while the block runs."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._done = pid, 0, threading.Event()

    def __enter__(self) -> PeakRSS:
        self.before = rss_kib(self.pid)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, rss_kib(self.pid))

    def __exit__(self, *_exc) -> None:
        self._done.set()
        self._thread.join()


def multipart_body(size: int):
    """(length, chunks) of a multipart/form-data upload of `size` bytes of chat rows, generated as sent."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.jsonl"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    per_piece = PIECE // len(ROW)

    def chunks():  # whole rows only: the API checks every line
        yield head
        left = size // len(ROW)
        while left > 0:
            yield ROW * min(per_piece, left)
            left -= per_piece
        yield tail

    return len(head) + size // len(ROW) * len(ROW) + len(tail), chunks()


def start_api(folder: Path, env_extra: dict[str, str]) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LORAQ_", "AWS_"))}
    env.update(
        PYTHONPATH=str(ROOT), LORAQ_DATA_DIR=str(folder), LORAQ_BOOTSTRAP_API_KEY=KEY,
        LORAQ_MAX_UPLOAD_BYTES=str(1 << 40), LORAQ_MAX_EXAMPLES_PER_FILE=str(10**9), **env_extra,
    )  # fmt: skip
    subprocess.run([sys.executable, "-m", "cli", "migrate"], env=env, check=True, capture_output=True)
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port)]
    api = subprocess.Popen(command, env=env, stdout=(folder / "api.log").open("ab"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/healthz", timeout=600)  # a loaded machine starts it slowly
    return api, base


def measure(name: str, folder: Path, env_extra: dict[str, str], size: int) -> dict:
    size = size // len(ROW) * len(ROW)
    api, base = start_api(folder, env_extra)
    headers = {"Authorization": f"Bearer {KEY}"}
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=3600) as client:
            # A small upload first: the storage client (boto3, for S3) is made once per process, not per upload.
            warm = client.post("/v1/files", files={"file": ("w.jsonl", ROW)}, data={"purpose": "fine-tune"})
            warm.raise_for_status()
            length, body = multipart_body(size)
            upload_headers = {
                "content-type": f"multipart/form-data; boundary={BOUNDARY}",
                "content-length": str(length),
            }
            with PeakRSS(api.pid) as up:
                started = time.monotonic()
                response = client.post("/v1/files", content=body, headers=upload_headers)
                up_s = time.monotonic() - started
            response.raise_for_status()
            file_id = response.json()["id"]
            with PeakRSS(api.pid) as down:
                started = time.monotonic()
                with client.stream("GET", f"/v1/files/{file_id}/content") as stream:
                    received = sum(len(c) for c in stream.iter_bytes(PIECE))
                down_s = time.monotonic() - started
            assert received == size, (received, size)
            half = {"Range": f"bytes={size // 2}-", "If-Range": f'"{response.json()["sha256"]}"'}
            with client.stream("GET", f"/v1/files/{file_id}/content", headers=half) as stream:
                assert stream.status_code == 206 and sum(len(c) for c in stream.iter_bytes(PIECE)) == size - size // 2
    finally:
        api.terminate()
        api.wait()
    mb = size / 1e6
    return {
        "storage": name, "MB": mb, "upload MB/s": mb / up_s, "download MB/s": mb / down_s,
        "rss before MiB": up.before / 1024, "upload peak growth MiB": (up.peak - up.before) / 1024,
        "download peak growth MiB": (down.peak - down.before) / 1024,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=int, default=1024, help="size of the uploaded file (MiB)")
    parser.add_argument("--storage", default="local,s3", help="which storages to measure, comma-separated")
    args = parser.parse_args()
    size = args.megabytes << 20
    rows = []
    with tempfile.TemporaryDirectory(prefix="loraq-bench-") as tmp:
        for name in args.storage.split(","):
            folder = Path(tmp) / name
            folder.mkdir()
            server = None
            env: dict[str, str] = {}
            if name == "s3":
                server = S3Server(folder / "s3").start()
                env = server.environment(server.bucket("loraq"))
            try:
                rows.append(measure(name, folder, env, size))
            finally:
                if server:
                    server.stop()
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    for row in rows:
        print("| " + " | ".join(v if isinstance(v, str) else f"{v:.1f}" for v in row.values()) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
