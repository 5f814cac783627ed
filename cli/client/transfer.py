"""Uploads with a progress bar, and adapter downloads that resume a partial file and check its sha256."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, BinaryIO

from rich.progress import Progress, TaskID

from cli.client.connection import CommandError, Connection
from cli.client.output import err, transfer_progress

CHUNK = 1024 * 1024


class ProgressReader:
    """A file that moves a progress bar as httpx reads it (to stream it as the multipart body)."""

    def __init__(self, handle: BinaryIO, progress: Progress, task: TaskID):
        self.handle, self.progress, self.task = handle, progress, task

    def read(self, size: int = -1) -> bytes:
        chunk = self.handle.read(size)
        self.progress.advance(self.task, len(chunk))
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self.handle.seek(offset, whence)
        self.progress.update(self.task, completed=position)
        return position

    def tell(self) -> int:
        return self.handle.tell()

    def fileno(self) -> int:  # lets httpx size the body (Content-Length) without reading it
        return self.handle.fileno()


def upload(connection: Connection, path: Path, purpose: str) -> dict[str, Any]:
    """POST /files with a progress bar of the bytes sent."""
    if not path.is_file():
        raise CommandError(f"no such file: {path}")
    with transfer_progress() as progress, path.open("rb") as handle:
        task = progress.add_task(f"upload {path.name}", total=path.stat().st_size)
        files = {"file": (path.name, ProgressReader(handle, progress, task))}
        return connection.post("files", files=files, data={"purpose": purpose})


# ---------------------------------------------------------------- downloads


def _sha256(path: Path, limit: int | None = None) -> hashlib._Hash:
    digest, left = hashlib.sha256(), limit
    with path.open("rb") as handle:
        while left is None or left > 0:
            chunk = handle.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                break
            digest.update(chunk)
            left = None if left is None else left - len(chunk)
    return digest


def _archive_facts(connection: Connection, url: str) -> tuple[str, int]:
    """The archive's ETag (its sha256, quoted) and size, from its first byte."""
    response = connection.request("GET", url, headers={"Range": "bytes=0-0"})
    match = re.match(r"bytes \d+-\d+/(\d+)", response.headers.get("content-range", ""))
    size = int(match.group(1)) if match else len(response.content)
    return response.headers["etag"], size


def download(connection: Connection, url: str, output: Path, fresh: bool = False) -> str:
    """Fetch `url` into `output`; a shorter file already there is resumed (Range, If-Range on the ETag).
    Returns the sha256, checked against the ETag; a resumed file that does not match is fetched again whole."""
    offset = output.stat().st_size if output.is_file() and not fresh else 0
    headers = {}
    if offset:
        etag, size = _archive_facts(connection, url)
        if offset >= size:
            if offset == size and _sha256(output).hexdigest() == etag.strip('"'):
                err.print(f"{output} is already complete")
                return etag.strip('"')
            return download(connection, url, output, fresh=True)
        headers = {"Range": f"bytes={offset}-", "If-Range": etag}
    with connection.stream("GET", url, headers=headers) as response, transfer_progress() as progress:
        etag = response.headers.get("etag", "").strip('"')
        start = offset if response.status_code == 206 else 0  # 200: the archive changed, so all of it came
        digest = _sha256(output, start) if start else hashlib.sha256()
        total = start + int(response.headers.get("content-length", 0))
        task = progress.add_task(f"download {output.name}", total=total, completed=start)
        if start:
            err.print(f"resuming {output} at byte {start:,} of {total:,}")
        with output.open("ab" if start else "wb") as handle:
            for chunk in response.iter_bytes(CHUNK):
                handle.write(chunk)
                digest.update(chunk)
                progress.update(task, advance=len(chunk))
    if digest.hexdigest() == etag:
        return etag
    if start and not fresh:
        err.print(f"{output}: the partial file was not this archive's beginning; downloading it again whole")
        return download(connection, url, output, fresh=True)
    raise CommandError(f"{output} does not match the server's sha256 ({etag}); run the command again")
