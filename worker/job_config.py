"""The training program's config for a job: its files, base model and hyperparameters, resolved."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from loraq.base_models import find_model
from loraq.job_spec import Resources, hyperparameters_class
from loraq.settings import Settings
from loraq.storage import JobPaths, Storage, tokenized_prefix
from models import FileRecord, Job
from training.config import TrainingConfig
from worker.errors import ModelNotOffered


def build_training_config(job: Job, settings: Settings, paths: JobPaths, files: dict[str, LocalFile]) -> TrainingConfig:
    """The config of a run in the job's workspace `paths`, on the local copies of its files."""
    entry = find_model(settings, job.model)
    if entry is None:
        raise ModelNotOffered(f"base model {job.model!r} is no longer offered by this server")
    train = files[job.training_file]
    evaluation = files[job.validation_file] if job.validation_file else None
    resources = Resources.model_validate(job.resources or {})
    return TrainingConfig(
        base_model=entry.source,
        trust_remote_code=entry.trust_remote_code,
        model_cache_dir=str(settings.model_cache_dir),
        train_path=str(train.path),
        eval_path=str(evaluation.path) if evaluation else None,
        # The recorded digests name the rows the validation stage tokenized, which the training program
        # memory-maps from the files' tokenized folders (it tokenizes only if they are gone).
        train_sha256=train.sha256,
        eval_sha256=evaluation.sha256 if evaluation else None,
        train_tokenized_dir=str(train.tokenized_dir),
        eval_tokenized_dir=str(evaluation.tokenized_dir) if evaluation else None,
        output_dir=str(paths.adapter),
        checkpoint_dir=str(paths.checkpoints),
        results_dir=str(paths.results),
        progress_path=str(paths.progress),
        stop_path=str(paths.stop),
        seed=job.seed,
        method=job.method,
        hyperparameters=hyperparameters_class(job.method).model_validate(job.hyperparameters),
        nproc_per_node=resources.gpus,
        strategy=resources.strategy,
        speedups=settings.training_speedups,  # the operator's choice, not the job's
        # Continued training: the parent's adapter, which the supervisor fetches there (worker.parent_adapter).
        init_adapter=str(paths.parent_adapter) if job.parent else None,
        extra_metadata={
            "job_id": job.id,
            "model": job.model,
            "fine_tuned_model": job.fine_tuned_name,
            **({"parent": job.parent} if job.parent else {}),
        },
    )


@dataclass(frozen=True)
class LocalFile:
    """An uploaded file on this machine, as the validation stage and the training program read it."""

    path: Path  # the uploaded bytes
    sha256: str  # as recorded at upload
    tokenized_dir: Path  # its tokenized copies (training.tokenized)


@dataclass(frozen=True)
class StoredFile:
    """An uploaded file in storage."""

    id: str
    key: str
    sha256: str

    def fetch(self, storage: Storage) -> LocalFile:
        """Its bytes and tokenized copies on this machine (downloaded and cached when storage is remote)."""
        path = storage.local_file(self.key, self.sha256)
        return LocalFile(path, self.sha256, storage.local_folder(tokenized_prefix(self.id)))


def job_files(job: Job, session) -> dict[str, StoredFile]:
    """The job's training (and validation) file, by file id."""
    ids = [f for f in (job.training_file, job.validation_file) if f]
    return {
        f.id: StoredFile(f.id, f.storage_key, f.sha256)
        for f in session.scalars(select(FileRecord).where(FileRecord.id.in_(ids)))
    }
