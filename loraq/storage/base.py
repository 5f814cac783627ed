"""The storage interface every part of loraq uses: objects named by keys ("files/<id>.jsonl",
"tokenized/<file id>/<name>", "jobs/<id>/checkpoints/checkpoint-N/<file>"), a local folder or an S3 bucket
behind them (loraq.storage.local, loraq.storage.s3). Nothing outside this package knows which.

An object becomes visible whole or not at all (a renamed file, a completed S3 upload). Work that needs
files on disk (validation, tokenizing, training) asks for local places: `local_file` and `local_folder`
(the object itself on a local backend, a cached copy on S3) and `job_workspace` (where a job trains: the
shared folder itself on a local backend, local scratch on S3), and publishes with `put_file`, which on a
local backend is nothing when the file already is the object.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from loraq.storage.local_files import JobPaths


class StorageError(OSError):
    """Storage could not be read or written (unreachable, refused credentials, no bucket, full): an OSError,
    so every `except OSError` that reports `storage_error` catches it with its clear message."""


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    version: str  # changes whenever the object's bytes may have (a file's mtime, an S3 ETag)


class Upload(ABC):
    """A new object written piece by piece (an API upload); invisible until `commit`, gone after `abort`."""

    local_path: Path  # the bytes received so far, on local disk (the API validates the file there)

    @abstractmethod
    def write(self, chunk: bytes) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """The last byte was written: `local_path` is whole."""

    @abstractmethod
    def commit(self) -> None: ...

    @abstractmethod
    def abort(self) -> None: ...


def file_key(file_id: str) -> str:
    return f"files/{file_id}.jsonl"


def tokenized_prefix(file_id: str) -> str:
    """An upload's tokenized copies (training.tokenized), one per tokenizer and settings; they go with it."""
    return f"tokenized/{file_id}/"


def job_key(job_id: str, relative: str | Path = "") -> str:
    """A key under a job's folder; `relative` as in its workspace (JobPaths), e.g. "adapter.tar.gz"."""
    return f"jobs/{job_id}/" + (relative.as_posix() if isinstance(relative, Path) else relative)


class Storage(ABC):
    url: str  # where it is, for messages

    # ---------------------------------------------------------------- local places
    @abstractmethod
    def job_workspace(self, job_id: str) -> JobPaths:
        """The local folder a job trains in (progress, log, checkpoints, adapter)."""

    @abstractmethod
    def local_file(self, key: str, sha256: str | None = None) -> Path:
        """A local file holding the object's bytes; a downloaded copy is checked against `sha256`."""

    @abstractmethod
    def get_file(self, key: str, destination: Path) -> None:
        """Copy the object to a local file, atomically (nothing when the file already is the object)."""

    @abstractmethod
    def local_folder(self, prefix: str) -> Path:
        """A local folder holding every object under `prefix` (which ends with "/")."""

    def release_workspace(self, job_id: str) -> None:  # noqa: B027 (nothing to do, by default)
        """Forget a job's local scratch (nothing where the workspace is the storage itself)."""

    # ---------------------------------------------------------------- writes
    @abstractmethod
    def new_upload(self, key: str) -> Upload: ...

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Publish a local file as the object `key`, atomically."""

    def put_folder(self, prefix: str, folder: Path, last: str | None = None) -> None:
        """Publish every file of `folder` under `prefix`, the one named `last` after all the others."""
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        for path in sorted(files, key=lambda p: p.name == last):
            self.put_file(prefix + path.relative_to(folder).as_posix(), path)

    # ---------------------------------------------------------------- reads
    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size and version, or None when there is no such object."""

    @abstractmethod
    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        """The bytes [start, end) of the object, in chunks."""

    def read_bytes(self, key: str) -> bytes:
        info = self.stat(key)
        if info is None:
            raise FileNotFoundError(key)
        return b"".join(self.read_range(key, 0, info.size))

    @abstractmethod
    def list(self, prefix: str) -> dict[str, int]:
        """Key → size of every object under `prefix`."""

    # ---------------------------------------------------------------- deletes and health
    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Delete the object `prefix` or, when it ends with "/", every object under it."""

    @abstractmethod
    def check(self) -> None:
        """Raise StorageError unless the storage can be reached (the readiness probe)."""


class ChecksumVerifier:
    """Checks a stored object against its recorded sha256 before it is served, once per version of the object
    (key, size, version), so a corrupted or half-replaced object is never sent."""

    def __init__(self):
        self._verified: set[tuple[str, int, str, str]] = set()

    def verify(self, storage: Storage, key: str, sha256: str) -> ObjectInfo | None:
        """The object's info when its bytes match `sha256`, else None."""
        info = storage.stat(key)
        if info is None:
            return None
        remembered = (key, info.size, info.version, sha256)
        if remembered in self._verified:
            return info
        digest = hashlib.sha256()
        for chunk in storage.read_range(key, 0, info.size):
            digest.update(chunk)
        if digest.hexdigest() != sha256:
            return None
        self._verified.add(remembered)
        return info
