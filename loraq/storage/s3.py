"""Storage in an S3 bucket (AWS, or an S3-compatible server at LORAQ_S3_ENDPOINT_URL), through boto3.

Credentials come the standard way (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, a profile, an
instance role). Objects are written whole: a single PUT, or a multipart upload that only becomes visible
when it is completed (and is aborted on error). Local copies (files being validated or trained on, their
tokenized rows) are cached under the work folder, and jobs train in local scratch there; the worker
publishes checkpoints and adapters (worker.checkpoint_store).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlparse

from loraq.storage.base import ObjectInfo, Storage, StorageError, Upload
from loraq.storage.local_files import CHUNK, JobPaths, sha256_of

PART_BYTES = 8 << 20  # an API upload's multipart part (S3's smallest is 5 MiB)
BIG_FILE_BYTES = 64 << 20  # worker uploads and downloads above this go in parts

# botocore ≥ 1.36 sends CRC checksum headers on every request and checks them on responses by default,
# which several S3-compatible servers reject or do not send: only when an operation requires them.
CHECKSUMS = {"request_checksum_calculation": "when_required", "response_checksum_validation": "when_required"}
DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"}
FULL = {"EntityTooLarge", "QuotaExceeded", "XMinioStorageFull", "InsufficientStorage", "XAmzContentSHA256Mismatch"}


def _client(endpoint_url: str | None, attempts: int, connect_timeout: float, read_timeout: float):
    import boto3
    from botocore.config import Config

    config = Config(
        **CHECKSUMS,
        retries={"max_attempts": attempts, "mode": "standard"},  # standard mode retries refused connections too
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        s3={"addressing_style": "path"} if endpoint_url else {},  # S3-compatible servers rarely have bucket DNS
    )
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)


class _FileSlice(io.RawIOBase):
    """`length` bytes of a file from `offset`, as a seekable body (a part is sent without reading it into memory)."""

    def __init__(self, path: Path, offset: int, length: int):
        self._file, self._offset, self._length, self._position = path.open("rb"), offset, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def __len__(self) -> int:
        return self._length

    def read(self, size: int | None = -1) -> bytes:
        left = self._length - self._position
        size = left if size is None or size < 0 else min(size, left)
        self._file.seek(self._offset + self._position)
        data = self._file.read(size)
        self._position += len(data)
        return data

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        self._position = max(0, min(self._length, base + position))
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        self._file.close()
        super().close()


class S3Upload(Upload):
    """Spooled to local disk (the API validates the file there) and sent part by part as it arrives."""

    def __init__(self, storage: S3Storage, key: str):
        self.storage, self.key = storage, key
        folder = storage.cache / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".upload-", dir=folder)
        self.local_path = Path(name)
        self._handle = os.fdopen(fd, "wb")
        self._size = self._sent = 0
        self._parts: list[dict] = []
        self._upload_id: str | None = None

    def write(self, chunk: bytes) -> None:
        self._handle.write(chunk)
        self._size += len(chunk)
        if self._size - self._sent >= PART_BYTES:
            self._send_part(PART_BYTES)

    def _send_part(self, length: int) -> None:
        if not self._handle.closed:
            self._handle.flush()
        target = self.storage.target(self.key)
        with self.storage.errors("uploading", self.key):
            if self._upload_id is None:
                self._upload_id = self.storage.client.create_multipart_upload(**target)["UploadId"]
            number = len(self._parts) + 1
            with _FileSlice(self.local_path, self._sent, length) as body:
                sent = self.storage.client.upload_part(
                    **target, UploadId=self._upload_id, PartNumber=number, Body=body, ContentLength=length
                )
        self._parts.append({"ETag": sent["ETag"], "PartNumber": number})
        self._sent += length

    def close(self) -> None:
        self._handle.close()

    def commit(self) -> None:
        self._handle.close()
        if self._upload_id is None:
            self.storage.put_file(self.key, self.local_path)
        else:
            if self._size > self._sent:
                self._send_part(self._size - self._sent)
            with self.storage.errors("uploading", self.key):
                self.storage.client.complete_multipart_upload(
                    **self.storage.target(self.key), UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
                )
        self.local_path.unlink(missing_ok=True)

    def abort(self) -> None:
        self._handle.close()
        self.local_path.unlink(missing_ok=True)
        if self._upload_id is not None:
            # The parts sent so far are dropped and the object never appears; should this fail too, a bucket
            # lifecycle rule (AbortIncompleteMultipartUpload) clears them.
            with suppress(Exception):
                self.storage.client.abort_multipart_upload(**self.storage.target(self.key), UploadId=self._upload_id)


class S3Storage(Storage):
    def __init__(self, url: str, endpoint_url: str | None, work_dir: Path):
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"an S3 storage URL looks like s3://bucket/prefix (got {url!r})")
        self.url, self.bucket = url, parsed.netloc
        self.prefix = parsed.path.strip("/") + "/" if parsed.path.strip("/") else ""
        self.endpoint_url = endpoint_url
        self.cache = Path(work_dir)
        self.client = _client(endpoint_url, attempts=10, connect_timeout=5, read_timeout=60)
        self._probe = _client(endpoint_url, attempts=1, connect_timeout=2, read_timeout=5)  # /readyz answers fast

    def target(self, key: str) -> dict[str, str]:
        return {"Bucket": self.bucket, "Key": self.prefix + key}

    @contextmanager
    def errors(self, action: str, key: str = "") -> Iterator[None]:
        """botocore's errors as a StorageError that says what went wrong in words an operator can act on."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        where = f"s3://{self.bucket}/{self.prefix}{key}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")
        try:
            yield
        except (ClientError, Boto3Error) as exc:
            cause = exc if isinstance(exc, ClientError) else exc.__context__  # boto3 wraps transfer errors
            response = cause.response if isinstance(cause, ClientError) else {}
            code = response.get("Error", {}).get("Code", "")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket" or (status == 404 and not key):
                reason = f"the bucket '{self.bucket}' does not exist"
            elif code in ("NoSuchKey", "NotFound") or status == 404:
                raise FileNotFoundError(f"{action} {where}: no such object") from None
            elif code in DENIED or status == 403:
                reason = "access denied: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            elif code in FULL or status == 507:
                reason = "the object store is full or refused the size"
            else:
                reason = str(exc)
            raise StorageError(f"{action} {where} failed: {reason}") from None
        except NoCredentialsError:
            raise StorageError(f"{action} {where} failed: no credentials (set AWS_ACCESS_KEY_ID)") from None
        except BotoCoreError as exc:
            raise StorageError(f"{action} {where} failed: the object store is unreachable ({exc})") from None

    def _transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=BIG_FILE_BYTES, multipart_chunksize=16 << 20, max_concurrency=4, use_threads=True
        )

    # ---------------------------------------------------------------- local places
    def job_workspace(self, job_id: str) -> JobPaths:
        return JobPaths(self.cache / "jobs" / job_id)

    def release_workspace(self, job_id: str) -> None:
        shutil.rmtree(self.cache / "jobs" / job_id, ignore_errors=True)

    def get_file(self, key: str, destination: Path) -> None:
        self._download(key, Path(destination))

    def _download(self, key: str, final: Path, sha256: str | None = None) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
        os.close(fd)
        staging = Path(name)
        try:
            with self.errors("downloading", key):
                self.client.download_file(self.bucket, self.prefix + key, name, Config=self._transfer_config())
            if sha256 and sha256_of(staging) != sha256:
                raise StorageError(f"s3://{self.bucket}/{self.prefix}{key} does not match its recorded sha256")
            os.replace(staging, final)
        finally:
            staging.unlink(missing_ok=True)

    def local_file(self, key: str, sha256: str | None = None) -> Path:
        # Keys of uploads never change once written; the copy is checked when downloaded.
        local = self.cache / "objects" / key
        if not local.is_file():
            self._download(key, local, sha256)
        return local

    def local_folder(self, prefix: str) -> Path:
        for key, size in self.list(prefix).items():
            local = self.cache / "objects" / key
            if not (local.is_file() and local.stat().st_size == size):
                self._download(key, local)
        return self.cache / "objects" / prefix

    # ---------------------------------------------------------------- writes
    def new_upload(self, key: str) -> Upload:
        return S3Upload(self, key)

    def put_file(self, key: str, path: Path) -> None:
        with self.errors("uploading", key):
            self.client.upload_file(str(path), self.bucket, self.prefix + key, Config=self._transfer_config())

    # ---------------------------------------------------------------- reads
    def stat(self, key: str) -> ObjectInfo | None:
        try:
            with self.errors("reading", key):
                head = self.client.head_object(**self.target(key))
        except FileNotFoundError:
            return None
        return ObjectInfo(head["ContentLength"], head["ETag"])

    def read_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        if end <= start:
            return
        with self.errors("reading", key):
            body = self.client.get_object(**self.target(key), Range=f"bytes={start}-{end - 1}")["Body"]
            try:
                yield from body.iter_chunks(CHUNK)
            finally:
                body.close()

    def list(self, prefix: str) -> dict[str, int]:
        found = {}
        with self.errors("listing", prefix):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    found[item["Key"][len(self.prefix) :]] = item["Size"]
        if not prefix.endswith("/"):
            found = {k: v for k, v in found.items() if k == prefix}
        return found

    # ---------------------------------------------------------------- deletes and health
    def delete_prefix(self, prefix: str) -> None:
        for key in self.list(prefix) if prefix.endswith("/") else [prefix]:
            with self.errors("deleting", key):
                self.client.delete_object(**self.target(key))

    def check(self) -> None:
        with self.errors("reaching the bucket"):
            self._probe.head_bucket(Bucket=self.bucket)
