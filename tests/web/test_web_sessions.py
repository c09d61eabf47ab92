"""Browser sessions are server-side rows: logout, rotation and disabling end them, they expire;
and a login form posted from another origin (another port of this host) is refused."""

import datetime as dt

from fastapi.testclient import TestClient
from sqlalchemy import select, update
from web_helpers import csrf_of, login

from lmpref import store
from lmpref.store.labelers import hash_token
from lmpref.store.models import WebSession
from lmpref.web import Settings, create_app
from web_store_fixtures import sqlite_url


def _logged_in(client, token):
    assert login(client, token).status_code == 303
    return client.cookies["lmpref_session"]


def test_a_cookie_saved_before_logout_no_longer_works(app, client, tokens):
    saved = _logged_in(client, tokens["ann"])
    page = client.get("/compare")
    assert page.status_code == 200
    client.post("/logout", data={"csrf": csrf_of(page.text)})
    replay = TestClient(app)
    replay.cookies.set("lmpref_session", saved)
    assert replay.get("/compare", follow_redirects=False).headers["location"] == "/login"


def test_only_the_cookies_hash_is_stored(app, client, tokens):
    saved = _logged_in(client, tokens["ann"])
    with store.transaction(app.state.sessions) as session:
        (row,) = session.scalars(select(WebSession))
        assert row.token_hash == hash_token(saved) and saved not in row.token_hash


def test_sessions_expire_on_the_server(app, client, tokens):
    _logged_in(client, tokens["ann"])
    assert client.get("/compare", follow_redirects=False).status_code == 200
    with store.transaction(app.state.sessions) as session:
        past = store.models.utcnow() - dt.timedelta(seconds=1)
        session.execute(update(WebSession).values(expires_at=past))
    assert client.get("/compare", follow_redirects=False).status_code == 303


def test_session_lifetime_is_bounded_by_settings(tmp_path):
    app = create_app(Settings(db_url=sqlite_url(tmp_path), session_hours=2.0))
    with store.transaction(app.state.sessions) as session:
        token = store.create_labeler(session, name="ann")[1]
    client = TestClient(app)
    _logged_in(client, token)
    with store.transaction(app.state.sessions) as session:
        (row,) = session.scalars(select(WebSession))
        assert dt.timedelta(hours=1.99) < row.expires_at - row.created_at <= dt.timedelta(hours=2)


def test_disabling_a_labeler_ends_their_sessions(app, client, tokens):
    _logged_in(client, tokens["ann"])
    with store.transaction(app.state.sessions) as session:
        store.set_active(session, name="ann", active=False)
        store.set_active(session, name="ann", active=True)  # re-enabling does not revive old cookies
    assert client.get("/compare", follow_redirects=False).status_code == 303


def test_login_from_another_port_of_this_host_is_refused(app, client, tokens):
    """The attack: a page on :8001 plants the login cookie and posts the attacker's token."""
    page = client.get("/login")
    nonce = csrf_of(page.text)
    for headers in (
        {"Origin": "http://testserver:8001"},
        {"Sec-Fetch-Site": "same-site"},
        {"Referer": "http://testserver:8001/evil"},
        {"Origin": "null"},
    ):
        r = client.post(
            "/login", data={"token": tokens["boss"], "csrf": nonce}, headers=headers, follow_redirects=False
        )
        assert r.status_code == 403, headers
        assert "lmpref_session" not in r.headers.get("set-cookie", "")
    ok = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin", "Referer": "http://testserver/login"}
    r = client.post("/login", data={"token": tokens["ann"], "csrf": nonce}, headers=ok, follow_redirects=False)
    assert r.status_code == 303


def test_logged_in_forms_refuse_other_origins(app, client, tokens):
    _logged_in(client, tokens["ann"])
    page = client.get("/compare").text
    r = client.post("/andon", data={"csrf": csrf_of(page), "reason": "x"}, headers={"Origin": "http://testserver:9"})
    assert r.status_code == 403
    with store.transaction(app.state.sessions) as session:
        assert store.open_andon_events(session) == []


def test_secure_cookies_use_the_host_prefix(tmp_path):
    app = create_app(Settings(db_url=sqlite_url(tmp_path), secure_cookies=True))
    with store.transaction(app.state.sessions) as session:
        token = store.create_labeler(session, name="ann")[1]
    client = TestClient(app, base_url="https://testserver")
    page = client.get("/login")
    assert "__Host-lmpref_login=" in page.headers["set-cookie"] and "Secure" in page.headers["set-cookie"]
    r = client.post("/login", data={"token": token, "csrf": csrf_of(page.text)}, follow_redirects=False)
    assert r.status_code == 303
    assert "__Host-lmpref_session=" in r.headers["set-cookie"] and "Secure" in r.headers["set-cookie"]
    assert client.get("/compare", follow_redirects=False).status_code == 200
