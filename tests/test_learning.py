"""Tiny-model runs that assert learning happened: PPO raises a programmatic reward with KL near its
target; a reward model trained on synthetic best-of-K labels beats chance on held-out labels."""

import random

import pytest
import torch

from lmpref.config import ConfigError, make_config
from lmpref.core.loading import load_causal_lm, load_tokenizer
from lmpref.core.models import PolicyWithValue
from lmpref.core.ppo import train_policy
from lmpref.core.reward import Choice, RewardModel, accuracy, train_reward
from lmpref.records import TaskQuery


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-gpt2")


class _IdTokenizer:
    pad_token_id = 0


def _small_vocab_policy(vocab: int):
    """A random GPT-2 over a 16-token vocabulary: the policy can reach the reward's optimum in a few
    dozen updates, so the test shows learning in seconds."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return PolicyWithValue(
        GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_layer=2, n_embd=32, n_head=2, n_positions=64))
    )


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_ppo_raises_reward_with_kl_near_target(precision):
    """PPO learns, in float32 and under bf16 autocast (the sentiment preset's `auto` on a CPU with
    AVX-512 BF16), with float32 master weights."""
    torch.manual_seed(0)
    vocab = 16
    cfg = make_config(
        "test",
        "tiny",
        {
            "ppo.total_episodes": 32 * 30,
            "ppo.batch_size": 32,
            "ppo.minibatches": 2,
            "ppo.lr": 3e-3,
            "ppo.kl_coef": 0.05,
            "ppo.kl_target": 3.0,
            "ppo.kl_horizon": 500,
            "task.query_length": 6,
            "ppo.mixed_precision": precision,
        },
    )
    policy = _small_vocab_policy(vocab)
    ref = PolicyWithValue(policy.lm.__class__(policy.lm.config)).eval().requires_grad_(False)
    ref.lm.load_state_dict(policy.lm.state_dict())
    before = [p.detach().clone() for p in policy.parameters()]
    R = cfg.task.response_length

    def reward_fn(ids, mask, last_index):  # share of low-id response tokens, centred: (B,)
        return (ids[:, -R:] < vocab // 2).float().mean(1) * 2 - 1

    rng = random.Random(0)
    queries = [TaskQuery(id=str(i), text="", ids=[rng.randrange(1, vocab) for _ in range(6)]) for i in range(64)]
    stats = []
    train_policy(
        policy,
        ref,
        reward_fn,
        _IdTokenizer(),
        lambda update, n: rng.sample(queries, n),
        cfg.ppo,
        cfg.task,
        seed=0,
        device=torch.device("cpu"),
        log=stats.append,
    )
    scores = [s["objective/scores"] for s in stats]
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert last > first + 0.3, f"reward did not rise: {scores}"
    kl_last = sum(s["objective/kl"] for s in stats[-5:]) / 5
    assert 0.5 < kl_last < 2 * cfg.ppo.kl_target, f"KL {kl_last:.2f} far from target {cfg.ppo.kl_target}"
    assert stats[-1]["objective/kl_coef"] != cfg.ppo.kl_coef  # the adaptive controller acted
    changed = [not torch.equal(a, b) for a, b in zip(before, policy.parameters())]
    assert all(changed), "every trainable parameter (value head included) should have moved"
    assert all(p.dtype == torch.float32 for p in policy.parameters())  # master weights stay float32


def test_reward_model_beats_chance_on_synthetic_labels(tok):
    torch.manual_seed(0)
    rng = random.Random(0)
    good, bad = list(range(1000, 1010)), list(range(2000, 2010))

    def response():
        return [rng.choice(good if rng.random() < rng.random() else bad) for _ in range(6)]

    labels = []
    for _ in range(320):
        responses = [response() for _ in range(4)]
        counts = [sum(t in good for t in r) for r in responses]
        if counts.count(max(counts)) > 1:
            continue  # keep labels with a clear best
        labels.append(Choice([rng.randrange(5000) for _ in range(4)], responses, counts.index(max(counts))))
    cfg = make_config(
        "test", "tiny", {"reward.lr": 1e-3, "reward.epochs": 4, "reward.batch_size": 8, "reward.holdout_fraction": 0.2}
    )
    rm = RewardModel.from_lm("tiny-gpt2")
    norm_pairs = [(lab.query_ids, r) for lab in labels[:16] for r in lab.response_ids]
    m = train_reward(rm, labels, norm_pairs, cfg.reward, pad_id=tok.pad_token_id, seed=0)
    assert m["chance"] == pytest.approx(0.25)
    assert m["accuracy_after"] > 0.5 > m["accuracy_before"], m
    # normalised after training: mean 0, std 1 on the normalisation samples
    from lmpref.core.reward import score_pairs

    r = score_pairs(rm, norm_pairs, tok.pad_token_id)
    assert abs(r.mean().item()) < 1e-4 and abs(r.std().item() - 1) < 1e-3
    assert accuracy(rm, labels[:40], tok.pad_token_id) > 0.5


def test_prompted_head_only_reward_model_beats_chance_and_l2sp_holds_it_at_its_prior(tok, tmp_path):
    """The small scale's reward model: a template after the response, the head started from the LM's
    unembedding of two words, only the head trained (features computed once), L2-SP toward the start."""
    from lmpref.core.reward import new_reward_model

    torch.manual_seed(0)
    rng = random.Random(1)
    good, bad = list(range(1000, 1010)), list(range(2000, 2010))
    labels = []
    for _ in range(400):
        responses = [[rng.choice(good if rng.random() < rng.random() else bad) for _ in range(6)] for _ in range(4)]
        counts = [sum(t in good for t in r) for r in responses]
        if counts.count(max(counts)) == 1:
            labels.append(Choice([rng.randrange(5000) for _ in range(4)], responses, counts.index(max(counts))))
    overrides = {
        "model.name": "tiny-gpt2",
        "reward.lr": 3e-2,
        "reward.epochs": 20,
        "reward.holdout_fraction": 0.25,
        "reward.trainable_layers": 0,
        "reward.pooling": "mean",
        "reward.template": " Overall it is",
        "reward.verbalizer": " good| bad",
    }
    cfg = make_config("test", "tiny", overrides)
    rm = new_reward_model(cfg, "tiny-gpt2", tok, "cpu")
    a, b = tok.encode(" good")[0], tok.encode(" bad")[0]
    unembed = load_causal_lm("tiny-gpt2").get_output_embeddings().weight
    torch.testing.assert_close(rm.clf.score.weight[0], unembed[a] - unembed[b])  # the verbalizer prior
    assert rm.template.tolist() == tok.encode(" Overall it is")
    assert not any(p.requires_grad for n, p in rm.named_parameters() if not n.startswith("clf.score"))
    norm_pairs = [(lab.query_ids, r) for lab in labels[:16] for r in lab.response_ids]
    m = train_reward(rm, labels, norm_pairs, cfg.reward, pad_id=tok.pad_token_id, seed=0)
    assert (
        m["n_heldout"] >= 60 and m["accuracy_after"] > m["chance"] + 0.25 and m["accuracy_after"] > m["accuracy_before"]
    ), m
    rm.save(tmp_path / "rm")
    loaded = RewardModel.load(tmp_path / "rm")
    assert loaded.template.tolist() == rm.template.tolist() and loaded.pooling == "mean"
    held = labels[-20:]
    assert accuracy(loaded, held, tok.pad_token_id) == accuracy(rm, held, tok.pad_token_id)
    # A strong L2-SP keeps the head where it started: same prior, (almost) no movement.
    strong = new_reward_model(
        make_config("test", "tiny", {**overrides, "reward.weight_decay": 1e4}), "tiny-gpt2", tok, "cpu"
    )
    w0 = strong.clf.score.weight.detach().clone()
    train_reward(
        strong,
        labels,
        norm_pairs,
        make_config("test", "tiny", {**overrides, "reward.weight_decay": 1e4}).reward,
        pad_id=tok.pad_token_id,
        seed=0,
    )
    moved_strong = (strong.clf.score.weight - w0).norm().item()
    moved_free = (rm.clf.score.weight - w0).norm().item()
    assert moved_strong < 0.1 * moved_free, (moved_strong, moved_free)


def test_append_after_writes_the_template_after_each_cut_response():
    from lmpref.core.models import append_after

    ids = torch.tensor([[0, 5, 6, 7, 8], [4, 5, 6, 7, 8]])
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    new_ids, new_mask, last = append_after(ids, mask, torch.tensor([2, 4]), torch.tensor([9, 9]))
    assert new_ids.tolist() == [[0, 5, 6, 9, 9, 0, 0], [4, 5, 6, 7, 8, 9, 9]]
    assert new_mask.tolist() == [[0, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]]
    assert last.tolist() == [4, 6]


def test_policy_has_no_dropout_so_the_first_ratio_is_one():
    policy = PolicyWithValue(load_causal_lm("tiny-gpt2")).train()
    ids = torch.randint(0, 1000, (2, 10))
    mask = torch.ones_like(ids)
    a, _ = policy(ids, mask, 4)
    b, _ = policy(ids, mask, 4)
    assert torch.equal(a, b)


def test_response_only_reward_model_reads_the_response_alone_and_ignores_the_query(tmp_path):
    """`reward.response_only`: the score of query + response equals the score of the response read
    as a sequence of its own, whatever the query, with and without a template; it survives a save."""
    from lmpref.core.models import append_after

    torch.manual_seed(0)
    rm = RewardModel.from_lm("tiny-gpt2", template_ids=[7, 8], response_only=True).eval()
    plain = RewardModel.from_lm("tiny-gpt2", template_ids=[7, 8]).eval()
    plain.load_state_dict(rm.state_dict())
    Q = 4
    response = torch.tensor([[11, 12, 13, 14, 15], [21, 22, 23, 0, 0]])  # the second is cut after 3 tokens
    r_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    last = torch.tensor([Q + 4, Q + 2])
    scores = []
    for query in (torch.tensor([[0, 0, 5, 6], [1, 2, 3, 4]]), torch.tensor([[9, 9, 9, 9], [0, 0, 0, 8]])):
        q_mask = (query != 0).long()
        ids, mask = torch.cat([query, response], 1), torch.cat([q_mask, r_mask], 1)
        with torch.no_grad():
            scores.append(rm(ids, mask, last, Q))
    assert torch.equal(scores[0], scores[1])
    alone_ids, alone_mask, alone_last = append_after(response, r_mask, last - Q, torch.tensor([7, 8]))
    with torch.no_grad():
        h = plain.clf.base_model(input_ids=alone_ids, attention_mask=alone_mask).last_hidden_state
        expected = plain.head(h[torch.arange(2), alone_last])
    torch.testing.assert_close(scores[0], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="shared hidden states"):
        rm(ids, mask, last, Q, hidden=torch.zeros(2, 9, 64), depth=1)
    rm.save(tmp_path / "rm")
    assert RewardModel.load(tmp_path / "rm").response_only


def test_several_verbalizer_pairs_start_the_head_at_the_mean_of_their_differences(tok):
    """`reward.verbalizer = " good| bad; happy| sad"`: the head starts as the mean of the two pairs'
    unembedding differences, so its score is the mean of the two zero-shot log-odds."""
    from lmpref.core.reward import new_reward_model

    cfg = make_config(
        "test",
        "tiny",
        {"model.name": "tiny-gpt2", "reward.trainable_layers": 0, "reward.verbalizer": " good| bad; happy| sad"},
    )
    rm = new_reward_model(cfg, "tiny-gpt2", tok, "cpu")
    unembed = load_causal_lm("tiny-gpt2").get_output_embeddings().weight
    g, b, h, s = (tok.encode(w)[0] for w in (" good", " bad", " happy", " sad"))
    torch.testing.assert_close(rm.clf.score.weight[0], ((unembed[g] - unembed[b]) + (unembed[h] - unembed[s])) / 2)
    features = torch.randn(3, unembed.shape[1])
    logodds = [features @ (unembed[x] - unembed[y]) for x, y in ((g, b), (h, s))]
    torch.testing.assert_close(rm.clf.score(features)[:, 0], (logodds[0] + logodds[1]) / 2)


@pytest.mark.parametrize("bad", [" good|", " good| bad;", " good| bad; happy", " good| bad| sad"])
def test_a_malformed_verbalizer_is_refused_with_the_form_to_write(bad):
    with pytest.raises(ConfigError, match="several pairs separated by ';'"):
        make_config("test", "tiny", {"reward.verbalizer": bad})
