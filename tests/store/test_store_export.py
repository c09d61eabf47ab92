import json

import pytest

from lmpref import store
from lmpref.io import write_jsonl
from web_store_fixtures import record


def _label(session, labeler, position_of_slot=None, **kwargs):
    """Label the next task; `position_of_slot` picks the shown position holding that slot."""
    served = store.next_task(session, labeler=labeler)
    if position_of_slot is not None:
        kwargs["best"] = served.assignment.order.index(position_of_slot)
    return store.save_label(session, labeler=labeler, task_id=served.task.id, **kwargs)


@pytest.fixture
def labeled_run(session):
    ann, _ = store.create_labeler(session, name="ann")
    store.enqueue(
        session, run="r", records=[record(0, valid=[True, False, True, True]), record(1), record(2), record(3)]
    )
    _label(session, ann, position_of_slot=2, critique="too long", correction="Shorter.")  # q0: slot 2 = response 3
    _label(session, ann, tie=True)  # q1
    _label(session, ann, flag="garbled query")  # q2: a bare flag is not a label to train on
    _label(session, ann, position_of_slot=1, min_seconds=3600)  # q3: too fast
    return session


def test_bestofk_rows(labeled_run):
    rows = list(store.export_records(labeled_run, run="r"))
    assert [r["id"] for r in rows] == ["q000000", "q000001"]
    first, tie = rows
    assert first["responses"] == ["Response 0 to query 0.", "Response 2 to query 0.", "Response 3 to query 0."]
    assert first["response_ids"] == [[0, 0, 13], [0, 2, 13], [0, 3, 13]]
    assert first["best"] == 2 and first["tie"] is False
    assert first["labeler"] == "ann" and first["critique"] == "too long" and first["correction"] == "Shorter."
    assert first["query_ids"] == [100, 101, 102] and first["policies"] == ["ref:test"] * 3
    assert "ranking" not in first
    assert tie["tie"] is True and tie["best"] == -1


def test_too_fast_labels_only_on_request(labeled_run):
    rows = list(store.export_records(labeled_run, run="r", include_fast=True))
    assert [r["id"] for r in rows] == ["q000000", "q000001", "q000003"]
    assert rows[-1]["best"] == 1


def test_openai_rows_need_four_samples_with_ids(labeled_run):
    rows = list(store.export_records(labeled_run, run="r", fmt="openai", include_fast=True))
    # q0 has 3 valid samples, q1 is a tie: only q3 qualifies.
    assert rows == [
        {
            "query": [103, 101, 102],
            "sample0": [3, 0, 13],
            "sample1": [3, 1, 13],
            "sample2": [3, 2, 13],
            "sample3": [3, 3, 13],
            "best": 1,
        }
    ]


def test_pairwise_rows(labeled_run):
    rows = list(store.export_records(labeled_run, run="r", fmt="pairwise"))
    assert len(rows) == 2  # q0 only: best vs each of the 2 others; the tie gives none
    assert {r["chosen"] for r in rows} == {"Response 3 to query 0."}
    assert {r["rejected"] for r in rows} == {"Response 0 to query 0.", "Response 2 to query 0."}
    assert rows[0]["prompt"].startswith("Query number 0")


def test_gold_and_batches_filter(session, tmp_path):
    ann, _ = store.create_labeler(session, name="ann")
    store.enqueue(session, run="r", records=[record(0)], batch="b0")
    store.enqueue(session, run="r", records=[record(1)], batch="b1")
    store.enqueue(session, run="r", records=[record(9, best=0)], batch="gold", gold=True)
    for _ in range(2):
        _label(session, ann, best=0)
    assert [r["batch"] for r in store.export_records(session, run="r", batch="b1")] == ["b1"]
    with pytest.raises(store.NotFound):
        list(store.export_records(session, run="r", batch="b9"))
    with pytest.raises(store.Invalid):
        list(store.export_records(session, run="r", fmt="csv"))
    n = write_jsonl(tmp_path / "out.jsonl", store.export_records(session, run="r"))
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert n == 2 and [json.loads(x)["id"] for x in lines] == ["q000000", "q000001"]
