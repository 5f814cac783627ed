"""The event tail's reads (api/event_tails.py EventWindow) on real databases built by the migrations: new
events once each, the end frame with the final status, and on PostgreSQL an event whose transaction commits
after a later one's is still delivered."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from api.event_tails import EventWindow
from loraq.migrate import upgrade
from loraq.settings import Settings
from models import job_state
from models.base import new_id
from models.records import Job, JobEvent, JobStatus
from models.session import get_sessionmaker, session_scope
from tests.servers import PostgresServer


@pytest.fixture(scope="module")
def postgres_url():
    server = PostgresServer().start()
    upgrade(server.url)
    yield server.url
    server.stop()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    url = Settings(data_dir=tmp_path).resolved_database_url
    upgrade(url)
    return url


def new_job(url: str) -> str:
    job_id = new_id("ftjob")
    with session_scope(url) as session:
        job = Job(id=job_id, owner="alice", model="m", training_file="file-x", hyperparameters={}, seed=0)
        job_state.create_job(session, job)  # writes two events
    return job_id


def write_event(url: str, job_id: str, message: str) -> None:
    with session_scope(url) as session:
        job_state.add_event(session, job_id, message)


def messages(batch) -> list[str]:
    return [json.loads(e.frame.decode().split("data: ", 1)[1])["message"] for e in batch.events]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_new_events_once_each_then_the_end_frame(sqlite_url):
    job_id = new_job(sqlite_url)
    window = EventWindow(sqlite_url, job_id)
    window.prime()  # the two creation events are the stream's backlog, not the tail's
    assert window.read().events == []
    write_event(sqlite_url, job_id, "one")
    write_event(sqlite_url, job_id, "two")
    batch = window.read()
    assert messages(batch) == ["one", "two"] and batch.end is None
    assert batch.events[0].frame.startswith(f"id: {batch.events[0].id}\ndata: ".encode())
    assert window.read().events == []
    with session_scope(sqlite_url) as session:
        assert job_state.cancel_job(session, job_id, was=JobStatus.validating_files)
    batch = window.read()
    assert messages(batch) == ["Job cancelled"]  # committed with the status, so read before the end
    event, data = batch.end.decode().rstrip("\n").split("\n")
    assert event == "event: end" and json.loads(data.removeprefix("data: "))["status"] == "cancelled"


def test_event_committed_after_a_later_one_is_delivered(postgres_url):
    job_id = new_job(postgres_url)
    window = EventWindow(postgres_url, job_id)
    window.prime()
    slow = get_sessionmaker(postgres_url)()
    try:
        slow.add(JobEvent(id=new_id("ftevent"), job_id=job_id, message="slow"))
        slow.flush()  # INSERTed: its seq is taken now, its commit comes later
        write_event(postgres_url, job_id, "fast")  # a higher seq, committed first
        assert messages(window.read()) == ["fast"]
        slow.commit()
    finally:
        slow.close()
    with session_scope(postgres_url) as session:
        seqs = dict(session.execute(select(JobEvent.message, JobEvent.seq).where(JobEvent.job_id == job_id)).all())
    assert seqs["slow"] < seqs["fast"]  # a tail reading only `seq > newest` would never see it
    assert messages(window.read()) == ["slow"]
    assert window.read().events == []


def test_window_stays_small_as_the_job_grows(sqlite_url):
    """Re-read rows are bounded: the floor rises once events are older than the lookback and more than the
    window's count."""
    job_id = new_job(sqlite_url)
    clock = Clock()
    window = EventWindow(sqlite_url, job_id, lookback=10, window=5, clock=clock)
    window.prime()
    for second in range(30):
        write_event(sqlite_url, job_id, f"e{second}")
        clock.now = float(second)
        assert len(messages(window.read())) == 1
    assert len(window.seen) <= 12  # ten seconds of events (one a second), never all thirty
    assert window.floor > 0
