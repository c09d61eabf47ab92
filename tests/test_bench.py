"""The PPO throughput harness runs end to end (CPU, tiny shape) and reports what the GPU run reports."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ppo_throughput_harness_reports_every_figure():
    out = subprocess.run(
        [sys.executable, str(REPO / "bench/ppo_throughput.py"), "--device", "cpu", "--tiny", "--no-trl"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (row,) = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["system"] == "lmpref" and row["size"] == "tiny" and row["micro_batch"] == 8
    assert row["episodes_per_s"] > 0
    for phase in ("generation", "logprobs", "reward", "train"):
        assert row[phase] > 0, phase
    assert "| lmpref | tiny |" in out.stdout  # the table a reader sees
