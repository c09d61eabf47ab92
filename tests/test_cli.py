"""The `lmpref` command end to end on CPU, and its errors for bad input."""

import json
import subprocess
import sys

import pytest

from lmpref.cli import main


def test_unknown_preset_key_is_a_clear_error(capsys):
    assert main(["run", "--preset", "test", "--scale", "tiny", "--set", "ppo.learning_rate=1e-5"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'ppo.learning_rate'" in err and "lr" in err


def test_unknown_preset_and_scale(capsys):
    assert main(["run", "--preset", "nope"]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(["run", "--preset", "test", "--scale", "huge"]) == 2
    assert "has no scale 'huge'" in capsys.readouterr().err


def test_bad_override_value(capsys):
    assert main(["run", "--preset", "test", "--scale", "tiny", "--set", "ppo.lr=fast"]) == 2
    assert "ppo.lr: expected a float" in capsys.readouterr().err


def test_unreachable_model_says_what_to_do(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert (
        main(
            [
                "sample",
                "--preset",
                "test",
                "--scale",
                "tiny",
                "--model",
                "no-such-org/no-such-model",
                "--out",
                str(tmp_path / "s.jsonl"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "could not load model 'no-such-org/no-such-model'" in err
    assert "--model /path/to/no-such-model" in err and "--model smollm2-135m" in err
    assert (
        main(
            [
                "sample",
                "--preset",
                "test",
                "--scale",
                "tiny",
                "--model",
                "./missing-dir",
                "--out",
                str(tmp_path / "s.jsonl"),
            ]
        )
        == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_malformed_label_file(capsys, tmp_path):
    labels = tmp_path / "labels.jsonl"
    labels.write_text(
        '{"query": "a", "responses": ["b", "c"], "best": 0}\n{"query": "a", "responses": ["b", "c"], "best": "first"}\n'
    )
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"query_ids": [1, 2], "response_ids": [[3], [4]]}) + "\n")
    assert (
        main(
            [
                "train-reward",
                "--preset",
                "test",
                "--scale",
                "tiny",
                "--labels",
                str(labels),
                "--samples",
                str(samples),
                "--out",
                str(tmp_path / "rm"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"{labels}:2" in err and "'best' must be an integer index" in err


def test_steps_alone_then_resume_policy_training(tmp_path):
    """sample | label | train-reward | train-policy as separate commands on files, then --resume
    continues PPO from its checkpoint (metrics steps stay contiguous)."""
    run = tmp_path / "run"
    common = ["--preset", "test", "--scale", "tiny", "--run-dir", str(run)]
    assert main(["sample", *common, "--out", str(tmp_path / "s.jsonl")]) == 0
    assert main(["label", str(tmp_path / "s.jsonl"), "--labeler", "sentiment", "--out", str(tmp_path / "l.jsonl")]) == 0
    assert (
        main(
            [
                "train-reward",
                *common,
                "--labels",
                str(tmp_path / "l.jsonl"),
                "--samples",
                str(tmp_path / "s.jsonl"),
                "--out",
                str(tmp_path / "rm"),
            ]
        )
        == 0
    )
    assert (tmp_path / "rm" / "config.json").exists()
    assert main(["train-policy", *common, "--reward-model", str(tmp_path / "rm")]) == 0
    assert (run / "checkpoints" / "latest").read_text() == "update-000002"
    assert (
        main(
            [
                "train-policy",
                *common,
                "--reward-model",
                str(tmp_path / "rm"),
                "--resume",
                "--set",
                "ppo.total_episodes=64",
            ]
        )
        == 0
    )
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    card = (run / "policy" / "README.md").read_text()  # the model card: start model, reward model, figures
    assert "base_model: tiny-gpt2" in card and f"reward model: `{tmp_path / 'rm'}`" in card and "| update | 4 |" in card
    assert "best-of-K loss" in (tmp_path / "rm" / "README.md").read_text()
    assert main(["generate", "--policy", str(run / "policy"), "--prompt", "Hello there.", "--length", "4"]) == 0


@pytest.mark.slow
def test_main_job_on_the_bundled_model_smallest_scale(tmp_path):
    """`lmpref run` with SmolLM2-135M (the bundled default) at the tiny scale, as a user runs it."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "lmpref.cli", "run", "--preset", "sentiment", "--scale", "tiny", "--run-dir", str(run)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "win rate vs reference" in out.stdout
    result = json.loads((run / "eval.json").read_text())
    assert 0.0 <= result["win_rate"] <= 1.0 and result["n_comparisons"] == 8
    assert len(result["samples"]) == 2 and result["samples"][0]["query"]
    for name in (
        "samples.jsonl",
        "labels.jsonl",
        "reward_model/config.json",
        "policy/config.json",
        "metrics.jsonl",
        "config.json",
    ):
        assert (run / name).exists(), name
    # a finished run resumes as a no-op up to the evaluation
    again = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=1200)
    assert again.returncode == 0 and "[1/5]" not in again.stdout and "[5/5]" in again.stdout


def test_train_reward_human_holds_out_whole_posts(tmp_path, capsys):
    """People's comparisons of 4 posts (one compared 3 times, two twice): the held-out split is by
    post, and the command says how many posts and comparisons each side got."""
    posts = [
        "My cat ran away last night.",
        "I failed my driving test again.",
        "Our landlord raised the rent.",
        "I got the job!",
    ]
    rows = [(0, 0), (1, 1), (0, 1), (2, 0), (1, 0), (0, 0), (3, 1), (2, 1)]  # (post, choice)
    comparisons = tmp_path / "cmp.jsonl"
    comparisons.write_text(
        "".join(
            json.dumps(
                {
                    "input_text": posts[p] + " [summary]: ",
                    "candidate_0": " a summary",
                    "candidate_1": " another one",
                    "choice": c,
                }
            )
            + "\n"
            for p, c in rows
        )
    )
    out = tmp_path / "rm"
    assert (
        main(
            [
                "train-reward-human",
                "--preset",
                "tldr",
                "--scale",
                "tiny",
                "--set",
                "reward.holdout_fraction=0.25",
                "--comparisons",
                str(comparisons),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "lmpref_reward.json").read_text())
    assert metrics["n_train"] + metrics["n_heldout"] == 8 and metrics["n_heldout"] >= 1
    assert metrics["n_train_posts"] + metrics["n_heldout_posts"] == 4  # a post on both sides would count twice
    printed = capsys.readouterr().out
    assert (
        f"split by post: {metrics['n_train_posts']} posts / {metrics['n_train']} comparisons to train on, "
        f"{metrics['n_heldout_posts']} posts / {metrics['n_heldout']} comparisons held out"
    ) in printed


def test_a_stopped_run_exits_3_and_says_why(capsys):
    """`lmpref run` and `lmpref experiment` exit 3 when the Andon cord or a guard stopped them."""
    from lmpref.cli.main import _finish

    assert _finish({"stopped": "andon pulled by ann: flipped sign?"}, "results in x") == 3
    assert "stopped: andon pulled by ann: flipped sign?" in capsys.readouterr().out
    assert _finish({"win_rate": 0.6}, "results in x") == 0
    assert "results in x" in capsys.readouterr().out


def test_only_train_policy_runs_under_a_multi_process_launch(capsys, monkeypatch, tmp_path):
    """`accelerate launch` would run any other command once per process, each writing the same files."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert (
        main(["run", "--preset", "test", "--scale", "tiny", "--model", "tiny-gpt2", "--run-dir", str(tmp_path / "r")])
        == 2
    )
    err = capsys.readouterr().err
    assert (
        "`lmpref run` runs in one process, but this is one of 2" in err and "launch only `lmpref train-policy`" in err
    )
    assert not (tmp_path / "r").exists()
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert (
        main(["sample", "--preset", "nonexistent", "--out", str(tmp_path / "s.jsonl")]) == 2
    )  # one process: the command itself runs (and finds the bad preset)
    assert "one of" not in capsys.readouterr().err
