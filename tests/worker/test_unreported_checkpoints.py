"""A worker that died between completing a checkpoint and recording it: the next attempt finds it on storage
(the truth), archives its adapter files and records it for the attempt that wrote it; already recorded
checkpoints are left alone, and incomplete ones are deleted."""

from __future__ import annotations

import tarfile

from sqlalchemy import select

from loraq.migrate import upgrade
from loraq.settings import Settings
from models.records import Checkpoint, Job, JobEvent, JobStatus
from models.session import session_scope
from training.checkpoints import mark_complete
from worker.supervisor import JobSupervisor

JOB_ID = "ftjob-unreported00000000000000"


def write_checkpoint(folder, step: int, complete: bool = True) -> None:
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"weights" * 100)
    (folder / "adapter_config.json").write_text('{"r": 16}')
    (folder / "optimizer.pt").write_bytes(b"optimizer state" * 100)
    if complete:
        mark_complete(folder, step)


def test_next_attempt_records_and_archives_what_storage_holds(tmp_path):
    settings = Settings(data_dir=tmp_path)
    upgrade(settings.resolved_database_url)
    supervisor = JobSupervisor(JOB_ID, settings, node="test")
    checkpoints = supervisor.paths.checkpoints
    for step, complete in ((10, True), (20, True), (30, False)):
        write_checkpoint(checkpoints / f"checkpoint-{step}", step, complete)
    with session_scope(settings.resolved_database_url) as session:
        session.add(
            Job(id=JOB_ID, owner="alice", model="loraq-tiny-chat", training_file="file-x", hyperparameters={},
                seed=0, status=JobStatus.running, attempts=2)
        )  # fmt: skip
        session.flush()  # the job row first (no ORM relationship orders the inserts)
        session.add(Checkpoint(id="ftckpt-10", job_id=JOB_ID, step_number=10, metrics={}, storage_key="recorded/10"))

    resume_from, unreported = supervisor._checkpoints_in_storage(recorded={10})
    assert resume_from == str(checkpoints / "checkpoint-20") and not (checkpoints / "checkpoint-30").exists()
    assert [(step, p.name) for step, p in unreported] == [(20, "checkpoint-20")]
    supervisor._record_unreported_checkpoints(unreported, previous_attempt=1)

    with session_scope(settings.resolved_database_url) as session:
        rows = {c.step_number: c for c in session.scalars(select(Checkpoint).where(Checkpoint.job_id == JOB_ID))}
        assert sorted(rows) == [10, 20]
        assert rows[20].storage_key == f"jobs/{JOB_ID}/checkpoints/checkpoint-20"
        assert rows[20].adapter_sha256 and rows[20].adapter_bytes
        events = list(session.scalars(select(JobEvent).where(JobEvent.job_id == JOB_ID)))
        assert [(e.message, e.data["attempt"]) for e in events] == [("Checkpoint created at step 20", 1)]
    archive = supervisor.paths.checkpoint_archive(20)
    assert archive.stat().st_size == rows[20].adapter_bytes
    with tarfile.open(archive) as tar:
        names = sorted(n.rsplit("/", 1)[-1] for n in tar.getnames() if "." in n.rsplit("/", 1)[-1])
    assert names == ["adapter_config.json", "adapter_model.safetensors"]  # no optimizer state, no marker

    assert supervisor._checkpoints_in_storage(recorded={10, 20})[1] == []  # recorded once
