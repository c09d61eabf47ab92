import pytest

from lmpref import store
from lmpref.store.models import Query, Sample, Task
from web_store_fixtures import record


def test_records_become_tasks_with_only_valid_samples(session):
    records = [record(0), record(1, valid=[True, False, True, True]), record(2, valid=[False, True, False, False])]
    result = store.enqueue(session, run="r", records=records, batch="round-0")
    assert (result.created, result.existing, result.too_few_valid) == (2, 0, 1)
    tasks = session.query(Task).order_by(Task.id).all()
    shown = [[s.text for s in store.valid_samples(t.query)] for t in tasks]
    assert shown[1] == ["Response 0 to query 1.", "Response 2 to query 1.", "Response 3 to query 1."]
    # The invalid sample is kept for the record, but never in a task's slots.
    assert session.query(Sample).filter_by(valid=False).count() == 1


def test_enqueue_is_idempotent_per_batch(session):
    records = [record(i) for i in range(5)]
    store.enqueue(session, run="r", records=records, batch="round-0")
    again = store.enqueue(session, run="r", records=records + [record(5)], batch="round-0")
    assert (again.created, again.existing) == (1, 5)
    assert session.query(Task).count() == 6
    # The same query ids in the next round are new comparisons (new policy samples).
    assert store.enqueue(session, run="r", records=records, batch="round-1").created == 5
    assert store.progress(session, run="r", batch="round-1").tasks == 5


def test_duplicate_ids_within_one_call_are_enqueued_once(session):
    result = store.enqueue(session, run="r", records=[record(1), record(1)])
    assert (result.created, result.existing) == (1, 1)


def test_per_sample_policies_and_extra_keys_are_kept(session):
    rec = record(0, kind="validation", policies=["ref", "ref", "ckpt-3", "ckpt-3"], reference="gold summary")
    store.enqueue(session, run="r", records=[rec])
    query = session.query(Query).one()
    assert [s.policy for s in query.samples] == ["ref", "ref", "ckpt-3", "ckpt-3"]
    assert query.extra == {"seed": 0, "kind": "validation", "reference": "gold summary"}
    assert query.token_ids == [100, 101, 102]


def test_gold_best_is_mapped_to_its_slot(session):
    rec = record(0, valid=[False, True, True, True], best=2)
    store.enqueue(session, run="r", records=[rec], batch="gold", gold=True, gold_rate=0.2)
    task = session.query(Task).one()
    assert task.gold.best == 1  # response 2 is the second valid one
    assert store.get_run(session, name="r").gold_rate == 0.2
    assert store.progress(session, run="r").gold_tasks == 1


def _with(**changes):
    rec = record(0)
    rec.update(changes)
    return rec


@pytest.mark.parametrize(
    "bad",
    [
        "not a dict",
        _with(id=7),
        _with(id=""),
        _with(query=None),
        _with(responses="one string"),
        _with(responses=[]),
        _with(responses=["a."] * 17),
        _with(responses=["a.", 3]),
        _with(valid=[True]),
        _with(response_ids=[[1]]),
        _with(policies=["a"]),
        _with(query="x" * 100_001),
    ],
)
def test_malformed_records_fail_loudly(session, bad):
    with pytest.raises(store.Invalid):
        store.enqueue(session, run="r", records=[bad])


@pytest.mark.parametrize("best", [None, -1, 4, True, 0])
def test_gold_records_need_a_valid_best(session, best):
    rec = record(0, valid=[False, True, True, True], best=best)  # best=0 points at an invalid one
    with pytest.raises(store.Invalid):
        store.enqueue(session, run="r", records=[rec], gold=True)


@pytest.mark.parametrize("kwargs", [{"redundancy": 0}, {"gold_rate": 1.0}, {"gold_rate": -0.1}, {"batch": ""}])
def test_bad_enqueue_settings(session, kwargs):
    with pytest.raises(store.Invalid):
        store.enqueue(session, run="r", records=[record(0)], **kwargs)


def test_read_jsonl_reports_the_bad_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"id": "a"}\n\n{not json\n')
    with pytest.raises(store.Invalid, match=":3:"):
        list(store.read_jsonl(path))
