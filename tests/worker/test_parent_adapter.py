"""Continued training's parent adapter, fetched from storage (a folder and a real S3-compatible server) into
the child's workspace: a checkpoint's adapter files without its trainer state, or a job's final adapter."""

from __future__ import annotations

import itertools

import pytest

from loraq.settings import Settings
from loraq.storage import open_storage
from worker.parent_adapter import fetch_parent_adapter

_buckets = itertools.count()
PARENT = "ftjob-parent000000000000000000"


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path, monkeypatch):
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        for name, value in server.environment(server.bucket(f"parent-{next(_buckets)}")).items():
            monkeypatch.setenv(name, value)
    return open_storage(Settings(data_dir=tmp_path))


def _publish(storage, tmp_path, prefix: str, names: list[str]) -> None:
    for name in names:
        source = tmp_path / "source" / name
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(name.encode() * 10)
        storage.put_file(prefix + name, source)


def test_a_checkpoint_parent_brings_its_adapter_files_only(storage, tmp_path):
    adapter_files = ["adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja"]
    trainer_state = ["optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "loraq_complete.json"]
    _publish(storage, tmp_path, f"jobs/{PARENT}/checkpoints/checkpoint-20/", adapter_files + trainer_state)
    _publish(storage, tmp_path, f"jobs/{PARENT}/checkpoints/checkpoint-40/", ["adapter_config.json"])
    paths = storage.job_workspace("ftjob-child")
    parent = {"job": PARENT, "step": 20, "model": "ft:m::x:ckpt-step-20", "checkpoint": "ftckpt-1"}
    folder = fetch_parent_adapter(storage, parent, paths)
    assert folder == paths.parent_adapter
    assert sorted(p.name for p in folder.iterdir()) == sorted(adapter_files)
    assert (folder / "adapter_model.safetensors").read_bytes() == b"adapter_model.safetensors" * 10

    (folder / "tokenizer.json").write_bytes(b"kept")  # a retried run does not fetch it again
    assert (fetch_parent_adapter(storage, parent, paths) / "tokenizer.json").read_bytes() == b"kept"


def test_a_fine_tuned_model_parent_brings_the_final_adapter(storage, tmp_path):
    _publish(storage, tmp_path, f"jobs/{PARENT}/adapter/", ["adapter_config.json", "adapter_model.safetensors"])
    _publish(storage, tmp_path, f"jobs/{PARENT}/", ["adapter.tar.gz"])
    parent = {"job": PARENT, "step": 40, "model": "ft:m::x", "checkpoint": None}
    folder = fetch_parent_adapter(storage, parent, storage.job_workspace("ftjob-child2"))
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_a_parent_missing_from_storage_is_an_error_that_says_so(storage):
    parent = {"job": PARENT, "step": 40, "model": "ft:m::gone", "checkpoint": None}
    with pytest.raises(FileNotFoundError, match="ft:m::gone"):
        fetch_parent_adapter(storage, parent, storage.job_workspace("ftjob-child3"))
