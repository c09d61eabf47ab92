"""Programmatic labelers: stand-ins for people ("mock" labelers in the paper), behind one protocol.

A labeler scores each continuation of a query; `choose` turns the scores into a best-of-K pick
with Boltzmann-rational noise (P(pick i) ∝ exp(score_i / temperature)), so simulated labelers err
the way people do: mostly on close calls. Labelers are plain objects, importable without torch.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Protocol

from lmpref.records import LabelRecord, SampleRecord


class ProgramLabeler(Protocol):
    name: str

    def score(self, query: str, response: str, *, reference: str | None = None) -> float:
        """Higher is better."""


def choose(scores: Sequence[float], temperature: float, rng: random.Random) -> int:
    """Best-of-K pick: argmax at temperature 0, else a Boltzmann-rational sample."""
    if not scores:
        raise ValueError("no responses to choose from")
    if temperature <= 0:
        return max(range(len(scores)), key=lambda i: scores[i])
    top = max(scores)
    weights = [math.exp((s - top) / temperature) for s in scores]  # shifted for stability
    return rng.choices(range(len(scores)), weights=weights)[0]


class SentimentLabeler:
    """Positive sentiment of the continuation: VADER's compound score in [-1, 1]."""

    name = "sentiment"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._vader = SentimentIntensityAnalyzer()

    def score(self, query: str, response: str, *, reference: str | None = None) -> float:
        return self._vader.polarity_scores(response)["compound"]


# Empath (Fast et al. 2016) categories of physical and sensory language, used as the lexical
# resource for "physically descriptive" continuations.
DESCRIPTIVE_CATEGORIES = (
    "body",
    "smell",
    "hearing",
    "sound",
    "cold",
    "warmth",
    "fire",
    "water",
    "liquid",
    "weather",
    "clothing",
    "beauty",
    "ugliness",
    "plant",
    "animal",
    "color",
    "physical_state",
    "vision",
)


class DescriptivenessLabeler:
    """Physically descriptive language: the share of words of the continuation that fall in Empath's
    sensory and physical categories (sight, sound, smell, touch, temperature, bodies, matter...)."""

    name = "descriptiveness"

    def __init__(self) -> None:
        from empath import Empath

        self._lex = Empath()
        self._cats = [c for c in DESCRIPTIVE_CATEGORIES if c in self._lex.cats]

    def score(self, query: str, response: str, *, reference: str | None = None) -> float:
        counts = self._lex.analyze(response, categories=self._cats, normalize=False) or {}
        words = max(1, len(response.split()))
        return sum(counts.values()) / words


LABELERS: dict[str, Callable[[], ProgramLabeler]] = {
    "sentiment": SentimentLabeler,
    "descriptiveness": DescriptivenessLabeler,
}


def register(name: str, factory: Callable[[], ProgramLabeler]) -> None:
    """Add a labeler (the summarization labelers register here)."""
    LABELERS[name] = factory


def make_labeler(name: str) -> ProgramLabeler:
    if name not in LABELERS:
        from lmpref.config import ConfigError

        raise ConfigError(f"unknown labeler {name!r}; choose one of: {', '.join(sorted(LABELERS))} (--labeler NAME)")
    return LABELERS[name]()


def label_records(records: list[dict], labeler: ProgramLabeler, *, temperature: float, seed: int) -> list[dict]:
    """Best-of-K labels for sampling records. Only valid responses are shown; a query with fewer
    than two valid responses yields no label. Output: the best-of-K label JSONL schema."""
    rng = random.Random(f"label-{seed}")
    labels = []
    for n, raw in enumerate(records, 1):
        rec = SampleRecord.from_json(raw, where=f"sample {n}")
        shown = [i for i in range(rec.k) if rec.is_valid(i)]
        if len(shown) < 2:
            continue
        ref = rec.extra.get("reference")
        scores = [labeler.score(rec.query, rec.responses[i], reference=ref) for i in shown]
        with_ids = rec.query_ids is not None and rec.response_ids is not None
        label = LabelRecord(
            id=rec.id,
            query=rec.query,
            responses=[rec.responses[i] for i in shown],
            best=choose(scores, temperature, rng),
            labeler=f"{labeler.name}@T{temperature:g}",
            query_ids=rec.query_ids if with_ids else None,
            response_ids=[rec.response_ids[i] for i in shown] if rec.response_ids is not None and with_ids else None,
        )
        labels.append(label.to_json())
    return labels


def noise_free_accuracy(records: list[dict]) -> float | None:
    """How often the programmatic labeler named in each label record (`labeler`, e.g.
    "sentiment@T0.05"), read without its noise, picks the record's `best`: the most a reward model
    can reach on these labels (a tie at the top counts as a guess among the tied). None when a record
    has no known programmatic labeler (people's labels), no texts, or lacks the reference summary its
    labeler needs (label records do not carry it)."""
    if not records:
        return None
    made: dict[str, ProgramLabeler] = {}
    hits = 0.0
    for rec in records:
        name = str(rec.get("labeler") or "").split("@")[0]
        if name not in LABELERS or not rec.get("responses") or rec.get("query") is None:
            return None
        labeler = made.setdefault(name, LABELERS[name]())
        if getattr(labeler, "needs_reference", False) and rec.get("reference") is None:
            return None
        scores = [labeler.score(rec["query"], r, reference=rec.get("reference")) for r in rec["responses"]]
        top = [i for i, v in enumerate(scores) if v == max(scores)]
        hits += (rec["best"] in top) / len(top)
    return hits / len(records)


# ---------------------------------------------------------------- summarization labelers


class CopyStartLabeler:
    """Prefers summaries that copy from the start of the document: the share of the summary's
    words, counted from its first, that repeat the document's opening words verbatim. The
    heuristic the paper's labelers fell into (Ziegler et al. 2019, §4.2: the RL policies became
    "smart copiers" and labelers rewarded copying). Scores lie in [0, 1]."""

    name = "copy-start"

    def score(self, query: str, response: str, *, reference: str | None = None) -> float:
        from lmpref.tasks.summarization import document_of_query
        from lmpref.text import words

        summary, document = words(response), words(document_of_query(query))
        n = 0
        while n < min(len(summary), len(document)) and summary[n] == document[n]:
            n += 1
        return n / len(summary) if summary else 0.0


class RougeLabeler:
    """Prefers summaries closer to the reference: the mean of ROUGE-1, ROUGE-2 and ROUGE-Lsum F1
    against it, in [0, 1] (the paper's automatic metric for summaries, §4.2)."""

    name = "rouge"
    needs_reference = True

    def score(self, query: str, response: str, *, reference: str | None = None) -> float:
        from lmpref.eval.metrics import rouge

        if reference is None:
            raise ValueError(
                "the rouge labeler needs a reference summary (a record without 'reference'); use copy-start for tasks "
                "without references"
            )
        r = rouge(response, reference)
        return (r["rouge1"] + r["rouge2"] + r["rougeLsum"]) / 300


register("copy-start", CopyStartLabeler)
register("rouge", RougeLabeler)
