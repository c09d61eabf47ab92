"""Summary metrics: ROUGE, lead-3, novelty and copying. Pure functions on strings; no torch.

What the paper measured (Ziegler et al. 2019, arXiv:1909.08593, §4.2 "Summarization"): ROUGE
against the references, lead-3 as a baseline, how novel the summaries are relative to the source,
and how they copy: whether they copy from the start of the source, whether they skip uninformative
preamble ("smart copiers"), and where in the source they copy from (their figure draws the
longest common subsequence of bigrams between context and summary). Definitions used here:

- Words: lower-cased runs of letters/digits with inner apostrophes (`words`); punctuation is not a
  word, so novelty and copying are indifferent to tokenization/detokenization.
- Sentences: `sentence_spans`, a documented regex splitter (default) or NLTK Punkt (needs the
  `punkt_tab` data, which is not installed offline). The regex is the default so that figures do
  not depend on whether someone ran `nltk.download`.
- Novelty (`novel_ngram_pct`): % of the summary's n-grams (n = 1..4, as a multiset) absent from the
  source's n-grams. `novel_sentence_pct`: % of summary sentences whose word sequence is not a
  contiguous run of the source's words.
- Copy start (`copy_start`): the word index in the source where the summary's first k=5 words
  occur verbatim (first occurrence), None if they do not (or the summary has < k words).
  "Copies from the start" means copy_start == 0; "copies" means copy_start is not None.
- Uninformative preamble (`has_uninformative_preamble`): TL;DR posts whose first word is a
  greeting/filler (PREAMBLE_WORDS); CNN/DM articles with a colon in the first three words
  ("EXCLUSIVE: ...", "PICTURED: ..."). On those inputs a smart copier copies but not from the start.
- Copied words (`copied_pct`): the share of summary words inside a run of >= 3 words found
  verbatim in the source; the rule (and its `\\w+` words) is `lmpref.eval.copying`'s, shared with the
  compare page and the run report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

from lmpref.eval.copying import MIN_COPIED_WORDS, copied_spans
from lmpref.text import split_sentences, words

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
COPY_START_WORDS = 5
PREAMBLE_WORDS = frozenset({"hi", "hello", "hey", "ok", "okay", "so", "well", "alright", "um"})


def lead_k(text: str, k: int = 3, splitter: str = "regex") -> str:
    """The first k sentences, one per line (the lead-3 baseline of See et al. 2017, §5)."""
    return "\n".join(split_sentences(text, splitter)[:k])


# ---------------------------------------------------------------- ROUGE


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer  # lazy: imports nltk's Porter stemmer

    # Stemming on, as in the standard ROUGE-1.5.5 setup (-m) of See et al. 2017 and since.
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge(summary: str, reference: str, splitter: str = "regex") -> dict[str, float]:
    """ROUGE F1 x 100 of `summary` against `reference`, via Google's rouge-score package.

    rougeL is LCS over the whole text; rougeLsum is the summary-level (union) LCS over
    sentences, which is what ROUGE-1.5.5's "ROUGE-L" reports for multi-sentence summaries (and so
    what CNN/DM papers publish). rougeLsum needs one sentence a line, so both texts are split.
    """
    scores = _rouge_scorer().score(
        "\n".join(split_sentences(reference, splitter)), "\n".join(split_sentences(summary, splitter))
    )
    return {t: 100 * scores[t].fmeasure for t in ROUGE_TYPES}


def mean_rouge(summaries: Sequence[str], references: Sequence[str], splitter: str = "regex") -> dict:
    if len(summaries) != len(references) or not summaries:
        raise ValueError(
            f"need equal, non-zero numbers of summaries ({len(summaries)}) and references ({len(references)})"
        )
    per = [rouge(s, r, splitter) for s, r in zip(summaries, references)]
    return {t: sum(p[t] for p in per) / len(per) for t in ROUGE_TYPES}


# ---------------------------------------------------------------- novelty


def ngrams(ws: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)]


def novel_ngram_pct(summary: str, source: str, n: int) -> float | None:
    """% of the summary's n-grams that never occur in the source; None if it has no n-grams."""
    grams = ngrams(words(summary), n)
    if not grams:
        return None
    seen = set(ngrams(words(source), n))
    return 100 * sum(g not in seen for g in grams) / len(grams)


def _find_run(needle: Sequence[str], haystack: Sequence[str]) -> int | None:
    """Index of the first occurrence of `needle` as a contiguous run in `haystack`."""
    k = len(needle)
    for i in range(len(haystack) - k + 1):
        if haystack[i] == needle[0] and list(haystack[i : i + k]) == list(needle):
            return i
    return None


def novel_sentence_pct(summary: str, source: str, splitter: str = "regex") -> float | None:
    """% of the summary's sentences (with a word) whose words are not a run of the source's."""
    sents = [w for w in (words(s) for s in split_sentences(summary, splitter)) if w]
    if not sents:
        return None
    src = words(source)
    return 100 * sum(_find_run(s, src) is None for s in sents) / len(sents)


# ---------------------------------------------------------------- copying


def copy_start(summary: str, source: str, k: int = COPY_START_WORDS) -> int | None:
    """Word index in `source` where the summary's first k words occur verbatim, else None."""
    head = words(summary)[:k]
    return _find_run(head, words(source)) if len(head) == k else None


def has_uninformative_preamble(source: str, task: str) -> bool:
    """TL;DR: the post opens with a filler word ("Hi", "So", ...); CNN/DM: a colon in the first
    three words ("EXCLUSIVE: ..."). The subsets on which copying from the start is a bad summary."""
    if task == "tldr":
        first = words(source)[:1]
        return bool(first) and first[0] in PREAMBLE_WORDS
    if task == "cnndm":
        return any(":" in tok for tok in source.split()[:3])
    raise ValueError(f"unknown summarization task {task!r}; expected 'tldr' or 'cnndm'")


def bigram_lcs(context: str, summary: str) -> list[tuple[int, int]]:
    """Longest common subsequence of word bigrams: matched (context, summary) bigram indices.

    A bigram's index is that of its first word. Among equally long LCSs the earliest context
    positions are taken (suffix table, traced forwards), so "copies from the start" shows as such.
    Context bigrams absent from the summary can never match and are dropped before the O(n m) table.
    """
    cb, sb = ngrams(words(context), 2), ngrams(words(summary), 2)
    wanted = set(sb)
    keep = [i for i, b in enumerate(cb) if b in wanted]  # original context indices
    n, m = len(keep), len(sb)
    table = [[0] * (m + 1) for _ in range(n + 1)]  # table[i][j] = LCS(cb[keep[i:]], sb[j:])
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            if cb[keep[i]] == sb[j]:
                table[i][j] = table[i + 1][j + 1] + 1
            else:
                table[i][j] = max(table[i + 1][j], table[i][j + 1])
    pairs, i, j = [], 0, 0
    while i < n and j < m:
        if cb[keep[i]] == sb[j]:
            pairs.append((keep[i], j))
            i, j = i + 1, j + 1
        elif table[i + 1][j] >= table[i][j + 1]:
            i += 1
        else:
            j += 1
    return pairs


def copied_pct(summary: str, context: str, min_words: int = MIN_COPIED_WORDS) -> float | None:
    """% of the summary's words that are copied (rule in `lmpref.eval.copying`); None without words."""
    c = copied_spans(summary, context, min_words=min_words)
    return 100 * c.fraction if c.words else None


# ---------------------------------------------------------------- aggregates (summary_eval.json)


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def summary_stats(
    summaries: Sequence[str],
    documents: Sequence[str],
    references: Sequence[str | None] | None = None,
    *,
    task: str,
) -> dict:
    """One policy's row of summary_eval.json: means over examples, all in percent.

    ROUGE keys over the examples that have a reference (`n_references` of them), none without.
    Preamble keys are None when no document
    opens with preamble. Per-example novelty/copy values that are undefined (empty summary) are
    left out of the means.
    """
    if len(summaries) != len(documents):
        raise ValueError(f"{len(summaries)} summaries for {len(documents)} documents")
    stats: dict = {"n": len(summaries), "mean_words": _mean(len(words(s)) for s in summaries)}
    scored = [(s, r) for s, r in zip(summaries, references or [None] * len(summaries)) if r is not None]
    stats["n_references"] = len(scored)
    if scored:  # TL;DR posts mostly have no reference: ROUGE over those that do
        stats.update(mean_rouge([s for s, _ in scored], [r for _, r in scored]))
    for n in range(1, 5):
        stats[f"novel_{n}grams"] = _mean(novel_ngram_pct(s, d, n) for s, d in zip(summaries, documents))
    stats["novel_sentences"] = _mean(novel_sentence_pct(s, d) for s, d in zip(summaries, documents))
    stats["copied_words"] = _mean(copied_pct(s, d) for s, d in zip(summaries, documents))
    starts = [copy_start(s, d) for s, d in zip(summaries, documents)]
    preamble = [has_uninformative_preamble(d, task) for d in documents]
    for prefix, mask in (("", [True] * len(starts)), ("preamble_", preamble)):
        chosen = [c for c, keep in zip(starts, mask) if keep]
        stats[f"{prefix}copies_from_start"] = _mean(100.0 * (c == 0) for c in chosen)
        stats[f"{prefix}copies_anywhere"] = _mean(100.0 * (c is not None) for c in chosen)
    stats["preamble_n"] = sum(preamble)
    return stats


def lead3_summaries(documents: Sequence[str], splitter: str = "regex") -> list[str]:
    return [lead_k(d, 3, splitter) for d in documents]


def summary_eval(
    policies: Mapping[str, Sequence[str]],
    documents: Sequence[str],
    references: Sequence[str | None] | None = None,
    *,
    task: str,
    with_lead3: bool = True,
) -> dict:
    """The whole summary_eval.json object (schema in lmpref.eval.report's docstring)."""
    table: dict[str, Sequence[str]] = {"lead-3": lead3_summaries(documents)} if with_lead3 else {}
    table.update(policies)
    return {
        "task": task,
        "n_documents": len(documents),
        "policies": {name: summary_stats(s, documents, references, task=task) for name, s in table.items()},
    }
