"""Server settings: plain data, built by `lmpref serve` or by tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmpref.store import default_url


@dataclass
class Settings:
    db_url: str = field(default_factory=default_url)
    """SQLAlchemy URL of the label store (default `$LMPREF_DB` or sqlite:///lmpref.db)."""
    secret: str | None = None
    """Key that signs session cookies; None: a random key kept in the store (survives restarts)."""
    min_seconds: float = 5.0
    """Labels given faster than this are marked too_fast: shown on the admin page, not exported."""
    session_hours: float = 12.0
    """How long a browser login lasts."""
    secure_cookies: bool = False
    """Mark cookies Secure; turn on when the server sits behind HTTPS."""
    max_body_bytes: int = 2_000_000
    """Larger request bodies get 413 before anything parses them."""
    max_concurrency: int = 32
    """Requests served at once; more wait (without a thread). Keep it under the 40 worker
    threads and the 50 pooled connections, or requests can deadlock waiting for them."""
