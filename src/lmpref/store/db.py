"""Engines, sessions and migrations.

SQLite (a file, WAL mode) is the default; PostgreSQL works by URL. Opening a store runs the
alembic migrations shipped in this package, so `lmpref serve` on a new file just works.
"""

from __future__ import annotations

import collections
import os
import threading
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: several server processes on one SQLite file are not supported
    fcntl = None  # type: ignore[assignment]
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

DEFAULT_URL = "sqlite:///lmpref.db"
MIGRATIONS = Path(__file__).parent / "migrations"


def default_url() -> str:
    return os.environ.get("LMPREF_DB", DEFAULT_URL)


def normalize_url(url: str) -> str:
    # `postgresql://` means psycopg2 to SQLAlchemy; we ship psycopg 3.
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    # Up to 40 connections, above the web app's limit on requests in flight (32, see
    # `Settings.max_concurrency`), so a request never waits on the pool while holding a lock; 32
    # stay open. An overflow connection is closed when returned, and on PostgreSQL that costs a
    # new server process per request beyond the pool: with 10 kept open, 64 labelers ran at 72
    # labels/s; with 32, at ~90 (bench/README.md). Two workers stay under PostgreSQL's default
    # max_connections (100).
    pool: dict[str, Any] = {"pool_size": 32, "max_overflow": 8}
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, **pool)
    memory = url in ("sqlite://", "sqlite:///:memory:")
    if memory:  # one shared connection, or each thread would see its own empty database
        pool = {"poolclass": StaticPool}
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **pool)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001
        # We emit BEGIN ourselves (below), so the driver must not.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if not memory:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")  # safe with WAL, much faster commits
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # noqa: ANN001
        # BEGIN IMMEDIATE takes the write lock up front, so two writers queue on the busy
        # timeout instead of one failing with "database is locked" when it upgrades a read
        # lock. SQLite has one writer anyway; this makes "next task" race-free. Sent on the
        # driver's connection: through `exec_driver_sql` it cost a statement's worth of
        # SQLAlchemy's CPU per transaction (~0.1 ms; two per label, issue 16).
        conn.connection.dbapi_connection.execute("BEGIN IMMEDIATE")

    return engine


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class FairLock:
    """A lock that its waiters get in the order they asked (FIFO), handed from holder to next.

    `threading.Lock` wakes an arbitrary waiter, and a thread that has just released it often
    takes it again before the woken one runs: with 32 requests queued on the SQLite writer lock
    some waited seconds while others went through (p99 3 s at a median of 0.36 s, issue 16)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._waiters: collections.deque[threading.Lock] = collections.deque()
        self._held = False

    def acquire(self) -> None:
        with self._mutex:
            if not self._held:
                self._held = True
                return
            turn = threading.Lock()
            turn.acquire()
            self._waiters.append(turn)
        turn.acquire()  # released by the holder that hands the lock over; `_held` stays True

    def release(self) -> None:
        with self._mutex:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._held = False

    def __enter__(self) -> None:
        self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


class _ProcessesLock:
    """A lock for the threads of this process and, through flock(2) on a file beside the
    database, for the other processes that open the store this way (`lmpref serve --workers`)."""

    def __init__(self, path: str) -> None:
        self._threads = FairLock()
        self._path = path
        self._fd: int | None = None
        self._pid = -1

    def __enter__(self) -> None:
        self._threads.acquire()
        try:
            if self._pid != os.getpid():  # opened in the process that uses it, not inherited
                self._fd, self._pid = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600), os.getpid()
            assert self._fd is not None
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            assert self._fd is not None
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()


def open_store(url: str | None = None, *, migrate: bool = True, processes: int = 1) -> sessionmaker[Session]:
    """Engine + migrations + a session factory, for `url` (default `$LMPREF_DB` or lmpref.db).

    `processes` > 1: several processes serve this store at once (`lmpref serve --workers`); on
    a SQLite file they then also queue for its one writer on a lock file (`<file>.lock`).
    """
    engine = make_engine(url or default_url())
    if migrate:
        upgrade(engine)
    info: dict[str, Any] = {}
    if engine.dialect.name == "sqlite":
        # SQLite has one writer. Threads of this process queue on this lock, which wakes the
        # next one at once, in the order they came; left to SQLite's busy handler they would
        # poll with sleeps of up to 100 ms, and under load p99 latency went from tens of ms to seconds.
        info["write_lock"] = FairLock()
        database = engine.url.database
        if processes > 1 and fcntl is not None and database and database != ":memory:":
            info["write_lock"] = _ProcessesLock(database + ".lock")
    return sessionmaker(engine, expire_on_commit=False, info=info)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception."""
    lock = factory.kw["info"].get("write_lock")
    with lock or nullcontext(), factory() as session, session.begin():
        yield session
