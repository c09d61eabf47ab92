import datetime as dt

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
    assert {
        "runs",
        "batches",
        "queries",
        "samples",
        "tasks",
        "gold_tasks",
        "assignments",
        "labels",
        "labelers",
        "andon_events",
        "alembic_version",
    } <= tables
    again.kw["bind"].dispose()


def test_sqlite_files_use_wal(tmp_path):
    factory = store.open_store(f"sqlite:///{tmp_path / 'x.db'}")
    with factory() as session:
        assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert session.execute(text("PRAGMA foreign_keys")).scalar() == 1


def test_plain_postgresql_urls_use_psycopg3():
    assert store.db.normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert store.db.normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_0002_turns_existing_tasks_into_comparisons(db_url):
    from alembic import command
    from alembic.config import Config

    engine = store.make_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(store.db.MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(text("INSERT INTO runs (id, name, gold_rate, created_at) VALUES (1, 'r', 0, CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO batches (id, run_id, name, created_at) VALUES (1, 1, 'b', CURRENT_TIMESTAMP)"))
        conn.execute(text("INSERT INTO queries (id, batch_id, source_id, text, extra) VALUES (1, 1, 'q', 'Q', '{}')"))
        conn.execute(
            text(
                "INSERT INTO tasks (id, run_id, batch_id, query_id, redundancy, created_at) "
                "VALUES (1, 1, 1, 1, 1, CURRENT_TIMESTAMP)"
            )
        )
    store.upgrade(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT kind FROM tasks")).scalar_one() == "compare"
    engine.dispose()


def test_0003_adds_web_sessions_and_keeps_labelers(db_url):
    from alembic import command
    from alembic.config import Config

    engine = store.make_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(store.db.MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
        conn.execute(
            text(
                "INSERT INTO labelers (id, name, role, token_hash, active, created_at) "
                "VALUES (1, 'ann', 'labeler', 'h', true, CURRENT_TIMESTAMP)"
            )
        )
        assert "web_sessions" not in inspect(conn).get_table_names()
    store.upgrade(engine)
    assert "web_sessions" in inspect(engine).get_table_names()
    factory = store.open_store(db_url)
    with store.transaction(factory) as session:
        ann = store.get_labeler(session, name="ann")
        cookie = store.start_session(session, labeler=ann, lifetime=dt.timedelta(hours=1))
        assert store.session_labeler(session, token=cookie) is ann
        store.end_session(session, token=cookie)
        assert store.session_labeler(session, token=cookie) is None
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0002")
        assert "web_sessions" not in inspect(conn).get_table_names()
    factory.kw["bind"].dispose()
    engine.dispose()


def test_0004_adds_run_guidelines_to_existing_runs(db_url):
    from alembic import command
    from alembic.config import Config

    engine = store.make_engine(db_url)
    cfg = Config()
    cfg.set_main_option("script_location", str(store.db.MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
        conn.execute(text("INSERT INTO runs (id, name, gold_rate, created_at) VALUES (1, 'r', 0, CURRENT_TIMESTAMP)"))
    store.upgrade(engine)
    factory = store.open_store(db_url)
    with store.transaction(factory) as session:
        assert store.get_run(session, name="r").guidelines is None
        store.set_guidelines(session, run="r", text="Be kind.")
    with store.transaction(factory) as session:
        assert store.get_run(session, name="r").guidelines == "Be kind."
    factory.kw["bind"].dispose()
    engine.dispose()
