"""/v1/fine_tuning/jobs: create, list (with filters), retrieve, cancel, pause, resume; events, checkpoints and the
adapter download."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import func, select

from api.deps import CurrentOwner, JobDep, SessionDep, SettingsDep, after_commit, visible_to
from api.downloads import serve_object
from api.errors import APIError, not_found
from api.event_stream import STREAM_RESPONSE, open_event_stream
from api.idempotency import IdempotencyKey, claim_key, complete, fingerprint
from api.job_filters import parse_job_filters
from api.pagination import page, page_after, unknown_cursor
from api.parent_models import continued_hyperparameters, find_parent
from api.schemas import (
    ID_PATTERN,
    CheckpointPublic,
    CheckpointsPublic,
    EventPublic,
    EventsPublic,
    JobCreate,
    JobPublic,
    JobsPublic,
)
from loraq.base_models import find_model
from loraq.job_spec import METHOD_FORMATS, Hyperparameters, Resources, queue_for_gpus, step_split_error
from loraq.serving import planned_adapter_config, vllm_warnings
from loraq.storage import JobPaths, job_key, open_storage
from models import Checkpoint, FileRecord, FileStatus, Job, JobEvent, JobStatus, job_state, new_id
from worker.celery_app import send_job, send_validation

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
logger = logging.getLogger("loraq.api")

DEFAULT_SEED = 42
Limit = Annotated[int, Query(ge=1, le=100)]
Cursor = Annotated[str | None, Query(pattern=ID_PATTERN)]


def _usable_file(session, principal, file_id: str, param: str, method: str) -> FileRecord:
    record = session.scalars(
        select(FileRecord).where(
            FileRecord.id == file_id, FileRecord.deleted.is_(False), visible_to(principal, FileRecord)
        )
    ).first()
    if record is None:
        raise not_found("file", file_id, param=param)
    if record.purpose != "fine-tune":
        raise APIError(
            400,
            f"File '{file_id}' has purpose '{record.purpose}', not 'fine-tune'.",
            param=param,
            code="invalid_file_purpose",
        )
    if record.status != FileStatus.processed:
        raise APIError(
            400, f"File '{file_id}' failed validation: {record.status_details}", param=param, code="invalid_file_format"
        )
    needed = METHOD_FORMATS[method]
    if record.format != needed:
        raise APIError(
            400,
            f"File '{file_id}' holds {FORMAT_NAMES[record.format]}, but a {method} job trains on "
            f"{FORMAT_NAMES[needed]}.",
            param=param,
            code="invalid_file_format",
        )
    return record


FORMAT_NAMES = {
    "chat": "chat examples (`messages`)",
    "preference": "preference examples (`input`, `preferred_output`, `non_preferred_output`)",
}


def _check_active_jobs(session, owner: str, settings) -> None:
    """Room for one more active job of `owner` (paused jobs do not count), else the 429 a create gets."""
    active = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.owner == owner, Job.status.in_((JobStatus.validating_files, JobStatus.queued, JobStatus.running)))
    )
    if active >= settings.max_active_jobs_per_owner:
        raise APIError(
            429,
            f"You have {active} queued or running jobs, the most allowed "
            f"({settings.max_active_jobs_per_owner}); wait for some to finish, or pause or cancel them.",
            code="too_many_active_jobs",
            headers={"Retry-After": "60"},
        )


def _check_resources(resources: Resources, hyperparameters: Hyperparameters, settings) -> None:
    """A job the fleet can run: its GPU count is one its workers take (LORAQ_GPUS_PER_JOB), and each optimizer
    step's examples split evenly over those GPUs."""
    offered = sorted(settings.job_gpu_counts)
    if resources.gpus not in offered:
        raise APIError(
            400,
            f"No worker of this server trains a job on {resources.gpus} GPUs; it offers "
            f"{', '.join(map(str, offered))} GPU{'s' if offered != [1] else ''} per job.",
            param="resources.gpus",
            code="unsupported_resources",
        )
    error = step_split_error(hyperparameters, resources.gpus)
    if error:
        raise APIError(400, f"{error[0].upper()}{error[1:]}.", param="resources.gpus", code="unsupported_resources")


@router.post("", response_model=JobPublic)
def create_job(
    body: JobCreate, session: SessionDep, principal: CurrentOwner, settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
):  # fmt: skip
    """Create a LoRA SFT or DPO job (`method.type`). It starts in `validating_files` (its files are tokenized
    with the base model's tokenizer by a validator) and is queued from there, or fails with the reason. `model`
    may be a fine-tuned model of yours or one of its checkpoints: the job continues training from that adapter."""
    record = None
    if idempotency_key:
        claimed = claim_key(session, principal.owner, "jobs", idempotency_key, fingerprint(body.model_dump()))
        if isinstance(claimed, JSONResponse):
            return claimed
        record = claimed
    _check_active_jobs(session, principal.owner, settings)
    hyperparameters = body.resolved_hyperparameters()
    parent = find_parent(session, principal, body.model)
    if parent is not None:  # continued training: the parent's base model, adapter and LoRA shape
        hyperparameters = continued_hyperparameters(parent, hyperparameters, body.hyperparameters_param)
    base_model = parent.base_model if parent else body.model
    entry = find_model(settings, base_model)
    if entry is None:
        raise APIError(
            400,
            f"Model '{base_model}' is not offered by this server"
            + (f" (it is the base model of '{body.model}')" if parent else "")
            + "; see GET /v1/models.",
            param="model",
            code="model_not_found",
        )
    method = body.method_type
    _usable_file(session, principal, body.training_file, "training_file", method)
    if body.validation_file:
        _usable_file(session, principal, body.validation_file, "validation_file", method)
    resources = body.resources or Resources()
    _check_resources(resources, hyperparameters, settings)
    job = Job(
        id=new_id("ftjob"),
        owner=principal.owner,
        model=base_model,
        parent=parent.record if parent else None,
        serving_warnings=vllm_warnings(planned_adapter_config(hyperparameters)),
        training_file=body.training_file,
        validation_file=body.validation_file,
        method=method,
        hyperparameters=hyperparameters.model_dump(mode="json"),
        suffix=body.suffix,
        seed=DEFAULT_SEED if body.seed is None else body.seed,
        user_metadata=body.metadata,
        resources=resources.model_dump(mode="json"),
        queue=queue_for_gpus(entry.queue or settings.queue, resources.gpus),
        max_runtime_seconds=body.max_runtime_seconds,
    )
    job_state.create_job(session, job)
    public = JobPublic.of(job)
    complete(record, 200, public.model_dump(mode="json"))
    after_commit(session, lambda: send_validation(job.id, settings.validation_queue))
    return public


StatusFilter = Annotated[
    str | None, Query(description="Only jobs in this status (several separated by commas, e.g. queued,running)")
]


@router.get("", response_model=JobsPublic)
async def list_jobs(
    request: Request, principal: CurrentOwner, after: Cursor = None, limit: Limit = 20, status: StatusFilter = None
):
    """Your jobs, newest first. Filters: `status`, and `metadata[key]=value` (several must all match; what the
    openai SDK's `list(metadata={...})` sends) or `metadata=null` (jobs created without metadata)."""
    filters = parse_job_filters(request.query_params)
    body = await request.app.state.job_reader.jobs(principal, after, limit, filters)
    return Response(body, media_type="application/json")


@router.get("/{job_id}", response_model=JobPublic)
async def retrieve_job(request: Request, job_id: Annotated[str, Path(pattern=ID_PATTERN)], principal: CurrentOwner):
    """One job: status, progress, the fine-tuned model name and any error."""
    body = await request.app.state.job_reader.job(principal, job_id)
    return Response(body, media_type="application/json")


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job: JobDep, session: SessionDep):
    """Cancel a queued job at once, or a running one at its next training step (its checkpoints stay)."""
    if job.status == JobStatus.cancelled:
        return JobPublic.of(job)
    if job.status.finished:
        raise _job_finished(job, "cancelled")
    if not job_state.cancel_job(session, job.id, was=job.status):
        # It moved on meanwhile (started or finished): decide again from where it is now.
        session.refresh(job)
        return cancel_job(job, session)
    session.flush()
    session.refresh(job)
    return JobPublic.of(job)


def _job_finished(job: Job, action: str) -> APIError:
    # 400, not 409: the OpenAI SDK retries 409s.
    return APIError(
        400,
        f"Job '{job.id}' has already finished with status '{job.status.value}'; it cannot be {action}.",
        param="job_id",
        code="job_finished",
    )


@router.post("/{job_id}/pause", response_model=JobPublic)
def pause_job(job: JobDep, session: SessionDep, principal: CurrentOwner):
    """Pause a job: a queued one at once; a running one checkpoints at its next step, frees its worker, then
    becomes `paused`; one whose files are being validated pauses once they are (`pause_requested` meanwhile)."""
    if job.status == JobStatus.paused or job.pause_requested:
        return JobPublic.of(job)
    if job.status.finished:
        raise _job_finished(job, "paused")
    if not job_state.pause_job(session, job.id, was=job.status, by=principal):
        # It moved on meanwhile (queued, started or finished): decide again from where it is now.
        session.refresh(job)
        return pause_job(job, session, principal)
    session.flush()
    session.refresh(job)
    return JobPublic.of(job)


@router.post("/{job_id}/resume", response_model=JobPublic)
def resume_job(job: JobDep, session: SessionDep, principal: CurrentOwner, settings: SettingsDep):
    """Put a paused job back in the queue; it continues from its newest checkpoint, as if never paused."""
    if job.status != JobStatus.paused:
        pausing = " (a pause is pending: it pauses first, then it can be resumed)" if job.pause_requested else ""
        raise APIError(
            400,
            f"Job '{job.id}' is not paused: its status is '{job.status.value}'{pausing}.",
            param="job_id",
            code="job_not_paused",
        )
    _check_active_jobs(session, job.owner, settings)
    if not job_state.resume_job(session, job.id, by=principal):
        session.refresh(job)  # cancelled or resumed meanwhile
        return resume_job(job, session, principal, settings)
    session.flush()
    session.refresh(job)
    after_commit(session, lambda: send_job(job.id, job.queue))
    return JobPublic.of(job)


@router.get("/{job_id}/events", response_model=EventsPublic, responses=STREAM_RESPONSE)
async def list_events(
    request: Request, job: JobDep, session: SessionDep, principal: CurrentOwner,
    after: Cursor = None, limit: Limit = 20,
    stream: Annotated[bool, Query(description="Server-Sent Events: the events after the cursor, then live")] = False,
    last_event_id: Annotated[str | None, Header(pattern=ID_PATTERN, description="Resume a stream after it")] = None,
):  # fmt: skip
    """Lifecycle and metrics events, newest first; with `stream=true`, oldest first and then as they are
    written, as Server-Sent Events that end (`event: end`, the job) once the job has finished."""
    if stream:
        cursor = last_event_id or after
        after_seq = await run_in_threadpool(_event_seq, session, job.id, cursor) if cursor else 0
        return await open_event_stream(request, job.id, principal.owner, after_seq)
    query = select(JobEvent).where(JobEvent.job_id == job.id)
    rows, has_more = await run_in_threadpool(page_after, session, query, JobEvent, after, limit)
    return EventsPublic(data=[EventPublic.of(e) for e in rows], has_more=has_more)


def _event_seq(session, job_id: str, event_id: str) -> int:
    """Where a stream resumes: the seq of one of the job's events (400 for an id that is not one)."""
    seq = session.scalar(select(JobEvent.seq).where(JobEvent.id == event_id, JobEvent.job_id == job_id))
    if seq is None:
        raise unknown_cursor(event_id)
    return seq


@router.get("/{job_id}/checkpoints", response_model=CheckpointsPublic)
def list_checkpoints(job: JobDep, session: SessionDep, after: Cursor = None, limit: Limit = 10):
    """Checkpoints with their step number and metrics, newest first."""
    query = select(Checkpoint).where(Checkpoint.job_id == job.id)
    rows, has_more = page_after(session, query, Checkpoint, after, limit)
    data = [CheckpointPublic.of(c, job) for c in rows]
    return page(CheckpointsPublic, data, has_more)


DOWNLOAD = {"content": {"application/gzip": {}}, "description": "The archive (or the requested range)"}
NOT_MODIFIED = {"description": "Not modified"}


@router.get("/{job_id}/adapter", response_class=Response, responses={200: DOWNLOAD, 304: NOT_MODIFIED})
async def download_adapter(job: JobDep, request: Request, settings: SettingsDep):
    """The trained adapter folder as one .tar.gz (supports Range, If-Range and ETag)."""
    if job.status != JobStatus.succeeded or not job.adapter_sha256:
        raise APIError(
            400,
            f"Job '{job.id}' has no adapter to download: its status is '{job.status.value}'.",
            param="job_id",
            code="adapter_not_ready",
        )
    key = job_key(job.id, JobPaths.relative().adapter_archive)
    return await _serve_archive(request, settings, key, job.adapter_sha256, f"{job.id}-adapter.tar.gz")


@router.get(
    "/{job_id}/checkpoints/{checkpoint_id}/adapter",
    response_class=Response,
    responses={200: DOWNLOAD, 304: NOT_MODIFIED},
)
async def download_checkpoint_adapter(
    job: JobDep,
    checkpoint_id: Annotated[str, Path(pattern=ID_PATTERN)],
    session: SessionDep,
    request: Request,
    settings: SettingsDep,
):
    """One checkpoint's adapter (weights, config, tokenizer; no optimizer state) as a .tar.gz, like the
    final adapter: Range, If-Range and ETag. Any job status: a cancelled or failed job's checkpoints count."""
    query = select(Checkpoint).where(Checkpoint.id == checkpoint_id, Checkpoint.job_id == job.id)
    checkpoint = await run_in_threadpool(lambda: session.scalars(query).one_or_none())
    if checkpoint is None:
        raise not_found("checkpoint", checkpoint_id, param="checkpoint_id")
    if not checkpoint.adapter_sha256:
        raise APIError(
            400,
            f"Checkpoint '{checkpoint.id}' has no downloadable adapter (it could not be archived).",
            param="checkpoint_id",
            code="adapter_not_ready",
        )
    key = job_key(job.id, JobPaths.relative().checkpoint_archive(checkpoint.step_number))
    filename = f"{job.id}-step-{checkpoint.step_number}-adapter.tar.gz"
    return await _serve_archive(request, settings, key, checkpoint.adapter_sha256, filename)


async def _serve_archive(request: Request, settings, key: str, sha256: str, filename: str) -> Response:
    """An archive whose sha256 is recorded: 304 for a matching ETag, 500 if the stored bytes do not match."""
    corrupt = APIError(
        500, "The stored adapter failed its checksum; the operator has been alerted.", code="adapter_corrupt"
    )
    return await serve_object(request, open_storage(settings), key, sha256, "application/gzip", filename, corrupt)
