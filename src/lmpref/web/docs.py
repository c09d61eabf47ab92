"""API docs served from this machine: Swagger UI's files come from the `swagger-ui-py` package
(FastAPI's default /docs loads them from a CDN and runs an inline script, which both our CSP
and an offline labeling site refuse, so the page stayed blank).

/docs is a plain page with no inline script: `static/docs.js` starts Swagger UI on
/openapi.json. /redoc, which the README once named, leads to /docs (no ReDoc bundle is shipped).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

DOCS_PATH = "/docs"
ASSETS = "/docs-assets"
# Swagger UI sets element styles from script and its CSS embeds data: images; nothing else loosens.
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "frame-ancestors 'none'; form-action 'self'"
)


def swagger_ui_dir() -> Path | None:
    """Swagger UI's static files in the installed `swagger-ui-py`, found without importing it."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    static = Path(next(iter(spec.submodule_search_locations))) / "static"
    return static if (static / "swagger-ui-bundle.js").exists() else None


def mount_docs(app: FastAPI) -> None:
    assets = swagger_ui_dir()
    if assets is not None:
        app.mount(ASSETS, StaticFiles(directory=assets), name="docs-assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        return request.app.state.templates.TemplateResponse(request, "docs.html", {"available": assets is not None})

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> RedirectResponse:
        return RedirectResponse(DOCS_PATH, status_code=308)
