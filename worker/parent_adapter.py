"""Continued training: the parent's adapter, fetched from storage into the job's workspace.

The parent is a job that succeeded (its final adapter folder, published before it succeeded) or one of a
job's checkpoints (published, marker last, before it was recorded: worker.checkpoint_store); of a
checkpoint only the adapter files are fetched, not its optimizer and trainer state. The folder appears in
one rename, so a folder that is there is whole and a retried run does not fetch it again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loraq.storage import JobPaths, Storage, job_key, staged_directory
from training.checkpoints import is_adapter_file


def parent_prefix(parent: dict[str, Any]) -> str:
    """Where the parent's adapter is in storage: a checkpoint's folder, or the job's final adapter folder."""
    if parent.get("checkpoint"):
        return job_key(parent["job"], f"checkpoints/checkpoint-{parent['step']}/")
    return job_key(parent["job"], "adapter/")


def fetch_parent_adapter(storage: Storage, parent: dict[str, Any], paths: JobPaths) -> Path:
    """The parent's adapter folder in the workspace (`paths.parent_adapter`); FileNotFoundError when storage
    has no adapter there (deleted behind loraq's back)."""
    local = paths.parent_adapter
    if (local / "adapter_config.json").is_file():
        return local
    prefix = parent_prefix(parent)
    keys = [key for key in storage.list(prefix) if is_adapter_file(Path(key))]
    if prefix + "adapter_config.json" not in keys:
        raise FileNotFoundError(f"the adapter of {parent['model']} is missing from storage ({prefix})")
    with staged_directory(local) as staging:
        for key in keys:
            storage.get_file(key, staging / key[len(prefix) :])
    return local
