"""The experiment loop's status, kept in the store so the web app can show it without reading
the training machine's files (the labeling server may run elsewhere).

One JSON document per run in the `meta` table, written by `lmpref experiment` after every
phase and read by the run status page and by label workers (who exit once `finished` is true).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.orm import Session

from lmpref.store.enqueue import ensure_run, get_run
from lmpref.store.models import Meta


def _key(run_id: int) -> str:
    return f"experiment:{run_id}"  # the run id, not its name: Meta keys are 64 characters


def publish_status(session: Session, *, run: str, status: dict[str, Any]) -> None:
    """Replace the run's experiment status (creating the run if needed)."""
    key = _key(ensure_run(session, name=run).id)
    row = session.get(Meta, key)
    if row is None:
        session.add(Meta(key=key, value=json.dumps(status)))
    else:
        row.value = json.dumps(status)
    session.flush()


def read_status(session: Session, *, run: str) -> dict[str, Any] | None:
    """The last status the run's experiment published, or None if it never ran (NotFound: no such run)."""
    row = session.get(Meta, _key(get_run(session, name=run).id))
    return json.loads(row.value) if row is not None else None
