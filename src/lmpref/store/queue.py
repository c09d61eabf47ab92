"""Serving tasks to labelers and saving their labels.

Positions vs slots: a task's samples have a canonical order (slots, see
`enqueue.valid_samples`); each labeler sees them shuffled. `Assignment.order[position]` is the
slot shown at `position`. Labelers answer in positions; the store keeps slots.
"""

from __future__ import annotations

import datetime as dt
import functools
import random
from dataclasses import dataclass

from sqlalchemy import Integer, String, bindparam, exists, false, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from lmpref.store.enqueue import get_run, valid_samples
from lmpref.store.errors import Conflict, Invalid, NotFound
from lmpref.store.models import (
    RATINGS,
    Assignment,
    GoldTask,
    Label,
    Labeler,
    Query,
    Run,
    Sample,
    Task,
    UTCDateTime,
    utcnow,
)

# An open assignment stops counting against a task's redundancy after this long, so a task
# abandoned in a closed tab goes back to the queue.
LEASE = dt.timedelta(minutes=15)
MAX_NOTE = 10_000  # characters of a critique, correction or flag reason


@dataclass
class Served:
    """A task as one labeler sees it."""

    assignment: Assignment
    task: Task
    run: str
    samples: list[Sample]  # in display order (position 0 first)
    guidelines: str | None = None  # the run's, for the labeler


# The statements of `next_task` are built once, with bound parameters, and reused: building
# SQLAlchemy expressions cost about as much CPU per call as running them.
_P_LABELER, _P_TASK = bindparam("labeler_id", type_=Integer()), bindparam("task_id", type_=Integer())
_P_CUTOFF, _P_RUN = bindparam("cutoff", type_=UTCDateTime()), bindparam("run", type_=String())


def _available():  # noqa: ANN202
    """Filter: normal tasks the labeler (`:labeler_id`) has not seen and that still need labels
    (an open assignment served after `:cutoff`, within its lease, holds a slot)."""
    n_labels = select(func.count(Label.id)).where(Label.task_id == Task.id).scalar_subquery()
    n_open = (
        select(func.count(Assignment.id))
        .where(Assignment.task_id == Task.id, Assignment.status == "open", Assignment.served_at > _P_CUTOFF)
        .scalar_subquery()
    )
    seen = exists().where(Assignment.task_id == Task.id, Assignment.labeler_id == _P_LABELER)
    is_gold = exists().where(GoldTask.task_id == Task.id)
    return (Task.complete == false(), ~seen, ~is_gold, n_labels + n_open < Task.redundancy)


@functools.cache
def _statements(in_run: bool, lock: bool | None, recheck: bool):
    """(open assignment, candidate task, task loader) for `next_task`. `lock`: None, or the
    candidate is taken FOR UPDATE (SKIP LOCKED if True); `recheck`: the loader re-applies
    `_available` (under the candidate's lock, in a fresh statement)."""
    run_filter = (Run.name == _P_RUN,) if in_run else ()
    current = (
        select(Assignment)
        .join(Task, Task.id == Assignment.task_id)
        .join(Run, Run.id == Task.run_id)
        .where(Assignment.labeler_id == _P_LABELER, Assignment.status == "open", *run_filter)
        .order_by(Assignment.id)
        .limit(1)
    )
    candidate = (
        select(Task.id, Task.run_id, Run.gold_rate)
        .join(Run, Run.id == Task.run_id)
        .where(*_available(), *run_filter)
        .order_by(Task.run_id, Task.id)
        .limit(1)
    )
    if lock is not None:
        # FOR NO KEY UPDATE: excludes other pickers of the task, yet not the foreign-key checks
        # of labels being saved on it meanwhile (FOR UPDATE would make those wait).
        candidate = candidate.with_for_update(of=Task, skip_locked=lock, key_share=True)
    load = (
        select(Task, Run)
        .join(Run, Run.id == Task.run_id)
        .where(Task.id == _P_TASK, *(_available() if recheck else ()))
        .options(joinedload(Task.query, innerjoin=True).joinedload(Query.samples))
    )
    return current, candidate, load


def _load(session: Session, task_id: int, stmt=None, **params) -> tuple[Task, Run] | None:
    """The task with its query, samples and run in one statement (None if `stmt`'s filter excludes it)."""
    stmt = stmt if stmt is not None else _statements(False, None, False)[2]
    row = session.execute(stmt, {"task_id": task_id, **params}).unique().first()
    return None if row is None else (row[0], row[1])


def _loaded(session: Session, task_id: int) -> tuple[Task, Run]:
    """`_load` of a task that exists (no filter)."""
    loaded = _load(session, task_id)
    assert loaded is not None, task_id
    return loaded


def _served(assignment: Assignment, task: Task, run: Run) -> Served:
    slots = valid_samples(task.query)
    return Served(
        assignment=assignment,
        task=task,
        run=run.name,
        samples=[slots[s] for s in assignment.order],
        guidelines=run.guidelines,
    )


def next_task(
    session: Session, *, labeler: Labeler, run: str | None = None, lease: dt.timedelta = LEASE
) -> Served | None:
    """The labeler's open task, else a new one (oldest run, then oldest task first, gold mixed
    in), else None.

    Concurrency. SQLite: BEGIN IMMEDIATE (and a lock per process, see `db.transaction`) makes
    every call run alone. PostgreSQL: we lock the labeler row, so one labeler's double click
    returns the same task, then take the first free task with `FOR UPDATE SKIP LOCKED`, so
    labelers choosing at once take different tasks instead of queueing on one lock. Whoever
    holds a task's lock re-checks in a fresh statement that it still needs labels (a choice
    made on an older snapshot may be stale), so two labelers never take its last free slot.
    Statements per call (counted in tests/web/test_web_query_counts.py): 2 for an open task,
    4 for a new one, plus the labeler lock on PostgreSQL.
    """
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres:
        session.execute(select(Labeler.id).where(Labeler.id == labeler.id).with_for_update(key_share=True))
    now = utcnow()
    params = {"labeler_id": labeler.id, "cutoff": now - lease, **({"run": run} if run else {})}
    current_q = _statements(bool(run), None, False)[0]
    current = session.scalars(current_q, {k: v for k, v in params.items() if k != "cutoff"}).first()
    if current is not None:
        task, run_row = _loaded(session, current.task_id)
        return _served(current, task, run_row)

    # PostgreSQL: first skip tasks others hold; if that finds none, wait for them, so "nothing to
    # label" is never an artefact of a lock held for a few milliseconds.
    for lock in (True, False) if postgres else (None,):
        _, candidate_q, load_q = _statements(bool(run), lock, postgres)
        for _ in range(100):  # each miss is a task another labeler just filled
            row = session.execute(candidate_q, params).first()
            if row is None:
                break
            # On PostgreSQL the task is locked by now: a fresh statement sees every assignment made.
            load_params = {"labeler_id": labeler.id, "cutoff": params["cutoff"]} if postgres else {}
            loaded = _load(session, row.id, load_q, **load_params)
            if loaded is not None:
                return _assign(session, labeler, *loaded, gold_rate=row.gold_rate, now=now)
    if run:
        get_run(session, name=run)  # an unknown run is a 404, not "nothing to label"
    return None


def gold_draw(labeler_id: int, n_seen: int, gold_rate: float) -> random.Random | None:
    """Whether the labeler's next task (they were served `n_seen` of the run) is a gold one: the
    generator that picks it if so, else None. Seeded by (labeler, count) so the mix is
    reproducible yet not guessable from the page."""
    rng = random.Random(f"gold:{labeler_id}:{n_seen}")
    return rng if rng.random() < gold_rate else None


def shuffled_order(task_id: int, labeler_id: int, k: int) -> list[int]:
    """`Assignment.order` of a task with `k` slots for one labeler (order[position] = slot)."""
    order = list(range(k))
    random.Random(f"order:{task_id}:{labeler_id}").shuffle(order)
    return order


def _assign(
    session: Session, labeler: Labeler, task: Task, run_row: Run, *, gold_rate: float, now: dt.datetime
) -> Served:
    if gold_rate > 0:
        n_seen = session.scalar(
            select(func.count(Assignment.id))
            .join(Task)
            .where(Assignment.labeler_id == labeler.id, Task.run_id == run_row.id)
        )
        rng = gold_draw(labeler.id, n_seen or 0, gold_rate)
        if rng is not None:
            seen = exists().where(Assignment.task_id == Task.id, Assignment.labeler_id == labeler.id)
            gold_ids = list(session.scalars(select(Task.id).join(GoldTask).where(Task.run_id == run_row.id, ~seen)))
            if gold_ids:
                task, run_row = _loaded(session, rng.choice(sorted(gold_ids)))
    order = shuffled_order(task.id, labeler.id, len(valid_samples(task.query)))
    assignment = Assignment(task_id=task.id, labeler_id=labeler.id, order=order, served_at=now, status="open")
    assignment.task = task
    session.add(assignment)
    session.flush()
    return _served(assignment, task, run_row)


def _assignment(session: Session, *, labeler: Labeler, task_id: int) -> Assignment:
    # With its task (one statement). On PostgreSQL the row is locked, so two submissions of one
    # answer queue here and the second sees it done (SQLite runs writers one at a time anyway).
    q = (
        select(Assignment)
        .where(Assignment.task_id == task_id, Assignment.labeler_id == labeler.id)
        .options(joinedload(Assignment.task, innerjoin=True))
    )
    if session.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(of=Assignment)
    assignment = session.scalar(q)
    if assignment is None:
        # Same answer for "no such task" and "not yours": labelers cannot probe others' tasks.
        raise NotFound(f"task {task_id} is not assigned to you")
    return assignment


def _text(value: str | None, field: str) -> str | None:
    if value is None or not value.strip():
        return None
    if len(value) > MAX_NOTE:
        raise Invalid(f"{field} is longer than {MAX_NOTE} characters")
    return value


def check_answer(
    *,
    task_id: int,
    status: str,
    kind: str,
    k: int,
    best: int | None,
    tie: bool,
    ranking: list[int] | None,
    critique: str | None,
    correction: str | None,
    flag: str | None,
    rating: str | None,
) -> tuple[str | None, str | None, str | None]:
    """The checks of `save_label` on an answer to an assignment in `status` of a task of `kind`
    with `k` samples (Conflict or Invalid); returns (flag, critique, correction) normalised
    (blank is None). Shared with the Core path of the JSON API (`store.hot`)."""
    if status == "done":
        raise Conflict(f"task {task_id} is already labeled")
    if status == "skipped":
        raise Conflict(f"task {task_id} was skipped")
    flag = _text(flag, "flag")
    critique, correction = _text(critique, "critique"), _text(correction, "correction")
    if kind == "accuracy":
        if best is not None or tie or ranking is not None or correction is not None:
            raise Invalid("an accuracy task takes a rating, not best, tie, ranking or correction")
        if rating is None and flag is None:
            raise Invalid(f"give a rating ({', '.join(RATINGS)}) or a flag reason")
    elif rating is not None:
        raise Invalid("a comparison task takes best or tie, not a rating")
    if rating is not None and rating not in RATINGS:
        raise Invalid(f"rating must be one of {', '.join(RATINGS)}")
    if best is not None and tie:
        raise Invalid("give either best or tie, not both")
    if best is None and not tie and flag is None and rating is None:
        raise Invalid("give best, tie or a flag reason")
    if best is not None and not 0 <= best < k:
        raise Invalid(f"best must be a position 0-{k - 1}")
    if ranking is not None:
        if sorted(ranking) != list(range(k)):
            raise Invalid(f"ranking must list each position 0-{k - 1} once")
        if best is None or ranking[0] != best:
            raise Invalid("ranking must start with best")
    return flag, critique, correction


def save_label(
    session: Session,
    *,
    labeler: Labeler,
    task_id: int,
    best: int | None = None,
    tie: bool = False,
    ranking: list[int] | None = None,
    critique: str | None = None,
    correction: str | None = None,
    flag: str | None = None,
    rating: str | None = None,
    min_seconds: float = 0.0,
) -> Label:
    """Store a labeler's answer, given in display positions; exactly once per task and labeler.

    A comparison takes one of: `best` (the position chosen), `tie=True` (all equally good or
    bad; the reward loss skips these), or only `flag` (a reason the task is broken). An accuracy
    task takes a `rating` (one of RATINGS; `critique` is its note) or only a `flag`. A label
    faster than `min_seconds` is kept but marked `too_fast` and left out of exports by default.
    """
    assignment = _assignment(session, labeler=labeler, task_id=task_id)
    flag, critique, correction = check_answer(
        task_id=task_id,
        status=assignment.status,
        kind=assignment.task.kind,
        k=len(assignment.order),
        best=best,
        tie=tie,
        ranking=ranking,
        critique=critique,
        correction=correction,
        flag=flag,
        rating=rating,
    )
    now = utcnow()
    seconds = (now - assignment.served_at).total_seconds()
    label = Label(
        task_id=task_id,
        labeler_id=labeler.id,
        assignment_id=assignment.id,
        best=None if best is None else assignment.order[best],
        tie=tie,
        rating=rating,
        ranking=None if ranking is None else [assignment.order[p] for p in ranking],
        seconds=seconds,
        critique=critique,
        correction=correction,
        flag=flag,
        too_fast=seconds < min_seconds,
        created_at=now,
    )
    label.assignment = assignment
    session.add(label)
    assignment.status = "done"
    assignment.closed_at = now
    try:
        session.flush()
    except IntegrityError:
        # Not reached in normal use (the assignment's status, checked above under a lock or
        # SQLite's single writer, rules a second label out); the caller's transaction is over.
        raise Conflict(f"task {task_id} is already labeled") from None
    mark_complete(session, task_id, only_if_full=True)
    return label


def mark_complete(session: Session, task_id: int, *, only_if_full: bool = False) -> None:
    """Set `Task.complete` from the task's label count. `only_if_full` (after a new label): touch
    the row only when it fills the task, so labels of unfinished tasks take no row lock on it.
    Under concurrent labels on PostgreSQL the flag may stay false on a full task; that only
    costs the next-task query a few probes, since it re-checks the counts anyway."""
    full = select(func.count(Label.id)).where(Label.task_id == task_id).scalar_subquery() >= Task.redundancy
    q = update(Task).where(Task.id == task_id)
    q = q.where(Task.complete == false(), full).values(complete=True) if only_if_full else q.values(complete=full)
    session.execute(q.execution_options(synchronize_session=False))


def skip_task(session: Session, *, labeler: Labeler, task_id: int) -> Assignment:
    """Give the task back; this labeler will not see it again, others may."""
    assignment = _assignment(session, labeler=labeler, task_id=task_id)
    if assignment.status != "open":
        raise Conflict(f"task {task_id} is already {'labeled' if assignment.status == 'done' else 'skipped'}")
    assignment.status = "skipped"
    assignment.closed_at = utcnow()
    return assignment


@dataclass
class Progress:
    run: str
    batch: str | None
    tasks: int  # comparison and rating tasks, gold excluded
    gold_tasks: int
    labels: int  # every label on non-gold tasks: bare flags and too-fast ones included
    complete: int  # tasks with at least `redundancy` labels
    queue_depth: int  # labels still wanted
    # Of `labels`, those an export holds by default (an answer, not too fast): the count that
    # matches `export-labels` rows (bestofk, ratings), `labels` minus the next two.
    exportable: int = 0
    flag_only: int = 0  # bare flags: no answer, never exported
    too_fast: int = 0  # answers under the minimum time: exported only with --include-fast


def progress(session: Session, *, run: str, batch: str | None = None) -> Progress:
    """How far labeling of a run (or one of its batches) is; the experiment loop polls this."""
    run_row = get_run(session, name=run)
    answered = Label.best.is_not(None) | Label.tie | Label.rating.is_not(None)
    n_labels = (
        select(
            Label.task_id,
            func.count(Label.id).label("n"),
            func.count(Label.id).filter(~answered).label("flags"),
            func.count(Label.id).filter(answered, Label.too_fast.is_(True)).label("fast"),
        )
        .group_by(Label.task_id)
        .subquery()
    )
    is_gold = exists().where(GoldTask.task_id == Task.id)
    q = (
        select(
            Task.redundancy,
            func.coalesce(n_labels.c.n, 0),
            is_gold,
            func.coalesce(n_labels.c.flags, 0),
            func.coalesce(n_labels.c.fast, 0),
        )
        .outerjoin(n_labels, n_labels.c.task_id == Task.id)
        .where(Task.run_id == run_row.id)
    )
    if batch is not None:
        batch_id = next((b.id for b in run_row.batches if b.name == batch), None)
        if batch_id is None:
            raise NotFound(f"run {run!r} has no batch {batch!r}")
        q = q.where(Task.batch_id == batch_id)
    p = Progress(run=run, batch=batch, tasks=0, gold_tasks=0, labels=0, complete=0, queue_depth=0)
    for redundancy, n, gold, flags, fast in session.execute(q):
        if gold:
            p.gold_tasks += 1
            continue
        p.tasks += 1
        p.labels += n
        p.flag_only += flags
        p.too_fast += fast
        p.exportable += n - flags - fast
        p.complete += n >= redundancy
        p.queue_depth += max(0, redundancy - n)
    return p
