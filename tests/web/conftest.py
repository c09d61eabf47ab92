import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

# tests/ is not a package; make the shared helpers importable from here.
sys.path.insert(0, str(Path(__file__).parents[1]))
from lmpref import store  # noqa: E402
from lmpref.web import Settings, create_app  # noqa: E402
from web_store_fixtures import sqlite_url  # noqa: E402


@pytest.fixture
def app(tmp_path):
    return create_app(Settings(db_url=sqlite_url(tmp_path), min_seconds=0.0))


@pytest.fixture
def tokens(app):
    """Tokens of an admin and two labelers."""
    out = {}
    with store.transaction(app.state.sessions) as session:
        for name, role in (("boss", "admin"), ("ann", "labeler"), ("bob", "labeler")):
            out[name] = store.create_labeler(session, name=name, role=role)[1]
    return out


@pytest.fixture
def client(app):
    return TestClient(app)
