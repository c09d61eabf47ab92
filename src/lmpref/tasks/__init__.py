"""Tasks: where queries come from. `books.py` (book passages, or any text JSONL, to continue),
`summarization.py` (TL;DR and CNN/DM articles, with references) and `prompts.py` (one column of any
dataset, as text or chat); `make_query_source` picks one from the config."""

from __future__ import annotations

from lmpref.config import TaskConfig
from lmpref.tasks.books import QuerySource
from lmpref.tasks.prompts import PromptSource
from lmpref.tasks.summarization import SummarizationSource

SUMMARIZATION_DATASETS = ("cnndm", "tldr")


def make_query_source(
    tokenizer, task: TaskConfig, split: str = "train", model: str = ""
) -> QuerySource | SummarizationSource | PromptSource:
    """The query source of a task: a prompt dataset's column (`task.query_column` set), book passages /
    text JSONL, or a summarization dataset (`cnndm`, `tldr`, or a JSONL path with `task.name`
    cnndm|tldr) whose queries carry a reference. `model` names the tokenizer's model in errors."""
    if task.query_column:
        return PromptSource(tokenizer, task, split, model)
    if task.query_dataset in SUMMARIZATION_DATASETS or task.name in SUMMARIZATION_DATASETS:
        return SummarizationSource(tokenizer, task, split)
    return QuerySource(tokenizer, task, split)
