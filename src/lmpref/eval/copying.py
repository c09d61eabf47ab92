"""Which words of a sample are copied verbatim from its context. Pure; no torch, no web.

Ziegler et al. (2019), arXiv:1909.08593, section 4.2: their summarization policies became
"smart copiers", and the labelers rewarded copying without noticing. The compare page
highlights copied text so a labeler sees it; the summary metrics and the run report measure it.

The one rule, used everywhere: words are `\\w+` runs compared casefolded (`lmpref.text.token_spans`;
punctuation between them is ignored), and a word of the sample is *copied* when it lies in a run of at least
`min_words` consecutive sample words that also occur consecutively in the context. A copied
stretch may join runs from different places in the context ("extractive fragments" of
Grusky et al. 2018, Newsroom, section 4.1, without their greedy choice of fragments).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass

from lmpref.text import TOKEN, token_spans

MIN_COPIED_WORDS = 3


@dataclass(frozen=True)
class CopiedRun:
    """Sample words [start, start + length) equal context words [context_start, ...)."""

    start: int
    context_start: int
    length: int


@dataclass(frozen=True)
class Copying:
    runs: list[CopiedRun]  # word-level runs, each >= min_words long, in sample order (may overlap)
    spans: list[tuple[int, int]]  # character [start, end) ranges of the sample's copied words
    context_spans: list[tuple[int, int]]  # character [start, end) ranges of the runs in the context
    copied_words: int
    words: int

    @property
    def fraction(self) -> float:
        """Copied share of the sample's words; 0.0 for a sample without words."""
        return self.copied_words / self.words if self.words else 0.0


@functools.lru_cache(maxsize=64)
def _context_index(context: str) -> tuple[list[tuple[int, int, str]], dict[str, list[int]]]:
    """The context's words (start, end, word) and where each word occurs, kept for the last few
    contexts: the K samples of a task are all compared with one context (read-only results)."""
    cw = [(s, e, w) for w, s, e in token_spans(context)]
    where = defaultdict(list)  # context word -> its positions
    for j, (_, _, w) in enumerate(cw):
        where[w].append(j)
    return cw, dict(where)


def copied_spans(sample: str, context: str, *, min_words: int = MIN_COPIED_WORDS) -> Copying:
    if min_words < 1:
        raise ValueError(f"min_words must be >= 1, got {min_words}")
    sw = [(s, e, w) for w, s, e in token_spans(sample)]
    cw, where = _context_index(context)
    # longest[i] = (L, j): the longest common run *starting* at sample word i has length L and
    # starts at context word j (earliest j on ties). run[j] for row i is built from row i + 1.
    longest = [(0, -1)] * len(sw)
    below: dict[int, int] = {}
    for i in range(len(sw) - 1, -1, -1):
        row = {j: below.get(j + 1, 0) + 1 for j in where.get(sw[i][2], ())}
        if row:
            longest[i] = max(row.items(), key=lambda jl: (jl[1], -jl[0]))[::-1]
        below = row
    # A word is copied iff some run of >= min_words covers it; the longest run starting at i
    # contains every qualifying run starting at i, so the union of those is the copied set.
    runs: list[CopiedRun] = []
    covered_to = 0  # sample words before this index are covered by the runs so far
    for i, (length, j) in enumerate(longest):
        if length >= min_words and i + length > covered_to:
            runs.append(CopiedRun(start=i, context_start=j, length=length))
            covered_to = i + length
    copied = [False] * len(sw)
    for r in runs:
        copied[r.start : r.start + r.length] = [True] * r.length
    spans: list[tuple[int, int]] = []
    for (start, end, _), is_copied in zip(sw, copied, strict=True):
        if not is_copied:
            continue
        # Join to the previous span when only punctuation or space lies between them.
        if spans and not TOKEN.search(sample, spans[-1][1], start):
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    context_spans = [(cw[r.context_start][0], cw[r.context_start + r.length - 1][1]) for r in runs]
    return Copying(runs=runs, spans=spans, context_spans=context_spans, copied_words=sum(copied), words=len(sw))
