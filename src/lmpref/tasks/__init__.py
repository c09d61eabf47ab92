"""Tasks: where queries come from. `books.py` (book passages, or any text JSONL, to continue) and
`summarization.py` (TL;DR and CNN/DM articles, with references); `make_query_source` picks one from
the config, so neither imports the other."""

from __future__ import annotations

from lmpref.config import TaskConfig
from lmpref.tasks.books import QuerySource
from lmpref.tasks.summarization import SummarizationSource

SUMMARIZATION_DATASETS = ("cnndm", "tldr")


def make_query_source(tokenizer, task: TaskConfig, split: str = "train") -> QuerySource | SummarizationSource:
    """The query source of a task: book passages / text JSONL, or a summarization dataset
    (`cnndm`, `tldr`, or a JSONL path with `task.name` cnndm|tldr) whose queries carry a reference."""
    if task.query_dataset in SUMMARIZATION_DATASETS or task.name in SUMMARIZATION_DATASETS:
        return SummarizationSource(tokenizer, task, split)
    return QuerySource(tokenizer, task, split)
