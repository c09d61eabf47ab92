"""Literal tests of the best-of-K loss and label reading."""

import json
import math

import pytest
import torch

from lmpref.core.reward import Choice, batch_sequences, best_of_k_loss, read_labels, split_labels
from lmpref.io import DataError
from lmpref.tasks.summarization import read_tldr_comparisons


def test_best_of_k_loss_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 0.0, -1.0]])
    loss = best_of_k_loss(rewards, torch.tensor([1]))
    expected = -(2.0 - math.log(math.exp(1) + math.exp(2) + math.exp(0) + math.exp(-1)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_best_of_k_loss_pairwise_is_logistic():
    rewards = torch.tensor([[0.3, -0.4]])
    loss = best_of_k_loss(rewards, torch.tensor([0]))
    assert loss.item() == pytest.approx(-math.log(torch.sigmoid(torch.tensor(0.7)).item()), rel=1e-6)


def test_best_of_k_loss_mask_ignores_missing_responses():
    rewards = torch.tensor([[0.3, -0.4, 100.0, 100.0]])
    mask = torch.tensor([[True, True, False, False]])
    masked = best_of_k_loss(rewards, torch.tensor([0]), mask)
    pairwise = best_of_k_loss(rewards[:, :2], torch.tensor([0]))
    assert masked.item() == pytest.approx(pairwise.item())


def test_batch_sequences_layout():
    ids, mask, last = batch_sequences([([5, 6], [7]), ([8], [9, 10, 11])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 0, 0], [0, 8, 9, 10, 11]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]]
    assert last.tolist() == [2, 4]


class _Tok:
    def __len__(self):
        return 100

    def encode(self, text, add_special_tokens=False):
        return [ord(c) % 100 for c in text]


def _write(tmp_path, lines, name="labels.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


def test_read_labels_ours_and_openai(tmp_path):
    ours = _write(
        tmp_path,
        [
            json.dumps({"query": "ab", "responses": ["c", "d", "e"], "best": 2}),
            json.dumps({"query": "ab", "responses": ["c", "d"], "best": 0, "tie": True}),
        ],
    )
    labels = read_labels(ours, _Tok())
    assert len(labels) == 1 and labels[0].best == 2 and labels[0].response_ids[2] == [ord("e") % 100]
    openai = tmp_path / "offline_5k.json"
    openai.write_text(
        json.dumps([{"query": [1, 2], "sample0": [3], "sample1": [4], "sample2": [5], "sample3": [6], "best": 3}])
    )
    (label,) = read_labels(openai, _Tok())
    assert label.query_ids == [1, 2] and label.response_ids == [[3], [4], [5], [6]] and label.best == 3


@pytest.mark.parametrize(
    "line, message",
    [
        ("not json", "not valid JSON"),
        (json.dumps({"query": "a", "responses": ["b", "c"], "best": 5}), "'best' must be an integer index"),
        (json.dumps({"query": "a", "responses": ["b"], "best": 0}), "at least 2 responses"),
        (json.dumps({"responses": ["b", "c"], "best": 0}), "missing 'query'"),
        (json.dumps({"query": [1], "sample0": [1000], "sample1": [2], "best": 0}), "out of range"),
        (
            json.dumps({"query": "a", "responses": ["b", "c"], "best": 0, "doc_id": {"post": 1}}),
            "'doc_id' must be a string",
        ),
    ],
)
def test_read_labels_malformed_file_names_the_line(tmp_path, line, message):
    p = _write(tmp_path, [json.dumps({"query": "a", "responses": ["b", "c"], "best": 0}), line])
    with pytest.raises(DataError, match=message) as e:
        read_labels(p, _Tok())
    assert ":2:" in str(e.value)


def test_read_labels_keep_the_document_of_each_label(tmp_path):
    p = _write(
        tmp_path,
        [
            json.dumps({"query": "a", "responses": ["b", "c"], "best": 0, "doc_id": "post-1"}),
            json.dumps({"query": "a", "responses": ["b", "c"], "best": 1, "doc_id": 7}),
            json.dumps({"query": "a", "responses": ["b", "c"], "best": 1}),
        ],
    )
    assert [label.doc_id for label in read_labels(p, _Tok())] == ["post-1", "7", None]


# ---------------------------------------------------------------- the hold-out split

# 20 comparisons of 12 posts, in file order: p0 is compared 4 times, p1 and p2 3 times, p3 twice.
POSTS = [
    "p0",
    "p4",
    "p1",
    "p0",
    "p5",
    "p2",
    "p1",
    "p6",
    "p0",
    "p3",
    "p7",
    "p2",
    "p8",
    "p1",
    "p9",
    "p3",
    "p10",
    "p0",
    "p2",
    "p11",
]


def _labels(doc_ids):
    return [Choice([1], [[2], [3]], 0, doc_id) for doc_id in doc_ids]


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_split_never_puts_a_post_on_both_sides(fraction):
    labels = _labels(POSTS)
    for seed in range(20):
        train, heldout = split_labels(labels, fraction, seed)
        assert not {label.doc_id for label in train} & {label.doc_id for label in heldout}, seed
        assert sorted(map(id, train + heldout)) == sorted(map(id, labels))  # each label once


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_split_holds_the_fraction_as_nearly_as_posts_allow(fraction):
    target = round(len(POSTS) * fraction)
    counts = [len(split_labels(_labels(POSTS), fraction, seed)[1]) for seed in range(20)]
    assert all(abs(n - target) <= 2 for n in counts), counts  # within half the largest post (4 comparisons)
    # Labels without a document are their own groups: the held-out count is exact.
    assert len(split_labels(_labels([None] * 20), fraction, seed=3)[1]) == target


def test_split_is_a_function_of_the_seed():
    def heldout_posts(seed):
        return [label.doc_id for label in split_labels(_labels(POSTS), 0.25, seed)[1]]

    assert heldout_posts(1) == heldout_posts(1)
    assert any(heldout_posts(1) != heldout_posts(seed) for seed in range(2, 6))


def test_shipped_human_comparisons_split_by_post():
    records = read_tldr_comparisons()
    labels = [Choice([0], [[0], [0]], r["best"], r["doc_id"]) for r in records]
    train, heldout = split_labels(labels, 0.2, seed=0)
    assert not {label.doc_id for label in train} & {label.doc_id for label in heldout}
    assert abs(len(heldout) - round(0.2 * 929)) <= 3  # the largest post has 7 comparisons


def test_outside_labels_are_cut_to_the_models_lengths_keeping_the_querys_end():
    from lmpref.core.reward import truncate_labels

    (cut,) = truncate_labels([Choice([1, 2, 3, 4, 5], [[6, 7, 8], [9]], 0)], query_length=3, response_length=2)
    assert cut.query_ids == [3, 4, 5] and cut.response_ids == [[6, 7], [9]]  # a dialogue's last turns, a reply's start
    short = Choice([1, 2], [[3]], 0)
    assert truncate_labels([short], 3, 2) == [short]  # within both: as it was
