import re

from web_helpers import csrf_of, enqueue, login

from lmpref import store
from web_store_fixtures import record


def test_pages_need_login(client, tokens):
    for path in ("/", "/compare", "/admin"):
        r = client.get(path, follow_redirects=True)
        assert r.url.path == "/login"


def test_login_sets_a_strict_httponly_cookie(client, tokens):
    r = login(client, tokens["ann"])
    assert r.status_code == 303 and r.headers["location"] == "/compare"
    cookie = r.headers["set-cookie"]
    assert "lmpref_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert tokens["ann"] not in cookie
    assert login(client, tokens["boss"]).headers["location"] == "/admin"


def test_bad_logins(client, tokens):
    assert login(client, "lmp_nope").status_code == 401
    client.cookies.clear()
    # No login-form cookie: a cross-site form cannot log someone in.
    r = client.post("/login", data={"token": tokens["ann"], "csrf": "forged"}, follow_redirects=False)
    assert r.status_code == 403


def test_tampered_or_stale_sessions_are_refused(app, client, tokens):
    login(client, tokens["ann"])
    value = client.cookies["lmpref_session"]
    client.cookies.clear()
    client.cookies.set("lmpref_session", value[:-1] + ("0" if value[-1] != "0" else "1"))
    assert client.get("/compare", follow_redirects=False).status_code == 303
    login(client, tokens["ann"])
    with store.transaction(app.state.sessions) as session:
        store.rotate_token(session, name="ann")
    assert client.get("/compare", follow_redirects=False).headers["location"] == "/login"


def test_compare_page_shows_only_valid_samples_with_copying(app, client, tokens):
    rec = record(0, valid=[True, False, True, True])
    rec["responses"][2] = "the quick brown fox was here."
    enqueue(app, [rec])
    login(client, tokens["ann"])
    page = client.get("/compare").text
    assert page.count('class="sample"') == 3
    assert "Response 1 to query 0." not in page
    assert '<mark class="copied">the quick brown fox</mark>' in page
    assert "67% copied" in page and page.count("0% copied") == 2
    for header in ("content-security-policy", "x-frame-options"):
        assert header in client.get("/compare").headers


def test_label_tie_skip_and_flag_through_forms(app, client, tokens):
    enqueue(app, [record(i) for i in range(4)])
    login(client, tokens["ann"])
    for form in ({"best": "1"}, {"action": "tie"}, {"action": "skip"}, {"action": "flag", "flag": "unreadable"}):
        page = client.get("/compare").text
        task_id = re.search(r'action="/compare/(\d+)"', page).group(1)
        r = client.post(f"/compare/{task_id}", data={"csrf": csrf_of(page), **form}, follow_redirects=False)
        assert r.status_code == 303, r.text
        again = client.post(f"/compare/{task_id}", data={"csrf": csrf_of(page), **form})
        assert again.status_code == 409  # a second post of the same form changes nothing
    assert "Nothing to label right now" in client.get("/compare").text
    with store.transaction(app.state.sessions) as session:
        rows = list(store.export_records(session, run="r"))
        assert [r["tie"] for r in rows] == [False, True]
        assert store.quality_report(session).labelers[0].flagged == 1


def test_forms_need_the_csrf_token(app, client, tokens):
    enqueue(app)
    login(client, tokens["ann"])
    page = client.get("/compare").text
    task_id = re.search(r'action="/compare/(\d+)"', page).group(1)
    for data in ({"best": "0"}, {"best": "0", "csrf": "forged"}):
        r = client.post(f"/compare/{task_id}", data=data)
        assert r.status_code in (403, 422)
    assert client.post("/andon", data={"reason": "x", "csrf": "forged"}).status_code == 403
    with store.transaction(app.state.sessions) as session:
        assert store.progress(session, run="r").labels == 0
        assert store.open_andon_events(session) == []


def test_bad_form_input_gets_a_clear_error(app, client, tokens):
    enqueue(app)
    login(client, tokens["ann"])
    page = client.get("/compare").text
    task_id = re.search(r'action="/compare/(\d+)"', page).group(1)
    csrf = csrf_of(page)
    assert client.post(f"/compare/{task_id}", data={"csrf": csrf, "best": "7"}).status_code == 422
    assert (
        client.post(f"/compare/{task_id}", data={"csrf": csrf, "best": "3", "critique": "x" * 10_001}).status_code
        == 422
    )
    assert client.post("/compare/9999", data={"csrf": csrf, "best": "0"}).status_code == 404


def test_andon_from_a_page_reaches_the_admin_page(app, client, tokens):
    enqueue(app)
    login(client, tokens["ann"])
    page = client.get("/compare").text
    assert "Stop training" in page
    r = client.post(
        "/andon",
        data={"csrf": csrf_of(page), "reason": "reward hacking!", "run": "r", "back": "//evil.example"},
        follow_redirects=False,
    )
    assert r.headers["location"] == "/compare?msg=andon"
    assert client.get("/admin").status_code == 403  # a labeler is not an admin
    client.cookies.clear()
    login(client, tokens["boss"])
    admin = client.get("/admin").text
    assert "TRAINING STOPPED" in admin and "reward hacking!" in admin
    event_id = re.search(r'action="/admin/andon/(\d+)/clear"', admin).group(1)
    client.post(f"/admin/andon/{event_id}/clear", data={"csrf": csrf_of(admin), "note": "checked"})
    admin = client.get("/admin").text
    assert "No open Andon events" in admin and "checked" in admin


def test_admin_page_shows_quality(app, client, tokens):
    enqueue(app, redundancy=2)
    for name in ("ann", "bob"):
        client.cookies.clear()
        login(client, tokens[name])
        page = client.get("/compare").text
        task_id = re.search(r'action="/compare/(\d+)"', page).group(1)
        client.post(f"/compare/{task_id}", data={"csrf": csrf_of(page), "action": "tie"})
    client.cookies.clear()
    login(client, tokens["boss"])
    admin = client.get("/admin?run=r").text
    assert 'id="alpha"' in admin and "Krippendorff" in admin
    assert re.search(r"<td>ann</td><td>1</td>", admin) and "100% of 1" in admin  # ann agrees with bob


def test_logout(client, tokens):
    login(client, tokens["ann"])
    page = client.get("/compare").text
    client.post("/logout", data={"csrf": csrf_of(page)})
    assert client.get("/compare", follow_redirects=False).status_code == 303
