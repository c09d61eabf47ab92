"""RLOO: the leave-one-out baseline and the loss on literal tensors, a tiny policy whose reward rises
with its KL bounded, and `train-policy --algo rloo` with checkpoints, --resume and the Andon cord."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmpref.cli import main
from lmpref.config import make_config
from lmpref.core.rloo import rloo_advantages, rloo_loss, sequence_rewards
from lmpref.io import read_jsonl
from rloo_fixtures import VOCAB, assert_learned, run_tiny_rloo, tiny_rloo_config

TINY = ["--preset", "test", "--scale", "tiny"]
KILL_AT = str(Path(__file__).parent / "kill_at.py")

# ---------------------------------------------------------------------------------------------
# Literal tensors


def test_leave_one_out_baseline_and_advantages():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 4.0]])
    adv, base = rloo_advantages(rewards)
    torch.testing.assert_close(base, torch.tensor([[11 / 3, 10 / 3, 3.0, 2.0], [4 / 3, 4 / 3, 4 / 3, 0.0]]))
    torch.testing.assert_close(adv, torch.tensor([[-8 / 3, -4 / 3, 0.0, 4.0], [-4 / 3, -4 / 3, -4 / 3, 4.0]]))
    torch.testing.assert_close(adv.sum(1), torch.zeros(2))  # the K advantages of a query sum to 0
    # K = 2: each response's baseline is the other one
    adv2, _ = rloo_advantages(torch.tensor([[0.5, -1.5]]))
    torch.testing.assert_close(adv2, torch.tensor([[2.0, -2.0]]))


def test_sequence_rewards_subtract_beta_times_the_summed_kl():
    scores = torch.tensor([1.0, -0.5])
    lp = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -2.0, -1.0], [-2.0, -1.0, -2.0]])
    rewards, kl = sequence_rewards(scores, lp, ref, 0.2)
    torch.testing.assert_close(kl, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(rewards, torch.tensor([0.8, -0.5]))
    # the same total as PPO's shaped per-token rewards
    from lmpref.core.ppo import kl_shaped_rewards

    shaped, _ = kl_shaped_rewards(lp, ref, scores.clone(), 0.2)
    torch.testing.assert_close(shaped.sum(1), rewards)


def test_rloo_loss_gradient_is_minus_the_advantage_over_the_batch():
    lp = torch.tensor([-2.0, -1.0, -3.0], requires_grad=True)
    adv = torch.tensor([1.5, -0.5, 0.0])
    loss = rloo_loss(lp, adv)
    assert loss.item() == pytest.approx(-(1.5 * -2.0 + -0.5 * -1.0) / 3)
    loss.backward()
    torch.testing.assert_close(lp.grad, -adv / 3)


# ---------------------------------------------------------------------------------------------
# A tiny policy learns


def test_rloo_raises_reward_with_kl_bounded_and_moves_every_trained_parameter():
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmpref.core.models import PolicyWithValue

    torch.manual_seed(0)
    cfg = tiny_rloo_config()
    policy = PolicyWithValue(
        GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_layer=2, n_embd=32, n_head=2, n_positions=64))
    )
    ref = PolicyWithValue(policy.lm.__class__(policy.lm.config)).eval().requires_grad_(False)
    ref.lm.load_state_dict(policy.lm.state_dict())
    policy.value_head.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    assert_learned(*run_tiny_rloo(policy, ref, cfg))
    unchanged = [n for n, p in policy.named_parameters() if n in before and torch.equal(p, before[n])]
    assert not [n for n in unchanged if "wpe" not in n], unchanged


# ---------------------------------------------------------------------------------------------
# The command


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("rloo")
    assert main(["sample", *TINY, "--out", str(d / "s.jsonl")]) == 0
    assert main(["label", str(d / "s.jsonl"), "--labeler", "sentiment", "--out", str(d / "l.jsonl")]) == 0
    argv = ["train-reward", *TINY, "--labels", str(d / "l.jsonl"), "--samples", str(d / "s.jsonl")]
    assert main([*argv, "--out", str(d / "rm")]) == 0
    return d


def _argv(trained, run, *extra):
    return ["train-policy", *TINY, "--algo", "rloo", "--reward-model", str(trained / "rm"), "--run-dir", str(run)]


def test_rloo_andon_stop_then_resume(trained, tmp_path):
    from lmpref.steps.train import step_train_policy

    cfg = make_config("test", "tiny", {"algo": "rloo", "run_dir": str(tmp_path / "run")})
    run = cfg.resolved_run_dir()
    run.mkdir()
    calls = []

    def cord():
        calls.append(1)
        return "paused by an admin" if len(calls) == 2 else None

    state = step_train_policy(cfg, trained / "rm", run, should_stop=cord)
    assert state["update"] == 1 and state["stopped"] == "paused by an admin" and not (run / "policy").exists()
    state = step_train_policy(cfg, trained / "rm", run, resume=True)
    assert "stopped" not in state and state["update"] == 2 and (run / "policy" / "config.json").exists()
    rows = [r for _, r in read_jsonl(run / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and all("rloo/loss" in r and "objective/kl" in r for r in rows)


def test_rloo_killed_mid_run_resumes_to_the_same_policy_as_an_unbroken_run(trained, tmp_path):
    argv = _argv(trained, tmp_path / "killed")
    cmd = [sys.executable, KILL_AT, "update:2", "--", *argv]
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=300).returncode == -9
    assert [r["step"] for _, r in read_jsonl(tmp_path / "killed" / "metrics.jsonl")] == [1, 2]
    ckpt = tmp_path / "killed" / "checkpoints"
    assert json.loads((ckpt / (ckpt / "latest").read_text() / "state.json").read_text())["update"] == 1
    assert main([*argv, "--resume"]) == 0
    assert [r["step"] for _, r in read_jsonl(tmp_path / "killed" / "metrics.jsonl")] == [1, 2, 2]
    assert main(_argv(trained, tmp_path / "whole")) == 0
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "killed" / "policy" / "model.safetensors"))
    b = load_file(str(tmp_path / "whole" / "policy" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_direction_guard_reads_rloos_score_seen():
    from lmpref.steps.guards import direction_guard

    rows = [{"step": i, "objective/scores": -0.1 * i, "rloo/scores_seen": 0.1 * i} for i in range(1, 4)]
    assert "optimising against the reward model" in direction_guard(rows, 3)
    assert direction_guard([{**r, "rloo/scores_seen": r["objective/scores"]} for r in rows], 3) is None


# ---------------------------------------------------------------------------------------------
# `run --algo rloo`, then best-of-N beside it in `evaluate`


def test_run_algo_rloo_then_evaluate_best_of_n_side_by_side(tmp_path, capsys):
    import math

    run = tmp_path / "run"
    assert main(["run", *TINY, "--algo", "rloo", "--run-dir", str(run)]) == 0
    rows = [r for _, r in read_jsonl(run / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and "rloo/loss" in rows[0]  # RLOO's rows, not PPO's
    out = tmp_path / "eval" / "eval.json"
    out.parent.mkdir()
    argv = ["evaluate", *TINY, "--policy", str(run / "policy"), "--out", str(out)]
    assert main([*argv, "--best-of", "bon4=4:ref"]) == 2  # no reward model to pick with
    assert "--reward-model" in capsys.readouterr().err
    assert main([*argv, "--best-of", "bon4=four:ref"]) == 2
    assert "NAME=N:BASE" in capsys.readouterr().err
    rm = ["--reward-model", str(run / "reward_model")]
    assert main([*argv, *rm, "--best-of", "bon4=4:ref", "--best-of", "bon2=2:policy"]) == 0
    result = json.loads(out.read_text())
    reward = result["mean_reward_by_policy"]
    assert set(reward) == {"policy", "ref", "bon4", "bon2"}
    assert reward["bon4"] > reward["ref"] + 0.2, reward  # the max of 4 reward-model scores (std 1 on ρ's samples)
    assert result["kl_by_policy"]["bon4"] == pytest.approx(math.log(4) - 3 / 4)
    assert result["policies"]["bon4"] == "best-of-4 of ref"
    pairs = {frozenset((r["a"], r["b"])) for r in result["pairwise"]}
    assert {frozenset(("bon4", "ref")), frozenset(("bon2", "policy"))} <= pairs
    samples = [r for _, r in read_jsonl(out.with_name("eval_samples.jsonl"))]
    assert len(samples) == 16 and all("bon4_response" in s and "bon2_valid" in s for s in samples)
    assert main(["report", str(out.parent)]) == 0
    page = (out.parent / "report.html").read_text()
    assert "Every policy" in page and "best-of-4 of ref" in page and "bon2" in page
