"""Shared storage: uploads, their tokenized rows, checkpoints and adapters, in a local folder or an S3 bucket
(`LORAQ_STORAGE_URL`), behind one interface (loraq.storage.base)."""

from __future__ import annotations

from loraq.storage.base import (
    ChecksumVerifier,
    ObjectInfo,
    Storage,
    StorageError,
    Upload,
    file_key,
    job_key,
    tokenized_prefix,
)
from loraq.storage.local_files import JobPaths, build_archive, fsync_rename, read_tail, sha256_of, staged_directory

__all__ = [
    "ChecksumVerifier",
    "JobPaths",
    "ObjectInfo",
    "Storage",
    "StorageError",
    "Upload",
    "build_archive",
    "file_key",
    "fsync_rename",
    "job_key",
    "open_storage",
    "read_tail",
    "sha256_of",
    "staged_directory",
    "tokenized_prefix",
]

_opened: dict[tuple, Storage] = {}


def open_storage(settings) -> Storage:
    """The storage the settings name (one per process and place: boto3 clients are reused)."""
    url, endpoint, work = settings.resolved_storage_url, settings.s3_endpoint_url or None, settings.resolved_work_dir
    if (url, endpoint, work) not in _opened:
        if url.startswith("s3://"):
            from loraq.storage.s3 import S3Storage

            _opened[url, endpoint, work] = S3Storage(url, endpoint, work)
        else:
            from loraq.storage.local import LocalStorage

            _opened[url, endpoint, work] = LocalStorage(url)
    return _opened[url, endpoint, work]
