"""Copy highlighting for the compare page. The rule itself lives in `lmpref.eval.copying`
(shared with the summary metrics and the run report); this module only cuts text for rendering.
"""

from __future__ import annotations

from lmpref.eval.copying import Copying, copied_spans

__all__ = ["Copying", "context_segments", "copied_spans", "segments"]


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


def context_segments(context: str, sources: list[list[tuple[int, int]]]) -> list[tuple[str, tuple[int, ...]]]:
    """Split the context into (piece, samples) pairs: `samples` are the 1-based numbers of the
    samples that copied that piece (from each sample's `context_spans`), () where none did."""
    cuts = sorted({0, len(context), *(i for spans in sources for span in spans for i in span)})
    out: list[tuple[str, tuple[int, ...]]] = []
    for start, end in zip(cuts, cuts[1:]):
        who = tuple(n for n, spans in enumerate(sources, 1) if any(a <= start and end <= b for a, b in spans))
        if out and out[-1][1] == who:
            out[-1] = (out[-1][0] + context[start:end], who)
        else:
            out.append((context[start:end], who))
    return out
