"""Summarization tasks (TL;DR, CNN/Daily Mail): data, query formatting, response truncation.

Torch-free. The formatting follows the paper's code, openai/lm-human-preferences:
`launch.py` (`summarize_cnndm_task`, `summarize_tldr_task`), `language/datasets.py`
(query cut), `lm_tasks.py` (response truncation), `datasets/cnndm.py` (`clean_up_start`).

Vocabulary: a *document* is the text to summarize (a CNN/DM article or a Reddit post); the
*query* is the formatted context the policy sees; a *response* is the sampled summary.

User data is JSONL, one object a line: `{"id": str, "article" | "post": str, "reference": str}`
(`reference` optional).
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from lmpref.config import ConfigError
from lmpref.io import DataError, read_jsonl
from lmpref.records import TaskQuery
from lmpref.text import sentence_spans

TLDR_SUFFIX = "\n\nTL;DR:"
CNNDM_PREFIX = "Article:\n\n"
QUERY_LENGTH = 500  # tokens; launch.py `query_length` for both summarization tasks
RESPONSE_LENGTH = 75  # tokens; launch.py `response_length`
TRUNCATE_AFTER = 55  # launch.py `truncate_after`: a summary is at least 55 tokens long
TASKS = ("tldr", "cnndm")
COMPARISONS_LABELER = "openai-summarize-from-feedback"


@dataclass(frozen=True)
class SummaryExample:
    id: str
    document: str
    reference: str | None = None


# ---------------------------------------------------------------- query formatting


def _encoder(tokenizer: Any):
    """`tokenizer.encode` without special tokens (an HF tokenizer may add a BOS token)."""
    if hasattr(tokenizer, "all_special_ids"):  # a transformers tokenizer
        return lambda text: tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode


def cut_to_tokens(text: str, tokenizer: Any, max_tokens: int = QUERY_LENGTH) -> str | None:
    """The longest prefix of `text` of at most `max_tokens` tokens that ends at a line end.

    The whole text if it fits. Otherwise the last line end that fits ("\\n", as the paper's
    `end_text` for CNN/DM, language/datasets.py); failing that the last sentence end (our FRANK
    CNN/DM copy has its paragraphs flattened to one line); failing that None, and the caller
    skips the document, as the original did when no end token was found.
    Only `tokenizer.encode(text) -> list[int]` is used. Cut points are searched by bisection,
    which assumes a longer prefix never has fewer tokens (true of BPE tokenizers in practice).
    """
    encode = _encoder(tokenizer)
    if len(encode(text)) <= max_tokens:
        return text
    line_ends = [m.start() for m in re.finditer(r"\n", text)]  # the newline itself is dropped
    sentence_ends = [end for _, end in sentence_spans(text)]
    for cuts in (line_ends, sentence_ends):
        best = _last_fitting(text, sorted(set(cuts)), encode, max_tokens)
        if best is not None:
            return text[:best].rstrip()
    return None


def _last_fitting(text: str, cuts: list[int], encode, max_tokens: int) -> int | None:
    lo, hi, best = 0, len(cuts) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        if cuts[mid] > 0 and len(encode(text[: cuts[mid]])) <= max_tokens:
            best, lo = cuts[mid], mid + 1
        else:
            hi = mid - 1
    return best


def format_query(task: str, document: str, tokenizer: Any | None, max_tokens: int = QUERY_LENGTH) -> str | None:
    """The paper's summarization context; None when the document cannot be cut (skip it).

    tldr:  post + "\\n\\nTL;DR:"                  (launch.py `summarize_tldr_task`)
    cnndm: "Article:\\n\\n" + article + "\\n\\nTL;DR:"  (launch.py `summarize_cnndm_task`)
    The document is cut to `max_tokens` tokens by `cut_to_tokens` (the 500-token budget counts the
    document only, as in the original, where prefix and suffix are added after the cut).
    `tokenizer=None` skips the cut. Note: the original cut TL;DR posts hard at 500 tokens (no
    `end_text`); we cut both tasks at a line end so that no post ends mid-word.
    """
    if task not in TASKS:
        raise ValueError(f"unknown summarization task {task!r}; expected one of {TASKS}")
    body = document if tokenizer is None else cut_to_tokens(document, tokenizer, max_tokens)
    if body is None:
        return None
    prefix = CNNDM_PREFIX if task == "cnndm" else ""
    return prefix + body + TLDR_SUFFIX


# ---------------------------------------------------------------- CNN/DM clean-up

# Daily Mail byline blocks, as in the raw CNN/DM stories, e.g.
# "By . Daily Mail Reporter . PUBLISHED: . 10:27 EST, 28 June 2013 . | . UPDATED: . 10:53 EST,
# 28 June 2013 . " or "By\nSam Webb\n\n" (abisee/cnn-dailymail story files).
_BYLINE = re.compile(r"^By\s*[.\n]\s*[^.\n]{1,80}?(?:\s+and\s*[.\n]\s*[^.\n]{1,80}?)*\s*[.\n]\s*")
_STAMPED = re.compile(
    r"^.{0,300}(?:UPDATED|PUBLISHED):\s*\.?\s*\d{1,2}:\d{2}[^\n]{0,40}?\d{4}\s*\.?\s*"
    r"(?:\|\s*\.?\s*)?",
    re.S,
)
_LAST_UPDATED = re.compile(r"^Last updated at [^\n]{0,60}?\d{4}\s*\.?\s*")
# "(CNN) -- ", "LONDON, England (CNN) -- ", "(CNN)They ...", "New Delhi, India (CNN)As ..."
# A dateline is capitalized place words ("St. Louis", "Rio de Janeiro"), so "Byron said (CNN)" is not.
_CNN_OPENER = re.compile(
    r"^(?:(?:[A-Z][\w.'\-]*|de|la|of)(?:,?\s+(?:[A-Z][\w.'\-]*|de|la|of))*\s*)?\(CNN\)\s*(?:--\s*)?"
)


def clean_cnndm_article(text: str) -> str:
    """Strip CNN/DM bylines, timestamps and "(CNN) --" datelines from the start of an article.

    After `clean_up_start` in lm-human-preferences datasets/cnndm.py, but anchored at the start
    (the original also split on "(CNN) --" anywhere in the text). Curly single quotes become
    straight ones, as there; runs of 3+ newlines become one blank line.
    """
    text = text.strip()
    # The timestamp block follows the byline; stripping through the last stamp takes both.
    text = _STAMPED.sub("", text, count=1) if _STAMPED.match(text) else _BYLINE.sub("", text, count=1)
    text = _LAST_UPDATED.sub("", text, count=1)
    text = _CNN_OPENER.sub("", text, count=1)
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    return re.sub(r"\n{3,}", "\n\n", text).strip()


# ---------------------------------------------------------------- PTB detokenization

_PTB_BRACKETS = {"-LRB-": "(", "-RRB-": ")", "-LSB-": "[", "-RSB-": "]", "-LCB-": "{", "-RCB-": "}"}


def detokenize_ptb(text: str) -> str:
    """Undo the Stanford/PTB tokenization of the CNN/DM highlights (FRANK's `reference`).

    "Locke 's first six games ." -> "Locke's first six games."; -LRB- -> "("; `` x '' -> "x";
    ` x ' -> 'x'; "£ 2,100" -> "£2,100". ROUGE (rouge-score) drops punctuation anyway, so this
    is for display and for the reference as a summary in its own right.
    """
    for tok, ch in _PTB_BRACKETS.items():
        text = text.replace(tok, ch)
    text = re.sub(r"``\s*(.*?)\s*''", r'"\1"', text)
    text = re.sub(r"(?<![\w`])`\s+(.*?)\s+'(?!\w)", r"'\1'", text)
    text = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", text)
    text = re.sub(r"\( ", "(", text)
    text = re.sub(r" ([.,!?;:%)\]])", r"\1", text)
    text = re.sub(r"([£$€#]) (?=\d)", r"\1", text)
    return text


# ---------------------------------------------------------------- loading


def _data_file(task: str, name: str) -> Path:
    return Path(str(resources.files("lmpref") / "data" / task / name))


def load_summaries_jsonl(path: str | Path, *, task: str) -> list[SummaryExample]:
    """Read `{"id", "article"|"post", "reference"?}` lines; CNN/DM articles are cleaned."""
    if task not in TASKS:
        raise ValueError(f"unknown summarization task {task!r}; expected one of {TASKS}")
    examples = []
    for lineno, row in read_jsonl(path):
        document = row.get("article", row.get("post"))
        if not isinstance(document, str) or not document.strip():
            raise DataError(f"{path}:{lineno}: needs a non-empty string field 'article' (or 'post')")
        reference = row.get("reference")
        if reference is not None and not isinstance(reference, str):
            raise DataError(f"{path}:{lineno}: 'reference' must be a string")
        if task == "cnndm":
            document = clean_cnndm_article(document)
        examples.append(SummaryExample(str(row.get("id", f"{Path(path).stem}:{lineno}")), document, reference))
    return examples


def load_cnndm(path: str | Path | None = None) -> list[SummaryExample]:
    """The shipped 250 CNN/DM test articles (FRANK), or a user file of the same shape."""
    return load_summaries_jsonl(path or _data_file("cnndm", "cnndm_test_250.jsonl"), task="cnndm")


_SUMMARY_MARK = " [summary]: "  # how the comparisons files end each post
_COMPARISON_TEXTS = ("input_text", "candidate_0", "candidate_1")


def _post_of(input_text: str) -> str:
    post = input_text.removesuffix(_SUMMARY_MARK).rstrip()
    return post.removesuffix(_SUMMARY_MARK.strip()).strip()


def _post_id(post: str) -> str:
    return "tldr-" + hashlib.sha1(post.encode("utf-8")).hexdigest()[:12]


def load_tldr(data_dir: str | Path | None = None) -> list[SummaryExample]:
    """The shipped Reddit posts: 14 with reference TL;DRs, then the ~866 compared posts (no ref).

    Distinct posts only; ids are a hash of the post, so labels and samples can be joined on them.
    """
    root = Path(data_dir) if data_dir else _data_file("tldr", "")
    by_post: dict[str, SummaryExample] = {}
    for _, row in read_jsonl(root / "validate_dataset.jsonl"):
        post = _post_of(row["input_text"])
        by_post[post] = SummaryExample(_post_id(post), post, row["output_text"].strip())
    for _, row in read_jsonl(root / "preference_dataset.jsonl"):
        post = _post_of(row["input_text"])
        by_post.setdefault(post, SummaryExample(_post_id(post), post, None))
    return list(by_post.values())


def read_tldr_comparisons(
    path: str | Path | None = None, *, tokenizer: Any | None = None, max_tokens: int = QUERY_LENGTH
) -> list[dict]:
    """OpenAI's human TL;DR comparisons as best-of-2 label records (our label JSONL schema).

    `{"id", "doc_id", "query", "responses": [candidate_0, candidate_1], "best": choice, "tie": False,
    "labeler": "openai-summarize-from-feedback"}`. The query is `format_query("tldr", post, ...)`;
    with a tokenizer, posts that cannot be cut to `max_tokens` are skipped. Candidates keep their
    leading space: they continue "TL;DR:". `doc_id` is the post's id in `load_tldr` (a hash of the
    whole post; the file has no id field): a post compared twice has one `doc_id`, which keeps its
    comparisons on one side of the reward model's hold-out split (`reward.split_labels`).
    """
    path = path or _data_file("tldr", "preference_dataset.jsonl")
    records = []
    for lineno, row in read_jsonl(path):
        if row.get("choice") not in (0, 1) or not all(isinstance(row.get(k), str) for k in _COMPARISON_TEXTS):
            raise DataError(f"{path}:{lineno}: needs strings {', '.join(_COMPARISON_TEXTS)} and choice 0 or 1")
        post = _post_of(row["input_text"])
        query = format_query("tldr", post, tokenizer, max_tokens)
        if query is None:
            continue
        doc_id = _post_id(post)
        records.append(
            {
                "id": f"{doc_id}-{lineno}",
                "doc_id": doc_id,
                "query": query,
                "responses": [row["candidate_0"], row["candidate_1"]],
                "best": int(row["choice"]),
                "tie": False,
                "labeler": COMPARISONS_LABELER,
            }
        )
    return records


# ---------------------------------------------------------------- queries for the pipeline


def task_kind(task) -> str:
    """'tldr' or 'cnndm': `task.query_dataset` when it names a shipped set, else `task.name`."""
    kind = task.query_dataset if task.query_dataset in TASKS else task.name
    if kind not in TASKS:
        raise ConfigError(
            f"task.name={task.name!r} / task.query_dataset={task.query_dataset!r}: a summarization task needs one of "
            f"{TASKS}"
        )
    return kind


def load_documents(task) -> list[SummaryExample]:
    """The shipped documents of the task, or the user's JSONL at `task.query_dataset`."""
    kind = task_kind(task)
    if task.query_dataset in TASKS:
        return load_cnndm() if kind == "cnndm" else load_tldr()
    if not Path(task.query_dataset).exists():
        raise ConfigError(
            f"task.query_dataset={task.query_dataset!r}: use 'cnndm', 'tldr' or a path to a JSONL of "
            f"{{id, article|post, reference}}"
        )
    return load_summaries_jsonl(task.query_dataset, task=kind)


def in_eval_split(doc_id: str, holdout_fraction: float) -> bool:
    """A document is held out when a hash of its id falls below `holdout_fraction`: the split
    never depends on file order or on how many documents there are."""
    h = int(hashlib.sha1(f"split:{doc_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return h < holdout_fraction


def query_token_ids(kind: str, document: str, tokenizer: Any, query_length: int) -> list[int] | None:
    """Token ids of the paper's query (prefix + cut document + "\\n\\nTL;DR:") in at most
    `query_length` tokens, or None when the document cannot be cut at a line or sentence end.

    The original cut the document to 500 tokens and added prefix and suffix after (lm_tasks.py
    `query_formatter`), so its queries were 500 + affix tokens long; here the budget of the
    document is `query_length` minus the affix, so queries left-pad to `query_length` like every
    other task (the paper scale sets query_length to 500 + the affix of the GPT-2 tokenizer).
    Prefix, document and suffix are encoded separately and concatenated, as the original did.
    """
    encode = _encoder(tokenizer)
    prefix = encode(CNNDM_PREFIX) if kind == "cnndm" else []
    suffix = encode(TLDR_SUFFIX)
    budget = query_length - len(prefix) - len(suffix)
    if budget <= 0:
        raise ConfigError(
            f"task.query_length={query_length} leaves no room for a document after the prompt's "
            f"{len(prefix) + len(suffix)} tokens"
        )
    body = cut_to_tokens(document, tokenizer, budget)
    return None if body is None else prefix + encode(body) + suffix


def document_of_query(query: str) -> str:
    """The document part of a formatted query (what novelty and copying are measured against)."""
    return query.removeprefix(CNNDM_PREFIX).removesuffix(TLDR_SUFFIX)


def cycle_sample(pool: list[TaskQuery], n: int, seed: str) -> list[TaskQuery]:
    """n queries from `pool`: a seeded shuffle of it, repeated in fresh shuffles when n exceeds it;
    ids of repeats get a `~rN` suffix so a sampling file never holds one id twice."""
    rng = random.Random(seed)
    queries: list[TaskQuery] = []
    for rnd in range(n // len(pool) + 1):
        order = list(pool)
        rng.shuffle(order)
        queries += [q if rnd == 0 else dataclasses.replace(q, id=f"{q.id}~r{rnd}") for q in order]
    return queries[:n]


class SummarizationSource:
    """Queries of a summarization task, each carrying its reference summary in `TaskQuery.extra`.

    Documents are split once by a hash of their id (`in_eval_split`, share
    `task.holdout_fraction` to 'eval'). `sample(n, key)` is a pure function of its arguments: a
    seeded shuffle of the split's documents, repeated in fresh shuffles when n exceeds them (PPO
    on a small set sees each document once per pass); ids of repeats get a `~rN` suffix so a
    sampling file never holds one id twice. Documents that cannot be cut are skipped, as the
    original skipped them. Queries are cut once, on first use.
    """

    def __init__(self, tokenizer, task, split: str = "train"):
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
        self.tokenizer, self.task, self.split = tokenizer, task, split
        self.kind = task_kind(task)
        self.documents = [
            d for d in load_documents(task) if in_eval_split(d.id, task.holdout_fraction) == (split == "eval")
        ]
        if not self.documents:
            raise DataError(f"no {split} documents for {self.kind} (holdout_fraction={task.holdout_fraction})")
        self._ids: dict[str, list[int] | None] = {}

    def query_ids(self, doc: SummaryExample) -> list[int] | None:
        if doc.id not in self._ids:  # cutting costs a few encodes; done once per document
            self._ids[doc.id] = query_token_ids(self.kind, doc.document, self.tokenizer, self.task.query_length)
        return self._ids[doc.id]

    def queries(self, *, with_reference: bool = False) -> list[TaskQuery]:
        """Every usable document of the split once, in file order; `with_reference=True` keeps
        only those with a reference (the pairs of supervised fine-tuning)."""
        out = []
        for doc in self.documents:
            ids = None if with_reference and doc.reference is None else self.query_ids(doc)
            if ids is not None:
                extra = {"task": self.kind, "doc_id": doc.id}
                if doc.reference is not None:
                    extra["reference"] = doc.reference
                out.append(TaskQuery(id=doc.id, text=self.tokenizer.decode(ids), ids=ids, extra=extra))
        return out

    def sample(self, n: int, key: object) -> list[TaskQuery]:
        pool = self.queries()
        if not pool:
            raise DataError(
                f"no {self.kind} {self.split} document fits in task.query_length={self.task.query_length} tokens"
            )
        return cycle_sample(pool, n, f"{key}-{self.split}")
