"""The supervisor's reading of how a torchrun group ended."""

from __future__ import annotations

from worker.child_process import dead_rank

TORCHRUN_LOG = """
W1204 20:24:40.654000 28998 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 29005 closing signal SIGTERM
E1204 20:24:40.771000 28998 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: -9) local_rank: 1 (pid: 29006) of binary: /usr/bin/python
"""  # noqa: E501


def test_the_rank_that_ended_the_group_is_named():
    assert dead_rank(TORCHRUN_LOG).startswith("rank 1 was killed by SIGKILL")
    assert dead_rank(TORCHRUN_LOG.replace("exitcode: -9", "exitcode: 1")) == "rank 1 exited with code 1"
    assert dead_rank("Traceback ...") is None
