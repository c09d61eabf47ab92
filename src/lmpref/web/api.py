"""The JSON API: everything the pages do, for scripts and programmatic labelers.

Auth is `Authorization: Bearer <token>`. Any labeler may label, skip and pull the Andon
cord; the rest is for admins. Store errors become 404 / 409 / 422 in `app.py`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from lmpref import store
from lmpref.records import PROGRAM_HEADER
from lmpref.store import Label, hot
from lmpref.web.schemas import (
    NO_NUL,
    AndonClear,
    AndonCreate,
    AndonPublic,
    AndonStatus,
    EnqueueCreate,
    EnqueuePublic,
    GuidelinesUpdate,
    LabelCreate,
    LabelerCreate,
    LabelerCreated,
    LabelerPublic,
    LabelPublic,
    ProgressPublic,
    QualityPublic,
    RunPublic,
    SkipPublic,
    TaskPublic,
)
from lmpref.web.security import ApiAdmin, ApiLabeler, BearerToken, SessionDep, unauthorized
from lmpref.web.views import andon_public, label_public, progress_public, quality_public, task_public

router = APIRouter(prefix="/api")
# Ids fit a 32-bit INTEGER column on every backend; larger ones are a 422, not a driver error.
Id = Annotated[int, Path(ge=1, le=2**31 - 1)]
RunName = Annotated[str, Path(max_length=128, pattern=NO_NUL)]
Filter = Annotated[str | None, Query(max_length=128, pattern=NO_NUL)]
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed request (e.g. a body that cannot be read)"},
    401: {"description": "Missing or invalid token"},
    403: {"description": "Admins only"},
    404: {"description": "Unknown run, task or event"},
    409: {"description": "Conflicts with stored state (e.g. already labeled)"},
    413: {"description": "Request body too large (`--max-body-bytes`)"},
    422: {"description": "Invalid input, including a NUL character or a lone surrogate anywhere"},
}


@router.get("/me", response_model=LabelerPublic, tags=["labeling"], responses=ERRORS)
def me(labeler: ApiLabeler) -> LabelerPublic:
    return LabelerPublic.model_validate(labeler, from_attributes=True)


# The two requests every labeler repeats run as one `async def` handler that does all its work
# (authentication included) in a single worker thread and transaction, and returns the JSON
# itself; their store work is SQLAlchemy Core (`store.hot`), not the ORM. A sync handler with
# sync dependencies crosses between the event loop and the thread pool four or five times a
# request, which under load cost more CPU than the queries did.


def _json(model: BaseModel, status_code: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


@router.get(
    "/tasks/next",
    response_model=TaskPublic,
    tags=["labeling"],
    responses={**ERRORS, 204: {"description": "Nothing to label now"}},
)
async def next_task(credentials: BearerToken, request: Request, run: Filter = None) -> Any:
    """Your open task, or a new one. Asking again returns the same task until you answer it."""
    sessions, lease, token = request.app.state.sessions, request.app.state.settings.lease, credentials.credentials

    def work() -> Response:
        try:
            with hot.connection(sessions) as conn:
                served = hot.next_task(conn, token=token, run=run, lease=lease)
        except hot.BadToken:
            raise unauthorized() from None
        # After the commit: the copied-span analysis does not hold the store's write lock.
        return Response(status_code=204) if served is None else _json(task_public(served))

    return await run_in_threadpool(work)


@router.post("/tasks/{task_id}/label", response_model=LabelPublic, status_code=201, tags=["labeling"], responses=ERRORS)
async def label_task(task_id: Id, body: LabelCreate, credentials: BearerToken, request: Request) -> Any:
    """Answer a task you were served; positions are those of `GET /api/tasks/next`. A program
    (`lmpref label-worker`, header `X-Lmpref-Labeler: program`) is not held to `--min-seconds`: that
    timer tells a person who clicked without reading, and a program labels in milliseconds."""
    program = request.headers.get(PROGRAM_HEADER, "").lower() == "program"
    min_seconds = 0.0 if program else request.app.state.settings.min_seconds
    sessions, token = request.app.state.sessions, credentials.credentials

    def work() -> Response:
        try:
            with hot.connection(sessions) as conn:
                label = hot.save_label(conn, token=token, task_id=task_id, min_seconds=min_seconds, **body.model_dump())
        except hot.BadToken:
            raise unauthorized() from None
        return _json(label_public(label), status_code=201)

    return await run_in_threadpool(work)


@router.post("/tasks/{task_id}/skip", response_model=SkipPublic, tags=["labeling"], responses=ERRORS)
def skip_task(task_id: Id, labeler: ApiLabeler, session: SessionDep) -> SkipPublic:
    assignment = store.skip_task(session, labeler=labeler, task_id=task_id)
    return SkipPublic(task_id=task_id, status=assignment.status)


@router.get("/labels", response_model=list[LabelPublic], tags=["labeling"], responses=ERRORS)
def my_labels(
    labeler: ApiLabeler, session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[LabelPublic]:
    """Your own labels, newest first (never anyone else's)."""
    q = select(Label).where(Label.labeler_id == labeler.id).order_by(Label.id.desc()).limit(limit)
    return [label_public(label) for label in session.scalars(q)]


@router.post("/labels/{label_id}/undo", response_model=SkipPublic, tags=["labeling"], responses=ERRORS)
def undo_label(label_id: Id, labeler: ApiLabeler, session: SessionDep) -> SkipPublic:
    """Take back one of your labels within a few minutes of giving it; the task is open for you again."""
    assignment = store.undo_label(session, labeler=labeler, label_id=label_id)
    return SkipPublic(task_id=assignment.task_id, status=assignment.status)


@router.post("/andon", response_model=AndonPublic, status_code=201, tags=["andon"], responses=ERRORS)
def pull_andon(body: AndonCreate, labeler: ApiLabeler, session: SessionDep) -> AndonPublic:
    """Stop training of `run` (or of every run); any labeler may pull, only admins clear."""
    event = store.pull_andon(session, reason=body.reason, run=body.run, labeler=labeler)
    return andon_public(event)


@router.get("/runs/{run}/andon", response_model=AndonStatus, tags=["andon"], responses=ERRORS)
def andon_status(run: RunName, labeler: ApiLabeler, session: SessionDep) -> AndonStatus:
    """What a training process polls between updates: it must not step while `stop` is true."""
    events = [andon_public(e) for e in store.open_andon_events(session, run=run)]
    return AndonStatus(run=run, stop=bool(events), events=events)


@router.get("/andon", response_model=list[AndonPublic], tags=["andon"], responses=ERRORS)
def recent_andon(admin: ApiAdmin, session: SessionDep) -> list[AndonPublic]:
    return [andon_public(e) for e in store.recent_andon_events(session)]


@router.post("/andon/{event_id}/clear", response_model=AndonPublic, tags=["andon"], responses=ERRORS)
def clear_andon(event_id: Id, body: AndonClear, admin: ApiAdmin, session: SessionDep) -> AndonPublic:
    return andon_public(store.clear_andon(session, event_id=event_id, labeler=admin, note=body.note))


@router.get("/runs", response_model=list[RunPublic], tags=["runs"], responses=ERRORS)
def runs(admin: ApiAdmin, session: SessionDep) -> list[RunPublic]:
    return [_run_public(session, r) for r in store.list_runs(session)]


def _run_public(session: SessionDep, r: store.Run) -> RunPublic:
    return RunPublic(
        name=r.name,
        gold_rate=r.gold_rate,
        batches=[b.name for b in r.batches],
        progress=progress_public(store.progress(session, run=r.name)),
        guidelines=r.guidelines,
    )


@router.get("/runs/{run}/progress", response_model=ProgressPublic, tags=["runs"], responses=ERRORS)
def run_progress(run: RunName, admin: ApiAdmin, session: SessionDep, batch: Filter = None) -> ProgressPublic:
    return progress_public(store.progress(session, run=run, batch=batch))


@router.post("/runs/{run}/enqueue", response_model=EnqueuePublic, tags=["runs"], responses=ERRORS)
def enqueue(run: RunName, body: EnqueueCreate, admin: ApiAdmin, session: SessionDep) -> EnqueuePublic:
    """Add sampling-JSONL records as tasks; re-sending a record id to the same batch is a no-op."""
    records = [r.model_dump(exclude_none=True) for r in body.records]
    result = store.enqueue(session, run=run, records=records, **body.model_dump(exclude={"records"}))
    return EnqueuePublic.model_validate(result, from_attributes=True)


@router.put("/runs/{run}/guidelines", response_model=RunPublic, tags=["runs"], responses=ERRORS)
def set_guidelines(run: RunName, body: GuidelinesUpdate, admin: ApiAdmin, session: SessionDep) -> RunPublic:
    """Replace the run's labeling guidelines; labelers see them beside every task of the run."""
    row = store.set_guidelines(session, run=run, text=body.text)
    return _run_public(session, row)


@router.get("/runs/{run}/labels", response_model=list[dict[str, Any]], tags=["runs"], responses=ERRORS)
def export_labels(
    run: RunName,
    admin: ApiAdmin,
    session: SessionDep,
    format: Annotated[str, Query(pattern=f"^({'|'.join(store.FORMATS)})$")] = "bestofk",
    batch: Filter = None,
    include_fast: bool = False,
    include_gold: bool = False,
) -> list[dict[str, Any]]:
    """The run's labels in an export format (see docs/labeling.md)."""
    return list(
        store.export_records(
            session, run=run, fmt=format, batch=batch, include_fast=include_fast, include_gold=include_gold
        )
    )


@router.get("/quality", response_model=QualityPublic, tags=["runs"], responses=ERRORS)
def quality(admin: ApiAdmin, session: SessionDep, run: Filter = None) -> QualityPublic:
    return quality_public(store.quality_report(session, run=run))


@router.get("/labelers", response_model=list[LabelerPublic], tags=["labelers"], responses=ERRORS)
def labelers(admin: ApiAdmin, session: SessionDep) -> list[LabelerPublic]:
    return [LabelerPublic.model_validate(x, from_attributes=True) for x in store.list_labelers(session)]


@router.post("/labelers", response_model=LabelerCreated, status_code=201, tags=["labelers"], responses=ERRORS)
def add_labeler(body: LabelerCreate, admin: ApiAdmin, session: SessionDep) -> LabelerCreated:
    labeler, token = store.create_labeler(session, name=body.name, role=body.role)
    return LabelerCreated(name=labeler.name, role=labeler.role, active=True, created_at=labeler.created_at, token=token)
