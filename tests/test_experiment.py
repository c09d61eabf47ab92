"""The experiment loop end to end on CPU with tiny-gpt2: online and batched runs labeled by
programmatic label workers through the JSON API, online collection that does not stall PPO, a run
killed at several points (one of them in the middle of a PPO update) and resumed, a flipped reward
sign caught before PPO, and the Andon cord halting PPO within one update. The automatic guards
tripping inside a run: tests/test_experiment_guards.py.

The loop itself runs in process (fast), except in the kill tests, which must SIGKILL it.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from fastapi.testclient import TestClient

from experiment_fixtures import (  # noqa: F401 (tiny_env: autouse)
    RUN,
    Workers,
    batch_tasks,
    checkpoint_state,
    cord_pulled,
    experiment_argv,
    killed_loop,
    labels_given,
    metric_steps,
    tiny_config,
    tiny_env,
)
from lmpref import store
from lmpref.config import ConfigError, make_config
from lmpref.io import read_jsonl
from lmpref.loop.experiment import run_experiment
from lmpref.loop.schedule import batch_round, enqueue_interval, label_schedule, online_batch, online_plan, segment_ends
from lmpref.steps.guards import hacking_guard, kl_guard, reward_guard, validation_win_rate

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
    rounds = [
        {"round": 1, "n_validation": 20, "win_rate": 0.7, "policy_score": 0.5},
        {"round": 2, "n_validation": 20, "win_rate": 0.4, "policy_score": 1.5},
    ]
    assert "reward hacking" in hacking_guard(rounds, 0.1, 10)
    assert hacking_guard(rounds, 0.5, 10) is None  # the drop is within tolerance
    assert hacking_guard(rounds, 0.1, 30) is None  # too few validation labels to judge
    assert (
        hacking_guard([rounds[0], {**rounds[1], "policy_score": 0.4}], 0.1, 10) is None
    )  # reward fell too: not hacking
    assert kl_guard(19.0, 6.0, 3.0) and kl_guard(17.0, 6.0, 3.0) is None and kl_guard(100.0, 6.0, 0) is None
    rows = [
        {"kind": "validation", "policies": ["ref:m", "policy:u1"], "best": 1, "tie": False},
        {"kind": "validation", "policies": ["ref:m", "policy:u1"], "best": 0, "tie": False},
        {"kind": "validation", "policies": ["ref:m", "policy:u1"], "best": -1, "tie": True},
        {"policies": ["policy:u1", "policy:u1"], "best": 0, "tie": False},
    ]  # not a validation task
    assert validation_win_rate(rows) == (0.5, 3)


def test_online_plan_splits_a_round_across_updates():
    # 5 comparisons (2 of them validation) over updates 1-2, after every update: 2 + 3, cumulative rounding
    assert online_plan(0, 2, 1, 5, 0.5) == [(1, 2, 1), (2, 3, 1)]
    assert online_plan(0, 10, 3, 7, 0.25) == [(3, 2, 0), (6, 3, 1), (9, 2, 1)]  # update 10: next segment's first
    assert online_plan(0, 4, 1, 2, 0.5) == [
        (2, 1, 0),
        (3, 1, 1),
    ]  # fewer comparisons than updates: empty points dropped
    assert online_plan(0, 2, 5, 4, 0.5) == [(2, 4, 2)]  # interval longer than the segment: once, at its end
    assert online_plan(3, 3, 1, 4, 0.0) == [(3, 4, 0)]  # an empty segment: at its start
    for every, n, share in [(1, 37, 0.25), (2, 5, 0.5), (7, 100, 0.3), (1, 3, 0.9)]:
        plan = online_plan(10, 30, every, n, share)
        assert sum(x[1] for x in plan) == n and sum(x[2] for x in plan) == round(n * share)
        assert all(0 <= v <= c for _, c, v in plan) and all(10 < u <= 30 for u, _, _ in plan)
    assert enqueue_interval(4, 98, 200, 16) == 4  # set: kept
    assert enqueue_interval(0, 98, 200, 16) == 7  # derived: about 16 comparisons (one generation batch) an enqueue
    assert (
        enqueue_interval(0, 2, 5, 4) == 1 and enqueue_interval(0, 1, 1, 16) == 1
    )  # never less often than once a segment
    assert online_batch(3, 42) == "round-003-u000042" and batch_round("round-003-u000042") == 3
    assert batch_round("round-012") == 12 and batch_round("final-eval") is None and batch_round("round-001x") is None
    with pytest.raises(ConfigError, match="enqueue_every"):
        make_config("test", "tiny", {"experiment.enqueue_every": -1})


# ---------------------------------------------------------------------------------------------
# End to end


def test_online_collects_while_ppo_runs_and_does_not_wait_for_fresh_labels(tmp_path):
    """3 rounds, 3 updates (one a round), a batch after every update. Worker 0 labels rho's batch
    alone; then both workers hold off until update 2 is logged, as a pool that has fallen behind.
    Retrain 1 must not wait for round 1's batch (sampled after update 1), the last retrain must."""
    run_dir = tmp_path / "run"

    def update_2_logged() -> bool:
        return (run_dir / "metrics.jsonl").exists() and len(list(read_jsonl(run_dir / "metrics.jsonl"))) >= 2

    w = Workers(tmp_path, n=2, first=9, release=update_2_logged).start()
    cfg = tiny_config(
        tmp_path,
        **{
            "experiment.mode": "online",
            "experiment.rounds": 3,
            "experiment.validation_share": 0.5,
            "experiment.enqueue_every": 1,
            "ppo.total_episodes": 48,
        },
    )
    run_experiment(cfg, db=w.db)
    w.join()
    state = json.loads((run_dir / "experiment.json").read_text())
    assert state["finished"] and [r["round"] for r in state["rounds"]] == [0, 1, 2]
    # label_schedule(16, 3, 0.5) = [9, 13, 16]: rho's 9, then 4 sampled after update 1 and 3 after update 2
    assert batch_tasks(w) == {"round-000": 9, "round-001-u000001": 4, "round-002-u000002": 3}
    assert [r["labels"] for r in state["rounds"]] == [
        9,
        9,
        16,
    ]  # retrain 1 went on without round 1's labels; the last waited
    assert [r.get("policy_update") for r in state["rounds"]] == [None, 1, 2]
    with w.session() as s:
        p = store.progress(s, run=RUN)
        assert p.queue_depth == 0 and p.labels == p.tasks == 16 == sum(w.counts) and w.counts[0] >= 9
    for r, path in [(1, "rounds/round-001/samples-u000001.jsonl"), (2, "rounds/round-002/samples-u000002.jsonl")]:
        val = [rec for _, rec in read_jsonl(run_dir / path) if rec.get("kind") == "validation"]
        assert len(val) == 2 and all(
            sorted(Counter(p.split(":")[0] for p in rec["policies"]).values()) == [2, 2] for rec in val
        )
        assert (
            state["rounds"][r]["n_validation"] == 2 and 0 <= state["rounds"][r]["win_rate"] <= 1
        )  # round 1's: counted once its labels came in
    assert (run_dir / "reward_models/round-002/config.json").exists() and (run_dir / "policy/config.json").exists()
    assert [m["step"] for _, m in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3]

    # The status page and its JSON: authenticated users only.
    assert TestClient(w.app).get(f"/api/runs/{RUN}/status").status_code == 401
    st = TestClient(w.app, headers={"Authorization": f"Bearer {w.tokens[0]}"}).get(f"/api/runs/{RUN}/status").json()
    assert st["experiment"]["finished"] and st["experiment"]["mode"] == "online" and st["progress"]["labels"] == 16
    assert [len(st["experiment"]["curves"][k]) for k in ("objective/scores", "objective/kl")] == [3, 3]
    browser = TestClient(w.app)
    assert browser.get(f"/runs/{RUN}/status", follow_redirects=False).status_code == 303  # to /login
    login = browser.get("/login")
    csrf = login.text.split('name="csrf" value="')[1].split('"')[0]
    browser.post("/login", data={"token": w.tokens[0], "csrf": csrf}, follow_redirects=False)
    page = browser.get(f"/runs/{RUN}/status")
    assert (
        page.status_code == 200
        and "online" in page.text
        and "<polyline" in page.text
        and "round-002-u000002" in page.text
    )


def test_batched_run_then_andon_halts_ppo_within_one_update(tmp_path):
    w = Workers(tmp_path).start()
    cfg = tiny_config(
        tmp_path, **{"experiment.mode": "batched", "experiment.rounds": 2, "ppo.total_episodes": 64}
    )  # 4 updates, 2 a round
    # A person pulls the cord during round 1's PPO, as its first update (update 3) ends.
    with cord_pulled(w, "update", 3) as pulled:
        result = run_experiment(cfg, db=w.db)
    run_dir = cfg.resolved_run_dir()
    assert "pulled by sim-0" in result["stopped"] and "samples look broken" in result["stopped"]
    steps = [m["step"] for _, m in read_jsonl(run_dir / "metrics.jsonl")]
    assert steps == [1, 2, 3]  # halted before update 4: within one update of the pull
    assert json.loads((run_dir / "checkpoints/update-000003/state.json").read_text())["update"] == 3
    assert not (run_dir / "policy").exists()
    # Batched: round 1's samples came from the policy after round 0's PPO (2 updates), and PPO
    # waited for them.
    assert batch_tasks(w) == {"round-000": 11, "round-001": 5}
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


def test_killed_anywhere_resumes_without_losing_labels_or_duplicating_tasks(tmp_path):
    """SIGKILL the loop (a subprocess) of an online run (4 updates, 2 a round, a batch after every
    update) while sampling, waiting, training the reward model, in the middle of a PPO update (its
    metrics row written, its checkpoint not), between an update's checkpoint and its batch, and
    between updates. Each resume must keep every label and add no task twice; the run must end with
    4 updates, contiguous steps, the killed update repeated once and identically, and every planned
    batch enqueued exactly once."""
    w = Workers(tmp_path)
    run_dir = tmp_path / "run"
    loop = killed_loop(
        experiment_argv(
            w, run_dir, "online", {"experiment.rounds": 2, "experiment.enqueue_every": 1, "ppo.total_episodes": 64}
        )
    )

    def steps() -> list[int]:
        return metric_steps(run_dir)

    def checkpoint() -> int:
        return checkpoint_state(run_dir)["update"]

    assert loop("sampled:0", resume=False) == -9  # samples written, nothing enqueued yet
    assert (run_dir / "rounds/round-000/samples.jsonl").exists() and batch_tasks(w) == {}
    assert loop("waiting:0") == -9  # enqueued, no labeler yet
    assert batch_tasks(w) == {"round-000": 11}  # label_schedule(16, 2, 0.5) = [11, 16]
    w.start()
    assert loop("reward:0") == -9  # labeled, reward model trained, killed before its state was saved
    labels_before = labels_given(w)
    assert labels_before == 11 and (run_dir / "reward_models/round-000/config.json").exists()
    assert loop("update:2") == -9  # update 1, its batch (2 of round 1's 5 comparisons), update 2 logged: killed
    assert steps() == [1, 2] and checkpoint() == 1
    assert batch_tasks(w) == {"round-000": 11, "round-001-u000001": 2}
    assert loop("online:2") == -9  # update 2 again, checkpointed; killed before its batch was sampled
    assert (
        steps() == [1, 2, 2] and checkpoint() == 2 and not (run_dir / "rounds/round-001/samples-u000002.jsonl").exists()
    )
    assert batch_tasks(w) == {"round-000": 11, "round-001-u000001": 2}
    assert loop("ppo:1") == -9  # update 2's batch enqueued on resuming, round 1 retrained on all; killed after update 3
    assert steps() == [1, 2, 2, 3] and checkpoint() == 3 and labels_given(w) >= labels_before
    assert loop(None) == 0
    w.join()
    assert steps() == [1, 2, 2, 3, 4]  # contiguous; only the update killed in the middle was repeated
    twice = [m for _, m in read_jsonl(run_dir / "metrics.jsonl") if m["step"] == 2]
    for key in ("objective/scores", "objective/kl", "objective/kl_coef", "ppo/loss/policy", "ppo/loss/value"):
        assert twice[0][key] == twice[1][key], key  # the repeated update is the same update
    assert batch_tasks(w) == {
        "round-000": 11,
        "round-001-u000001": 2,
        "round-001-u000002": 3,
    }  # none dropped, none twice
    with w.session() as s:
        p = store.progress(s, run=RUN)
        assert p.labels == p.tasks == 16 == sum(w.counts) and p.queue_depth == 0  # every label kept
    state = json.loads((run_dir / "experiment.json").read_text())
    assert state["finished"] and state["rounds"][1]["labels"] == 16 and state["rounds"][1]["policy_update"] == 2
    assert state["rounds"][1]["batches"] == {"round-001-u000001": 2, "round-001-u000002": 3}
    assert (run_dir / "policy/config.json").exists()


def test_batched_run_killed_between_rounds_resumes_exactly(tmp_path):
    """SIGKILL a batched run (2 rounds, 2 updates each) after round 1's samples are drawn from the
    round-0 policy but not enqueued, after they are enqueued, after round 1's reward model is trained,
    and between round 1's updates. The samples drawn before a kill are the ones enqueued after it,
    every batch is enqueued once, every label kept, and no update runs twice."""
    w = Workers(tmp_path).start()
    run_dir = tmp_path / "run"
    loop = killed_loop(experiment_argv(w, run_dir, "batched", {"experiment.rounds": 2, "ppo.total_episodes": 64}))

    def steps() -> list[int]:
        return metric_steps(run_dir)

    samples = run_dir / "rounds/round-001/samples.jsonl"
    assert loop("sampled:1", resume=False) == -9  # round 0 labeled and trained on, 2 updates, round 1 sampled
    assert steps() == [1, 2] and batch_tasks(w) == {"round-000": 11}
    drawn = samples.read_bytes()
    assert "policy:update-000002" in drawn.decode()  # drawn from the policy after round 0's PPO
    assert loop("enqueued:1") == -9
    assert samples.read_bytes() == drawn and batch_tasks(w) == {"round-000": 11, "round-001": 5}
    assert loop("reward:1") == -9  # waited for round 1's labels, trained its reward model
    assert (run_dir / "reward_models/round-001/config.json").exists() and steps() == [1, 2]
    assert loop("ppo:1") == -9  # killed after update 3, between round 1's updates
    assert steps() == [1, 2, 3]
    assert loop(None) == 0
    w.join()
    assert steps() == [1, 2, 3, 4]  # nothing repeated: every kill fell between whole steps
    assert samples.read_bytes() == drawn and batch_tasks(w) == {"round-000": 11, "round-001": 5}
    with w.session() as s:
        p = store.progress(s, run=RUN)
        assert p.labels == p.tasks == 16 == sum(w.counts) and p.queue_depth == 0
    state = json.loads((run_dir / "experiment.json").read_text())
    assert state["finished"] and state["rounds"][1]["policy_update"] == 2 and state["rounds"][1]["labels"] == 16
    assert (run_dir / "policy/config.json").exists()


def test_flipped_reward_sign_is_caught_before_ppo(tmp_path, monkeypatch):
    """Labels come from an oracle that *is* the reward model the loop starts from (same trunk, same
    seeded head; trained with lr ~0 it stays that model), so the reward model agrees with its
    labelers. A sign bug negates its gain on save: the guard must stop the run before any PPO."""
    from lmpref.core.loading import load_tokenizer
    from lmpref.core.reward import RewardModel
    from lmpref.eval import labelers
    from lmpref.steps.guards import heldout_accuracy

    tok = load_tokenizer("tiny-gpt2")
    torch.manual_seed(0)  # as `runtime.setup` seeds it before the loop builds its reward model
    oracle = RewardModel.from_lm("tiny-gpt2").eval()

    class Oracle:
        name = "oracle"

        def score(self, query, response, *, reference=None):
            ids = tok.encode(query) + tok.encode(response)
            with torch.no_grad():
                return oracle.raw(
                    torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), torch.tensor([len(ids) - 1])
                ).item()

    monkeypatch.setitem(labelers.LABELERS, "oracle", Oracle)
    real = RewardModel.set_normalization
    monkeypatch.setattr(RewardModel, "set_normalization", lambda self, gain, bias: real(self, -gain, -bias))  # the bug
    w = Workers(tmp_path, labeler="oracle", max_labels=32).start()  # the run halts: the worker stops at 32
    cfg = tiny_config(
        tmp_path,
        **{
            "experiment.reward_guard_margin": 0.0,
            "reward.lr": 1e-12,
            "sample.num_queries": 32,
            "experiment.poll_seconds": 0.5,
        },
    )
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
    acc, chance, n = heldout_accuracy(
        tmp_path / "fixed", run_dir / "rounds/round-000/labels.jsonl", cfg.reward.holdout_fraction, cfg.seed
    )
    assert n == 8 and acc > chance + 0.25
    flipped = json.loads((run_dir / "experiment.json").read_text())["rounds"][0]
    assert flipped["rm_accuracy"] < flipped["chance"]
