"""Accounts from the admin page: add (token shown once, not cached), new token (old token and
sessions die), disable / enable; only admins, never disabling yourself."""

import re

from fastapi.testclient import TestClient
from web_helpers import bearer, csrf_of, login


def _admin_page(client, tokens):
    login(client, tokens["boss"])
    return client.get("/admin").text


def test_add_a_labeler_from_the_page(app, client, tokens):
    admin = _admin_page(client, tokens)
    assert 'id="add-labeler"' in admin
    r = client.post("/admin/labelers", data={"csrf": csrf_of(admin), "name": "cat", "role": "labeler"})
    assert r.status_code == 201 and r.headers["cache-control"] == "no-store"
    token = re.search(r'<code id="new-token">([^<]+)</code>', r.text).group(1)
    assert client.get("/api/me", headers=bearer(token)).json()["name"] == "cat"
    assert client.post("/admin/labelers", data={"csrf": csrf_of(admin), "name": "cat"}).status_code == 409
    assert client.post("/admin/labelers", data={"csrf": csrf_of(admin), "name": "../x"}).status_code == 422
    assert (
        client.post("/admin/labelers", data={"csrf": csrf_of(admin), "name": "dan", "role": "root"}).status_code == 422
    )


def test_rotate_ends_the_old_token_and_its_sessions(app, client, tokens):
    ann = TestClient(app)
    login(ann, tokens["ann"])
    assert ann.get("/compare", follow_redirects=False).status_code == 200
    admin = _admin_page(client, tokens)
    r = client.post("/admin/labelers/rotate", data={"csrf": csrf_of(admin), "name": "ann"})
    assert r.status_code == 200
    new = re.search(r'<code id="new-token">([^<]+)</code>', r.text).group(1)
    assert client.get("/api/me", headers=bearer(tokens["ann"])).status_code == 401
    assert client.get("/api/me", headers=bearer(new)).status_code == 200
    assert ann.get("/compare", follow_redirects=False).status_code == 303


def test_disable_and_enable(app, client, tokens):
    admin = _admin_page(client, tokens)
    csrf = csrf_of(admin)
    r = client.post(
        "/admin/labelers/active", data={"csrf": csrf, "name": "bob", "active": "false"}, follow_redirects=False
    )
    assert r.status_code == 303
    assert client.get("/api/me", headers=bearer(tokens["bob"])).status_code == 401
    assert "disabled" in client.get("/admin").text
    client.post("/admin/labelers/active", data={"csrf": csrf, "name": "bob", "active": "true"})
    assert client.get("/api/me", headers=bearer(tokens["bob"])).status_code == 200
    # An admin cannot lock themselves out; unknown names are 404.
    assert (
        client.post("/admin/labelers/active", data={"csrf": csrf, "name": "boss", "active": "false"}).status_code == 409
    )
    assert (
        client.post("/admin/labelers/active", data={"csrf": csrf, "name": "nobody", "active": "false"}).status_code
        == 404
    )


def test_labelers_cannot_manage_accounts(app, client, tokens):
    login(client, tokens["ann"])
    csrf = csrf_of(client.get("/compare").text)
    assert client.post("/admin/labelers", data={"csrf": csrf, "name": "evil", "role": "admin"}).status_code == 403
    assert client.post("/admin/labelers/rotate", data={"csrf": csrf, "name": "boss"}).status_code == 403
    assert (
        client.post("/admin/labelers/active", data={"csrf": csrf, "name": "boss", "active": "false"}).status_code == 403
    )
    assert client.get("/api/me", headers=bearer(tokens["boss"])).status_code == 200
