"""A job's checkpoints in storage: published from the workspace the training program writes them in, found
and fetched again by the run that resumes the job (on this machine or another).

A checkpoint is complete in storage once its completeness marker (training.checkpoints.MARKER) is there
and every file the marker lists has the size it records. The marker is published after every other file,
so a publication cut short (the worker killed, storage gone) leaves a checkpoint without one, which is
never resumed from and is deleted by the next run. On a local storage folder the training program writes
checkpoints in place, and publishing and fetching them is nothing.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from loraq.storage import JobPaths, Storage, job_key, staged_directory
from training.checkpoints import MARKER, fault_injection_point, is_complete, step_of

logger = logging.getLogger("loraq.worker")


def _prefix(job_id: str, step: int | None = None) -> str:
    return job_key(job_id, "checkpoints/") + (f"checkpoint-{step}/" if step is not None else "")


def complete_steps(storage: Storage, job_id: str) -> list[int]:
    """Steps of the job's complete checkpoints in storage, oldest first; incomplete ones are deleted."""
    prefix = _prefix(job_id)
    folders: dict[int, dict[str, int]] = {}
    for key, size in storage.list(prefix).items():
        folder, _, name = key[len(prefix) :].partition("/")
        step = step_of(Path(folder))
        if step is not None and name:
            folders.setdefault(step, {})[name] = size
    complete = []
    for step, files in sorted(folders.items()):
        if MARKER in files and _matches_marker(storage, _prefix(job_id, step), files):
            complete.append(step)
        else:
            logger.warning("job %s: deleting the incomplete checkpoint %s from storage", job_id, step)
            storage.delete_prefix(_prefix(job_id, step))
    return complete


def _matches_marker(storage: Storage, prefix: str, files: dict[str, int]) -> bool:
    try:
        listed = json.loads(storage.read_bytes(prefix + MARKER))["files"]
    except (FileNotFoundError, ValueError, KeyError):
        return False
    return all(files.get(name) == size for name, size in listed.items())


def fetch(storage: Storage, job_id: str, step: int, paths: JobPaths) -> Path:
    """The complete checkpoint `step` in the workspace's checkpoint folder (downloaded unless already there)."""
    local = paths.checkpoints / f"checkpoint-{step}"
    if is_complete(local):
        return local
    prefix = _prefix(job_id, step)
    with staged_directory(local) as staging:
        for key in storage.list(prefix):
            storage.get_file(key, staging / key[len(prefix) :])
    return local


def forget_others(paths: JobPaths, keep: list[int]) -> None:
    """Remove the workspace's checkpoint folders that are not complete in storage (leftovers of a run on
    this machine whose publication was cut short): a run resumes only from what storage holds."""
    if paths.checkpoints.is_dir():
        for folder in paths.checkpoints.iterdir():
            if folder.is_dir() and step_of(folder) is not None and step_of(folder) not in keep:
                shutil.rmtree(folder, ignore_errors=True)


def publish(storage: Storage, job_id: str, step: int, folder: Path) -> None:
    """Every file of the checkpoint, then its marker."""
    prefix = _prefix(job_id, step)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name != MARKER)
    for path in files:
        storage.put_file(prefix + path.relative_to(folder).as_posix(), path)
    fault_injection_point("publishing", step)
    storage.put_file(prefix + MARKER, folder / MARKER)
