"""Storage in one local (or mounted, shared) folder: each key is a path under it. Jobs train in the folder
itself, so publishing what they wrote there is nothing."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from loraq.storage.base import ObjectInfo, Storage, StorageError, Upload
from loraq.storage.local_files import CHUNK, JobPaths, fsync_rename


class LocalUpload(Upload):
    def __init__(self, final: Path):
        self.final = final
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".upload-", dir=final.parent)
        self.local_path = Path(name)
        self._handle = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        self._handle.write(chunk)

    def close(self) -> None:
        self._handle.close()

    def commit(self) -> None:
        self._handle.close()
        fsync_rename(self.local_path, self.final)

    def abort(self) -> None:
        self._handle.close()
        self.local_path.unlink(missing_ok=True)


def _copy(source: Path, final: Path) -> None:
    """`source` to `final` under a temporary name, renamed into place; nothing if they are one file."""
    if final.resolve() == source.resolve():
        return  # written in place
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
    os.close(fd)
    try:
        shutil.copyfile(source, staging)
        fsync_rename(Path(staging), final)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


class LocalStorage(Storage):
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.url = str(self.root)

    def path(self, key: str) -> Path:
        return self.root / key

    def job_workspace(self, job_id: str) -> JobPaths:
        return JobPaths(self.root / "jobs" / job_id)

    def local_file(self, key: str, sha256: str | None = None) -> Path:
        return self.path(key)

    def local_folder(self, prefix: str) -> Path:
        return self.path(prefix)

    def get_file(self, key: str, destination: Path) -> None:
        _copy(self.path(key), Path(destination))

    def new_upload(self, key: str) -> Upload:
        return LocalUpload(self.path(key))

    def put_file(self, key: str, path: Path) -> None:
        _copy(Path(path), self.path(key))

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            stat = self.path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(stat.st_size, str(stat.st_mtime_ns))

    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        with self.path(key).open("rb") as handle:
            handle.seek(start)
            left = end - start
            while left > 0:
                chunk = handle.read(min(CHUNK, left))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk

    def list(self, prefix: str) -> dict[str, int]:
        base = self.path(prefix)
        if not prefix.endswith("/"):
            return {prefix: base.stat().st_size} if base.is_file() else {}
        if not base.is_dir():
            return {}
        found = {}
        for path in base.rglob("*"):
            relative = path.relative_to(self.root)
            # Names starting with "." are files being written (staging names): not objects yet.
            if path.is_file() and not any(part.startswith(".") for part in relative.parts):
                found[relative.as_posix()] = path.stat().st_size
        return found

    def delete_prefix(self, prefix: str) -> None:
        target = self.path(prefix)
        if prefix.endswith("/"):
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"the storage folder {self.root} cannot be created: {exc}") from None
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"the storage folder {self.root} is not writable")
