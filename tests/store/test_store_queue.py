import datetime as dt
import threading

import pytest

from lmpref import store
from lmpref.store.models import Label
from web_store_fixtures import record


def _labelers(session, n):
    return [store.create_labeler(session, name=f"l{i}")[0] for i in range(n)]


def test_asking_twice_returns_the_same_open_task(session):
    (ann,) = _labelers(session, 1)
    store.enqueue(session, run="r", records=[record(0), record(1)])
    first = store.next_task(session, labeler=ann)
    again = store.next_task(session, labeler=ann)
    assert again.assignment.id == first.assignment.id


def test_samples_are_shuffled_per_labeler_and_answers_map_back(session):
    labelers = _labelers(session, 3)
    store.enqueue(session, run="r", records=[record(i) for i in range(6)], redundancy=3)
    orders = set()
    for _ in range(6):
        for lab in labelers:
            served = store.next_task(session, labeler=lab)
            order = served.assignment.order
            assert sorted(order) == [0, 1, 2, 3]
            orders.add(tuple(order))
            # Position 0 is what the labeler saw first; the label stores its slot.
            label = store.save_label(session, labeler=lab, task_id=served.task.id, best=0)
            assert label.best == order[0]
            assert served.samples[0].text == f"Response {order[0]} to query {int(served.task.query.source_id[1:])}."
    assert len(orders) > 1


def test_redundancy_caps_labels_and_nobody_sees_a_task_twice(session):
    a, b, c = _labelers(session, 3)
    store.enqueue(session, run="r", records=[record(0)], redundancy=2)
    for lab in (a, b):
        served = store.next_task(session, labeler=lab)
        store.save_label(session, labeler=lab, task_id=served.task.id, tie=True)
    assert store.next_task(session, labeler=c) is None
    assert store.next_task(session, labeler=a) is None
    p = store.progress(session, run="r")
    assert (p.tasks, p.labels, p.complete, p.queue_depth) == (1, 2, 1, 0)


def test_skipped_tasks_go_to_someone_else(session):
    a, b = _labelers(session, 2)
    store.enqueue(session, run="r", records=[record(0)])
    served = store.next_task(session, labeler=a)
    store.skip_task(session, labeler=a, task_id=served.task.id)
    assert store.next_task(session, labeler=a) is None
    assert store.next_task(session, labeler=b).task.id == served.task.id
    with pytest.raises(store.Conflict):
        store.skip_task(session, labeler=a, task_id=served.task.id)


def test_abandoned_assignments_expire(session):
    a, b = _labelers(session, 2)
    store.enqueue(session, run="r", records=[record(0)])
    store.next_task(session, labeler=a)
    assert store.next_task(session, labeler=b) is None
    assert store.next_task(session, labeler=b, lease=dt.timedelta(0)) is not None


def test_tasks_come_oldest_first_and_runs_are_separate(session):
    (a,) = _labelers(session, 1)
    store.enqueue(session, run="old", records=[record(0)])
    store.enqueue(session, run="new", records=[record(1)])
    assert store.next_task(session, labeler=a, run="new").run == "new"
    with pytest.raises(store.NotFound):
        store.next_task(session, labeler=a, run="missing")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"best": 4}, store.Invalid),
        ({"best": -1}, store.Invalid),
        ({}, store.Invalid),
        ({"best": 0, "tie": True}, store.Invalid),
        ({"best": 0, "ranking": [0, 1, 2]}, store.Invalid),
        ({"best": 0, "ranking": [1, 0, 2, 3]}, store.Invalid),
        ({"best": 0, "ranking": [0, 0, 1, 2]}, store.Invalid),
        ({"tie": True, "ranking": [0, 1, 2, 3]}, store.Invalid),
        ({"best": 0, "critique": "x" * 10_001}, store.Invalid),
        ({"flag": "   "}, store.Invalid),
    ],
)
def test_bad_labels_are_refused(session, kwargs, error):
    (a,) = _labelers(session, 1)
    store.enqueue(session, run="r", records=[record(0)])
    served = store.next_task(session, labeler=a)
    with pytest.raises(error):
        store.save_label(session, labeler=a, task_id=served.task.id, **kwargs)
    store.save_label(session, labeler=a, task_id=served.task.id, best=1)  # still answerable


def test_a_label_is_stored_once(session):
    a, b = _labelers(session, 2)
    store.enqueue(session, run="r", records=[record(0)])
    served = store.next_task(session, labeler=a)
    store.save_label(session, labeler=a, task_id=served.task.id, best=1, ranking=[1, 0, 3, 2], critique="ok")
    with pytest.raises(store.Conflict):
        store.save_label(session, labeler=a, task_id=served.task.id, best=2)
    with pytest.raises(store.NotFound):  # b was never served it
        store.save_label(session, labeler=b, task_id=served.task.id, best=2)
    with pytest.raises(store.NotFound):
        store.save_label(session, labeler=a, task_id=9999, best=2)
    assert session.query(Label).count() == 1


def test_fast_labels_are_marked_not_dropped(session):
    (a,) = _labelers(session, 1)
    store.enqueue(session, run="r", records=[record(0)])
    served = store.next_task(session, labeler=a)
    label = store.save_label(session, labeler=a, task_id=served.task.id, best=0, min_seconds=60)
    assert label.too_fast and label.seconds < 60
    assert session.query(Label).count() == 1


def test_gold_tasks_are_mixed_in_at_the_rate_and_once_per_labeler(session):
    (a,) = _labelers(session, 1)
    store.enqueue(session, run="r", records=[record(i) for i in range(60)])
    gold = [record(1000 + i, best=i % 4) for i in range(10)]
    store.enqueue(session, run="r", records=gold, batch="gold", gold=True, gold_rate=0.25)
    served_gold = []
    for _ in range(40):
        served = store.next_task(session, labeler=a)
        if served.task.gold is not None:
            served_gold.append(served.task.id)
        store.save_label(session, labeler=a, task_id=served.task.id, best=0)
    assert 3 <= len(served_gold) <= 10  # about 0.25 * 40, never more than exist
    assert len(set(served_gold)) == len(served_gold)


def test_no_gold_is_served_when_the_real_queue_is_empty(session):
    (a,) = _labelers(session, 1)
    store.enqueue(session, run="r", records=[record(1000, best=0)], gold=True, gold_rate=0.9)
    assert store.next_task(session, labeler=a) is None


def test_racing_labelers_never_exceed_redundancy(factory):
    with store.transaction(factory) as session:
        labelers = _labelers(session, 6)
        store.enqueue(session, run="r", records=[record(i) for i in range(12)], redundancy=1)
    served: list[int] = []
    errors: list[BaseException] = []

    def work(lab):
        try:
            while True:
                with store.transaction(factory) as session:
                    task = store.next_task(session, labeler=lab)
                    if task is None:
                        return
                    served.append(task.task.id)
                    store.save_label(session, labeler=lab, task_id=task.task.id, best=0)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(lab,)) for lab in labelers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(served) == sorted(set(served)) and len(served) == 12


def test_racing_double_submission_stores_one_label(factory):
    with store.transaction(factory) as session:
        (a,) = _labelers(session, 1)
        store.enqueue(session, run="r", records=[record(0)])
        task_id = store.next_task(session, labeler=a).task.id
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def submit():
        barrier.wait()
        try:
            with store.transaction(factory) as session:
                store.save_label(session, labeler=session.merge(a), task_id=task_id, best=1)
            outcomes.append("ok")
        except store.Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["conflict"] * 3 + ["ok"]
    with store.transaction(factory) as session:
        assert session.query(Label).count() == 1


def test_progress_per_batch(session):
    (a,) = _labelers(session, 1)
    store.enqueue(session, run="r", records=[record(0), record(1)], batch="b0", redundancy=2)
    store.enqueue(session, run="r", records=[record(0)], batch="b1")
    served = store.next_task(session, labeler=a)
    store.save_label(session, labeler=a, task_id=served.task.id, best=0)
    b0 = store.progress(session, run="r", batch="b0")
    assert (b0.tasks, b0.labels, b0.complete, b0.queue_depth) == (2, 1, 0, 3)
    assert store.progress(session, run="r").tasks == 3
    with pytest.raises(store.NotFound):
        store.progress(session, run="r", batch="nope")
