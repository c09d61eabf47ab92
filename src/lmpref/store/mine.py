"""A labeler's own view: what they did today and in all, their share of a run, their recent
labels, and undoing the last one within a short window (a slip of the key should not need an admin)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from lmpref.store.errors import Conflict, NotFound
from lmpref.store.models import Assignment, Label, Labeler, Query, Run, Task, utcnow
from lmpref.store.queue import mark_complete

UNDO_WINDOW = dt.timedelta(minutes=2)


@dataclass
class MyProgress:
    today: int  # labels given since 00:00 UTC (bare flags included: work done)
    total: int
    too_fast_today: int  # of today's, under the minimum time: kept but not exported
    skipped: int


def my_progress(session: Session, *, labeler: Labeler) -> MyProgress:
    midnight = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    mine = Label.labeler_id == labeler.id
    skipped = (
        select(func.count(Assignment.id))
        .where(Assignment.labeler_id == labeler.id, Assignment.status == "skipped")
        .scalar_subquery()
    )
    today, total, fast, skipped = session.execute(
        select(
            func.count(Label.id).filter(Label.created_at >= midnight),
            func.count(Label.id),
            func.count(Label.id).filter(Label.created_at >= midnight, Label.too_fast.is_(True)),
            skipped,
        ).where(mine)
    ).one()
    return MyProgress(today=today, total=total, too_fast_today=fast, skipped=skipped or 0)


@dataclass
class MyShare:
    """A labeler's part of one run: the tasks served to them and the labels they gave."""

    run: str
    assigned: int  # tasks of the run served to this labeler: answered, skipped or still open
    answered: int  # of those, labeled (bare flags included)
    skipped: int
    run_labels: int  # labels of the run from everyone, this labeler's included

    @property
    def percent(self) -> int:
        """This labeler's labels as a whole-number percentage of the run's."""
        return round(100 * self.answered / self.run_labels) if self.run_labels else 0


def my_share(session: Session, *, labeler: Labeler, run: str) -> MyShare:
    """The labeler's assigned share of `run` (one statement; an unknown run is all zeros)."""
    run_labels = (
        select(func.count(Label.id))
        .join(Task, Task.id == Label.task_id)
        .join(Run, Run.id == Task.run_id)
        .where(Run.name == run)
        .scalar_subquery()
    )
    assigned, answered, skipped, total = session.execute(
        select(
            func.count(Assignment.id),
            func.count(Assignment.id).filter(Assignment.status == "done"),
            func.count(Assignment.id).filter(Assignment.status == "skipped"),
            run_labels,
        )
        .select_from(Assignment)
        .join(Task, Task.id == Assignment.task_id)
        .join(Run, Run.id == Task.run_id)
        .where(Assignment.labeler_id == labeler.id, Run.name == run)
    ).one()
    return MyShare(run=run, assigned=assigned, answered=answered, skipped=skipped, run_labels=total or 0)


def my_recent_labels(session: Session, *, labeler: Labeler, limit: int = 50) -> list[tuple[Label, str]]:
    """(label, run name) of the labeler's newest labels first, samples loaded."""
    q = (
        select(Label, Run.name)
        .join(Task, Label.task_id == Task.id)
        .join(Run, Task.run_id == Run.id)
        .where(Label.labeler_id == labeler.id)
        .options(selectinload(Label.task).selectinload(Task.query).selectinload(Query.samples))
        .order_by(Label.id.desc())
        .limit(limit)
    )
    return [(label, run) for label, run in session.execute(q)]


def can_undo(label: Label, *, now: dt.datetime | None = None, window: dt.timedelta = UNDO_WINDOW) -> bool:
    return (now or utcnow()) - label.created_at <= window


def undo_label(session: Session, *, labeler: Labeler, label_id: int, window: dt.timedelta = UNDO_WINDOW) -> Assignment:
    """Take back one of your own labels given within `window`; the task is yours to answer
    again (it comes back first). Older labels are part of the record and stay."""
    label = session.get(Label, label_id)
    if label is None or label.labeler_id != labeler.id:
        raise NotFound(f"you have no label {label_id}")  # same answer for "not yours"
    if not can_undo(label, window=window):
        raise Conflict(
            f"label {label_id} is older than {int(window.total_seconds() // 60)} minutes; it can no longer be undone"
        )
    assignment = label.assignment
    session.delete(label)
    assignment.status = "open"
    assignment.closed_at = None
    session.flush()
    mark_complete(session, assignment.task_id)
    return assignment
