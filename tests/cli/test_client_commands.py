"""The `loraq` client commands, run as a user runs them (`python -m cli ...` in a subprocess, output piped)
against the real service: upload, create with --watch, a failing job, a resumed download, --json, errors."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.facts import chat_rows, write_jsonl

pytestmark = pytest.mark.e2e

QUICK = ["--hp", "n_epochs=2", "--hp", "gradient_accumulation_steps=1", "--hp", "logging_steps=1"]


def loraq(service, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LORAQ_", "OPENAI_"))}
    env |= {"LORAQ_BASE_URL": f"{service.base_url}/v1", "LORAQ_API_KEY": service.api_key}
    root = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "cli", *args]
    return subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, timeout=timeout)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_upload_prints_the_id_and_a_bad_file_its_lines(service, tmp_path):
    uploaded = loraq(service, "files", "upload", str(write_jsonl(tmp_path / "facts.jsonl", chat_rows()[:3])))
    assert uploaded.returncode == 0, uploaded.stderr
    file_id = uploaded.stdout.strip()
    assert file_id.startswith("file-") and "\r" not in uploaded.stderr  # no progress bar when piped
    listed = json.loads(loraq(service, "files", "list", "--json").stdout)
    assert {"id": file_id, "examples": 3, "status": "processed"}.items() <= next(
        f for f in listed if f["id"] == file_id
    ).items()

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(chat_rows()[0]) + "\n{not json\n" + json.dumps({"messages": []}) + "\n")
    message = one_line_error(loraq(service, "files", "upload", str(bad)))
    assert "line 2" in message and "line 3" in message


def test_create_with_watch_then_download_resumes_a_partial_file(service, tmp_path):
    file_id = loraq(service, "files", "upload", str(write_jsonl(tmp_path / "f.jsonl", chat_rows()[:2]))).stdout.strip()
    created = loraq(
        service, "jobs", "create", "--model", "loraq-tiny-chat", "--training-file", file_id, "--suffix", "cli",
        *QUICK, "--hp", "lr_scheduler_type=linear", "--watch",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    job_id = created.stdout.splitlines()[0]
    assert created.stdout.splitlines()[-1].startswith(f"{job_id} succeeded: ft:loraq-tiny-chat:cli:{job_id}")
    assert "Step 4/4" in created.stdout  # the events, as lines, while it ran

    job = json.loads(loraq(service, "jobs", "get", job_id, "--json").stdout)
    assert job["status"] == "succeeded"
    assert job["hyperparameters"]["n_epochs"] == 2 and job["hyperparameters"]["lr_scheduler_type"] == "linear"
    assert job_id in [j["id"] for j in json.loads(loraq(service, "jobs", "list", "--json").stdout)]
    assert job["fine_tuned_model"] in [m["id"] for m in json.loads(loraq(service, "models", "list", "--json").stdout)]
    listed = json.loads(loraq(service, "jobs", "events", job_id, "--json").stdout)
    followed = loraq(service, "jobs", "events", job_id, "--follow", "--json")
    assert followed.returncode == 0
    assert [json.loads(line) for line in followed.stdout.splitlines()] == listed

    with service.client() as client:
        etag = client.get(f"/v1/fine_tuning/jobs/{job_id}/adapter").headers["etag"].strip('"')
    archive = tmp_path / "adapter.tar.gz"
    downloaded = loraq(service, "jobs", "download", job_id, "-o", str(archive))
    assert downloaded.returncode == 0 and downloaded.stdout.strip() == str(archive)
    assert sha256(archive) == etag
    with archive.open("r+b") as handle:
        handle.truncate(archive.stat().st_size // 2)
    resumed = loraq(service, "jobs", "download", job_id, "-o", str(archive))
    assert resumed.returncode == 0 and f"resuming {archive} at byte" in resumed.stderr
    assert sha256(archive) == etag


def test_watch_exits_1_with_the_error_of_a_failed_job(service, tmp_path):
    file_id = loraq(service, "files", "upload", str(write_jsonl(tmp_path / "f.jsonl", chat_rows()[:2]))).stdout.strip()
    result = loraq(
        service, "jobs", "create", "--model", "loraq-tiny-chat", "--training-file", file_id, *QUICK,
        "--hp", 'target_modules=["no_such_proj"]', "--watch",
    )  # fmt: skip
    job_id = result.stdout.splitlines()[0]
    message = one_line_error(result)
    assert message.startswith(f"error: {job_id} failed: ") and "no_such_proj" in message


def test_pause_watch_list_and_resume(service, tmp_path):
    """A job paused early: `watch` stops at `paused` (exit 3), `list` finds it by status and metadata, `resume`
    queues it (then it is cancelled: nothing here needs it trained)."""
    file_id = loraq(service, "files", "upload", str(write_jsonl(tmp_path / "f.jsonl", chat_rows()[:2]))).stdout.strip()
    with service.client() as client:
        body = {"model": "loraq-tiny-chat", "training_file": file_id, "metadata": {"cli-test": tmp_path.name}}
        job_id = client.post("/v1/fine_tuning/jobs", json=body).json()["id"]
    paused = loraq(service, "jobs", "pause", job_id)
    assert paused.returncode == 0, paused.stderr
    # Paused at once if already queued; else pausing (once validated, or, if a worker took it, once checkpointed).
    pausing = r" \(pausing: once it has checkpointed, or its files are validated\)"
    assert re.fullmatch(rf"{job_id} (paused|(validating_files|running){pausing})", paused.stdout.strip()), paused
    watched = loraq(service, "jobs", "watch", job_id)
    assert watched.returncode == 3, watched
    message = rf"{job_id} paused at step \d+: `loraq jobs resume {job_id}` continues it"
    assert re.fullmatch(message, watched.stderr.strip()), watched
    found = loraq(service, "jobs", "list", "--status", "paused", "--metadata", f"cli-test={tmp_path.name}", "--json")
    assert [j["id"] for j in json.loads(found.stdout)] == [job_id]
    resumed = loraq(service, "jobs", "resume", job_id)
    assert resumed.returncode == 0 and resumed.stdout.strip() == f"{job_id} queued", resumed
    assert "is not paused" in one_line_error(loraq(service, "jobs", "resume", job_id))
    assert loraq(service, "jobs", "cancel", job_id).returncode == 0


def test_errors_are_one_line(service):
    assert "No such fine-tuning job" in one_line_error(loraq(service, "jobs", "get", "ftjob-nosuchjob"))
    unreachable = loraq(service, "jobs", "list", "--base-url", f"http://127.0.0.1:{free_port()}/v1")
    assert "connection refused" in one_line_error(unreachable)
    assert "HTTP 401" in one_line_error(loraq(service, "models", "list", "--api-key", "lq-wrong"))
