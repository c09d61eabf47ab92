"""Helpers for the web tests (a plain module: `from conftest import` is fragile)."""

import re

from lmpref import store
from web_store_fixtures import record


def enqueue(app, records=None, **kwargs):
    with store.transaction(app.state.sessions) as session:
        return store.enqueue(
            session, run=kwargs.pop("run", "r"), records=records or [record(i) for i in range(4)], **kwargs
        )


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def csrf_of(html):
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def login(client, token):
    page = client.get("/login")
    return client.post("/login", data={"token": token, "csrf": csrf_of(page.text)}, follow_redirects=False)
