"""Per-owner limits and safe retries with Idempotency-Key."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.calls import create_job, upload, upload_ok
from tests.facts import chat_rows

pytestmark = pytest.mark.e2e


def test_upload_retried_with_the_same_key_creates_one_file(service):
    key = service.new_key("retry-files")
    with service.client(key) as client:
        rows = chat_rows()[:2]
        first = client.post(
            "/v1/files",
            files={"file": ("same.jsonl", _jsonl(rows))},
            data={"purpose": "fine-tune"},
            headers={"Idempotency-Key": "upload-1"},
        )
        again = client.post(
            "/v1/files",
            files={"file": ("same.jsonl", _jsonl(rows))},
            data={"purpose": "fine-tune"},
            headers={"Idempotency-Key": "upload-1"},
        )
        assert first.status_code == again.status_code == 200
        assert first.json()["id"] == again.json()["id"] and again.headers["idempotent-replayed"] == "true"
        assert [f["filename"] for f in client.get("/v1/files").json()["data"]] == ["same.jsonl"]
        other = client.post(
            "/v1/files",
            files={"file": ("same.jsonl", _jsonl(chat_rows()[:3]))},
            data={"purpose": "fine-tune"},
            headers={"Idempotency-Key": "upload-1"},
        )
        assert other.status_code == 400 and other.json()["error"]["param"] == "Idempotency-Key"


def test_job_retried_with_the_same_key_creates_one_job(service):
    key = service.new_key("retry-jobs")
    with service.client(key) as client:
        file_id = upload_ok(client, chat_rows()[:1])
        body = {"model": "loraq-tiny-chat", "training_file": file_id, "hyperparameters": {"n_epochs": 1}}

        def post(_):
            return client.post("/v1/fine_tuning/jobs", json=body, headers={"Idempotency-Key": "job-1"})

        with ThreadPoolExecutor(8) as pool:  # retries racing each other
            responses = list(pool.map(post, range(8)))
        assert {r.status_code for r in responses} == {200}
        assert len({r.json()["id"] for r in responses}) == 1
        assert len(client.get("/v1/fine_tuning/jobs").json()["data"]) == 1
        changed = client.post(
            "/v1/fine_tuning/jobs", json={**body, "suffix": "other"}, headers={"Idempotency-Key": "job-1"}
        )
        assert changed.status_code == 400 and changed.json()["error"]["code"] == "idempotency_key_reused"


def test_too_many_active_jobs_is_429_with_retry_after(service):
    key = service.new_key("busy-owner")  # the deployments allow 10 active jobs per owner
    with service.client(key) as client:
        file_id = upload_ok(client, chat_rows()[:1])
        jobs = [create_job(client, file_id, hyperparameters={"n_epochs": 1}).json()["id"] for _ in range(10)]
        try:
            refused = create_job(client, file_id)
            assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
            assert refused.json()["error"]["code"] == "too_many_active_jobs"
        finally:
            for job_id in jobs:
                client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
        assert create_job(client, file_id, hyperparameters={"n_epochs": 1}).status_code == 200


def test_upload_over_the_example_limit(service):
    with service.client() as client:  # the deployments allow 500 examples per file
        response = upload(client, _jsonl(chat_rows()[:1] * 501))
        assert response.status_code == 400 and "more than 500 examples" in response.json()["error"]["message"]


def _jsonl(rows) -> bytes:
    import json

    return "".join(json.dumps(r) + "\n" for r in rows).encode()
