"""Breaking S3 storage on purpose: the production shape (PostgreSQL, redis-server, the API, a validator and two
workers, each with its own local work folder as on separate machines) on a bucket of `rclone serve s3`.

As in test_fault_injection: nothing is lost, no step is trained twice, and a resumed job's adapter gives the
same answers as an uninterrupted run.
"""

from __future__ import annotations

import time

import pytest

from tests.deployments import production
from tests.e2e.calls import create_job, events, upload_ok, wait_for
from tests.facts import MEMORISE, chat_rows
from tests.faults.test_fault_injection import (
    attempts_of,
    finish_and_answers,
    first_checkpoint,
    restart_worker,
    worker_running,
)

pytestmark = pytest.mark.e2e

# The fault suite's facts job, shortened to 4 epochs (32 steps, checkpoints at 10, 20 and 30): resumption is
# exact whatever the length, and this suite runs by default.
FACTS_JOB = {**MEMORISE, "n_epochs": 4, "save_steps": 10, "logging_steps": 10}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("s3-faults")
    env = {
        # The next worker to publish checkpoint 20 dies after its files and before its marker.
        "LORAQ_FAULT_KILL_AT": f"publishing:20:{folder / 'kill-while-publishing'}",
        "LORAQ_MAX_ATTEMPTS": "4",
    }
    deployment = production(folder, env, workers=2, s3=True)
    deployment.kill_flag = folder / "kill-while-publishing"
    yield deployment
    deployment.stop()


@pytest.fixture(scope="module")
def client(stack):
    with stack.client() as c:
        yield c


@pytest.fixture(scope="module")
def facts_file(client):
    return upload_ok(client, chat_rows())


@pytest.fixture(scope="module")
def reference_answers(client, facts_file, tmp_path_factory):
    """What an uninterrupted run of the facts job learns."""
    job = create_job(client, facts_file, hyperparameters=FACTS_JOB).json()
    return finish_and_answers(client, job["id"], tmp_path_factory.mktemp("reference"))


def checkpoint_objects(stack, job_id: str) -> list[str]:
    """The checkpoint files in the bucket (rclone keeps each object as a file under its folder)."""
    root = stack.s3.data / "loraq" / "loraq" / "jobs" / job_id / "checkpoints"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_worker_killed_while_publishing_a_checkpoint(stack, client, facts_file, reference_answers, tmp_path):
    stack.kill_flag.touch()
    job = create_job(client, facts_file, hyperparameters=FACTS_JOB).json()
    deadline = time.monotonic() + 300
    while stack.kill_flag.exists():  # the worker publishing checkpoint 20 died: restart it, like a supervisor
        assert time.monotonic() < deadline
        time.sleep(0.5)
    label, _ = worker_running(stack, client, job["id"])  # attempt 2 waits for the dead worker's lease to expire
    stack.processes[label].wait(timeout=30)
    restart_worker(stack, label)
    answers = finish_and_answers(client, job["id"], tmp_path)
    runs = attempts_of(client, job["id"])
    # Checkpoint 20's files reached the bucket, its marker never did: the next run resumed from 10 and deleted it.
    assert runs[0]["checkpoints"] == [10] and runs[1]["resumed_from"] == 10, runs
    logs = stack.log("worker1") + stack.log("worker2")
    assert f"job {job['id']}: deleting the incomplete checkpoint 20 from storage" in logs
    assert answers == reference_answers
    assert "checkpoint-10/loraq_complete.json" in checkpoint_objects(stack, job["id"])


def test_s3_server_restarted_mid_job(stack, client, facts_file, reference_answers, tmp_path):
    job = create_job(client, facts_file, hyperparameters=FACTS_JOB).json()
    first_checkpoint(client, job["id"])
    stack.s3.stop()
    time.sleep(3)  # checkpoints fall due meanwhile: boto3 retries them
    stack.s3.start()
    answers = finish_and_answers(client, job["id"], tmp_path)  # succeeded, each step trained once
    assert answers == reference_answers
    content = client.get(f"/v1/files/{facts_file}/content")
    assert content.status_code == 200 and content.headers["etag"].strip('"') == content_sha256(content.content)


def content_sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_wrong_credentials_fail_the_job_clearly_and_the_api_stays_up(stack, client, facts_file):
    job = create_job(client, facts_file, hyperparameters={**FACTS_JOB, "n_epochs": 40}).json()
    first_checkpoint(client, job["id"])
    stack.s3.stop()
    stack.s3.start(secret="a-rotated-secret-key")  # the operator rotated the key and forgot the workers
    try:
        finished = wait_for(client, job["id"], timeout=180)
        assert finished["status"] == "failed" and finished["error"]["code"] == "storage_error", finished["error"]
        assert "access denied: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in finished["error"]["message"]
        assert client.get("/healthz").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "access denied" in ready.json()["checks"]["storage"], ready.json()
        assert ready.json()["checks"]["database"] == "ok"
        download = client.get(f"/v1/files/{facts_file}/content")
        assert download.status_code == 503 and download.json()["error"]["code"] == "storage_unavailable"
        assert client.get(f"/v1/fine_tuning/jobs/{job['id']}/adapter").status_code == 400  # no adapter: clear
    finally:
        stack.s3.stop()
        stack.s3.start()
    assert client.get("/readyz").status_code == 200
    assert [e for e in events(client, job["id"]) if e["level"] == "error"]
