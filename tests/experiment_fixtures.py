"""Helpers shared by the experiment-loop tests (tests/test_experiment.py, tests/test_experiment_algos.py,
tests/test_experiment_guards.py): a labeling server with label-worker threads, the tiny config, store
look-ups, a person pulling the Andon cord at a named point of the run, and the loop run as a
subprocess that dies at a named point (tests/kill_at.py).

Label workers run in threads with a TestClient: the same HTTP API a browser uses, in process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from lmpref import store
from lmpref.config import make_config
from lmpref.io import read_jsonl
from lmpref.loop.label_worker import WorkerConfig, run_worker
from lmpref.steps import hooks
from lmpref.web import Settings, create_app

RUN = "exp"
KILL_AT = str(Path(__file__).parent / "kill_at.py")  # runs `lmpref` and dies at one named point of the run
# Tiny-gpt2 learns nothing from a dozen labels, so its reward models sit at chance: the pre-PPO
# guard is off in the end-to-end runs and tested on its own.
BASE = {
    "experiment.store_run": RUN,
    "experiment.poll_seconds": 0.1,
    "experiment.reward_guard_margin": -1,
    "experiment.evaluate": False,
    "threads": 1,
}


@pytest.fixture(autouse=True)
def tiny_env(monkeypatch):
    monkeypatch.setenv("LMPREF_CACHE", os.environ.get("LMPREF_CACHE", "/tmp/lmcache"))
    torch.set_num_threads(1)


class Workers:
    """A labeling server (app) with label-worker threads, each with its own labeler token.

    With `release`, worker 0 first gives `first` labels alone; then every worker waits until
    `release()` is true (at most 120 s) before labeling on: a labeling pool that falls behind."""

    def __init__(
        self,
        tmp_path: Path,
        n: int = 1,
        labeler: str = "sentiment",
        max_labels: int = 0,
        first: int = 0,
        release: Callable[[], bool] | None = None,
    ):
        self.labeler, self.max_labels, self.first, self.release = labeler, max_labels, first, release
        self.db = f"sqlite:///{tmp_path / 'labels.db'}"
        self.app = create_app(
            Settings(db_url=self.db)
        )  # `lmpref serve`'s defaults (--min-seconds 5), as the README's quick start runs it
        with store.transaction(self.app.state.sessions) as session:
            self.tokens = [store.create_labeler(session, name=f"sim-{i}")[1] for i in range(n)]
            self.admin = store.create_labeler(session, name="boss", role="admin")[1]
        self.counts: list[int] = [0] * n
        self.threads = [threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(n)]

    def _work(self, i: int) -> None:
        client = TestClient(self.app, headers={"Authorization": f"Bearer {self.tokens[i]}"})
        cfg = WorkerConfig(
            run=RUN,
            labeler=self.labeler,
            max_labels=self.max_labels,
            seed=i,
            idle_timeout=240,
            min_pause=0.05,
            max_pause=0.5,
        )
        if self.release is not None:
            if i == 0:
                self.counts[i] += run_worker(
                    client, dataclasses.replace(cfg, max_labels=self.first), log=lambda _: None
                )
            deadline = time.monotonic() + 120
            while not self.release() and time.monotonic() < deadline:
                time.sleep(0.05)
        self.counts[i] += run_worker(client, cfg, log=lambda _: None)

    def start(self) -> Workers:
        for t in self.threads:
            t.start()
        return self

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=60)
            assert not t.is_alive(), "a label worker did not exit after the run finished"

    def session(self):
        return store.transaction(self.app.state.sessions)


def tiny_config(tmp_path, **overrides):
    return make_config("test", "tiny", {**BASE, "run_dir": str(tmp_path / "run"), **overrides})


def batch_tasks(w: Workers) -> Counter:
    """Comparisons per batch of the run, as the store holds them."""
    with w.session() as s:
        run = store.get_run(s, name=RUN)
        return Counter({b.name: store.progress(s, run=RUN, batch=b.name).tasks for b in run.batches})


def labels_given(w: Workers) -> int:
    with w.session() as s:
        return store.progress(s, run=RUN).labels


@contextmanager
def cord_pulled(w: Workers, point: str, n: int, times: int = 1) -> Iterator[dict]:
    """Within the block, the labeler sim-0 pulls the Andon cord ("samples look broken") the `times`-th
    time the run announces `point:n` (`lmpref.steps.hooks`; `update:3`: update 3's metrics row is
    logged, its checkpoint not yet written). Yields {"id": the event's id} once pulled."""
    pulled: dict = {}
    seen = Counter()

    def pull(name: str, k: int) -> None:
        seen[name, k] += 1
        if (name, k) == (point, n) and seen[name, k] == times and not pulled:
            with w.session() as s:
                pulled["id"] = store.pull_andon(
                    s, reason="samples look broken", run=RUN, labeler=store.get_labeler(s, name="sim-0")
                ).id

    hooks.register(pull)
    try:
        yield pulled
    finally:
        hooks.unregister(pull)


def experiment_argv(w: Workers, run_dir, mode: str, overrides: dict) -> list[str]:
    """`lmpref experiment` at the tiny scale on the workers' store, as a command line."""
    argv = [
        sys.executable,
        "-m",
        "lmpref.cli",
        "experiment",
        "--preset",
        "test",
        "--scale",
        "tiny",
        "--mode",
        mode,
        "--db",
        w.db,
        "--run-dir",
        str(run_dir),
    ]
    for k, v in {**BASE, **overrides}.items():
        argv += ["--set", f"{k}={v}"]
    return argv


def killed_loop(argv: list[str]) -> Callable[..., int]:
    """`loop(kill_at, resume=True)`: run `argv` in a subprocess that SIGKILLs itself at the point
    `kill_at` ("sampled:1"; None: never), returning its exit code (-9 when killed)."""

    def loop(kill_at: str | None, resume: bool = True) -> int:
        cmd = [sys.executable, KILL_AT, kill_at or "", "--"] + argv[3:] + (["--resume"] if resume else [])
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300).returncode

    return loop


def metric_steps(run_dir: Path) -> list[int]:
    """The `step` of every row of run_dir/metrics.jsonl, in order, repeats kept."""
    return [m["step"] for _, m in read_jsonl(run_dir / "metrics.jsonl")]


def checkpoint_state(run_dir: Path) -> dict:
    """The state.json of run_dir's latest checkpoint."""
    latest = (run_dir / "checkpoints/latest").read_text()
    return json.loads((run_dir / "checkpoints" / latest / "state.json").read_text())
