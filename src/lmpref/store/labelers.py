"""Labelers and their tokens.

A token is `secrets.token_urlsafe(32)` (256 random bits), printed once. We store only its
SHA-256: a fast hash is enough because the token is random, not a password (no dictionary to
guess from), and it lets us look a token up by an index.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, joinedload

from lmpref.store.errors import Conflict, Invalid, NotFound
from lmpref.store.models import ROLES, Labeler, Meta, WebSession, utcnow

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
TOKEN_PREFIX = "lmp_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def create_labeler(session: Session, *, name: str, role: str = "labeler") -> tuple[Labeler, str]:
    """Add a labeler; returns it and its one-time token (not stored anywhere)."""
    if not NAME_RE.match(name):
        raise Invalid("a labeler name is 1-64 letters, digits, '_', '.' or '-'")
    if role not in ROLES:
        raise Invalid(f"role must be one of {', '.join(ROLES)}")
    if session.scalar(select(Labeler).where(Labeler.name == name)) is not None:
        raise Conflict(f"labeler {name!r} already exists")
    token = new_token()
    labeler = Labeler(name=name, role=role, token_hash=hash_token(token), active=True)
    session.add(labeler)
    session.flush()
    return labeler, token


def authenticate(session: Session, *, token: str) -> Labeler | None:
    """The active labeler holding `token`, or None."""
    if not token or len(token) > 200:
        return None
    digest = hash_token(token)
    labeler = session.scalar(select(Labeler).where(Labeler.token_hash == digest))
    # The index lookup already matched; compare_digest keeps the final check constant-time.
    if labeler is None or not hmac.compare_digest(labeler.token_hash, digest) or not labeler.active:
        return None
    return labeler


def get_labeler(session: Session, *, name: str) -> Labeler:
    labeler = session.scalar(select(Labeler).where(Labeler.name == name))
    if labeler is None:
        raise NotFound(f"no labeler named {name!r}")
    return labeler


def list_labelers(session: Session) -> list[Labeler]:
    return list(session.scalars(select(Labeler).order_by(Labeler.id)))


def rotate_token(session: Session, *, name: str) -> str:
    """Replace a labeler's token (the old one stops working at once)."""
    labeler = get_labeler(session, name=name)
    token = new_token()
    labeler.token_hash = hash_token(token)
    end_sessions(session, labeler=labeler)
    return token


def set_active(session: Session, *, name: str, active: bool) -> Labeler:
    labeler = get_labeler(session, name=name)
    labeler.active = active
    if not active:
        end_sessions(session, labeler=labeler)
    return labeler


def start_session(session: Session, *, labeler: Labeler, lifetime: dt.timedelta) -> str:
    """A new browser session for `labeler`; returns the cookie value (only its hash is stored).
    Expired sessions of every labeler are deleted on the way, so the table stays small."""
    now = utcnow()
    session.execute(delete(WebSession).where(WebSession.expires_at <= now))
    token = secrets.token_urlsafe(32)
    session.add(
        WebSession(token_hash=hash_token(token), labeler_id=labeler.id, created_at=now, expires_at=now + lifetime)
    )
    session.flush()
    return token


def session_labeler(session: Session, *, token: str) -> Labeler | None:
    """The active labeler of an unexpired, unrevoked browser session, or None."""
    if not token or len(token) > 200:
        return None
    # One statement: the session row with its labeler (checked on every page request).
    q = (
        select(WebSession)
        .where(WebSession.token_hash == hash_token(token))
        .options(joinedload(WebSession.labeler, innerjoin=True))
    )
    row = session.scalar(q)
    if row is None or row.expires_at <= utcnow() or not row.labeler.active:
        return None
    return row.labeler


def end_session(session: Session, *, token: str) -> None:
    """Logout: the cookie stops working everywhere it was copied to."""
    session.execute(delete(WebSession).where(WebSession.token_hash == hash_token(token)))


def end_sessions(session: Session, *, labeler: Labeler) -> None:
    session.execute(delete(WebSession).where(WebSession.labeler_id == labeler.id))


def server_secret(session: Session) -> str:
    """The key that signs session cookies, made on first use and shared by all workers."""
    row = session.get(Meta, "session_secret")
    if row is None:
        row = Meta(key="session_secret", value=secrets.token_urlsafe(48))
        session.add(row)
        session.flush()
    return row.value
