"""The webhook sender against a real local HTTP receiver and a SQLite database built by the migrations: signed
deliveries, retries with backoff after a 500 or a refused connection, giving up after the retry window, and
the backoff schedule itself."""

from __future__ import annotations

import random
from datetime import timedelta

import openai
import pytest
from sqlalchemy import select, update

from loraq.migrate import upgrade
from loraq.settings import Settings
from loraq.webhook_signing import new_secret
from models import job_state
from models.base import utcnow
from models.records import DeliveryStatus, Job, JobStatus, WebhookDelivery, WebhookEndpoint
from models.session import session_scope
from tests.webhook_receiver import trickling_receiver
from worker.webhook_delivery import (
    MAX_RETRY_DELAY_SECONDS,
    WebhookSender,
    attempt_seconds,
    delivery_lease_seconds,
    next_attempt_at,
    retry_delay,
)

SECRET = new_secret()


@pytest.fixture
def settings(tmp_path) -> Settings:
    settings = Settings(data_dir=tmp_path, webhook_allowed_hosts="127.0.0.1", webhook_timeout_seconds=5)
    upgrade(settings.resolved_database_url)
    return settings


def cancelled_job_event(settings: Settings, url: str, job_id: str = "ftjob-sender000000000000000000") -> str:
    """An endpoint, and a job cancelled so that its event waits in the outbox; returns the message id."""
    db = settings.resolved_database_url
    with session_scope(db) as session:
        session.add(WebhookEndpoint(id="wh-1", owner="alice", url=url, event_types=["fine_tuning.job.cancelled"],
                                    secret=SECRET))  # fmt: skip
        job_state.create_job(
            session, Job(id=job_id, owner="alice", model="m", training_file="file-x", hyperparameters={}, seed=0)
        )
    with session_scope(db) as session:
        job_state.cancel_job(session, job_id, was=JobStatus.validating_files)
    return row(settings).id


def row(settings: Settings) -> WebhookDelivery:
    with session_scope(settings.resolved_database_url) as session:
        return session.scalars(select(WebhookDelivery)).one()


def make_due(settings: Settings) -> None:
    with session_scope(settings.resolved_database_url) as session:
        session.execute(update(WebhookDelivery).values(next_attempt_at=utcnow()))


def test_a_signed_delivery_is_sent_once(settings, receiver):
    message_id = cancelled_job_event(settings, receiver.url)
    sender = WebhookSender(settings, "worker-a")
    assert sender.send_next() and not sender.send_next()  # delivered, then nothing is due
    ((headers, body),) = receiver.received()
    assert headers["webhook-id"] == message_id
    event = openai.OpenAI(api_key="unused").webhooks.unwrap(body, headers, secret=SECRET)
    assert event.type == "fine_tuning.job.cancelled" and event.data.id == "ftjob-sender000000000000000000"
    delivered = row(settings)
    assert (delivered.status, delivered.attempts, delivered.last_status_code) == (DeliveryStatus.delivered, 1, 200)


def test_a_500_and_a_refused_connection_are_retried_later_with_the_same_webhook_id(settings, receiver):
    message_id = cancelled_job_event(settings, receiver.url)
    sender = WebhookSender(settings, "worker-a")
    receiver.answer(500)
    assert sender.send_next()
    failed = row(settings)
    assert (failed.status, failed.attempts, failed.last_status_code, failed.last_error) == (
        DeliveryStatus.pending, 1, 500, "HTTP 500")  # fmt: skip
    assert failed.next_attempt_at > utcnow() and not sender.send_next()  # waits for its retry time

    receiver.stop()
    make_due(settings)
    assert sender.send_next()
    refused = row(settings)
    assert refused.attempts == 2 and refused.last_status_code is None and "ConnectError" in refused.last_error

    receiver.start()
    receiver.answer(200)
    make_due(settings)
    assert sender.send_next()
    assert row(settings).status == DeliveryStatus.delivered and row(settings).attempts == 3
    assert [h["webhook-id"] for h, _ in receiver.received()] == [message_id, message_id]


def test_a_url_no_longer_allowed_is_not_called_and_the_last_retry_gives_up(settings, receiver):
    cancelled_job_event(settings, receiver.url)
    settings.webhook_allowed_hosts = ""  # the operator took 127.0.0.1 off the list since registration
    with session_scope(settings.resolved_database_url) as session:  # the retry window is over
        session.execute(update(WebhookDelivery).values(created_at=utcnow() - timedelta(days=2)))
    assert WebhookSender(settings, "worker-a").send_next()
    given_up = row(settings)
    assert given_up.status == DeliveryStatus.failed and "must use https://" in given_up.last_error
    assert receiver.received() == []


def test_a_receiver_trickling_its_answer_is_cut_off_within_the_lease(settings):
    """httpx's timeout bounds each read: without a deadline on the whole attempt, a receiver sending a byte at a
    time would outlast the row's lease, and another worker would send the event again meanwhile."""
    settings.webhook_timeout_seconds = 1
    with trickling_receiver() as url:
        cancelled_job_event(settings, url)
        assert attempt_seconds(settings) < delivery_lease_seconds(settings)
        assert WebhookSender(settings, "worker-a").send_next()
    failed = row(settings)
    assert (failed.status, failed.attempts, failed.last_status_code) == (DeliveryStatus.pending, 1, None)
    assert failed.last_error == "no complete answer within 2 s" and failed.next_attempt_at is not None
    assert failed.lease_owner is None  # released with its attempt, long before the lease would have run out


def test_backoff_doubles_with_jitter_up_to_a_cap_and_stops_after_the_window():
    rng = random.Random(0)
    for attempts in range(1, 12):
        delays = [retry_delay(attempts, 10, rng) for _ in range(50)]
        full = min(10 * 2 ** (attempts - 1), MAX_RETRY_DELAY_SECONDS)
        assert all(full / 2 <= d <= full for d in delays) and len(set(delays)) > 1
    assert retry_delay(200, 10, rng) <= MAX_RETRY_DELAY_SECONDS

    settings = Settings(webhook_retry_base_seconds=10, webhook_retry_for_seconds=86400)
    created = utcnow()
    now, attempts, schedule = created, 0, []
    while (at := next_attempt_at(created, attempts + 1, now, settings, rng)) is not None:
        attempts, now = attempts + 1, at
        schedule.append(now)
    assert schedule == sorted(schedule) and schedule[-1] <= created + timedelta(days=1)
    assert created + timedelta(hours=18) < schedule[-1]  # retried for most of the day
    assert 12 <= len(schedule) <= 30, len(schedule)
