"""A programmatic labeler that labels through the web app's JSON API with its own token: exactly
the path a person's browser takes (next task, shuffled samples, one label per task), so a
simulated experiment exercises the store, the queue and the Andon cord as a human one does.

    lmpref labelers add sim-1                   # prints a token
    lmpref label-worker --url http://127.0.0.1:8000 --token TOKEN --run RUN --labeler sentiment

Bounded: it exits when the run's experiment has finished (its status in the store), after
`max_labels`, or after `idle_timeout` seconds without work. It never spins: with nothing to
label it sleeps, doubling the pause up to `max_pause`. No torch: it runs anywhere.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from lmpref.eval.labelers import choose, make_labeler
from lmpref.records import PROGRAM_HEADER

"""Sent as `program` with every request: the server does not time a program's labels against
`lmpref serve --min-seconds` (that filter is for people who click without reading)."""


@dataclass
class WorkerConfig:
    run: str
    """Run name in the label store (the experiment's `experiment.store_run`)."""
    labeler: str = "sentiment"
    """Programmatic labeler that scores each sample (lmpref.eval.labelers)."""
    temperature: float = 0.05
    """Boltzmann-rational noise of the pick (0 = always the top score)."""
    seed: int = 0
    """Seed of the noise."""
    max_labels: int = 0
    """Exit after this many labels; 0 = no limit."""
    idle_timeout: float = 600.0
    """Exit after this many seconds with nothing to label."""
    min_pause: float = 0.2
    """First pause when the queue is empty (seconds); doubles each empty poll."""
    max_pause: float = 5.0
    """Longest pause between polls of an empty queue (seconds)."""
    retry_timeout: float = 300.0
    """How long to keep retrying while the server cannot be reached (a restart), in seconds."""


class WorkerError(RuntimeError):
    """The worker cannot go on (its server is gone for good); the message says what to do."""


def run_worker(client: httpx.Client, cfg: WorkerConfig, *, log: Callable[[str], None] = print) -> int:
    """Label until done; returns the number of labels given. `client` carries the base URL and the
    `Authorization: Bearer` header (a TestClient in tests: the same API, in process)."""
    labeler = make_labeler(cfg.labeler)
    rng = random.Random(f"worker-{cfg.labeler}-{cfg.seed}")
    client.headers[PROGRAM_HEADER] = "program"

    def call(method: str, url: str, **kw) -> httpx.Response:
        """One request; while the server cannot be reached (it restarts), retry with a doubling
        pause up to `retry_timeout`, saying so."""
        pause, since = cfg.min_pause, time.monotonic()
        while True:
            try:
                return client.request(method, url, **kw)
            except httpx.TransportError as e:
                if time.monotonic() - since > cfg.retry_timeout:
                    raise WorkerError(
                        f"the labeling server at {client.base_url} has been unreachable for {cfg.retry_timeout:g} s "
                        f"({type(e).__name__}); {given} labels given. Start `lmpref serve` and run the worker again"
                    ) from None
                log(f"[label-worker] server unreachable ({type(e).__name__}: {e}); retrying in {pause:g} s")
                time.sleep(pause)
                pause = min(cfg.max_pause, pause * 2)

    given, pause, idle_since = 0, cfg.min_pause, time.monotonic()
    while not cfg.max_labels or given < cfg.max_labels:
        r = call("GET", "/api/tasks/next", params={"run": cfg.run})
        if r.status_code == 200:
            task = r.json()
            scores = [
                labeler.score(task["context"], s["text"]) for s in task["samples"]
            ]  # samples in this labeler's order
            best = choose(scores, cfg.temperature, rng)
            answer = call("POST", f"/api/tasks/{task['task_id']}/label", json={"best": best})
            if answer.status_code != 409:  # 409: answered already (the server took it just before a restart)
                answer.raise_for_status()
            given, pause, idle_since = given + 1, cfg.min_pause, time.monotonic()
            continue
        if r.status_code not in (204, 404):  # 404: the run does not exist yet
            r.raise_for_status()
        status = call("GET", f"/api/runs/{cfg.run}/status")
        if status.status_code == 200 and (status.json().get("experiment") or {}).get("finished"):
            log(f"[label-worker] run {cfg.run} finished; {given} labels given")
            return given
        if time.monotonic() - idle_since > cfg.idle_timeout:
            log(f"[label-worker] nothing to label for {cfg.idle_timeout:g} s; {given} labels given")
            return given
        time.sleep(pause)
        pause = min(cfg.max_pause, pause * 2)
    log(f"[label-worker] reached --max-labels: {given} labels given")
    return given
