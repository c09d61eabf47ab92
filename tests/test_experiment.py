"""The experiment loop end to end on CPU with tiny-gpt2: online and batched runs labeled by
programmatic label workers through the JSON API, a run killed at several points and resumed, a
flipped reward sign caught before PPO, and the Andon cord halting PPO within one update.

Label workers run in threads with a TestClient: the same HTTP API a browser uses, in process.
The loop itself runs in process (fast), except in the kill test, which must SIGKILL it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from lmpref import store
from lmpref.config import make_config
from lmpref.experiment import run_experiment
from lmpref.experiment_guards import hacking_guard, kl_guard, label_schedule, reward_guard, segment_ends, validation_win_rate
from lmpref.io import read_jsonl
from lmpref.label_worker import WorkerConfig, run_worker
from lmpref.web import Settings, create_app

RUN = "exp"
# Tiny-gpt2 learns nothing from a dozen labels, so its reward models sit at chance: the pre-PPO
# guard is off in the end-to-end runs and tested on its own below.
BASE = {"experiment.store_run": RUN, "experiment.poll_seconds": 0.1, "experiment.reward_guard_margin": -1,
        "experiment.evaluate": False, "threads": 1}


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("LMPREF_CACHE", os.environ.get("LMPREF_CACHE", "/tmp/lmcache"))
    torch.set_num_threads(1)


class Workers:
    """A labeling server (app) with label-worker threads, each with its own labeler token."""

    def __init__(self, tmp_path: Path, n: int = 1, labeler: str = "sentiment", max_labels: int = 0):
        self.labeler, self.max_labels = labeler, max_labels
        self.db = f"sqlite:///{tmp_path / 'labels.db'}"
        self.app = create_app(Settings(db_url=self.db, min_seconds=0.0))
        with store.transaction(self.app.state.sessions) as session:
            self.tokens = [store.create_labeler(session, name=f"sim-{i}")[1] for i in range(n)]
            self.admin = store.create_labeler(session, name="boss", role="admin")[1]
        self.counts: list[int] = [0] * n
        self.threads = [threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(n)]

    def _work(self, i: int) -> None:
        client = TestClient(self.app, headers={"Authorization": f"Bearer {self.tokens[i]}"})
        cfg = WorkerConfig(run=RUN, labeler=self.labeler, max_labels=self.max_labels, seed=i, idle_timeout=240, min_pause=0.05, max_pause=0.5)
        self.counts[i] = run_worker(client, cfg, log=lambda _: None)

    def start(self) -> "Workers":
        for t in self.threads:
            t.start()
        return self

    def join(self) -> None:
        for t in self.threads:
            t.join(timeout=60)
            assert not t.is_alive(), "a label worker did not exit after the run finished"

    def session(self):
        return store.transaction(self.app.state.sessions)


def _config(tmp_path, **overrides):
    return make_config("test", "tiny", {**BASE, "run_dir": str(tmp_path / "run"), **overrides})


def _batch_tasks(w: Workers) -> Counter:
    with w.session() as s:
        run = store.get_run(s, name=RUN)
        return Counter({b.name: store.progress(s, run=RUN, batch=b.name).tasks for b in run.batches})


# ---------------------------------------------------------------------------------------------
# Pure schedule and guard functions, with literal numbers


def test_label_schedule_front_loads_and_ends_at_total():
    t = label_schedule(1000, 20, 0.5)
    assert len(t) == 20 and t[-1] == 1000 and all(b > a for a, b in zip(t, t[1:]))
    assert t[0] == round(1000 * 0.05**0.5)  # 224: a fifth of the labels before the first PPO update
    assert t[1] - t[0] > t[-1] - t[-2]  # front-loaded
    assert label_schedule(3, 3, 0.5) == [1, 2, 3]  # every round gets at least one
    assert label_schedule(10, 1, 0.5) == [10]
    assert segment_ends(10, 4) == [2, 5, 8, 10] and segment_ends(2, 1) == [2]


def test_guards_with_literal_numbers():
    assert reward_guard(0.70, 0.25, 100, 0.0) is None
    flipped = reward_guard(0.05, 0.25, 100, 0.0)
    assert flipped and "flipped" in flipped and "PPO was not started" in flipped
    assert reward_guard(0.30, 0.25, 100, 0.1) and "flipped" not in reward_guard(0.30, 0.25, 100, 0.1)
    assert reward_guard(0.0, 0.25, 100, -1) is None  # off
    rounds = [{"round": 1, "n_validation": 20, "win_rate": 0.7, "policy_score": 0.5},
              {"round": 2, "n_validation": 20, "win_rate": 0.4, "policy_score": 1.5}]
    assert "reward hacking" in hacking_guard(rounds, 0.1, 10)
    assert hacking_guard(rounds, 0.5, 10) is None  # the drop is within tolerance
    assert hacking_guard(rounds, 0.1, 30) is None  # too few validation labels to judge
    assert hacking_guard([rounds[0], {**rounds[1], "policy_score": 0.4}], 0.1, 10) is None  # reward fell too: not hacking
    assert kl_guard(19.0, 6.0, 3.0) and kl_guard(17.0, 6.0, 3.0) is None and kl_guard(100.0, 6.0, 0) is None
    rows = [{"kind": "validation", "policies": ["ref:m", "policy:u1"], "best": 1, "tie": False},
            {"kind": "validation", "policies": ["ref:m", "policy:u1"], "best": 0, "tie": False},
            {"kind": "validation", "policies": ["ref:m", "policy:u1"], "best": -1, "tie": True},
            {"policies": ["policy:u1", "policy:u1"], "best": 0, "tie": False}]  # not a validation task
    assert validation_win_rate(rows) == (0.5, 3)


# ---------------------------------------------------------------------------------------------
# End to end


def test_online_run_with_label_workers(tmp_path):
    w = Workers(tmp_path, n=2).start()
    cfg = _config(tmp_path, **{"experiment.mode": "online", "experiment.rounds": 2, "experiment.validation_share": 0.5})
    run_experiment(cfg, db=w.db)
    w.join()
    run_dir = cfg.resolved_run_dir()
    state = json.loads((run_dir / "experiment.json").read_text())
    assert state["finished"] and [r["round"] for r in state["rounds"]] == [0, 1]
    assert _batch_tasks(w) == {"round-000": 11, "round-001": 5}  # label_schedule(16, 2, 0.5)
    with w.session() as s:
        p = store.progress(s, run=RUN)
        assert p.queue_depth == 0 and p.labels == p.tasks == 16 == sum(w.counts)
    assert state["rounds"][0]["labels"] == 11 and state["rounds"][1]["labels"] == 16  # retrained on all labels so far
    val = [rec for _, rec in read_jsonl(run_dir / "rounds/round-001/samples.jsonl") if rec.get("kind") == "validation"]
    assert len(val) == 2 and all(sorted(Counter(p.split(":")[0] for p in rec["policies"]).values()) == [2, 2] for rec in val)
    assert state["rounds"][1]["n_validation"] == 2 and 0 <= state["rounds"][1]["win_rate"] <= 1
    assert state["rounds"][1]["policy_update"] == 1  # online: round 1 was sampled from the policy after round 0's PPO
    assert (run_dir / "reward_models/round-001/config.json").exists() and (run_dir / "policy/config.json").exists()
    assert [m["step"] for _, m in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2]

    # The status page and its JSON: authenticated users only.
    assert TestClient(w.app).get(f"/api/runs/{RUN}/status").status_code == 401
    st = TestClient(w.app, headers={"Authorization": f"Bearer {w.tokens[0]}"}).get(f"/api/runs/{RUN}/status").json()
    assert st["experiment"]["finished"] and st["experiment"]["mode"] == "online" and st["progress"]["labels"] == 16
    assert [len(st["experiment"]["curves"][k]) for k in ("objective/scores", "objective/kl")] == [2, 2]
    browser = TestClient(w.app)
    assert browser.get(f"/runs/{RUN}/status", follow_redirects=False).status_code == 303  # to /login
    login = browser.get("/login")
    csrf = login.text.split('name="csrf" value="')[1].split('"')[0]
    browser.post("/login", data={"token": w.tokens[0], "csrf": csrf}, follow_redirects=False)
    page = browser.get(f"/runs/{RUN}/status")
    assert page.status_code == 200 and "online" in page.text and "<polyline" in page.text and "round-001" in page.text


def test_batched_run_then_andon_halts_ppo_within_one_update(tmp_path, monkeypatch):
    import lmpref.experiment as experiment

    w = Workers(tmp_path).start()
    cfg = _config(tmp_path, **{"experiment.mode": "batched", "experiment.rounds": 2, "ppo.total_episodes": 64})  # 4 updates, 2 a round
    # A person pulls the cord during round 1's PPO, as its first update (update 3) ends.
    real_rows, pulled = experiment._metrics_rows, {}

    def rows_then_pull(run_dir):
        rows = real_rows(run_dir)
        if len(rows) == 3 and not pulled:
            with w.session() as s:
                pulled["id"] = store.pull_andon(s, reason="samples look broken", run=RUN, labeler=store.get_labeler(s, name="sim-0")).id
        return rows

    monkeypatch.setattr(experiment, "_metrics_rows", rows_then_pull)
    result = run_experiment(cfg, db=w.db)
    monkeypatch.setattr(experiment, "_metrics_rows", real_rows)
    run_dir = cfg.resolved_run_dir()
    assert "pulled by sim-0" in result["stopped"] and "samples look broken" in result["stopped"]
    steps = [m["step"] for _, m in read_jsonl(run_dir / "metrics.jsonl")]
    assert steps == [1, 2, 3]  # halted before update 4: within one update of the pull
    assert json.loads((run_dir / "checkpoints/update-000003/state.json").read_text())["update"] == 3
    assert not (run_dir / "policy").exists()
    # Batched: round 1's samples came from the policy after round 0's PPO (2 updates), and PPO
    # waited for them.
    assert _batch_tasks(w) == {"round-000": 11, "round-001": 5}
    state = json.loads((run_dir / "experiment.json").read_text())
    assert state["halted"]["round"] == 1 and state["rounds"][1]["policy_update"] == 2
    # Resuming while the event is open stops again at once; once an admin clears it, the run finishes.
    assert "stopped" in run_experiment(cfg, db=w.db, resume=True)
    with w.session() as s:
        store.clear_andon(s, event_id=pulled["id"], note="looked fine")
    run_experiment(cfg, db=w.db, resume=True)
    w.join()
    assert [m["step"] for _, m in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3, 4]
    assert json.loads((run_dir / "experiment.json").read_text())["finished"]


def _labels(w: Workers) -> int:
    with w.session() as s:
        return store.progress(s, run=RUN).labels


def test_killed_anywhere_resumes_without_losing_labels_or_duplicating_tasks(tmp_path):
    """SIGKILL the loop (a subprocess) while sampling, waiting, training the reward model and in
    PPO; each resume must keep every label, add no task twice and repeat at most one update."""
    w = Workers(tmp_path)
    run_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "lmpref.cli", "experiment", "--preset", "test", "--scale", "tiny", "--mode", "batched",
            "--db", w.db, "--run-dir", str(run_dir), "--set", "ppo.total_episodes=64"]  # 4 updates, 2 a round
    for k, v in {**BASE, "experiment.rounds": 2}.items():
        argv += ["--set", f"{k}={v}"]

    def loop(kill_at: str | None, resume: bool = True) -> int:
        env = {**os.environ, "LMPREF_TEST_KILL_AT": kill_at or ""}
        return subprocess.run(argv + (["--resume"] if resume else []), env=env, capture_output=True, text=True, timeout=300).returncode

    assert loop("sampled:0", resume=False) == -9  # samples written, nothing enqueued yet
    assert (run_dir / "rounds/round-000/samples.jsonl").exists() and _batch_tasks(w) == {}
    assert loop("waiting:0") == -9  # enqueued, no labeler yet
    assert _batch_tasks(w) == {"round-000": 11}
    w.start()
    assert loop("reward:0") == -9  # labeled, reward model trained, killed before its state was saved
    labels_before = _labels(w)
    assert labels_before == 11 and (run_dir / "reward_models/round-000/config.json").exists()
    assert loop("ppo:1") == -9  # round 1: sampled from the policy, labeled, retrained; killed after update 3
    assert _labels(w) >= labels_before and _batch_tasks(w) == {"round-000": 11, "round-001": 5}
    assert [m["step"] for _, m in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3]
    assert loop(None) == 0
    w.join()
    steps = Counter(m["step"] for _, m in read_jsonl(run_dir / "metrics.jsonl"))
    assert sorted(steps) == [1, 2, 3, 4] and max(steps.values()) <= 2  # at most one update repeated
    assert _batch_tasks(w) == {"round-000": 11, "round-001": 5}  # no task twice
    with w.session() as s:
        p = store.progress(s, run=RUN)
        assert p.labels == p.tasks == 16 == sum(w.counts) and p.queue_depth == 0  # every label kept
    state = json.loads((run_dir / "experiment.json").read_text())
    assert state["finished"] and state["rounds"][1]["labels"] == 16 and (run_dir / "policy/config.json").exists()


def test_flipped_reward_sign_is_caught_before_ppo(tmp_path, monkeypatch):
    """Labels come from an oracle that *is* the reward model the loop starts from (same trunk, same
    seeded head; trained with lr ~0 it stays that model), so the reward model agrees with its
    labelers. A sign bug negates its gain on save: the guard must stop the run before any PPO."""
    from lmpref import labelers
    from lmpref.experiment_guards import heldout_accuracy
    from lmpref.models import RewardModel, load_tokenizer

    tok = load_tokenizer("tiny-gpt2")
    torch.manual_seed(0)  # as `runtime.setup` seeds it before the loop builds its reward model
    oracle = RewardModel.from_lm("tiny-gpt2").eval()

    class Oracle:
        name = "oracle"

        def score(self, query, response, *, reference=None):
            ids = tok.encode(query) + tok.encode(response)
            with torch.no_grad():
                return oracle.raw(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), torch.tensor([len(ids) - 1])).item()

    monkeypatch.setitem(labelers.LABELERS, "oracle", Oracle)
    real = RewardModel.set_normalization
    monkeypatch.setattr(RewardModel, "set_normalization", lambda self, gain, bias: real(self, -gain, -bias))  # the bug
    w = Workers(tmp_path, labeler="oracle", max_labels=32).start()  # the run halts: the worker stops at 32
    cfg = _config(tmp_path, **{"experiment.reward_guard_margin": 0.0, "reward.lr": 1e-12, "sample.num_queries": 32, "experiment.poll_seconds": 0.5})
    result = run_experiment(cfg, db=w.db)
    run_dir = cfg.resolved_run_dir()
    assert "guard:" in result["stopped"] and "flipped" in result["stopped"] and "automatic guard" in result["stopped"]
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.jsonl").exists()  # PPO never started
    with w.session() as s:
        (event,) = store.open_andon_events(s, run=RUN)
        assert event.pulled_by is None and "flipped" in event.reason
    # Control: the same model with the sign put right beats chance on the same held-out labels.
    monkeypatch.undo()
    rm = RewardModel.load(run_dir / "reward_models/round-000")
    rm.set_normalization(-float(rm.gain), -float(rm.bias))
    rm.save(tmp_path / "fixed")
    tok.save_pretrained(tmp_path / "fixed")
    acc, chance, n = heldout_accuracy(tmp_path / "fixed", run_dir / "rounds/round-000/labels.jsonl", cfg.reward.holdout_fraction, cfg.seed)
    assert n == 8 and acc > chance + 0.25
    flipped = json.loads((run_dir / "experiment.json").read_text())["rounds"][0]
    assert flipped["rm_accuracy"] < flipped["chance"]
