"""Webhooks end to end: the real service's workers deliver job status events from the outbox to a real HTTP
receiver started by the test, signed per Standard Webhooks (verified with the `openai` SDK's verifier), retried
after a 500 and while the receiver is down, and sent again, with the same webhook-id, after the worker sending
it was killed mid-request."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import openai
import pytest

from tests.deployments import loraq
from tests.e2e.calls import create_job, upload_ok, wait_for
from tests.facts import chat_rows

pytestmark = pytest.mark.e2e


@contextmanager
def new_owner(service) -> Iterator[tuple[httpx.Client, openai.OpenAI]]:
    """A fresh owner (so no other test's jobs reach its endpoints), as an HTTP client and an SDK client; its
    endpoints are deleted afterwards."""
    key = service.new_key(f"hooks-{uuid.uuid4().hex[:8]}")
    sdk = openai.OpenAI(base_url=f"{service.base_url}/v1", api_key=key, max_retries=0)
    with service.client(key) as client:
        try:
            yield client, sdk
        finally:
            for endpoint in client.get("/v1/webhooks").json()["data"]:
                client.delete(f"/v1/webhooks/{endpoint['id']}")


def cancelled_job(client: httpx.Client, file_id: str) -> str:
    job = create_job(client, file_id, hyperparameters={"n_epochs": 1}).json()
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    return job["id"]


def deliveries(client: httpx.Client, endpoint_id: str) -> list[dict]:
    return client.get(f"/v1/webhooks/{endpoint_id}/deliveries", params={"limit": 100}).json()["data"]


def wait_for_log(client, endpoint_id: str, condition: Callable[[list[dict]], bool], timeout: float = 120) -> list:
    deadline = time.monotonic() + timeout
    while not condition(log := deliveries(client, endpoint_id)):
        assert time.monotonic() < deadline, log
        time.sleep(0.2)
    return log


def all_delivered(count: int) -> Callable[[list[dict]], bool]:
    return lambda log: len(log) == count and all(d["status"] == "delivered" for d in log)


def test_one_signed_delivery_per_event_for_a_succeeded_and_a_cancelled_job(service, receiver):
    with new_owner(service) as (client, sdk):
        endpoint = sdk.webhooks.create(
            name="ci", url=receiver.url, event_types=["fine_tuning.job.succeeded", "fine_tuning.job.cancelled"]
        )
        assert [e.id for e in sdk.webhooks.list()] == [endpoint.id] and sdk.webhooks.retrieve(endpoint.id).name == "ci"
        file_id = upload_ok(client, chat_rows()[:2])
        succeeded = create_job(client, file_id, hyperparameters={"n_epochs": 1}).json()["id"]
        cancelled = cancelled_job(client, file_id)
        assert wait_for(client, succeeded)["status"] == "succeeded"

        log = wait_for_log(client, endpoint.id, all_delivered(2))
        received = receiver.by_webhook_id()
        assert set(received) == {d["id"] for d in log}  # the log's ids are the webhook-id headers
        events = {}
        for (headers, body), *_repeats in received.values():
            event = sdk.webhooks.unwrap(body, headers, secret=endpoint.signing_secret)  # raises if unsigned
            events[event.data.id] = (event.type, event.object, event.id)
        assert {job: kind for job, (kind, _, _) in events.items()} == {
            succeeded: "fine_tuning.job.succeeded", cancelled: "fine_tuning.job.cancelled"}  # fmt: skip
        assert {(d["event_id"], d["job_id"]) for d in log} == {(e[2], job) for job, e in events.items()}
        assert all(obj == "event" for _, obj, _ in events.values())
        assert sdk.webhooks.delete(endpoint.id).deleted


def test_retries_after_a_500_and_while_the_receiver_is_down(service, receiver):
    with new_owner(service) as (client, _sdk):
        body = {"url": receiver.url, "events": ["fine_tuning.job.cancelled"]}
        endpoint = client.post("/v1/webhooks", json=body).json()
        file_id = upload_ok(client, chat_rows()[:2])

        receiver.answer(500)
        first = cancelled_job(client, file_id)
        receiver.wait_until(lambda: len(receiver.received()) >= 2, what="a retry after the 500")
        (failing,) = wait_for_log(client, endpoint["id"], lambda log: log and log[0]["last_status_code"] == 500)
        assert failing["status"] == "pending" and failing["next_attempt_at"] and failing["attempts"] >= 1
        receiver.answer(200)
        wait_for_log(client, endpoint["id"], all_delivered(1))

        receiver.stop()
        second = cancelled_job(client, file_id)
        refused = wait_for_log(client, endpoint["id"], lambda log: len(log) == 2 and log[0]["last_error"])[0]
        assert refused["job_id"] == second and refused["status"] == "pending" and refused["last_error"]
        receiver.start()
        log = wait_for_log(client, endpoint["id"], all_delivered(2))

        assert [e["data"]["id"] for e in receiver.events()] == [first, second]  # once each, after deduplication
        assert any(len(requests) > 1 for requests in receiver.by_webhook_id().values())  # the 500's retries
        assert {d["id"] for d in log} == set(receiver.by_webhook_id())


def test_a_worker_killed_mid_delivery_leads_to_no_duplicate_event(service, receiver):
    if "worker1" not in service.processes:
        pytest.skip("needs a deployment whose worker processes the test can kill (the production shape)")
    with new_owner(service) as (client, _sdk):
        endpoint = client.post("/v1/webhooks", json={"url": receiver.url}).json()
        file_id = upload_ok(client, chat_rows()[:2])
        receiver.hold()  # the first request stays open, unanswered
        job_id = cancelled_job(client, file_id)
        receiver.wait_until(lambda: len(receiver.received()) == 1, what="the first attempt")
        # Every process that delivers (worker and validator), killed while the request is open.
        for label in ("worker1", "validator"):
            service.stop_process(label, signal.SIGKILL)
        receiver.release()
        service.start_process("worker1", loraq("worker", "--name", "w1"))
        service.start_process("validator", loraq("validator"))

        (delivered,) = wait_for_log(client, endpoint["id"], all_delivered(1))
        assert delivered["attempts"] >= 2  # the killed attempt counted, its lease ran out, another sent it again
        ((webhook_id, requests),) = receiver.by_webhook_id().items()  # one event after deduplication
        assert webhook_id == delivered["id"] and len(requests) >= 2
        assert [e["data"]["id"] for e in receiver.events()] == [job_id]
