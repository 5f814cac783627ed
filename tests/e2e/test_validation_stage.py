"""The validating_files stage on the running service: data that cannot train fails the job before any
worker sees it, with the reason, the file and the lines; long examples are reported and truncated."""

from __future__ import annotations

import pytest

from tests.conftest import UNMASKABLE_MODEL
from tests.e2e.calls import create_job, events, upload_ok, wait_for
from tests.facts import chat_rows

pytestmark = pytest.mark.e2e

NOTHING_TO_LEARN = {
    "messages": [
        {"role": "user", "content": "Say A."},
        {"role": "assistant", "content": "B", "weight": 0},
    ]
}


def test_a_file_with_no_assistant_tokens_to_learn_fails_validation(client):
    file_id = upload_ok(client, [NOTHING_TO_LEARN, NOTHING_TO_LEARN])  # a valid upload, but weight 0 everywhere
    job = create_job(client, file_id).json()
    assert job["status"] == "validating_files"
    failed = wait_for(client, job["id"], timeout=60)
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "invalid_training_file" and failed["error"]["param"] == "training_file"
    assert "0 usable examples" in failed["error"]["message"]
    assert "2 skipped (lines 1, 2)" in failed["error"]["message"]
    history = events(client, job["id"])
    assert history[-1]["level"] == "error" and history[-1]["message"].startswith("Validation failed")
    assert not [e for e in history if "Training started" in e["message"]]  # never reached a worker


def test_long_examples_are_reported_and_unsupervised_ones_skipped(client):
    long_row = {
        "messages": [
            {"role": "user", "content": "tell me everything"},
            {"role": "assistant", "content": "everything " * 80},
        ]
    }
    rows = [*chat_rows()[:2], long_row, NOTHING_TO_LEARN]  # lines 3 (long) and 4 (nothing to learn)
    file_id = upload_ok(client, rows)
    job = create_job(client, file_id, hyperparameters={"n_epochs": 1, "max_seq_length": 64}).json()
    done = wait_for(client, job["id"])
    assert done["status"] == "succeeded", done["error"]
    report = client.get(f"/v1/files/{file_id}").json()["token_reports"]["loraq-tiny-chat"]
    assert report["examples"] == 4 and report["usable_examples"] == 3
    assert report["long_examples"] == {"count": 1, "lines": [3], "action": "truncated to 64 tokens"}
    assert report["unsupervised_examples"]["lines"] == [4]
    assert report["max_example_tokens"] > 64
    described = next(e["message"] for e in events(client, job["id"]) if e["message"].startswith("Training file:"))
    assert "1 longer than 64 tokens (line 3): truncated to 64 tokens" in described
    assert "1 skipped (line 4)" in described
    # One optimizer step (4 examples per step) holds the 3 usable examples; the trainer agrees.
    assert done["total_steps"] == 1 and done["trained_tokens"] == done["estimated_tokens"]


def test_cancelling_before_training_keeps_the_job_cancelled(client):
    """Cancelled while validating or queued (whichever it has reached): it never trains. The cancel that
    lands mid-validation for certain is in tests/faults (the validator stopped)."""
    file_id = upload_ok(client, chat_rows())
    job = create_job(client, file_id, hyperparameters={"n_epochs": 1}).json()
    cancelled = client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()
    assert cancelled["status"] == "cancelled"
    follow_up = create_job(client, file_id, hyperparameters={"n_epochs": 1}).json()
    assert wait_for(client, follow_up["id"])["status"] == "succeeded"  # the pipeline has passed job by now
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "cancelled"
    assert not [e for e in events(client, job["id"]) if "started" in e["message"]]


def test_a_template_that_cannot_be_masked_fails_validation_and_train_on_inputs_works(client):
    file_id = upload_ok(client, chat_rows()[:2])
    job = create_job(client, file_id, model=UNMASKABLE_MODEL, hyperparameters={"n_epochs": 1}).json()
    failed = wait_for(client, job["id"], timeout=60)
    assert failed["status"] == "failed" and failed["error"]["code"] == "invalid_chat_template"
    assert "line 1" in failed["error"]["message"] and "train_on_inputs" in failed["error"]["message"]
    assert not [e for e in events(client, job["id"]) if "Training started" in e["message"]]
    # As the message says: training on whole conversations needs no mask.
    retry = create_job(
        client, file_id, model=UNMASKABLE_MODEL, hyperparameters={"n_epochs": 1, "train_on_inputs": True}
    ).json()
    assert wait_for(client, retry["id"])["status"] == "succeeded"


def test_target_modules_mistakes_fail_validation_naming_each_and_listing_the_valid_ones(client):
    """Before any worker loads the model: the names are checked against its module tree (built without
    weights), the way PEFT matches them."""
    file_id = upload_ok(client, chat_rows()[:2])
    targets = ["q_proj", "nonexistent_proj", "lm_head", "self_attn.v_proj"]
    job = create_job(client, file_id, hyperparameters={"n_epochs": 1, "target_modules": targets}).json()
    failed = wait_for(client, job["id"], timeout=60)
    assert failed["status"] == "failed", failed
    error = failed["error"]
    assert (error["code"], error["param"]) == ("invalid_hyperparameters", "hyperparameters.target_modules")
    assert "'nonexistent_proj' matches no module" in error["message"]
    assert "'lm_head' is the model's LM head" in error["message"]
    assert "q_proj'" not in error["message"] and "v_proj'" not in error["message"]  # the good ones pass
    assert error["message"].endswith("down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj.")
    assert not [e for e in events(client, job["id"]) if "Training started" in e["message"]]
