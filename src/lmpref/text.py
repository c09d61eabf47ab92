"""Words and sentences: the one word rule and sentence splitter shared by the tasks (query cuts), the
metrics (ROUGE inputs, novelty) and the copying rule."""

from __future__ import annotations

import re

# ---------------------------------------------------------------- words and sentences

# Two word rules, named for what they serve (the tests pin both):
# - `words` / `word_spans`: letters and digits with inner apostrophes ("don't", "it's" one word),
#   casefolded, the typographic apostrophe read as "'": novelty n-grams, copy-start and word counts.
# - `token_spans`: bare `\w+` runs ("don't" is "don" + "t"), casefolded: the copying rule, shared by
#   the compare page's highlighting, the copying metric and the report, where a run of copied
#   words must not depend on how an apostrophe was typed.
WORD = re.compile(r"\w+(?:['\u2019]\w+)*")
TOKEN = re.compile(r"\w+")


def word_spans(text: str) -> list[tuple[str, int, int]]:
    """(normalized word, start, end) for each word of `text`; offsets index `text`."""
    return [(m.group().casefold().replace("\u2019", "'"), m.start(), m.end()) for m in WORD.finditer(text)]


def words(text: str) -> list[str]:
    return [w for w, _, _ in word_spans(text)]


def token_spans(text: str) -> list[tuple[str, int, int]]:
    """(casefolded `\\w+` run, start, end) for each run of `text`: the copying rule's words."""
    return [(m.group().casefold(), m.start(), m.end()) for m in TOKEN.finditer(text)]


# Abbreviations after which a period does not end a sentence (news text, Reddit).
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st jr sr gen sen rep gov lt col capt sgt maj cmdr adm rev hon pres "
    "inc ltd co corp bros vs etc no nos fig approx dept mt ft ave jan feb mar apr jun jul aug "
    "sep sept oct nov dec e.g i.e".split()
)
# A candidate end: terminal punctuation, optional closing quotes/brackets, then whitespace.
_CANDIDATE_END = re.compile(r"[.!?]+[\"'\u2019\u201d)\]]*(?=\s)")
_NEXT_CAPITAL = re.compile(r"\s+[\"'\u2018\u201c(\[]*[A-Z0-9]")
_NEXT_WORD = re.compile(r"\s+[\"'\u2018\u201c(\[]*\w")


def _regex_sentence_spans(line: str, offset: int) -> list[tuple[int, int]]:
    """Split one line at ., ! or ? (plus closers) followed by whitespace and a word, unless the
    period follows a known abbreviation, a single-letter initial ("John F. Kennedy") or a dotted
    acronym ("U.S.", "p.m."). Lower-case starts count (Reddit posts), except after an ellipsis
    ("and I... we"), which must be followed by a capital or digit."""
    spans, start = [], 0
    for m in _CANDIDATE_END.finditer(line):
        ellipsis = m.group().startswith("..")
        if not (_NEXT_CAPITAL if ellipsis else _NEXT_WORD).match(line, m.end()):
            continue
        if m.group().startswith(".") and not ellipsis:
            prev = line[start : m.start()].split()
            last = prev[-1].lstrip("\"'(\u2018\u201c").lower() if prev else ""
            if last in _ABBREVIATIONS or re.fullmatch(r"[a-z](\.[a-z])*", last):
                continue
        spans.append((offset + start, offset + m.end()))
        start = m.end() + len(line[m.end() :]) - len(line[m.end() :].lstrip())
    if line[start:].strip():
        spans.append((offset + start, offset + len(line.rstrip())))
    return spans


def sentence_spans(text: str, splitter: str = "regex") -> list[tuple[int, int]]:
    """(start, end) character offsets of the sentences of `text`. A line break always ends one.

    splitter: "regex" (see `_regex_sentence_spans`) or "punkt" (NLTK's English Punkt model;
    raises LookupError when its `punkt_tab` data is not installed).
    """
    if splitter not in ("regex", "punkt"):
        raise ValueError(f"unknown sentence splitter {splitter!r}; use 'regex' or 'punkt'")
    if splitter == "punkt":
        from nltk.tokenize import PunktTokenizer  # lazy: loads model data from disk

        punkt = PunktTokenizer("english")
    spans = []
    for m in re.finditer(r"[^\n]+", text):
        line = m.group()
        lead = len(line) - len(line.lstrip())
        if not line.strip():
            continue
        if splitter == "punkt":
            spans += [(m.start() + s, m.start() + e) for s, e in punkt.span_tokenize(line)]
        else:
            spans += _regex_sentence_spans(line[lead:], m.start() + lead)
    return spans


def split_sentences(text: str, splitter: str = "regex") -> list[str]:
    return [text[s:e] for s, e in sentence_spans(text, splitter)]
