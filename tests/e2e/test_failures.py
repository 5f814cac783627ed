"""A crash inside training ends the job as `failed` with a reason, never a hang."""

from __future__ import annotations

import pytest

from tests.conftest import BROKEN_WEIGHTS_MODEL
from tests.e2e.calls import create_job, events, upload_ok, wait_for
from tests.facts import chat_rows

pytestmark = pytest.mark.e2e


def test_training_error_fails_the_job_with_its_reason(client):
    file_id = upload_ok(client, chat_rows()[:2])
    # Its config and tokenizer pass the validation stage; loading its weights raises inside the training process.
    # (A mistake the validation stage can see, such as an unknown target module, never reaches a worker.)
    job = create_job(client, file_id, model=BROKEN_WEIGHTS_MODEL).json()
    finished = wait_for(client, job["id"])
    assert finished["status"] == "failed"
    assert finished["error"]["code"] == "training_error"
    assert "Error" in finished["error"]["message"].split(":")[0], finished["error"]["message"]
    assert finished["fine_tuned_model"] is None and finished["finished_at"]
    assert any(e["level"] == "error" and e["message"].startswith("Job failed:") for e in events(client, job["id"]))
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}/adapter").status_code == 400
