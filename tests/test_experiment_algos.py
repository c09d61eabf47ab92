"""The experiment loop with `--algo rloo` (reward models retrained per round, RLOO segments between
them) and `--algo dpo` (iterative DPO: each round samples the current policy, its labels come through
the store, DPO on every label so far from the last round's policy): the Andon cord obeyed within one
update or step, --resume to the end, and a DPO run killed at several points resumed exactly."""

from __future__ import annotations

import json

import pytest

from experiment_fixtures import (  # noqa: F401 (tiny_env: autouse)
    RUN,
    Workers,
    batch_tasks,
    checkpoint_state,
    cord_pulled,
    experiment_argv,
    killed_loop,
    metric_steps,
    tiny_config,
    tiny_env,
)
from lmpref import store
from lmpref.cli import main
from lmpref.config import make_config
from lmpref.io import read_jsonl
from lmpref.loop.experiment import run_experiment


def test_batched_rloo_experiment_halts_on_the_cord_and_resumes_to_the_end(tmp_path):
    w = Workers(tmp_path).start()
    cfg = tiny_config(
        tmp_path,
        **{"algo": "rloo", "experiment.mode": "batched", "experiment.rounds": 2, "rloo.total_episodes": 64},
    )  # 4 RLOO updates of 16 episodes (4 queries x 4), 2 a round
    with cord_pulled(w, "update", 3) as pulled:
        result = run_experiment(cfg, db=w.db)
    run_dir = cfg.resolved_run_dir()
    assert "samples look broken" in result["stopped"]
    rows = [m for _, m in read_jsonl(run_dir / "metrics.jsonl")]
    assert [m["step"] for m in rows] == [1, 2, 3] and all("rloo/loss" in m and "ppo/scores_seen" not in m for m in rows)
    assert json.loads((run_dir / "checkpoints/update-000003/state.json").read_text())["update"] == 3
    assert batch_tasks(w) == {"round-000": 11, "round-001": 5}  # round 1 sampled the policy after 2 RLOO updates
    assert (run_dir / "reward_models/round-001/config.json").exists()
    with w.session() as s:
        store.clear_andon(s, event_id=pulled["id"], note="looked fine")
    run_experiment(cfg, db=w.db, resume=True)
    w.join()
    assert [m["step"] for _, m in read_jsonl(run_dir / "metrics.jsonl")] == [1, 2, 3, 4]
    assert json.loads((run_dir / "experiment.json").read_text())["finished"]
    assert (run_dir / "policy" / "config.json").exists()


# ---------------------------------------------------------------------------------------------
# Iterative DPO


def _weights(path) -> dict:
    from lmpref.core.loading import load_causal_lm

    return {k: v.detach().clone() for k, v in load_causal_lm(str(path)).state_dict().items()}


def _moved(a: dict, b: dict) -> list[str]:
    return [k for k in a if not (a[k] == b[k]).all()]


def test_batched_dpo_experiment_learns_from_store_labels_halts_on_the_cord_and_resumes(tmp_path):
    """2 rounds: rho's 11 comparisons, DPO on them; the round-0 policy's 5 comparisons, DPO on all 16
    from the round-0 policy. A person pulls the cord as round 1's first DPO step ends: the run stops
    before step 2 and, once the event is cleared, resumes from that step to the end and evaluates."""
    w = Workers(tmp_path).start()
    cfg = tiny_config(
        tmp_path, **{"algo": "dpo", "experiment.mode": "batched", "experiment.rounds": 2, "experiment.evaluate": True}
    )
    run_dir = cfg.resolved_run_dir()
    with cord_pulled(w, "update", 1, times=2) as pulled:  # step 1 of round 0, then of round 1
        result = run_experiment(cfg, db=w.db)
    assert "pulled by sim-0" in result["stopped"] and "samples look broken" in result["stopped"]
    round0, round1 = run_dir / "dpo/round-000", run_dir / "dpo/round-001"
    assert metric_steps(round1) == [1] and checkpoint_state(round1)["step"] == 1 and not (round1 / "policy").exists()
    assert (round0 / "policy/config.json").exists() and not (round0 / "checkpoints").exists()
    state = json.loads((run_dir / "experiment.json").read_text())
    assert state["halted"]["round"] == 1 and state["rounds"][1]["policy_round"] == 0
    assert batch_tasks(w) == {"round-000": 11, "round-001": 5}  # round 1 waited for its labels, then trained
    samples = [rec for _, rec in read_jsonl(run_dir / "rounds/round-001/samples.jsonl")]
    assert {p for rec in samples for p in rec.get("policies") or [rec["policy"]]} >= {"policy:dpo-round-000"}
    assert not (run_dir / "reward_model").exists() and not (run_dir / "reward_models").exists()

    with w.session() as s:
        store.clear_andon(s, event_id=pulled["id"], note="looked fine")
    run_experiment(cfg, db=w.db, resume=True)
    w.join()
    state = json.loads((run_dir / "experiment.json").read_text())
    assert state["finished"] and [r["labels"] for r in state["rounds"]] == [11, 16]
    summaries = [json.loads((d / "dpo.json").read_text()) for d in (round0, round1)]
    assert metric_steps(round1) == list(range(1, summaries[1]["step"] + 1))  # resumed at step 2: none twice
    rows = [m for _, m in read_jsonl(run_dir / "metrics.jsonl")]  # every round's rows, numbered on
    assert [m["step"] for m in rows] == list(range(1, summaries[0]["step"] + summaries[1]["step"] + 1))
    assert [m["round"] for m in rows] == [0] * summaries[0]["step"] + [1] * summaries[1]["step"]
    for r, summary in enumerate(summaries):  # held-out implicit-reward accuracy, per round
        rec = state["rounds"][r]
        assert 0 <= rec["dpo_heldout_accuracy"] <= 1 and 0 <= rec["dpo_heldout_accuracy_before"] <= 1
        assert rec["dpo_heldout_accuracy"] == summary["heldout_accuracy"] and rec["dpo_n_heldout"] >= 2
        assert "dpo/heldout_accuracy" in [m for m in rows if m["round"] == r][-1]
    assert summaries[1]["n_train"] > summaries[0]["n_train"]  # round 1 trained on every label so far
    base, first, last = _weights("tiny-gpt2"), _weights(round0 / "policy"), _weights(run_dir / "policy")
    assert _moved(base, first) and _moved(first, last)  # each round moved the policy on from the last
    assert _weights(round1 / "policy").keys() == last.keys() and not _moved(_weights(round1 / "policy"), last)
    meta = json.loads((run_dir / "policy/lmpref_policy.json").read_text())
    first_meta = json.loads((round0 / "policy/lmpref_policy.json").read_text())
    assert meta["algo"] == "dpo" and meta["labels"] == summaries[1]["n_train"]
    k = cfg.sample.k  # every tiny response is valid: a label shows all K
    assert first_meta["episodes"] == summaries[0]["n_train"] * k
    assert meta["episodes"] == (summaries[0]["n_train"] + summaries[1]["n_train"]) * k
    assert meta["train_minutes"] > first_meta["train_minutes"] > 0
    result = json.loads((run_dir / "eval.json").read_text())
    assert 0 <= result["win_rate"] <= 1 and result["by_policy"]["policy"]["labels"] == meta["labels"]


def test_online_dpo_experiment_killed_anywhere_resumes_exactly(tmp_path):
    """SIGKILL an online DPO run (2 rounds) in the middle of round 0's step 2 (its metrics row written,
    its checkpoint not), after round 0's policy is saved but before the loop recorded it, and after
    round 1's samples are drawn. Every label is kept, no batch is enqueued twice, only the killed step
    is repeated, and the run ends as a whole one."""
    w = Workers(tmp_path).start()
    run_dir = tmp_path / "run"
    loop = killed_loop(experiment_argv(w, run_dir, "online", {"algo": "dpo", "experiment.rounds": 2}))
    round0 = run_dir / "dpo/round-000"
    assert loop("update:2", resume=False) == -9
    assert metric_steps(round0) == [1, 2] and checkpoint_state(round0)["step"] == 1
    assert loop("dpo:0") == -9  # round 0's policy saved, not recorded yet
    assert (round0 / "policy/config.json").exists() and metric_steps(round0)[:3] == [1, 2, 2]
    assert "dpo_heldout_accuracy" not in json.loads((run_dir / "experiment.json").read_text())["rounds"][0]
    assert loop("sampled:1") == -9
    drawn = (run_dir / "rounds/round-001/samples.jsonl").read_bytes()
    assert b"policy:dpo-round-000" in drawn and batch_tasks(w) == {"round-000": 11}
    assert loop(None) == 0
    w.join()
    assert (run_dir / "rounds/round-001/samples.jsonl").read_bytes() == drawn
    assert batch_tasks(w) == {"round-000": 11, "round-001": 5}  # online DPO: a batch per round, each once
    with w.session() as s:
        p = store.progress(s, run=RUN)
        assert p.labels == p.tasks == 16 == sum(w.counts) and p.queue_depth == 0  # every label kept
    state = json.loads((run_dir / "experiment.json").read_text())
    assert state["finished"] and [r["labels"] for r in state["rounds"]] == [11, 16]
    assert all("dpo_heldout_accuracy" in r for r in state["rounds"])
    n0 = json.loads((round0 / "dpo.json").read_text())["step"]
    assert [m["step"] for _, m in read_jsonl(run_dir / "metrics.jsonl")][:n0] == list(range(1, n0 + 1))  # step 2 once
    assert (run_dir / "policy/config.json").exists()


def test_experiment_resumed_with_another_algo_refuses_in_one_line(tmp_path, capsys):
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "experiment.json").write_text(json.dumps({"mode": "batched", "algo": "ppo", "round": 1, "rounds": []}))
    argv = ["experiment", "--preset", "test", "--scale", "tiny", "--mode", "batched", "--run-dir", str(run_dir)]
    assert main([*argv, "--algo", "dpo", "--resume", "--db", f"sqlite:///{tmp_path / 'l.db'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "resume it with --algo ppo" in err and "Traceback" not in err


@pytest.mark.parametrize("algo", ["ppo", "rloo"])
def test_policy_updates_follow_the_algo(algo):
    cfg = make_config("test", "tiny", {"algo": algo, "ppo.total_episodes": 64, "rloo.total_episodes": 32})
    assert cfg.policy_updates() == {"ppo": 64 // 16, "rloo": 32 // 16}[algo]
