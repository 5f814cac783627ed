"""Validating a large file on the real service (PostgreSQL, redis-server, the API, two validators and a
worker): progress while the file is read, a cancel or a stopping validator ends the validation within
seconds, and a validator killed mid-file is replaced once its lease expires, never two validators on one
job at once. A file of a few megabytes is tokenized once, by the validator: training memory-maps its rows,
a second job on it reuses them, and deleting the file deletes them."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import psutil
import pytest

from tests.deployments import loraq, production
from tests.e2e.calls import create_job, events, upload_ok, wait_for
from tests.facts import chat_rows

pytestmark = pytest.mark.e2e

# About 2.4 MB: a few seconds of tokenizing, reported every 0.3 s here, by a pool of processes (from 2 MB).
ROWS = 16000
ONE_STEP = {"n_epochs": 1, "max_steps": 1, "gradient_accumulation_steps": 1}
PROGRESS = re.compile(r"^Validating training file: [\d,]+ of ~[\d,]+ rows, .+ of .+, about .+ left$")
VALIDATED = ("queued", "running", "succeeded")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("large-files")
    env = {"LORAQ_VALIDATION_PROGRESS_SECONDS": "0.3", "LORAQ_MAX_EXAMPLES_PER_FILE": "100000"}
    deployment = production(folder, env)
    deployment.start_process("validator2", loraq("validator", "--name", "validator2"))
    yield deployment
    deployment.stop()


@pytest.fixture(scope="module")
def client(stack):
    with stack.client() as c:
        yield c


@pytest.fixture
def large_file(client) -> tuple[str, int]:
    """Uploaded afresh for each test: a new file has no tokenized rows yet, so it is read from the start."""
    content = "".join(json.dumps(row) + "\n" for row in chat_rows() * (ROWS // len(chat_rows()))).encode()
    return upload_ok(client, content), len(content)


def progress_events(history: list[dict]) -> list[dict]:
    return [e for e in history if e["message"].startswith("Validating training file:")]


def claims(history: list[dict]) -> list[dict]:
    return [e for e in history if e["message"].endswith("is checking the files")]


def first_progress(stack, client, job_id: str) -> tuple[str, int]:
    """Once the validator reports progress: the (label, pid) of the validator process reading the file."""
    deadline = time.monotonic() + 60
    while not progress_events(history := events(client, job_id)):
        assert time.monotonic() < deadline, history
        time.sleep(0.1)
    pid = claims(history)[-1]["data"]["pid"]
    return next(label for label, p in stack.processes.items() if p.pid == pid), pid


def tokenizing_processes(pid: int) -> list[psutil.Process]:
    """The validator's pool processes (multiprocessing's resource tracker, also a child, lives on)."""
    return [child for child in psutil.Process(pid).children() if "spawn_main" in " ".join(child.cmdline())]


def restart_validator(stack, label: str) -> None:
    stack.processes.pop(label, None)
    stack.start_process(label, loraq("validator", "--name", label))


def test_progress_while_a_large_file_is_validated(stack, client, large_file):
    from worker.celery_app import VALIDATE_JOB_TASK, make_celery

    file_id, size = large_file
    job = create_job(client, file_id, hyperparameters=ONE_STEP).json()
    deadline = time.monotonic() + 60
    while (seen := client.get(f"/v1/fine_tuning/jobs/{job['id']}").json())["validation_progress"] is None:
        assert seen["status"] == "validating_files" and time.monotonic() < deadline, seen
        time.sleep(0.1)
    progress = seen["validation_progress"]  # the figures are on the job object while it validates
    assert progress["file"] == "training" and progress["bytes_total"] == size
    assert 0 < progress["bytes_done"] <= size and 0 < progress["rows_done"] <= ROWS
    # A second delivery of its message meanwhile: the live lease turns it away.
    make_celery(stack.env["LORAQ_BROKER_URL"], "loraq").send_task(
        VALIDATE_JOB_TASK, args=[job["id"]], queue="loraq.validation"
    )
    validated = wait_for(client, job["id"], until=VALIDATED, timeout=120)
    assert validated["validation_progress"] is None and validated["total_steps"] == 1  # max_steps
    history = events(client, job["id"])
    reports = progress_events(history)
    assert len(reports) >= 2 and all(PROGRESS.match(e["message"]) for e in reports), reports
    figures = [e["data"] for e in reports]
    assert all(f["bytes_total"] == size and f["eta_seconds"] is not None for f in figures)
    assert [f["rows_done"] for f in figures] == sorted(f["rows_done"] for f in figures)
    assert len(claims(history)) == 1
    finished = wait_for(client, job["id"])
    assert finished["status"] == "succeeded" and finished["completed_steps"] == 1, finished["error"]


def test_cancel_during_validation_stops_the_validator_within_seconds(stack, client, large_file):
    job = create_job(client, large_file[0], hyperparameters=ONE_STEP).json()
    label, pid = first_progress(stack, client, job["id"])
    assert tokenizing_processes(pid)
    assert client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    cancelled = time.monotonic()
    while f"job {job['id']}: validation stopped (cancelled)" not in stack.log(label) or tokenizing_processes(pid):
        assert time.monotonic() - cancelled < 5, stack.log(label)[-2000:]
        time.sleep(0.1)
    time.sleep(1)
    history = events(client, job["id"])
    after_cancel = history[[e["message"] for e in history].index("Job cancelled") :]
    assert not progress_events(after_cancel)
    job = client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()
    assert job["status"] == "cancelled" and job["validation_progress"] is None


def test_a_validator_killed_mid_file_is_replaced_once_its_lease_expires(stack, client, large_file):
    job = create_job(client, large_file[0], hyperparameters=ONE_STEP).json()
    label, pid = first_progress(stack, client, job["id"])
    descendants = psutil.Process(pid).children(recursive=True)
    assert tokenizing_processes(pid)
    os.kill(pid, signal.SIGKILL)
    _, alive = psutil.wait_procs(descendants, timeout=10)
    assert not alive  # the kernel killed the pool processes with it (their parent-death signal)
    validated = wait_for(client, job["id"], until=VALIDATED, timeout=120)
    assert validated["status"] in VALIDATED, validated["error"]
    client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")  # no need to train it
    history = events(client, job["id"])
    first, second = claims(history)
    assert first["data"]["pid"] == pid and second["data"]["pid"] != pid
    # Sent again only once the dead validator's lease had expired, and nothing of the first after the second.
    between = history[history.index(first) : history.index(second)]
    assert any("missing from the broker" in e["message"] for e in between)
    later = history[history.index(second) :]
    assert not [e for e in progress_events(later) if e["data"]["validator"] == first["data"]["validator"]]
    restart_validator(stack, label)


def test_a_stopping_validator_hands_the_job_back(stack, client, large_file):
    job = create_job(client, large_file[0], hyperparameters=ONE_STEP).json()
    label, pid = first_progress(stack, client, job["id"])
    os.kill(pid, signal.SIGTERM)  # a redeploy, or Ctrl-C of `loraq up`
    assert stack.processes[label].wait(timeout=15) == 0  # it does not finish reading the file first
    history = events(client, job["id"])
    handed_back = [e for e in history if e["message"].startswith("Validation interrupted")]
    assert [e["message"] for e in handed_back] == [
        "Validation interrupted (validator stopping); it will be validated again"
    ]
    assert wait_for(client, job["id"], until=VALIDATED, timeout=120)["status"] in VALIDATED  # by the other one
    client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel")  # no need to train it
    first, second = claims(events(client, job["id"]))
    assert first["data"]["pid"] == pid and second["data"]["pid"] != pid
    restart_validator(stack, label)


def test_a_few_megabytes_are_tokenized_once_by_the_validator(stack, client, tmp_path):
    from bench.data_scale import write_chat_file

    content = write_chat_file(tmp_path / "chat.jsonl", 3_000_000).read_bytes()
    file_id = upload_ok(client, content)
    folder = stack.folder / "storage" / "tokenized" / file_id
    steps = {"n_epochs": 1, "max_steps": 3, "gradient_accumulation_steps": 1}
    first = create_job(client, file_id, hyperparameters=steps).json()
    done = wait_for(client, first["id"], timeout=300)
    assert done["status"] == "succeeded" and done["completed_steps"] == 3, done["error"]
    rows = sorted(folder.glob("*.arrow"))
    assert len(rows) == 1 and rows[0].with_suffix(".json").is_file()
    log = (stack.folder / "storage" / "jobs" / first["id"] / "train.log").read_text()
    assert f"train file: reusing the tokenized rows at {rows[0]}" in log  # memory-mapped, not tokenized again
    history = events(client, first["id"])
    assert not [e for e in history if e["message"].startswith("Reusing")]  # tokenized by this one
    report = next(e["data"] for e in history if e["message"].startswith("Training file:"))
    assert report["examples"] == content.count(b"\n") and report["long_examples"]["count"] > 0

    second = create_job(client, file_id, hyperparameters={**steps, "max_steps": 1}).json()
    again = wait_for(client, second["id"], timeout=300)
    assert again["status"] == "succeeded", again["error"]
    history = events(client, second["id"])
    reused = [e for e in history if e["message"].startswith("Reusing")]
    assert [e["message"] for e in reused] == [
        "Reusing the training file's tokenized rows from an earlier validation (the same file, tokenizer and settings)"
    ]
    assert not progress_events(history)  # nothing read again
    assert next(e["data"] for e in history if e["message"].startswith("Training file:")) == report
    assert sorted(folder.glob("*.arrow")) == rows

    assert client.delete(f"/v1/files/{file_id}").json()["deleted"] is True
    assert not folder.exists()


@pytest.mark.slow  # a minute or more of tokenizing on 2 cores; the few-megabyte case above runs by default
def test_a_50_megabyte_file_trains_for_max_steps_after_reporting_progress(stack, client, tmp_path):
    from bench.data_scale import write_chat_file

    content = write_chat_file(tmp_path / "chat.jsonl", 50_000_000).read_bytes()
    file_id = upload_ok(client, content)
    job = create_job(client, file_id, hyperparameters={**ONE_STEP, "max_steps": 2}).json()
    finished = wait_for(client, job["id"], timeout=900)
    assert finished["status"] == "succeeded", finished["error"]
    assert finished["total_steps"] == finished["completed_steps"] == 2
    history = events(client, job["id"])
    reports = progress_events(history)
    assert len(reports) >= 2 and reports[-1]["data"]["bytes_total"] == len(content)
    report = next(e["data"] for e in history if e["message"].startswith("Training file:"))
    assert report["examples"] == content.count(b"\n")
    assert client.delete(f"/v1/files/{file_id}").json()["deleted"] is True
