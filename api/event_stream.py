"""GET /v1/fine_tuning/jobs/{id}/events?stream=true: a job's events as Server-Sent Events.

The stream sends the job's events after the cursor (`Last-Event-ID`, else `after`; none: from the first),
oldest first, then each new one as its tail (api/event_tails.py) reads it; each as `id: <event id>` and
`data: <the list endpoint's item>`. A `: ping` comment follows every LORAQ_EVENT_HEARTBEAT_SECONDS of silence.
Once the job has succeeded, failed or been cancelled it sends `event: end` with the job object and closes.
Database work runs in worker threads, each read in its own short connection: nothing is held open for the
stream's lifetime.

A resume continues after its cursor's `seq`. Within one stream an event whose transaction commits after a
later event's is still sent (the tail's lookback, api/event_tails.py); across a reconnect it is not if the
client had already received the later event before the earlier one committed: the cursor, an event id, cannot
say which earlier events the client lacks. That takes a client reconnecting within the milliseconds between
two such commits.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from fastapi import Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from api.event_tails import CLOSED, EventHub, StreamEvent, event_frame
from api.stream_slots import Slot, StreamSlots
from models import JobEvent
from models.session import get_engine

BACKLOG_PAGE = 500  # events per read (and per write) of what came before the stream started
RECENT_IDS = 1024  # ids remembered per stream: the overlap of its backlog and its tail lies among its newest

STREAM_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "With `stream=true`: Server-Sent Events (`id:` and `data:` per event, `: ping` heartbeats, "
        "`event: end` with the job object once it has finished)",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
}


class RecentIds:
    """The ids a stream sent lately, to send none twice."""

    def __init__(self, size: int = RECENT_IDS):
        self.order: deque[str] = deque()
        self.ids: set[str] = set()
        self.size = size

    def add(self, event_id: str) -> bool:
        """False if it was sent already."""
        if event_id in self.ids:
            return False
        self.ids.add(event_id)
        self.order.append(event_id)
        if len(self.order) > self.size:
            self.ids.discard(self.order.popleft())
        return True


def _backlog_page(database_url: str, job_id: str, after_seq: int) -> list[StreamEvent]:
    query = (
        select(JobEvent.__table__)
        .where(JobEvent.job_id == job_id, JobEvent.seq > after_seq)
        .order_by(JobEvent.seq)
        .limit(BACKLOG_PAGE)
    )
    with get_engine(database_url).connect() as connection:
        return [event_frame(row) for row in connection.execute(query)]


async def _frames(
    hub: EventHub, slots: StreamSlots, slot: Slot, job_id: str, after_seq: int, heartbeat: float
) -> AsyncIterator[bytes]:
    slots.hold(slot)
    subscription = None
    cursor = after_seq
    try:
        # Subscribed before the backlog is read: whatever commits meanwhile is in one or the other (or both).
        subscription = await hub.subscribe(job_id)
        sent = RecentIds()
        while True:
            page = await anyio.to_thread.run_sync(_backlog_page, hub.database_url, job_id, after_seq)
            if frames := b"".join(event.frame for event in page if sent.add(event.id)):
                yield frames
            if page:
                after_seq = page[-1].seq
            if len(page) < BACKLOG_PAGE:
                break
        while True:
            item = await subscription.next(heartbeat)
            if item is None:
                yield b": ping\n\n"
            elif item is CLOSED:
                return
            elif isinstance(item, StreamEvent):
                # Not at or before the cursor: a tail's read that was under way as this stream resumed can
                # bring the events the client had already, up to the one it resumes after.
                if item.seq > cursor and sent.add(item.id):
                    yield item.frame
            elif isinstance(item, bytes):
                yield item  # the end frame
                return
    finally:
        with anyio.CancelScope(shield=True):  # also when the client went away and the stream is cancelled
            if subscription is not None:
                hub.unsubscribe(subscription)
            await slots.release(slot)


async def open_event_stream(request: Request, job_id: str, owner: str, after_seq: int) -> StreamingResponse:
    """The stream's response, once the owner has a free slot (else 429)."""
    state, settings = request.app.state, request.app.state.settings
    slot = await state.stream_slots.acquire(owner)
    frames = _frames(state.event_hub, state.stream_slots, slot, job_id, after_seq, settings.event_heartbeat_seconds)
    # No caching, and no buffering by a reverse proxy (nginx reads X-Accel-Buffering).
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(frames, media_type="text/event-stream", headers=headers)


def close_streams_on_exit_signals(close: Callable[[], None]) -> None:
    """uvicorn, when told to stop, waits for open responses to finish before it shuts the app down, and an
    event stream does not finish by itself: so on the signals uvicorn stops on, close every stream, then run
    uvicorn's own handler. Only where a handler is installed (uvicorn's, in a server process's main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(signum)
        if not callable(previous):
            continue

        def handler(number, frame, previous=previous) -> None:
            loop.call_soon_threadsafe(close)
            previous(number, frame)

        signal.signal(signum, handler)
