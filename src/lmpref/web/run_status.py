"""The experiment's run status: a page (`/runs/{run}/status`) and its JSON (`/api/runs/{run}/status`).

Mode, round, labels collected and pending (per batch), reward and KL curves, the latest samples
and the Andon history. The experiment loop publishes its part into the store
(`lmpref.store.experiment`), so this works when the server runs away from the training machine.
Any logged-in labeler may look: they are the people who should pull the cord.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from lmpref import store
from lmpref.store.experiment import read_status
from lmpref.web.api import ERRORS, RunName
from lmpref.web.pages import render
from lmpref.web.security import ApiLabeler, PageLabeler, SessionDep
from lmpref.web.views import andon_public

router = APIRouter()
CURVE_W, CURVE_H = 480, 120


def run_status(session: Session, run: str) -> dict[str, Any]:
    """Everything the page shows, as plain data (NotFound for an unknown run)."""
    run_row = store.get_run(session, name=run)
    events = [
        andon_public(e).model_dump(mode="json")
        for e in store.recent_andon_events(session, limit=200)
        if e.run_id in (None, run_row.id)
    ]
    return {
        "run": run,
        "experiment": read_status(session, run=run),
        "progress": asdict(store.progress(session, run=run)),
        "batches": [
            asdict(store.progress(session, run=run, batch=b.name)) for b in sorted(run_row.batches, key=lambda b: b.id)
        ],
        "stop": any(e["cleared_at"] is None for e in events),
        "andon": events,
    }


def polyline(points: list[list[float]], width: int = CURVE_W, height: int = CURVE_H) -> str:
    """[[x, y], ...] -> an SVG `points` attribute scaled into width x height (y grows upwards)."""
    if not points:
        return ""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = (width - 8) / ((x1 - x0) or 1)
    sy = (height - 8) / ((y1 - y0) or 1)
    return " ".join(f"{4 + (x - x0) * sx:.1f},{height - 4 - (y - y0) * sy:.1f}" for x, y in points)


@router.get("/api/runs/{run}/status", tags=["runs"], responses=ERRORS)
def run_status_api(run: RunName, labeler: ApiLabeler, session: SessionDep) -> dict[str, Any]:
    """The run's experiment status (null if no experiment published one), progress and Andon history."""
    return run_status(session, run)


@router.get("/runs/{run}/status", include_in_schema=False)
def run_status_page(request: Request, run: str, user: PageLabeler, session: SessionDep) -> HTMLResponse:
    status = run_status(session, run)
    curves = (status["experiment"] or {}).get("curves", {})
    plots = [
        {"name": name, "points": polyline(pts), "last": pts[-1] if pts else None, "width": CURVE_W, "height": CURVE_H}
        for name, pts in curves.items()
    ]
    return render(request, "run_status.html", user=user, andon_run=run, plots=plots, **status)
