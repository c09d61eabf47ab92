"""Server settings: plain data, built by `lmpref serve` or by tests."""

from __future__ import annotations

import datetime as dt
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
    lease_minutes: float = 15.0
    """A served task is held for its labeler this long; after that an unanswered assignment no longer
    counts against the task's redundancy and another labeler may take the slot (the first labeler's
    answer is still accepted if it comes)."""
    max_concurrency: int = 32
    """Requests served at once; more wait (without a thread). Keep it under the 40 worker
    threads and the 50 pooled connections, or requests can deadlock waiting for them."""

    workers: int = 1
    """Server processes (`lmpref serve --workers`); on SQLite they take turns writing through a lock file."""

    @property
    def lease(self) -> dt.timedelta:
        return dt.timedelta(minutes=self.lease_minutes)

    def __post_init__(self) -> None:
        if not self.session_hours > 0:
            raise ValueError(f"session_hours must be > 0, got {self.session_hours}")
        if not 1 <= self.workers <= 64:
            raise ValueError(f"workers must be 1-64, got {self.workers}")
        if not self.lease_minutes > 0:
            raise ValueError(f"lease_minutes must be > 0 (minutes a served task is held), got {self.lease_minutes}")
