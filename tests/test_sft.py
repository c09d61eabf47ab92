"""Supervised fine-tuning: the loss on literal tensors, and a tiny model that learns."""

import math

import pytest
import torch

from lmpref.config import SFTConfig, make_config
from lmpref.core.sft import batch_pairs, sft_loss, target_ids, train_sft


def test_sft_loss_is_the_mean_nll_of_unmasked_tokens():
    logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]]))  # (B=1, R=3, V=2)
    targets = torch.tensor([[0, 1, 0]])
    mask = torch.tensor([[1, 1, 0]])  # the last token is padding
    assert sft_loss(logits, targets, mask).item() == pytest.approx((-math.log(0.5) - math.log(0.1)) / 2)


def test_batch_pairs_pads_queries_left_and_targets_right():
    ids, mask, targets, t_mask = batch_pairs([([5, 6], [7]), ([8], [9, 10])], pad_id=0, query_length=3)
    assert ids.tolist() == [[0, 5, 6, 7, 0], [0, 0, 8, 9, 10]]
    assert mask.tolist() == [[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]]
    assert targets.tolist() == [[7, 0], [9, 10]] and t_mask.tolist() == [[1, 0], [1, 1]]


@pytest.fixture(scope="module")
def tok():
    from lmpref.core.loading import load_tokenizer

    return load_tokenizer("tiny-gpt2")


def test_target_is_the_reference_on_one_line_ending_in_a_newline(tok):
    ids = target_ids(tok, "Two lines\nof summary.", 75)
    assert tok.decode(ids) == " Two lines of summary.\n"
    assert len(target_ids(tok, "word " * 100, 10)) == 10


def test_tiny_sft_lowers_heldout_loss_and_changes_every_trained_parameter(tok):
    from lmpref.core.loading import load_causal_lm
    from lmpref.core.models import PolicyWithValue
    from lmpref.tasks.summarization import SummarizationSource

    cfg = make_config("cnndm", "tiny", {"task.query_length": 48})
    pairs = {}
    for split in ("train", "eval"):
        qs = SummarizationSource(tok, cfg.task, split).queries(with_reference=True)
        pairs[split] = [(q.ids, target_ids(tok, q.extra["reference"], 16)) for q in qs]
    torch.manual_seed(0)
    policy = PolicyWithValue(load_causal_lm("tiny-gpt2"))
    before = {n: p.detach().clone() for n, p in policy.lm.named_parameters()}
    m = train_sft(
        policy,
        pairs["train"][:32],
        pairs["eval"][:6],
        SFTConfig(lr=3e-3, epochs=2, batch_size=8),
        pad_id=tok.pad_token_id,
        query_length=48,
        seed=0,
    )
    assert m["n_train"] == 32 and m["n_heldout"] == 6
    assert m["heldout_loss_after"] < m["heldout_loss_before"] - 0.3, m  # measured: 10.83 -> 10.34
    unchanged = [n for n, p in policy.lm.named_parameters() if torch.equal(p, before[n]) and "wpe" not in n]
    assert not unchanged  # position embeddings past the 64th are never used
