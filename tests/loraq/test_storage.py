"""The storage interface, on both backends: a local folder and a real S3-compatible server (rclone)."""

from __future__ import annotations

import itertools
import os

import pytest

from loraq.settings import Settings
from loraq.storage import ChecksumVerifier, StorageError, open_storage, sha256_of
from loraq.storage.s3 import PART_BYTES

_buckets = itertools.count()


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path, monkeypatch):
    if request.param == "local":
        return open_storage(Settings(data_dir=tmp_path))
    server = request.getfixturevalue("s3_server")
    for name, value in server.environment(server.bucket(f"unit-{next(_buckets)}")).items():
        monkeypatch.setenv(name, value)
    return open_storage(Settings(data_dir=tmp_path))


def test_put_list_read_and_delete(storage, tmp_path):
    source = tmp_path / "source.bin"
    data = os.urandom(3 << 20)
    source.write_bytes(data)
    storage.put_file("jobs/j1/adapter.tar.gz", source)
    storage.put_file("jobs/j1/results/metrics.csv", source)
    assert storage.list("jobs/j1/") == {"jobs/j1/adapter.tar.gz": len(data), "jobs/j1/results/metrics.csv": len(data)}
    assert storage.list("jobs/j1/adapter.tar.gz") == {"jobs/j1/adapter.tar.gz": len(data)}
    assert storage.stat("jobs/j1/adapter.tar.gz").size == len(data) and storage.stat("jobs/j1/nothing") is None
    assert b"".join(storage.read_range("jobs/j1/adapter.tar.gz", 10, 2 << 20)) == data[10 : 2 << 20]
    copy = tmp_path / "copy.bin"
    storage.get_file("jobs/j1/results/metrics.csv", copy)
    assert copy.read_bytes() == data
    storage.delete_prefix("jobs/j1/results/")
    assert list(storage.list("jobs/j1/")) == ["jobs/j1/adapter.tar.gz"]
    storage.delete_prefix("jobs/j1/adapter.tar.gz")
    assert storage.list("jobs/") == {}
    with pytest.raises(FileNotFoundError):
        storage.get_file("jobs/j1/adapter.tar.gz", copy)


def test_an_upload_is_invisible_until_committed_and_gone_when_aborted(storage):
    data = os.urandom(PART_BYTES + (1 << 20))  # more than one multipart part on S3
    upload = storage.new_upload("files/file-a.jsonl")
    for start in range(0, len(data), 1 << 20):
        upload.write(data[start : start + (1 << 20)])
    assert storage.list("files/") == {}  # sent, in part, but not visible
    assert sha256_of(upload.local_path) == sha256_of_bytes(data)  # the API validates this copy
    upload.commit()
    assert storage.read_bytes("files/file-a.jsonl") == data
    aborted = storage.new_upload("files/file-b.jsonl")
    aborted.write(data)
    aborted.abort()
    assert list(storage.list("files/")) == ["files/file-a.jsonl"] and not aborted.local_path.exists()


def sha256_of_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_local_copies_of_files_and_folders(storage, tmp_path):
    source = tmp_path / "rows.arrow"
    source.write_bytes(b"rows")
    storage.put_file("tokenized/file-a/rows.arrow", source)
    storage.put_file("files/file-a.jsonl", source)
    folder = storage.local_folder("tokenized/file-a/")
    assert (folder / "rows.arrow").read_bytes() == b"rows"
    assert storage.local_file("files/file-a.jsonl", sha256_of(source)).read_bytes() == b"rows"


def test_checksum_verifier_refuses_changed_bytes(storage, tmp_path):
    source = tmp_path / "archive"
    source.write_bytes(b"adapter bytes")
    storage.put_file("jobs/j/adapter.tar.gz", source)
    verifier = ChecksumVerifier()
    assert verifier.verify(storage, "jobs/j/adapter.tar.gz", sha256_of(source)).size == 13
    source.write_bytes(b"adapter bytez")  # bit rot, as a new version of the object
    storage.put_file("jobs/j/adapter.tar.gz", source)
    assert verifier.verify(storage, "jobs/j/adapter.tar.gz", sha256_of_bytes(b"adapter bytes")) is None
    assert verifier.verify(storage, "jobs/j/missing", "0" * 64) is None


def test_check_reports_a_missing_bucket_clearly(s3_server, tmp_path, monkeypatch):
    for name, value in s3_server.environment("no-such-bucket").items():
        monkeypatch.setenv(name, value)
    storage = open_storage(Settings(data_dir=tmp_path))
    with pytest.raises(StorageError, match="the bucket 'no-such-bucket' does not exist"):
        storage.check()
    with pytest.raises(StorageError, match="does not exist"):
        storage.put_file("files/x.jsonl", __file__)


def test_check_reports_an_unreachable_server(tmp_path, monkeypatch):
    from tests.servers import free_port

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "someone")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "something")
    settings = Settings(data_dir=tmp_path, storage_url="s3://b/p", s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StorageError, match="unreachable"):
        open_storage(settings).check()
