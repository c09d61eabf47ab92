"""Model plumbing: left padding with position ids, the saved reward model, layer freezing."""

import pytest
import torch

from lmpref.core.batching import pad_left
from lmpref.core.loading import load_causal_lm, load_tokenizer
from lmpref.core.models import PolicyWithValue, freeze_lower_layers, transformer_blocks
from lmpref.core.reward import RewardModel
from lmpref.core.sampling import logprobs_of


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-gpt2")


def test_gpt2_tokenizer_pads_left_with_eos(tok):
    assert tok.padding_side == "left" and tok.pad_token_id == tok.eos_token_id == 50256


def test_left_padding_gives_the_same_logprobs_as_no_padding(tok):
    policy = PolicyWithValue(load_causal_lm("tiny-gpt2")).eval()
    short, long = tok.encode("The cat sat."), tok.encode("It was the best of times, it was the worst.")
    resp = torch.tensor([[11, 262, 3290, 13]])
    R = resp.shape[1]
    batch_ids, batch_mask = pad_left([short + resp[0].tolist(), long + resp[0].tolist()], tok.pad_token_id)
    logits, values = policy(batch_ids, batch_mask, R)
    lp_batch = logprobs_of(logits, resp.expand(2, -1))
    for i, q in enumerate([short, long]):
        ids = torch.tensor([q + resp[0].tolist()])
        l1, v1 = policy(ids, torch.ones_like(ids), R)
        assert torch.allclose(logprobs_of(l1, resp)[0], lp_batch[i], atol=1e-5)
        assert torch.allclose(v1[0], values[i], atol=1e-6)


def test_reward_model_saves_as_a_transformers_model(tok, tmp_path):
    from transformers import AutoModelForSequenceClassification

    rm = RewardModel.from_lm("tiny-gpt2").eval()
    rm.set_normalization(2.0, -0.5)
    rm.save(tmp_path / "rm")
    ids = torch.tensor([tok.encode("Hello there, friend.")])
    mask = torch.ones_like(ids)
    last = torch.tensor([ids.shape[1] - 1])
    clf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    raw = clf(input_ids=ids, attention_mask=mask).logits[0, 0]
    assert clf.config.lmpref_reward_gain == 2.0 and clf.config.lmpref_reward_bias == -0.5
    loaded = RewardModel.load(tmp_path / "rm").eval()
    with torch.no_grad():
        assert loaded(ids, mask, last).item() == pytest.approx(2.0 * raw.item() - 0.5, abs=1e-5)
        assert loaded(ids, mask, last).item() == pytest.approx(rm(ids, mask, last).item(), abs=1e-6)


def test_freeze_lower_layers_trains_only_the_top():
    lm = load_causal_lm("tiny-gpt2")
    freeze_lower_layers(lm, 1)
    blocks = transformer_blocks(lm)
    assert not any(p.requires_grad for p in blocks[0].parameters())
    assert all(p.requires_grad for p in blocks[1].parameters())
    assert not lm.get_input_embeddings().weight.requires_grad
    assert all(p.requires_grad for p in lm.transformer.ln_f.parameters())
