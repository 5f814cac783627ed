"""Cancelling a queued job (at once) and a running one (at its next step, keeping its checkpoints)."""

from __future__ import annotations

import time

import pytest

from tests.e2e.calls import create_job, events, first_running, upload_ok, wait_for, wait_for_event
from tests.facts import chat_rows

pytestmark = pytest.mark.e2e

LONG = {"n_epochs": 500, "gradient_accumulation_steps": 1, "logging_steps": 5, "save_steps": 5}


def test_cancel_running_then_queued(client):
    file_id = upload_ok(client, chat_rows())
    pair = [create_job(client, file_id, hyperparameters=LONG).json() for _ in range(2)]
    # Validation runs two at a time, so either job may reach the one worker first; the other waits behind it.
    running, queued = first_running(client, pair)
    wait_for_event(client, running["id"], "metrics")
    assert wait_for(client, queued["id"], until=("queued",))["status"] == "queued"

    cancelled = client.post(f"/v1/fine_tuning/jobs/{queued['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"

    response = client.post(f"/v1/fine_tuning/jobs/{running['id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"

    # The worker notices within a step: the stop event appears and the job stays cancelled.
    deadline = time.monotonic() + 60
    while not any("Training stopped at step" in e["message"] for e in events(client, running["id"])):
        assert time.monotonic() < deadline, events(client, running["id"])
        time.sleep(0.3)
    job = client.get(f"/v1/fine_tuning/jobs/{running['id']}").json()
    assert job["status"] == "cancelled" and job["fine_tuned_model"] is None
    assert job["completed_steps"] < 8 * 500
    assert client.get(f"/v1/fine_tuning/jobs/{running['id']}/checkpoints").json()["data"], "checkpoints kept"
    adapter = client.get(f"/v1/fine_tuning/jobs/{running['id']}/adapter")
    assert adapter.status_code == 400 and adapter.json()["error"]["code"] == "adapter_not_ready"

    # The queued job's message reaches the worker later; its claim fails and nothing runs.
    follow_up = create_job(client, file_id, hyperparameters={"n_epochs": 1}).json()
    assert wait_for(client, follow_up["id"])["status"] == "succeeded"
    after = client.get(f"/v1/fine_tuning/jobs/{queued['id']}").json()
    assert after["status"] == "cancelled" and after["completed_steps"] == 0
    assert not [e for e in events(client, queued["id"]) if "started" in e["message"]]


def test_cancelling_a_finished_job_is_a_400(client):
    file_id = upload_ok(client, chat_rows()[:2])
    job = create_job(client, file_id, hyperparameters={"n_epochs": 1}).json()
    assert wait_for(client, job["id"])["status"] == "succeeded"
    response = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    assert response.status_code == 400 and response.json()["error"]["code"] == "job_finished"


def test_pollers_see_a_change_at_once_and_never_go_back(service):
    """On PostgreSQL polled jobs are cached per API process and evicted by database notifications."""
    with service.client() as client:
        file_id = upload_ok(client, chat_rows()[:1])
        for _ in range(5):
            job = create_job(client, file_id, hyperparameters={"n_epochs": 1}).json()
            for _ in range(20):  # warm every API process's cache with the not yet finished job
                status = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"]
                assert status in ("validating_files", "queued", "running")
            assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
            seen = []
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                with service.client() as fresh:  # a new connection may land on another API process
                    seen.append(fresh.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"])
            assert seen[-1] == "cancelled" and seen.count("cancelled") >= len(seen) - 2, seen
            first = seen.index("cancelled")
            assert set(seen[first:]) == {"cancelled"}, seen
