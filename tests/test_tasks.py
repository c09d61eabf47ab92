"""Truncation, the −1 penalty and query cutting."""

import torch

from lmpref.config import make_config
from lmpref.core.batching import pad_left
from lmpref.core.responses import apply_penalty, postprocess, truncate_response


def test_truncate_at_first_token_at_or_after_index():
    ids = [5, 13, 7, 7, 13, 9, 13, 1]
    # the "." (13) at index 1 is before `after`; the first one at or after index 2 is at 4
    assert truncate_response(ids, 13, 2) == (5, True)
    assert truncate_response(ids, 13, 5) == (7, True)
    assert truncate_response(ids, 13, 7) == (8, False)  # none left: whole response, invalid
    assert truncate_response([13, 13], 13, 0) == (1, True)


class _Tok:
    def encode(self, text, add_special_tokens=False):
        return {".": [13]}[text]


def test_postprocess_marks_invalid_responses():
    cfg = make_config("sentiment", "small")
    cfg.task.response_length, cfg.task.truncate_after = 6, 3
    responses = torch.tensor([[13, 1, 1, 1, 13, 1], [1, 1, 1, 1, 1, 1], [1, 1, 1, 13, 13, 13]])
    lengths, valid = postprocess(responses, cfg.task, _Tok())
    assert lengths.tolist() == [5, 6, 4]
    assert valid.tolist() == [True, False, True]


def test_penalty_replaces_the_score_of_invalid_responses():
    cfg = make_config("sentiment", "small")
    out = apply_penalty(torch.tensor([0.5, 0.25]), torch.tensor([True, False]), cfg.task.penalty_reward)
    assert out.tolist() == [0.5, -1.0]


def test_pad_left():
    ids, mask = pad_left([[1, 2], [3]], pad_id=0, length=3)
    assert ids.tolist() == [[0, 1, 2], [0, 0, 3]]
    assert mask.tolist() == [[0, 1, 1], [0, 0, 1]]
