"""Literal tests of the best-of-K loss and label reading."""

import json
import math

import pytest
import torch

from lmpref.io import DataError
from lmpref.reward import batch_sequences, best_of_k_loss, read_labels


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
    ours = _write(tmp_path, [json.dumps({"query": "ab", "responses": ["c", "d", "e"], "best": 2}),
                             json.dumps({"query": "ab", "responses": ["c", "d"], "best": 0, "tie": True})])
    labels = read_labels(ours, _Tok())
    assert len(labels) == 1 and labels[0].best == 2 and labels[0].response_ids[2] == [ord("e") % 100]
    openai = tmp_path / "offline_5k.json"
    openai.write_text(json.dumps([{"query": [1, 2], "sample0": [3], "sample1": [4], "sample2": [5], "sample3": [6], "best": 3}]))
    (label,) = read_labels(openai, _Tok())
    assert label.query_ids == [1, 2] and label.response_ids == [[3], [4], [5], [6]] and label.best == 3


@pytest.mark.parametrize("line, message", [
    ("not json", "not valid JSON"),
    (json.dumps({"query": "a", "responses": ["b", "c"], "best": 5}), "'best' must be an integer index"),
    (json.dumps({"query": "a", "responses": ["b"], "best": 0}), "at least 2 responses"),
    (json.dumps({"responses": ["b", "c"], "best": 0}), "missing 'query'"),
    (json.dumps({"query": [1], "sample0": [1000], "sample1": [2], "best": 0}), "out of range"),
])
def test_read_labels_malformed_file_names_the_line(tmp_path, line, message):
    p = _write(tmp_path, [json.dumps({"query": "a", "responses": ["b", "c"], "best": 0}), line])
    with pytest.raises(DataError, match=message) as e:
        read_labels(p, _Tok())
    assert ":2:" in str(e.value)
