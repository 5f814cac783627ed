"""`loraq worker --gpus ... --gpus-per-job N`: GPU groups, their queue, and the settings the API checks."""

from __future__ import annotations

import pytest

from cli.gpu_fleet import gpu_environment, gpu_groups
from loraq.job_spec import queue_for_gpus
from loraq.settings import Settings


def test_gpus_form_disjoint_groups_of_the_job_size():
    assert gpu_groups(["0", "1", "2", "3"], 2) == [["0", "1"], ["2", "3"]]
    assert gpu_groups(["4", "5"], 1) == [["4"], ["5"]]
    assert gpu_environment(["2", "3"], 4)["CUDA_VISIBLE_DEVICES"] == "2,3"
    with pytest.raises(ValueError, match="do not form groups of --gpus-per-job 2"):
        gpu_groups(["0", "1", "2"], 2)
    with pytest.raises(ValueError, match="a GPU twice"):
        gpu_groups(["0", "0"], 2)


def test_jobs_on_several_gpus_have_their_own_queue():
    assert queue_for_gpus("loraq", 1) == "loraq"
    assert queue_for_gpus("h100", 4) == "h100.gpus4"


def test_the_fleet_s_group_sizes_are_a_setting():
    assert Settings(gpus_per_job="1, 2,4").job_gpu_counts == {1, 2, 4}
    assert Settings().job_gpu_counts == {1}
    with pytest.raises(ValueError, match="LORAQ_GPUS_PER_JOB"):
        Settings(gpus_per_job="two")
