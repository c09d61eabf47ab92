"""An admin's review of single tasks: every answer given to a task, and which tasks of a run
people disagree on (Label Studio's per-task review, for best-of-K comparisons)."""

from __future__ import annotations

from collections import Counter, defaultdict

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from lmpref.store.enqueue import get_run
from lmpref.store.errors import NotFound
from lmpref.store.models import Label, Query, Task


def answer_key(label: Label) -> str | None:
    """What a label says, comparable across labelers (slots, not shuffled positions); None for a bare flag."""
    if label.tie:
        return "tie"
    if label.rating is not None:
        return label.rating
    if label.best is not None:
        return f"slot:{label.best}"
    return None


def task_answers(session: Session, *, task_id: int) -> tuple[Task, list[Label]]:
    task = session.scalar(
        select(Task).where(Task.id == task_id).options(selectinload(Task.query).selectinload(Query.samples))
    )
    if task is None:
        raise NotFound(f"no task {task_id}")
    labels = list(
        session.scalars(
            select(Label).where(Label.task_id == task_id).options(selectinload(Label.labeler)).order_by(Label.id)
        )
    )
    return task, labels


def majority(labels: list[Label]) -> str | None:
    """The most common answer if it is strictly the most common, else None."""
    counts = Counter(k for k in map(answer_key, labels) if k is not None).most_common(2)
    if not counts or (len(counts) == 2 and counts[0][1] == counts[1][1]):
        return None
    return counts[0][0]


def disputed_tasks(session: Session, *, run: str, limit: int = 50) -> list[tuple[int, int, int]]:
    """(task id, answers, distinct answers) of the run's tasks whose answers differ, most split first."""
    run_id = get_run(session, name=run).id
    answers: dict[int, list[str]] = defaultdict(list)
    q = select(Label).join(Task, Label.task_id == Task.id).where(Task.run_id == run_id)
    for label in session.scalars(q):
        key = answer_key(label)
        if key is not None:
            answers[label.task_id].append(key)
    split = [(task_id, len(keys), len(set(keys))) for task_id, keys in answers.items() if len(set(keys)) > 1]
    split.sort(key=lambda t: (-t[2], -t[1], t[0]))
    return split[:limit]
