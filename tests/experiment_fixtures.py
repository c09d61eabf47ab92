"""Helpers shared by the experiment-loop tests (tests/test_experiment.py, tests/test_experiment_guards.py):
a labeling server with label-worker threads, the tiny config, and store look-ups.

Label workers run in threads with a TestClient: the same HTTP API a browser uses, in process.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from lmpref import store
from lmpref.config import make_config
from lmpref.loop.label_worker import WorkerConfig, run_worker
from lmpref.web import Settings, create_app

RUN = "exp"
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
