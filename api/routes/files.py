"""/v1/files: upload, list, retrieve, delete and download chat datasets."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import CurrentOwner, FileDep, SessionDep, SettingsDep, after_commit, visible_to
from api.downloads import serve_object
from api.errors import APIError, error_body
from api.idempotency import IdempotencyKey, claim_key, complete, fingerprint
from api.pagination import page, page_after
from api.schemas import ID_PATTERN, FileDeleted, FilePublic, FilesPublic
from api.uploads import receive_upload
from loraq.dataset_format import CHAT, check_file
from loraq.storage import Storage, file_key, open_storage, tokenized_prefix
from models import FileRecord, FileStatus, Job, JobStatus, new_id

router = APIRouter(prefix="/v1/files", tags=["files"])

PURPOSES = ("fine-tune",)
logger = logging.getLogger("loraq.api")


@router.post(
    "",
    response_model=FilePublic,
    openapi_extra={
        "requestBody": {
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", "purpose"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "purpose": {"type": "string", "enum": ["fine-tune"]},
                        },
                    }
                }
            },
            "required": True,
        }
    },
)
async def upload_file(
    request: Request, session: SessionDep, principal: CurrentOwner, settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
):  # fmt: skip
    """Upload a JSONL dataset (multipart: file, purpose=fine-tune), chat or preference (DPO) examples; it is
    checked line by line and its format shown on the file."""
    storage = open_storage(settings)
    file_id = new_id("file")
    upload = await run_in_threadpool(storage.new_upload, file_key(file_id))
    record = None
    try:
        received = await receive_upload(request, upload, settings.max_upload_bytes)
        purpose = received.fields.get("purpose")
        if purpose not in PURPOSES:
            raise APIError(400, f"'purpose' must be one of {', '.join(PURPOSES)} (got {purpose!r}).",
                           param="purpose", code="invalid_purpose")  # fmt: skip
        if idempotency_key:
            claimed = await run_in_threadpool(
                claim_key, session, principal.owner, "files", idempotency_key,
                fingerprint(received.sha256, purpose, received.filename),
            )  # fmt: skip
            if isinstance(claimed, JSONResponse):
                await run_in_threadpool(upload.abort)
                return claimed  # a retry: the first upload's result, and this copy is discarded
            record = claimed
        report = await run_in_threadpool(check_file, upload.local_path, settings.max_examples_per_file)
        await run_in_threadpool(upload.commit)  # only now does the object appear in storage
    except BaseException:
        await run_in_threadpool(upload.abort)
        raise
    file_record = FileRecord(
        id=file_id,
        owner=principal.owner,
        filename=received.filename or "upload.jsonl",
        purpose=purpose,
        bytes=received.size,
        sha256=received.sha256,
        examples=report.examples,
        format=report.format or CHAT,
        storage_key=file_key(file_id),
        status=FileStatus.processed if report.ok else FileStatus.error,
        status_details=None if report.ok else report.summary(),
    )
    return await run_in_threadpool(_save_upload, session, file_record, record)


def _save_upload(session: Session, file_record: FileRecord, idempotency_record) -> FilePublic:
    """Store the checked upload's record (in a worker thread: the ORM blocks)."""
    session.add(file_record)
    session.flush()
    if file_record.status == FileStatus.error:
        # The record is kept (status `error`, visible in GET /v1/files) so the caller can see what was wrong,
        # but the upload itself answers 400 with the line numbers, so no client mistakes it for usable data.
        error = APIError(
            400,
            f"Invalid training data in '{file_record.filename}': {file_record.status_details}",
            param="file",
            code="invalid_file_format",
            extra={"file_id": file_record.id},
        )
        complete(idempotency_record, 400, error_body(400, error.message, error.param, error.code, **error.extra))
        session.commit()
        raise error
    public = FilePublic.of(file_record)
    complete(idempotency_record, 200, public.model_dump(mode="json"))
    return public


@router.get("", response_model=FilesPublic)
def list_files(
    session: SessionDep,
    principal: CurrentOwner,
    purpose: Annotated[str | None, Query(pattern=r"^[a-z-]{1,32}$")] = None,
    after: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=10000)] = 10000,
    order: Literal["asc", "desc"] = "desc",
):
    """List your files, newest first by default."""
    query = select(FileRecord).where(FileRecord.deleted.is_(False), visible_to(principal, FileRecord))
    if purpose:
        query = query.where(FileRecord.purpose == purpose)
    rows, has_more = page_after(session, query, FileRecord, after, limit, descending=order == "desc")
    data = [FilePublic.of(r) for r in rows]
    return page(FilesPublic, data, has_more)


@router.get("/{file_id}", response_model=FilePublic)
def retrieve_file(record: FileDep):
    """One file's record, with its validation status and details."""
    return FilePublic.of(record)


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(record: FileDep, session: SessionDep, settings: SettingsDep):
    """Delete a file; refused while a job that has not finished (a paused one too) still needs it."""
    active = (JobStatus.validating_files, JobStatus.queued, JobStatus.running, JobStatus.paused)
    busy = session.scalars(
        select(Job.id).where(
            Job.status.in_(active), (Job.training_file == record.id) | (Job.validation_file == record.id)
        )
    ).first()
    if busy:
        raise APIError(
            400,
            f"File '{record.id}' is used by job '{busy}', which has not finished.",
            param="file_id",
            code="file_in_use",
        )
    record.deleted = True
    # The bytes go once the deletion is committed: a failed commit leaves the file whole and listed.
    storage, key, file_id = open_storage(settings), record.storage_key, record.id
    after_commit(session, lambda: _remove_stored(storage, key, file_id))
    return FileDeleted(id=record.id)


def _remove_stored(storage: Storage, key: str, file_id: str) -> None:
    """The uploaded bytes and their tokenized copies (written by the validation stage)."""
    try:
        storage.delete_prefix(key)
        storage.delete_prefix(tokenized_prefix(file_id))
    except OSError as exc:  # the record is gone for the user either way; the operator sees what was left
        logger.error("file %s deleted, but its stored bytes could not be removed: %s", file_id, exc)


@router.get("/{file_id}/content", response_class=Response, responses={200: {"content": {"application/jsonl": {}}}})
async def file_content(record: FileDep, request: Request, settings: SettingsDep):
    """The uploaded bytes, as they were received (checked against their sha256 first; Range, If-Range, ETag)."""
    corrupt = APIError(500, "The stored file failed its checksum; the operator has been alerted.", code="file_corrupt")
    storage = open_storage(settings)
    return await serve_object(request, storage, record.storage_key, record.sha256, "application/jsonl", None, corrupt)
