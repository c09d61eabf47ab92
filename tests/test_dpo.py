"""K-way DPO: the loss on literal tensors, a tiny model whose implicit reward learns the labels, and
the command (`train-policy --algo dpo`, `run --algo dpo`) with checkpoints, --resume and the Andon cord."""

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmpref.cli import main
from lmpref.config import ConfigError, make_config
from lmpref.core.dpo import flat_pairs, implicit_accuracy, kway_dpo_loss, sequence_logprobs, to_grid, train_dpo
from lmpref.core.reward import Choice, best_of_k_loss, split_labels
from lmpref.io import read_jsonl

TINY = ["--preset", "test", "--scale", "tiny"]
KILL_AT = str(Path(__file__).parent / "kill_at.py")

# ---------------------------------------------------------------------------------------------
# The loss, with literal numbers


def test_kway_dpo_at_k2_is_standard_dpo():
    pol = torch.tensor([[-3.0, -5.0], [-10.0, -2.0], [-4.0, -4.5]])
    ref = torch.tensor([[-4.0, -4.0], [-9.0, -3.0], [-4.0, -4.0]])
    best = torch.tensor([0, 1, 1])
    beta = 0.5
    loss, rewards = kway_dpo_loss(pol, ref, best, beta)
    # −log σ(β((log π_w − log ρ_w) − (log π_l − log ρ_l))), by hand for each row
    margins = [0.5 * ((-3 + 4) - (-5 + 4)), 0.5 * ((-2 + 3) - (-10 + 9)), 0.5 * ((-4.5 + 4) - (-4 + 4))]
    expected = sum(-math.log(1 / (1 + math.exp(-m))) for m in margins) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(rewards, torch.tensor([[0.5, -0.5], [-0.5, 0.5], [0.0, -0.25]]))
    assert implicit_accuracy(rewards, best) == pytest.approx(2 / 3)  # the last row prefers the other response


def test_kway_dpo_is_the_reward_loss_on_implicit_rewards_with_masked_responses():
    torch.manual_seed(0)
    pol, ref = -torch.rand(5, 4) * 10, -torch.rand(5, 4) * 10
    best = torch.tensor([0, 3, 1, 2, 0])
    mask = torch.ones(5, 4, dtype=torch.bool)
    mask[1, 0] = mask[2, 3] = mask[4, 2] = mask[4, 3] = False  # fewer responses shown (invalid ones never are)
    beta = 0.1
    loss, _ = kway_dpo_loss(pol, ref, best, beta, mask)
    assert loss.item() == pytest.approx(best_of_k_loss(beta * (pol - ref), best, mask).item(), rel=1e-6)
    # a masked response has no weight: changing its log-prob changes nothing
    pol2 = pol.clone()
    pol2[4, 3] = 100.0
    assert kway_dpo_loss(pol2, ref, best, beta, mask)[0].item() == pytest.approx(loss.item(), rel=1e-6)
    # the row with two responses left is the pairwise case
    row = kway_dpo_loss(pol[4:], ref[4:], best[4:], beta, mask[4:])[0]
    m = beta * ((pol[4, 0] - ref[4, 0]) - (pol[4, 1] - ref[4, 1]))
    assert row.item() == pytest.approx(-F.logsigmoid(m).item(), rel=1e-6)


def test_grid_and_sequence_logprobs_of_right_padded_responses():
    labels = [Choice([5, 6], [[7], [8, 9], [10]], 1), Choice([11], [[12, 13], [14]], 0)]
    pairs, index = flat_pairs(labels)
    assert index == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
    grid, present = to_grid(torch.arange(5.0), index, 2)
    assert grid.tolist() == [[0, 1, 2], [3, 4, 0]] and present.tolist() == [[True] * 3, [True, True, False]]

    from lmpref.core.loading import load_causal_lm
    from lmpref.core.models import PolicyWithValue

    torch.manual_seed(0)
    policy = PolicyWithValue(load_causal_lm("tiny-gpt2")).eval()
    together = sequence_logprobs(policy, pairs, pad_id=0, temperature=0.7)
    alone = torch.cat([sequence_logprobs(policy, [p], pad_id=0, temperature=0.7) for p in pairs])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)  # padding changes nothing
    # the sum of the response tokens' log-probs, by hand for one pair
    ids = torch.tensor([[5, 6, 8, 9]])
    logits = policy.lm(ids).logits[0, 1:3] / 0.7
    by_hand = F.log_softmax(logits, -1)[0, 8] + F.log_softmax(logits, -1)[1, 9]
    assert together[1].item() == pytest.approx(by_hand.item(), abs=1e-4)


# ---------------------------------------------------------------------------------------------
# A tiny model learns


def _synthetic_labels(n: int, seed: int) -> list[Choice]:
    """Best-of-4 labels whose best response holds the most 'good' tokens (a clear best only)."""
    rng = random.Random(seed)
    good, bad = list(range(1000, 1010)), list(range(2000, 2010))
    labels = []
    while len(labels) < n:
        responses = [[rng.choice(good if rng.random() < rng.random() else bad) for _ in range(6)] for _ in range(4)]
        counts = [sum(t in good for t in r) for r in responses]
        if counts.count(max(counts)) == 1:
            labels.append(Choice([rng.randrange(5000) for _ in range(4)], responses, counts.index(max(counts))))
    return labels


def test_dpo_raises_heldout_implicit_reward_accuracy_and_moves_every_trained_parameter():
    from lmpref.core.dpo import reference_logprobs
    from lmpref.core.loading import load_causal_lm
    from lmpref.core.models import PolicyWithValue

    torch.manual_seed(0)
    labels = _synthetic_labels(120, 0)
    train, heldout = split_labels(labels, 0.25, 0)
    cfg = make_config("test", "tiny", {"dpo.lr": 1e-3, "dpo.epochs": 2, "dpo.batch_size": 8, "dpo.beta": 0.5})
    policy = PolicyWithValue(load_causal_lm("tiny-gpt2"))
    ref = PolicyWithValue(load_causal_lm("tiny-gpt2")).eval().requires_grad_(False)
    ref.load_state_dict(policy.state_dict())
    policy.value_head.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    rows = []
    state = train_dpo(
        policy,
        train,
        reference_logprobs(ref, train, 0, 0.7),
        heldout,
        reference_logprobs(ref, heldout, 0, 0.7),
        cfg.dpo,
        pad_id=0,
        temperature=0.7,
        seed=0,
        log=rows.append,
    )
    assert state["step"] == 2 * math.ceil(len(train) / 8) == len(rows)
    # π = ρ at the start: every implicit reward is 0 up to rounding (chance is 0.25)
    assert state["heldout_accuracy_before"] < 0.35 and state["heldout_accuracy"] > 0.6, state
    losses = [r["dpo/loss"] for r in rows]
    assert losses[0] == pytest.approx(math.log(4), rel=1e-3)  # π = ρ at the start: uniform over the 4
    assert sum(losses[-5:]) / 5 < losses[0] - 0.3, losses
    unchanged = [n for n, p in policy.named_parameters() if n in before and torch.equal(p, before[n])]
    assert not [n for n in unchanged if "wpe" not in n], unchanged  # positions past the 10th are never used


def test_shared_trunk_cache_gives_the_full_forwards_logprobs_and_the_same_training():
    """Only the top block trains: the cached output of the frozen lower blocks (computed once) gives the
    same log-probs as the whole model, and a DPO run on it the same weights as one without it."""
    from lmpref.core.dpo import TrunkCache, reference_logprobs
    from lmpref.core.loading import load_causal_lm
    from lmpref.core.models import PolicyWithValue, freeze_lower_layers
    from lmpref.core.trunk import shared_depth

    torch.manual_seed(0)
    labels = _synthetic_labels(24, 1)
    for c in labels[::3]:  # queries and responses of several lengths: the padding differs per batch
        c.query_ids.extend([7, 8, 9])
        c.response_ids[0] = c.response_ids[0][:2]
    train, heldout = split_labels(labels, 0.25, 0)
    cfg = make_config("test", "tiny", {"dpo.lr": 1e-3, "dpo.epochs": 1, "dpo.batch_size": 4, "dpo.beta": 0.5})
    base = PolicyWithValue(load_causal_lm("tiny-gpt2"))
    runs = []
    for cached in (False, True):
        policy = PolicyWithValue(load_causal_lm("tiny-gpt2"))
        policy.load_state_dict(base.state_dict())
        freeze_lower_layers(policy.lm, 1)
        policy.value_head.requires_grad_(False)
        ref = PolicyWithValue(load_causal_lm("tiny-gpt2")).eval().requires_grad_(False)
        ref.load_state_dict(base.state_dict())
        depth = shared_depth(policy.lm, ref.lm)
        assert depth == policy.lm.config.num_hidden_layers - 1 >= 1
        trunk = None
        if cached:
            trunk = TrunkCache(depth)
            pairs, _ = flat_pairs(labels)
            trunk.fill(ref.lm, pairs, pad_id=0, batch_size=5)
            assert len(trunk.rows) == len({(tuple(q), tuple(r)) for q, r in pairs})
            with torch.no_grad():
                torch.testing.assert_close(
                    sequence_logprobs(policy, pairs[:9], 0, 0.7, trunk),
                    sequence_logprobs(policy, pairs[:9], 0, 0.7),
                    rtol=1e-5,
                    atol=1e-5,
                )
        state = train_dpo(
            policy,
            train,
            reference_logprobs(ref, train, 0, 0.7, trunk=trunk),
            heldout,
            reference_logprobs(ref, heldout, 0, 0.7, trunk=trunk),
            cfg.dpo,
            pad_id=0,
            temperature=0.7,
            seed=0,
            trunk=trunk,
        )
        runs.append((state, {n: p.detach().clone() for n, p in policy.named_parameters()}))
    (plain, w_plain), (fast, w_fast) = runs
    assert fast["heldout_accuracy"] == pytest.approx(plain["heldout_accuracy"])
    moved = [n for n in w_plain if not torch.equal(w_plain[n], base.state_dict()[n])]
    assert moved  # the comparison below compares trained weights
    for n in w_plain:
        torch.testing.assert_close(w_fast[n], w_plain[n], rtol=1e-3, atol=1e-4)  # Adam: 5 steps of 1e-3 at most


# ---------------------------------------------------------------------------------------------
# The command


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    d = tmp_path_factory.mktemp("dpo")
    assert main(["sample", *TINY, "--out", str(d / "s.jsonl")]) == 0
    assert main(["label", str(d / "s.jsonl"), "--labeler", "sentiment", "--out", str(d / "l.jsonl")]) == 0
    return d


def _dpo_argv(labels, run, *extra):
    return ["train-policy", *TINY, "--algo", "dpo", "--labels", str(labels), "--run-dir", str(run), *extra]


def test_algo_is_validated_with_the_choices(capsys):
    with pytest.raises(ConfigError, match="choose one of ppo, dpo, rloo"):
        make_config("test", "tiny", {"algo": "sft"})
    assert main(["train-policy", *TINY, "--algo", "dqn", "--labels", "x.jsonl"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ppo, dpo, rloo" in err and "Traceback" not in err
    assert main(["train-policy", *TINY, "--algo", "dpo"]) == 2
    assert "--labels" in capsys.readouterr().err
    assert main(["train-policy", *TINY]) == 2
    assert "--reward-model" in capsys.readouterr().err


def test_train_policy_dpo_writes_policy_metrics_and_cached_reference_logprobs(labeled, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_dpo_argv(labeled / "l.jsonl", run, "--set", "dpo.batch_size=4")) == 0
    assert "held-out implicit-reward accuracy" in capsys.readouterr().out
    assert (run / "policy" / "config.json").exists() and (run / "tb").is_dir()
    rows = [r for _, r in read_jsonl(run / "metrics.jsonl")]
    n_labels = len(list(read_jsonl(labeled / "l.jsonl")))
    n_train = n_labels - round(n_labels * 0.25)  # the tiny preset holds a quarter out
    assert n_train >= 8 and [r["step"] for r in rows] == list(range(1, math.ceil(n_train / 4) + 1))
    assert all("dpo/loss" in r for r in rows) and "dpo/heldout_accuracy" in rows[-1]
    cached = json.loads((run / "dpo_ref_logprobs.json").read_text())
    assert len(cached["logprobs"]) == n_labels and all(all(v < 0 for v in lp) for lp in cached["logprobs"])
    summary = json.loads((run / "dpo.json").read_text())
    assert summary["n_train"] == n_train and summary["step"] == len(rows)


def test_dpo_andon_stop_then_resume_continues_where_it_stopped(labeled, tmp_path, monkeypatch):
    from lmpref.steps.train import step_train_dpo

    cfg = make_config("test", "tiny", {"algo": "dpo", "dpo.batch_size": 2, "run_dir": str(tmp_path / "run")})
    run = cfg.resolved_run_dir()
    run.mkdir()
    calls = []

    def cord():
        calls.append(1)
        return "paused by an admin" if len(calls) == 3 else None

    state = step_train_dpo(cfg, labeled / "l.jsonl", run, should_stop=cord)
    assert state == {**state, "step": 2, "stopped": "paused by an admin"}
    assert not (run / "policy").exists()
    ckpt = json.loads((run / "checkpoints" / (run / "checkpoints/latest").read_text() / "state.json").read_text())
    assert ckpt["step"] == 2
    # the reference log-probs are not computed again on resuming
    import lmpref.core.dpo as dpo

    monkeypatch.setattr(dpo, "reference_logprobs", lambda *a, **k: pytest.fail("recomputed"))
    state = step_train_dpo(cfg, labeled / "l.jsonl", run, resume=True)
    assert "stopped" not in state and (run / "policy" / "config.json").exists()
    steps = [r["step"] for _, r in read_jsonl(run / "metrics.jsonl")]
    assert steps == list(range(1, state["step"] + 1))  # 1, 2 before the stop; 3... after: none twice


def test_dpo_killed_mid_run_resumes_to_the_same_policy_as_an_unbroken_run(labeled, tmp_path):
    argv = _dpo_argv(labeled / "l.jsonl", tmp_path / "killed", "--set", "dpo.batch_size=2")
    cmd = [sys.executable, KILL_AT, "update:3", "--", *argv]
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=300).returncode == -9
    steps = [r["step"] for _, r in read_jsonl(tmp_path / "killed" / "metrics.jsonl")]
    assert steps == [1, 2, 3] and not (tmp_path / "killed" / "policy").exists()
    assert main([*argv, "--resume"]) == 0
    steps = [r["step"] for _, r in read_jsonl(tmp_path / "killed" / "metrics.jsonl")]
    assert steps[:4] == [1, 2, 3, 3]  # step 3 was logged, then killed before its checkpoint: redone once
    assert main(_dpo_argv(labeled / "l.jsonl", tmp_path / "whole", "--set", "dpo.batch_size=2")) == 0
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "killed" / "policy" / "model.safetensors"))
    b = load_file(str(tmp_path / "whole" / "policy" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_run_algo_dpo_samples_labels_trains_and_evaluates_without_a_reward_model(tmp_path):
    run = tmp_path / "run"
    assert main(["run", *TINY, "--algo", "dpo", "--run-dir", str(run)]) == 0
    assert not (run / "reward_model").exists()
    result = json.loads((run / "eval.json").read_text())
    assert "win_rate" in result and (run / "policy" / "config.json").exists()
    assert json.loads((run / "config.json").read_text())["algo"] == "dpo"
