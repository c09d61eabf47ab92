"""The file records (`lmpref.records`): each schema checked once, round trips, and the web app's
OpenAPI description of a sampling record kept in step with it."""

from __future__ import annotations

import pytest

from lmpref.io import DataError
from lmpref.records import LabelRecord, SampleRecord

SAMPLE = {
    "id": "q1",
    "query": "Once upon a time",
    "query_ids": [1, 2, 3],
    "responses": [" there was a cat.", " it rained."],
    "response_ids": [[4, 5], [6]],
    "valid": [True, False],
    "policy": "ref",
    "seed": 0,
    "reference": "a cat story",
}


def test_a_sample_record_round_trips_and_keeps_unknown_keys():
    rec = SampleRecord.from_json(SAMPLE)
    assert rec.k == 2 and rec.is_valid(0) and not rec.is_valid(1) and rec.policy_of(1) == "ref"
    assert rec.extra == {"reference": "a cat story"}
    assert rec.to_json() == SAMPLE


@pytest.mark.parametrize(
    "change, message",
    [
        ({"id": ""}, "record 'id' must be a string of 1-128 characters"),
        ({"query": 3}, "record q1: 'query' must be a string"),
        ({"responses": []}, "'responses' must be a non-empty list of strings"),
        ({"valid": [True]}, "'valid' must have one entry per response (2)"),
        ({"response_ids": [[1], "x"]}, "'response_ids' must hold a list of token ids per response"),
        ({"query_ids": ["a"]}, "'query_ids' must be a list of token ids"),
        ({"kind": "accuracy"}, "an accuracy record has exactly one response, not 2"),
        ({"policy": 3}, "'policy' must be a string"),
    ],
)
def test_a_bad_sample_record_is_named_with_its_field(change, message):
    with pytest.raises(DataError) as err:
        SampleRecord.from_json({**SAMPLE, **change}, where="samples.jsonl:7")
    assert str(err.value).startswith("samples.jsonl:7: ") and message in str(err.value)


def test_a_best_that_is_not_an_index_is_no_known_best():
    assert SampleRecord.from_json({**SAMPLE, "best": 1}).best == 1
    rec = SampleRecord.from_json({**SAMPLE, "best": -1})  # e.g. a tie exported as samples
    assert rec.best is None and rec.extra["best"] == -1


def test_label_records_check_best_and_ties():
    base = {"id": "q1", "query": "Q", "responses": ["a", "b", "c"], "best": 2, "labeler": "sentiment@T0"}
    rec = LabelRecord.from_json(base)
    assert (rec.best, rec.tie) == (2, False) and LabelRecord.from_json(rec.to_json()) == rec
    assert LabelRecord.from_json({**base, "tie": True, "best": -1}).best == -1
    with pytest.raises(DataError, match=r"'best' must be an integer index in \[0, 3\), got 3"):
        LabelRecord.from_json({**base, "best": 3})
    with pytest.raises(DataError, match="'tie' must be true or false"):
        LabelRecord.from_json({**base, "tie": "yes"})


def test_the_web_apps_sampling_record_describes_the_same_fields():
    from lmpref.web.schemas import SamplingRecord

    assert set(SamplingRecord.model_fields) <= set(SampleRecord.KEYS)
