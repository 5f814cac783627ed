"""Which checkpoints are complete.

Trainer writes `checkpoint-N/` file by file; a process killed mid-write leaves a folder that looks like a
checkpoint but is not one. Once every file of a checkpoint is on disk (fsynced) a marker is written
atomically beside them; only folders with the marker are ever resumed from. Pure Python: the worker's
supervisor uses it too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from pathlib import Path

MARKER = "loraq_complete.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def step_of(folder: Path) -> int | None:
    match = _NAME.match(folder.name)
    return int(match.group(1)) if match else None


def mark_complete(folder: Path, step: int) -> None:
    """fsync every file of the checkpoint, then write the marker (temp name, rename, fsync the folder)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
        files[str(path.relative_to(folder))] = path.stat().st_size
    staging = folder / f".{MARKER}.tmp"
    staging.write_text(json.dumps({"step": step, "files": files}))
    with staging.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(staging, folder / MARKER)
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def is_complete(folder: Path) -> bool:
    """The marker is there and every file it lists still has its recorded size."""
    try:
        record = json.loads((folder / MARKER).read_text())
        return all((folder / name).stat().st_size == size for name, size in record["files"].items())
    except (OSError, ValueError, KeyError):
        return False


def newest_complete(checkpoints_dir: Path) -> Path | None:
    if not checkpoints_dir.is_dir():
        return None
    folders = [p for p in checkpoints_dir.iterdir() if p.is_dir() and step_of(p) is not None]
    for folder in sorted(folders, key=step_of, reverse=True):
        if is_complete(folder):
            return folder
    return None


def remove_incomplete(checkpoints_dir: Path) -> list[Path]:
    """Delete checkpoint folders without a valid marker (a run died while writing them)."""
    removed = []
    if checkpoints_dir.is_dir():
        for folder in checkpoints_dir.iterdir():
            if folder.is_dir() and step_of(folder) is not None and not is_complete(folder):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


# Trainer state in a checkpoint folder that a user of the adapter does not need (and should not download).
TRAINER_STATE_PREFIXES = ("optimizer", "scheduler", "rng_state", "scaler", "trainer_state", "training_args")


def is_adapter_file(path: Path) -> bool:
    """The adapter, its config, the tokenizer and chat template: what loading the checkpoint needs."""
    return not path.name.startswith(TRAINER_STATE_PREFIXES) and path.name != MARKER and not path.name.startswith(".")


def fault_injection_point(where: str, step: int) -> None:
    """For the fault-injection tests: with LORAQ_FAULT_KILL_AT=<where>:<step>:<flag file>, and while the flag
    file exists, the process deletes the flag and kills itself with SIGKILL at that point of checkpoint
    <step> (`checkpoint`: the training program, after its files and before its marker; `publishing`: the
    worker, after uploading its files and before its marker). Unset in normal operation."""
    point, _, flag = os.environ.get("LORAQ_FAULT_KILL_AT", "").rpartition(":")
    if point == f"{where}:{step}" and flag and Path(flag).exists():
        Path(flag).unlink()
        os.kill(os.getpid(), signal.SIGKILL)
