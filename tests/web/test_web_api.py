import time

import pytest
from fastapi.testclient import TestClient
from web_helpers import bearer, enqueue

from lmpref import store
from lmpref.web import Settings, create_app
from web_store_fixtures import record, sqlite_url

LABELER_ENDPOINTS = [
    ("GET", "/api/me"),
    ("GET", "/api/tasks/next"),
    ("POST", "/api/tasks/1/label"),
    ("POST", "/api/tasks/1/skip"),
    ("GET", "/api/labels"),
    ("POST", "/api/andon"),
    ("GET", "/api/runs/r/andon"),
]
ADMIN_ENDPOINTS = [
    ("GET", "/api/andon"),
    ("POST", "/api/andon/1/clear"),
    ("GET", "/api/runs"),
    ("GET", "/api/runs/r/progress"),
    ("POST", "/api/runs/r/enqueue"),
    ("GET", "/api/runs/r/labels"),
    ("GET", "/api/quality"),
    ("GET", "/api/labelers"),
    ("POST", "/api/labelers"),
]


@pytest.mark.parametrize(("method", "path"), LABELER_ENDPOINTS + ADMIN_ENDPOINTS)
def test_every_endpoint_needs_a_valid_token(client, tokens, method, path):
    for headers in ({}, bearer("lmp_wrong"), {"Authorization": "Basic Zm9vOmJhcg=="}):
        r = client.request(method, path, headers=headers, json={})
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("method", "path"), ADMIN_ENDPOINTS)
def test_labelers_cannot_reach_admin_endpoints(client, tokens, method, path):
    r = client.request(method, path, headers=bearer(tokens["ann"]), json={})
    assert r.status_code == 403


def test_label_through_the_api(app, client, tokens):
    enqueue(app, [record(0, valid=[True, False, True, True])])
    h = bearer(tokens["ann"])
    assert client.get("/api/me", headers=h).json()["name"] == "ann"
    task = client.get("/api/tasks/next", headers=h).json()
    assert len(task["samples"]) == 3  # the invalid response is never sent
    assert "Response 1 to query 0." not in [s["text"] for s in task["samples"]]
    assert [s["position"] for s in task["samples"]] == [0, 1, 2]
    assert client.get("/api/tasks/next", headers=h).json()["task_id"] == task["task_id"]  # same until answered
    r = client.post(
        f"/api/tasks/{task['task_id']}/label", headers=h, json={"best": 2, "ranking": [2, 0, 1], "critique": "ok"}
    )
    assert r.status_code == 201 and r.json()["best"] == 2
    assert client.post(f"/api/tasks/{task['task_id']}/label", headers=h, json={"best": 2}).status_code == 409
    assert client.get("/api/tasks/next", headers=h).status_code == 204
    exported = client.get("/api/runs/r/labels", headers=bearer(tokens["boss"])).json()
    chosen = task["samples"][2]["text"]
    assert exported[0]["responses"][exported[0]["best"]] == chosen


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"best": 4}, 422),  # out of range for 4 samples (store check)
        ({"best": 16}, 422),  # out of schema range
        ({"best": -1}, 422),
        ({"best": "one"}, 422),
        ({}, 422),
        ({"best": 0, "tie": True}, 422),
        ({"best": 0, "critique": "x" * 10_001}, 422),
        ({"best": 0, "surprise": 1}, 422),
        ({"best": 0, "ranking": [0, 0, 1, 2]}, 422),
    ],
)
def test_bad_labels_get_clear_4xx(app, client, tokens, body, status):
    enqueue(app)
    h = bearer(tokens["ann"])
    task = client.get("/api/tasks/next", headers=h).json()
    r = client.post(f"/api/tasks/{task['task_id']}/label", headers=h, json=body)
    assert r.status_code == status and r.json()["detail"]
    assert client.post(f"/api/tasks/{task['task_id']}/label", headers=h, json={"best": 0}).status_code == 201


def test_unknown_or_foreign_tasks_are_404(app, client, tokens):
    enqueue(app)
    task = client.get("/api/tasks/next", headers=bearer(tokens["ann"])).json()
    for task_id in (task["task_id"], 999):
        r = client.post(f"/api/tasks/{task_id}/label", headers=bearer(tokens["bob"]), json={"best": 0})
        assert r.status_code == 404
    assert client.post("/api/tasks/999/skip", headers=bearer(tokens["bob"])).status_code == 404
    assert client.get("/api/tasks/next?run=nope", headers=bearer(tokens["bob"])).status_code == 404


def test_skip_then_someone_else_gets_it(app, client, tokens):
    enqueue(app, [record(0)])
    task = client.get("/api/tasks/next", headers=bearer(tokens["ann"])).json()
    r = client.post(f"/api/tasks/{task['task_id']}/skip", headers=bearer(tokens["ann"]))
    assert r.json() == {"task_id": task["task_id"], "status": "skipped"}
    assert client.post(f"/api/tasks/{task['task_id']}/skip", headers=bearer(tokens["ann"])).status_code == 409
    assert client.get("/api/tasks/next", headers=bearer(tokens["ann"])).status_code == 204
    assert client.get("/api/tasks/next", headers=bearer(tokens["bob"])).json()["task_id"] == task["task_id"]


def test_labelers_see_only_their_own_labels(app, client, tokens):
    enqueue(app, redundancy=2)
    for name in ("ann", "bob"):
        h = bearer(tokens[name])
        task = client.get("/api/tasks/next", headers=h).json()
        client.post(
            f"/api/tasks/{task['task_id']}/label", headers=h, json={"tie": True} if name == "ann" else {"best": 1}
        )
    mine = client.get("/api/labels", headers=bearer(tokens["ann"])).json()
    assert len(mine) == 1 and mine[0]["tie"] is True
    assert client.get("/api/labels?limit=0", headers=bearer(tokens["ann"])).status_code == 422


def test_andon_cycle(app, client, tokens):
    enqueue(app)
    h, admin = bearer(tokens["ann"]), bearer(tokens["boss"])
    assert client.get("/api/runs/r/andon", headers=h).json() == {"run": "r", "stop": False, "events": []}
    r = client.post("/api/andon", headers=h, json={"reason": "samples are degenerate", "run": "r"})
    assert r.status_code == 201 and r.json()["pulled_by"] == "ann"
    status = client.get("/api/runs/r/andon", headers=h).json()
    assert status["stop"] is True and status["events"][0]["reason"] == "samples are degenerate"
    event_id = r.json()["id"]
    assert client.post(f"/api/andon/{event_id}/clear", headers=h, json={}).status_code == 403
    cleared = client.post(f"/api/andon/{event_id}/clear", headers=admin, json={"note": "ok"}).json()
    assert cleared["cleared_by"] == "boss" and cleared["clear_note"] == "ok"
    assert client.post(f"/api/andon/{event_id}/clear", headers=admin, json={}).status_code == 409
    assert client.get("/api/runs/r/andon", headers=h).json()["stop"] is False
    assert len(client.get("/api/andon", headers=admin).json()) == 1
    assert client.post("/api/andon", headers=h, json={"reason": ""}).status_code == 422
    assert client.post("/api/andon", headers=h, json={"reason": "x", "run": "nope"}).status_code == 404
    assert client.get("/api/runs/nope/andon", headers=h).status_code == 404


def test_admin_endpoints(app, client, tokens):
    admin = bearer(tokens["boss"])
    body = {"records": [record(i) for i in range(3)], "batch": "round-0", "redundancy": 2}
    r = client.post("/api/runs/exp/enqueue", headers=admin, json=body)
    assert r.json() == {"run": "exp", "batch": "round-0", "created": 3, "existing": 0, "too_few_valid": 0}
    assert client.post("/api/runs/exp/enqueue", headers=admin, json=body).json()["existing"] == 3
    bad = {"records": [{"id": "x"}]}
    assert client.post("/api/runs/exp/enqueue", headers=admin, json=bad).status_code == 422
    h = bearer(tokens["ann"])
    task = client.get("/api/tasks/next", headers=h).json()
    client.post(f"/api/tasks/{task['task_id']}/label", headers=h, json={"best": 0})
    (run,) = client.get("/api/runs", headers=admin).json()
    assert run["batches"] == ["round-0"] and run["progress"]["queue_depth"] == 5
    assert client.get("/api/runs/exp/progress?batch=round-0", headers=admin).json()["labels"] == 1
    assert client.get("/api/runs/exp/progress?batch=nope", headers=admin).status_code == 404
    for fmt, n in (("bestofk", 1), ("openai", 1), ("pairwise", 3)):
        assert len(client.get(f"/api/runs/exp/labels?format={fmt}", headers=admin).json()) == n
    assert client.get("/api/runs/exp/labels?format=csv", headers=admin).status_code == 422
    quality = client.get("/api/quality?run=exp", headers=admin).json()
    assert quality["labelers"][0]["name"] == "ann" and quality["queues"][0]["labels"] == 1
    created = client.post("/api/labelers", headers=admin, json={"name": "dan"})
    assert created.status_code == 201 and created.json()["token"].startswith("lmp_")
    assert client.get("/api/me", headers=bearer(created.json()["token"])).json()["role"] == "labeler"
    assert client.post("/api/labelers", headers=admin, json={"name": "dan"}).status_code == 409
    assert client.post("/api/labelers", headers=admin, json={"name": "x y"}).status_code == 422
    assert [x["name"] for x in client.get("/api/labelers", headers=admin).json()] == ["boss", "ann", "bob", "dan"]
    assert "token" not in client.get("/api/labelers", headers=admin).json()[0]


def test_oversized_bodies_are_refused_early(client, tokens):
    r = client.post("/api/andon", headers=bearer(tokens["ann"]), content=b"x" * 2_000_001)
    assert r.status_code == 413


def test_openapi_documents_the_api(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert {p for p in paths} >= {"/api/tasks/next", "/api/tasks/{task_id}/label", "/api/runs/{run}/andon"}
    assert not any(p.startswith(("/compare", "/admin", "/login")) for p in paths)


def accuracy_record(i):
    return record(i, k=1, kind="accuracy", doc_id=f"doc{i}", policy="ppo")


def test_rate_accuracy_through_the_api(app, client, tokens):
    enqueue(app, [accuracy_record(0)], run="acc")
    h = bearer(tokens["ann"])
    task = client.get("/api/tasks/next", headers=h).json()
    assert task["kind"] == "accuracy" and len(task["samples"]) == 1
    url = f"/api/tasks/{task['task_id']}/label"
    for body in ({"best": 0}, {"tie": True}, {}, {"rating": "great"}):
        r = client.post(url, headers=h, json=body)
        assert r.status_code == 422 and r.json()["detail"], body
    assert "rating" in client.post(url, headers=h, json={"best": 0}).json()["detail"]
    r = client.post(url, headers=h, json={"rating": "inaccurate", "critique": "wrong date"})
    assert r.status_code == 201 and r.json()["rating"] == "inaccurate" and r.json()["best"] is None
    assert client.post(url, headers=h, json={"rating": "accurate"}).status_code == 409  # exactly once
    rows = client.get("/api/runs/acc/labels?format=ratings", headers=bearer(tokens["boss"])).json()
    assert [(r["doc_id"], r["policy"], r["rating"], r["note"]) for r in rows] == [
        ("doc0", "ppo", "inaccurate", "wrong date")
    ]


def test_a_comparison_refuses_a_rating(app, client, tokens):
    enqueue(app, [record(0)])
    h = bearer(tokens["ann"])
    task = client.get("/api/tasks/next", headers=h).json()
    assert task["kind"] == "compare"
    r = client.post(f"/api/tasks/{task['task_id']}/label", headers=h, json={"rating": "accurate"})
    assert r.status_code == 422 and "not a rating" in r.json()["detail"]
    assert client.post(f"/api/tasks/{task['task_id']}/label", headers=h, json={"best": 0}).status_code == 201


def test_the_server_lease_frees_an_unanswered_slot(tmp_path):
    """A task served to ann and left unanswered blocks its one slot for `lease_minutes`, then bob may
    take it; ann's late answer is still accepted."""

    def server(lease_minutes):
        app = create_app(Settings(db_url=sqlite_url(tmp_path), min_seconds=0.0, lease_minutes=lease_minutes))
        return app, TestClient(app)

    app, client = server(15.0)
    with store.transaction(app.state.sessions) as session:
        ann, bob = (store.create_labeler(session, name=n, role="labeler")[1] for n in ("ann", "bob"))
    enqueue(app, [record(0)])
    task = client.get("/api/tasks/next", headers=bearer(ann)).json()
    assert client.get("/api/tasks/next", headers=bearer(bob)).status_code == 204  # held by ann's lease
    time.sleep(0.2)
    app, client = server(0.1 / 60)  # the same store, a 0.1 s lease: ann's has run out
    assert client.get("/api/tasks/next", headers=bearer(bob)).json()["task_id"] == task["task_id"]
    assert client.post(f"/api/tasks/{task['task_id']}/label", json={"best": 0}, headers=bearer(ann)).status_code == 201


@pytest.mark.parametrize("minutes", [0.0, -1.0])
def test_a_lease_must_be_positive(minutes):
    with pytest.raises(ValueError, match="lease_minutes must be > 0"):
        Settings(db_url="sqlite://", lease_minutes=minutes)
