"""/v1/files: upload, list, retrieve, delete and download chat datasets."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import CurrentOwner, FileDep, SessionDep, SettingsDep, after_commit, visible_to
from api.errors import APIError, error_body
from api.idempotency import IdempotencyKey, claim_key, complete, fingerprint
from api.pagination import page_after
from api.schemas import ID_PATTERN, FileDeleted, FilePublic, FilesPublic
from api.uploads import receive_upload
from loraq.dataset_format import check_file
from loraq.storage import ChecksumVerifier, Storage, fsync_rename
from models import FileRecord, FileStatus, Job, JobStatus, new_id

router = APIRouter(prefix="/v1/files", tags=["files"])

PURPOSES = ("fine-tune",)


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
    """Upload a chat JSONL dataset (multipart: file, purpose=fine-tune); it is checked line by line."""
    storage = Storage(settings.resolved_storage_root)
    staging = storage.staging_file("files")
    record = None
    try:
        upload = await receive_upload(request, staging, settings.max_upload_bytes)
        purpose = upload.fields.get("purpose")
        if purpose not in PURPOSES:
            raise APIError(400, f"'purpose' must be one of {', '.join(PURPOSES)} (got {purpose!r}).",
                           param="purpose", code="invalid_purpose")  # fmt: skip
        if idempotency_key:
            claimed = await run_in_threadpool(
                claim_key, session, principal.owner, "files", idempotency_key,
                fingerprint(upload.sha256, purpose, upload.filename),
            )  # fmt: skip
            if isinstance(claimed, JSONResponse):
                return claimed  # a retry: the first upload's result, and this copy is discarded
            record = claimed
        report = await run_in_threadpool(check_file, staging, settings.max_examples_per_file)
        file_id = new_id("file")
        final = storage.file_path(file_id)
        await run_in_threadpool(fsync_rename, staging, final)
    finally:
        staging.unlink(missing_ok=True)
    file_record = FileRecord(
        id=file_id,
        owner=principal.owner,
        filename=upload.filename or "upload.jsonl",
        purpose=purpose,
        bytes=upload.size,
        sha256=upload.sha256,
        examples=report.examples,
        storage_key=storage.relative(final),
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
    return FilesPublic(
        data=data, has_more=has_more, first_id=data[0].id if data else None, last_id=data[-1].id if data else None
    )


@router.get("/{file_id}", response_model=FilePublic)
def retrieve_file(record: FileDep):
    """One file's record, with its validation status and details."""
    return FilePublic.of(record)


@router.delete("/{file_id}", response_model=FileDeleted)
def delete_file(record: FileDep, session: SessionDep, settings: SettingsDep):
    """Delete a file; refused while a queued or running job still needs it."""
    active = (JobStatus.validating_files, JobStatus.queued, JobStatus.running)
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
    storage = Storage(settings.resolved_storage_root)
    stored, tokenized = storage.resolve(record.storage_key), storage.tokenized_dir(record.id)
    after_commit(session, lambda: _remove_stored(stored, tokenized))
    return FileDeleted(id=record.id)


def _remove_stored(stored: Path, tokenized: Path) -> None:
    """The uploaded bytes and their tokenized copies (written by the validation stage)."""
    stored.unlink(missing_ok=True)
    shutil.rmtree(tokenized, ignore_errors=True)


content_verifier = ChecksumVerifier()


@router.get("/{file_id}/content", response_class=FileResponse)
async def file_content(record: FileDep, settings: SettingsDep):
    """The uploaded bytes, as they were received (checked against their sha256 first)."""
    path = Storage(settings.resolved_storage_root).resolve(record.storage_key)
    if not await run_in_threadpool(content_verifier.verify, path, record.sha256):
        raise APIError(500, "The stored file failed its checksum; the operator has been alerted.", code="file_corrupt")
    return FileResponse(path, media_type="application/jsonl", headers={"etag": f'"{record.sha256}"'})
