"""Queries and the response rules of the paper's tasks.

Style tasks (paper §3.1): a query is a book passage of `query_length` tokens that starts right after a
sentence end and is cut back to end at one (lm-human-preferences: `start_text='.'`, `end_text='.'`).
Responses are sampled at a fixed length; a response is cut after the first `truncate_token` at or
after index `truncate_after`, and one that never reaches it gets `penalty_reward` and is never shown
to a labeler (lm-human-preferences `postprocess_responses` / `penalty_reward_value`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lmpref.config import ConfigError, TaskConfig
from lmpref.io import DataError, read_jsonl


@dataclass
class Query:
    id: str
    text: str
    ids: list[int]
    extra: dict | None = None  # e.g. a reference summary


def single_token_id(tokenizer, text: str) -> int:
    """The id of a token given as text ('.'); it must be one token for the rules to be exact."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ConfigError(f"{text!r} is {len(ids)} tokens for this tokenizer; truncate_token/start_text must be one token")
    return ids[0]


_STOP_CACHE: dict[tuple[int, str], set[int]] = {}


def stop_token_ids(tokenizer, text: str) -> set[int]:
    """Ids of the tokens that end a response: `text` itself (one token) and, for a newline, every
    token made only of newlines (GPT-2 has "\n" = 198 and "\n\n" = 628; either ends a summary)."""
    key = (id(tokenizer), text)
    if key in _STOP_CACHE:
        return _STOP_CACHE[key]
    ids = {single_token_id(tokenizer, text)}
    if text.strip() == "":
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        for tok_id in vocab.values():
            decoded = tokenizer.decode([tok_id])
            if decoded and decoded.strip("\n") == "" and text in decoded:
                ids.add(tok_id)
    _STOP_CACHE[key] = ids
    return ids


def truncate_response(ids: list[int], stop: int | set[int], after: int) -> tuple[int, bool]:
    """Length of the response once cut just after the first stop token at index >= `after`, and
    whether one was found; unfound: the full length and False (that response earns the penalty and is
    never shown to a labeler). The rule of lm-human-preferences' `postprocess_responses`."""
    stops = {stop} if isinstance(stop, int) else stop
    for i in range(after, len(ids)):
        if ids[i] in stops:
            return i + 1, True
    return len(ids), False


def _book_texts() -> list[tuple[str, str]]:
    root = resources.files("lmpref.data") / "books"
    return [(p.name[:-4], p.read_text(encoding="utf-8")) for p in sorted(root.iterdir(), key=lambda p: p.name) if p.name.endswith(".txt")]


def _clean(text: str) -> str:
    # Novels are hard-wrapped: join lines inside a paragraph, keep paragraph breaks as one newline.
    paras = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    return "\n".join(p for p in paras if p)


def load_source_texts(dataset: str) -> list[tuple[str, str]]:
    """(name, text) pairs that queries are cut from: the shipped books or a user JSONL."""
    if dataset == "books":
        return [(name, _clean(text)) for name, text in _book_texts()]
    path = Path(dataset)
    if not path.exists():
        raise ConfigError(f"task.query_dataset={dataset!r}: use 'books' or a path to a JSONL file of {{\"text\": ...}} records")
    out = []
    for lineno, rec in read_jsonl(path):
        text = rec.get("text", rec.get("query"))
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path}:{lineno}: needs a non-empty string field 'text' (or 'query')")
        out.append((f"{path.stem}:{lineno}", text))
    return out


class QuerySource:
    """Cuts queries from random places of the source texts: the first (1 - holdout) share of each
    text for 'train', the rest for 'eval'. Sources are loaded once; `sample(n, key)` is a pure
    function of its arguments, so a resumed run sees the same queries."""

    def __init__(self, tokenizer, task: TaskConfig, split: str = "train"):
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
        self.tokenizer, self.task, self.split = tokenizer, task, split
        self.start_id = single_token_id(tokenizer, task.start_text) if task.start_text else None
        self.end_id = single_token_id(tokenizer, task.end_text) if task.end_text else None
        self.sources = []
        for name, text in load_source_texts(task.query_dataset):
            cut = int(len(text) * (1 - task.holdout_fraction))
            part = text[:cut] if split == "train" else text[cut:]
            if len(part) > 200:
                self.sources.append((name, part))
        if not self.sources:
            raise DataError(f"task.query_dataset={task.query_dataset!r} has no text long enough for {split} queries")

    def _cut(self, text: str, pos: int) -> list[int] | None:
        ids = self.tokenizer.encode(text[pos : pos + self.task.query_length * 8], add_special_tokens=False)
        if self.start_id is not None:
            if self.start_id not in ids[:-1]:
                return None
            ids = ids[ids.index(self.start_id) + 1 :]
        ids = ids[: self.task.query_length]
        if self.end_id is not None:
            if self.end_id not in ids:
                return None
            ids = ids[: len(ids) - ids[::-1].index(self.end_id)]
        return ids if len(ids) >= self.task.min_query_tokens else None

    def sample(self, n: int, key: object) -> list[Query]:
        rng = random.Random(f"{key}-{self.split}")
        seen, queries, tries = set(), [], 0
        while len(queries) < n:
            tries += 1
            if tries > 50 * n + 1000:
                raise DataError(f"could only cut {len(queries)} of {n} {self.split} queries from {self.task.query_dataset!r}")
            name, text = self.sources[rng.randrange(len(self.sources))]
            pos = rng.randrange(max(1, len(text) - self.task.query_length * 8))
            ids = self._cut(text, pos)
            if ids is None or (name, pos) in seen:
                continue
            seen.add((name, pos))
            queries.append(Query(id=f"{self.split}-{key}-{len(queries):06d}", text=self.tokenizer.decode(ids), ids=ids))
        return queries


SUMMARIZATION_DATASETS = ("cnndm", "tldr")


def make_query_source(tokenizer, task: TaskConfig, split: str = "train"):
    """The query source of a task: book passages / text JSONL, or a summarization dataset
    (`cnndm`, `tldr`, or a JSONL path with `task.name` cnndm|tldr) whose queries carry a reference."""
    if task.query_dataset in SUMMARIZATION_DATASETS or task.name in SUMMARIZATION_DATASETS:
        from lmpref.summarization import SummarizationSource

        return SummarizationSource(tokenizer, task, split)
    return QuerySource(tokenizer, task, split)


def sample_queries(tokenizer, task: TaskConfig, n: int, seed: int, split: str = "train") -> list[Query]:
    """`n` distinct queries, deterministic for a given seed."""
    return QuerySource(tokenizer, task, split).sample(n, seed)
