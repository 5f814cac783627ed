"""One stream's frames (api/event_stream.py) on a real SQLite database: a resumed stream sends nothing at or
before its cursor, even when its job's tail brings those events after the stream subscribed."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from api.event_stream import _frames
from api.event_tails import EventHub
from api.stream_slots import Slot
from loraq.migrate import upgrade
from loraq.settings import Settings
from models import job_state
from models.base import new_id
from models.records import Job, JobEvent
from models.session import session_scope


class HeldSlots:
    """The slots' two calls a stream makes, without Redis (tests/api/test_stream_slots.py covers them)."""

    def hold(self, slot: Slot) -> None:
        pass

    async def release(self, slot: Slot) -> None:
        pass


def test_a_resumed_stream_skips_what_its_tail_brings_from_before_the_cursor(tmp_path):
    url = Settings(data_dir=tmp_path).resolved_database_url
    upgrade(url)
    job_id = new_id("ftjob")
    with session_scope(url) as session:
        job_state.create_job(
            session, Job(id=job_id, owner="alice", model="m", training_file="file-x", hyperparameters={}, seed=0)
        )

    async def scenario() -> list[bytes]:
        hub = EventHub(url, poll_seconds=30)  # the tail reads when woken, as a NOTIFY would make it
        watcher = await hub.subscribe(job_id)  # another stream of the job keeps its tail alive
        await asyncio.sleep(0.3)  # the tail's first read is done
        with session_scope(url) as session:
            job_state.add_event(session, job_id, "seen by the client before it reconnected")
            cursor = session.scalar(select(JobEvent.seq).order_by(JobEvent.seq.desc()).limit(1))
        frames = _frames(hub, HeldSlots(), Slot("alice", "s"), job_id, cursor, heartbeat=1.0)
        first = asyncio.create_task(anext(frames))
        await asyncio.sleep(0.3)  # subscribed, and an empty backlog after the cursor
        hub.wake(job_id)  # the tail reads the event now, and hands it to both streams
        sent = [await first]
        await frames.aclose()
        hub.unsubscribe(watcher)
        await hub.aclose()
        return sent

    assert asyncio.run(scenario()) == [b": ping\n\n"]  # the heartbeat, not the event again
