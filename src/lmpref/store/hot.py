"""The two requests every labeler repeats (`GET /api/tasks/next`, `POST /api/tasks/{id}/label`),
in SQLAlchemy Core: statements built once, run on a `Connection`, rows read as tuples.

The ORM functions of `queue.py` (`next_task`, `save_label`) stay the reference and serve the
pages, the CLI and the tests; these do the same for the JSON API with fewer statements and no
ORM objects (issue 16: the ORM was about half of the server's CPU time per label). Both share
the choice of a task (`queue._available`), the gold mix, the shuffle and the checks of an answer.

Statements per request, beside the transaction's BEGIN (SQLite's `BEGIN IMMEDIATE`):

- next, new task: SQLite 3 (the labeler with its open assignment, the first free task with its
  run, query and samples, the insert of the assignment); PostgreSQL 5 (the labeler, locked; its
  open assignment; the first free task, locked, SKIP LOCKED; that task re-checked and loaded;
  the insert). A run with gold tasks adds a count and, when the draw says gold, two more.
- next, open task: 2 on SQLite, 3 on PostgreSQL.
- label: 3 (the assignment with its labeler and task; the label; the assignment's status), and
  one more to set `tasks.complete` on PostgreSQL, and on SQLite only when the label fills the task.

The token is checked against the store on every request (no cache), so rotating a token or
disabling a labeler takes effect at once, as with the ORM path.
"""

from __future__ import annotations

import datetime as dt
import functools
import hmac
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    Select,
    String,
    Table,
    and_,
    bindparam,
    exists,
    false,
    func,
    insert,
    select,
    true,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from lmpref.store.errors import Conflict, NotFound
from lmpref.store.labelers import hash_token
from lmpref.store.models import Base, UTCDateTime, utcnow
from lmpref.store.queue import (
    _P_LABELER,
    _P_RUN,
    _P_TASK,
    LEASE,
    _available,
    _statements,
    check_answer,
    gold_draw,
    shuffled_order,
)

_T: dict[str, Table] = dict(Base.metadata.tables)
L, A, T, R, Q, S = (_T[n] for n in ("labelers", "assignments", "tasks", "runs", "queries", "samples"))
LB, G = _T["labels"], _T["gold_tasks"]
_P_DIGEST = bindparam("digest", type_=String())


class BadToken(Exception):
    """No active labeler holds the token (the API answers 401)."""


@dataclass(frozen=True)
class ServedTask:
    """A task as one labeler sees it, from rows (no ORM objects)."""

    task_id: int
    run: str
    kind: str
    context: str
    samples: list[str]  # sample texts in display order (position 0 first)
    served_at: dt.datetime
    guidelines: str | None


@dataclass(frozen=True)
class SavedLabel:
    """A stored label as its labeler sees it (`best` and positions as they were sent)."""

    id: int
    task_id: int
    best: int | None
    tie: bool
    rating: str | None
    seconds: float
    too_fast: bool
    flag: str | None
    created_at: dt.datetime


@contextmanager
def connection(factory: sessionmaker[Session]) -> Iterator[Connection]:
    """One transaction on a Core connection: commit on success, roll back on any exception; on
    SQLite behind the store's writer lock, like `db.transaction`."""
    lock = factory.kw["info"].get("write_lock")
    engine = factory.kw["bind"]
    with lock or nullcontext(), engine.begin() as conn:
        yield conn


def _postgres(conn: Connection) -> bool:
    return conn.dialect.name == "postgresql"


# -- statements, built once -------------------------------------------------------------------

_TASK_COLUMNS = (T.c.id, T.c.kind, T.c.run_id, R.c.name, R.c.gold_rate, R.c.guidelines, Q.c.text, S.c.text)


def _task_rows(where: Any) -> Select[Any]:
    """A task with its run, query and valid samples in slot order: one row per sample."""
    return (
        select(*_TASK_COLUMNS)
        .select_from(T.join(R, R.c.id == T.c.run_id).join(Q, Q.c.id == T.c.query_id).join(S, S.c.query_id == Q.c.id))
        .where(where, S.c.valid == true())
        .order_by(S.c.index)
    )


@functools.cache
def _hot(in_run: bool) -> dict[str, Any]:
    run_of_task = exists().where(T.c.id == A.c.task_id, R.c.id == T.c.run_id, R.c.name == _P_RUN)
    open_of = and_(A.c.labeler_id == L.c.id, A.c.status == "open", *((run_of_task,) if in_run else ()))
    # SQLite: the labeler and its oldest open assignment (of the run) in one statement.
    me_and_open = (
        select(L.c.id, L.c.token_hash, L.c.active, A.c.id, A.c.task_id, A.c.order, A.c.served_at)
        .select_from(L.outerjoin(A, open_of))
        .where(L.c.token_hash == _P_DIGEST)
        .order_by(A.c.id)
        .limit(1)
    )
    # PostgreSQL: the labeler row locked first (a double click waits here and then sees the
    # assignment the first click made), its open assignment in a fresh statement.
    me_locked = (
        select(L.c.id, L.c.token_hash, L.c.active).where(L.c.token_hash == _P_DIGEST).with_for_update(key_share=True)
    )
    open_assignment = (
        select(A.c.id, A.c.task_id, A.c.order, A.c.served_at)
        .where(A.c.labeler_id == _P_LABELER, A.c.status == "open", *((run_of_task,) if in_run else ()))
        .order_by(A.c.id)
        .limit(1)
    )
    # SQLite (one writer at a time): the first free task and its content in one statement.
    first_free = _statements(in_run, None, False)[1].with_only_columns(T.c.id).scalar_subquery()
    return {
        "me_and_open": me_and_open,
        "me_locked": me_locked,
        "open": open_assignment,
        "load": _task_rows(T.c.id == _P_TASK),
        "first_free": _task_rows(T.c.id == first_free),
        "load_if_free": _task_rows(and_(T.c.id == _P_TASK, *_available())),  # under the task's lock
    }


_ME = select(L.c.id, L.c.token_hash, L.c.active).where(L.c.token_hash == _P_DIGEST)
_N_SEEN = select(func.count(A.c.id)).select_from(A.join(T, T.c.id == A.c.task_id))
_N_SEEN = _N_SEEN.where(A.c.labeler_id == _P_LABELER, T.c.run_id == bindparam("run_id", type_=Integer()))
_GOLD_IDS = (
    select(T.c.id)
    .select_from(T.join(G, G.c.task_id == T.c.id))
    .where(
        T.c.run_id == bindparam("run_id", type_=Integer()),
        ~exists().where(A.c.task_id == T.c.id, A.c.labeler_id == _P_LABELER),
    )
    .order_by(T.c.id)
)
_RUN_EXISTS = select(R.c.id).where(R.c.name == _P_RUN)
_NEW_ASSIGNMENT = insert(A)
_ANSWERED = (
    select(
        L.c.id,
        L.c.token_hash,
        L.c.active,
        A.c.id,
        A.c.status,
        A.c.order,
        A.c.served_at,
        T.c.kind,
        T.c.redundancy,
        select(func.count(LB.c.id)).where(LB.c.task_id == _P_TASK).scalar_subquery(),
    )
    .select_from(A.join(L, L.c.id == A.c.labeler_id).join(T, T.c.id == A.c.task_id))
    .where(L.c.token_hash == _P_DIGEST, A.c.task_id == _P_TASK)
)
# PostgreSQL: the assignment row locked, so two submissions of one answer queue and the second
# sees it done (SQLite runs writers one at a time anyway).
_ANSWERED_LOCKED = _ANSWERED.with_for_update(of=A)
_NEW_LABEL = insert(LB)
_CLOSE = (
    A.update()
    .where(A.c.id == bindparam("a_id", type_=Integer()))
    .values(status="done", closed_at=bindparam("closed_at", type_=UTCDateTime()))
)
_MARK_FULL = (
    T.update()
    .where(
        T.c.id == _P_TASK,
        T.c.complete == false(),
        select(func.count(LB.c.id)).where(LB.c.task_id == _P_TASK).scalar_subquery() >= T.c.redundancy,
    )
    .values(complete=True)
)


def _digest(token: str) -> str:
    if not token or len(token) > 200:
        raise BadToken
    return hash_token(token)


def _check(row: Sequence[Any] | None, digest: str) -> int:
    """The labeler id of a (id, token_hash, active, ...) row, else BadToken."""
    if row is None or row[0] is None or not hmac.compare_digest(row[1], digest) or not row[2]:
        raise BadToken
    return int(row[0])


# -- next task --------------------------------------------------------------------------------


def next_task(
    conn: Connection, *, token: str, run: str | None = None, lease: dt.timedelta = LEASE
) -> ServedTask | None:
    """`queue.next_task` for the labeler holding `token` (BadToken if none): their open task,
    else a new one (oldest run, then oldest task first, gold mixed in), else None. Concurrency
    as in `queue.next_task`."""
    digest = _digest(token)
    st = _hot(bool(run))
    postgres = _postgres(conn)
    run_param = {"run": run} if run else {}
    current: Sequence[Any] | None
    if postgres:
        labeler_id = _check(conn.execute(st["me_locked"], {"digest": digest}).first(), digest)
        current = conn.execute(st["open"], {"labeler_id": labeler_id, **run_param}).first()
    else:
        row = conn.execute(st["me_and_open"], {"digest": digest, **run_param}).first()
        labeler_id = _check(row, digest)
        current = None if row is None or row[3] is None else row[3:]
    if current is not None:
        _, task_id, order, served_at = current
        rows = conn.execute(st["load"], {"task_id": task_id}).all()
        return _served(rows, order, served_at)

    now = utcnow()
    params = {"labeler_id": labeler_id, "cutoff": now - lease, **run_param}
    if not postgres:
        rows = conn.execute(st["first_free"], params).all()
        if rows:
            return _assign(conn, labeler_id, rows, now=now)
    else:
        # First skip tasks others hold; if that finds none, wait for them, so "nothing to label"
        # is never an artefact of a lock held for a few milliseconds. Whoever holds a task's lock
        # re-checks in a fresh statement that it still needs labels.
        for lock in (True, False):
            candidate = _statements(bool(run), lock, True)[1]
            for _ in range(100):  # each miss is a task another labeler just filled
                found = conn.execute(candidate, params).first()
                if found is None:
                    break
                rows = conn.execute(
                    st["load_if_free"], {"task_id": found[0], "labeler_id": labeler_id, "cutoff": params["cutoff"]}
                ).all()
                if rows:
                    return _assign(conn, labeler_id, rows, now=now)
    if run and conn.execute(_RUN_EXISTS, {"run": run}).first() is None:
        raise NotFound(f"no run named {run!r}")  # an unknown run is a 404, not "nothing to label"
    return None


def _assign(conn: Connection, labeler_id: int, rows: Sequence[Sequence[Any]], *, now: dt.datetime) -> ServedTask:
    task_id, run_id, gold_rate = rows[0][0], rows[0][2], rows[0][4]
    if gold_rate > 0:
        n_seen = conn.execute(_N_SEEN, {"labeler_id": labeler_id, "run_id": run_id}).scalar_one()
        rng = gold_draw(labeler_id, n_seen, gold_rate)
        if rng is not None:
            gold_ids = list(conn.execute(_GOLD_IDS, {"labeler_id": labeler_id, "run_id": run_id}).scalars())
            if gold_ids:
                task_id = rng.choice(gold_ids)
                rows = conn.execute(_hot(False)["load"], {"task_id": task_id}).all()
    order = shuffled_order(task_id, labeler_id, len(rows))
    conn.execute(
        _NEW_ASSIGNMENT,
        {"task_id": task_id, "labeler_id": labeler_id, "order": order, "served_at": now, "status": "open"},
    )
    return _served(rows, order, now)


def _served(rows: Sequence[Sequence[Any]], order: list[int], served_at: dt.datetime) -> ServedTask:
    task_id, kind, _, run, _, guidelines, context, _ = rows[0]
    slots = [r[7] for r in rows]
    return ServedTask(
        task_id=task_id,
        run=run,
        kind=kind,
        context=context,
        samples=[slots[s] for s in order],
        served_at=served_at,
        guidelines=guidelines,
    )


# -- label --------------------------------------------------------------------------------------


def save_label(
    conn: Connection,
    *,
    token: str,
    task_id: int,
    best: int | None = None,
    tie: bool = False,
    ranking: list[int] | None = None,
    critique: str | None = None,
    correction: str | None = None,
    flag: str | None = None,
    rating: str | None = None,
    min_seconds: float = 0.0,
) -> SavedLabel:
    """`queue.save_label` for the labeler holding `token` (BadToken if none), same checks."""
    digest = _digest(token)
    postgres = _postgres(conn)
    row = conn.execute(_ANSWERED_LOCKED if postgres else _ANSWERED, {"digest": digest, "task_id": task_id}).first()
    if row is None:
        _check(conn.execute(_ME, {"digest": digest}).first(), digest)  # 401 before 404
        # Same answer for "no such task" and "not yours": labelers cannot probe others' tasks.
        raise NotFound(f"task {task_id} is not assigned to you")
    labeler_id = _check(row, digest)
    _, _, _, assignment_id, status, order, served_at, kind, redundancy, n_labels = row
    flag, critique, correction = check_answer(
        task_id=task_id,
        status=status,
        kind=kind,
        k=len(order),
        best=best,
        tie=tie,
        ranking=ranking,
        critique=critique,
        correction=correction,
        flag=flag,
        rating=rating,
    )
    now = utcnow()
    seconds = (now - served_at).total_seconds()
    values = {
        "task_id": task_id,
        "labeler_id": labeler_id,
        "assignment_id": assignment_id,
        "best": None if best is None else order[best],
        "tie": tie,
        "rating": rating,
        "ranking": None if ranking is None else [order[p] for p in ranking],
        "seconds": seconds,
        "critique": critique,
        "correction": correction,
        "flag": flag,
        "too_fast": seconds < min_seconds,
        "created_at": now,
    }
    try:
        key = conn.execute(_NEW_LABEL, values).inserted_primary_key
    except IntegrityError:
        # Not reached in normal use (the status, checked above under a lock or SQLite's single
        # writer, rules a second label out); the caller's transaction is over.
        raise Conflict(f"task {task_id} is already labeled") from None
    assert key is not None
    label_id = key[0]
    conn.execute(_CLOSE, {"a_id": assignment_id, "closed_at": now})
    # SQLite counted the labels under its one writer lock: touch the task only when this label
    # fills it. PostgreSQL's count may be stale (labels saved meanwhile), so it asks again.
    if postgres or n_labels + 1 >= redundancy:
        conn.execute(_MARK_FULL, {"task_id": task_id})
    return SavedLabel(
        id=int(label_id),
        task_id=task_id,
        best=best,
        tie=tie,
        rating=rating,
        seconds=seconds,
        too_fast=bool(values["too_fast"]),
        flag=flag,
        created_at=now,
    )


__all__ = ["BadToken", "SavedLabel", "ServedTask", "connection", "next_task", "save_label"]
