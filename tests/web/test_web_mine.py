"""The labeler's own view: progress today and in all, a history of their labels, undo within
a short window, and being told when a label was too fast to count."""

import datetime as dt
import re

from sqlalchemy import update
from web_helpers import bearer, csrf_of, enqueue, login

from lmpref import store
from lmpref.store.models import Label
from lmpref.web import Settings, create_app


def _label_first(client, **data):
    page = client.get("/compare").text
    task_id = re.search(r'action="/compare/(\d+)"', page).group(1)
    r = client.post(f"/compare/{task_id}", data={"csrf": csrf_of(page), **data}, follow_redirects=False)
    return int(task_id), r


def test_progress_history_and_undo(app, client, tokens):
    enqueue(app)
    login(client, tokens["ann"])
    page = client.get("/compare").text
    assert "<h1" in page and 'id="mine-today">0<' in page
    task_id, r = _label_first(client, best="1", critique="clear winner")
    assert r.headers["location"] == "/compare?msg=labeled"
    page = client.get("/compare").text
    assert 'id="mine-today">1<' in page and 'id="mine-total">1<' in page
    assert 'id="undo-button"' in page
    history = client.get("/history").text
    assert "clear winner" in history and f"<td>{task_id}</td>" in history and "Undo" in history
    label_id = re.search(r'action="/history/(\d+)/undo"', history).group(1)
    r = client.post(f"/history/{label_id}/undo", data={"csrf": csrf_of(history)}, follow_redirects=False)
    assert r.headers["location"] == "/compare?run=r&msg=undone"  # back to the run of the task undone
    page = client.get("/compare?msg=undone").text
    assert "Label undone" in page and f'action="/compare/{task_id}"' in page  # the same task is back
    assert 'id="mine-total">0<' in page
    _, r = _label_first(client, action="tie")  # and can be answered again
    assert r.status_code == 303
    with store.transaction(app.state.sessions) as session:
        assert store.progress(session, run="r").labels == 1


def test_undo_is_only_for_your_own_recent_labels(app, client, tokens):
    enqueue(app, redundancy=2)
    login(client, tokens["ann"])
    _label_first(client, best="0")
    with store.transaction(app.state.sessions) as session:
        ann_label = session.query(Label).one().id
    client.cookies.clear()
    login(client, tokens["bob"])
    page = client.get("/compare").text
    assert client.post(f"/history/{ann_label}/undo", data={"csrf": csrf_of(page)}).status_code == 404
    # Past the window, even the author cannot take it back.
    client.cookies.clear()
    login(client, tokens["ann"])
    with store.transaction(app.state.sessions) as session:
        old = store.models.utcnow() - store.UNDO_WINDOW - dt.timedelta(seconds=1)
        session.execute(update(Label).values(created_at=old))
    history = client.get("/history").text
    assert "Undo</button>" not in history
    assert client.post(f"/history/{ann_label}/undo", data={"csrf": csrf_of(history)}).status_code == 409
    r = client.post(f"/api/labels/{ann_label}/undo", headers=bearer(tokens["ann"]))
    assert r.status_code == 409


def test_undo_through_the_api(app, client, tokens):
    enqueue(app)
    h = bearer(tokens["ann"])
    task = client.get("/api/tasks/next", headers=h).json()
    label = client.post(f"/api/tasks/{task['task_id']}/label", headers=h, json={"best": 0}).json()
    r = client.post(f"/api/labels/{label['id']}/undo", headers=h)
    assert r.status_code == 200 and r.json() == {"task_id": task["task_id"], "status": "open"}
    assert client.get("/api/tasks/next", headers=h).json()["task_id"] == task["task_id"]
    assert client.post(f"/api/labels/{label['id']}/undo", headers=h).status_code == 404


def test_a_too_fast_label_is_announced(tmp_path, tokens=None):
    from fastapi.testclient import TestClient

    from web_store_fixtures import sqlite_url

    app = create_app(Settings(db_url=sqlite_url(tmp_path), min_seconds=3600))
    with store.transaction(app.state.sessions) as session:
        token = store.create_labeler(session, name="ann")[1]
    enqueue(app)
    client = TestClient(app)
    login(client, token)
    _, r = _label_first(client, best="0")
    assert r.headers["location"] == "/compare?msg=fast"
    page = client.get(r.headers["location"]).text
    assert "faster than the 3600 s minimum" in page and "will not count" in page
    assert "too fast to count" in page
    assert "too fast" in client.get("/history").text


def test_undo_keeps_the_labeler_in_the_run_they_were_labeling(app, client, tokens):
    """A task of run "a" was served first and left open; then the labeler labels in run "b" and
    undoes: they must get b's task back, not a's (unfiltered /compare shows the oldest open task)."""
    enqueue(app, run="a")
    enqueue(app, run="b")
    login(client, tokens["ann"])
    page = client.get("/compare?run=a").text
    a_task = re.search(r'action="/compare/(\d+)"', page).group(1)
    page = client.get("/compare?run=b").text
    b_task = re.search(r'action="/compare/(\d+)"', page).group(1)
    r = client.post(f"/compare/{b_task}", data={"csrf": csrf_of(page), "best": "0", "run": "b"}, follow_redirects=False)
    assert r.headers["location"] == "/compare?msg=labeled&run=b"
    page = client.get(r.headers["location"]).text
    r = client.post(
        re.search(r'action="(/history/\d+/undo)"', page).group(1), data={"csrf": csrf_of(page)}, follow_redirects=False
    )
    assert r.headers["location"] == "/compare?run=b&msg=undone"
    page = client.get(r.headers["location"]).text
    assert (
        "Label undone" in page and f'action="/compare/{b_task}"' in page and f'action="/compare/{a_task}"' not in page
    )
    assert "<small>run b</small>" in page


def test_compare_shows_my_assigned_share_of_the_run(app, client, tokens):
    enqueue(app, redundancy=2)  # 4 tasks, 8 labels wanted
    login(client, tokens["ann"])
    page = client.get("/compare").text
    assert 'id="share-assigned">1<' in page and 'id="share-answered">0<' in page and 'id="share-percent">0%<' in page
    _label_first(client, best="0")
    _label_first(client, action="skip")
    h = bearer(tokens["bob"])
    task = client.get("/api/tasks/next", headers=h).json()
    assert client.post(f"/api/tasks/{task['task_id']}/label", headers=h, json={"best": 0}).status_code == 201
    page = client.get("/compare").text  # ann: 3 served (1 answered, 1 skipped, 1 open); run: 2 labels
    assert 'id="share-assigned">3<' in page and 'id="share-answered">1<' in page and "1 skipped" in page
    assert 'id="share-percent">50%<' in page and "of its 2 labels" in page
    with store.transaction(app.state.sessions) as session:
        share = store.my_share(session, labeler=store.get_labeler(session, name="ann"), run="r")
        assert (share.assigned, share.answered, share.skipped, share.run_labels, share.percent) == (3, 1, 1, 2, 50)
        assert store.my_share(session, labeler=store.get_labeler(session, name="ann"), run="nope").assigned == 0
