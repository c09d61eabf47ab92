"""The fast paths on a GPU: the compiled static-cache sampler (CUDA graphs) and bf16 autocast give the
plain path's numbers. Skipped without CUDA (CI has none); run them in a GPU session:

    PYTHONPATH=src python -m pytest -q tests/test_fast_paths_cuda.py

The CPU twins, which CI runs, are in tests/test_fast_paths.py.
"""

import copy

import pytest
import torch

from fast_path_fixtures import queries, tiny_policy
from lmpref.config import make_config
from lmpref.core.accel import StaticSampler, autocast
from lmpref.core.batching import pad_left
from lmpref.core.loading import load_tokenizer
from lmpref.core.ppo import train_policy
from lmpref.core.sampling import cat_query_response, generate, logprobs_of

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run in a GPU session)"),
]
R, T = 8, 0.7


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-gpt2")


@pytest.fixture(scope="module")
def policy():
    return tiny_policy().cuda()


def _queries(tok, n=16):
    return queries(tok, n)


def _batch(tok, n=16):
    qids, qmask = pad_left([q.ids for q in _queries(tok, n)], tok.pad_token_id, 12)  # (B, 12)
    return qids.cuda(), qmask.cuda()


@pytest.mark.parametrize("compile", [False, True])
def test_sampler_matches_generate_on_cuda_fp32(tok, policy, compile):
    """float32: the same draws give the same tokens; CUDA-graph replays (compile=True) reuse the
    cache's addresses, so the second and third calls must match too."""
    qids, qmask = _batch(tok)
    torch.manual_seed(1)
    plain = generate(policy.lm, qids, qmask, response_length=R, temperature=T, pad_id=tok.pad_token_id)
    ids, mask = cat_query_response(qids, qmask, plain)
    with torch.no_grad():
        logits, values = policy(ids, mask, R, T)
    sampler = StaticSampler(compile=compile)
    for _ in range(3):
        torch.manual_seed(1)
        responses, lp, v = sampler(policy, qids, qmask, response_length=R, temperature=T)
        assert (responses == plain).float().mean() > 0.99  # a draw on a rounding boundary may differ
        same = (responses == plain).all(1)
        torch.testing.assert_close(lp[same], logprobs_of(logits, plain)[same], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(v[same], values[same], atol=1e-4, rtol=1e-4)


def test_sampler_logprobs_under_bf16_autocast_match_a_bf16_forward(tok, policy):
    """bf16: the sampling pass's log-probs are the ones a bf16 scoring forward gives, within bf16's
    precision, so the first PPO ratio is 1 up to rounding."""
    qids, qmask = _batch(tok)
    with autocast("cuda", "bf16"):
        torch.manual_seed(1)
        responses, lp, v = StaticSampler()(policy, qids, qmask, response_length=R, temperature=T)
        ids, mask = cat_query_response(qids, qmask, responses)
        with torch.no_grad():
            logits, values = policy(ids, mask, R, T)
    torch.testing.assert_close(lp, logprobs_of(logits, responses), atol=0.05, rtol=0.02)
    torch.testing.assert_close(v, values, atol=0.05, rtol=0.02)


def _train(policy, tok, fast: str, precision: str):
    queries = _queries(tok, 32)
    cfg = make_config(
        "test",
        "tiny",
        {
            "ppo.batch_size": 16,
            "ppo.minibatches": 2,
            "ppo.epochs": 2,
            "ppo.total_episodes": 32,
            "ppo.lr": 1e-3,
            "task.response_length": R,
            "task.truncate_after": 2,
            "task.query_length": 12,
            "ppo.fast_sampling": fast,
            "ppo.fused_adam": fast,
            "ppo.compile": fast,
            "ppo.mixed_precision": precision,
            "ppo.micro_batch_size": -1 if fast == "on" else 0,
        },
    )
    p, ref = copy.deepcopy(policy), copy.deepcopy(policy).requires_grad_(False)
    stats = []
    train_policy(
        p,
        ref,
        lambda ids, mask, last: ids[:, -1].float() / 50_000,
        tok,
        lambda u, n: queries[(u % 2) * 16 :][:n],
        cfg.ppo,
        cfg.task,
        seed=0,
        device=torch.device("cuda"),
        log=stats.append,
        forward_batch=16,
    )
    return p, stats


def test_train_policy_all_fast_paths_on_cuda_end_where_the_plain_path_ends(tok, policy):
    """fp32, two updates: compiled sampler + fused Adam + fitted micro-batch against all off."""
    (a, sa), (b, sb) = _train(policy, tok, "off", "no"), _train(policy, tok, "on", "no")
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-3, msg=name)
    assert sa[-1]["objective/kl"] == pytest.approx(sb[-1]["objective/kl"], abs=1e-3)


def test_train_policy_bf16_stays_finite_and_moves_every_trained_parameter(tok, policy):
    """bf16 autocast with float32 master weights: no NaN/inf in any statistic, every parameter moves."""
    p, stats = _train(policy, tok, "on", "bf16")
    for s in stats:
        bad = {k: v for k, v in s.items() if isinstance(v, float) and not torch.isfinite(torch.tensor(v))}
        assert not bad, bad
    for (name, x), y in zip(p.named_parameters(), policy.parameters()):
        assert x.dtype == torch.float32, name
        assert not torch.equal(x, y), f"{name} did not move"
