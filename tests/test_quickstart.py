"""The README's experiment quick start, run as written: its bash block, in a fresh folder, with the
`lmpref` on this interpreter's PATH. The server is stopped afterwards (the block leaves it running)."""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start() -> str:
    section = README.read_text(encoding="utf-8").split("## Experiments", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_the_experiment_quick_start_runs_as_written(tmp_path):
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 8000)) == 0:
            pytest.skip("port 8000 is taken; the quick start serves there")
    block = quick_start()
    assert "lmpref serve &" in block and "label-worker" in block and "--resume" in block
    script = f"set -e\n{block}\nkill %1 2>/dev/null || true\nwait\n"  # stop `lmpref serve &`
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("LMPREF_DB", None)
    run = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    state = json.loads((tmp_path / "runs/my-exp/experiment.json").read_text())
    assert state["finished"] and len(state["rounds"]) == 2
    assert (tmp_path / "runs/my-exp/policy/config.json").exists()
    with sqlite3.connect(tmp_path / "labels.db") as db:
        (labels,) = db.execute("select count(*) from labels").fetchone()
    assert labels >= 4  # the worker's labels reached the store and were kept
