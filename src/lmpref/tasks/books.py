"""The style tasks' queries (paper §3.1): a query is a book passage of `query_length` tokens that starts
right after a sentence end and is cut back to end at one (lm-human-preferences: `start_text='.'`,
`end_text='.'`), from the shipped public-domain novels or any JSONL of texts. The response rules
(truncation, penalty) are `lmpref.core.responses`.
"""

from __future__ import annotations

import random
import re
from importlib import resources
from pathlib import Path

from lmpref.config import ConfigError, TaskConfig
from lmpref.core.responses import single_token_id
from lmpref.io import DataError, read_jsonl
from lmpref.records import TaskQuery


def _book_texts() -> list[tuple[str, str]]:
    root = resources.files("lmpref.data") / "books"
    return [
        (p.name[:-4], p.read_text(encoding="utf-8"))
        for p in sorted(root.iterdir(), key=lambda p: p.name)
        if p.name.endswith(".txt")
    ]


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
        raise ConfigError(
            f"task.query_dataset={dataset!r}: use 'books' or a path to a JSONL file of {{\"text\": ...}} records"
        )
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

    def sample(self, n: int, key: object) -> list[TaskQuery]:
        rng = random.Random(f"{key}-{self.split}")
        seen: set[tuple[str, int]] = set()
        queries: list[TaskQuery] = []
        tries = 0
        while len(queries) < n:
            tries += 1
            if tries > 50 * n + 1000:
                raise DataError(
                    f"could only cut {len(queries)} of {n} {self.split} queries from {self.task.query_dataset!r}"
                )
            name, text = self.sources[rng.randrange(len(self.sources))]
            pos = rng.randrange(max(1, len(text) - self.task.query_length * 8))
            ids = self._cut(text, pos)
            if ids is None or (name, pos) in seen:
                continue
            seen.add((name, pos))
            queries.append(
                TaskQuery(id=f"{self.split}-{key}-{len(queries):06d}", text=self.tokenizer.decode(ids), ids=ids)
            )
        return queries
