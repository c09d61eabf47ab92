"""The summary labelers on hand-worked examples."""

import random

import pytest

from lmpref.eval.labelers import choose, label_records, make_labeler

QUERY = "Article:\n\nThe cat sat on the mat. It was happy.\n\nTL;DR:"


def test_copy_start_scores_the_share_copied_from_the_start():
    lab = make_labeler("copy-start")
    assert lab.score(QUERY, " The cat sat on the mat.") == 1.0
    assert lab.score(QUERY, " The cat sat on a rug") == pytest.approx(4 / 6)  # the, cat, sat, on | a, rug
    assert lab.score(QUERY, " It was happy.") == 0.0  # copied, but not from the start
    assert lab.score(QUERY, "") == 0.0


def test_rouge_prefers_the_summary_closer_to_the_reference():
    lab = make_labeler("rouge")
    ref = "The cat was happy on the mat."
    assert lab.score(QUERY, ref, reference=ref) == pytest.approx(1.0)
    assert lab.score(QUERY, " the cat was happy", reference=ref) > lab.score(QUERY, " a dog barked", reference=ref)
    assert lab.score(QUERY, " a dog barked", reference=ref) == 0.0
    with pytest.raises(ValueError, match="reference"):
        lab.score(QUERY, " x")


def test_labels_pass_the_reference_and_use_the_noise_model():
    rec = {
        "id": "q",
        "query": QUERY,
        "responses": [" a dog", " the cat was happy"],
        "valid": [True, True],
        "reference": "The cat was happy.",
    }
    labels = label_records([rec] * 200, make_labeler("rouge"), temperature=0.0, seed=0)
    assert all(lab["best"] == 1 for lab in labels)
    # With noise the worse summary is sometimes picked, as often as exp(-gap / T) says.
    scores = [0.0, 0.5]
    picks = [choose(scores, 0.5, random.Random(i)) for i in range(2000)]
    assert 0.2 < picks.count(0) / 2000 < 0.33  # 1 / (1 + e) = 0.269
