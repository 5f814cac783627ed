"""Jobs on several GPUs, on a CPU worker configured for two processes (`loraq worker --gpus-per-job 2`: torchrun,
gloo): refused when no worker could run them, trained as one program across both processes, retried from
their last checkpoint when a rank is killed, and cancelled with every rank stopped. One deployment (embedded)
with a second worker for the two-process queue."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.conftest import BROKEN_WEIGHTS_MODEL
from tests.deployments import embedded, loraq
from tests.e2e.calls import create_job, events, upload_ok, wait_for, wait_for_event
from tests.facts import chat_rows

pytestmark = pytest.mark.e2e

TWO = {"gpus": 2}
SHORT = {"n_epochs": 2, "gradient_accumulation_steps": 2, "logging_steps": 2, "save_steps": 4}
LONG = {"n_epochs": 500, "gradient_accumulation_steps": 2, "logging_steps": 5, "save_steps": 5}


@pytest.fixture(scope="module")
def pair(tmp_path_factory, operator_models):
    folder = tmp_path_factory.mktemp("multi-gpu")
    deployment = embedded(folder, {**operator_models, "LORAQ_GPUS_PER_JOB": "1,2"})
    deployment.env = {**deployment.env, "LORAQ_DATA_DIR": str(folder / "data")}  # the embedded one's
    deployment.start_process("pair", loraq("worker", "--gpus-per-job", "2", "--name", "pair"))
    yield deployment
    deployment.stop()


def rank_processes(job_id: str) -> dict[int, int]:
    """{rank: pid} of the job's training ranks (torchrun's children running its config)."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                command = handle.read()
            with open(f"/proc/{pid}/environ", "rb") as handle:
                environment = handle.read().split(b"\0")
        except OSError:
            continue
        if b"training.run" in command and job_id.encode() in command:
            for entry in environment:
                if entry.startswith(b"RANK="):
                    found[int(entry[5:])] = int(pid)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def test_a_job_no_worker_can_run_is_a_400_naming_the_field(pair):
    with pair.client() as client:
        file_id = upload_ok(client, chat_rows()[:2])
        for resources, hyperparameters, phrase in [
            ({"gpus": 4}, {}, "offers 1, 2 GPUs per job"),
            (TWO, {"gradient_accumulation_steps": 3}, "cannot be split evenly over 2 GPUs"),
            ({"gpus": 0}, {}, "greater than or equal to 1"),
            ({"gpus": 2, "strategy": "tp"}, {}, "'ddp' or 'fsdp'"),
        ]:
            response = create_job(client, file_id, resources=resources, hyperparameters=hyperparameters)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["param"] == ("resources.strategy" if "strategy" in resources else "resources.gpus")
            assert phrase in error["message"], error


def test_a_two_process_job_trains_as_one_program(pair):
    with pair.client() as client:
        file_id = upload_ok(client, chat_rows())
        created = create_job(client, file_id, resources=TWO, hyperparameters=SHORT).json()
        assert created["resources"] == {"gpus": 2, "strategy": "ddp"}
        one_gpu = create_job(client, file_id, hyperparameters={"n_epochs": 1}).json()  # the other queue flows
        assert one_gpu["resources"] == {"gpus": 1, "strategy": "ddp"}
        job = wait_for(client, created["id"], timeout=300)
        assert job["status"] == "succeeded", job["error"]
        # 8 examples, 2 a step: the steps of one GPU, whatever the number of processes.
        assert job["completed_steps"] == job["total_steps"] == 8 * 2 // 2
        start = next(e for e in events(client, job["id"]) if e["message"].startswith("Fine-tuning job started"))
        assert start["data"]["processes"] == 2 and start["data"]["worker"].startswith("pair@")
        metrics = [e for e in events(client, job["id"]) if e["type"] == "metrics"]
        assert len(metrics) == 8 // 2, "only rank 0 reports"
        assert client.get(f"/v1/fine_tuning/jobs/{job['id']}/adapter").status_code == 200
        assert wait_for(client, one_gpu["id"])["status"] == "succeeded"
        single = next(e for e in events(client, one_gpu["id"]) if e["message"].startswith("Fine-tuning job started"))
        assert single["data"]["processes"] == 1 and not single["data"]["worker"].startswith("pair@")


@pytest.mark.slow  # two launches of two ranks: about two minutes on two cores
def test_a_killed_rank_ends_the_group_and_the_job_resumes_from_its_checkpoint(pair):
    with pair.client() as client:
        file_id = upload_ok(client, chat_rows())
        hyperparameters = {**LONG, "n_epochs": 30}  # 120 steps: time to kill a rank after the first checkpoint
        job = create_job(client, file_id, resources=TWO, hyperparameters=hyperparameters).json()
        deadline = time.monotonic() + 180
        while not client.get(f"/v1/fine_tuning/jobs/{job['id']}/checkpoints").json()["data"]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        ranks = rank_processes(job["id"])
        assert sorted(ranks) == [0, 1]
        os.kill(ranks[1], signal.SIGKILL)
        killed_at = time.monotonic()
        while _alive(ranks[0]):  # torchrun stops the surviving rank at once, not after a collective timeout
            assert time.monotonic() - killed_at < 15, "rank 0 outlived its peer"
            time.sleep(0.1)
        finished = wait_for(client, job["id"], timeout=300)
        assert finished["status"] == "succeeded", finished["error"]
        assert finished["completed_steps"] == 120
        messages = [e["message"] for e in events(client, job["id"])]
        retry = next(m for m in messages if "retrying from the last checkpoint" in m)
        assert "lost a rank (rank 1 was killed by SIGKILL" in retry, retry
        assert any(m.startswith("Resuming from the checkpoint at step") for m in messages), messages


def test_a_rank_s_own_error_fails_the_job_with_its_reason(pair):
    with pair.client() as client:
        file_id = upload_ok(client, chat_rows()[:2])
        job = create_job(client, file_id, model=BROKEN_WEIGHTS_MODEL, resources=TWO, hyperparameters=SHORT).json()
        finished = wait_for(client, job["id"], timeout=180)
        assert finished["status"] == "failed" and finished["error"]["code"] == "training_error", finished["error"]
        assert "Error" in finished["error"]["message"].split(":")[0], finished["error"]["message"]
        assert not any("retrying" in e["message"] for e in events(client, job["id"])), "not retried"


def test_cancel_stops_every_rank(pair):
    with pair.client() as client:
        file_id = upload_ok(client, chat_rows())
        job = create_job(client, file_id, resources=TWO, hyperparameters=LONG).json()
        wait_for_event(client, job["id"], "metrics", timeout=180)
        ranks = rank_processes(job["id"])
        assert sorted(ranks) == [0, 1]
        assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in ranks.values()):
            assert time.monotonic() < deadline, "a rank still runs after the cancel"
            time.sleep(0.2)
        while not any("Training stopped at step" in e["message"] for e in events(client, job["id"])):
            assert time.monotonic() < deadline, events(client, job["id"])
            time.sleep(0.2)
        assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "cancelled"
