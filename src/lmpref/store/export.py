"""Reading labels back, in the three formats the rest of the world uses.

- `bestofk`: what `lmpref train-reward` reads; one row per label. Ties keep `"tie": true`
  and `"best": -1` (the best-of-K loss skips them).
- `openai`: the schema of OpenAI's released labels (lm-human-preferences): token ids of the
  query and of exactly four samples, plus `best`. Other tasks are left out.
- `pairwise`: `{"prompt", "chosen", "rejected"}`, one row per (best, other) pair, as TRL's
  reward trainer and HF preference datasets expect.
- `ratings`: accuracy-rating labels, `{"id", "doc_id", "policy", "query", "response", "rating",
  "note", "labeler"}`, one row per label. The other formats leave rating tasks out and this one
  leaves comparisons out.
- `critiques`: every label with a critique, note or suggested correction, comparisons and
  ratings alike, `{"id", "task_id", "kind", "labeler", "query", "answer", "critique",
  "correction", "created_at"}` (`answer`: the chosen response's text, "tie", or the rating).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from lmpref.records import LabelRecord
from lmpref.store.enqueue import get_run, valid_samples
from lmpref.store.errors import Invalid, NotFound
from lmpref.store.models import Batch, GoldTask, Label, Query, Task

FORMATS = ("bestofk", "openai", "pairwise", "ratings", "critiques")


def labeled(
    session: Session,
    *,
    run: str,
    batch: str | None = None,
    include_fast: bool = False,
    include_gold: bool = False,
) -> Iterator[tuple[Label, Task]]:
    """Labels of a run in the order they were given, without bare flags.

    Too-fast labels and gold tasks are left out unless asked for: too-fast labels are the
    ones quality control distrusts, gold tasks are quality control's own.
    """
    run_id = get_run(session, name=run).id
    q = (
        select(Label, Task)
        .join(Task, Label.task_id == Task.id)
        .where(Task.run_id == run_id, Label.best.is_not(None) | Label.tie | Label.rating.is_not(None))
        .options(selectinload(Label.labeler), selectinload(Task.query).selectinload(Query.samples))
        .order_by(Label.id)
    )
    if batch is not None:
        batch_id = session.scalar(select(Batch.id).where(Batch.run_id == run_id, Batch.name == batch))
        if batch_id is None:
            raise NotFound(f"run {run!r} has no batch {batch!r}")
        q = q.where(Task.batch_id == batch_id)
    if not include_fast:
        q = q.where(Label.too_fast.is_(False))
    if not include_gold:
        q = q.where(~select(GoldTask.task_id).where(GoldTask.task_id == Task.id).exists())
    yield from ((label, task) for label, task in session.execute(q))


def bestofk_record(label: Label, task: Task) -> dict[str, Any]:
    """The label as lmpref's best-of-K label record (`lmpref.records.LabelRecord`), with the store's
    own fields (policies, batch, seconds, ranking, critique, correction) and the query's extras."""
    query = task.query
    samples = valid_samples(query)
    extra: dict[str, Any] = {
        "policies": [s.policy for s in samples],
        "batch": query.batch.name,
        "seconds": round(label.seconds, 3),
    }
    for key in ("ranking", "critique", "correction"):
        if getattr(label, key) is not None:
            extra[key] = getattr(label, key)
    for key, value in query.extra.items():
        extra.setdefault(key, value)  # e.g. "reference", "kind"
    record = LabelRecord(
        id=query.source_id,
        query=query.text,
        responses=[s.text for s in samples],
        best=-1 if label.tie or label.best is None else label.best,
        tie=label.tie,
        labeler=label.labeler.name,
        query_ids=query.token_ids,
        response_ids=[s.token_ids for s in samples],
        extra={key: v for key, v in extra.items() if key not in LabelRecord.KEYS},
    )
    return record.to_json()


def openai_record(label: Label, task: Task) -> dict[str, Any] | None:
    samples = valid_samples(task.query)
    ids = [s.token_ids for s in samples]
    if label.tie or len(samples) != 4 or task.query.token_ids is None or any(i is None for i in ids):
        return None
    return {"query": task.query.token_ids, **{f"sample{i}": ids[i] for i in range(4)}, "best": label.best}


def pairwise_records(label: Label, task: Task) -> list[dict[str, Any]]:
    if label.tie:
        return []
    texts = [s.text for s in valid_samples(task.query)]
    assert label.best is not None  # not a tie (above), and bare flags are not exported
    chosen = texts[label.best]
    return [
        {"prompt": task.query.text, "chosen": chosen, "rejected": other}
        for i, other in enumerate(texts)
        if i != label.best
    ]


def rating_record(label: Label, task: Task) -> dict[str, Any]:
    query = task.query
    (sample,) = valid_samples(query)
    return {
        "id": query.source_id,
        "doc_id": query.extra.get("doc_id"),
        "policy": sample.policy,
        "query": query.text,
        "response": sample.text,
        "rating": label.rating,
        "note": label.critique,
        "labeler": label.labeler.name,
    }


def critique_record(label: Label, task: Task) -> dict[str, Any] | None:
    if label.critique is None and label.correction is None:
        return None
    texts = [s.text for s in valid_samples(task.query)]
    if label.tie:
        answer = "tie"
    elif label.rating is not None:
        answer = label.rating
    else:
        assert label.best is not None
        answer = texts[label.best]
    return {
        "id": task.query.source_id,
        "task_id": task.id,
        "kind": task.kind,
        "labeler": label.labeler.name,
        "query": task.query.text,
        "answer": answer,
        "critique": label.critique,
        "correction": label.correction,
        "created_at": label.created_at.isoformat(),
    }


def export_records(session: Session, *, run: str, fmt: str = "bestofk", **filters: Any) -> Iterator[dict[str, Any]]:
    """Rows of `fmt` for the run's labels; `filters` go to `labeled` (batch, include_fast, include_gold)."""
    if fmt not in FORMATS:
        raise Invalid(f"format must be one of {', '.join(FORMATS)}")
    for label, task in labeled(session, run=run, **filters):
        if fmt == "critiques":
            record = critique_record(label, task)
            if record is not None:
                yield record
            continue
        if (fmt == "ratings") != (task.kind == "accuracy"):
            continue
        if fmt == "ratings":
            yield rating_record(label, task)
        elif fmt == "bestofk":
            yield bestofk_record(label, task)
        elif fmt == "openai":
            record = openai_record(label, task)
            if record is not None:
                yield record
        else:
            yield from pairwise_records(label, task)
