"""Event streams under load: many clients streaming one job's events, and job polling beside them.

    python bench/event_streams.py [--streams 200] [--events 120] [--rate 4] [--api-workers 2] [--seconds 10]
                                  [--quiet 8] [--clients-nice 0]

Starts PostgreSQL, redis-server and `loraq api` (uvicorn, --api-workers processes) as bench/api_load.py does,
and creates two jobs (no validator runs, so they stay in validating_files). Then:

1. polling without streams: `wrk` on GET /v1/fine_tuning/jobs/{id} of the first job for --seconds while
   events are written to it at --rate per second (as below, so its row changes as often), the baseline;
2. --streams clients open GET .../events?stream=true on the second job (in one process of their own, httpx
   on asyncio, at --clients-nice); once every one has its backlog, this process writes --events metrics
   events to it at --rate per second, each with the job's progress in one transaction as a worker's
   supervisor does, noting when each commit returned; every client notes when each event arrived. For
   --quiet seconds the CPU time of the API processes and of the clients is measured, then `wrk` polls that
   job while events are still written. Last the job is cancelled, and every stream must end with `event: end`;
3. the baseline again (the machine's load drifts; the two baselines show by how much).

Prints whether every client received every event exactly once, the time from commit to arrival over all
clients and events (median, p99, max), the CPU shares, and polling's requests/s, latency and the API
processes' CPU without and with the streams. Everything shares this machine's cores: run once as it is for
the delivery times, and once with --clients-nice 19 for polling beside the streams (the clients then yield
the CPU to the server, as clients on other machines would, and their arrival times are late).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from sqlalchemy import update

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.api_load import KEY, api_env, make_jobs, uvicorn, wait_http, wrk  # noqa: E402
from models import job_state  # noqa: E402
from models.records import Job, JobStatus  # noqa: E402
from models.session import session_scope  # noqa: E402
from tests.servers import PostgresServer, RedisServer, free_port  # noqa: E402


class Client:
    """One stream's arrivals: event number -> arrival time."""

    def __init__(self):
        self.arrivals: dict[int, float] = {}
        self.duplicates = 0
        self.backlog = 0
        self.ended = False


async def follow(
    http: httpx.AsyncClient, url: str, client: Client, opened: list[Client], total: int, ready: asyncio.Event
) -> None:
    async with http.stream("GET", url, params={"stream": "true"}) as response:
        if response.status_code != 200:
            raise RuntimeError(f"stream refused: {response.status_code} {(await response.aread())[:200]!r}")
        async for line in response.aiter_lines():
            now = time.time()
            if line == "event: end":
                client.ended = True
            elif line.startswith("data: ") and not client.ended:
                number = (json.loads(line[6:]).get("data") or {}).get("bench")
                if number is None:
                    client.backlog += 1
                    if client.backlog == 2:  # the job's two creation events: this stream is live
                        opened.append(client)
                        if len(opened) == total:
                            ready.set()
                elif number in client.arrivals:
                    client.duplicates += 1
                else:
                    client.arrivals[number] = now


def write_events(
    database_url: str, job_id: str, count: int, rate: float, committed: dict[int, float], end: bool = True
) -> None:
    """Metrics events as a worker writes them: the event and the job's progress in one transaction; then, with
    `end`, the job is cancelled (its streams end)."""
    start = time.monotonic()
    for number in range(count):
        time.sleep(max(0.0, start + number / rate - time.monotonic()))
        with session_scope(database_url) as session:
            job_state.add_event(session, job_id, f"Step {number + 1}/{count}", kind="metrics",
                                data={"bench": number, "step": number + 1, "total_steps": count})  # fmt: skip
            session.execute(update(Job).where(Job.id == job_id).values(completed_steps=number + 1))
        committed[number] = time.time()
    if end:
        with session_scope(database_url) as session:
            job_state.cancel_job(session, job_id, was=JobStatus.validating_files)


def poll_while_written(args, api: str, job_id: str, database_url: str) -> dict[str, float]:
    """wrk on a job while events are written to it at the same rate, with no stream open: the baseline."""
    count = int((args.seconds + 2) * args.rate)
    writer = threading.Thread(target=write_events, args=(database_url, job_id, count, args.rate, {}, False))
    writer.start()
    time.sleep(1.0)
    result = wrk_job(args, api, job_id)
    writer.join()
    return result


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time of the processes (Linux /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


async def open_streams(args, api: str, job_id: str, live) -> list[Client]:
    """The clients, until every stream has ended; `live()` once all have their backlog."""
    clients = [Client() for _ in range(args.streams)]
    ready, opened = asyncio.Event(), list[Client]()
    limits = httpx.Limits(max_connections=args.streams + 10, max_keepalive_connections=0)
    headers = {"Authorization": f"Bearer {KEY}"}
    timeout = httpx.Timeout(60.0, read=120.0)
    async with httpx.AsyncClient(base_url=api, headers=headers, limits=limits, timeout=timeout) as http:
        url = f"/v1/fine_tuning/jobs/{job_id}/events"
        tasks = [asyncio.create_task(follow(http, url, client, opened, args.streams, ready)) for client in clients]
        await asyncio.wait_for(ready.wait(), timeout=120)
        live()
        await asyncio.gather(*tasks)
    return clients


def run_clients(args, api: str, job_id: str, pipe) -> None:
    """The clients' process (at --clients-nice): says "live", then sends the clients back."""
    os.nice(args.clients_nice)
    pipe.send(asyncio.run(open_streams(args, api, job_id, lambda: pipe.send("live"))))


def stream_phase(args, api: str, api_pids: list[int], job_id: str, database_url: str, poll: dict):
    """The streams (in their own process), the writer and, after a quiet stretch measuring CPU, wrk:
    (clients, commit times, CPU shares)."""
    receiver, sender = multiprocessing.Pipe(duplex=False)
    clients_process = multiprocessing.get_context("fork").Process(target=run_clients, args=(args, api, job_id, sender))
    clients_process.start()
    if not receiver.poll(180) or receiver.recv() != "live":
        raise RuntimeError("the streams did not open")
    print(f"{args.streams} streams live; writing {args.events} events at {args.rate}/s", flush=True)
    committed: dict[int, float] = {}
    writer = threading.Thread(target=write_events, args=(database_url, job_id, args.events, args.rate, committed))
    writer.start()
    time.sleep(1.0)
    before = time.monotonic(), cpu_seconds(api_pids), cpu_seconds([clients_process.pid])
    time.sleep(args.quiet)
    after = time.monotonic(), cpu_seconds(api_pids), cpu_seconds([clients_process.pid])
    cpu = {"api": (after[1] - before[1]) / (after[0] - before[0]),
           "clients": (after[2] - before[2]) / (after[0] - before[0])}  # fmt: skip
    poll["start"] = time.time()
    poll.update(wrk_job(args, api, job_id))
    poll["end"] = time.time()
    writer.join()
    clients = receiver.recv()
    clients_process.join()
    return clients, committed, cpu


API_PIDS: list[int] = []  # the uvicorn workers, once started: their CPU time is read around each wrk run


def wrk_job(args, api: str, job_id: str) -> dict[str, float]:
    """wrk's figures, and `api_cpu`: the API processes' CPU time per second meanwhile, in cores."""
    auth = {"Authorization": f"Bearer {KEY}"}
    started, cpu = time.monotonic(), cpu_seconds(API_PIDS)
    result = wrk(f"{api}/v1/fine_tuning/jobs/{job_id}", args.connections, args.seconds, auth)
    result["api_cpu"] = (cpu_seconds(API_PIDS) - cpu) / (time.monotonic() - started)
    return result


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200, help="Concurrent event streams on the job")
    parser.add_argument("--events", type=int, default=120, help="Events written while they stream")
    parser.add_argument("--rate", type=float, default=4.0, help="Events written per second")
    parser.add_argument("--api-workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections polling the job")
    parser.add_argument("--seconds", type=int, default=10, help="Duration of each polling measurement")
    parser.add_argument("--quiet", type=float, default=8.0, help="Seconds of streaming measured before wrk starts")
    parser.add_argument("--clients-nice", type=int, default=0,
                        help="CPU niceness of the clients' process: they share the machine with the API, and at 19 "
                        "they yield it, as clients elsewhere would (then their arrival times are late)")  # fmt: skip
    args = parser.parse_args()
    if args.events / args.rate < args.quiet + args.seconds + 2:
        sys.exit("--events / --rate must cover --quiet + --seconds + 2 seconds of writing")
    if not shutil.which("wrk"):
        sys.exit("wrk is needed: apt-get install wrk")

    folder = Path(tempfile.mkdtemp(prefix="loraq-bench-streams-"))
    postgres, redis = PostgresServer().start(), RedisServer(folder / "redis").start()
    env = api_env(postgres.url, redis.url, folder / "storage", ROOT)
    env["LORAQ_MAX_EVENT_STREAMS_PER_OWNER"] = str(args.streams + 10)
    subprocess.run([sys.executable, "-m", "cli", "migrate"], env=env, check=True, cwd=ROOT)
    port = free_port()
    api_process = uvicorn("api.main:app", port, args.api_workers, env, folder / "api.log", ROOT)
    api = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{api}/healthz")
        API_PIDS[:] = children(api_process.pid)
        polled_job, job_id = make_jobs(api, {"Authorization": f"Bearer {KEY}"}, 2)
        wrk_job(argparse.Namespace(**{**vars(args), "seconds": 2}), api, polled_job)  # warm up
        alone = poll_while_written(args, api, polled_job, postgres.url)
        with_streams: dict[str, float] = {}
        clients, committed, cpu = stream_phase(args, api, API_PIDS, job_id, postgres.url, with_streams)
        alone_after = poll_while_written(args, api, polled_job, postgres.url)
    finally:
        api_process.terminate()
        api_process.wait()
        redis.stop()
        postgres.stop()
        shutil.rmtree(folder, ignore_errors=True)

    delays = [c.arrivals[n] - committed[n] for c in clients for n in c.arrivals if n in committed]
    polled = [c.arrivals[n] - committed[n] for c in clients for n in c.arrivals
              if with_streams["start"] <= committed.get(n, 0) <= with_streams["end"]]  # fmt: skip
    missed = sum(args.events - len(c.arrivals) for c in clients)
    duplicates = sum(c.duplicates for c in clients)
    ended = sum(c.ended for c in clients)
    print(f"\n{args.streams} streams on one job, {args.events} events at {args.rate}/s, {args.api_workers} uvicorn "
          f"workers, PostgreSQL, {os.cpu_count()} CPUs; polling: wrk, {args.connections} connections, "
          f"{args.seconds}s\n")  # fmt: skip
    print(f"deliveries: {len(delays)} of {args.streams * args.events} (missed {missed}, duplicates {duplicates}); "
          f"streams ended with `end`: {ended} of {args.streams}")  # fmt: skip
    for label, values in (("all events", delays), ("events written while wrk polled", polled)):
        print(f"commit to arrival, {label}: median {statistics.median(values) * 1000:.0f} ms, "
              f"p99 {percentile(values, 0.99) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms")  # fmt: skip
    print(f"CPU while streaming (before wrk): API processes {cpu['api']:.0%} of a core, "
          f"the {args.streams} clients' process {cpu['clients']:.0%} (nice {args.clients_nice})\n")  # fmt: skip
    print(f"GET /v1/fine_tuning/jobs/{{id}} while {args.rate:g} events/s are written to the job:\n")
    print("| event streams | requests/s | p50 ms | p99 ms | API CPU (cores) |\n| --- | ---: | ---: | ---: | ---: |")
    polls = (("no streams, before", alone), (f"{args.streams} streams open", with_streams),
             ("no streams, after", alone_after))  # fmt: skip
    for name, result in polls:
        print(f"| {name} | {result['rps']:.0f} | {result['p50']:.1f} | {result['p99']:.1f} | {result['api_cpu']:.2f} |")
    return 0 if missed == 0 and duplicates == 0 and ended == args.streams else 1


if __name__ == "__main__":
    sys.exit(main())
