"""A crash inside training ends the job as `failed` with a reason, never a hang."""

from __future__ import annotations

import pytest

from tests.e2e.calls import create_job, events, upload_ok, wait_for
from tests.facts import chat_rows

pytestmark = pytest.mark.e2e


def test_training_error_fails_the_job_with_its_reason(client):
    file_id = upload_ok(client, chat_rows()[:2])
    # Valid as a name, but the model has no such module: peft raises inside the training process.
    job = create_job(client, file_id, hyperparameters={"target_modules": ["no_such_proj"]}).json()
    finished = wait_for(client, job["id"])
    assert finished["status"] == "failed"
    assert finished["error"]["code"] == "training_error"
    assert "no_such_proj" in finished["error"]["message"]
    assert finished["fine_tuned_model"] is None and finished["finished_at"]
    assert any(e["level"] == "error" and e["message"].startswith("Job failed:") for e in events(client, job["id"]))
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}/adapter").status_code == 400
