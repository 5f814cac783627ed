"""`loraq up`: one command brings everything up with a generated key; Ctrl-C takes all of it down."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from hashlib import sha256
from pathlib import Path

import httpx
import pytest

from tests.conftest import LOCAL_MODEL, free_port
from tests.e2e.calls import create_job, events, stream_events, upload_ok, wait_for
from tests.facts import chat_rows

pytestmark = pytest.mark.e2e


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found |= {int(c) for c in (task / "children").read_text().split()}
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def _start_up(tmp_path, port, **settings: str):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAQ_")} | settings
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "up", "--port", str(port), "--data-dir", str(tmp_path / "data")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        assert line, "loraq up exited before printing its API key"
        if line.startswith("API key: "):
            return process, line.split(": ", 1)[1].strip()
    raise AssertionError("no API key printed")


def _ctrl_c(process) -> None:
    children = _children(process.pid)
    assert len(children) == 4  # redis-server, the worker, the validator and the API
    process.send_signal(signal.SIGINT)  # what Ctrl-C delivers
    assert process.wait(timeout=90) == 0
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in children if _alive(pid)]


def _hold_event_stream(client: httpx.Client, job_id: str) -> list[str]:
    """Reads the job's event stream in a thread until the server closes it, then appends "closed" to the list
    returned (an error instead if the connection broke); returns once the stream is open."""
    opened, outcome = threading.Event(), []

    def read() -> None:
        try:
            with stream_events(client, job_id) as response:
                assert response.status_code == 200
                opened.set()
                for _ in response.iter_lines():
                    pass
            outcome.append("closed")
        except Exception as exc:
            outcome.append(repr(exc))

    threading.Thread(target=read, daemon=True).start()
    assert opened.wait(timeout=10)
    return outcome


def test_up_generates_a_key_and_ctrl_c_stops_everything_keeping_the_job(tmp_path, s3_server):
    """`loraq up` on an S3 bucket (the local-folder default runs in every other embedded test): a job stopped by
    Ctrl-C resumes at the next start from its checkpoint in the bucket, with the local scratch space gone as on a
    fresh machine."""
    port = free_port()
    storage = s3_server.environment(s3_server.bucket("embedded"))
    process, key = _start_up(tmp_path, port, **storage)
    try:
        assert (tmp_path / "data" / "api_key").read_text().strip() == key
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"})
        assert client.get("/v1/models").status_code == 200
        assert client.get("/readyz").json()["checks"]["storage"] == "ok"
        file_id = upload_ok(client, chat_rows())
        hp = {"n_epochs": 15, "gradient_accumulation_steps": 1, "save_steps": 20, "logging_steps": 20}
        job_id = create_job(client, file_id, hyperparameters=hp).json()["id"]
        deadline = time.monotonic() + 120
        while not client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        _ctrl_c(process)  # the running job checkpoints and goes back to the queue before Redis stops
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz")
        shutil.rmtree(tmp_path / "data" / "work")  # the scratch space and cache: only the bucket is kept

        process, _ = _start_up(tmp_path, port, **storage)  # the same database and bucket: the job continues
        finished = wait_for(client, job_id, timeout=420)  # on a CPU that may be shared
        assert finished["status"] == "succeeded", finished["error"]
        resumed = [e for e in events(client, job_id) if "resumed_from_step" in (e.get("data") or {})]
        assert resumed and resumed[0]["data"]["resumed_from_step"] >= 20
        adapter = client.get(f"/v1/fine_tuning/jobs/{job_id}/adapter")
        assert adapter.status_code == 200 and adapter.headers["etag"].strip('"') == sha256(adapter.content).hexdigest()
        stored = {p.name for p in (s3_server.data / "embedded").rglob("*") if p.is_file()}
        assert "adapter.tar.gz" in stored and not (tmp_path / "data" / "storage").exists()
        _ctrl_c(process)
    finally:
        if process.poll() is None:
            process.kill()


def test_ctrl_c_while_a_large_file_is_validated_stops_within_seconds(tmp_path):
    """The validator stops mid-file and hands the job back (to be validated at the next start), rather than
    keeping `loraq up` waiting until the file is read."""
    port = free_port()
    process, key = _start_up(tmp_path, port, LORAQ_VALIDATION_PROGRESS_SECONDS="0.5")
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"})
        rows = chat_rows() * 5000  # 40,000 examples: most of a minute to validate on this machine
        job_id = create_job(client, upload_ok(client, rows), hyperparameters={"n_epochs": 1}).json()["id"]
        deadline = time.monotonic() + 60
        while not [e for e in events(client, job_id) if e["message"].startswith("Validating training file:")]:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        streams = [_hold_event_stream(client, job_id) for _ in range(2)]  # open streams must not delay the stop
        stopping = time.monotonic()
        _ctrl_c(process)
        assert time.monotonic() - stopping < 15
        deadline = time.monotonic() + 5
        while not all(streams) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert streams == [["closed"], ["closed"]]  # ended by the server, before it stopped
    finally:
        if process.poll() is None:
            process.kill()
    from sqlalchemy import select

    from models.records import Job, JobEvent, JobStatus
    from models.session import session_scope

    with session_scope(f"sqlite:///{tmp_path / 'data' / 'loraq.db'}") as session:  # the API is gone
        job = session.scalars(select(Job).where(Job.id == job_id)).one()
        assert (job.status, job.lease_owner) == (JobStatus.validating_files, None)
        messages = session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id)).all()
    assert "Validation interrupted (validator stopping); it will be validated again" in messages


def test_operator_listed_local_model_trains(client):
    assert LOCAL_MODEL in [m["id"] for m in client.get("/v1/models").json()["data"]]
    file_id = upload_ok(client, chat_rows()[:2])
    job = create_job(client, file_id, model=LOCAL_MODEL, hyperparameters={"n_epochs": 1}).json()
    finished = wait_for(client, job["id"])
    assert finished["status"] == "succeeded", finished["error"]
    assert finished["fine_tuned_model"].startswith(f"ft:{LOCAL_MODEL}:")
