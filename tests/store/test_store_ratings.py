"""Accuracy-rating tasks: one summary, rated accurate / inaccurate / unsure (both databases)."""

import pytest
from sqlalchemy import select

from lmpref import store
from lmpref.store.models import Task
from web_store_fixtures import record


def accuracy_record(i, policy="ppo", **extra):
    return {
        "id": f"d{i}:{policy}",
        "query": f"Article {i}: the council voted to close the old bridge on Monday.",
        "responses": [f" The council voted to close the bridge {i}."],
        "policy": policy,
        "kind": "accuracy",
        "doc_id": f"d{i}",
        "reference": f"Bridge {i} closes.",
        **extra,
    }


def test_accuracy_records_become_single_response_rating_tasks(session):
    result = store.enqueue(session, run="acc", records=[accuracy_record(0), accuracy_record(1, valid=[False])])
    assert (result.created, result.too_few_valid) == (1, 1)
    (task,) = session.scalars(select(Task))
    assert task.kind == "accuracy"
    assert task.query.extra == {"kind": "accuracy", "doc_id": "d0", "reference": "Bridge 0 closes."}
    store.enqueue(session, run="cmp", records=[record(0)])
    assert {t.kind for t in session.scalars(select(Task))} == {"accuracy", "compare"}


@pytest.mark.parametrize(
    "bad",
    [
        {"responses": ["one", "two"]},  # a rating is of exactly one response
        {"best": 0},  # and never a gold task
    ],
)
def test_malformed_accuracy_records_are_refused(session, bad):
    gold = "best" in bad
    with pytest.raises(store.Invalid):
        store.enqueue(session, run="acc", records=[{**accuracy_record(0), **bad}], gold=gold)


def test_ratings_are_stored_once_checked_and_exported(session):
    ann, _ = store.create_labeler(session, name="ann")
    store.enqueue(session, run="acc", records=[accuracy_record(i) for i in range(4)])
    answers = [
        dict(rating="accurate"),
        dict(rating="inaccurate", critique="the bridge was not named"),
        dict(rating="unsure"),
        dict(flag="article is cut off"),
    ]
    for answer in answers:
        served = store.next_task(session, labeler=ann, run="acc")
        assert len(served.samples) == 1 and served.task.kind == "accuracy"
        for wrong in (dict(best=0), dict(tie=True), dict(rating="great"), dict(rating="accurate", correction="x"), {}):
            with pytest.raises(store.Invalid):
                store.save_label(session, labeler=ann, task_id=served.task.id, **wrong)
        store.save_label(session, labeler=ann, task_id=served.task.id, **answer)
        with pytest.raises(store.Conflict):  # exactly once
            store.save_label(session, labeler=ann, task_id=served.task.id, rating="accurate")
    rows = list(store.export_records(session, run="acc", fmt="ratings", include_fast=True))
    assert rows == [
        {
            "id": f"d{i}:ppo",
            "doc_id": f"d{i}",
            "policy": "ppo",
            "query": f"Article {i}: the council voted to close the old bridge on Monday.",
            "response": f" The council voted to close the bridge {i}.",
            "rating": rating,
            "note": note,
            "labeler": "ann",
        }
        for i, (rating, note) in enumerate(
            [("accurate", None), ("inaccurate", "the bridge was not named"), ("unsure", None)]
        )
    ]  # the bare flag is not a rating
    assert list(store.export_records(session, run="acc", fmt="bestofk", include_fast=True)) == []
    assert store.progress(session, run="acc").complete == 4


def test_a_comparison_takes_no_rating_and_ratings_export_no_comparisons(session):
    ann, _ = store.create_labeler(session, name="ann")
    store.enqueue(session, run="cmp", records=[record(0)])
    served = store.next_task(session, labeler=ann)
    with pytest.raises(store.Invalid, match="not a rating"):
        store.save_label(session, labeler=ann, task_id=served.task.id, best=0, rating="accurate")
    store.save_label(session, labeler=ann, task_id=served.task.id, best=0)
    assert list(store.export_records(session, run="cmp", fmt="ratings")) == []
    assert len(list(store.export_records(session, run="cmp", fmt="bestofk"))) == 1
