"""Measure the API under load: job polling and job listing on PostgreSQL, against a bare FastAPI ceiling.

    python bench/api_load.py [--connections 64] [--seconds 10] [--api-workers 2]

Starts PostgreSQL and redis-server (Debian packages), migrates, runs `loraq api` and, with the same
uvicorn settings, a bare FastAPI app returning a constant. `wrk` (Debian package) drives each endpoint
from a second process on loopback with N concurrent connections. Prints requests/s and p50/p99 latency
side by side, and polling's share of the ceiling (target: at least 0.5).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.servers import PostgresServer, RedisServer, free_port  # noqa: E402

KEY = "lq-bench-key-0123456789abcdef"
ROW = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def uvicorn(app: str, port: int, workers: int, env: dict, log: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    return subprocess.Popen(command, env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def wrk(
    url: str,
    connections: int,
    seconds: int,
    headers: dict[str, str],
    script: str | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, float]:
    command = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--latency", url]
    if script:
        command += ["-s", script]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    out = subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ, **(env or {})}).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} error responses\n{out}")

    def millis(label: str) -> float:
        value, unit = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": millis("50"),
        "p99": millis("99"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=64, help="Concurrent clients")
    parser.add_argument("--seconds", type=int, default=10, help="Duration of each measurement")
    parser.add_argument("--api-workers", type=int, default=2, help="uvicorn worker processes for both apps")
    parser.add_argument("--jobs", type=int, default=100, help="Jobs in the database for the list endpoint")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")

    folder = Path(tempfile.mkdtemp(prefix="loraq-bench-"))
    postgres, redis = PostgresServer().start(), RedisServer(folder / "redis").start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAQ_")}
    env.update(
        LORAQ_ENVIRONMENT="production",
        LORAQ_DATABASE_URL=postgres.url,
        LORAQ_BROKER_URL=redis.url,
        LORAQ_STORAGE_ROOT=str(folder / "storage"),
        LORAQ_BOOTSTRAP_API_KEY=KEY,
    )
    subprocess.run([sys.executable, "-m", "cli", "migrate"], env=env, check=True, cwd=ROOT)
    api_port, ceiling_port = free_port(), free_port()
    processes = [
        uvicorn("api.main:app", api_port, args.api_workers, env, folder / "api.log"),
        uvicorn("bench.ceiling_app:app", ceiling_port, args.api_workers, env, folder / "ceiling.log"),
    ]
    try:
        api = f"http://127.0.0.1:{api_port}"
        wait_http(f"{api}/healthz")
        wait_http(f"http://127.0.0.1:{ceiling_port}/constant")
        auth = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=api, headers=auth, timeout=30) as client:
            file_id = client.post(
                "/v1/files", files={"file": ("t.jsonl", ROW * 10)}, data={"purpose": "fine-tune"}
            ).json()["id"]
            job_ids = [
                client.post("/v1/fine_tuning/jobs", json={"model": "loraq-tiny-chat", "training_file": file_id}).json()[
                    "id"
                ]
                for _ in range(args.jobs)
            ]
        rotate = {"script": str(ROOT / "bench" / "poll_many.lua"), "env": {"JOB_IDS": ",".join(job_ids)}}
        targets = {
            "ceiling: bare FastAPI constant": (f"http://127.0.0.1:{ceiling_port}/constant", {}, {}),
            "GET /v1/fine_tuning/jobs/{id}": (f"{api}/v1/fine_tuning/jobs/{job_ids[0]}", auth, {}),
            f"GET /v1/fine_tuning/jobs/{{id}}, {len(job_ids)} jobs in turn": (api, auth, rotate),
            "GET /v1/fine_tuning/jobs?limit=20": (f"{api}/v1/fine_tuning/jobs?limit=20", auth, {}),
        }
        for url, headers, extra in targets.values():  # warm up connections
            wrk(url, args.connections, 2, headers, **extra)
        results = {
            name: wrk(url, args.connections, args.seconds, headers, **extra)
            for name, (url, headers, extra) in targets.items()
        }
    finally:
        for process in processes:
            process.terminate()
            process.wait()
        redis.stop()
        postgres.stop()
        shutil.rmtree(folder, ignore_errors=True)

    ceiling = results["ceiling: bare FastAPI constant"]["rps"]
    print(
        f"\n{args.connections} connections, {args.seconds}s each, {args.api_workers} uvicorn workers, "
        f"PostgreSQL, {os.cpu_count()} CPUs\n"
    )
    print("| endpoint | requests/s | p50 ms | p99 ms | share of ceiling |\n| --- | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        print(f"| {name} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['rps'] / ceiling:.2f} |")
    share = min(r["rps"] for name, r in results.items() if name.startswith("GET /v1/fine_tuning/jobs/{id}")) / ceiling
    print(f"\npolling reaches {share:.2f} of the ceiling (target >= 0.50): {'met' if share >= 0.5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
