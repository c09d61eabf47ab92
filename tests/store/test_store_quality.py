import math

import krippendorff
import numpy as np
import pytest

from lmpref import store
from lmpref.store.quality import TIE, krippendorff_alpha
from web_store_fixtures import record


def test_alpha_literal_cases():
    assert krippendorff_alpha({1: {1: 0, 2: 0}, 2: {1: 3, 2: 3}, 3: {1: 1, 2: 1}}) == pytest.approx(1.0)
    assert krippendorff_alpha({1: {1: 0, 2: 0}}) is None  # one value: undefined
    assert krippendorff_alpha({1: {1: 0}, 2: {2: 1}}) is None  # no task with two answers
    # Matches the package on the same matrix; tasks with one answer do not count.
    answers = {1: {1: 0, 2: 1}, 2: {1: 2, 2: 2, 3: 2}, 3: {1: 1, 3: TIE}, 4: {2: 3}}
    data = np.array([[0, 2, 1], [1, 2, np.nan], [np.nan, 2, TIE]])
    expected = krippendorff.alpha(reliability_data=data, level_of_measurement="nominal")
    assert krippendorff_alpha(answers) == pytest.approx(expected)


def _answer(session, labeler, slot=None, **kwargs):
    served = store.next_task(session, labeler=labeler)
    if slot is not None:
        kwargs["best"] = served.assignment.order.index(slot)
    store.save_label(session, labeler=labeler, task_id=served.task.id, **kwargs)


def test_report(session):
    ann, bob, cat = (store.create_labeler(session, name=n)[0] for n in ("ann", "bob", "cat"))
    store.enqueue(session, run="r", records=[record(i) for i in range(2)], redundancy=3)
    # Task 1: ann 0, bob 0, cat tie. Task 2: ann 1, bob 2, cat 1.
    for lab, slot in ((ann, 0), (bob, 0), (cat, None), (ann, 1), (bob, 2), (cat, 1)):
        _answer(session, lab, slot, tie=slot is None)
    store.enqueue(session, run="r", records=[record(5), record(6)], batch="more", redundancy=2)
    report = store.quality_report(session, run="r")
    by = {s.name: s for s in report.labelers}
    assert by["ann"].labels == 2 and by["cat"].labels == 2
    # ann agrees with bob on task 1, with cat on task 2: 2 of 4 pairs.
    assert (by["ann"].agreement_hits, by["ann"].agreement_pairs) == (2, 4)
    assert by["cat"].agreement == pytest.approx(1 / 4)
    assert report.alpha_units == 2 and report.alpha is not None and report.alpha < 1
    assert report.queues[0].queue_depth == 4
    assert by["ann"].median_seconds >= 0 and by["ann"].labels_per_hour > 0


def test_gold_accuracy_fast_and_skips(session):
    ann, _ = store.create_labeler(session, name="ann")
    store.enqueue(session, run="r", records=[record(i) for i in range(20)])
    store.enqueue(
        session,
        run="r",
        records=[record(100 + i, best=i % 4) for i in range(20)],
        batch="gold",
        gold=True,
        gold_rate=0.5,
    )
    right = wrong = 0
    for i in range(24):
        served = store.next_task(session, labeler=ann)
        gold = served.task.gold
        if gold is not None:
            # Alternate right and wrong answers on gold.
            slot = gold.best if (right + wrong) % 2 == 0 else (gold.best + 1) % 4
            right += slot == gold.best
            wrong += slot != gold.best
            store.save_label(session, labeler=ann, task_id=served.task.id, best=served.assignment.order.index(slot))
        elif i % 5 == 0:
            store.skip_task(session, labeler=ann, task_id=served.task.id)
        else:
            store.save_label(session, labeler=ann, task_id=served.task.id, best=0, min_seconds=3600)
    (s,) = store.quality_report(session).labelers
    assert right + wrong > 0
    assert (s.gold_correct, s.gold_answered) == (right, right + wrong)
    assert s.too_fast == 24 - (right + wrong) - s.skipped and s.skipped > 0
    assert math.isclose(s.gold_accuracy, right / (right + wrong))
