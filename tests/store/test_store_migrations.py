from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from lmpref import store
from lmpref.store.models import Base


def test_migrations_create_exactly_the_models(factory):
    engine = factory.kw["bind"]
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_reopening_a_store_is_a_no_op(db_url, factory):
    with store.transaction(factory) as session:
        store.create_labeler(session, name="ann")
    again = store.open_store(db_url)  # migrations run again
    with store.transaction(again) as session:
        assert [x.name for x in store.list_labelers(session)] == ["ann"]
    tables = set(inspect(again.kw["bind"]).get_table_names())
    assert {"runs", "batches", "queries", "samples", "tasks", "gold_tasks", "assignments", "labels",
            "labelers", "andon_events", "alembic_version"} <= tables
    again.kw["bind"].dispose()


def test_sqlite_files_use_wal(tmp_path):
    factory = store.open_store(f"sqlite:///{tmp_path / 'x.db'}")
    with factory() as session:
        assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert session.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_plain_postgresql_urls_use_psycopg3():
    assert store.db.normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert store.db.normalize_url("sqlite:///x.db") == "sqlite:///x.db"
