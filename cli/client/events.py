"""Following a job's events over its Server-Sent Events stream, resuming after the last event on a reconnect."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from cli.client.connection import CommandError, Connection

RECONNECTS = 8  # tries in a row without receiving anything, before giving up
READ_TIMEOUT = 60.0  # the server sends a heartbeat at least every 15 s


@dataclass
class Frame:
    event: str  # "message" unless the stream names it (`end`)
    data: str
    id: str | None


def parse_frames(lines: Iterable[str]) -> Iterator[Frame]:
    """SSE frames from the stream's lines (comments, such as `: ping`, are skipped)."""
    event, event_id = "message", None
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield Frame(event, "\n".join(data), event_id)
            event, data, event_id = "message", [], None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            event_id = value


def follow(connection: Connection, job_id: str, after: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """("event", item) for each of the job's events after `after` (all if None), oldest first, then ("end",
    job) once it has finished. A dropped connection is resumed from the last event received."""
    last, failures = after, 0
    timeout = httpx.Timeout(30.0, read=READ_TIMEOUT)
    while True:
        headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last} if last else {})}
        try:
            with connection.stream(
                "GET", f"fine_tuning/jobs/{job_id}/events", params={"stream": "true"}, headers=headers, timeout=timeout
            ) as response:
                for frame in parse_frames(response.iter_lines()):
                    failures = 0
                    if frame.event == "end":
                        yield "end", json.loads(frame.data)
                        return
                    last = frame.id or last
                    yield "event", json.loads(frame.data)
            failures += 1  # closed without `end` (the server stopping): counted, so an empty loop gives up
            if failures > RECONNECTS:
                raise CommandError(f"the event stream of {job_id} keeps closing without an end")
        except CommandError as error:
            if error.status is not None and error.status < 500:  # an answer: retrying will not change it
                raise
            failures += 1
            if failures > RECONNECTS:
                raise
        except httpx.HTTPError:  # dropped mid-stream
            failures += 1
            if failures > RECONNECTS:
                raise CommandError(f"the event stream of {job_id} keeps failing") from None
        # The stream ended without `end` (the server restarting) or failed: resume after the last event.
        time.sleep(min(0.5 * 2**failures, 10.0))
