"""The `validating_files` stage: a new job's files tokenized with its base model's tokenizer, and its
`target_modules` checked against the base model's module tree, before any GPU is spent on it.

Run by `loraq validator` (a light Celery worker on the validation queue: tokenizers and a weightless model
tree only, no GPU, so a validation never waits behind a training run). The validator claims the job under
a lease (worker.validation_lease: renewed by a heartbeat thread, which also reports progress through a
large file), so a job is never checked by two validators at once and a validator that dies mid-file is
replaced once its lease expires. The job goes on to `queued` with its estimated steps and tokens (`paused`
instead if a pause was asked meanwhile: validation finishes first), or to `failed` with a reason naming the
file and the lines; each file's token report is kept on the file record
(GET /v1/files/{id}). The same pass writes the rows training will train on, tokenized, to the file's folder
in storage (training.tokenized; with S3, a copy stays cached on each machine), which the training program
memory-maps; a later job on the same file, model and settings finds them there and is not tokenized
again. A large file is tokenized by
`LORAQ_VALIDATOR_PROCESSES` processes (training.dataset). A job cancelled meanwhile stays cancelled
(every outcome is conditional on the job still being in `validating_files` under our lease) and the
validation stops within seconds; a validator asked to stop hands the job back, to be validated again.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from celery.signals import worker_shutting_down
from sqlalchemy import select

from loraq.base_models import find_model
from loraq.dataset_format import CHAT
from loraq.job_spec import METHOD_FORMATS, Hyperparameters, hyperparameters_class
from loraq.settings import BaseModelEntry, Settings, get_settings
from loraq.storage import Storage, open_storage, tokenized_prefix
from models import FileRecord, Job, JobStatus
from models.job_state import (
    add_event,
    claim_validation,
    fail_validation,
    finish_validation,
    release_validation,
)
from models.session import session_scope
from training.data_report import describe, plural, training_estimate
from training.loss_masks import MASK_REMEDY, MaskError
from training.tokenized import tokenize_file
from worker.celery_app import VALIDATE_JOB_TASK, celery_app, send_job, send_validation
from worker.errors import ValidationFailure
from worker.job_config import StoredFile, job_files
from worker.supervisor import worker_identity
from worker.validation_lease import STOPPING, ValidationLease, ValidationStopped

logger = logging.getLogger("loraq.validator")

_tokenizers: dict[str, Any] = {}
_module_trees: dict[tuple[str, bool], Any] = {}
_models_lock = threading.Lock()


def _model_path(entry: BaseModelEntry, settings: Settings) -> str:
    from training.tiny_model import model_source

    return model_source(entry.source, settings.model_cache_dir)


def load_tokenizer(entry: BaseModelEntry, settings: Settings):
    """The base model's tokenizer, loaded exactly as training loads it (hub id, local folder, or the built-in
    model's generated folder), cached per process."""
    with _models_lock:
        if entry.source not in _tokenizers:
            from transformers import AutoTokenizer

            source = _model_path(entry, settings)
            _tokenizers[entry.source] = AutoTokenizer.from_pretrained(source, trust_remote_code=entry.trust_remote_code)
        return _tokenizers[entry.source]


def load_module_tree(entry: BaseModelEntry, settings: Settings):
    """The base model's module names (training.target_modules: from its config, built on the meta device),
    cached per process."""
    key = (entry.source, entry.trust_remote_code)
    with _models_lock:
        if key not in _module_trees:
            from training.target_modules import module_tree

            _module_trees[key] = module_tree(_model_path(entry, settings), entry.trust_remote_code)
        return _module_trees[key]


@celery_app.task(name=VALIDATE_JOB_TASK, bind=True)
def validate_job_task(self, job_id: str) -> str:
    return validate_job(job_id, get_settings(), node=self.request.hostname)


@worker_shutting_down.connect
def _stop_validating(**_kwargs) -> None:
    # A warm shutdown waits for running tasks: the validations in progress stop at their next example.
    STOPPING.set()


def validator_identity(node: str | None = None) -> str:
    """`<celery node>:<pid>/<thread>`: which validator (one of a process's threads) holds a job's lease."""
    return f"{worker_identity(node)}/{threading.current_thread().name}"


def validate_job(job_id: str, settings: Settings, node: str | None = None) -> str:
    """Check the job's files and settings and move it to `queued` (or `paused`) or `failed`; returns the
    outcome."""
    if STOPPING.is_set():  # reached a validator that is shutting down: pass it on untouched
        send_validation(job_id, settings.validation_queue)
        return "passed on"
    url = settings.resolved_database_url
    validator = validator_identity(node)
    with session_scope(url) as session:
        job = claim_validation(session, job_id, validator, settings.lease_seconds)
        if job is None:  # another validator holds it (a second delivery), or it was cancelled or moved on
            return "skipped"
        claimed = {"validator": validator, "pid": os.getpid()}
        add_event(session, job_id, f"Validator {validator} is checking the files", data=claimed)
        files = job_files(job, session)
        file_ids = dict(_roles(job))
        stored = {role: files[file_id] for role, file_id in file_ids.items()}
        hp = hyperparameters_class(job.method).model_validate(job.hyperparameters)
        model, queue, file_format = job.model, job.queue, METHOD_FORMATS[job.method]
    try:
        with ValidationLease(settings, job_id, validator) as lease:
            reports, reused, estimate = _check(settings, model, stored, hp, lease, file_format)
    except ValidationStopped as stopped:
        return _stopped(settings, job_id, validator, stopped.reason)
    except ValidationFailure as failure:
        return _fail(url, job_id, validator, failure)
    except Exception as exc:  # our own crash still ends the stage, with a reason
        logger.exception("validation of %s crashed", job_id)
        return _fail(url, job_id, validator, ValidationFailure(f"{type(exc).__name__}: {exc}"[:2000]))
    with session_scope(url) as session:
        status = finish_validation(
            session, job_id, validator,
            total_steps=estimate["estimated_steps"], estimated_tokens=estimate["estimated_tokens"],
        )  # fmt: skip
        if status is None:
            return "skipped"
        for role, report in reports.items():
            if role in reused:
                add_event(
                    session, job_id,
                    f"Reusing the {role} file's tokenized rows from an earlier validation (the same file, "
                    "tokenizer and settings)", data={"file": role, "tokenized": reused[role]},
                )  # fmt: skip
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
        length = f"max_steps {hp.max_steps}" if hp.max_steps else plural(hp.n_epochs, "epoch")
        add_event(
            session, job_id,
            f"Files validated: {plural(estimate['estimated_steps'], 'step')} and {estimate['estimated_tokens']} "
            f"tokens to train on ({plural(estimate['examples_per_step'], 'example')} per step, {length})",
            data=estimate,
        )  # fmt: skip
        if status == JobStatus.paused:
            add_event(session, job_id, "Job paused, as requested while its files were validated: resume it to queue it")
            return "paused"
        add_event(session, job_id, "Job queued")
    send_job(job_id, queue)
    return "queued"


def _stopped(settings: Settings, job_id: str, validator: str, reason: str) -> str:
    """Nothing more for a job no longer ours; a validator stopping hands its job back and sends it again."""
    logger.info("job %s: validation stopped (%s)", job_id, reason)
    if reason != "stopping":
        return "cancelled"
    message = "Validation interrupted (validator stopping); it will be validated again"
    with session_scope(settings.resolved_database_url) as session:
        if not release_validation(session, job_id, validator, message):
            return "cancelled"
    try:
        send_validation(job_id, settings.validation_queue)
    except Exception:  # the broker is down too: the reconciler sends it again
        logger.warning("job %s: handed back, but the broker refused its message", job_id)
    return "handed back"


def _check(
    settings: Settings,
    model: str,
    files: dict[str, StoredFile],
    hp: Hyperparameters,
    lease: ValidationLease,
    file_format: str = CHAT,
) -> tuple[dict, dict, dict]:
    """Each file's report (its rows tokenized into its tokenized folder in the same pass, or found there from
    an earlier validation: `reused`, by role) and the run's estimate; raises ValidationFailure. `file_format`:
    the files' format (chat, or preference for a DPO job)."""
    entry = find_model(settings, model)
    if entry is None:
        raise ValidationFailure(
            f"Base model '{model}' is no longer offered by this server", code="model_not_found", param="model"
        )
    _check_target_modules(settings, entry, model, hp.target_modules)
    try:
        tokenizer = load_tokenizer(entry, settings)
    except Exception as exc:
        raise ValidationFailure(
            f"The tokenizer of base model '{model}' could not be loaded: {exc}"[:2000],
            code="model_unavailable",
            param="model",
        ) from None
    reports, reused = {}, {}
    storage = open_storage(settings)
    for role, stored in files.items():
        try:
            file = stored.fetch(storage)
            progress = lease.reading(role, file.path)
            found = tokenize_file(
                file.path, file.sha256, tokenizer, file.tokenized_dir, hp.max_seq_length, hp.train_on_inputs,
                progress, settings.resolved_validator_processes, file_format,
            )  # fmt: skip
            if not found.reused:
                _publish_tokenized(storage, stored.id, found.path)
        except MaskError as exc:
            raise ValidationFailure(
                f"Cannot train on assistant tokens only with the chat template of '{model}': {role} file, {exc}. "
                + MASK_REMEDY,
                code="invalid_chat_template",
                param=f"{role}_file",
            ) from None
        except OSError as exc:  # the file unreadable, or no room for its tokenized rows
            raise ValidationFailure(
                f"Reading the {role} file or writing its tokenized rows on shared storage failed: {exc}. The "
                "operator must free or repair the storage, then resubmit.",
                code="storage_error",
            ) from None
        reports[role] = found.report
        if found.reused:
            reused[role] = found.path.name
    train = reports["training"]
    needed = settings.min_training_examples
    if train["usable_examples"] < needed:
        left_out = train.get("unsupervised_examples") or train["dropped_examples"]  # chat, or preference, rows
        raise ValidationFailure(
            f"The training file has {plural(train['usable_examples'], 'usable example')}; at least {needed} "
            f"{'is' if needed == 1 else 'are'} needed. "
            + (f"{describe(train, 'training')}." if left_out["count"] else ""),
            code="invalid_training_file",
            param="training_file",
        )
    if "validation" in reports and reports["validation"]["usable_examples"] == 0:
        raise ValidationFailure(
            f"The validation file has no usable examples. {describe(reports['validation'], 'validation')}.",
            code="invalid_validation_file",
            param="validation_file",
        )
    estimate = training_estimate(train, hp.batch_size, hp.gradient_accumulation_steps, hp.n_epochs, hp.max_steps)
    return reports, reused, estimate


def _publish_tokenized(storage: Storage, file_id: str, rows: Path) -> None:
    """The new tokenized rows into storage, the report first: rows in storage always have their report."""
    report = rows.with_suffix(".json")
    storage.put_file(tokenized_prefix(file_id) + report.name, report)
    storage.put_file(tokenized_prefix(file_id) + rows.name, rows)


def _check_target_modules(settings: Settings, entry: BaseModelEntry, model: str, targets: list[str]) -> None:
    """Every entry of `target_modules` names a layer LoRA can adapt on this model, else the job fails naming
    each bad entry and listing the good names."""
    from training.target_modules import target_module_problems

    try:
        tree = load_module_tree(entry, settings)
    except Exception as exc:
        raise ValidationFailure(
            f"The configuration of base model '{model}' could not be loaded: {exc}"[:2000],
            code="model_unavailable",
            param="model",
        ) from None
    problems = target_module_problems(targets, tree)
    if problems:
        raise ValidationFailure(
            f"target_modules for base model '{model}': {'; '.join(problems)}. The Linear layers LoRA can adapt "
            f"in this model: {', '.join(tree.linear_leaf_names)}.",
            code="invalid_hyperparameters",
            param="hyperparameters.target_modules",
        )


def _fail(url: str, job_id: str, validator: str, failure: ValidationFailure) -> str:
    with session_scope(url) as session:
        moved = fail_validation(session, job_id, validator, failure.code, failure.message, failure.param)
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
