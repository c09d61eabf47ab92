"""`store.hot` (the JSON API's Core path, issue 16) does what the ORM functions of `queue.py` do:
same tasks in the same order, same gold mix, same shuffles, same stored labels, same errors."""

import datetime as dt

import pytest
from sqlalchemy import event, select

from lmpref import store
from lmpref.store import Assignment, Label, Task, hot
from web_store_fixtures import fresh_database, record, sqlite_url

COLUMNS = ("task_id", "labeler_id", "best", "tie", "rating", "ranking", "critique", "correction", "flag", "too_fast")


def _fill(factory):
    with store.transaction(factory) as session:
        tokens = {name: store.create_labeler(session, name=name)[1] for name in ("ann", "bob", "cy")}
        store.enqueue(session, run="r", records=[record(i) for i in range(12)], redundancy=2)
        store.enqueue(
            session, run="r", records=[record(100 + i, best=i % 4) for i in range(6)], batch="gold", gold=True
        )
        store.enqueue(session, run="r", records=[], batch="none", gold_rate=0.3)
        store.enqueue(session, run="s", records=[record(200 + i, k=3) for i in range(4)])
    return tokens


def _answer(i, k):
    ranked = {"best": k - 1, "ranking": [k - 1, *range(k - 1)], "critique": "ok"}
    return [{"best": 1}, {"tie": True}, {"flag": "broken"}, ranked][i % 4]


def _trace(factory, tokens, core):
    """Serve and label until the queue is empty, in a fixed labeler order; what was served and stored."""
    served = []
    for step in range(200):
        name = ("ann", "bob", "cy")[step % 3]
        run = "s" if step % 5 == 4 else None
        if core:
            with hot.connection(factory) as conn:
                got = hot.next_task(conn, token=tokens[name], run=run)
            item = None if got is None else (got.task_id, got.run, got.kind, got.samples)
        else:
            with store.transaction(factory) as session:
                labeler = store.authenticate(session, token=tokens[name])
                got = store.next_task(session, labeler=labeler, run=run)
                item = None if got is None else (got.task.id, got.run, got.task.kind, [s.text for s in got.samples])
        served.append((name, item))
        if item is None:
            continue
        answer = _answer(step, len(item[3]))
        if core:
            with hot.connection(factory) as conn:
                hot.save_label(conn, token=tokens[name], task_id=item[0], **answer)
        else:
            with store.transaction(factory) as session:
                labeler = store.authenticate(session, token=tokens[name])
                store.save_label(session, labeler=labeler, task_id=item[0], **answer)
    with store.transaction(factory) as session:
        labels = [tuple(getattr(x, c) for c in COLUMNS) for x in session.scalars(select(Label).order_by(Label.id))]
        orders = [(a.task_id, a.labeler_id, a.order, a.status) for a in session.scalars(select(Assignment))]
        complete = sorted(t.id for t in session.scalars(select(Task).where(Task.complete)))
    return served, labels, orders, complete


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def two_stores(request, tmp_path):
    urls = []
    for side in ("orm", "core"):
        if request.param == "sqlite":
            (tmp_path / side).mkdir()
            urls.append(sqlite_url(tmp_path / side))
        else:
            urls.append(fresh_database(request.getfixturevalue("postgres")))
    factories = [store.open_store(url) for url in urls]
    yield factories
    for f in factories:
        f.kw["bind"].dispose()


def test_core_path_serves_and_stores_what_the_orm_path_does(two_stores):
    orm_factory, core_factory = two_stores
    orm = _trace(orm_factory, _fill(orm_factory), core=False)
    core = _trace(core_factory, _fill(core_factory), core=True)
    assert any(item is not None and item[0] > 12 for _, item in orm[0])  # gold was mixed in
    assert core == orm


def test_core_path_errors(factory):
    with store.transaction(factory) as session:
        tokens = {name: store.create_labeler(session, name=name)[1] for name in ("ann", "bob")}
        store.enqueue(session, run="r", records=[record(0)])
        article = {"id": "d1", "query": "Article 1: the old bridge closes.", "responses": [" The bridge closes."]}
        store.enqueue(session, run="acc", records=[{**article, "policy": "ppo", "kind": "accuracy", "doc_id": "d1"}])
    for bad in ("", "x" * 500, "lmp_nobody"):
        with pytest.raises(hot.BadToken), hot.connection(factory) as conn:
            hot.next_task(conn, token=bad)
        with pytest.raises(hot.BadToken), hot.connection(factory) as conn:
            hot.save_label(conn, token=bad, task_id=1, best=0)
    with hot.connection(factory) as conn:
        task = hot.next_task(conn, token=tokens["ann"], run="r")
    with pytest.raises(store.NotFound), hot.connection(factory) as conn:  # not yours
        hot.save_label(conn, token=tokens["bob"], task_id=task.task_id, best=0)
    with pytest.raises(store.NotFound), hot.connection(factory) as conn:
        hot.next_task(conn, token=tokens["ann"], run="missing")
    for wrong in ({"best": 4}, {"best": 0, "tie": True}, {}, {"rating": "accurate"}, {"best": 0, "ranking": [0, 1]}):
        with pytest.raises(store.Invalid), hot.connection(factory) as conn:
            hot.save_label(conn, token=tokens["ann"], task_id=task.task_id, **wrong)
    with hot.connection(factory) as conn:
        saved = hot.save_label(conn, token=tokens["ann"], task_id=task.task_id, best=3, min_seconds=60)
    assert saved.best == 3 and saved.too_fast
    with pytest.raises(store.Conflict), hot.connection(factory) as conn:
        hot.save_label(conn, token=tokens["ann"], task_id=task.task_id, best=1)
    # a skipped task cannot be labeled; the lease of an abandoned task runs out
    with hot.connection(factory) as conn:
        acc = hot.next_task(conn, token=tokens["ann"])
    assert acc.kind == "accuracy" and len(acc.samples) == 1
    with store.transaction(factory) as session:
        store.skip_task(session, labeler=store.get_labeler(session, name="ann"), task_id=acc.task_id)
    with pytest.raises(store.Conflict), hot.connection(factory) as conn:
        hot.save_label(conn, token=tokens["ann"], task_id=acc.task_id, rating="accurate")
    with hot.connection(factory) as conn:
        assert hot.next_task(conn, token=tokens["ann"]) is None
    # revoking takes effect at once: no cached token
    with store.transaction(factory) as session:
        store.rotate_token(session, name="bob")
    with pytest.raises(hot.BadToken), hot.connection(factory) as conn:
        hot.next_task(conn, token=tokens["bob"])


def test_a_failed_label_writes_nothing(factory):
    with store.transaction(factory) as session:
        token = store.create_labeler(session, name="ann")[1]
        store.enqueue(session, run="r", records=[record(0)])
    with hot.connection(factory) as conn:
        task = hot.next_task(conn, token=token, lease=dt.timedelta(minutes=1))
    engine = factory.kw["bind"]

    def fail_on_close(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith("UPDATE ASSIGNMENTS"):
            raise RuntimeError("crash between the label and its assignment")

    event.listen(engine, "before_cursor_execute", fail_on_close)
    try:
        with pytest.raises(RuntimeError), hot.connection(factory) as conn:
            hot.save_label(conn, token=token, task_id=task.task_id, best=0)
    finally:
        event.remove(engine, "before_cursor_execute", fail_on_close)
    with store.transaction(factory) as session:
        assert session.scalar(select(Label)) is None
        assert session.scalar(select(Assignment)).status == "open"
