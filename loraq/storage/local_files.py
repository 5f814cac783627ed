"""Local files: a job's working folder (`JobPaths`), and writing files and folders so that no reader ever sees
them half-written (a temporary name in the same folder, flushed, renamed into place).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20


@dataclass(frozen=True)
class JobPaths:
    """Every path of a job's folder, in one place: what the worker writes, the training program reads and
    writes, and the API serves."""

    root: Path

    @classmethod
    def relative(cls) -> JobPaths:
        """The same names relative to the job's folder (for storage keys: loraq.storage.job_key)."""
        return cls(Path())

    @property
    def config(self) -> Path:  # the training program's config (written by the supervisor)
        return self.root / "config.json"

    @property
    def progress(self) -> Path:  # the training program's progress records (JSONL, appended)
        return self.root / "progress.jsonl"

    @property
    def stop(self) -> Path:  # appears when the supervisor asks the training program to stop
        return self.root / "stop"

    @property
    def log(self) -> Path:  # the training program's stdout and stderr
        return self.root / "train.log"

    @property
    def checkpoints(self) -> Path:  # checkpoint-N folders (adapter, optimizer and trainer state)
        return self.root / "checkpoints"

    @property
    def results(self) -> Path:  # result files published to the owner (metrics CSV, samples)
        return self.root / "results"

    @property
    def adapter(self) -> Path:  # the final adapter folder
        return self.root / "adapter"

    @property
    def parent_adapter(self) -> Path:  # continued training: the adapter the job starts from, fetched from storage
        return self.root / "parent-adapter"

    @property
    def adapter_archive(self) -> Path:  # the final adapter as one downloadable .tar.gz
        return self.root / "adapter.tar.gz"

    def checkpoint_archive(self, step: int) -> Path:  # one checkpoint's adapter files as a .tar.gz
        return self.root / "checkpoint-adapters" / f"step-{step}.tar.gz"


@contextmanager
def staged_directory(final: Path, merge_into_existing: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success it becomes `final` in one rename.

    An existing `final` is replaced whole, or with `merge_into_existing` kept and updated file by file
    (each file replaced atomically). On error the temporary folder is removed and `final` is untouched.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield staging
        if merge_into_existing and final.is_dir():
            for item in staging.iterdir():
                os.replace(item, final / item.name)
            staging.rmdir()
            return
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def fsync_rename(staging: Path, final: Path) -> None:
    """Flush `staging` to disk and rename it to `final` atomically."""
    with open(staging, "rb") as handle:
        os.fsync(handle.fileno())
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, final)
    dir_fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_archive(
    folder: Path, destination: Path, arcname: str, include: Callable[[Path], bool] | None = None
) -> tuple[str, int]:
    """Pack `folder` (the files `include` accepts, or all) into a reproducible .tar.gz at `destination`;
    returns (sha256, bytes).

    Sorted names, zero mtimes and fixed owners make the same adapter give the same bytes, so the
    archive's sha256 serves as a stable ETag.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, staging_name = tempfile.mkstemp(prefix=".archive-", dir=destination.parent)
    staging = Path(staging_name)
    try:
        with (
            os.fdopen(fd, "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for path in sorted(p for p in folder.rglob("*") if p.is_file() and (include is None or include(p))):
                info = tar.gettarinfo(str(path), arcname=f"{arcname}/{path.relative_to(folder)}")
                info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
        fsync_rename(staging, destination)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return sha256_of(destination), destination.stat().st_size


def read_tail(path: Path, limit: int = 4000) -> str:
    """The last `limit` bytes of a log file as text (for failure reasons)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, io.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
