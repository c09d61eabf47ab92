"""The experiment loop with `--algo rloo`: reward models retrained per round, RLOO segments between
them, the Andon cord obeyed within one update and --resume to the end; `--algo dpo` is refused."""

from __future__ import annotations

import json

import pytest

from experiment_fixtures import RUN, Workers, batch_tasks, tiny_config, tiny_env  # noqa: F401 (tiny_env: autouse)
from lmpref import store
from lmpref.cli import main
from lmpref.config import make_config
from lmpref.io import read_jsonl
from lmpref.loop.experiment import run_experiment


def test_batched_rloo_experiment_halts_on_the_cord_and_resumes_to_the_end(tmp_path, monkeypatch):
    import lmpref.loop.experiment as experiment

    w = Workers(tmp_path).start()
    cfg = tiny_config(
        tmp_path,
        **{"algo": "rloo", "experiment.mode": "batched", "experiment.rounds": 2, "rloo.total_episodes": 64},
    )  # 4 RLOO updates of 16 episodes (4 queries x 4), 2 a round
    real_rows, pulled = experiment._metrics_rows, {}

    def rows_then_pull(run_dir):
        rows = real_rows(run_dir)
        if len(rows) == 3 and not pulled:
            with w.session() as s:
                pulled["id"] = store.pull_andon(
                    s, reason="samples look broken", run=RUN, labeler=store.get_labeler(s, name="sim-0")
                ).id
        return rows

    monkeypatch.setattr(experiment, "_metrics_rows", rows_then_pull)
    result = run_experiment(cfg, db=w.db)
    monkeypatch.setattr(experiment, "_metrics_rows", real_rows)
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


def test_experiment_refuses_dpo_in_one_line(tmp_path, capsys):
    argv = ["experiment", "--preset", "test", "--scale", "tiny", "--algo", "dpo", "--run-dir", str(tmp_path / "r")]
    assert main([*argv, "--db", f"sqlite:///{tmp_path / 'l.db'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--algo dpo is not supported" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("algo", ["ppo", "rloo"])
def test_policy_updates_follow_the_algo(algo):
    cfg = make_config("test", "tiny", {"algo": algo, "ppo.total_episodes": 64, "rloo.total_episodes": 32})
    assert cfg.policy_updates() == {"ppo": 64 // 16, "rloo": 32 // 16}[algo]
