"""Prompts from a dataset as a task's queries: one column of any dataset that
`lmpref.formats.preferences.load_rows` reads (JSONL, JSON, Parquet, CSV, Arrow, a `save_to_disk`
folder, or a Hub id when the Hub is reachable), as plain text or as chat messages rendered with the
tokenizer's chat template (`apply_chat_template(..., add_generation_prompt=True)`), so a chat model
answers as the assistant.

Each row is one whole prompt (not a text to cut passages from, as `books.py` does). A prompt longer
than `task.query_length` tokens keeps its END: its last turns and the template's assistant header,
which the response must follow (TRL truncates prompts on the left too); one shorter than
`task.min_query_tokens` is skipped. Prompts are split by a hash of their text (`in_eval_split`,
share `task.holdout_fraction` to 'eval'), so the split never depends on file order.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from lmpref.config import ConfigError, TaskConfig
from lmpref.formats.preferences import doc_id_of, load_rows, messages_of
from lmpref.io import DataError
from lmpref.records import TaskQuery
from lmpref.tasks.summarization import cycle_sample, in_eval_split

FORMATS = ("text", "chat")
# Prompt sets shipped with lmpref, by name (task.query_dataset); their provenance is in the folder's README.
SHIPPED = {"tldr-prompts": ("tldr", "chat_prompts.jsonl")}


def dataset_path(name: str) -> str:
    """A shipped prompt set's file, or `name` itself (a path or a Hub id)."""
    if name in SHIPPED:
        folder, file = SHIPPED[name]
        return str(resources.files("lmpref.data") / folder / file)
    return name


def read_prompts(task: TaskConfig) -> list[str | list[dict[str, str]]]:
    """Every row's `task.query_column`: a string ('text'), or chat messages ('chat'; a string is one
    user message). DataError names the file, the column and the columns it has."""
    source = dataset_path(task.query_dataset)
    rows = load_rows(source)
    if not rows:
        raise DataError(f"{source}: no rows")
    col = task.query_column
    if col not in rows[0]:
        raise DataError(f"{source}: no column {col!r} (task.query_column); its columns: {', '.join(sorted(rows[0]))}")
    prompts: list[str | list[dict[str, str]]] = []
    for i, row in enumerate(rows, 1):
        where = f"{source}: row {i}"
        value = row.get(col)
        if value is None:
            raise DataError(f"{where}: column {col!r} is empty")
        messages = messages_of(value, where, col)
        if task.query_format == "text":
            if messages is not None:
                raise DataError(f"{where}: column {col!r} holds chat messages: set task.query_format=chat")
            prompts.append(value)
        else:
            prompts.append(messages if messages is not None else [{"role": "user", "content": value}])
    return prompts


def check_chat_template(tokenizer: Any, task: TaskConfig, model: str) -> None:
    if task.query_format == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"task.query_format=chat needs a chat template, and the tokenizer of {model!r} has none: use a chat "
            "model (e.g. --model smollm2-135m) or task.query_format=text"
        )


def prompt_ids(tokenizer: Any, prompt: str | list[dict[str, str]], query_length: int) -> list[int]:
    """The prompt's token ids (a chat rendered with the generation prompt), cut to its last
    `query_length` tokens."""
    if isinstance(prompt, list):
        prompt = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    ids = tokenizer.encode(prompt, add_special_tokens=False)
    return ids[-query_length:]


class PromptSource:
    """The queries of a prompt dataset; `sample(n, key)` is a pure function of its arguments (a seeded
    shuffle of the split's prompts, repeated in fresh shuffles when n exceeds them)."""

    def __init__(self, tokenizer, task: TaskConfig, split: str = "train", model: str = ""):
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
        if task.query_format not in FORMATS:
            raise ConfigError(f"task.query_format={task.query_format!r}: use text or chat")
        check_chat_template(tokenizer, task, model)
        self.tokenizer, self.task, self.split = tokenizer, task, split
        self.pool: list[TaskQuery] = []
        seen: set[str] = set()
        for prompt in read_prompts(task):
            ids = prompt_ids(tokenizer, prompt, task.query_length)
            doc_id = doc_id_of(tokenizer.decode(ids))
            if doc_id in seen or len(ids) < task.min_query_tokens:
                continue
            seen.add(doc_id)
            if in_eval_split(doc_id, task.holdout_fraction) == (split == "eval"):
                self.pool.append(TaskQuery(id=doc_id, text=tokenizer.decode(ids), ids=ids, extra={"doc_id": doc_id}))
        if not self.pool:
            raise DataError(
                f"task.query_dataset={task.query_dataset!r}: no {split} prompt of at least task.min_query_tokens="
                f"{task.min_query_tokens} tokens (holdout_fraction={task.holdout_fraction})"
            )

    def sample(self, n: int, key: object) -> list[TaskQuery]:
        return cycle_sample(self.pool, n, f"{key}-{self.split}")


def check_task(task: TaskConfig) -> None:
    """What can be checked of the task without a model: the prompt dataset's column and values."""
    if not task.query_column:
        return
    if task.query_dataset in ("books", "cnndm", "tldr"):
        raise ConfigError(
            f"task.query_column={task.query_column!r} reads a prompt dataset; task.query_dataset="
            f"{task.query_dataset!r} is a built-in task: give a file, folder or Hub id, or unset task.query_column"
        )
    if task.query_format not in FORMATS:
        raise ConfigError(f"task.query_format={task.query_format!r}: use text or chat")
    read_prompts(task)
