"""Worker settings that would fail every job are refused when the worker starts."""

from __future__ import annotations

import os
import subprocess
import sys


def test_a_misspelt_speedups_setting_stops_the_worker_before_it_claims_anything(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAQ_")}
    env.update(LORAQ_DATA_DIR=str(tmp_path), LORAQ_TRAINING_SPEEDUPS="fused_lroa")
    for command in (["worker"], ["up", "--data-dir", str(tmp_path)]):
        done = subprocess.run([sys.executable, "-m", "cli", *command], env=env, capture_output=True, text=True)
        assert done.returncode == 1
        assert "LORAQ_TRAINING_SPEEDUPS: unknown speedup 'fused_lroa'" in done.stderr
        assert "Traceback" not in done.stderr
