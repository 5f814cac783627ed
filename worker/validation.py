"""The `validating_files` stage: a new job's files tokenized with its base model's tokenizer, before any
GPU is spent on it.

Run by `loraq validator` (a light Celery worker on the validation queue: tokenizers only, no GPU, so a
validation never waits behind a training run). The job goes on to `queued` with its estimated steps and
tokens, or to `failed` with a reason naming the file and the lines; each file's token report is kept on
the file record (GET /v1/files/{id}). A job cancelled meanwhile stays cancelled: every transition is
conditional on the job still being in `validating_files`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy import select

from loraq.base_models import find_model
from loraq.job_spec import Hyperparameters
from loraq.settings import BaseModelEntry, Settings, get_settings
from loraq.storage import Storage
from models import FileRecord, Job, JobStatus
from models.job_state import add_event, fail_validation, find_job, finish_validation
from models.session import session_scope
from training.data_report import describe, file_report, plural, training_estimate
from training.loss_masks import MASK_REMEDY, MaskError
from worker.celery_app import VALIDATE_JOB_TASK, celery_app, send_job
from worker.errors import ValidationFailure
from worker.job_config import job_file_paths

logger = logging.getLogger("loraq.validator")

_tokenizers: dict[str, Any] = {}
_tokenizers_lock = threading.Lock()


def load_tokenizer(entry: BaseModelEntry, settings: Settings):
    """The base model's tokenizer, loaded exactly as training loads it (hub id, local folder, or the built-in
    model's generated folder), cached per process."""
    with _tokenizers_lock:
        if entry.source not in _tokenizers:
            from transformers import AutoTokenizer

            from training.tiny_model import model_source

            source = model_source(entry.source, settings.model_cache_dir)
            _tokenizers[entry.source] = AutoTokenizer.from_pretrained(source, trust_remote_code=entry.trust_remote_code)
        return _tokenizers[entry.source]


@celery_app.task(name=VALIDATE_JOB_TASK)
def validate_job_task(job_id: str) -> str:
    return validate_job(job_id, get_settings())


def validate_job(job_id: str, settings: Settings) -> str:
    """Tokenize the job's files and move it to `queued` or `failed`; returns the outcome."""
    url = settings.resolved_database_url
    with session_scope(url) as session:
        job = find_job(session, job_id)
        if job is None or job.status != JobStatus.validating_files:
            return "skipped"
        files = job_file_paths(job, Storage(settings.resolved_storage_root), session)
        file_ids = dict(_roles(job))
        paths = {role: files[file_id] for role, file_id in file_ids.items()}
        hp = Hyperparameters.model_validate(job.hyperparameters)
        model, queue = job.model, job.queue
    try:
        reports, estimate = _check(settings, model, paths, hp)
    except ValidationFailure as failure:
        return _fail(url, job_id, failure)
    except Exception as exc:  # our own crash still ends the stage, with a reason
        logger.exception("validation of %s crashed", job_id)
        return _fail(url, job_id, ValidationFailure(f"{type(exc).__name__}: {exc}"[:2000]))
    with session_scope(url) as session:
        queued = finish_validation(
            session, job_id, total_steps=estimate["estimated_steps"], estimated_tokens=estimate["estimated_tokens"]
        )
        if not queued:
            return "skipped"
        for role, report in reports.items():
            add_event(session, job_id, describe(report, role), kind="message", data={"file": role, **report})
            _keep_report(session, file_ids[role], model, report)
        train = reports["training"]
        if train["usable_examples"] < estimate["examples_per_step"]:
            add_event(
                session, job_id,
                f"The training file has {plural(train['usable_examples'], 'usable example')}, fewer than one "
                f"optimizer step ({estimate['examples_per_step']}): every step trains on all of them",
                level="warn",
            )  # fmt: skip
        add_event(
            session, job_id,
            f"Files validated: {plural(estimate['estimated_steps'], 'step')} and {estimate['estimated_tokens']} "
            f"tokens to train on ({plural(estimate['examples_per_step'], 'example')} per step, "
            f"{plural(hp.n_epochs, 'epoch')})",
            data=estimate,
        )  # fmt: skip
        add_event(session, job_id, "Job queued")
    send_job(job_id, queue)
    return "queued"


def _check(settings: Settings, model: str, paths: dict, hp: Hyperparameters) -> tuple[dict, dict]:
    entry = find_model(settings, model)
    if entry is None:
        raise ValidationFailure(
            f"Base model '{model}' is no longer offered by this server", code="model_not_found", param="model"
        )
    try:
        tokenizer = load_tokenizer(entry, settings)
    except Exception as exc:
        raise ValidationFailure(
            f"The tokenizer of base model '{model}' could not be loaded: {exc}"[:2000],
            code="model_unavailable",
            param="model",
        ) from None
    reports = {}
    for role, path in paths.items():
        try:
            reports[role] = file_report(path, tokenizer, hp.max_seq_length, hp.train_on_inputs)
        except MaskError as exc:
            raise ValidationFailure(
                f"Cannot train on assistant tokens only with the chat template of '{model}': {role} file, {exc}. "
                + MASK_REMEDY,
                code="invalid_chat_template",
                param=f"{role}_file",
            ) from None
    train = reports["training"]
    needed = settings.min_training_examples
    if train["usable_examples"] < needed:
        skipped = train["unsupervised_examples"]
        raise ValidationFailure(
            f"The training file has {plural(train['usable_examples'], 'usable example')}; at least {needed} "
            f"{'is' if needed == 1 else 'are'} needed. "
            + (f"{describe(train, 'training')}." if skipped["count"] else ""),
            code="invalid_training_file",
            param="training_file",
        )
    if "validation" in reports and reports["validation"]["usable_examples"] == 0:
        raise ValidationFailure(
            f"The validation file has no usable examples. {describe(reports['validation'], 'validation')}.",
            code="invalid_validation_file",
            param="validation_file",
        )
    return reports, training_estimate(train, hp.batch_size, hp.gradient_accumulation_steps, hp.n_epochs)


def _fail(url: str, job_id: str, failure: ValidationFailure) -> str:
    with session_scope(url) as session:
        moved = fail_validation(session, job_id, failure.code, failure.message, failure.param)
    return "failed" if moved else "skipped"


def _keep_report(session, file_id: str, model: str, report: dict) -> None:
    """Record the report on the file, per base model (row-locked where the database can)."""
    record = session.scalars(select(FileRecord).where(FileRecord.id == file_id).with_for_update()).one()
    record.token_reports = {**(record.token_reports or {}), model: report}


def _roles(job: Job) -> list[tuple[str, str]]:
    roles = [("training", job.training_file)]
    if job.validation_file:
        roles.append(("validation", job.validation_file))
    return roles
