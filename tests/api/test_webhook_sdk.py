"""The `openai` SDK's `client.webhooks.update`, `.rotate_secret` and `.test`, unchanged, against the API served over
real HTTP (uvicorn in a thread, a SQLite database built by the migrations), with a real local receiver
(tests/webhook_receiver.py) and the worker's sender for the outbox: signatures are checked with the SDK's
`unwrap`, old and new secret after a rotation that keeps the old one, only the new one otherwise."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import openai
import pytest
import uvicorn
from sqlalchemy import select, update

from api.app import create_app
from api.routes import webhooks as webhook_routes
from api.routes.webhooks import KEEP_SECRETS_AT_MOST, TESTS_AT_ONCE
from loraq.settings import Settings
from loraq.webhook_signing import new_secret
from models import job_state
from models.api_keys import create_key
from models.base import utcnow
from models.records import DeliveryStatus, Job, JobStatus, WebhookDelivery, WebhookEndpoint
from models.session import session_scope
from models.webhook_outbox import SAMPLE_JOB_ID
from tests.api.conftest import OWNER_KEYS, auth
from tests.servers import free_port
from tests.webhook_receiver import WebhookReceiver, trickling_receiver
from worker.webhook_delivery import WebhookSender

CANCELLED = "fine_tuning.job.cancelled"
verifier = openai.OpenAI(api_key="unused").webhooks


@pytest.fixture
def base_url(settings: Settings) -> Iterator[str]:
    """The API on a free local port; the receivers on 127.0.0.1 are allowed hosts."""
    settings.webhook_allowed_hosts = "127.0.0.1"
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=free_port(), log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the API did not start"
        threading.Event().wait(0.05)
    yield f"http://127.0.0.1:{server.config.port}/v1"
    server.should_exit = True
    thread.join(30)


def sdk_for(base_url: str, owner: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=OWNER_KEYS[owner], max_retries=0)


@pytest.fixture
def sdk(base_url) -> openai.OpenAI:
    return sdk_for(base_url, "alice")


def cancel_a_job(settings: Settings, job_id: str) -> None:
    """One of alice's jobs cancelled: its event waits in the outbox for each of her endpoints that takes it."""
    with session_scope(settings.resolved_database_url) as session:
        job_state.create_job(
            session, Job(id=job_id, owner="alice", model="m", training_file="file-x", hyperparameters={}, seed=0)
        )
    with session_scope(settings.resolved_database_url) as session:
        job_state.cancel_job(session, job_id, was=JobStatus.validating_files)


def send_all(settings: Settings) -> int:
    """Deliver every due outbox row, as a worker would; returns how many were sent."""
    sender, sent = WebhookSender(settings, "worker-a"), 0
    while sender.send_next():
        sent += 1
    return sent


def verifies(body: str, headers: dict[str, str], secret: str) -> bool:
    try:
        verifier.verify_signature(body, headers, secret=secret)
    except openai.InvalidWebhookSignatureError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- update
def test_update_changes_url_types_and_name_and_deliveries_follow(sdk, settings, receiver):
    endpoint = sdk.webhooks.create(url=receiver.url, name="ci", event_types=[CANCELLED])
    receiver.answer(500)
    cancel_a_job(settings, "ftjob-update000000000000000001")
    assert send_all(settings) == 1  # failed: waits for a retry, minutes away
    with session_scope(settings.resolved_database_url) as session:  # as if created a while ago
        session.execute(update(WebhookEndpoint).values(updated_at=utcnow() - timedelta(hours=1)))
    before = sdk.webhooks.retrieve(endpoint.id).updated_at

    unchanged = sdk.webhooks.update(endpoint.id, name="ci", event_types=[CANCELLED])
    assert unchanged.updated_at == before and sdk.webhooks.update(endpoint.id).updated_at == before

    moved = WebhookReceiver().start()
    try:
        updated = sdk.webhooks.update(
            endpoint.id, url=moved.url, name="pager", event_types=["fine_tuning.job.failed", CANCELLED]
        )
        assert (updated.url, updated.name, updated.event_types) == (moved.url, "pager", ["fine_tuning.job.failed",
                                                                                         CANCELLED])  # fmt: skip
        assert updated.updated_at > before and sdk.webhooks.retrieve(endpoint.id).url == moved.url
        assert "signing_secret" not in updated.model_dump() and updated.signing_secret_hint

        # The pending delivery is due at once and goes to the new URL, as does a later event.
        cancel_a_job(settings, "ftjob-update000000000000000002")
        assert send_all(settings) == 2
        events = [verifier.unwrap(body, headers, secret=endpoint.signing_secret) for headers, body in moved.received()]
        assert sorted(e.data.id for e in events) == ["ftjob-update000000000000000001", "ftjob-update000000000000000002"]
        assert len(receiver.received()) == 1  # only the first attempt, before the update
    finally:
        moved.stop()

    # Later events follow the new types: a type taken off is no longer queued.
    sdk.webhooks.update(endpoint.id, event_types=["fine_tuning.job.failed"])
    cancel_a_job(settings, "ftjob-update000000000000000003")
    assert send_all(settings) == 0


def test_bad_updates_are_a_400_naming_the_field_and_another_owners_endpoint_a_404(sdk, base_url, receiver):
    endpoint = sdk.webhooks.create(url=receiver.url, name="ci", event_types=[CANCELLED])
    for changes, param in [
        ({"url": "https://10.0.0.1/hook"}, "url"),
        ({"url": "http://169.254.169.254/latest/meta-data/"}, "url"),
        ({"url": "ftp://example.com/"}, "url"),
        ({"event_types": ["batch.completed"]}, "event_types"),
        ({"event_types": []}, "event_types"),
        ({"extra_body": {"name": None}}, "name"),
        ({"extra_body": {"secret": "mine"}}, "secret"),
    ]:
        with pytest.raises(openai.BadRequestError) as raised:
            sdk.webhooks.update(endpoint.id, **changes)
        assert raised.value.param == param, (changes, raised.value.body)
    assert sdk.webhooks.retrieve(endpoint.id).model_dump() == endpoint.model_dump(exclude={"signing_secret"})

    bob = sdk_for(base_url, "bob")
    for call in (
        lambda: bob.webhooks.update(endpoint.id, name="mine"),
        lambda: bob.webhooks.rotate_secret(endpoint.id),
        lambda: bob.webhooks.test(endpoint.id, event_type=CANCELLED),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert receiver.received() == [] and sdk.webhooks.retrieve(endpoint.id).name == "ci"


# ---------------------------------------------------------------------------------------------- rotate_secret
def test_rotating_with_keep_old_signs_with_both_secrets_and_without_only_with_the_new(sdk, settings, receiver):
    endpoint = sdk.webhooks.create(url=receiver.url, name="ci", event_types=[CANCELLED])
    first = endpoint.signing_secret
    cancel_a_job(settings, "ftjob-rotate000000000000000001")  # queued before the rotation, sent after it

    kept = sdk.webhooks.rotate_secret(endpoint.id, keep_old_secret_active_for_24_hours=True)
    second = kept.signing_secret
    assert second.startswith("whsec_") and second != first and kept.signing_secret_hint == f"whsec_...{second[-4:]}"
    assert sdk.webhooks.retrieve(endpoint.id).signing_secret_hint == kept.signing_secret_hint
    assert send_all(settings) == 1
    sdk.webhooks.test(endpoint.id, event_type=CANCELLED)
    for headers, body in receiver.received():  # the outbox's delivery and the test event
        assert len(headers["webhook-signature"].split()) == 2
        assert verifies(body, headers, first) and verifies(body, headers, second)
        assert not verifies(body, headers, new_secret())

    dropped = sdk.webhooks.rotate_secret(endpoint.id)  # the old secrets stop at once
    third = dropped.signing_secret
    cancel_a_job(settings, "ftjob-rotate000000000000000002")
    assert send_all(settings) == 1
    sdk.webhooks.test(endpoint.id, event_type=CANCELLED)
    for headers, body in receiver.received()[2:]:
        assert len(headers["webhook-signature"].split()) == 1
        assert verifies(body, headers, third) and not verifies(body, headers, second)
        assert not verifies(body, headers, first)
    assert [verifier.unwrap(b, h, secret=third).data.id for h, b in receiver.received()[2:]] == [
        "ftjob-rotate000000000000000002", SAMPLE_JOB_ID]  # fmt: skip


def test_kept_secrets_sign_for_their_24_hours():
    now = utcnow()
    until = lambda hours: (now + timedelta(hours=hours)).isoformat()  # noqa: E731
    kept = [{"secret": "whsec_old", "until": until(24)}, {"secret": "whsec_older", "until": until(1)}]
    endpoint = WebhookEndpoint(secret="whsec_new", retired_secrets=kept)
    assert endpoint.signing_secrets(now) == ["whsec_new", "whsec_old", "whsec_older"]
    assert endpoint.signing_secrets(now + timedelta(hours=2)) == ["whsec_new", "whsec_old"]
    assert endpoint.signing_secrets(now + timedelta(hours=24)) == ["whsec_new"]
    assert WebhookEndpoint(secret="whsec_new").signing_secrets(now) == ["whsec_new"]


def test_a_repeated_rotation_keeps_the_secret_the_receivers_hold(sdk, receiver):
    """The SDK retries a rotation whose answer was lost (it sends no Idempotency-Key): the retry must not end the
    secret from before the first rotation, which the receivers still hold. Each kept secret signs for its own
    24 hours, the newest KEEP_SECRETS_AT_MOST of them."""
    endpoint = sdk.webhooks.create(url=receiver.url, name="ci", event_types=[CANCELLED])
    secrets = [endpoint.signing_secret]
    for _ in range(KEEP_SECRETS_AT_MOST + 1):
        secrets.append(sdk.webhooks.rotate_secret(endpoint.id, keep_old_secret_active_for_24_hours=True).signing_secret)
        sdk.webhooks.test(endpoint.id, event_type=CANCELLED)
    for rotations, (headers, body) in enumerate(receiver.received(), start=1):
        signing = secrets[max(0, rotations - KEEP_SECRETS_AT_MOST) : rotations + 1]
        assert len(headers["webhook-signature"].split()) == len(signing)
        assert all(verifies(body, headers, secret) for secret in signing)
    assert not verifies(body, headers, secrets[0])  # the oldest is dropped once more than the most are kept


# ---------------------------------------------------------------------------------------------- test
def test_a_test_event_is_sent_signed_and_reports_the_receivers_status(sdk, base_url, settings, receiver):
    endpoint = sdk.webhooks.create(url=receiver.url, name="ci", event_types=[CANCELLED])
    result = sdk.webhooks.test(endpoint.id, event_type="fine_tuning.job.succeeded")  # not one the endpoint takes
    assert result.model_dump() == {
        "object": "webhook_endpoint.test", "webhook_endpoint_id": endpoint.id,
        "event_type": "fine_tuning.job.succeeded", "status_code": 200, "success": True,
    }  # fmt: skip
    ((headers, body),) = receiver.received()
    event = verifier.unwrap(body, headers, secret=endpoint.signing_secret)
    assert (event.type, event.object, event.data.id) == ("fine_tuning.job.succeeded", "event", SAMPLE_JOB_ID)
    assert event.id.startswith("evt_") and headers["webhook-id"].startswith("msg_")

    receiver.answer(500)  # an answer that is not a 2xx is still a result: status_code says how it went
    assert sdk.webhooks.test(endpoint.id, event_type="fine_tuning.job.paused").status_code == 500

    log = httpx.get(f"{base_url}/webhook_endpoints/{endpoint.id}/deliveries", headers=auth("alice")).json()["data"]
    assert [(d["test"], d["job_id"], d["event_type"], d["status"], d["attempts"], d["last_status_code"])
            for d in log] == [(True, None, "fine_tuning.job.paused", "failed", 1, 500),
                              (True, None, "fine_tuning.job.succeeded", "delivered", 1, 200)]  # fmt: skip
    assert log[1]["id"] == headers["webhook-id"] and log[1]["delivered_at"] and log[0]["next_attempt_at"] is None
    assert send_all(settings) == 0  # the log's test rows are final: no worker sends them again
    assert updated_at_unchanged(sdk, endpoint)


def updated_at_unchanged(sdk: openai.OpenAI, endpoint) -> bool:
    return sdk.webhooks.retrieve(endpoint.id).updated_at == endpoint.updated_at


def test_a_test_event_loraq_never_sends_or_an_unreachable_receiver_is_a_400(sdk, settings, receiver):
    endpoint = sdk.webhooks.create(url=receiver.url, name="ci", event_types=[CANCELLED])
    for event_type in ("batch.completed", "fine_tuning.job.running"):
        with pytest.raises(openai.BadRequestError) as raised:
            sdk.webhooks.test(endpoint.id, event_type=event_type)
        assert raised.value.param == "event_type" and "fine_tuning.job.succeeded" in raised.value.message

    receiver.stop()
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.webhooks.test(endpoint.id, event_type=CANCELLED)
    assert raised.value.code == "webhook_endpoint_unreachable" and receiver.url in raised.value.message

    settings.webhook_allowed_hosts = ""  # the operator took 127.0.0.1 off the list since registration
    receiver.start()
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.webhooks.test(endpoint.id, event_type=CANCELLED)
    assert (raised.value.param, raised.value.code) == ("url", "invalid_webhook_url")
    assert receiver.received() == []

    with session_scope(settings.resolved_database_url) as session:  # both failed attempts are in the log
        rows = session.scalars(select(WebhookDelivery).order_by(WebhookDelivery.seq)).all()
        assert [(r.status, r.last_status_code, r.job_id) for r in rows] == [(DeliveryStatus.failed, None, None)] * 2
        assert "ConnectError" in (rows[0].last_error or "") and "must use https://" in (rows[1].last_error or "")


def test_tests_waiting_for_their_receiver_are_limited_and_one_more_is_a_429(sdk, base_url, settings, receiver,
                                                                           monkeypatch):  # fmt: skip
    """One test at a time per owner, TESTS_AT_ONCE in all (each holds an API thread while its receiver answers)."""
    monkeypatch.setattr(webhook_routes, "TEST_TIMEOUT_SECONDS", 60.0)  # the held tests must outlast the checks
    settings.webhook_timeout_seconds = 60.0
    with session_scope(settings.resolved_database_url) as session:
        create_key(session, owner="carol", name="test", key="lq-carol-key-000000000000")
    owners = {"alice": sdk, "bob": sdk_for(base_url, "bob")}
    endpoints = {owner: c.webhooks.create(url=receiver.url, name="ci", event_types=[CANCELLED]).id
                 for owner, c in owners.items()}  # fmt: skip
    receiver.hold()  # each test's request stays open, holding its slot
    results: list[int] = []

    def send_a_test(owner: str) -> None:
        results.append(owners[owner].webhooks.test(endpoints[owner], event_type=CANCELLED).status_code)

    threads = [threading.Thread(target=send_a_test, args=(owner,)) for owner in ["alice", "bob"][:TESTS_AT_ONCE]]
    threads[0].start()
    receiver.wait_until(lambda: len(receiver.received()) == 1, timeout=30, what="alice's held test")
    with pytest.raises(openai.RateLimitError) as raised:  # alice's second, while her first waits
        sdk.webhooks.test(endpoints["alice"], event_type=CANCELLED)
    assert raised.value.code == "too_many_webhook_tests" and "Your previous webhook test" in raised.value.message
    for thread in threads[1:]:
        thread.start()
    receiver.wait_until(lambda: len(receiver.received()) == TESTS_AT_ONCE, timeout=30, what="the held tests")
    carol = openai.OpenAI(base_url=base_url, api_key="lq-carol-key-000000000000", max_retries=0)
    carol_endpoint = carol.webhooks.create(url=receiver.url, name="ci", event_types=[CANCELLED]).id
    with pytest.raises(openai.RateLimitError) as raised:  # every slot taken
        carol.webhooks.test(carol_endpoint, event_type=CANCELLED)
    assert f"{TESTS_AT_ONCE} webhook tests are" in raised.value.message
    receiver.release()
    for thread in threads:
        thread.join(30)
    assert results == [200] * TESTS_AT_ONCE
    assert carol.webhooks.test(carol_endpoint, event_type=CANCELLED).status_code == 200  # the slots are free again


def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_deadline(sdk, settings):
    """httpx's timeouts are per read: a receiver sending its answer a byte at a time would hold the test (and an
    API thread) as long as it liked, without the deadline on the whole attempt."""
    settings.webhook_timeout_seconds = 1.0
    with trickling_receiver() as url:
        endpoint = sdk.webhooks.create(url=url, name="slow", event_types=[CANCELLED])
        started = time.monotonic()
        with pytest.raises(openai.BadRequestError) as raised:
            sdk.webhooks.test(endpoint.id, event_type=CANCELLED)
    assert raised.value.code == "webhook_endpoint_unreachable"
    assert "no complete answer within 1 s" in raised.value.message
    assert time.monotonic() - started < 10  # cut off, not read to the end (a bound, not a timing figure)


def test_an_endpoint_deleted_while_its_test_waits_is_a_404(sdk, receiver):
    endpoint = sdk.webhooks.create(url=receiver.url, name="ci", event_types=[CANCELLED])
    receiver.hold()
    raised: list[Exception] = []

    def send_a_test() -> None:
        try:
            sdk.webhooks.test(endpoint.id, event_type=CANCELLED)
        except openai.APIError as exc:
            raised.append(exc)

    thread = threading.Thread(target=send_a_test)
    thread.start()
    receiver.wait_until(lambda: len(receiver.received()) == 1, timeout=30, what="the held test")
    assert sdk.webhooks.delete(endpoint.id).deleted
    receiver.release()
    thread.join(30)
    assert [type(exc) for exc in raised] == [openai.NotFoundError]  # not a 500 from the log row's foreign key
