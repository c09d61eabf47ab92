"""`create_app(settings)`: the labeling server. Nothing happens at import time."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from lmpref import store
from lmpref.web import api, pages, run_status
from lmpref.web.docs import DOCS_CSP, DOCS_PATH, mount_docs
from lmpref.web.security import LoginRequired, Signer
from lmpref.web.settings import Settings

HERE = Path(__file__).parent
STATUS = {store.NotFound: 404, store.Conflict: 409, store.Invalid: 422}
# No inline script or style anywhere, so a strict policy costs nothing and stops injected JS.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


class LimitBody:
    """413 for bodies over `limit` bytes, checked before anything parses them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.limit:
            return await JSONResponse({"detail": "request body too large"}, 413)(scope, receive, send)
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # chunked bodies carry no content-length
                raise HTTPException(413, "request body too large")
            return message

        await self.app(scope, limited, send)


BAD_TEXT = "text must not contain NUL characters (U+0000) or unpaired surrogates"


def _bad_text(value: Any) -> bool:
    """True if any string in a parsed JSON value (keys included) holds a NUL or a lone surrogate.

    PostgreSQL cannot store U+0000 in text (SQLite can), and a lone surrogate cannot be encoded
    as UTF-8 at all; both used to surface as 500s. `encode` fails exactly on lone surrogates.
    """
    if isinstance(value, str):
        if "\x00" in value:
            return True
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_bad_text(k) or _bad_text(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_bad_text(v) for v in value)
    return False


class _BadTextResponse:
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse({"detail": BAD_TEXT}, 422)(scope, receive, send)


class RejectBadText:
    """422 for a NUL or a lone surrogate anywhere a client can put text: path, query, body.

    One rule for every route and both stores, checked before any handler runs. Bodies are read
    whole (LimitBody, outside this, bounds them); JSON is parsed to see through `\\u0000` escapes,
    URL-encoded forms are percent-decoded, where a NUL can only be a field's content.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        reject = _BadTextResponse()  # built only when sent
        if "\x00" in scope["path"] or b"\x00" in unquote_to_bytes(scope.get("query_string", b"")):
            return await reject(scope, receive, send)
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        chunks, more = [], True
        try:
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    break
                chunks.append(message.get("body", b""))
                more = message.get("more_body", False)
        except HTTPException as err:  # LimitBody's 413 for a chunked body over the limit
            return await JSONResponse({"detail": err.detail}, err.status_code)(scope, receive, send)
        body = b"".join(chunks)
        content_type = dict(scope["headers"]).get(b"content-type", b"").split(b";")[0].strip().lower()
        if content_type == b"application/x-www-form-urlencoded":
            bad = b"\x00" in unquote_to_bytes(body)
        else:  # JSON (FastAPI also reads a body without a content type as JSON), or multipart
            try:
                bad = _bad_text(json.loads(body))
            except ValueError:  # not JSON: raw bytes are what gets parsed
                bad = b"\x00" in body
        if bad:
            return await reject(scope, receive, send)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class LimitConcurrency:
    """Admission control: at most `limit` requests past this point at once.

    A request runs its sync dependencies and handler in worker threads one after another,
    holding a pooled connection (and, on SQLite, the write lock) in between. If every worker
    thread were taken by requests waiting for that connection or lock, the holder could not
    get a thread to finish: a deadlock until timeouts. Fewer requests in flight than threads
    and connections rules that out; the rest wait here, in the event loop, costing nothing.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.slots = asyncio.Semaphore(limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(("/static/", "/docs-assets/")):
            return await self.app(scope, receive, send)
        async with self.slots:
            await self.app(scope, receive, send)


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response (plain ASGI: BaseHTTPMiddleware costs ms)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
        # The API docs page alone runs Swagger UI, which needs inline styles and data: images.
        self.docs_headers = [
            (k.lower().encode(), v.encode())
            for k, v in {**SECURITY_HEADERS, "Content-Security-Policy": DOCS_CSP}.items()
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = self.docs_headers if scope["path"] == DOCS_PATH else self.headers

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + headers
            await send(message)

        await self.app(scope, receive, with_headers)


def _allowed_methods(app: FastAPI, scope: Scope) -> str:
    """Every method some route serves at this path. Starlette's 405 names only the first route
    that matched the path, so a path split over routes (GET and POST /api/andon) answered
    OPTIONS with one of them. Each method is probed against the whole routing table."""
    allowed = [
        method
        for method in ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")
        if any(route.matches({**scope, "method": method})[0] == Match.FULL for route in app.router.routes)
    ]
    return ", ".join(allowed)


def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api/")


SETTINGS_ENV = "LMPREF_SERVE_SETTINGS"


def app_from_env() -> FastAPI:
    """The app of one `lmpref serve --workers N` process: settings come as JSON in $LMPREF_SERVE_SETTINGS."""
    return create_app(Settings(**json.loads(os.environ[SETTINGS_ENV])))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    sessions = store.open_store(settings.db_url, processes=settings.workers)  # runs migrations
    with store.transaction(sessions) as session:
        secret = settings.secret or store.server_secret(session)

    app = FastAPI(
        title="lmpref labeling server",
        version="1",
        description="Best-of-K comparisons for reward-model training (Ziegler et al. 2019). "
        "Authenticate with `Authorization: Bearer <token>` from `lmpref labelers add`.",
        docs_url=None,  # served by docs.mount_docs from local files (the default needs a CDN)
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.sessions = sessions
    app.state.signer = Signer(secret)
    app.state.templates = Jinja2Templates(directory=HERE / "templates")
    app.include_router(api.router)
    app.include_router(pages.router)
    app.include_router(run_status.router)  # the experiment's status page (issue #5)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    mount_docs(app)

    @app.exception_handler(store.StoreError)
    async def store_error(request: Request, err: store.StoreError) -> Response:
        status = next((code for cls, code in STATUS.items() if isinstance(err, cls)), 400)
        if _wants_html(request):
            return pages.render(request, "error.html", status_code=status, status=status, detail=str(err))
        return JSONResponse({"detail": str(err)}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> Response:
        if err.status_code == 405:  # Starlette names only the first route's methods; name them all
            err.headers = {**(err.headers or {}), "Allow": _allowed_methods(app, request.scope)}
        if _wants_html(request) and err.status_code >= 400:
            page = pages.render(
                request, "error.html", status_code=err.status_code, status=err.status_code, detail=err.detail
            )
            page.headers.update(err.headers or {})
            return page
        return JSONResponse({"detail": err.detail}, status_code=err.status_code, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> Response:
        if _wants_html(request):
            detail = "; ".join(f"{'.'.join(map(str, e['loc'][1:]))}: {e['msg']}" for e in err.errors())
            return pages.render(request, "error.html", status_code=422, status=422, detail=detail)
        return await request_validation_exception_handler(request, err)

    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, err: LoginRequired) -> Response:
        return RedirectResponse("/login", status_code=303)

    app.add_middleware(RejectBadText)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(LimitConcurrency, limit=settings.max_concurrency)
    app.add_middleware(LimitBody, limit=settings.max_body_bytes)
    return app
