"""Streaming multipart upload: the file part goes straight into a storage upload (a staging file, or an S3
multipart upload), hashed and counted as it arrives, so an upload never sits whole in memory and an
oversized one stops at the cap.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from api.errors import APIError
from loraq.storage import Upload

MAX_FIELD_BYTES = 4096
MULTIPART_OVERHEAD = 64 * 1024


@dataclass
class ReceivedUpload:
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    size: int = 0
    sha256: str = ""


class _PartState:
    def __init__(self, upload: Upload, max_bytes: int):
        self.upload, self.max_bytes = upload, max_bytes
        self.result = ReceivedUpload()
        self.digest = hashlib.sha256()
        self.headers: dict[bytes, bytes] = {}
        self.header_field = b""
        self.header_value = b""
        self.name: str | None = None
        self.is_file = False
        self.value = bytearray()
        self.files_seen = 0

    # python-multipart callbacks -------------------------------------------------------------
    def on_part_begin(self):
        self.headers, self.name, self.is_file, self.value = {}, None, False, bytearray()

    def on_header_field(self, data, start, end):
        self.header_field += data[start:end]

    def on_header_value(self, data, start, end):
        self.header_value += data[start:end]

    def on_header_end(self):
        self.headers[self.header_field.lower()] = self.header_value
        self.header_field, self.header_value = b"", b""

    def on_headers_finished(self):
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        self.is_file = self.name == "file" and filename is not None
        if filename is not None and self.is_file:
            self.files_seen += 1
            if self.files_seen > 1:
                raise APIError(400, "Send exactly one 'file' part.", param="file", code="invalid_upload")
            # The client's file name is kept as a label only; it never becomes a path.
            name = filename.decode("utf-8", "replace").replace("\\", "/").rsplit("/", 1)[-1]
            self.result.filename = "".join(c for c in name if c.isprintable())[:255] or "upload.jsonl"

    def on_part_data(self, data, start, end):
        chunk = data[start:end]
        if self.is_file:
            self.result.size += len(chunk)
            if self.result.size > self.max_bytes:
                raise APIError(
                    413, f"File is larger than the {self.max_bytes}-byte limit.", param="file", code="file_too_large"
                )
            self.digest.update(chunk)
            self.upload.write(chunk)
        else:
            self.value += chunk
            if len(self.value) > MAX_FIELD_BYTES:
                raise APIError(400, f"Form field '{self.name}' is too long.", param=self.name, code="invalid_upload")

    def on_part_end(self):
        if self.is_file:
            self.upload.close()
        elif self.name:
            self.result.fields[self.name] = self.value.decode("utf-8", "replace")


async def receive_upload(request: Request, upload: Upload, max_bytes: int) -> ReceivedUpload:
    """Parse a multipart/form-data body into `upload` (the file part) and small text fields."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise APIError(
            400,
            "Upload the file as multipart/form-data with fields 'file' and 'purpose'.",
            param="file",
            code="invalid_upload",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD:
        raise APIError(413, f"File is larger than the {max_bytes}-byte limit.", param="file", code="file_too_large")
    state = _PartState(upload, max_bytes)
    callbacks: Any = {
        name: getattr(state, name)
        for name in (
            "on_part_begin",
            "on_header_field",
            "on_header_value",
            "on_header_end",
            "on_headers_finished",
            "on_part_data",
            "on_part_end",
        )
    }
    parser = MultipartParser(boundary, callbacks)
    try:
        async for chunk in request.stream():
            # Hashing and storage writes happen in the callbacks: keep them off the event loop.
            await run_in_threadpool(parser.write, chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise APIError(400, f"Malformed multipart body: {exc}", param="file", code="invalid_upload") from None
    if state.result.filename is None:
        raise APIError(400, "Missing the 'file' part of the upload.", param="file", code="invalid_upload")
    state.result.sha256 = state.digest.hexdigest()
    return state.result
