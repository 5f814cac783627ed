"""Thin HTTP calls used by the end-to-end tests."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx

FINISHED = ("succeeded", "failed", "cancelled")


def upload(client: httpx.Client, content: bytes | list, filename: str = "train.jsonl", purpose="fine-tune"):
    if isinstance(content, list):
        content = "".join(json.dumps(row) + "\n" for row in content).encode()
    return client.post("/v1/files", files={"file": (filename, content)}, data={"purpose": purpose})


def upload_ok(client: httpx.Client, content: bytes | list) -> str:
    response = upload(client, content)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def create_job(client: httpx.Client, training_file: str, **body):
    return client.post(
        "/v1/fine_tuning/jobs", json={"model": "loraq-tiny-chat", "training_file": training_file, **body}
    )


def wait_for(client: httpx.Client, job_id: str, until=FINISHED, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/fine_tuning/jobs/{job_id}").json()
        if job["status"] in until:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s")


def first_running(client: httpx.Client, jobs: list[dict], timeout: float = 180) -> tuple[dict, ...]:
    """`jobs` reordered with the one a worker took first at the front. Jobs validate concurrently, so the
    order they reach the workers need not be the order they were created in."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = [client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] for job in jobs]
        if "running" in statuses:
            first = statuses.index("running")
            return (jobs[first], *jobs[:first], *jobs[first + 1 :])
        time.sleep(0.3)
    raise AssertionError(f"none of the jobs running after {timeout}s: {statuses}")


def events(client: httpx.Client, job_id: str) -> list[dict]:
    """All events, oldest first."""
    collected, after = [], None
    while True:
        params = {"limit": 100, **({"after": after} if after else {})}
        page = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params=params).json()
        collected += page["data"]
        if not page["has_more"]:
            return list(reversed(collected))
        after = page["data"][-1]["id"]


def wait_for_event(client: httpx.Client, job_id: str, kind: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in events(client, job_id) if e["type"] == kind]
        if found:
            return found[0]
        time.sleep(0.3)
    raise AssertionError(f"no {kind} event for {job_id} within {timeout}s")


# ---------------------------------------------------------------- event streams


def stream_events(client: httpx.Client, job_id: str, last_event_id: str | None = None, **params):
    """The job's Server-Sent Events stream (a context manager giving the open response)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    url = f"/v1/fine_tuning/jobs/{job_id}/events"
    return client.stream("GET", url, params={"stream": "true", **params}, headers=headers, timeout=60)


def sse_frames(response: httpx.Response) -> Iterator[dict]:
    """Frames as they arrive: {"event", "id", "data"} (data parsed), or {"comment"} for a comment line."""
    frame: dict = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            yield {"comment": line[1:].strip()}
        elif line:
            name, _, value = line.partition(": ")
            frame[name] = value
        elif frame:
            yield {"event": frame.get("event", "message"), "id": frame.get("id"), "data": json.loads(frame["data"])}
            frame = {}


def read_stream(response: httpx.Response) -> tuple[list[dict], list[dict]]:
    """Every frame until the server closes the stream: (events, frames after the events: the end)."""
    events, rest = [], []
    for frame in sse_frames(response):
        if "comment" in frame:
            continue
        (rest if rest or frame["event"] != "message" else events).append(frame)
    return events, rest
