"""The training program's config for a job: its files, base model and hyperparameters, resolved."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from loraq.base_models import find_model
from loraq.job_spec import Hyperparameters
from loraq.settings import Settings
from loraq.storage import Storage
from models import FileRecord, Job
from training.config import TrainingConfig
from worker.errors import ModelNotOffered


def build_training_config(job: Job, settings: Settings, storage: Storage, session) -> TrainingConfig:
    entry = find_model(settings, job.model)
    if entry is None:
        raise ModelNotOffered(f"base model {job.model!r} is no longer offered by this server")
    files = job_file_paths(job, storage, session)
    paths = storage.job_paths(job.id)
    return TrainingConfig(
        base_model=entry.source,
        trust_remote_code=entry.trust_remote_code,
        model_cache_dir=str(settings.model_cache_dir),
        train_path=str(files[job.training_file]),
        eval_path=str(files[job.validation_file]) if job.validation_file else None,
        output_dir=str(paths.adapter),
        checkpoint_dir=str(paths.checkpoints),
        results_dir=str(paths.results),
        progress_path=str(paths.progress),
        stop_path=str(paths.stop),
        seed=job.seed,
        hyperparameters=Hyperparameters.model_validate(job.hyperparameters),
        speedups=settings.training_speedups,  # the operator's choice, not the job's
        extra_metadata={"job_id": job.id, "model": job.model, "fine_tuned_model": job.fine_tuned_name},
    )


def job_file_paths(job: Job, storage: Storage, session) -> dict[str, Path]:
    """Where the job's training (and validation) file is stored, by file id."""
    ids = [f for f in (job.training_file, job.validation_file) if f]
    return {
        f.id: storage.resolve(f.storage_key) for f in session.scalars(select(FileRecord).where(FileRecord.id.in_(ids)))
    }
