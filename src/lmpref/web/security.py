"""Authentication for the two kinds of client.

- Scripts and label workers send `Authorization: Bearer <token>` to /api/*.
- Browsers trade the token for a session cookie (HttpOnly, SameSite=Strict) at /login. The
  cookie is a random token whose hash is a row of `web_sessions`: logout, rotating the token or
  disabling the account deletes the row, and `expires_at` bounds it, so a copied cookie dies too.
  Every form carries a CSRF token derived from that session, so a page on another site cannot
  post on a labeler's behalf even if SameSite were not honoured.
- Every form POST must come from this origin (`same_origin`): cookies do not isolate ports, so
  a page on another port of the same host could plant the login form's double-submit cookie
  and log a victim in as the attacker (login CSRF); the Origin header says where a post came from.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from lmpref.store import Labeler, authenticate, session_labeler, transaction

SESSION_COOKIE = "lmpref_session"
LOGIN_COOKIE = "lmpref_login"  # double-submit CSRF token of the login form (no session yet)


def cookie_name(request: Request, name: str) -> str:
    """Behind HTTPS (`secure_cookies`) cookies get the `__Host-` prefix: the browser then accepts
    them only from this host over HTTPS, never set by a sibling domain or a plain-HTTP page."""
    return "__Host-" + name if request.app.state.settings.secure_cookies else name


class Signer:
    """HMAC-SHA256 of CSRF tokens, keyed by the server secret."""

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(("lmpref-session:" + secret).encode()).digest()

    def mac(self, message: str) -> str:
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def csrf_token(self, session_token: str) -> str:
        return self.mac("csrf:" + session_token)


def same_origin(request: Request) -> None:
    """403 for a form posted from another origin (another site, or another port of this host).

    Browsers send `Origin` on every POST (`Sec-Fetch-Site` too, in current ones); a client that
    sends neither is not a browser acting for a victim, and still needs the CSRF token.
    """
    here = f"{request.url.scheme}://{request.url.netloc}"
    origin = request.headers.get("origin")
    referer = request.headers.get("referer")
    fetch_site = request.headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        raise HTTPException(403, "cross-origin form posts are refused")
    if origin is not None:
        if origin != here:
            raise HTTPException(403, "cross-origin form posts are refused")
    elif referer is not None and referer != here and not referer.startswith(here + "/"):
        raise HTTPException(403, "cross-origin form posts are refused")


def get_session(request: Request) -> Iterator[Session]:
    """One transaction per request, committed before the response is sent (scope below)."""
    with transaction(request.app.state.sessions) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
bearer = HTTPBearer(auto_error=False, description="A labeler token from `lmpref labelers add`.")


def unauthorized() -> HTTPException:
    return HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})


def labeler_for(session: Session, token: str) -> Labeler:
    """The active labeler holding `token`, else 401."""
    labeler = authenticate(session, token=token)
    if labeler is None:
        raise unauthorized()
    return labeler


def api_labeler(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Labeler:
    if credentials is None:
        raise unauthorized()
    return labeler_for(session, credentials.credentials)


class _RequiredBearer(HTTPBearer):
    """`HTTPBearer` that answers a request without a Bearer token with our 401 itself, so the
    hot routes take the token in one dependency, not two (each level of FastAPI's dependency
    solving cost CPU on every request). Same security scheme in the OpenAPI document."""

    def make_not_authenticated_error(self) -> HTTPException:
        return unauthorized()


# The request's bearer token, not yet checked against the store (in the event loop: no thread,
# no transaction). A request without one is a 401 before its body is looked at.
bearer_required = _RequiredBearer(scheme_name="HTTPBearer", description=bearer.model.description)


def api_admin(labeler: Annotated[Labeler, Depends(api_labeler)]) -> Labeler:
    if labeler.role != "admin":
        raise HTTPException(403, "admins only")
    return labeler


ApiLabeler = Annotated[Labeler, Depends(api_labeler)]
BearerToken = Annotated[HTTPAuthorizationCredentials, Depends(bearer_required)]
ApiAdmin = Annotated[Labeler, Depends(api_admin)]


class LoginRequired(Exception):
    """A page needs a logged-in browser; the app answers with a redirect to /login."""


class PageUser:
    """The logged-in labeler of a page request, with its CSRF token."""

    def __init__(self, labeler: Labeler, csrf: str, token: str) -> None:
        self.labeler = labeler
        self.csrf = csrf
        self.token = token  # the session cookie's value (logout ends it)

    def check_csrf(self, token: str) -> None:
        if not hmac.compare_digest(token.encode(), self.csrf.encode()):
            raise HTTPException(403, "the form's CSRF token is missing or stale; reload the page")


def page_user(request: Request, session: SessionDep) -> PageUser:
    token = request.cookies.get(cookie_name(request, SESSION_COOKIE), "")
    labeler = session_labeler(session, token=token)
    if labeler is None:
        raise LoginRequired
    if request.method == "POST":
        same_origin(request)
    return PageUser(labeler, request.app.state.signer.csrf_token(token), token)


def page_admin(user: Annotated[PageUser, Depends(page_user)]) -> PageUser:
    if user.labeler.role != "admin":
        raise HTTPException(403, "admins only")
    return user


PageLabeler = Annotated[PageUser, Depends(page_user)]
PageAdmin = Annotated[PageUser, Depends(page_admin)]
