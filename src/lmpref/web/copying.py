"""Which parts of a sample are copied verbatim from the context.

Ziegler et al. (2019), section 4.2: their summarization labelers rewarded copying without
noticing ("smart copiers"). The compare page can highlight copied text and shows how much
of each sample is copied, so a labeler sees it.

A word of the sample is "copied" when it lies inside a run of at least `min_words`
consecutive sample words that also occur consecutively in the context. Words are `\\w+`
runs compared case-insensitively; punctuation between them is ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Copying:
    spans: list[tuple[int, int]]  # character [start, end) ranges of the sample, in order
    copied_words: int
    words: int

    @property
    def fraction(self) -> float:
        return self.copied_words / self.words if self.words else 0.0


def copied_spans(sample: str, context: str, *, min_words: int = 3) -> Copying:
    words = [(m.start(), m.end(), m.group().casefold()) for m in WORD.finditer(sample)]
    ctx = [m.group().casefold() for m in WORD.finditer(context)]
    copied = [False] * len(words)
    # prev[j]: length of the common run of words ending at sample word i-1 and context word j.
    # The longest such run ending at sample word i marks words i-L+1..i when L >= min_words.
    prev = [0] * (len(ctx) + 1)
    for i, (_, _, w) in enumerate(words):
        cur = [0] * (len(ctx) + 1)
        longest = 0
        for j, c in enumerate(ctx, 1):
            if w == c:
                cur[j] = prev[j - 1] + 1
                longest = max(longest, cur[j])
        if longest >= min_words:
            for k in range(i - longest + 1, i + 1):
                copied[k] = True
        prev = cur
    spans: list[tuple[int, int]] = []
    for (start, end, _), is_copied in zip(words, copied, strict=True):
        if not is_copied:
            continue
        # Join to the previous span when only punctuation or space lies between them.
        if spans and not WORD.search(sample, spans[-1][1], start):
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return Copying(spans=spans, copied_words=sum(copied), words=len(words))


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
