"""Runs, batches and enqueueing sampling records as tasks.

A record becomes a comparison task (pick the best of its K >= 2 valid responses), or, when it
has `"kind": "accuracy"`, an accuracy-rating task of its single response. `kind` stays in
`Query.extra` with the record's other unmodeled keys (`reference`, `doc_id`, ...).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from lmpref.io import DataError
from lmpref.io import read_jsonl as read_lines
from lmpref.records import SampleRecord
from lmpref.store.errors import Invalid, NotFound
from lmpref.store.models import Batch, GoldTask, Query, Run, Sample, Task

MAX_RESPONSES = 16
MAX_TEXT = 100_000  # characters of a query or response; far above any task we run
# Keys of a sampling record that have their own columns; the rest go to Query.extra.
MODELED_KEYS = {"id", "query", "query_ids", "responses", "response_ids", "valid", "policy", "policies"}


@dataclass
class EnqueueResult:
    run: str
    batch: str
    created: int = 0
    existing: int = 0  # already enqueued (same record id in the same batch): skipped
    too_few_valid: int = 0  # fewer than 2 valid responses (1 for a rating): nothing to show


def get_run(session: Session, *, name: str) -> Run:
    run = session.scalar(select(Run).where(Run.name == name))
    if run is None:
        raise NotFound(f"no run named {name!r}")
    return run


MAX_GUIDELINES = 20_000  # characters


def set_guidelines(session: Session, *, run: str, text: str) -> Run:
    """Replace a run's labeling guidelines (blank text removes them)."""
    if len(text) > MAX_GUIDELINES:
        raise Invalid(f"guidelines are longer than {MAX_GUIDELINES} characters")
    row = get_run(session, name=run)
    row.guidelines = text.strip() or None
    return row


def ensure_run(session: Session, *, name: str, gold_rate: float | None = None) -> Run:
    if not name or len(name) > 128:
        raise Invalid("a run name is 1-128 characters")
    if gold_rate is not None and not 0.0 <= gold_rate < 1.0:
        raise Invalid("gold_rate must be in [0, 1)")
    run = session.scalar(select(Run).where(Run.name == name))
    if run is None:
        run = Run(name=name, gold_rate=gold_rate or 0.0)
        session.add(run)
        session.flush()
    elif gold_rate is not None:
        run.gold_rate = gold_rate
    return run


def list_runs(session: Session) -> list[Run]:
    return list(session.scalars(select(Run).order_by(Run.id)))


def ensure_batch(session: Session, *, run: Run, name: str) -> Batch:
    if not name or len(name) > 128:
        raise Invalid("a batch name is 1-128 characters")
    batch = session.scalar(select(Batch).where(Batch.run_id == run.id, Batch.name == name))
    if batch is None:
        batch = Batch(run_id=run.id, name=name)
        session.add(batch)
        session.flush()
    return batch


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Records of a sampling JSONL file; a malformed line is `Invalid`, naming the file and line
    (the reading itself is `lmpref.io.read_jsonl`, shared with the ML side; it imports no torch)."""
    try:
        for _, record in read_lines(path):
            yield record
    except DataError as err:
        raise Invalid(str(err)) from None


def _check_record(record: Any, gold: bool) -> SampleRecord:
    """The sampling schema (`lmpref.records.SampleRecord`) plus the store's own limits; fail loudly
    on a malformed record rather than store half of it."""
    try:
        rec = SampleRecord.from_json(record)
    except DataError as err:
        raise Invalid(str(err)) from None
    if len(rec.query) > MAX_TEXT:
        raise Invalid(f"record {rec.id}: 'query' must be a string of at most {MAX_TEXT} characters")
    if rec.k > MAX_RESPONSES:
        raise Invalid(f"record {rec.id}: 'responses' must be a list of 1-{MAX_RESPONSES} strings")
    if any(len(r) > MAX_TEXT for r in rec.responses):
        raise Invalid(f"record {rec.id}: every response must be a string of at most {MAX_TEXT} characters")
    if rec.kind == "accuracy" and gold:
        raise Invalid(f"record {rec.id}: gold tasks are comparisons; an accuracy record cannot be gold")
    if gold and (rec.best is None or not rec.is_valid(rec.best)):
        raise Invalid(f"record {rec.id}: a gold record needs 'best', the index of a valid response")
    return rec


def enqueue(
    session: Session,
    *,
    run: str,
    records: Iterable[dict[str, Any]],
    batch: str = "default",
    redundancy: int = 1,
    gold: bool = False,
    gold_rate: float | None = None,
) -> EnqueueResult:
    """Turn sampling-JSONL records into tasks; idempotent per (batch, record id).

    Only responses with `valid` true are ever shown; a comparison record with fewer than two
    (an accuracy record whose one response is invalid) is not enqueued. With `gold=True` each
    record carries `best` (an index into its `responses`) and becomes a gold task, which every
    labeler may get once, at the run's `gold_rate`.
    """
    if not 1 <= redundancy <= 100:
        raise Invalid("redundancy must be 1-100")
    run_row = ensure_run(session, name=run, gold_rate=gold_rate)
    batch_row = ensure_batch(session, run=run_row, name=batch)
    result = EnqueueResult(run=run, batch=batch)
    seen: set[str] = set()
    for record in records:
        rec = _check_record(record, gold)
        exists = session.scalar(select(Query.id).where(Query.batch_id == batch_row.id, Query.source_id == rec.id))
        if exists is not None or rec.id in seen:
            result.existing += 1
            continue
        seen.add(rec.id)
        valid = [rec.is_valid(i) for i in range(rec.k)]
        if sum(valid) < (1 if rec.kind == "accuracy" else 2):
            result.too_few_valid += 1
            continue
        response_ids = rec.response_ids or [None] * rec.k
        extra = {key: v for key, v in record.items() if key not in MODELED_KEYS}
        query = Query(
            batch_id=batch_row.id,
            source_id=rec.id,
            text=rec.query,
            token_ids=rec.query_ids,
            extra=extra,
        )
        query.samples = [
            Sample(index=i, text=text, token_ids=response_ids[i], policy=rec.policy_of(i), valid=valid[i])
            for i, text in enumerate(rec.responses)
        ]
        task = Task(run_id=run_row.id, batch_id=batch_row.id, query=query, redundancy=redundancy, kind=rec.kind)
        if gold:
            # Slots count valid responses only, so map the record's index to its slot.
            assert rec.best is not None
            task.gold = GoldTask(best=sum(valid[: rec.best]), note=str(rec.extra.get("note", "")))
        session.add(task)
        result.created += 1
    session.flush()
    return result


def valid_samples(query: Query) -> list[Sample]:
    """The samples a labeler sees, in slot order (slot i = i-th valid response)."""
    return [s for s in query.samples if s.valid]
