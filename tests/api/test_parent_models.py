"""Continued training at create, in process on a real database: which fine-tuned models and checkpoints a
job may start from (another owner's is a 404, an unfinished job's model a 400), the LoRA shape it inherits
(a conflicting one is a 400 naming the field), and the serving warnings a job gets."""

from __future__ import annotations

import json

import pytest

from api.errors import APIError
from api.parent_models import continued_hyperparameters, find_parent
from loraq.job_spec import Hyperparameters
from models import Checkpoint, Job, JobStatus, new_id
from models.api_keys import Principal
from models.session import session_scope
from tests.api.conftest import auth

LINE = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}) + "\n"
PARENT_HP = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def _job(session, owner: str, status: JobStatus, steps: int = 30) -> Job:
    job = Job(
        id=new_id("ftjob"), owner=owner, model="loraq-tiny-chat", training_file="file-x", suffix="facts", seed=42,
        hyperparameters=Hyperparameters(**PARENT_HP).model_dump(mode="json"), status=status, completed_steps=steps,
    )  # fmt: skip
    if status == JobStatus.succeeded:
        job.fine_tuned_model = job.fine_tuned_name
    session.add(job)
    session.flush()
    session.add(Checkpoint(id=new_id("ftckpt"), job_id=job.id, step_number=10, metrics={}, storage_key="k"))
    return job


@pytest.fixture
def jobs(settings):
    with session_scope(settings.resolved_database_url) as session:
        done, running = _job(session, "alice", JobStatus.succeeded), _job(session, "alice", JobStatus.running, 12)
        return {"done": (done.id, done.fine_tuned_name), "running": (running.id, running.fine_tuned_name)}


def _find(settings, name: str, owner: str = "alice", admin: bool = False):
    with session_scope(settings.resolved_database_url) as session:
        return find_parent(session, Principal(owner, admin), name)


def test_a_fine_tuned_model_and_a_checkpoint_of_the_callers_are_parents(settings, jobs):
    job_id, name = jobs["done"]
    parent = _find(settings, name)
    assert parent.base_model == "loraq-tiny-chat" and parent.hyperparameters.lora_r == 8
    assert parent.record == {"job": job_id, "step": 30, "model": name, "checkpoint": None}
    checkpoint = _find(settings, f"{name}:ckpt-step-10")
    assert checkpoint.record["step"] == 10 and checkpoint.record["checkpoint"].startswith("ftckpt-")
    assert _find(settings, name, owner="ops", admin=True) is not None  # admins see every owner's
    assert _find(settings, "loraq-tiny-chat") is None  # a base model: not continued training


def test_a_running_jobs_checkpoint_is_a_parent_but_its_model_is_not_there_yet(settings, jobs):
    _job_id, name = jobs["running"]
    assert _find(settings, f"{name}:ckpt-step-10").record["step"] == 10
    with pytest.raises(APIError) as error:
        _find(settings, name)
    assert (error.value.status, error.value.param, error.value.code) == (400, "model", "model_not_ready")
    assert "'running'" in error.value.message


@pytest.mark.parametrize(
    "variant",
    [
        lambda name: name,  # another owner's (below: bob asks)
        lambda name: name.replace(":facts:", ":other:"),  # the right job under another suffix
        lambda name: name.replace("loraq-tiny-chat", "tiny-local"),  # ... or another base
        lambda name: f"{name}:ckpt-step-20",  # no checkpoint at that step
        lambda name: name[:-4] + "zzzz",  # no such job
    ],
)
def test_names_that_are_not_a_model_of_the_caller_are_404(settings, jobs, variant):
    name = variant(jobs["done"][1])
    with pytest.raises(APIError) as error:
        _find(settings, name, owner="bob" if name == jobs["done"][1] else "alice")
    assert (error.value.status, error.value.param, error.value.code) == (404, "model", "model_not_found")


def test_a_conflicting_shape_is_a_400_naming_the_field_where_it_was_given(settings, jobs):
    parent = _find(settings, jobs["done"][1])
    given = Hyperparameters(target_modules=["q_proj", "k_proj"])
    with pytest.raises(APIError) as error:
        continued_hyperparameters(parent, given, "method.supervised.hyperparameters")
    assert error.value.param == "method.supervised.hyperparameters.target_modules"
    assert "k_proj, q_proj" in error.value.message and "q_proj, v_proj" in error.value.message


# ---------------------------------------------------------------- through the route


@pytest.fixture
def training_file(app_client) -> str:
    response = app_client.post(
        "/v1/files", headers=auth("alice"), files={"file": ("t.jsonl", LINE * 2)}, data={"purpose": "fine-tune"}
    )
    return response.json()["id"]


def _create(app_client, training_file, owner="alice", **body):
    return app_client.post("/v1/fine_tuning/jobs", headers=auth(owner), json={"training_file": training_file, **body})


def test_create_refuses_a_conflicting_lora_r_and_another_owners_model(app_client, jobs, training_file):
    name = jobs["done"][1]
    conflict = _create(app_client, training_file, model=name, hyperparameters={"lora_r": 16})
    assert conflict.status_code == 400
    assert conflict.json()["error"]["param"] == "hyperparameters.lora_r"
    assert conflict.json()["error"]["code"] == "lora_shape_conflict"
    assert "lora_r 16 conflicts with the parent adapter's lora_r 8" in conflict.json()["error"]["message"]
    missing = _create(app_client, training_file, model=f"{name}:ckpt-step-99")
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "model"


def test_create_records_the_parent_the_inherited_shape_and_serving_warnings(app_client, jobs, training_file):
    job_id, name = jobs["done"]
    response = _create(app_client, training_file, model=f"{name}:ckpt-step-10", hyperparameters={"n_epochs": 1})
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["model"] == "loraq-tiny-chat"  # the parent's base: validation and queue routing see it
    assert job["parent"]["job"] == job_id and job["parent"]["step"] == 10
    assert job["parent"]["model"] == f"{name}:ckpt-step-10"
    assert (job["hyperparameters"]["lora_r"], job["hyperparameters"]["target_modules"]) == (8, ["q_proj", "v_proj"])
    assert job["serving_warnings"] == []  # rank 8 serves

    warned = _create(app_client, training_file, model="loraq-tiny-chat", hyperparameters={"lora_r": 4}).json()
    assert [(w["engine"], w["setting"]) for w in warned["serving_warnings"]] == [("vllm", "lora_r")]
    events = app_client.get(f"/v1/fine_tuning/jobs/{warned['id']}/events", headers=auth("alice")).json()["data"]
    warnings = [e for e in events if e["level"] == "warn"]
    assert len(warnings) == 1 and "lora_r" in warnings[0]["message"] and "--max-lora-rank 8" in warnings[0]["message"]
    fetched = app_client.get(f"/v1/fine_tuning/jobs/{warned['id']}", headers=auth("alice")).json()
    assert fetched["serving_warnings"] == warned["serving_warnings"] and fetched["parent"] is None


def test_a_dpo_job_continues_an_sft_model_and_a_conflict_names_the_dpo_field(app_client, jobs):
    """SFT then DPO, the common path: a preference file, `method.dpo`, and a fine-tuned model as `model`."""
    from tests.facts import preference_rows

    content = "".join(json.dumps(row) + "\n" for row in preference_rows()).encode()
    upload = app_client.post(
        "/v1/files", headers=auth("alice"), files={"file": ("p.jsonl", content)}, data={"purpose": "fine-tune"}
    ).json()
    job_id, name = jobs["done"]
    dpo = {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}}
    response = _create(app_client, upload["id"], model=name, method=dpo)
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["method"]["type"] == "dpo" and job["method"]["dpo"]["hyperparameters"]["beta"] == 0.2
    assert job["parent"]["job"] == job_id and job["model"] == "loraq-tiny-chat"
    assert job["method"]["dpo"]["hyperparameters"]["lora_r"] == 8  # the SFT adapter's shape

    conflict = {"type": "dpo", "dpo": {"hyperparameters": {"lora_r": 32}}}
    refused = _create(app_client, upload["id"], model=name, method=conflict)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "method.dpo.hyperparameters.lora_r"
