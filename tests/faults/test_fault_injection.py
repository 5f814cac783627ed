"""Breaking things on purpose against the real service: PostgreSQL, redis-server, the API and two workers.

Every case checks that nothing was lost, nothing was trained twice (each attempt resumes where the
previous one's last complete checkpoint ended), and, where a job learns the fact set, that its adapter
gives the same answers as an uninterrupted run. The figures are reported at the end of the session.
"""

from __future__ import annotations

import io
import os
import signal
import tarfile
import time
from pathlib import Path

import pytest

from tests.deployments import loraq, production
from tests.e2e.calls import create_job, events, first_running, upload_ok, wait_for
from tests.facts import FACTS, MEMORISE, chat_rows, greedy_answers

pytestmark = pytest.mark.e2e

REPORT = {"faults injected": 0, "jobs completed": 0, "jobs lost": 0, "duplicate steps": 0}
FACTS_JOB = {**MEMORISE, "save_steps": 10, "logging_steps": 10}
SMALL_JOB = {"n_epochs": 2, "gradient_accumulation_steps": 1, "save_steps": 1, "logging_steps": 1}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    env = {
        "LORAQ_FAULT_KILL_AT": f"checkpoint:20:{folder / 'kill-in-checkpoint'}",
        "LORAQ_MAX_ATTEMPTS": "4",
        "LORAQ_MAX_ACTIVE_JOBS_PER_OWNER": "50",
    }
    deployment = production(folder, env, workers=2)
    deployment.kill_flag = folder / "kill-in-checkpoint"
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


# ---------------------------------------------------------------------------------------------- helpers


def attempts_of(client, job_id) -> list[dict]:
    """Per attempt: where it resumed from and the checkpoints it completed."""
    runs: dict[int, dict] = {}
    for event in events(client, job_id):
        data = event.get("data") or {}
        if event["message"].startswith("Fine-tuning job started"):
            runs[data["attempt"]] = {"resumed_from": 0, "checkpoints": []}
        elif "resumed_from_step" in data:
            runs[data["attempt"]]["resumed_from"] = data["resumed_from_step"]
        elif event["message"].startswith("Checkpoint created"):
            runs[data["attempt"]]["checkpoints"].append(data["step"])
    return [runs[k] for k in sorted(runs)]


def check_trained_once(client, job: dict) -> list[dict]:
    """Each attempt starts at the previous attempt's last complete checkpoint: no step counted twice."""
    runs = attempts_of(client, job["id"])
    trained = 0
    for previous, run in zip([None, *runs], runs, strict=False):
        expected_start = (previous["checkpoints"] or [previous["resumed_from"]])[-1] if previous else 0
        assert run["resumed_from"] == expected_start, runs
        end = run["checkpoints"][-1] if run["checkpoints"] else run["resumed_from"]
        trained += end - run["resumed_from"]
    REPORT["duplicate steps"] += max(0, trained - job["total_steps"])
    assert trained == job["total_steps"], runs
    return runs


def finish_and_answers(client, job_id: str, folder: Path) -> list[str]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.tiny_model import write_tiny_model

    job = wait_for(client, job_id, timeout=300)
    assert job["status"] == "succeeded", (job["error"], events(client, job_id)[-5:])
    REPORT["jobs completed"] += 1
    check_trained_once(client, job)
    archive = client.get(f"/v1/fine_tuning/jobs/{job_id}/adapter").content
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(folder, filter="data")
    base = AutoModelForCausalLM.from_pretrained(write_tiny_model(folder / "base"))
    model = PeftModel.from_pretrained(base, folder / job_id)
    return greedy_answers(model, AutoTokenizer.from_pretrained(folder / job_id), [q for q, _ in FACTS])


def worker_running(stack, client, job_id) -> tuple[str, int]:
    """(label, pid) of the worker process holding the job."""
    worker = [e for e in events(client, job_id) if e["message"].startswith("Fine-tuning job started")][-1]
    pid = int(worker["data"]["worker"].rsplit(":", 1)[1])
    label = next(label for label, p in stack.processes.items() if p.pid == pid)
    return label, pid


def training_child(pid: int) -> int:
    children = [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    assert len(children) == 1, children
    return children[0]


def restart_worker(stack, label: str) -> None:
    stack.processes.pop(label, None)
    stack.start_process(label, loraq("worker", "--name", label.replace("worker", "w")))


def first_checkpoint(client, job_id) -> None:
    deadline = time.monotonic() + 120
    while not any(e["message"].startswith("Checkpoint created") for e in events(client, job_id)):
        assert time.monotonic() < deadline
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------- cases


def test_kill_9_worker_resumes_elsewhere_from_checkpoint(stack, client, facts_file, reference_answers, tmp_path):
    job = create_job(client, facts_file, hyperparameters=FACTS_JOB).json()
    first_checkpoint(client, job["id"])
    label, pid = worker_running(stack, client, job["id"])
    os.kill(pid, signal.SIGKILL)  # its training child dies with it (PR_SET_PDEATHSIG)
    REPORT["faults injected"] += 1
    answers = finish_and_answers(client, job["id"], tmp_path)
    runs = attempts_of(client, job["id"])
    assert len(runs) == 2 and runs[1]["resumed_from"] >= 10, runs  # not from step 0
    assert answers == reference_answers
    restart_worker(stack, label)


@pytest.mark.slow  # a child's SIGKILL and retry from the checkpoint: the every-attempt kill case below covers it
def test_kill_9_training_child_alone(stack, client, facts_file, reference_answers, tmp_path):
    job = create_job(client, facts_file, hyperparameters=FACTS_JOB).json()
    first_checkpoint(client, job["id"])
    _, pid = worker_running(stack, client, job["id"])
    os.kill(training_child(pid), signal.SIGKILL)
    REPORT["faults injected"] += 1
    answers = finish_and_answers(client, job["id"], tmp_path)
    messages = [e["message"] for e in events(client, job["id"])]
    assert any("was killed by SIGKILL" in m and "retrying from the last checkpoint" in m for m in messages)
    assert attempts_of(client, job["id"])[1]["resumed_from"] >= 10
    assert answers == reference_answers


def test_kill_9_while_a_checkpoint_is_written(stack, client, facts_file, reference_answers, tmp_path):
    stack.kill_flag.touch()  # the next training process to write checkpoint 20 dies before marking it complete
    job = create_job(client, facts_file, hyperparameters=FACTS_JOB).json()
    answers = finish_and_answers(client, job["id"], tmp_path)
    REPORT["faults injected"] += 1
    assert not stack.kill_flag.exists()
    runs = attempts_of(client, job["id"])
    assert runs[0]["checkpoints"] == [10] and runs[1]["resumed_from"] == 10, runs  # never the half-written 20
    assert answers == reference_answers


def test_redis_restarted_without_its_data(stack, client, facts_file):
    jobs = [create_job(client, facts_file, hyperparameters=SMALL_JOB).json() for _ in range(4)]
    first_running(client, jobs)
    stack.redis.stop()  # queued messages are gone with it
    time.sleep(1)
    stack.redis.start()
    REPORT["faults injected"] += 1
    for job in jobs:
        finished = wait_for(client, job["id"], timeout=300)
        assert finished["status"] == "succeeded", finished["error"]
        REPORT["jobs completed"] += 1
        check_trained_once(client, finished)


def test_validation_message_lost_while_the_validator_is_down(stack, client, facts_file):
    """A job waiting for validation survives both a stopped validator and a Redis that lost its data: the
    reconciler (in the workers) sends the validation again, the restarted validator validates it; a job
    cancelled meanwhile stays cancelled."""
    stack.stop_process("validator")
    job = create_job(client, facts_file, hyperparameters=SMALL_JOB).json()
    cancelled = create_job(client, facts_file, hyperparameters=SMALL_JOB).json()
    assert client.post(f"/v1/fine_tuning/jobs/{cancelled['id']}/cancel").json()["status"] == "cancelled"
    stack.redis.stop()
    time.sleep(1)
    stack.redis.start()
    REPORT["faults injected"] += 2
    time.sleep(2)
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "validating_files"
    stack.start_process("validator", loraq("validator"))
    finished = wait_for(client, job["id"], timeout=300)
    assert finished["status"] == "succeeded", finished["error"]
    REPORT["jobs completed"] += 1
    check_trained_once(client, finished)
    assert any("missing from the broker" in e["message"] for e in events(client, job["id"]))
    # Cancelled while waiting for validation: the validator's outcome never overrides it.
    after = client.get(f"/v1/fine_tuning/jobs/{cancelled['id']}").json()
    assert after["status"] == "cancelled" and after["total_steps"] is None
    assert not [e for e in events(client, cancelled["id"]) if e["message"] == "Job queued"]


@pytest.mark.slow  # the API holds no state; `loraq up` restarted mid-job (tests/e2e/test_embedded_mode.py) covers it
def test_api_restarted_while_a_job_trains(stack, client, facts_file):
    job = create_job(client, facts_file, hyperparameters=SMALL_JOB).json()
    wait_for(client, job["id"], until=("running",))
    stack.stop_process("api", signal.SIGKILL)
    REPORT["faults injected"] += 1
    stack.start_process("api", loraq("api", "--host", "127.0.0.1", "--port", str(stack.port), "--workers", "2"))
    stack.wait_ready()
    finished = wait_for(client, job["id"])
    assert finished["status"] == "succeeded"
    REPORT["jobs completed"] += 1
    check_trained_once(client, finished)


@pytest.mark.slow  # one claim per job: tests/models/test_job_state.py (two workers claiming) checks the same rule
def test_same_message_delivered_twice(stack, client, facts_file):
    from worker.celery_app import RUN_JOB_TASK, make_celery

    job = create_job(client, facts_file, hyperparameters=SMALL_JOB).json()
    make_celery(stack.env["LORAQ_BROKER_URL"], "loraq").send_task(RUN_JOB_TASK, args=[job["id"]], queue="loraq")
    REPORT["faults injected"] += 1
    finished = wait_for(client, job["id"])
    time.sleep(2)  # let the duplicate reach a worker too
    assert finished["status"] == "succeeded"
    REPORT["jobs completed"] += 1
    starts = [e for e in events(client, job["id"]) if e["message"].startswith("Training started")]
    assert len(starts) == 1
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["status"] == "succeeded"


def test_sigterm_worker_hands_the_job_over(stack, client, facts_file, reference_answers, tmp_path):
    job = create_job(client, facts_file, hyperparameters=FACTS_JOB).json()
    first_checkpoint(client, job["id"])
    label, pid = worker_running(stack, client, job["id"])
    os.kill(pid, signal.SIGTERM)  # a redeploy
    REPORT["faults injected"] += 1
    answers = finish_and_answers(client, job["id"], tmp_path)
    handoff = [e for e in events(client, job["id"]) if "is shutting down: checkpointed at step" in e["message"]]
    assert len(handoff) == 1
    step = int(handoff[0]["message"].split("checkpointed at step ")[1].split()[0])
    assert attempts_of(client, job["id"])[1]["resumed_from"] == step
    assert answers == reference_answers
    assert stack.processes[label].wait(timeout=60) == 0  # the worker then exits cleanly
    restart_worker(stack, label)


def test_storage_unwritable_fails_cleanly(stack, client, facts_file):
    job = create_job(client, facts_file, hyperparameters=FACTS_JOB).json()
    first_checkpoint(client, job["id"])
    checkpoints = Path(stack.env["LORAQ_STORAGE_ROOT"]) / "jobs" / job["id"] / "checkpoints"
    checkpoints.rename(checkpoints.with_name("moved-away"))
    checkpoints.write_text("not a folder")  # every later checkpoint write fails (even as root)
    REPORT["faults injected"] += 1
    finished = wait_for(client, job["id"])
    assert finished["status"] == "failed" and finished["error"]["code"] == "storage_error", finished["error"]
    assert "Writing to shared storage failed" in finished["error"]["message"]
    response = client.get(f"/v1/fine_tuning/jobs/{job['id']}/adapter")
    assert response.status_code == 400 and response.json()["error"]["code"] == "adapter_not_ready"
    assert not (checkpoints.parent / "adapter.tar.gz").exists() and not (checkpoints.parent / "adapter").exists()


def test_run_time_limit_fails_after_a_final_checkpoint(client, facts_file):
    job = create_job(
        client,
        facts_file,
        max_runtime_seconds=12,
        hyperparameters={**FACTS_JOB, "n_epochs": 1000, "save_steps": 100000},
    ).json()
    finished = wait_for(client, job["id"], timeout=120)
    assert finished["status"] == "failed" and finished["error"]["code"] == "time_limit_exceeded"
    assert "12-second run-time limit" in finished["error"]["message"]
    checkpoints = [e for e in events(client, job["id"]) if e["message"].startswith("Checkpoint created")]
    assert checkpoints and checkpoints[-1]["data"]["step"] == finished["completed_steps"]


def test_a_training_process_killed_every_attempt_fails_after_the_last(stack, client, facts_file):
    job = create_job(client, facts_file, hyperparameters=FACTS_JOB).json()
    for attempt in range(1, 5):  # LORAQ_MAX_ATTEMPTS=4 for this deployment
        deadline = time.monotonic() + 120
        while not [
            e
            for e in events(client, job["id"])
            if e["message"].startswith("Training started") and len(attempts_of(client, job["id"])) == attempt
        ]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        _, pid = worker_running(stack, client, job["id"])
        os.kill(training_child(pid), signal.SIGKILL)
        REPORT["faults injected"] += 1
    finished = wait_for(client, job["id"])
    assert finished["status"] == "failed" and finished["error"]["code"] == "training_crashed"
    assert "killed by SIGKILL" in finished["error"]["message"] and "attempt 4 of 4" in finished["error"]["message"]
    assert len(attempts_of(client, job["id"])) == 4  # bounded: no fifth run


@pytest.mark.slow  # the soak variant: four jobs on two workers (tests/e2e/test_fleet.py) and the kills here cover it
def test_twenty_jobs_while_a_worker_is_killed_and_restarted(stack, client):
    file_id = upload_ok(client, chat_rows()[:2])
    jobs = [create_job(client, file_id, hyperparameters=SMALL_JOB).json() for _ in range(20)]
    for _ in range(3):
        time.sleep(8)
        label = "worker1"
        os.kill(stack.processes[label].pid, signal.SIGKILL)
        REPORT["faults injected"] += 1
        stack.processes[label].wait()
        time.sleep(2)
        restart_worker(stack, label)
    for job in jobs:
        finished = wait_for(client, job["id"], timeout=600)
        if finished["status"] != "succeeded":
            REPORT["jobs lost"] += 1
        assert finished["status"] == "succeeded", (finished["error"], events(client, job["id"])[-6:])
        REPORT["jobs completed"] += 1
        check_trained_once(client, finished)


def test_corrupted_adapter_is_never_served(stack, client, facts_file):
    job = create_job(client, facts_file, hyperparameters=SMALL_JOB).json()
    assert wait_for(client, job["id"])["status"] == "succeeded"
    archive = Path(stack.env["LORAQ_STORAGE_ROOT"]) / "jobs" / job["id"] / "adapter.tar.gz"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF  # bit rot on the shared volume
    archive.write_bytes(bytes(data))
    REPORT["faults injected"] += 1
    response = client.get(f"/v1/fine_tuning/jobs/{job['id']}/adapter")
    assert response.status_code == 500 and response.json()["error"]["code"] == "adapter_corrupt"


def test_report(capsys):
    """The suite's figures (also printed at the end of the run)."""
    with capsys.disabled():
        print("\nfault injection: " + ", ".join(f"{k}: {v}" for k, v in REPORT.items()))
    assert REPORT["jobs lost"] == 0 and REPORT["duplicate steps"] == 0
