"""The PPO throughput harness runs end to end (CPU, tiny shape) and reports what the issue's table needs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TRL_SITE = os.environ.get("TRL_SITE", "/work/trl-site")
PEER = [REPO / "shared/peer-trl/trl_ppo_throughput.py", REPO.parent / "shared/peer-trl/trl_ppo_throughput.py"]


def _run(*extra: str) -> tuple[list[dict], str]:
    out = subprocess.run(
        [sys.executable, str(REPO / "bench/ppo_throughput.py"), "--device", "cpu", "--tiny", *extra],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(REPO / "src")},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stdout


@pytest.mark.slow
def test_ppo_throughput_harness_reports_every_figure():
    rows, stdout = _run("--no-trl")
    by = {r["system"]: r for r in rows}
    assert set(by) == {"lmpref", "lmpref-shared"}
    row = by["lmpref"]
    assert row["size"] == "tiny" and row["micro_batch"] == 8 and row["reps"] == 1
    assert row["comparison"].startswith("like-for-like") and by["lmpref-shared"]["comparison"] == "not like-for-like"
    for r in rows:
        assert r["episodes_per_s"] > 0
        for phase in ("generation", "logprobs", "reward", "train"):
            assert r[phase] > 0, phase
    assert "| lmpref | CPU | like-for-like" in stdout  # the table a reader sees
    assert "rep 1" in stdout and "load average" in stdout


@pytest.mark.slow
@pytest.mark.skipif(
    not (Path(TRL_SITE, "trl").is_dir() and any(p.exists() for p in PEER)), reason="TRL 1.9.2 site or peer absent"
)
def test_ppo_throughput_harness_runs_the_trl_peer_on_cpu():
    rows, stdout = _run("--no-shared", "--trl-site", TRL_SITE)
    by = {r["system"]: r for r in rows}
    assert set(by) == {"lmpref", "trl"}
    assert by["trl"]["episodes_per_s"] > 0 and by["trl"]["train"] > 0 and by["trl"]["generation"] > 0
    assert by["lmpref"]["ratio"] == pytest.approx(by["lmpref"]["episodes_per_s"] / by["trl"]["episodes_per_s"])
    assert "ratio lmpref / TRL" in stdout
