"""SQLAlchemy 2 models of the label store.

The tables follow the labeling flow of Ziegler et al. (2019), section 2: a run samples K
responses per query from some policy, people see them as one comparison task and pick the
best. Quality control (gold tasks, redundancy) and the Andon cord sit beside that.

The schema is created by the alembic migrations in `migrations/`, never by `create_all`;
`tests/store/test_migrations.py` checks the two agree.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, get_args

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ROLES = ("admin", "labeler")
# What a task asks: "compare" picks the best of K responses (the paper's main task); "accuracy"
# rates one summary as accurate or not (the paper's authors did this for 30 articles per dataset,
# Ziegler et al. 2019, section 4.2).
TASK_KINDS = ("compare", "accuracy")
Rating = Literal["accurate", "inaccurate", "unsure"]
RATINGS: tuple[str, ...] = get_args(Rating)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware in Python on every backend (SQLite drops the zone; we put UTC back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Meta(Base):
    """Key/value settings the server keeps with its data (e.g. the cookie-signing secret)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Labeler(Base):
    __tablename__ = "labelers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))  # one of ROLES
    # SHA-256 of the token; the token itself is printed once and never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class WebSession(Base):
    """A browser login. The cookie holds a random token; only its SHA-256 is stored, so a
    stolen database does not log anyone in. Deleting the row (logout, token rotation,
    disabling the account) ends the session at once; `expires_at` bounds it regardless."""

    __tablename__ = "web_sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime]
    labeler: Mapped[Labeler] = relationship()


class Run(Base):
    """One experiment (e.g. `sentiment-online`); labels are always read back per run."""

    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    # Fraction of served tasks that are gold tasks (quality control).
    gold_rate: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # What the admin tells labelers about this run (shown beside every task; plain text).
    guidelines: Mapped[str | None] = mapped_column(Text)
    batches: Mapped[list[Batch]] = relationship(back_populates="run", order_by="Batch.id")


class Batch(Base):
    """A round of the experiment loop: one enqueue of samples from one policy version."""

    __tablename__ = "batches"
    __table_args__ = (UniqueConstraint("run_id", "name"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    run: Mapped[Run] = relationship(back_populates="batches")


class Query(Base):
    """One sampling-JSONL record: the context shown to labelers."""

    __tablename__ = "queries"
    # Re-enqueueing the same record id into the same batch is a no-op (crash safety).
    __table_args__ = (UniqueConstraint("batch_id", "source_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), index=True)
    source_id: Mapped[str] = mapped_column(String(128))  # the record's "id"
    text: Mapped[str] = mapped_column(Text)
    token_ids: Mapped[list[Any] | None] = mapped_column(JSON)
    # Keys of the record we do not model (seed, reference, kind, ...), kept for export.
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    samples: Mapped[list[Sample]] = relationship(back_populates="query", order_by="Sample.index")
    batch: Mapped[Batch] = relationship()


class Sample(Base):
    """One response to a query, with the policy version that wrote it."""

    __tablename__ = "samples"
    __table_args__ = (UniqueConstraint("query_id", "index"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    query_id: Mapped[int] = mapped_column(ForeignKey("queries.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)  # position in the record's "responses"
    text: Mapped[str] = mapped_column(Text)
    token_ids: Mapped[list[Any] | None] = mapped_column(JSON)
    policy: Mapped[str] = mapped_column(String(256))
    # False when sampling could not cut the response (no "." in the window): never shown.
    valid: Mapped[bool] = mapped_column(Boolean)
    query: Mapped[Query] = relationship(back_populates="samples")


class Task(Base):
    """The query with its valid samples, in `Sample.index` order ("slots"): a comparison of
    K >= 2 of them, or (kind "accuracy") a rating of exactly one."""

    __tablename__ = "tasks"
    # The next-task query walks this from the run's first unfinished task (migration 0005).
    __table_args__ = (Index("ix_tasks_queue", "complete", "run_id", "id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), index=True)
    query_id: Mapped[int] = mapped_column(ForeignKey("queries.id"), unique=True)
    redundancy: Mapped[int] = mapped_column(Integer, default=1)  # labels wanted
    kind: Mapped[str] = mapped_column(String(16), default="compare", server_default="compare")  # TASK_KINDS
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # True once the task has `redundancy` labels (set by save_label, cleared by undo_label): a
    # hint that lets the next-task query skip finished tasks, never the test of availability.
    complete: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    query: Mapped[Query] = relationship()
    gold: Mapped[GoldTask | None] = relationship(back_populates="task")


class GoldTask(Base):
    """A task with a known answer, mixed into the queue at the run's gold rate."""

    __tablename__ = "gold_tasks"
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), primary_key=True)
    best: Mapped[int] = mapped_column(Integer)  # slot of the right answer
    note: Mapped[str] = mapped_column(Text, default="")
    task: Mapped[Task] = relationship(back_populates="gold")


class Assignment(Base):
    """A task served to one labeler, with the shuffled order they see it in."""

    __tablename__ = "assignments"
    # A labeler sees a task at most once; this also makes concurrent "next" calls safe.
    __table_args__ = (
        UniqueConstraint("task_id", "labeler_id"),
        Index("ix_assignments_labeler_status", "labeler_id", "status"),  # a labeler's open task
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), index=True)
    order: Mapped[list[Any]] = mapped_column(JSON)  # order[position] = slot
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | done | skipped
    served_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[dt.datetime | None] = mapped_column()
    task: Mapped[Task] = relationship()


class Label(Base):
    __tablename__ = "labels"
    # Stored exactly once: a double click or a replayed request hits these constraints.
    __table_args__ = (UniqueConstraint("task_id", "labeler_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id"), index=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"), unique=True)
    best: Mapped[int | None] = mapped_column(Integer)  # slot; None for a tie or a bare flag
    tie: Mapped[bool] = mapped_column(Boolean, default=False)
    rating: Mapped[str | None] = mapped_column(String(16))  # RATINGS; accuracy tasks only
    ranking: Mapped[list[Any] | None] = mapped_column(JSON)  # slots, best to worst
    seconds: Mapped[float] = mapped_column(Float)  # served -> submitted
    critique: Mapped[str | None] = mapped_column(Text)  # on an accuracy task: the rating's note
    correction: Mapped[str | None] = mapped_column(Text)
    flag: Mapped[str | None] = mapped_column(Text)  # labeler's reason for flagging the task
    too_fast: Mapped[bool] = mapped_column(Boolean, default=False)  # under the minimum time
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    task: Mapped[Task] = relationship()
    labeler: Mapped[Labeler] = relationship()
    assignment: Mapped[Assignment] = relationship()


class AndonEvent(Base):
    """A "stop training" pull. Open while `cleared_at` is None; training must not step."""

    __tablename__ = "andon_events"
    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), index=True)  # None: all runs
    reason: Mapped[str] = mapped_column(Text)
    pulled_by: Mapped[int | None] = mapped_column(ForeignKey("labelers.id"))
    pulled_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    cleared_at: Mapped[dt.datetime | None] = mapped_column()
    cleared_by: Mapped[int | None] = mapped_column(ForeignKey("labelers.id"))
    clear_note: Mapped[str | None] = mapped_column(Text)
    run: Mapped[Run | None] = relationship()
    puller: Mapped[Labeler | None] = relationship(foreign_keys=[pulled_by])
    clearer: Mapped[Labeler | None] = relationship(foreign_keys=[cleared_by])
