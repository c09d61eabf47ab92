"""Authentication for the two kinds of client.

- Scripts and label workers send `Authorization: Bearer <token>` to /api/*.
- Browsers trade the token for a signed session cookie (HttpOnly, SameSite=Strict) at
  /login; every form carries a CSRF token derived from that session, so a page on another
  site cannot post on a labeler's behalf even if SameSite were not honoured.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from lmpref.store import Labeler, authenticate, transaction

SESSION_COOKIE = "lmpref_session"
LOGIN_COOKIE = "lmpref_login"  # double-submit CSRF token of the login form (no session yet)


class Signer:
    """HMAC-SHA256 signatures for cookie values and CSRF tokens."""

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(("lmpref-session:" + secret).encode()).digest()

    def mac(self, message: str) -> str:
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def session_value(self, labeler: Labeler) -> str:
        # Part of the token hash is signed in, so rotating a token ends its browser sessions.
        payload = f"{labeler.id}.{labeler.token_hash[:16]}.{int(time.time())}.{secrets.token_hex(8)}"
        return f"{payload}.{self.mac(payload)}"

    def read_session(self, value: str, max_age_s: float) -> tuple[int, str, str] | None:
        """(labeler id, token-hash prefix, nonce) of a valid, unexpired cookie, else None."""
        parts = value.split(".")
        if len(parts) != 5:
            return None
        payload, mac = ".".join(parts[:4]), parts[4]
        if not hmac.compare_digest(mac, self.mac(payload)):
            return None
        labeler_id, hash_prefix, issued, nonce = parts[:4]
        if not labeler_id.isdigit() or not issued.isdigit() or time.time() - int(issued) > max_age_s:
            return None
        return int(labeler_id), hash_prefix, nonce

    def csrf_token(self, nonce: str) -> str:
        return self.mac("csrf:" + nonce)


def get_session(request: Request) -> Iterator[Session]:
    """One transaction per request, committed before the response is sent (scope below)."""
    with transaction(request.app.state.sessions) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
bearer = HTTPBearer(auto_error=False, description="A labeler token from `lmpref labelers add`.")


def api_labeler(
    session: SessionDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> Labeler:
    labeler = authenticate(session, token=credentials.credentials) if credentials else None
    if labeler is None:
        raise HTTPException(401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"})
    return labeler


def api_admin(labeler: Annotated[Labeler, Depends(api_labeler)]) -> Labeler:
    if labeler.role != "admin":
        raise HTTPException(403, "admins only")
    return labeler


ApiLabeler = Annotated[Labeler, Depends(api_labeler)]
ApiAdmin = Annotated[Labeler, Depends(api_admin)]


class LoginRequired(Exception):
    """A page needs a logged-in browser; the app answers with a redirect to /login."""


class PageUser:
    """The logged-in labeler of a page request, with its CSRF token."""

    def __init__(self, labeler: Labeler, csrf: str) -> None:
        self.labeler = labeler
        self.csrf = csrf

    def check_csrf(self, token: str) -> None:
        if not hmac.compare_digest(token.encode(), self.csrf.encode()):
            raise HTTPException(403, "the form's CSRF token is missing or stale; reload the page")


def page_user(request: Request, session: SessionDep) -> PageUser:
    signer: Signer = request.app.state.signer
    settings = request.app.state.settings
    found = signer.read_session(request.cookies.get(SESSION_COOKIE, ""), settings.session_hours * 3600)
    if found is None:
        raise LoginRequired
    labeler_id, hash_prefix, nonce = found
    labeler = session.get(Labeler, labeler_id)
    if labeler is None or not labeler.active or not hmac.compare_digest(labeler.token_hash[:16], hash_prefix):
        raise LoginRequired
    return PageUser(labeler, signer.csrf_token(nonce))


def page_admin(user: Annotated[PageUser, Depends(page_user)]) -> PageUser:
    if user.labeler.role != "admin":
        raise HTTPException(403, "admins only")
    return user


PageLabeler = Annotated[PageUser, Depends(page_user)]
PageAdmin = Annotated[PageUser, Depends(page_admin)]
