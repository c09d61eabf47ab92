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
    from lmpref.io import DataError
    from lmpref.io import read_jsonl as read_lines

    try:
        for _, record in read_lines(path):
            yield record
    except DataError as err:
        raise Invalid(str(err)) from None


def _kind(record: dict[str, Any]) -> str:
    return "accuracy" if record.get("kind") == "accuracy" else "compare"


def _check_record(record: Any, gold: bool) -> None:
    """Fail loudly on a malformed record rather than store half of it."""
    if not isinstance(record, dict):
        raise Invalid("a record must be a JSON object")
    rid = record.get("id")
    if not isinstance(rid, str) or not 0 < len(rid) <= 128:
        raise Invalid("record 'id' must be a string of 1-128 characters")
    responses = record.get("responses")
    if not isinstance(record.get("query"), str) or len(record["query"]) > MAX_TEXT:
        raise Invalid(f"record {rid}: 'query' must be a string of at most {MAX_TEXT} characters")
    if not isinstance(responses, list) or not 0 < len(responses) <= MAX_RESPONSES:
        raise Invalid(f"record {rid}: 'responses' must be a list of 1-{MAX_RESPONSES} strings")
    if not all(isinstance(r, str) and len(r) <= MAX_TEXT for r in responses):
        raise Invalid(f"record {rid}: every response must be a string of at most {MAX_TEXT} characters")
    k = len(responses)
    for key in ("valid", "response_ids", "policies"):
        if key in record and (not isinstance(record[key], list) or len(record[key]) != k):
            raise Invalid(f"record {rid}: '{key}' must have one entry per response ({k})")
    if "policies" not in record and not isinstance(record.get("policy", ""), str):
        raise Invalid(f"record {rid}: 'policy' must be a string")
    if _kind(record) == "accuracy":
        if k != 1:
            raise Invalid(f"record {rid}: an accuracy record has exactly one response, not {k}")
        if gold:
            raise Invalid(f"record {rid}: gold tasks are comparisons; an accuracy record cannot be gold")
    if gold:
        best = record.get("best")
        valid = record.get("valid", [True] * k)
        if not isinstance(best, int) or isinstance(best, bool) or not 0 <= best < k or not valid[best]:
            raise Invalid(f"record {rid}: a gold record needs 'best', the index of a valid response")


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
    (an accuracy record whose one response is invalid) is not enqueued. With `gold=True` each record carries `best` (an index into its `responses`) and
    becomes a gold task, which every labeler may get once, at the run's `gold_rate`.
    """
    if not 1 <= redundancy <= 100:
        raise Invalid("redundancy must be 1-100")
    run_row = ensure_run(session, name=run, gold_rate=gold_rate)
    batch_row = ensure_batch(session, run=run_row, name=batch)
    result = EnqueueResult(run=run, batch=batch)
    seen: set[str] = set()
    for record in records:
        _check_record(record, gold)
        rid = record["id"]
        exists = session.scalar(select(Query.id).where(Query.batch_id == batch_row.id, Query.source_id == rid))
        if exists is not None or rid in seen:
            result.existing += 1
            continue
        seen.add(rid)
        k = len(record["responses"])
        valid = [bool(v) for v in record.get("valid", [True] * k)]
        kind = _kind(record)
        if sum(valid) < (1 if kind == "accuracy" else 2):
            result.too_few_valid += 1
            continue
        policies = record.get("policies") or [record.get("policy", "")] * k
        response_ids = record.get("response_ids") or [None] * k
        extra = {key: v for key, v in record.items() if key not in MODELED_KEYS}
        query = Query(
            batch_id=batch_row.id,
            source_id=rid,
            text=record["query"],
            token_ids=record.get("query_ids"),
            extra=extra,
        )
        query.samples = [
            Sample(index=i, text=text, token_ids=response_ids[i], policy=str(policies[i]), valid=valid[i])
            for i, text in enumerate(record["responses"])
        ]
        task = Task(run_id=run_row.id, batch_id=batch_row.id, query=query, redundancy=redundancy, kind=kind)
        if gold:
            # Slots count valid responses only, so map the record's index to its slot.
            task.gold = GoldTask(best=sum(valid[: record["best"]]), note=str(record.get("note", "")))
        session.add(task)
        result.created += 1
    session.flush()
    return result


def valid_samples(query: Query) -> list[Sample]:
    """The samples a labeler sees, in slot order (slot i = i-th valid response)."""
    return [s for s in query.samples if s.valid]
