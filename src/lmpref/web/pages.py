"""Server-rendered pages: login, compare, admin. Forms post here and call the store.

Every POST checks the form's CSRF token before doing anything. Redirects after a POST
(303) so a reload never resubmits a label.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import re
import secrets
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, select

from lmpref import store
from lmpref.store import Label, Task
from lmpref.store.models import RATINGS, utcnow
from lmpref.web.copying import context_segments, segments
from lmpref.web.security import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    PageAdmin,
    PageLabeler,
    PageUser,
    SessionDep,
    cookie_name,
    same_origin,
)
from lmpref.web.views import andon_public, quality_public, task_public

router = APIRouter(include_in_schema=False)
Text = Annotated[str, Form(max_length=10_000)]
Id = Annotated[int, Path(ge=1, le=2**31 - 1)]
MESSAGES = {
    "andon": "Andon cord pulled: training will stop until an admin clears it.",
    "cleared": "Andon event cleared.",
    "guidelines": "Guidelines saved.",
    "disabled": "Account disabled: its token and browser sessions no longer work.",
    "enabled": "Account enabled.",
    "labeled": "Saved.",
    "skipped": "Skipped.",
    "undone": "Label undone: the task is back for you to answer again.",
}


def _message(text: str | None) -> dict[str, Any]:
    """A page's message when there is one; without, `render` picks the one named by ?msg=."""
    return {"message": text} if text else {}


def _run_name(session, run_id: int) -> str:
    run = session.get(store.Run, run_id)
    assert run is not None, run_id  # a task's run: a foreign key
    return run.name


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("message", MESSAGES.get(request.query_params.get("msg", "")))
    return request.app.state.templates.TemplateResponse(request, name, context, status_code=status_code)


def _cookie(request: Request, response: Response, key: str, value: str, max_age: int) -> None:
    secure = request.app.state.settings.secure_cookies
    key = cookie_name(request, key)
    response.set_cookie(key, value, max_age=max_age, httponly=True, samesite="strict", secure=secure, path="/")


def _drop_cookie(request: Request, response: Response, key: str) -> None:
    secure = request.app.state.settings.secure_cookies
    response.delete_cookie(cookie_name(request, key), path="/", secure=secure, httponly=True, samesite="strict")


def _local(path: str) -> str:
    """Only same-site paths, so a form cannot bounce a labeler to another site."""
    return path if path.startswith("/") and not path.startswith("//") and "\\" not in path else "/compare"


@router.get("/")
def home() -> RedirectResponse:
    return RedirectResponse("/compare", status_code=303)


@router.get("/login")
def login_page(request: Request) -> HTMLResponse:
    nonce = secrets.token_urlsafe(24)
    response = render(request, "login.html", csrf=nonce, error=None)
    _cookie(request, response, LOGIN_COOKIE, nonce, max_age=3600)
    return response


@router.post("/login")
def login(request: Request, session: SessionDep, token: Text, csrf: Text) -> Response:
    same_origin(request)  # the double-submit cookie alone can be planted from another port
    if not hmac.compare_digest(csrf.encode(), request.cookies.get(cookie_name(request, LOGIN_COOKIE), "").encode()):
        raise HTTPException(403, "the login form is stale; reload it")
    labeler = store.authenticate(session, token=token.strip())
    if labeler is None:
        nonce = secrets.token_urlsafe(24)
        response = render(request, "login.html", status_code=401, csrf=nonce, error="That token is not valid.")
        _cookie(request, response, LOGIN_COOKIE, nonce, max_age=3600)
        return response
    redirect = RedirectResponse("/admin" if labeler.role == "admin" else "/compare", status_code=303)
    hours = request.app.state.settings.session_hours
    value = store.start_session(session, labeler=labeler, lifetime=dt.timedelta(hours=hours))
    _cookie(request, redirect, SESSION_COOKIE, value, int(hours * 3600))
    _drop_cookie(request, redirect, LOGIN_COOKIE)
    return redirect


@router.post("/logout")
def logout(request: Request, user: PageLabeler, session: SessionDep, csrf: Text) -> RedirectResponse:
    user.check_csrf(csrf)
    store.end_session(session, token=user.token)  # a saved copy of the cookie dies with it
    response = RedirectResponse("/login", status_code=303)
    _drop_cookie(request, response, SESSION_COOKIE)
    return response


@router.get("/compare")
def compare(request: Request, user: PageLabeler, session: SessionDep, run: str | None = None) -> HTMLResponse:
    served = store.next_task(session, labeler=user.labeler, run=run or None, lease=request.app.state.settings.lease)
    mine = store.my_progress(session, labeler=user.labeler)
    done = mine.total
    last = session.scalar(select(Label).where(Label.labeler_id == user.labeler.id).order_by(Label.id.desc()).limit(1))
    undo = last if last is not None and store.can_undo(last) else None
    if request.query_params.get("msg") == "fast" and last is not None:
        fast = (
            f"Saved, but in {last.seconds:.0f} s: faster than the {request.app.state.settings.min_seconds:g} s "
            "minimum, so it is kept but will not count toward training. Take your time."
        )
    else:
        fast = None
    if served is None:
        share = store.my_share(session, labeler=user.labeler, run=run) if run else None
        return render(
            request,
            "empty.html",
            user=user,
            run=run,
            done=done,
            mine=mine,
            share=share,
            undo=undo,
            andon_run=run,
            **_message(fast),
        )
    task = task_public(served)
    samples = [(s, segments(s.text, s.copied_spans)) for s in task.samples]
    context = context_segments(task.context, [s.context_spans for s in task.samples])
    depth = store.progress(session, run=served.run).queue_depth
    share = store.my_share(session, labeler=user.labeler, run=served.run)
    elapsed = int((utcnow() - served.assignment.served_at).total_seconds())
    return render(
        request,
        "compare.html",
        user=user,
        task=task,
        samples=samples,
        context=context,
        done=done,
        depth=depth,
        run=run,
        elapsed=elapsed,
        andon_run=served.run,
        mine=mine,
        share=share,
        undo=undo,
        **_message(fast),
    )


@router.post("/compare/{task_id}")
def answer(
    task_id: Id,
    request: Request,
    user: PageLabeler,
    session: SessionDep,
    csrf: Text,
    action: Annotated[str, Form(pattern="^(choose|tie|skip|flag)$")] = "choose",
    best: Annotated[int | None, Form(ge=0, lt=16)] = None,
    rating: Annotated[str | None, Form(pattern=f"^({'|'.join(RATINGS)})$")] = None,
    critique: Text = "",
    correction: Text = "",
    flag: Text = "",
    run: Annotated[str, Form(max_length=128)] = "",
) -> RedirectResponse:
    user.check_csrf(csrf)
    too_fast = False
    if action == "skip":
        store.skip_task(session, labeler=user.labeler, task_id=task_id)
    else:
        too_fast = store.save_label(
            session,
            labeler=user.labeler,
            task_id=task_id,
            best=best if action == "choose" else None,
            tie=action == "tie",
            rating=rating if action == "choose" else None,
            critique=critique,
            correction=correction,
            flag=flag if action == "flag" or flag else None,
            min_seconds=request.app.state.settings.min_seconds,
        ).too_fast
    msg = "skipped" if action == "skip" else "fast" if too_fast else "labeled"
    query = {"msg": msg, "run": run} if run else {"msg": msg}
    return RedirectResponse("/compare?" + urlencode(query), status_code=303)


def _answer(label: Label) -> str:
    if label.tie:
        return "all equally good / bad"
    if label.rating:
        return label.rating
    if label.best is None:
        return "flag only"
    text = store.valid_samples(label.task.query)[label.best].text
    return "best: " + (text if len(text) <= 80 else text[:79] + "…")


@router.get("/history")
def history(request: Request, user: PageLabeler, session: SessionDep) -> HTMLResponse:
    """Your own labels, newest first; those within the undo window can be taken back."""
    labels = store.my_recent_labels(session, labeler=user.labeler, limit=100)
    now = utcnow()
    rows = [(label, run, _answer(label), store.can_undo(label, now=now)) for label, run in labels]
    mine = store.my_progress(session, labeler=user.labeler)
    window = int(store.UNDO_WINDOW.total_seconds() // 60)
    return render(request, "history.html", user=user, rows=rows, mine=mine, window=window)


@router.post("/history/{label_id}/undo")
def undo(label_id: Id, user: PageLabeler, session: SessionDep, csrf: Text) -> RedirectResponse:
    user.check_csrf(csrf)
    assignment = store.undo_label(session, labeler=user.labeler, label_id=label_id)
    # Back to the run of the task undone: unfiltered, /compare would show the labeler's oldest
    # open task, which may belong to another run.
    run = _run_name(session, assignment.task.run_id)
    return RedirectResponse("/compare?" + urlencode({"run": run, "msg": "undone"}), status_code=303)


@router.post("/andon")
def pull_andon(
    user: PageLabeler,
    session: SessionDep,
    csrf: Text,
    reason: Annotated[str, Form(max_length=2000)],
    run: Annotated[str, Form(max_length=128)] = "",
    back: Annotated[str, Form(max_length=500)] = "/compare",
) -> RedirectResponse:
    user.check_csrf(csrf)
    store.pull_andon(session, reason=reason, run=run or None, labeler=user.labeler)
    path = _local(back)
    return RedirectResponse(path + ("&" if "?" in path else "?") + "msg=andon", status_code=303)


@router.get("/admin")
def admin(request: Request, user: PageAdmin, session: SessionDep, run: str | None = None) -> HTMLResponse:
    report = quality_public(store.quality_report(session, run=run or None))
    events = [andon_public(e) for e in store.recent_andon_events(session)]
    open_events = [e for e in events if e.cleared_at is None]
    run_rows = store.list_runs(session)
    runs = [r.name for r in run_rows]
    selected = next((r for r in run_rows if r.name == run), None)
    flags = session.execute(
        select(Label.task_id, Label.flag, Label.created_at)
        .where(Label.flag.is_not(None))
        .order_by(Label.id.desc())
        .limit(20)
    ).all()
    fast = session.scalar(select(func.count(Label.id)).join(Task).where(Label.too_fast.is_(True)))
    critiques, disputed = [], []
    if selected is not None:
        disputed = store.disputed_tasks(
            session, run=selected.name
        )  # newest first, too-fast ones included: a critique is worth reading anyway
        critiques = list(store.export_records(session, run=selected.name, fmt="critiques", include_fast=True))[::-1][
            :50
        ]
    return render(
        request,
        "admin.html",
        user=user,
        report=report,
        events=events,
        open_events=open_events,
        runs=runs,
        run=run,
        andon_run=run,
        flags=flags,
        fast=fast,
        labelers=store.list_labelers(session),
        selected=selected,
        critiques=critiques,
        disputed=disputed,
        formats=store.FORMATS,
        min_seconds=request.app.state.settings.min_seconds,
    )


@router.get("/admin/tasks/{task_id}")
def task_review(request: Request, task_id: Id, user: PageAdmin, session: SessionDep) -> HTMLResponse:
    """Every answer to one task, samples in stored order; answers against the majority stand out."""
    task, labels = store.task_answers(session, task_id=task_id)
    samples = store.valid_samples(task.query)
    top = store.majority(labels)
    keys = {store.answer_key(label) for label in labels} - {None}
    rows = [(label, store.answer_key(label), _answer(label)) for label in labels]
    return render(
        request,
        "task.html",
        user=user,
        task=task,
        samples=samples,
        rows=rows,
        majority=top,
        disagreement=len(keys) > 1,
        run=_run_name(session, task.run_id),
    )


@router.get("/admin/export")
def export(
    user: PageAdmin,
    session: SessionDep,
    run: Annotated[str, Query(max_length=128)],
    format: Annotated[str, Query(pattern=f"^({'|'.join(store.FORMATS)})$")] = "bestofk",
    include_fast: bool = False,
) -> Response:
    """A run's labels as a JSONL download (what `lmpref export-labels` writes)."""
    rows = store.export_records(session, run=run, fmt=format, include_fast=include_fast)
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    filename = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{run}-{format}.jsonl")
    headers = {"Content-Disposition": f'attachment; filename="{filename}"', "Cache-Control": "no-store"}
    return Response(body, media_type="application/x-ndjson", headers=headers)


@router.post("/admin/guidelines")
def save_guidelines(
    run: Annotated[str, Form(max_length=128)],
    user: PageAdmin,
    session: SessionDep,
    csrf: Text,
    text: Annotated[str, Form(max_length=20_000)] = "",
) -> RedirectResponse:
    user.check_csrf(csrf)
    store.set_guidelines(session, run=run, text=text)
    return RedirectResponse("/admin?" + urlencode({"run": run, "msg": "guidelines"}), status_code=303)


Name = Annotated[str, Form(max_length=64)]


def _token_page(request: Request, user: PageUser, labeler: store.Labeler, token: str, what: str) -> HTMLResponse:
    """The one time a token is shown; never cached, never put in a URL."""
    page = render(
        request,
        "token.html",
        status_code=201 if what == "added" else 200,
        user=user,
        account=labeler.name,
        role=labeler.role,
        token=token,
        what=what,
    )
    page.headers["Cache-Control"] = "no-store"
    return page


@router.post("/admin/labelers")
def add_labeler(
    request: Request,
    user: PageAdmin,
    session: SessionDep,
    csrf: Text,
    name: Name,
    role: Annotated[str, Form(pattern="^(labeler|admin)$")] = "labeler",
) -> HTMLResponse:
    user.check_csrf(csrf)
    labeler, token = store.create_labeler(session, name=name, role=role)
    return _token_page(request, user, labeler, token, "added")


@router.post("/admin/labelers/rotate")
def rotate_token(request: Request, user: PageAdmin, session: SessionDep, csrf: Text, name: Name) -> HTMLResponse:
    user.check_csrf(csrf)
    token = store.rotate_token(session, name=name)  # also ends that account's browser sessions
    return _token_page(request, user, store.get_labeler(session, name=name), token, "rotated")


@router.post("/admin/labelers/active")
def set_active(
    user: PageAdmin,
    session: SessionDep,
    csrf: Text,
    name: Name,
    active: Annotated[bool, Form()],
) -> RedirectResponse:
    user.check_csrf(csrf)
    if not active and name == user.labeler.name:
        raise HTTPException(409, "you cannot disable your own account (another admin can)")
    store.set_active(session, name=name, active=active)
    return RedirectResponse("/admin?msg=" + ("enabled" if active else "disabled") + "#accounts", status_code=303)


@router.post("/admin/andon/{event_id}/clear")
def clear_andon(
    event_id: Id, user: PageAdmin, session: SessionDep, csrf: Text, note: Annotated[str, Form(max_length=2000)] = ""
) -> RedirectResponse:
    user.check_csrf(csrf)
    store.clear_andon(session, event_id=event_id, labeler=user.labeler, note=note)
    return RedirectResponse("/admin?msg=cleared", status_code=303)
