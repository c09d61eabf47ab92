"""Fault injection: each fault the paper's bug or a user's bad input can bring, injected on the tiny
random GPT-2, and the halt or the one-line message that must follow. Extend it: a new fault is a
test that injects it and asserts what the user sees (exit status, message, files left alone).

Faults that must halt (exit 3 through the Andon path / a guard's reason):
  - a reward model whose gain and bias are negated in its config.json, given to train-policy;
  - a sign bug at the moment `run` saves its reward model (the saved model, reloaded, is measured);
  - a sign flipped inside PPO (the score PPO is fed is the negated reward-model score).
Bad input must exit 2 with one line naming the file / row / key and the fix, and no traceback."""

import json
import shutil

import pytest

from lmpref.cli import main

TINY = ["--preset", "test", "--scale", "tiny"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Samples, labels and a reward model of the tiny preset, made once for the module."""
    d = tmp_path_factory.mktemp("trained")
    assert main(["sample", *TINY, "--out", str(d / "s.jsonl")]) == 0
    assert main(["label", str(d / "s.jsonl"), "--labeler", "sentiment", "--out", str(d / "l.jsonl")]) == 0
    assert (
        main(
            [
                "train-reward",
                *TINY,
                "--labels",
                str(d / "l.jsonl"),
                "--samples",
                str(d / "s.jsonl"),
                "--out",
                str(d / "rm"),
            ]
        )
        == 0
    )
    return d


def _negate_gain_and_bias(rm_dir):
    path = rm_dir / "config.json"
    config = json.loads(path.read_text())
    config["lmpref_reward_gain"], config["lmpref_reward_bias"] = (
        -config["lmpref_reward_gain"],
        -config["lmpref_reward_bias"],
    )
    path.write_text(json.dumps(config))


# ---------------------------------------------------------------------------------------------
# Flipped signs


def test_train_policy_refuses_a_reward_model_with_negated_gain_and_bias(trained, tmp_path, capsys):
    rm = tmp_path / "rm"
    shutil.copytree(trained / "rm", rm)
    _negate_gain_and_bias(rm)
    run = tmp_path / "run"
    assert main(["train-policy", *TINY, "--run-dir", str(run), "--reward-model", str(rm)]) == 3
    out = capsys.readouterr().out
    assert "does not score as it did when trained" in out and "negated" in out
    assert not (run / "policy").exists() and not (run / "metrics.jsonl").exists()  # no PPO update ran


def test_train_policy_accepts_the_reward_model_as_saved(trained, tmp_path):
    assert main(["train-policy", *TINY, "--run-dir", str(tmp_path / "run"), "--reward-model", str(trained / "rm")]) == 0


def test_run_measures_the_saved_reloaded_reward_model(tmp_path, capsys, monkeypatch):
    """A sign bug at the moment the reward model is saved: the accuracy measured before the save is
    not what PPO would load. `run` must measure the saved model and stop before PPO."""
    from lmpref.core.reward import RewardModel

    save = RewardModel.save

    def save_with_flipped_sign(self, path, extra=None, tokenizer=None, **kwargs):
        self.set_normalization(-float(self.gain), -float(self.bias))
        save(self, path, extra=extra, tokenizer=tokenizer, **kwargs)

    monkeypatch.setattr(RewardModel, "save", save_with_flipped_sign)
    run = tmp_path / "run"
    assert main(["run", *TINY, "--run-dir", str(run)]) == 3
    out = capsys.readouterr().out
    assert "does not score as it did when trained" in out
    assert not (run / "metrics.jsonl").exists() and not (run / "eval.json").exists()


def test_a_sign_flipped_inside_ppo_halts_within_a_few_updates(trained, tmp_path, capsys, monkeypatch):
    """The paper's overnight bug: PPO is fed the negated reward-model score. The reward model's score
    of the policy's samples falls while the score PPO maximises rises; the direction guard stops it."""
    import lmpref.core.ppo

    shaped = lmpref.core.ppo.kl_shaped_rewards
    monkeypatch.setattr(
        lmpref.core.ppo, "kl_shaped_rewards", lambda lp, rlp, scores, kl_coef: shaped(lp, rlp, -scores, kl_coef)
    )
    run = tmp_path / "run"
    args = [
        "train-policy",
        *TINY,
        "--run-dir",
        str(run),
        "--reward-model",
        str(trained / "rm"),
        "--set",
        "ppo.total_episodes=320",
        "--set",
        "ppo.lr=1e-3",
    ]
    assert main(args) == 3
    out = capsys.readouterr().out
    assert "fell" in out and "the score PPO maximises rose" in out and "sign flipped inside PPO" in out
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) < 20 and not (run / "policy").exists()


def test_direction_guard_with_literal_numbers():
    from lmpref.steps.guards import direction_guard

    rows = [{"step": i + 1, "objective/scores": s, "ppo/scores_seen": -s} for i, s in enumerate([0.1, 0.0, -0.2])]
    assert "sign flipped inside PPO" in direction_guard(rows, 3)
    same = [{**r, "ppo/scores_seen": r["objective/scores"]} for r in rows]
    assert direction_guard(same, 3) is None  # a sound run: the two are one number, falling together is not this fault
    assert direction_guard(rows[:2], 3) is None and direction_guard(rows, 0) is None


# ---------------------------------------------------------------------------------------------
# Bad input: exit 2, one line naming the file / row / key and the fix, no traceback


def _one_clean_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("lmpref")]  # (progress bars aside)
    assert len(lines) == 1 and lines[0].startswith("lmpref: error: "), err
    return lines[0]


def test_non_utf8_jsonl(tmp_path, capsys):
    samples = tmp_path / "s.jsonl"
    samples.write_bytes(b'{"id": 1, "query": "caf\xe9"}\n')
    assert main(["label", str(samples), "--out", str(tmp_path / "l.jsonl")]) == 2
    line = _one_clean_line(capsys)
    assert f"{samples}:1: not UTF-8" in line and "save the file as UTF-8" in line
    assert not (tmp_path / "l.jsonl").exists()


def test_samples_missing_fields(trained, tmp_path, capsys):
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"id": 0, "query": "Hi"}) + "\n")
    assert main(["label", str(samples), "--out", str(tmp_path / "l.jsonl")]) == 2
    assert f"{samples}:1: sampling record lacks 'responses'" in _one_clean_line(capsys)
    rec = json.loads((trained / "s.jsonl").read_text().splitlines()[0])
    del rec["responses"], rec["response_ids"]  # neither text nor token ids
    samples.write_text(json.dumps(rec) + "\n")
    argv = ["train-reward", *TINY, "--labels", str(trained / "l.jsonl"), "--samples", str(samples)]
    assert main([*argv, "--out", str(tmp_path / "rm")]) == 2
    assert f"{samples}:1: sampling record lacks 'responses'" in _one_clean_line(capsys)
    assert not (tmp_path / "rm").exists()
    # Token ids are optional (issue 17: outside samples are text): without them the text is encoded.
    text_only = {
        k: v for k, v in json.loads((trained / "s.jsonl").read_text().splitlines()[0]).items() if "ids" not in k
    }
    samples.write_text(json.dumps(text_only) + "\n")
    assert main([*argv, "--out", str(tmp_path / "rm-text")]) == 0
    assert (tmp_path / "rm-text" / "config.json").exists()


def test_empty_samples_file_is_named(trained, tmp_path, capsys):
    samples = tmp_path / "empty.jsonl"
    samples.write_text("")
    assert (
        main(
            [
                "train-reward",
                *TINY,
                "--labels",
                str(trained / "l.jsonl"),
                "--samples",
                str(samples),
                "--out",
                str(tmp_path / "rm"),
            ]
        )
        == 2
    )
    assert f"{samples}: empty" in _one_clean_line(capsys)


def test_labels_file_holding_a_bare_list(trained, tmp_path, capsys):
    labels = tmp_path / "l.json"
    labels.write_text("[[1, 2, 3], [4, 5]]")
    assert (
        main(
            [
                "train-reward",
                *TINY,
                "--labels",
                str(labels),
                "--samples",
                str(trained / "s.jsonl"),
                "--out",
                str(tmp_path / "rm"),
            ]
        )
        == 2
    )
    assert f"{labels}: item 1 of the list is a list, not a label object" in _one_clean_line(capsys)


def test_unknown_labeler(trained, tmp_path, capsys):
    assert main(["label", str(trained / "s.jsonl"), "--labeler", "nope", "--out", str(tmp_path / "l.jsonl")]) == 2
    assert "unknown labeler 'nope'; choose one of:" in _one_clean_line(capsys)


@pytest.mark.parametrize("key", ["ppo.minibatches", "ppo.batch_size"])
def test_zero_sizes_are_refused_before_any_work(tmp_path, capsys, key):
    run = tmp_path / "run"
    assert main(["run", *TINY, "--run-dir", str(run), "--set", f"{key}=0"]) == 2
    assert f"{key}=0 must be at least 1" in _one_clean_line(capsys)
    assert not (run / "samples.jsonl").exists()


def test_a_policy_folder_given_as_reward_model(trained, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train-policy", *TINY, "--run-dir", str(run), "--reward-model", str(trained / "rm")]) == 0
    assert (
        main(["train-policy", *TINY, "--run-dir", str(tmp_path / "run2"), "--reward-model", str(run / "policy")]) == 2
    )
    assert "is a policy (it has value_head.safetensors), not a reward model" in _one_clean_line(capsys)


def test_reward_model_folder_without_weights_or_model_type(trained, tmp_path, capsys):
    rm = tmp_path / "rm"
    shutil.copytree(trained / "rm", rm)
    for weights in rm.glob("*.safetensors"):
        weights.unlink()
    assert main(["train-policy", *TINY, "--run-dir", str(tmp_path / "run"), "--reward-model", str(rm)]) == 2
    assert "no weights" in _one_clean_line(capsys)
    config = json.loads((rm / "config.json").read_text())
    del config["model_type"]
    (rm / "config.json").write_text(json.dumps(config))
    assert main(["train-policy", *TINY, "--run-dir", str(tmp_path / "run"), "--reward-model", str(rm)]) == 2
    assert "has no model_type" in _one_clean_line(capsys)


def test_relative_local_path_is_not_sent_to_the_hub(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert main(["sample", *TINY, "--model", "runs/policy", "--out", str(tmp_path / "s.jsonl")]) == 2
    assert "'runs/policy' does not exist" in _one_clean_line(capsys)


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(tmp_path, capsys, monkeypatch):
    import lmpref.steps.train

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lmpref.steps.train, "step_sample", interrupted)
    assert main(["run", *TINY, "--run-dir", str(tmp_path / "run")]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "interrupted" in err and "--resume" in err


def test_disk_full_while_saving_is_one_line_and_resume_does_not_duplicate(trained, tmp_path, capsys, monkeypatch):
    import errno

    from lmpref.core.reward import RewardModel

    save = RewardModel.save

    def disk_full(self, path, extra=None, tokenizer=None, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    run = tmp_path / "run"
    monkeypatch.setattr(RewardModel, "save", disk_full)
    assert main(["run", *TINY, "--run-dir", str(run)]) == 2
    assert "No space left on device" in _one_clean_line(capsys)
    assert not (run / "reward_model").exists()
    monkeypatch.setattr(RewardModel, "save", save)
    assert main(["run", *TINY, "--run-dir", str(run), "--resume"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "reward_metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # not [1, 2, 1, 2]
    assert (run / "reward_model" / "tokenizer_config.json").exists()  # written whole, tokenizer included


# ---------------------------------------------------------------------------------------------
# Resume must refuse a changed run


def test_resume_refuses_a_changed_config_and_names_the_keys(tmp_path, capsys):
    from lmpref.config import check_resume, make_config, save_config

    run = tmp_path / "run"
    run.mkdir()
    save_config(make_config("test", "tiny", {"run_dir": str(run)}), run / "config.json")
    before = (run / "config.json").read_text()
    assert main(["run", *TINY, "--run-dir", str(run), "--resume", "--seed", "7", "--set", "ppo.total_episodes=64"]) == 2
    line = _one_clean_line(capsys)
    assert "ppo.total_episodes: 32 -> 64" in line and "seed: 0 -> 7" in line and "--allow-config-change" in line
    assert (run / "config.json").read_text() == before and not (run / "samples.jsonl").exists()
    changed = make_config("test", "tiny", {"run_dir": str(run), "seed": 7})
    check_resume(changed, run / "config.json", allow=True)  # the explicit override
    check_resume(
        make_config("test", "tiny", {"run_dir": str(run), "ppo.checkpoint_every": 5}), run / "config.json"
    )  # storage only


# ---------------------------------------------------------------------------------------------
# The label worker


def test_label_worker_retries_while_its_server_restarts():
    """Two refused connections (the server restarting), then the server answers: the worker waits,
    says so, and goes on; it marks itself as a program so --min-seconds does not drop its labels."""
    import httpx

    from lmpref.loop.label_worker import WorkerConfig, run_worker
    from lmpref.records import PROGRAM_HEADER

    calls, seen_headers = [], []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        seen_headers.append(request.headers.get(PROGRAM_HEADER))
        if len(calls) <= 2:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/api/tasks/next":
            return httpx.Response(204)
        return httpx.Response(200, json={"experiment": {"finished": True}})

    logged = []
    client = httpx.Client(base_url="http://server", transport=httpx.MockTransport(handler))
    cfg = WorkerConfig(run="exp", min_pause=0.01, max_pause=0.02)
    assert run_worker(client, cfg, log=logged.append) == 0
    assert sum("server unreachable (ConnectError" in line and "retrying" in line for line in logged) == 2
    assert set(seen_headers) == {"program"}


def test_label_worker_gives_up_with_one_line_when_the_server_stays_down():
    import httpx

    from lmpref.loop.label_worker import WorkerConfig, WorkerError, run_worker

    def handler(request):
        raise httpx.ConnectError("connection refused", request=request)

    client = httpx.Client(base_url="http://server", transport=httpx.MockTransport(handler))
    with pytest.raises(WorkerError, match="unreachable for 0.05 s"):
        run_worker(
            client, WorkerConfig(run="exp", min_pause=0.01, max_pause=0.02, retry_timeout=0.05), log=lambda _: None
        )


def test_program_labels_are_not_dropped_as_too_fast_but_a_person_s_are(tmp_path):
    """`lmpref serve` keeps --min-seconds 5 for people; the label worker's labels pass it."""
    from fastapi.testclient import TestClient

    from lmpref import store
    from lmpref.records import PROGRAM_HEADER
    from lmpref.web import Settings, create_app
    from web_store_fixtures import record

    app = create_app(Settings(db_url=f"sqlite:///{tmp_path / 'labels.db'}"))
    with store.transaction(app.state.sessions) as session:
        token = store.create_labeler(session, name="sim-1")[1]
        store.enqueue(session, run="exp", records=[record(i) for i in range(2)])
    for header in ({PROGRAM_HEADER: "program"}, {}):
        client = TestClient(app, headers={"Authorization": f"Bearer {token}", **header})
        task = client.get("/api/tasks/next", params={"run": "exp"}).json()
        assert client.post(f"/api/tasks/{task['task_id']}/label", json={"best": 0}).status_code == 201
    with store.transaction(app.state.sessions) as session:
        rows = list(store.export_records(session, run="exp", fmt="bestofk"))
        every = list(store.export_records(session, run="exp", fmt="bestofk", include_fast=True))
    assert len(rows) == 1 and len(every) == 2  # the program's label kept, the instant "person's" dropped


# ---------------------------------------------------------------------------------------------
# Inverted labels and the labelers' win rate (experiment rounds), with literal numbers


def test_a_labeler_who_picks_the_worst_is_caught_on_gold_tasks():
    from lmpref.steps.guards import gold_guard

    reason = gold_guard([("ann", 20, 17), ("sim-1", 20, 0)], chance=0.25, min_answered=10)
    assert "labeler sim-1 picks the known best on 0.0% of 20 gold tasks" in reason and "inverted labels?" in reason
    assert gold_guard([("ann", 20, 17), ("sim-1", 20, 4)], 0.25, 10) is None  # at chance: noise, not inversion
    assert gold_guard([("sim-1", 3, 0)], 0.25, 10) is None  # too few gold answers to judge


def test_the_labelers_win_rate_falling_alone_halts():
    from lmpref.steps.guards import hacking_guard, win_rate_guard

    rounds = [
        {"round": 0, "win_rate": 0.57, "n_validation": 200, "policy_score": 0.5},
        {"round": 1, "win_rate": 0.50, "n_validation": 200, "policy_score": 0.3},
        {"round": 2, "win_rate": 0.40, "n_validation": 200, "policy_score": 0.1},
    ]
    assert hacking_guard(rounds, 0.1, 10) is None  # the reward fell too: the reward-hacking guard is silent
    reason = win_rate_guard(rounds, 10)
    assert "fell 57.0%" in reason and "-> 40.0%" in reason and "95% CI" in reason
    assert win_rate_guard([{**r, "n_validation": 20} for r in rounds], 10) is None  # intervals overlap: could be noise


def test_read_only_evaluate_out_is_refused_before_the_evaluation(trained, tmp_path, capsys, monkeypatch):
    import os

    import lmpref.steps.evaluate

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    monkeypatch.setattr(
        lmpref.steps.evaluate, "step_evaluate", lambda *a, **k: pytest.fail("evaluated before checking --out")
    )
    try:
        assert main(["evaluate", *TINY, "--policy", str(trained), "--out", str(ro / "eval.json")]) == 2
    finally:
        ro.chmod(0o700)
    assert "cannot write in" in _one_clean_line(capsys)


def test_unwritable_evaluate_out_is_refused_before_the_evaluation(trained, tmp_path, capsys, monkeypatch):
    """(As root, too: a folder that cannot be made because a file stands in its way.)"""
    import lmpref.steps.evaluate

    (tmp_path / "file").write_text("")
    monkeypatch.setattr(
        lmpref.steps.evaluate, "step_evaluate", lambda *a, **k: pytest.fail("evaluated before checking --out")
    )
    assert main(["evaluate", *TINY, "--policy", str(trained), "--out", str(tmp_path / "file" / "eval.json")]) == 2
    assert "cannot write in" in _one_clean_line(capsys)


def test_train_policy_resume_refuses_a_changed_config_but_may_train_longer(tmp_path, capsys):
    """`train-policy --resume` keeps the run's settings like `run --resume` (before, it saved the new
    config over the old one and trained on); only ppo.total_episodes may rise."""
    from lmpref.config import ConfigError, check_resume, make_config, save_config

    run = tmp_path / "run"
    run.mkdir()
    save_config(make_config("test", "tiny", {"run_dir": str(run)}), run / "config.json")
    before = (run / "config.json").read_text()
    argv = ["train-policy", *TINY, "--run-dir", str(run), "--reward-model", str(tmp_path / "rm"), "--resume"]
    assert main([*argv, "--set", "ppo.lr=0.5"]) == 2
    line = _one_clean_line(capsys)
    assert "ppo.lr: " in line and "-> 0.5" in line and "--allow-config-change" in line
    assert (run / "config.json").read_text() == before and not (run / "checkpoints").exists()
    longer = make_config("test", "tiny", {"run_dir": str(run), "ppo.total_episodes": 64})
    check_resume(longer, run / "config.json", may_grow=("ppo.total_episodes",))  # train on for longer
    shorter = make_config("test", "tiny", {"run_dir": str(run), "ppo.total_episodes": 16})
    with pytest.raises(ConfigError, match="ppo.total_episodes: 32 -> 16"):
        check_resume(shorter, run / "config.json", may_grow=("ppo.total_episodes",))


@pytest.mark.parametrize("size, full_at", [("2m", "reward_model"), ("40m", "checkpoint")])
def test_a_real_full_disk_stops_with_one_line_and_resume_finishes(tmp_path, capsys, size, full_at):
    """The run directory on a small tmpfs. At 2 MB the reward model (about 17 MB) cannot be written:
    the error comes from safetensors' Rust writer ("os error 28"), not Python's I/O. At 40 MB the
    reward model fits and PPO's first checkpoint does not (its 27 MB optimizer state; torch.save's
    own writer says only "unexpected pos"). Either way: one line, exit 2, no half-written folder;
    with the disk grown, --resume finishes the run."""
    import os
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("needs root and a tmpfs mount to fill a real disk")
    try:
        run = disk / "run"
        assert main(["run", *TINY, "--run-dir", str(run)]) == 2
        line = _one_clean_line(capsys)
        assert line.startswith("lmpref: error: No space left on device") and "--resume" in line
        assert (run / "labels.jsonl").exists() and (run / "reward_model").exists() == (full_at == "checkpoint")
        assert not list((run / "checkpoints").glob("update-*")) and not (run / "checkpoints" / "latest").exists()
        left = [p.name for p in [*run.iterdir(), *run.glob("checkpoints/*")] if p.name.endswith(".tmp")]
        assert left == []  # nothing half-written left
        subprocess.run(["mount", "-o", "remount,size=512m", str(disk)], check=True)
        assert main(["run", *TINY, "--run-dir", str(run), "--resume"]) == 0
        assert (run / "eval.json").exists() and (run / "reward_model" / "tokenizer_config.json").exists()
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
