"""Each fast path of accel.py gives the plain path's numbers on a tiny model on CPU."""

import copy

import pytest
import torch

from fast_path_fixtures import queries, tiny_policy
from lmpref.config import make_config
from lmpref.core import ppo as ppo_module
from lmpref.core.accel import StaticSampler, fit_micro_batch
from lmpref.core.batching import pad_left
from lmpref.core.loading import load_tokenizer
from lmpref.core.ppo import make_optimizer, ppo_update, rollout, train_policy
from lmpref.core.sampling import cat_query_response, generate, logprobs_and_entropy, logprobs_of

R, T = 6, 0.7


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-gpt2")


@pytest.fixture(scope="module")
def policy():
    return tiny_policy()


def _queries(tok, n=6):
    return queries(tok, n)


def _batch(tok, n=6):
    return pad_left([q.ids for q in _queries(tok, n)], tok.pad_token_id, 12)  # left-padded: (B, 12)


def _cfg(**over):
    base = {
        "ppo.batch_size": 8,
        "ppo.minibatches": 2,
        "ppo.epochs": 2,
        "ppo.total_episodes": 16,
        "ppo.lr": 1e-3,
        "task.response_length": R,
        "task.truncate_after": 2,
        "task.query_length": 12,
        "ppo.fast_sampling": "off",
        "ppo.fused_adam": "off",
    }
    return make_config("test", "tiny", {**base, **over})


@pytest.mark.parametrize("backend", [None, "eager"])
def test_static_sampler_matches_generate_and_forward(tok, policy, backend):
    qids, qmask = _batch(tok)
    torch.manual_seed(1)
    plain = generate(policy.lm, qids, qmask, response_length=R, temperature=T, pad_id=tok.pad_token_id)
    ids, mask = cat_query_response(qids, qmask, plain)
    with torch.no_grad():
        logits, values = policy(ids, mask, R, T)
    sampler = StaticSampler(compile=backend is not None, compile_backend=backend or "inductor")
    for _ in range(2):  # the second call reuses (and resets) the cache
        torch.manual_seed(1)
        responses, lp, v = sampler(policy, qids, qmask, response_length=R, temperature=T)
        assert torch.equal(responses, plain)  # the same random draws give the same tokens
        torch.testing.assert_close(lp, logprobs_of(logits, plain), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(v, values, atol=1e-5, rtol=1e-5)


def test_rollout_with_sampler_equals_plain_rollout(tok, policy):
    task = _cfg().task
    ref = copy.deepcopy(policy).requires_grad_(False)
    reward_fn = lambda ids, mask, last: ids[:, -R:].float().mean(1) / 1000  # noqa: E731
    outs = []
    for sampler in (None, StaticSampler()):
        torch.manual_seed(2)
        outs.append(
            rollout(policy, ref, reward_fn, tok, _queries(tok), task, forward_batch=4, device="cpu", sampler=sampler)
        )
    a, b = outs
    assert torch.equal(a.responses, b.responses) and torch.equal(a.scores, b.scores)
    for name in ("logprobs", "ref_logprobs", "values"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=1e-5, rtol=1e-5)


def _updated(policy, tok, cfg, micro=None):
    p = copy.deepcopy(policy)
    ref = copy.deepcopy(policy).requires_grad_(False)
    torch.manual_seed(3)
    ro = rollout(
        p,
        ref,
        lambda ids, mask, last: ids[:, -1].float() / 50_000,
        tok,
        _queries(tok, 8),
        cfg.task,
        forward_batch=8,
        device="cpu",
    )
    opt = make_optimizer(p.parameters(), cfg.ppo)
    ppo_update(p, opt, ro, 0.1, cfg.ppo, cfg.task, torch.Generator().manual_seed(0), micro_batch=micro)
    return p


def test_micro_batches_and_fused_adam_give_the_same_update(tok, policy):
    plain = _updated(policy, tok, _cfg())
    for other in (_updated(policy, tok, _cfg(), micro=2), _updated(policy, tok, _cfg(**{"ppo.fused_adam": "on"}))):
        for (name, a), b in zip(plain.named_parameters(), other.parameters()):
            torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-4, msg=name)
    assert not torch.equal(plain.value_head.weight, policy.value_head.weight)


def test_fit_micro_batch_halves_on_out_of_memory():
    tried = []

    def try_batch(n):
        tried.append(n)
        if n > 48:
            raise torch.OutOfMemoryError("fake")

    assert fit_micro_batch(try_batch, 512) == 32 and tried == [512, 256, 128, 64, 32]
    with pytest.raises(torch.OutOfMemoryError):
        fit_micro_batch(lambda n: (_ for _ in ()).throw(torch.OutOfMemoryError("fake")), 4)


def test_train_policy_fast_paths_end_where_the_plain_path_ends(tok, policy):
    """Two updates, every CPU-testable fast path on (static-cache sampling with its log-probs and
    values, fused Adam, micro-batch fitted to memory) against all off."""
    queries = _queries(tok, 16)
    finals = []
    for fast in ("off", "on"):
        cfg = _cfg(
            **{"ppo.fast_sampling": fast, "ppo.fused_adam": fast, "ppo.micro_batch_size": -1 if fast == "on" else 0}
        )
        p, ref = copy.deepcopy(policy), copy.deepcopy(policy).requires_grad_(False)
        stats = []
        train_policy(
            p,
            ref,
            lambda ids, mask, last: ids[:, -1].float() / 50_000,
            tok,
            lambda u, n: queries[(u % 2) * 8 :][:n],
            cfg.ppo,
            cfg.task,
            seed=0,
            device=torch.device("cpu"),
            log=stats.append,
            forward_batch=4,
        )
        finals.append((p, stats))
    (a, sa), (b, sb) = finals
    for (name, x), y in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(x, y, atol=5e-6, rtol=1e-4, msg=name)
    assert sa[-1]["objective/kl"] == pytest.approx(sb[-1]["objective/kl"], abs=1e-4)
    assert {"time/generation", "time/logprobs", "time/reward", "time/train"} <= set(sb[-1])


def _entropy_two_passes(logits, tokens):
    """The PPO epochs' log-probs and entropy as computed before issue 18: the entropy from a second
    softmax and log-softmax of the logits."""
    lp = logprobs_of(logits, tokens)
    with torch.no_grad():
        entropy = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    return lp, entropy


def test_one_log_softmax_for_logprobs_and_entropy_gives_the_update_of_two(tok, policy, monkeypatch):
    logits = torch.randn(3, 5, 50, dtype=torch.float64) * 4
    tokens = torch.randint(0, 50, (3, 5))
    (lp, ent), (lp0, ent0) = logprobs_and_entropy(logits, tokens), _entropy_two_passes(logits, tokens)
    assert torch.equal(lp, lp0)
    torch.testing.assert_close(ent, ent0, rtol=1e-12, atol=1e-12)
    assert not ent.requires_grad

    def update():
        p = copy.deepcopy(policy)
        ref = copy.deepcopy(policy).requires_grad_(False)
        torch.manual_seed(3)
        ro = rollout(p, ref, lambda ids, mask, last: ids[:, -1].float() / 50_000, tok, _queries(tok, 8),
                     cfg.task, forward_batch=8, device="cpu")  # fmt: skip
        stats = ppo_update(p, make_optimizer(p.parameters(), cfg.ppo), ro, 0.1, cfg.ppo, cfg.task,
                           torch.Generator().manual_seed(0), micro_batch=2)  # fmt: skip
        return p, stats

    cfg = _cfg()
    new, new_stats = update()
    monkeypatch.setattr(ppo_module, "logprobs_and_entropy", _entropy_two_passes)
    old, old_stats = update()
    for (name, a), b in zip(new.named_parameters(), old.parameters()):
        assert torch.equal(a, b), name  # the loss reads the same log-softmax: the same update, bit for bit
    assert new_stats.keys() == old_stats.keys()
    for k, v in old_stats.items():
        assert new_stats[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k
