"""The Andon cord: anyone can stop training; only an admin clears it.

Contract for training processes (the online loop, issue #5): between PPO updates, call
`open_andon_events(session, run=NAME)` (or GET /api/runs/{run}/andon) and do not take another
step while it returns anything. A pull with no run stops every run.
"""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from lmpref.store.enqueue import get_run
from lmpref.store.errors import Conflict, Invalid, NotFound
from lmpref.store.models import AndonEvent, Labeler, utcnow

MAX_REASON = 2_000


def pull_andon(session: Session, *, reason: str, run: str | None = None, labeler: Labeler | None = None) -> AndonEvent:
    """Record a stop request for `run` (None: all runs). The reason is required."""
    reason = (reason or "").strip()
    if not reason:
        raise Invalid("say why training should stop")
    if len(reason) > MAX_REASON:
        raise Invalid(f"the reason is longer than {MAX_REASON} characters")
    run_id = get_run(session, name=run).id if run else None
    event = AndonEvent(run_id=run_id, reason=reason, pulled_by=labeler.id if labeler else None)
    session.add(event)
    session.flush()
    return event


def open_andon_events(session: Session, *, run: str | None = None) -> list[AndonEvent]:
    """Uncleared events that stop `run` (its own and global ones); every run's if run is None."""
    q = select(AndonEvent).where(AndonEvent.cleared_at.is_(None))
    if run is not None:
        q = q.where(or_(AndonEvent.run_id.is_(None), AndonEvent.run_id == get_run(session, name=run).id))
    return list(session.scalars(q.order_by(AndonEvent.id)))


def must_stop(session: Session, *, run: str) -> bool:
    return bool(open_andon_events(session, run=run))


def recent_andon_events(session: Session, *, limit: int = 50) -> list[AndonEvent]:
    return list(session.scalars(select(AndonEvent).order_by(AndonEvent.id.desc()).limit(limit)))


def clear_andon(session: Session, *, event_id: int, labeler: Labeler | None = None, note: str = "") -> AndonEvent:
    event = session.get(AndonEvent, event_id)
    if event is None:
        raise NotFound(f"no Andon event {event_id}")
    if event.cleared_at is not None:
        raise Conflict(f"Andon event {event_id} is already cleared")
    if len(note) > MAX_REASON:
        raise Invalid(f"the note is longer than {MAX_REASON} characters")
    event.cleared_at = utcnow()
    event.cleared_by = labeler.id if labeler else None
    event.clear_note = note.strip() or None
    return event
