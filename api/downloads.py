"""Serving a stored object whose sha256 is recorded (an upload, an adapter archive, a result file): checked
against its digest first, streamed from storage in chunks, with its sha256 as the ETag and one byte range
(`Range`, honoured only when `If-Range` names the current ETag, if sent), so interrupted downloads resume."""

from __future__ import annotations

import logging
import re
from urllib.parse import quote

from fastapi import Request
from fastapi.concurrency import iterate_in_threadpool, run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from api.errors import APIError
from loraq.storage import ChecksumVerifier, Storage

logger = logging.getLogger("loraq.api")
RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")

verifier = ChecksumVerifier()


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """[start, end) of a single `bytes=` range, None to send everything; raises 416 for one beyond the end."""
    match = RANGE.match((header or "").strip())
    if not match or match.groups() == ("", ""):
        return None  # absent, several ranges or unparsable: the whole object (a server may ignore Range)
    first, last = match.groups()
    if first == "":  # the last N bytes
        start, end = max(0, size - int(last)), size
    else:
        start, end = int(first), min(size, int(last) + 1) if last else size
    if start >= size or end <= start:
        raise APIError(416, f"Range not satisfiable: the object has {size} bytes.", param="range",
                       code="range_not_satisfiable", headers={"content-range": f"bytes */{size}"})  # fmt: skip
    return start, end


async def serve_object(
    request: Request, storage: Storage, key: str, sha256: str, media_type: str, filename: str | None, corrupt: APIError
) -> Response:
    etag = f'"{sha256}"'
    if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers={"etag": etag})
    info = await run_in_threadpool(verifier.verify, storage, key, sha256)
    if info is None:
        logger.error("%s does not match its recorded sha256", key)
        raise corrupt
    headers = {"etag": etag, "accept-ranges": "bytes", "x-checksum-sha256": sha256}
    if filename:
        headers["content-disposition"] = f"attachment; filename*=utf-8''{quote(filename)}"
    if_range = request.headers.get("if-range")
    span = _byte_range(request.headers.get("range"), info.size) if if_range in (None, etag) else None
    start, end, status = (*span, 206) if span else (0, info.size, 200)
    if span:
        headers["content-range"] = f"bytes {start}-{end - 1}/{info.size}"
    headers["content-length"] = str(end - start)
    chunks = iterate_in_threadpool(storage.read_range(key, start, end))  # blocking reads off the event loop
    return StreamingResponse(chunks, status_code=status, media_type=media_type, headers=headers)
