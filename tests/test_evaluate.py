"""Win rate, its interval, and the judging rule, on literal examples."""

import pytest

from lmpref.eval.winrate import judge, wilson_interval, win_rate


class LengthLabeler:
    name = "length"

    def score(self, query, response, *, reference=None):
        return len(response)


def test_judge_rules():
    lab = LengthLabeler()
    assert judge(lab, "q", "longer", True, "short", True) == 1.0
    assert judge(lab, "q", "ab", True, "ab", True) == 0.5
    assert judge(lab, "q", "a", True, "much longer", False) == 1.0  # an invalid response loses
    assert judge(lab, "q", "much longer", False, "a", True) == 0.0
    assert judge(lab, "q", "x", False, "yy", False) == 0.5


def test_win_rate_counts_and_both_valid_share():
    pairs = [
        {"query": "q", "policy_response": "aaa", "policy_valid": True, "ref_response": "a", "ref_valid": True},
        {"query": "q", "policy_response": "a", "policy_valid": True, "ref_response": "aaa", "ref_valid": True},
        {"query": "q", "policy_response": "aa", "policy_valid": True, "ref_response": "aa", "ref_valid": True},
        {"query": "q", "policy_response": "a", "policy_valid": True, "ref_response": "aaaa", "ref_valid": False},
    ]
    r = win_rate(LengthLabeler(), pairs)
    assert (r["wins"], r["losses"], r["ties"], r["n_comparisons"]) == (2, 1, 1, 4)
    assert r["win_rate"] == pytest.approx(2.5 / 4)
    assert r["n_both_valid"] == 3 and r["win_rate_both_valid"] == pytest.approx(1.5 / 3)


def test_wilson_interval_by_hand():
    lo, hi = wilson_interval(50, 100)
    # p = 0.5, z = 1.96: centre 0.5, half-width 1.96*sqrt(0.0025 + 0.96^2/40000... )/(1+0.038416)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0
