"""The process group behind `loraq up` and `loraq worker --gpus`: stop order, kill after the timeout, restart."""

from __future__ import annotations

import sys
import time

from cli.processes import ProcessGroup

# A child that says it is ready, then on SIGTERM waits `delay` seconds, appends its name to a log and exits.
ON_SIGTERM = """
import signal, sys, time
from pathlib import Path
name, log, delay = sys.argv[1], Path(sys.argv[2]), float(sys.argv[3])
def stop(*_):
    time.sleep(delay)
    with log.open("a") as f:
        f.write(name + "\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
(log.parent / (name + ".ready")).touch()
time.sleep(60)
"""
IGNORES_SIGTERM = """
import pathlib, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
pathlib.Path(sys.argv[1]).touch()
time.sleep(60)
"""


def wait_for(path, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_stopped_last_children_get_sigterm_after_the_others_exited(tmp_path):
    log = tmp_path / "stopped"
    group = ProcessGroup(stop_timeout=20)
    group.spawn("redis", [sys.executable, "-c", ON_SIGTERM, "redis", str(log), "0"], stopped_last=True)
    group.spawn("worker", [sys.executable, "-c", ON_SIGTERM, "worker", str(log), "0.5"])
    group.spawn("api", [sys.executable, "-c", ON_SIGTERM, "api", str(log), "0"])
    for name in ("redis", "worker", "api"):
        wait_for(tmp_path / f"{name}.ready")
    group.stop()
    lines = log.read_text().split()
    assert sorted(lines[:2]) == ["api", "worker"] and lines[2:] == ["redis"]
    assert [child.returncode for child in group.children] == [0, 0, 0]


def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path):
    group = ProcessGroup(stop_timeout=0.5)
    child = group.spawn("stuck", [sys.executable, "-c", IGNORES_SIGTERM, str(tmp_path / "ready")])
    wait_for(tmp_path / "ready")
    started = time.monotonic()
    group.stop()
    assert child.returncode == -9 and time.monotonic() - started < 10


def test_restart_runs_the_same_command_and_environment_again(tmp_path):
    group = ProcessGroup(stop_timeout=5)
    script = "import os, pathlib; pathlib.Path(os.environ['OUT']).open('a').write('ran\\n')"
    child = group.spawn("once", [sys.executable, "-c", script], {"OUT": str(tmp_path / "out")})
    child.process.wait()
    assert group.exited() == [child]
    first_pid = child.process.pid
    group.restart(child)
    child.process.wait()
    assert child.process.pid != first_pid and (tmp_path / "out").read_text() == "ran\nran\n"
    group.stop()
