"""Live job events for the Server-Sent Events streams: one shared tail per streamed job per API process.

However many clients stream a job, each API process reads that job's new events with one query every
LORAQ_EVENT_POLL_SECONDS and hands every new event, serialised once, to all of them. Each process reads the
database, the truth, so any number of uvicorn workers and API hosts work the same on SQLite and PostgreSQL.
On PostgreSQL the database also says when a job has a new event (migration 0010's NOTIFY, received by
api/job_reads.py's listener), and the job's tail reads at once (at most every `MIN_READ_GAP` seconds); the
polls stay, for notifications lost while the listener reconnects.

Events are ordered by `seq`, assigned at INSERT. On PostgreSQL transactions commit out of order, so an event
with a lower seq can become visible after one with a higher seq was already read, and a tail asking only for
`seq > newest` would skip it for good. So every read covers a window below the newest seq seen (`EventWindow`):
each event above both the newest seq that had been read `LOOKBACK_SECONDS` ago and the `WINDOW_EVENTS`-th
newest event is read again, and ids already seen are not passed on twice. An event whose transaction commits
within that time, or before that many of the job's later events, is delivered; one held open longer is not
(event writes are short transactions; the list endpoint still has it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import anyio
from sqlalchemy import select

from api.schemas import EventPublic, JobPublic
from models import Job, JobEvent
from models.session import get_engine

logger = logging.getLogger("loraq.api")

LOOKBACK_SECONDS = 10.0
WINDOW_EVENTS = 20
MIN_READ_GAP = 0.05  # a job writing events faster is read in batches, not once per event
_EVENTS, _JOBS = JobEvent.__table__, Job.__table__


@dataclass(frozen=True)
class StreamEvent:
    """One event as a stream sends it."""

    id: str
    seq: int
    frame: bytes  # `id: …` and `data: <the list endpoint's item>`, ready to write


def event_frame(row) -> StreamEvent:
    data = EventPublic.of(cast(JobEvent, row)).model_dump_json()  # a Core row reads like a JobEvent
    return StreamEvent(row.id, row.seq, f"id: {row.id}\ndata: {data}\n\n".encode())


def end_frame(job_json: str) -> bytes:
    return f"event: end\ndata: {job_json}\n\n".encode()


@dataclass
class EventBatch:
    events: list[StreamEvent]  # not seen before, in seq order
    end: bytes | None = None  # the `end` frame, once the job has succeeded, failed or been cancelled


class EventWindow:
    """The reads of one job's events (blocking: call it from a worker thread), with the lookback window."""

    def __init__(
        self, database_url: str, job_id: str, lookback: float = LOOKBACK_SECONDS, window: int = WINDOW_EVENTS,
        clock: Callable[[], float] = time.monotonic,
    ):  # fmt: skip
        self.database_url, self.job_id = database_url, job_id
        self.lookback, self.window, self.clock = lookback, window, clock
        self.floor = 0  # events with seq above it are read again each time
        self.seen: dict[str, int] = {}  # id -> seq, of the events above the floor
        self.newest = 0
        self.history: deque[tuple[float, int]] = deque()  # (when, newest seq read by then)

    def prime(self) -> None:
        """Take the newest events as seen without passing them on: a stream reads what was committed before it
        subscribed by itself, and the tail brings what commits after."""
        query = (
            select(JobEvent.id, JobEvent.seq)
            .where(JobEvent.job_id == self.job_id)
            .order_by(JobEvent.seq.desc())
            .limit(self.window)
        )
        with get_engine(self.database_url).connect() as connection:
            rows = connection.execute(query).all()
        self.seen = {row.id: row.seq for row in rows}
        self.newest = max(self.seen.values(), default=0)
        self.floor = min(self.seen.values()) - 1 if len(rows) == self.window else 0
        self.history.append((self.clock(), self.newest))

    def read(self) -> EventBatch:
        """New events, and the end frame if the job has finished. The job is read first, so every event
        committed with (or before) its final status is among the events read after it."""
        events = select(_EVENTS).where(JobEvent.job_id == self.job_id, JobEvent.seq > self.floor).order_by(JobEvent.seq)
        with get_engine(self.database_url).connect() as connection:
            job = connection.execute(select(_JOBS).where(Job.id == self.job_id)).first()
            rows = connection.execute(events).all()
        fresh = [event_frame(row) for row in rows if row.id not in self.seen]
        for event in fresh:
            self.seen[event.id] = event.seq
            self.newest = max(self.newest, event.seq)
        self._raise_floor()
        end = None
        if job is not None and job.status.finished:
            end = end_frame(JobPublic.of(cast(Job, job)).model_dump_json())
        return EventBatch(fresh, end)

    def _raise_floor(self) -> None:
        now = self.clock()
        self.history.append((now, self.newest))
        while len(self.history) > 1 and self.history[1][0] <= now - self.lookback:
            self.history.popleft()
        when, newest_then = self.history[0]
        by_time = newest_then if when <= now - self.lookback else self.floor
        seqs = sorted(self.seen.values())
        by_count = seqs[-self.window] - 1 if len(seqs) >= self.window else self.floor
        self.floor = max(self.floor, min(by_time, by_count))
        self.seen = {event_id: seq for event_id, seq in self.seen.items() if seq > self.floor}


# ---------------------------------------------------------------- fan-out to the streams

CLOSED = object()  # the stream should end: the server is stopping, the tail failed, or the client lags
MAX_QUEUED = 1000  # events waiting for one slow client; beyond it the stream ends and the client resumes


@dataclass(eq=False)
class Subscription:
    """One stream's queue of frames from its job's tail."""

    tail: JobTail
    items: deque[StreamEvent | bytes] = field(default_factory=deque)
    closed: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def push(self, item: StreamEvent | bytes) -> None:
        if len(self.items) >= MAX_QUEUED:
            self.close()
        if not self.closed:
            self.items.append(item)
            self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    async def next(self, timeout: float) -> StreamEvent | bytes | object | None:
        """The next event or end frame, CLOSED, or None after `timeout` seconds of nothing."""
        if not self.items and not self.closed:
            self.wake.clear()
            with anyio.move_on_after(timeout):
                await self.wake.wait()
        if self.items and not self.closed:
            return self.items.popleft()
        return CLOSED if self.closed else None


class JobTail:
    """Reads one job's events for every stream of it in this process, while any is open."""

    def __init__(self, hub: EventHub, job_id: str):
        self.hub, self.job_id = hub, job_id
        self.window = EventWindow(hub.database_url, job_id)
        self.subscribers: set[Subscription] = set()
        self.primed = asyncio.Event()
        self.woken = asyncio.Event()  # the database said the job has a new event
        self.done = False
        self.task = asyncio.create_task(self._run(), name=f"event tail {job_id}")

    async def _run(self) -> None:
        try:
            await anyio.to_thread.run_sync(self.window.prime)
        except Exception:
            logger.warning("event tail of %s could not read the job's events", self.job_id, exc_info=True)
            self._finish()
            return
        finally:
            self.primed.set()
        while self.subscribers:
            self.woken.clear()  # before the read: a notification arriving during it brings another read
            try:
                batch = await anyio.to_thread.run_sync(self.window.read)
            except Exception:
                logger.warning("event tail of %s: read failed; trying again", self.job_id, exc_info=True)
                batch = EventBatch([])
            for subscription in list(self.subscribers):
                for event in batch.events:
                    subscription.push(event)
                if batch.end is not None:
                    subscription.push(batch.end)
            if batch.end is not None:
                break
            await asyncio.sleep(MIN_READ_GAP)
            with anyio.move_on_after(self.hub.poll_seconds - MIN_READ_GAP):
                await self.woken.wait()
        self._finish()

    def _finish(self) -> None:
        """No await in here: a subscribe() cannot slip in between `done` and leaving the hub."""
        self.done = True
        self.hub.forget(self)
        for subscription in self.subscribers:
            if not subscription.items:
                subscription.close()


class EventHub:
    """The tails of one API process, by job id."""

    def __init__(self, database_url: str, poll_seconds: float):
        self.database_url, self.poll_seconds = database_url, poll_seconds
        self.tails: dict[str, JobTail] = {}
        self.closing = False

    async def subscribe(self, job_id: str) -> Subscription:
        """A queue of the job's events committed from now on (and its end frame); returns once the tail has
        taken its starting point, so that a backlog read after this misses nothing in between."""
        tail = self.tails.get(job_id)
        if tail is None or tail.done:
            tail = self.tails[job_id] = JobTail(self, job_id)
        subscription = Subscription(tail)
        tail.subscribers.add(subscription)
        if self.closing:
            subscription.close()
        try:
            await tail.primed.wait()
        except BaseException:  # the client went away meanwhile: the tail must not keep reading for it
            self.unsubscribe(subscription)
            raise
        return subscription

    def wake(self, job_id: str) -> None:
        """The job has a new event: its tail, if any, reads now."""
        tail = self.tails.get(job_id)
        if tail is not None:
            tail.woken.set()

    def unsubscribe(self, subscription: Subscription) -> None:
        subscription.tail.subscribers.discard(subscription)

    def forget(self, tail: JobTail) -> None:
        if self.tails.get(tail.job_id) is tail:
            del self.tails[tail.job_id]

    def close(self) -> None:
        """End every stream now (the server is stopping); later subscriptions end at once."""
        self.closing = True
        for tail in list(self.tails.values()):
            for subscription in tail.subscribers:
                subscription.close()

    async def aclose(self) -> None:
        self.close()
        for tail in list(self.tails.values()):
            tail.task.cancel()
