"""Text a labeler can send that no store can keep: a NUL (PostgreSQL refuses U+0000) or a lone
surrogate (not encodable as UTF-8). Every route answers 422 on both stores, never 500."""

import re

import pytest
from fastapi.testclient import TestClient
from web_helpers import bearer, csrf_of, enqueue, login

from lmpref import store
from lmpref.web import Settings, create_app
from web_store_fixtures import fresh_database, postgres_server, sqlite_url


@pytest.fixture(scope="module")
def postgres():
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def served(request, tmp_path):
    url = sqlite_url(tmp_path) if request.param == "sqlite" else fresh_database(request.getfixturevalue("postgres"))
    app = create_app(Settings(db_url=url, min_seconds=0.0))
    tokens = {}
    with store.transaction(app.state.sessions) as session:
        for name, role in (("boss", "admin"), ("ann", "labeler")):
            tokens[name] = store.create_labeler(session, name=name, role=role)[1]
    enqueue(app)
    # raise_server_exceptions=False: a 500 must show up as a status, as a real client sees it.
    with TestClient(app, raise_server_exceptions=False) as client:
        yield app, client, tokens
    app.state.sessions.kw["bind"].dispose()


RAW_JSON = [
    '{"best": 0, "critique": "a\\u0000b"}',
    '{"best": 0, "critique": "a\\ud800b"}',
    '{"best": 0, "flag": "\\udfff"}',
    '{"best": 0, "correction": "ok", "\\u0000": 1}',
]


@pytest.mark.parametrize("raw", RAW_JSON)
def test_json_label_with_nul_or_lone_surrogate_is_422(served, raw):
    app, client, tokens = served
    h = {**bearer(tokens["ann"]), "Content-Type": "application/json"}
    task_id = client.get("/api/tasks/next", headers=h).json()["task_id"]
    r = client.post(f"/api/tasks/{task_id}/label", headers=h, content=raw.encode())
    assert r.status_code == 422 and "NUL" in r.json()["detail"]
    # Nothing was stored and the same client goes on working (the connection was not reset).
    assert (
        client.post(f"/api/tasks/{task_id}/label", headers=h, json={"best": 0, "critique": "fine"}).status_code == 201
    )


@pytest.mark.parametrize(
    ("method", "path", "raw"),
    [
        ("POST", "/api/andon", '{"reason": "stop\\u0000", "run": "r"}'),
        ("POST", "/api/andon", '{"reason": "stop", "run": "r\\ud800"}'),
        ("POST", "/api/andon/1/clear", '{"note": "\\u0000"}'),
        ("POST", "/api/runs/r/enqueue", '{"records": [{"id": "x", "query": "q\\u0000", "responses": ["a", "b"]}]}'),
        ("POST", "/api/labelers", '{"name": "x\\u0000"}'),
        ("GET", "/api/runs/r%00/andon", None),
        ("GET", "/api/runs/r%00/progress", None),
        ("GET", "/api/runs/r/progress?batch=b%00", None),
        ("GET", "/api/tasks/next?run=r%00", None),
        ("GET", "/api/quality?run=%00", None),
        ("GET", "/api/runs/r/labels?batch=%00", None),
        ("POST", "/api/runs/r%00/enqueue", '{"records": []}'),
    ],
)
def test_every_route_rejects_nul_with_422(served, method, path, raw):
    app, client, tokens = served
    headers = {**bearer(tokens["boss"]), "Content-Type": "application/json"}
    r = client.request(method, path, headers=headers, content=None if raw is None else raw.encode())
    assert r.status_code == 422, r.text


def test_forms_reject_nul_with_422(served):
    app, client, tokens = served
    login(client, tokens["ann"])
    page = client.get("/compare").text
    task_id = re.search(r'action="/compare/(\d+)"', page).group(1)
    csrf = csrf_of(page)
    for data in ({"best": "0", "critique": "a\x00b"}, {"action": "flag", "flag": "\x00"}):
        assert client.post(f"/compare/{task_id}", data={"csrf": csrf, **data}).status_code == 422
    assert client.post("/andon", data={"csrf": csrf, "reason": "x\x00", "run": "r"}).status_code == 422
    assert client.get("/compare?run=r%00").status_code == 422
    assert (
        client.post(
            f"/compare/{task_id}", data={"csrf": csrf, "best": "0", "critique": "ok"}, follow_redirects=False
        ).status_code
        == 303
    )
    with store.transaction(app.state.sessions) as session:
        assert store.progress(session, run="r").labels == 1
        assert store.open_andon_events(session) == []
