import sys
from pathlib import Path

import pytest

# tests/ is not a package; make the shared helpers importable from here.
sys.path.insert(0, str(Path(__file__).parents[1]))
from lmpref import store  # noqa: E402
from web_store_fixtures import fresh_database, postgres_server, sqlite_url  # noqa: E402


@pytest.fixture(scope="session")
def postgres():
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """Every store test runs on SQLite and on a real PostgreSQL server."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    return fresh_database(request.getfixturevalue("postgres"))


@pytest.fixture
def factory(db_url):
    factory = store.open_store(db_url)
    yield factory
    factory.kw["bind"].dispose()


@pytest.fixture
def session(factory):
    with store.transaction(factory) as session:
        yield session
