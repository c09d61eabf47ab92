"""Copy highlighting for the compare page. The rule itself lives in `lmpref.copying`
(shared with the summary metrics and the run report); this module only cuts text for rendering.
"""

from __future__ import annotations

from lmpref.copying import Copying, copied_spans

__all__ = ["Copying", "copied_spans", "segments"]


def segments(text: str, spans: list[tuple[int, int]]) -> list[tuple[str, bool]]:
    """Split `text` into (piece, copied) pairs for rendering."""
    out: list[tuple[str, bool]] = []
    pos = 0
    for start, end in spans:
        if start > pos:
            out.append((text[pos:start], False))
        out.append((text[start:end], True))
        pos = end
    if pos < len(text):
        out.append((text[pos:], False))
    return out
