"""Measure the API under load: job polling and job listing on PostgreSQL, against a bare FastAPI ceiling.

    python bench/api_load.py [--connections 64] [--seconds 10] [--api-workers 2] [--checkout DIR]

Starts PostgreSQL and redis-server (Debian packages), migrates, runs `loraq api` and, with the same
uvicorn settings, a bare FastAPI app returning a constant. `wrk` (Debian package) drives each endpoint
from a second process on loopback with N concurrent connections. Prints requests/s and p50/p99 latency
side by side, and polling's share of the ceiling.

`--checkout DIR` measures a second source tree (e.g. `git worktree add /tmp/old HEAD~3`) in the same run,
on its own database of the same server, endpoint after endpoint, so the two are compared under the same
machine load.
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


def api_env(database_url: str, broker_url: str, storage: Path, tree: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAQ_")}
    env.update(
        PYTHONPATH=str(tree),
        LORAQ_ENVIRONMENT="production",
        LORAQ_DATABASE_URL=database_url,
        LORAQ_BROKER_URL=broker_url,
        LORAQ_STORAGE_ROOT=str(storage),
        LORAQ_BOOTSTRAP_API_KEY=KEY,
        LORAQ_MAX_ACTIVE_JOBS_PER_OWNER="100000",  # the jobs only sit in the database to be read
    )
    return env


def make_jobs(api: str, auth: dict[str, str], count: int) -> list[str]:
    with httpx.Client(base_url=api, headers=auth, timeout=30) as client:
        upload = client.post("/v1/files", files={"file": ("t.jsonl", ROW * 10)}, data={"purpose": "fine-tune"})
        file_id = upload.raise_for_status().json()["id"]
        body = {"model": "loraq-tiny-chat", "training_file": file_id}
        return [client.post("/v1/fine_tuning/jobs", json=body).raise_for_status().json()["id"] for _ in range(count)]


def uvicorn(app: str, port: int, workers: int, env: dict, log: Path, tree: Path) -> subprocess.Popen:
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
    return subprocess.Popen(command, env=env, cwd=tree, stdout=log.open("wb"), stderr=subprocess.STDOUT)


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
    parser.add_argument("--checkout", type=Path, help="Another source tree of loraq to measure beside this one")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")

    folder = Path(tempfile.mkdtemp(prefix="loraq-bench-"))
    postgres, redis = PostgresServer().start(), RedisServer(folder / "redis").start()
    trees = {"": ROOT} | ({f" [{args.checkout.name}]": args.checkout.resolve()} if args.checkout else {})
    processes, apis = [], {}
    try:
        for number, (label, tree) in enumerate(trees.items()):
            database = postgres.url if number == 0 else postgres.create_database(f"loraq{number}")
            env = api_env(database, redis.url, folder / f"storage{number}", tree)
            subprocess.run([sys.executable, "-m", "cli", "migrate"], env=env, check=True, cwd=tree)
            port = free_port()
            processes.append(uvicorn("api.main:app", port, args.api_workers, env, folder / f"api{number}.log", tree))
            apis[label] = f"http://127.0.0.1:{port}"
        ceiling_port = free_port()
        ceiling_env = api_env(postgres.url, redis.url, folder / "storage0", ROOT)
        processes.append(uvicorn("bench.ceiling_app:app", ceiling_port, args.api_workers, ceiling_env,
                                 folder / "ceiling.log", ROOT))  # fmt: skip
        wait_http(f"http://127.0.0.1:{ceiling_port}/constant")
        targets = {"ceiling: bare FastAPI constant": (f"http://127.0.0.1:{ceiling_port}/constant", {}, {})}
        auth = {"Authorization": f"Bearer {KEY}"}
        for label, api in apis.items():
            wait_http(f"{api}/healthz")
            job_ids = make_jobs(api, auth, args.jobs)
            rotate = {"script": str(ROOT / "bench" / "poll_many.lua"), "env": {"JOB_IDS": ",".join(job_ids)}}
            targets |= {
                f"GET /v1/fine_tuning/jobs/{{id}}{label}": (f"{api}/v1/fine_tuning/jobs/{job_ids[0]}", auth, {}),
                f"GET /v1/fine_tuning/jobs/{{id}}, {len(job_ids)} jobs in turn{label}": (api, auth, rotate),
                f"GET /v1/fine_tuning/jobs?limit=20{label}": (f"{api}/v1/fine_tuning/jobs?limit=20", auth, {}),
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
    print()
    for label in trees:
        polls = [results[f"GET /v1/fine_tuning/jobs/{{id}}{label}"],
                 results[f"GET /v1/fine_tuning/jobs/{{id}}, {args.jobs} jobs in turn{label}"]]  # fmt: skip
        worst = min(polls, key=lambda r: r["rps"])
        p99 = max(r["p99"] for r in polls)
        print(f"polling{label or ' (this tree)'}: at least {worst['rps']:.0f} requests/s, p99 at most {p99:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
