"""The production shape with several workers: PostgreSQL, redis-server, the API and two worker processes."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from tests.deployments import loraq, production
from tests.e2e.calls import create_job, events, upload_ok, wait_for, wait_for_event
from tests.facts import chat_rows

pytestmark = pytest.mark.e2e


ROUTED_MODEL = "tiny-on-special-gpus"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory, operator_models):
    # The operator routes one base model to the `special` queue (a class of GPUs).
    models = json.loads(operator_models["LORAQ_BASE_MODELS"])
    source = next(iter(models.values()))["source"]
    env = {"LORAQ_BASE_MODELS": json.dumps({ROUTED_MODEL: {"source": source, "queue": "special"}})}
    deployment = production(tmp_path_factory.mktemp("fleet"), env, workers=2)
    yield deployment
    deployment.stop()


def _start_events(client, job_id):
    return [e for e in events(client, job_id) if e["message"].startswith("Fine-tuning job started")]


def test_four_jobs_on_two_workers_each_trained_once(fleet):
    with fleet.client() as client:
        file_id = upload_ok(client, chat_rows()[:4])
        short = {"n_epochs": 2, "gradient_accumulation_steps": 1, "logging_steps": 4}
        jobs = [create_job(client, file_id, hyperparameters=short).json() for _ in range(4)]
        finished = [wait_for(client, job["id"], timeout=300) for job in jobs]
        assert [job["status"] for job in finished] == ["succeeded"] * 4
        workers = set()
        for job in finished:
            starts = _start_events(client, job["id"])
            assert len(starts) == 1, starts  # trained exactly once
            trained = [e for e in events(client, job["id"]) if e["message"].startswith("Training started")]
            assert len(trained) == 1
            workers.add(starts[0]["data"]["worker"].split("@")[0])
            assert job["completed_steps"] == job["total_steps"] == 4 * 2
        assert workers == {"w1", "w2"}, "both workers took work"


def test_worker_per_gpu_sees_only_its_device(fleet):
    fleet.stop_process("worker1")
    fleet.stop_process("worker2")
    fleet.start_process("gpu-fleet", loraq("worker", "--gpus", "0,1", "--name", "box"))
    with fleet.client() as client:
        file_id = upload_ok(client, chat_rows())
        long = {"n_epochs": 200, "gradient_accumulation_steps": 1, "logging_steps": 5}
        jobs = [create_job(client, file_id, hyperparameters=long).json() for _ in range(2)]
        for job in jobs:  # both run at once: one per GPU worker
            wait_for_event(client, job["id"], "metrics", timeout=120)
        starts = [_start_events(client, job["id"])[0]["data"] for job in jobs]
        assert sorted(s["cuda_visible_devices"] for s in starts) == ["0", "1"]
        # The machine's cores are shared between the two workers' training processes.
        assert [s["cpu_threads"] for s in starts] == [max(1, os.cpu_count() // 2)] * 2
        for start in starts:
            node = re.match(r"box-gpu(\d)@", start["worker"])
            assert node and node.group(1) == start["cuda_visible_devices"]
        for job in jobs:
            client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")
    fleet.stop_process("gpu-fleet")


def test_metrics_report_jobs_queues_workers_and_uploads(fleet):
    with fleet.client() as client:
        text = client.get("/metrics").text
    assert 'loraq_jobs{status="succeeded"} 4.0' in text
    assert 'loraq_queue_depth{queue="loraq"}' in text
    assert "loraq_upload_bytes_total" in text
    assert "# TYPE loraq_running_jobs gauge" in text and "# TYPE loraq_training_tokens_per_second gauge" in text


def test_jobs_routed_to_a_named_queue_wait_for_its_workers(fleet):
    with fleet.client() as client:
        file_id = upload_ok(client, chat_rows()[:2])
        job = create_job(client, file_id, model=ROUTED_MODEL, hyperparameters={"n_epochs": 1}).json()
        wait_for(client, job["id"], until=("queued",))  # validated (by the validator, not a worker)
        time.sleep(3)  # the default-queue workers (if any run) must leave it alone
        assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "queued"
        fleet.start_process("special", loraq("worker", "--queues", "special", "--name", "special"))
        try:
            assert wait_for(client, job["id"])["status"] == "succeeded"
            assert _start_events(client, job["id"])[0]["data"]["worker"].startswith("special@")
        finally:
            fleet.stop_process("special")


def test_readyz_reports_a_broker_outage(fleet):
    with fleet.client() as client:
        assert client.get("/readyz").json() == {
            "status": "ok",
            "checks": {"database": "ok", "broker": "ok", "storage": "ok"},
        }
        fleet.redis.stop()
        try:
            response = client.get("/readyz")
            assert response.status_code == 503 and response.json()["checks"]["broker"].startswith("error")
            assert client.get("/healthz").status_code == 200
        finally:
            fleet.redis.start()
        assert client.get("/readyz").status_code == 200
