"""Every caller mistake gets a 4xx in OpenAI's error shape that names the field or the line."""

from __future__ import annotations

import json

import pytest

from tests.e2e.calls import create_job, upload, upload_ok
from tests.facts import chat_rows

pytestmark = pytest.mark.e2e

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _line(obj) -> bytes:
    return (json.dumps(obj) + "\n").encode()


BAD_FILES = {
    "invalid JSON": (_line(GOOD) + b"{not json\n", "line 2: invalid JSON"),
    "no assistant": (_line({"messages": [{"role": "user", "content": "hi"}]}), "line 1: `messages` has no assistant"),
    "wrong role": (
        _line({"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}),
        "line 1: messages[0].role must be one of system, user, assistant",
    ),
    "empty content": (
        _line(GOOD) * 2 + _line({"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "y"}]}),
        "line 3: messages[0].content must be a non-empty string",
    ),
    "weight 2": (
        _line({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y", "weight": 2}]}),
        "line 1: messages[1].weight must be 0 or 1",
    ),
    "not an object": (b"[1, 2]\n", "line 1: expected a JSON object"),
    "BOM": (b"\xef\xbb\xbf" + _line(GOOD), "line 1: starts with a UTF-8 byte-order mark"),
    "invalid UTF-8": (_line(GOOD) + b'{"messages": "\xff"}\n', "line 2: not valid UTF-8"),
    "blank only": (b"\n\n  \n", "no examples"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_dataset_rejected_with_line_number(client, name):
    content, expected = BAD_FILES[name]
    response = upload(client, content)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert expected in error["message"] and error["param"] == "file" and error["code"] == "invalid_file_format"
    record = client.get(f"/v1/files/{error['file_id']}").json()
    assert record["status"] == "error" and expected in record["status_details"]
    job = create_job(client, error["file_id"])
    assert job.status_code == 400 and job.json()["error"]["param"] == "training_file"


def test_upload_needs_purpose_and_file(client):
    wrong = client.post("/v1/files", files={"file": ("a.jsonl", _line(GOOD))}, data={"purpose": "assistants"})
    assert wrong.status_code == 400 and wrong.json()["error"]["param"] == "purpose"
    missing = client.post("/v1/files", data={"purpose": "fine-tune"}, files={"other": ("a", b"x")})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"


def test_unknown_model(client):
    file_id = upload_ok(client, chat_rows()[:1])
    response = create_job(client, file_id, model="gpt-imaginary")
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "Model 'gpt-imaginary' is not offered by this server; see GET /v1/models.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_epochs", 0),
        ("batch_size", -1),
        ("learning_rate_multiplier", 0),
        ("learning_rate", 5),
        ("lora_r", 0),
        ("lora_alpha", -2),
        ("lora_dropout", 1.0),
        ("target_modules", []),
        ("target_modules", ["q_proj; rm -rf"]),
        ("max_seq_length", 4),
        ("gradient_accumulation_steps", 0),
        ("warmup_ratio", 2),
        ("lr_scheduler_type", "zigzag"),
        ("save_steps", 0),
        ("logging_steps", 0),
        ("train_on_inputs", "maybe"),
        ("n_epochs", "many"),
    ],
)
def test_bad_hyperparameter_named(client, field, value):
    file_id = upload_ok(client, chat_rows()[:1])
    response = create_job(client, file_id, hyperparameters={field: value})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith(f"hyperparameters.{field}")


def test_unknown_hyperparameter_is_rejected_not_ignored(client):
    file_id = upload_ok(client, chat_rows()[:1])
    response = create_job(client, file_id, hyperparameters={"lora_rank": 8})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "hyperparameters.lora_rank"
    assert "Unknown field" in response.json()["error"]["message"]


def test_auto_values_take_the_defaults(client):
    file_id = upload_ok(client, chat_rows()[:1])
    response = create_job(client, file_id, hyperparameters={"n_epochs": "auto", "batch_size": "auto"})
    assert response.status_code == 200
    hp = response.json()["hyperparameters"]
    assert (hp["n_epochs"], hp["batch_size"], hp["learning_rate"], hp["lora_alpha"]) == (3, 1, 1e-4, 32)
    client.post(f"/v1/fine_tuning/jobs/{response.json()['id']}/cancel")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"suffix": "has space"}, "suffix"),
        ({"suffix": "x" * 65}, "suffix"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"seed": -1}, "seed"),
        ({"training_file": "file-nope"}, "training_file"),
        ({"validation_file": "file-nope"}, "validation_file"),
        ({"method": {"type": "reinforcement"}}, "method.type"),
        ({"method": {"type": "dpo"}}, "training_file"),  # a chat file given to a DPO job
    ],
)
def test_bad_job_fields_named(client, body, param):
    file_id = upload_ok(client, chat_rows()[:1])
    response = create_job(client, **{"training_file": file_id, **body})
    assert response.status_code in (400, 404), response.text
    assert response.json()["error"]["param"] == param


def test_auth_and_not_found_shapes(service, client):
    with service.client(key=None) as anonymous:
        response = anonymous.get("/v1/fine_tuning/jobs")
        assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"
    with service.client(key="lq-wrong") as wrong:
        assert wrong.get("/v1/files").status_code == 401
    for path in (
        "/v1/fine_tuning/jobs/ftjob-missing",
        "/v1/files/file-missing",
        "/v1/files/file-missing/content",
        "/v1/fine_tuning/jobs/ftjob-missing/adapter",
        "/v1/fine_tuning/jobs/ftjob-missing/events",
    ):
        response = client.get(path)
        assert response.status_code == 404 and response.json()["error"]["message"].startswith("No such"), path


def test_files_list_retrieve_delete(client):
    file_id = upload_ok(client, chat_rows()[:2])
    listed = client.get("/v1/files").json()
    assert listed["object"] == "list" and file_id in [f["id"] for f in listed["data"]]
    record = client.get(f"/v1/files/{file_id}").json()
    assert record["examples"] == 2 and record["purpose"] == "fine-tune" and record["status"] == "processed"
    assert client.get(f"/v1/files/{file_id}/content").content == b"".join(_line(r) for r in chat_rows()[:2])
    assert client.delete(f"/v1/files/{file_id}").json() == {"id": file_id, "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{file_id}").status_code == 404


def test_jobs_pagination(client):
    file_id = upload_ok(client, chat_rows()[:1])
    ids = [create_job(client, file_id).json()["id"] for _ in range(3)]
    for job_id in ids:
        client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    first = client.get("/v1/fine_tuning/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in first["data"]] == ids[::-1][:2] and first["has_more"]
    second = client.get("/v1/fine_tuning/jobs", params={"limit": 1, "after": first["data"][-1]["id"]}).json()
    assert second["data"][0]["id"] == ids[0]
    assert client.get("/v1/fine_tuning/jobs", params={"after": "ftjob-bogus"}).json()["error"]["param"] == "after"
