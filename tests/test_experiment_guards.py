"""The automatic guards tripping inside a run of the experiment loop (tiny-gpt2 on CPU), each with a
control in which the same guard stays quiet. The guards as pure functions of literal numbers are
tested in tests/test_experiment.py.
"""

from __future__ import annotations

import json
import threading
import time

from experiment_fixtures import RUN, Workers, tiny_config, tiny_env  # noqa: F401 (tiny_env: autouse)
from lmpref import store
from lmpref.io import read_jsonl
from lmpref.loop.experiment import run_experiment
from lmpref.loop.schedule import batch_round


def _steps(run_dir) -> list[dict]:
    return [m for _, m in read_jsonl(run_dir / "metrics.jsonl")]


def test_kl_guard_halts_a_run_that_runs_off_and_not_with_the_guard_off(tmp_path):
    """Offline, 4 updates at a learning rate 1000x too high: the policy runs off from rho at once.
    Update 1's rollout is rho itself (KL 0); update 2's (about 0.6 nats) is far above 3 x a 0.05-nat
    target, so the guard must pull the cord right after update 2. Control: once an admin clears the
    event, the run resumed with the guard off finishes, its KL (0.3-0.4) staying above the limit the
    guard would have used. (At the preset's learning rate the KL stays under 0.01.)"""
    w = Workers(tmp_path).start()
    limit = {"ppo.kl_target": 0.05, "experiment.kl_guard_factor": 3.0}  # 0.15 nats
    cfg = tiny_config(tmp_path, **{"ppo.total_episodes": 64, "ppo.lr": 1e-2, **limit})
    result = run_experiment(cfg, db=w.db)
    run_dir = cfg.resolved_run_dir()
    assert "guard: KL(pi || rho)" in result["stopped"] and "3 x the target 0.05" in result["stopped"]
    assert "automatic guard" in result["stopped"]
    steps = _steps(run_dir)
    assert [m["step"] for m in steps] == [1, 2]  # halted at the first update past the limit
    assert steps[0]["objective/kl"] <= 0.15 < steps[1]["objective/kl"]
    assert json.loads((run_dir / "checkpoints/update-000002/state.json").read_text())["update"] == 2
    assert not (run_dir / "policy").exists()
    state = json.loads((run_dir / "experiment.json").read_text())
    assert state["halted"]["round"] == 0 and "KL" in state["halted"]["reason"] and not state["halted"]["guard"]
    with w.session() as s:
        (event,) = store.open_andon_events(s, run=RUN)
        assert event.pulled_by is None and event.reason.startswith("guard: KL(pi || rho)")
        store.clear_andon(s, event_id=event.id, note="control: go on with the guard off")

    control = tiny_config(
        tmp_path, **{"ppo.total_episodes": 64, "ppo.lr": 1e-2, **limit, "experiment.kl_guard_factor": 0}
    )
    assert "stopped" not in run_experiment(control, db=w.db, resume=True)
    w.join()
    steps = _steps(run_dir)
    assert [m["step"] for m in steps] == [1, 2, 3, 4] and all(m["objective/kl"] > 0.15 for m in steps[2:])
    assert (
        json.loads((run_dir / "experiment.json").read_text())["finished"] and (run_dir / "policy/config.json").exists()
    )
    with w.session() as s:
        assert store.open_andon_events(s, run=RUN) == []


class RoundLabeler:
    """Labels in the store directly, seeing which policy wrote each sample (a person cannot): on a
    validation comparison it picks the policy's sample in rounds listed in `prefer_policy`, rho's in
    the others; on any other comparison, the first sample. Stops when `stop` is set."""

    def __init__(self, w: Workers, prefer_policy: set[int]):
        self.w, self.prefer_policy, self.stop = w, prefer_policy, threading.Event()
        self.thread = threading.Thread(target=self._work, daemon=True)

    def _work(self) -> None:
        while not self.stop.is_set():
            with self.w.session() as s:
                labeler = store.get_labeler(s, name="sim-0")
                try:
                    served = store.next_task(s, labeler=labeler, run=RUN)
                except store.NotFound:  # the run is not in the store yet
                    served = None
                if served is not None:
                    want = "policy:" if batch_round(served.task.query.batch.name) in self.prefer_policy else "ref:"
                    best = next((i for i, x in enumerate(served.samples) if x.policy.startswith(want)), 0)
                    store.save_label(s, labeler=labeler, task_id=served.task.id, best=best)
                    continue
            time.sleep(0.05)

    def __enter__(self) -> RoundLabeler:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def test_reward_hacking_guard_halts_when_reward_rises_while_labelers_turn_away(tmp_path, monkeypatch):
    """Batched, 4 rounds of one update. Each retrain's reward model scores every sample 10 higher than
    the last (its normalisation drifts), so the policy's mean reward rises every round. The labelers
    prefer the policy over rho in rounds 1 and 2 and rho in round 3. Control inside the run: at retrain
    2 the reward rose but the win rate held (100% -> 100%): no halt. At retrain 3 the win rate fell
    (100% -> 0%): the guard must pull the cord before update 4."""
    import lmpref.core.reward as reward

    real_normalize, calls = reward.normalize, []

    def drifting(rm, pairs, pad_id, batch_size=32):
        out = real_normalize(rm, pairs, pad_id, batch_size)
        calls.append(1)
        rm.set_normalization(float(rm.gain), float(rm.bias) + 5.0 * len(calls))  # twice a retrain: +10 a retrain
        return out

    monkeypatch.setattr(reward, "normalize", drifting)
    w = Workers(tmp_path)
    cfg = tiny_config(
        tmp_path,
        **{
            "experiment.mode": "batched",
            "experiment.rounds": 4,
            "ppo.total_episodes": 64,
            "experiment.validation_share": 0.5,
            "experiment.min_validation_labels": 1,
            "experiment.hacking_win_drop": 0.1,
        },
    )
    with RoundLabeler(w, prefer_policy={1, 2}):
        result = run_experiment(cfg, db=w.db)
    run_dir = cfg.resolved_run_dir()
    assert (
        "reward hacking" in result["stopped"]
        and "rounds 2 -> 3" in result["stopped"]
        and "automatic guard" in result["stopped"]
    )
    assert [m["step"] for m in _steps(run_dir)] == [1, 2, 3]  # halted after retrain 3, before update 4
    state = json.loads((run_dir / "experiment.json").read_text())
    rounds = state["rounds"]
    assert state["halted"]["round"] == 3 and state["halted"]["guard"]
    assert [r.get("win_rate") for r in rounds] == [None, 1.0, 1.0, 0.0] and [r.get("n_validation") for r in rounds] == [
        0,
        2,
        2,
        1,
    ]
    assert (
        rounds[1]["policy_score"] < rounds[2]["policy_score"] < rounds[3]["policy_score"]
    )  # the reward rose every round
    assert [r.get("rm_accuracy") is not None for r in rounds] == [True] * 4 and "ppo_update" in rounds[
        2
    ]  # retrain 2 let PPO on
    with w.session() as s:
        (event,) = store.open_andon_events(s, run=RUN)
        assert event.pulled_by is None and "reward hacking" in event.reason


GOLD_RESPONSES = [
    " and it was a wonderful, happy day for all of them.",
    " and nothing much happened after that.",
    " and it was a dreadful, miserable, hateful night.",
    " and the weather was fine, which was nice.",
]


class InvertedSentiment:
    """A labeler who picks the worst: the negated VADER score."""

    name = "inverted"

    def __init__(self) -> None:
        from lmpref.eval.labelers import SentimentLabeler

        self._inner = SentimentLabeler()

    def score(self, query: str, response: str, *, reference: str | None = None) -> float:
        return -self._inner.score(query, response)


def _gold_run(tmp_path, monkeypatch, labeler: str) -> tuple[dict, Workers]:
    """The offline experiment with 16 gold tasks in the store run (served at rate 0.9, so they come
    before most of round 0's comparisons), labeled by `labeler` through the web app."""
    from lmpref.eval import labelers
    from lmpref.eval.labelers import SentimentLabeler

    monkeypatch.setitem(labelers.LABELERS, "inverted", InvertedSentiment)
    vader = SentimentLabeler()
    best = max(range(4), key=lambda i: vader.score("", GOLD_RESPONSES[i]))
    assert best == 0
    gold = [
        {"id": f"gold-{i}", "query": f"Gold passage {i}: they walked home", "responses": GOLD_RESPONSES, "best": best}
        for i in range(16)
    ]
    w = Workers(tmp_path, labeler=labeler)
    with w.session() as s:
        store.enqueue(s, run=RUN, records=gold, batch="gold", gold=True, gold_rate=0.9)
    w.start()
    cfg = tiny_config(tmp_path, **{"ppo.total_episodes": 64, "experiment.min_validation_labels": 12})
    return run_experiment(cfg, db=w.db), w


def test_gold_guard_halts_a_run_whose_labeler_picks_the_worst(tmp_path, monkeypatch):
    """A labeler who picks the worst of four on every task: the reward model trained on those labels
    agrees with its own held-out labels, so only the known answers show it. After round 0's reward
    model the gold guard must stop the run before PPO, naming the labeler."""
    result, w = _gold_run(tmp_path, monkeypatch, "inverted")
    assert "guard: labeler sim-0 picks the known best on 0.0%" in result["stopped"]
    assert "below chance 25.0%" in result["stopped"] and "automatic guard" in result["stopped"]
    run_dir = tmp_path / "run"
    assert not (run_dir / "checkpoints").exists()  # PPO never started
    with w.session() as s:
        (event,) = store.open_andon_events(s, run=RUN)
        assert event.pulled_by is None and "gold tasks" in event.reason


def test_gold_guard_stays_quiet_for_a_labeler_who_picks_the_best(tmp_path, monkeypatch):
    """Control: the same run with the honest labeler (with its noise model) answers the gold tasks
    right, bar a slip, and finishes."""
    result, w = _gold_run(tmp_path, monkeypatch, "sentiment")
    assert "stopped" not in result
    w.join()
    with w.session() as s:
        (row,) = [q for q in store.quality_report(s, run=RUN).labelers if q.name == "sim-0"]
        assert row.gold_answered >= 12 and row.gold_correct >= 0.75 * row.gold_answered  # the noise model errs at times
        assert store.open_andon_events(s, run=RUN) == []
