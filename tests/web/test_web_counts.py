"""The counts agree: every place that says how many labels there are says which labels it
counts, and the exportable count equals the rows a default export writes."""

import re

from sqlalchemy import select
from web_helpers import csrf_of, login

from lmpref import store
from lmpref.store.models import Assignment, GoldTask
from web_store_fixtures import record


def test_progress_admin_page_and_export_count_the_same_labels(app, client, tokens, capsys):
    with store.transaction(app.state.sessions) as session:
        store.enqueue(session, run="r", records=[record(i) for i in range(5)])
        store.enqueue(session, run="r", records=[record(100, best=1)], batch="gold", gold=True, gold_rate=0.0)
        ann = store.get_labeler(session, name="ann")
        answers = [dict(best=0), dict(tie=True), dict(best=1, min_seconds=3600), dict(flag="broken")]
        for kwargs in answers:
            served = store.next_task(session, labeler=ann, run="r")
            store.save_label(session, labeler=ann, task_id=served.task.id, **kwargs)
        # A gold answer too (gold_rate 0 never serves one, so assign it by hand).
        gold_id = session.scalar(select(GoldTask.task_id))
        session.add(Assignment(task_id=gold_id, labeler_id=ann.id, order=[0, 1, 2, 3]))
        session.flush()
        store.save_label(session, labeler=ann, task_id=gold_id, best=1)
    with store.transaction(app.state.sessions) as session:
        p = store.progress(session, run="r")
        q = {s.name: s for s in store.quality_report(session, run="r").labelers}["ann"]
        exported = list(store.export_records(session, run="r"))
    assert (p.labels, p.exportable, p.too_fast, p.flag_only) == (4, 2, 1, 1)  # gold is not in progress
    assert (q.labels, q.exportable) == (5, 2)  # the labeler table also counts the gold label
    assert len(exported) == p.exportable == q.exportable

    login(client, tokens["boss"])
    admin = client.get("/admin?run=r").text
    assert re.search(r"<td>r</td><td>5</td><td>1</td><td>4</td><td>2</td>\s*<td>1</td><td>1</td>", admin)
    assert re.search(r"<tr><td>ann</td><td>5</td><td>2</td>", admin)
    assert 'id="counts-legend"' in admin and "Exportable" in admin
    assert csrf_of(admin)
