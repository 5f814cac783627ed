"""The webhook outbox on real databases built by the migrations (SQLite and PostgreSQL): a job's terminal
status writes one row per matching endpoint in the same transaction, and of workers racing to claim a row
exactly one wins; test events are logged final, and a URL change makes pending rows due."""

from __future__ import annotations

import json
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from loraq.migrate import upgrade
from models import job_state
from models.base import utcnow
from models.records import DeliveryStatus, Job, JobStatus, WebhookDelivery, WebhookEndpoint
from models.session import session_scope
from models.webhook_outbox import (
    EVENT_TYPES,
    SAMPLE_JOB_ID,
    claim_delivery,
    make_pending_due,
    mark_delivered,
    record_failed_attempt,
    record_test_delivery,
    sample_event,
)
from tests.servers import PostgresServer

JOB = "ftjob-hooks00000000000000000000"
HOUR = timedelta(hours=1)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server_url(request, tmp_path_factory):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'outbox.db'}"
        return
    server = PostgresServer().start()
    yield server.url
    server.stop()


@pytest.fixture
def db(server_url):
    upgrade(server_url)
    yield server_url
    with session_scope(server_url) as session:  # a clean slate for the next test on this database
        for table in (WebhookDelivery, WebhookEndpoint, Job):
            session.query(table).delete()


def endpoint(db: str, endpoint_id: str, owner: str, event_types=EVENT_TYPES) -> None:
    with session_scope(db) as session:
        session.add(WebhookEndpoint(id=endpoint_id, owner=owner, url="https://example.com/hook",
                                    event_types=list(event_types), secret="whsec_AAAA"))  # fmt: skip


def new_job(db: str, owner: str = "alice", job_id: str = JOB) -> str:
    with session_scope(db) as session:
        job_state.create_job(
            session, Job(id=job_id, owner=owner, model="m", training_file="file-x", hyperparameters={}, seed=0)
        )
    return job_id


def deliveries(db: str) -> list[WebhookDelivery]:
    with session_scope(db) as session:
        return list(session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.seq)))


def test_a_terminal_status_writes_rows_for_matching_endpoints_in_its_transaction(db):
    endpoint(db, "wh-all", "alice")
    endpoint(db, "wh-failures", "alice", ["fine_tuning.job.failed"])
    endpoint(db, "wh-bob", "bob")
    job_id = new_job(db)
    assert deliveries(db) == []  # creating a job announces nothing

    with pytest.raises(RuntimeError), session_scope(db) as session:  # rolled back: no status change, no rows
        assert job_state.cancel_job(session, job_id, was=JobStatus.validating_files)
        raise RuntimeError("the request failed after the cancel")
    assert deliveries(db) == []

    with session_scope(db) as session:
        assert job_state.cancel_job(session, job_id, was=JobStatus.validating_files)
    (row,) = deliveries(db)
    assert (row.endpoint_id, row.event_type, row.job_id) == ("wh-all", "fine_tuning.job.cancelled", job_id)
    assert row.status == DeliveryStatus.pending and row.attempts == 0 and row.id.startswith("msg_")
    event = json.loads(row.payload)
    assert event == {"object": "event", "id": row.event_id, "type": "fine_tuning.job.cancelled",
                     "created_at": event["created_at"], "data": {"id": job_id}}  # fmt: skip
    assert event["id"].startswith("evt_") and abs(event["created_at"] - utcnow().timestamp()) < 60


def test_a_failed_job_reaches_both_of_its_owners_endpoints_with_one_event_id(db):
    endpoint(db, "wh-all", "alice")
    endpoint(db, "wh-failures", "alice", ["fine_tuning.job.failed"])
    job_id = new_job(db)
    with session_scope(db) as session:
        assert job_state.claim_validation(session, job_id, "validator", 60)
        assert job_state.fail_validation(session, job_id, "validator", "invalid_training_file", "empty")
    rows = deliveries(db)
    assert sorted(r.endpoint_id for r in rows) == ["wh-all", "wh-failures"]
    assert len({r.event_id for r in rows}) == 1 and len({r.id for r in rows}) == 2  # one event, two messages


def test_of_workers_racing_for_a_row_exactly_one_claims_it(db):
    endpoint(db, "wh-all", "alice")
    with session_scope(db) as session:
        job_state.cancel_job(session, new_job(db), was=JobStatus.validating_files)
    start, winners = threading.Barrier(6), []

    def claim(worker: str) -> None:
        start.wait()
        with session_scope(db) as session:
            if claim_delivery(session, worker, lease_seconds=60) is not None:
                winners.append(worker)

    threads = [threading.Thread(target=claim, args=(f"worker-{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1, winners
    (row,) = deliveries(db)
    assert row.lease_owner == winners[0] and row.attempts == 1


def test_an_expired_lease_is_claimed_again_and_a_2xx_ends_the_row(db):
    endpoint(db, "wh-all", "alice")
    with session_scope(db) as session:
        job_state.cancel_job(session, new_job(db), was=JobStatus.validating_files)
    with session_scope(db) as session:  # a worker that dies mid-request: its lease runs out
        first = claim_delivery(session, "dead-worker", lease_seconds=-1)
    with session_scope(db) as session:
        second = claim_delivery(session, "worker-2", lease_seconds=60)
    assert first is not None and second is not None and second.id == first.id and second.attempts == 2
    with session_scope(db) as session:  # the dead worker's late failure does not overwrite its successor's lease
        assert not record_failed_attempt(session, first.id, "dead-worker", 500, "HTTP 500", utcnow())
        assert mark_delivered(session, second.id, 204)
    with session_scope(db) as session:
        assert claim_delivery(session, "worker-3", lease_seconds=60) is None  # never sent again
    (row,) = deliveries(db)
    assert row.status == DeliveryStatus.delivered and row.last_status_code == 204 and row.delivered_at


def a_failed_attempt(db: str, status_code: int, retry_at) -> None:
    """A cancelled job's event for an endpoint taking every event, claimed and failed once, due at `retry_at`."""
    endpoint(db, "wh-all", "alice")
    with session_scope(db) as session:
        job_state.cancel_job(session, new_job(db), was=JobStatus.validating_files)
    with session_scope(db) as session:
        row = claim_delivery(session, "w", lease_seconds=60)
        assert row is not None
        assert record_failed_attempt(session, row.id, "w", status_code, f"HTTP {status_code}", retry_at)


def test_a_failed_attempt_waits_for_its_retry_then_gives_up(db):
    a_failed_attempt(db, 503, utcnow() + timedelta(hours=1))
    with session_scope(db) as session:
        assert claim_delivery(session, "w", lease_seconds=60) is None  # not due before its retry time
        session.query(WebhookDelivery).update({"next_attempt_at": utcnow() - timedelta(seconds=1)})
    with session_scope(db) as session:
        row = claim_delivery(session, "w", lease_seconds=60)
        assert row is not None and row.attempts == 2
        assert record_failed_attempt(session, row.id, "w", None, "ConnectError: refused", None)
    (row,) = deliveries(db)
    assert row.status == DeliveryStatus.failed and row.next_attempt_at is None
    assert (row.last_status_code, row.last_error) == (None, "ConnectError: refused")


def test_a_pause_is_announced_when_the_job_becomes_paused_not_when_it_is_asked(db):
    from models.api_keys import Principal

    endpoint(db, "wh-paused", "alice", ["fine_tuning.job.paused"])
    job_id = new_job(db)
    by = Principal(owner="alice", key_id="key-abc", key_name="ci")
    with session_scope(db) as session:
        job_state.get_job(session, job_id).status = JobStatus.running
    with session_scope(db) as session:  # asked: still running until training has checkpointed
        assert job_state.pause_job(session, job_id, was=JobStatus.running, by=by)
    assert deliveries(db) == []
    with session_scope(db) as session:
        job_state.get_job(session, job_id).status = JobStatus.queued
        job_state.get_job(session, job_id).pause_requested = False
    with session_scope(db) as session:
        assert job_state.pause_job(session, job_id, was=JobStatus.queued, by=by)
    (row,) = deliveries(db)
    assert (row.event_type, row.job_id) == ("fine_tuning.job.paused", job_id)
    with session_scope(db) as session:  # resumed: nothing announced
        assert job_state.resume_job(session, job_id, by=by)
    assert len(deliveries(db)) == 1


def test_a_test_event_is_logged_final_and_a_url_change_makes_pending_rows_due(db):
    a_failed_attempt(db, 500, utcnow() + HOUR)
    now = utcnow()
    for status_code, error in [(204, None), (None, "ConnectError: refused")]:
        message_id, body = sample_event("fine_tuning.job.failed", now)
        with session_scope(db) as session:
            record_test_delivery(session, "wh-all", message_id, body, now, status_code, error)
    pending, delivered, failed = deliveries(db)
    assert json.loads(delivered.payload)["data"] == {"id": SAMPLE_JOB_ID} and delivered.job_id is None
    assert (delivered.status, delivered.attempts, delivered.last_status_code) == (DeliveryStatus.delivered, 1, 204)
    assert (failed.status, failed.last_error, failed.next_attempt_at) == (DeliveryStatus.failed, error, None)
    with session_scope(db) as session:
        assert claim_delivery(session, "w", lease_seconds=60) is None  # the pending one waits; tests are final
        assert make_pending_due(session, "wh-all") == 1
    with session_scope(db) as session:
        claimed = claim_delivery(session, "w", lease_seconds=60)
        assert claimed is not None and claimed.id == pending.id
        assert claim_delivery(session, "w", lease_seconds=60) is None
    with session_scope(db) as session:  # deleting the endpoint drops its log, test rows included
        session.query(WebhookEndpoint).delete()
    assert deliveries(db) == []
