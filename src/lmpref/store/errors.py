"""Store errors. The web layer maps each to one HTTP status (see `lmpref.web.api`)."""


class StoreError(Exception):
    """Base class; `str(err)` is a message fit to show the user."""


class NotFound(StoreError):
    """Unknown run, task, labeler or event (HTTP 404)."""


class Conflict(StoreError):
    """The request contradicts stored state, e.g. a second label for one task (HTTP 409)."""


class Invalid(StoreError, ValueError):
    """Bad input: a choice out of range, oversized text, a malformed record (HTTP 422)."""
