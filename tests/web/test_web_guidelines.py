"""Per-run guidelines: an admin writes them on the admin page (or through the API); labelers
see them beside every task of that run, escaped as plain text."""

from web_helpers import bearer, csrf_of, enqueue, login

from lmpref import store


def test_admin_writes_guidelines_labelers_see_them(app, client, tokens):
    enqueue(app)
    login(client, tokens["boss"])
    admin = client.get("/admin?run=r").text
    assert 'id="guidelines-text"' in admin
    r = client.post(
        "/admin/guidelines",
        data={"csrf": csrf_of(admin), "run": "r", "text": "Prefer the factual one.\n<script>x</script>"},
        follow_redirects=False,
    )
    assert r.status_code == 303 and "msg=guidelines" in r.headers["location"]
    assert "Prefer the factual one." in client.get("/admin?run=r").text
    client.cookies.clear()
    login(client, tokens["ann"])
    page = client.get("/compare").text
    assert 'id="guidelines"' in page and "Prefer the factual one." in page
    assert "<script>x</script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    task = client.get("/api/tasks/next", headers=bearer(tokens["ann"])).json()
    assert task["guidelines"].startswith("Prefer the factual one.")


def test_guidelines_through_the_api_admins_only(app, client, tokens):
    enqueue(app)
    body = {"text": "Ties only when truly equal."}
    assert client.put("/api/runs/r/guidelines", headers=bearer(tokens["ann"]), json=body).status_code == 403
    r = client.put("/api/runs/r/guidelines", headers=bearer(tokens["boss"]), json=body)
    assert r.status_code == 200 and r.json()["guidelines"] == body["text"]
    assert client.put("/api/runs/nope/guidelines", headers=bearer(tokens["boss"]), json=body).status_code == 404
    assert (
        client.put("/api/runs/r/guidelines", headers=bearer(tokens["boss"]), json={"text": "x" * 20_001}).status_code
        == 422
    )
    # Blank removes them: no panel.
    client.put("/api/runs/r/guidelines", headers=bearer(tokens["boss"]), json={"text": "  "})
    login(client, tokens["ann"])
    assert 'id="guidelines"' not in client.get("/compare").text


def test_labelers_cannot_write_guidelines(app, client, tokens):
    enqueue(app)
    login(client, tokens["ann"])
    page = client.get("/compare").text
    r = client.post("/admin/guidelines", data={"csrf": csrf_of(page), "run": "r", "text": "mine"})
    assert r.status_code == 403
    with store.transaction(app.state.sessions) as session:
        assert store.get_run(session, name="r").guidelines is None
