"""The training child process, as the supervisor sees it: start it, read its progress, ask it to stop,
kill it, and say why it ended."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any


def start_training(config_path: Path, log_path: Path) -> subprocess.Popen:
    """`python -m training.run --config ...`: a fresh process per job (a fresh CUDA context, hard-killable). A
    config for several processes turns it into torchrun (training.distributed), which starts the ranks; they
    die with it, so killing this process's group stops every rank."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "training.run", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # our signals (Ctrl-C at the terminal) reach the child only via us
            preexec_fn=_die_with_parent,
        )


class ProgressTail:
    """Reads the complete lines appended to the child's progress file since the last read."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written waits for the next read
        self.offset += end
        return [json.loads(line) for line in data[:end].splitlines() if line.strip()]


def request_stop(stop_path: Path, reason: str) -> None:
    """Write the stop file atomically, so the child never reads it half-written."""
    staging = stop_path.with_name(f".{stop_path.name}.tmp")
    staging.write_text(reason)
    os.replace(staging, stop_path)


def exit_reason(returncode: int) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (the kernel's out-of-memory killer sends SIGKILL)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {returncode}"


# torchrun's report of the rank that ended the group: `failed (exitcode: -9) local_rank: 1 (pid: 123)`.
_RANK_FAILURE = re.compile(r"failed \(exitcode: (-?\d+)\) local_rank: (\d+)")


def dead_rank(log_tail: str) -> str | None:
    """Which rank ended a torchrun group and how, from the launcher's log: `rank 1 was killed by SIGKILL`."""
    found = _RANK_FAILURE.findall(log_tail)
    if not found:
        return None
    code, local_rank = found[-1]
    return f"rank {local_rank} {exit_reason(int(code))}"


def _die_with_parent() -> None:
    """In the child, before exec: the kernel kills it if this worker process dies (Linux)."""
    import ctypes

    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def kill(child: subprocess.Popen) -> None:
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
