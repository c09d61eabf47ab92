"""The shared frozen trunk gives the plain full forward's numbers (fp32 tolerance), on GPT-2 and on
a Llama-shaped model (the bundled SmolLM2's architecture), both tiny and random."""

import copy

import pytest
import torch

from lmpref.core.batching import pad_left
from lmpref.core.loading import load_causal_lm
from lmpref.core.models import PolicyWithValue, freeze_lower_layers, from_depth, lower_hidden, transformer_blocks
from lmpref.core.reward import RewardModel
from lmpref.core.sampling import cat_query_response, logprobs_of
from lmpref.core.trunk import sample, shared_depth

R, T = 5, 0.7


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


def _tiny_gpt2():
    return load_causal_lm("tiny-gpt2").eval()


MODELS = {"gpt2": _tiny_gpt2, "llama": _tiny_llama}


def _queries(vocab: int):
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (6, 3, 5)]
    return pad_left(seqs, 0, 7)  # (3, 7): left padding, as every query


def _pair(kind, trainable: int):
    """A policy whose top `trainable` blocks have moved away from ρ, and ρ."""
    lm = MODELS[kind]()
    ref = PolicyWithValue(copy.deepcopy(lm)).eval()
    policy = PolicyWithValue(lm).eval()
    freeze_lower_layers(policy.lm, trainable)
    ref.requires_grad_(False)
    with torch.no_grad():
        for p in policy.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return policy, ref


@pytest.mark.parametrize("kind", MODELS)
def test_shared_depth_reads_the_weights(kind):
    policy, ref = _pair(kind, trainable=1)
    n = policy.lm.config.num_hidden_layers
    assert shared_depth(policy.lm, ref.lm) == n - 1
    with torch.no_grad():  # a lower block that differs ends the shared part there
        next(transformer_blocks(ref.lm)[1].parameters()).add_(1e-3)
    assert shared_depth(policy.lm, ref.lm) == 1
    policy.lm.requires_grad_(True)  # nothing is shared with a model that trains everything
    assert shared_depth(policy.lm, ref.lm) == 0


@pytest.mark.parametrize("kind", MODELS)
def test_upper_pass_on_shared_hidden_equals_the_full_forward(kind):
    policy, ref = _pair(kind, trainable=1)
    F = shared_depth(policy.lm, ref.lm)
    qids, qmask = _queries(policy.lm.config.vocab_size)
    responses = torch.randint(3, 90, (3, R), generator=torch.Generator().manual_seed(2))
    ids, mask = cat_query_response(qids, qmask, responses)
    with torch.no_grad():
        full_logits, full_values = policy(ids, mask, R, T)
        ref_logits, _ = ref(ids, mask, R, T)
        h = lower_hidden(ref.lm, ids, mask, F)  # computed once, with ρ's lower blocks
        assert h.shape == (3, ids.shape[1], policy.lm.config.hidden_size)
        with from_depth(policy.lm, h, F):
            logits, values = policy(ids, mask, R, T)
        with from_depth(ref.lm, h, F):
            shared_ref_logits, _ = ref(ids, mask, R, T)
    torch.testing.assert_close(logits, full_logits, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(values, full_values, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(shared_ref_logits, ref_logits, atol=1e-5, rtol=1e-4)
    # the blocks' own forwards are back once the block ends
    assert "forward" not in vars(transformer_blocks(policy.lm)[0])


@pytest.mark.parametrize("kind", MODELS)
def test_gradients_through_the_upper_pass_equal_the_full_backward(kind):
    policy, ref = _pair(kind, trainable=1)
    F = shared_depth(policy.lm, ref.lm)
    qids, qmask = _queries(policy.lm.config.vocab_size)
    responses = torch.randint(3, 90, (3, R), generator=torch.Generator().manual_seed(3))
    ids, mask = cat_query_response(qids, qmask, responses)
    grads = []
    for shared in (False, True):
        policy.zero_grad()
        h = lower_hidden(ref.lm, ids, mask, F) if shared else None
        with from_depth(policy.lm, h, F):
            logits, values = policy(ids, mask, R, T)
        (logprobs_of(logits, responses).sum() + values.sum()).backward()
        grads.append({n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("k", [1, 3])
def test_sampling_pass_keeps_logprobs_values_and_hidden_states(kind, k):
    policy, ref = _pair(kind, trainable=1)
    F = shared_depth(policy.lm, ref.lm)
    with torch.no_grad():
        policy.value_head.weight.normal_()  # a value head that reads something
    qids, qmask = _queries(policy.lm.config.vocab_size)
    torch.manual_seed(0)
    s = sample(
        policy.lm, qids, qmask, k=k, response_length=R, temperature=T, depths=(F, 1), value_head=policy.value_head
    )
    N = 3 * k
    assert s.responses.shape == (N, R) and s.query_ids.shape == (N, qids.shape[1])
    torch.testing.assert_close(s.query_ids[::k], qids)
    assert (s.responses != policy.lm.generation_config.eos_token_id).all()  # EOS is never sampled
    ids, mask = cat_query_response(s.query_ids, s.query_mask, s.responses)
    with torch.no_grad():
        logits, values = policy(ids, mask, R, T)
        h = lower_hidden(ref.lm, ids, mask, F)
    torch.testing.assert_close(s.logprobs, logprobs_of(logits, s.responses), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s.values, values, atol=1e-4, rtol=1e-4)
    # left padding: only the real positions are compared (padded ones are masked out everywhere)
    real = mask.bool()
    torch.testing.assert_close(s.hidden[F][real], h[real], atol=1e-4, rtol=1e-4)
    h1 = lower_hidden(ref.lm, ids, mask, 1)
    torch.testing.assert_close(
        s.hidden[1][real], h1[real], atol=1e-4, rtol=1e-4
    )  # a second depth kept in the same pass


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_reward_model_on_shared_hidden_equals_its_full_forward(kind, pooling, tmp_path):
    lm = MODELS[kind]()
    lm.save_pretrained(tmp_path / "base")
    n = lm.config.num_hidden_layers
    rm = RewardModel.from_lm(str(tmp_path / "base"), pooling=pooling, layers=n - 1).eval()
    rm.requires_grad_(False)
    lm.requires_grad_(False)
    assert rm.clf.config.num_hidden_layers == n - 1
    F = shared_depth(lm, rm.clf)
    assert F == n - 1
    qids, qmask = _queries(lm.config.vocab_size)
    responses = torch.randint(3, 90, (3, R), generator=torch.Generator().manual_seed(4))
    ids, mask = cat_query_response(qids, qmask, responses)
    last = torch.tensor([qids.shape[1] + 2, qids.shape[1] + 4, qids.shape[1] + 3])  # truncated responses
    with torch.no_grad():
        full = rm(ids, mask, last, qids.shape[1])
        shared = rm(ids, mask, last, qids.shape[1], hidden=lower_hidden(lm, ids, mask, F), depth=F)
    torch.testing.assert_close(shared, full, atol=1e-5, rtol=1e-4)
    rm.save(tmp_path / "rm")
    loaded = RewardModel.load(tmp_path / "rm").eval()
    assert loaded.pooling == pooling and loaded.clf.config.num_hidden_layers == n - 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask, last, qids.shape[1]), full, atol=1e-6, rtol=1e-5)


def test_mean_pooling_reads_only_the_response():
    from lmpref.core.models import pool_response

    h = torch.arange(2 * 5 * 1, dtype=torch.float32).reshape(2, 5, 1)  # (B=2, T=5, D=1): values 0..4, 5..9
    last = torch.tensor([3, 4])
    assert pool_response(h, last, 2, "mean").squeeze(1).tolist() == [2.5, 8.0]  # mean of [2,3] and [7,8,9]
    assert pool_response(h, last, 2, "last").squeeze(1).tolist() == [3.0, 9.0]
    with pytest.raises(ValueError, match="query length"):
        pool_response(h, last, None, "mean")


class _Tok:
    pad_token_id = 0


@pytest.mark.parametrize("kind", MODELS)
def test_rollout_and_ppo_update_on_the_shared_trunk_equal_the_full_forwards(kind, tmp_path):
    """One rollout with the plan; its numbers recomputed with full forwards on the same responses; then
    one PPO update from each path (same rollout, same minibatch order) moves the weights the same."""
    from types import SimpleNamespace

    from lmpref.config import PPOConfig, TaskConfig
    from lmpref.core.ppo import Rollout, make_optimizer, ppo_update, rollout
    from lmpref.core.trunk import plan

    policy, ref = _pair(kind, trainable=1)
    policy.lm.save_pretrained(tmp_path / "base")  # the reward model's trunk: ρ's lower blocks, as the policy's
    ref.lm.save_pretrained(tmp_path / "base")
    n = policy.lm.config.num_hidden_layers
    rm = RewardModel.from_lm(str(tmp_path / "base"), pooling="mean", layers=n - 1).eval()
    rm.requires_grad_(False)
    p = plan(policy.lm, ref.lm, rm)
    assert p.depth == n - 1 and p.reward_depth == n - 1
    task = TaskConfig(query_length=7, response_length=R, temperature=T, truncate_token="")
    qids, _ = _queries(policy.lm.config.vocab_size)
    queries = [SimpleNamespace(ids=[t for t in row.tolist() if t]) for row in qids]
    torch.manual_seed(0)
    ro = rollout(policy, ref, rm, _Tok(), queries, task, forward_batch=2, device="cpu", plan=p)
    assert ro.hidden is not None and ro.depth == n - 1
    ids, mask = cat_query_response(ro.query_ids, ro.query_mask, ro.responses)
    with torch.no_grad():
        logits, values = policy(ids, mask, R, T)
        ref_logits, _ = ref(ids, mask, R, T, with_values=False)
        scores = rm(ids, mask, ro.query_ids.shape[1] + ro.lengths - 1, ro.query_ids.shape[1])
    torch.testing.assert_close(ro.logprobs, logprobs_of(logits, ro.responses), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ro.values, values, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ro.ref_logprobs, logprobs_of(ref_logits, ro.responses), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ro.scores, scores, atol=1e-5, rtol=1e-4)
    cfg = PPOConfig(batch_size=3, minibatches=1, epochs=2, lr=1e-3)
    after = []
    for shared in (True, False):
        model = copy.deepcopy(policy)
        opt = make_optimizer([q for q in model.parameters() if q.requires_grad], cfg)
        r = ro if shared else Rollout(**{**ro.__dict__, "hidden": None, "depth": 0})
        ppo_update(model, opt, r, 0.1, cfg, task, torch.Generator().manual_seed(3))
        after.append({k: v for k, v in model.state_dict().items()})
    moved = [k for k in after[0] if not torch.equal(after[0][k], policy.state_dict()[k])]
    assert moved  # the update did something
    for k in after[0]:
        torch.testing.assert_close(after[0][k], after[1][k], atol=1e-5, rtol=1e-4, msg=k)
