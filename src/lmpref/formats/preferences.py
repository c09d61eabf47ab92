"""Preference data in and out: other tools' preference datasets -> lmpref's best-of-K labels
(`LabelRecord`), and labels -> the TRL-standard preference format.

Read (a local file or directory, through the `datasets` library, or a Hub id when it is reachable):
  pairwise     `prompt` / `chosen` / `rejected`, text or chat messages ([{role, content}, ...]);
               without `prompt` the query is the shared prefix through its last "Assistant:" (dialogues
               such as "\\n\\nHuman: ...\\n\\nAssistant: ...") and the responses are what differs;
  labeled      `answer_a` / `answer_b` (or `response_a` / `response_b`) plus a label naming the better one;
  scored       a list of completions with scores (UltraFeedback) or ranks -> best of K, a tie when the
               top scores are equal;
  lmpref's own labels (`lmpref label`, `lmpref export-labels --format bestofk | pairwise`).
Each label's `doc_id` is a hash of its query, so a hold-out split by `doc_id` keeps a prompt on one side.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmpref.io import DataError, atomic_dir, read_json_or_jsonl, write_jsonl
from lmpref.records import MAX_ID, LabelRecord

ASSISTANT = "Assistant:"
ROLES = {"user": "Human", "human": "Human", "assistant": "Assistant", "system": "System"}
PROMPT_COLUMNS = ("prompt", "instruction", "query", "question")
SCORE_KEYS = ("overall_score", "score", "rating", "reward")
A_LABELS = {"a", "0", "answer_a", "response_a", "model_a", "first"}
B_LABELS = {"b", "1", "answer_b", "response_b", "model_b", "second"}
TIE_LABELS = {"tie", "tie (bothbad)", "equal", "both", "neither"}
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


@dataclass(frozen=True)
class Columns:
    """Column names, when a dataset's differ from the usual ones (None: look for the usual ones)."""

    prompt: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    a: str | None = None
    b: str | None = None
    label: str | None = None
    responses: str | None = None
    scores: str | None = None
    ranks: bool = False  # the scores are ranks: lower is better


def doc_id_of(query: str) -> str:
    """The prompt's id: labels of one prompt share it and so one side of the hold-out split."""
    return hashlib.sha1(query.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- loading rows


def load_rows(source: str | Path, split: str = "train") -> list[dict[str, Any]]:
    """The rows of a local file (JSONL, JSON, Parquet, CSV, Arrow), a local directory (a
    `save_to_disk` dataset or data files) or a Hub dataset id, as plain dicts."""
    import datasets

    datasets.disable_progress_bars()
    path = Path(source)
    ds: Any
    try:
        if path.is_dir():
            if any((path / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
                ds = datasets.load_from_disk(str(path))
                if isinstance(ds, datasets.DatasetDict):
                    if split not in ds:
                        raise DataError(f"{path}: no split {split!r} (it has {', '.join(ds)}); choose one with --split")
                    ds = ds[split]
            else:
                ds = datasets.load_dataset(str(path), split=split)
        elif path.is_file():
            builder = BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise DataError(
                    f"{path}: unknown file type {path.suffix!r}; use .jsonl, .json, .parquet, .csv or .arrow"
                )
            try:
                ds = datasets.load_dataset(builder, data_files=str(path), split="train")
            except DataError:
                raise
            except Exception:
                if builder != "json":
                    raise
                # JSON whose rows differ in type (token ids next to nulls) is still readable row by row.
                return [row for _, row in read_json_or_jsonl(path)]
        else:
            return _load_hub(str(source), split)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{source}: could not be read as a dataset ({type(e).__name__}: {_one_line(e)})") from None
    return [dict(row) for row in ds]


def _load_hub(name: str, split: str) -> list[dict[str, Any]]:
    import datasets

    if name.count("/") > 1 or name.startswith((".", "/", "~")):
        raise DataError(f"{name}: no such file or directory")
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as e:
        raise DataError(
            f"{name}: not a local file or directory, and the Hugging Face Hub dataset could not be loaded "
            f"({type(e).__name__}: {_one_line(e)}); download it and pass the local path"
        ) from None
    return [dict(row) for row in ds]


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200] + ("..." if len(text) > 200 else "")


# ---------------------------------------------------------------- rows -> labels


def read_preferences(
    source: str | Path, columns: Columns | None = None, *, split: str = "train", labeler: str = ""
) -> list[LabelRecord]:
    """Every row of `source` as a best-of-K label (DataError names the file, the row and the column)."""
    rows = load_rows(source, split)
    if not rows:
        raise DataError(f"{source}: no rows")
    return rows_to_labels(rows, str(source), columns or Columns(), labeler=labeler)


def native_label_rows(source: str | Path) -> list[dict[str, Any]] | None:
    """The rows of a file the reward model's own reader takes as it is (it has the tokenizer and
    reads token ids): lmpref's label JSONL ({query, responses, best}, `lmpref label`, the store's
    bestofk export) and OpenAI's released files ({query, sample0..3, best}: GPT-2 token ids); None
    for anything else."""
    path = Path(source)
    if not path.is_file() or path.suffix.lower() not in (".json", ".jsonl"):
        return None
    rows = read_json_or_jsonl(path)
    if not rows:
        return None
    first = rows[0][1]
    if "sample0" in first or ("responses" in first and ("best" in first or "tie" in first)):
        return [row for _, row in rows]
    return None


def rows_to_labels(
    rows: list[dict[str, Any]], source: str, columns: Columns, *, labeler: str = ""
) -> list[LabelRecord]:
    keys = set(rows[0])
    shape = _shape(keys, columns, source)
    stem = Path(source).stem[:60] or "row"
    labels = []
    for i, row in enumerate(rows, 1):
        where = f"{source}: row {i}"
        label = shape(row, where, columns)
        rid = row.get("id")
        rid = rid if isinstance(rid, str) and 0 < len(rid) <= MAX_ID else f"{stem}-{i}"
        extra = {k: v for k, v in label.extra.items() if v is not None}
        doc_id = row.get("doc_id")
        extra["doc_id"] = str(doc_id) if isinstance(doc_id, (str, int)) and doc_id != "" else doc_id_of(label.query)
        labels.append(
            LabelRecord(
                id=rid,
                query=label.query,
                responses=label.responses,
                best=label.best,
                tie=label.tie,
                labeler=label.labeler or labeler or stem,
                query_ids=label.query_ids,
                response_ids=label.response_ids,
                extra=extra,
            )
        )
    return labels


def _shape(keys: set[str], c: Columns, source: str):
    """The reader for rows with these columns."""
    if "sample0" in keys:
        raise DataError(
            f"{source}: OpenAI's token-id comparisons (sample0..3) need the GPT-2 tokenizer to read: pass the file "
            "to `lmpref train-reward --labels` directly"
        )
    if c.responses is None and c.scores is None and "responses" in keys and ("best" in keys or "tie" in keys):
        return _own
    if c.chosen or c.rejected or keys & {"chosen", "rejected"}:
        return _pairwise
    a, b = _ab_columns(keys, c)
    if a and b:
        return _labeled
    if c.responses or c.scores or "completions" in keys or "responses" in keys:
        return _scored
    if "rating" in keys or "answer" in keys:
        raise DataError(
            f"{source}: accuracy ratings or critiques, not comparisons; export comparisons with --format bestofk "
            "or pairwise"
        )
    raise DataError(
        f"{source}: no preference columns found (it has {', '.join(sorted(keys))}); expected prompt/chosen/rejected, "
        "answer_a/answer_b + label, completions with scores, or lmpref's {query, responses, best}; name other columns "
        "with --chosen-col, --rejected-col, --prompt-col, --a-col, --b-col, --label-col, --responses-col, --scores-col"
    )


def _ab_columns(keys: set[str], c: Columns) -> tuple[str | None, str | None]:
    if c.a or c.b:
        return c.a, c.b
    for a, b in (("answer_a", "answer_b"), ("response_a", "response_b")):
        if {a, b} <= keys:
            return a, b
    return None, None


def _get(row: dict[str, Any], col: str, where: str) -> Any:
    if col not in row or row[col] is None:
        raise DataError(f"{where}: missing column {col!r}")
    return row[col]


def _own(row: dict[str, Any], where: str, c: Columns) -> LabelRecord:
    return LabelRecord.from_json({"id": "-"} | {k: v for k, v in row.items() if v is not None}, where)


def messages_of(value: Any, where: str, col: str) -> list[dict[str, str]] | None:
    """Chat messages as [{role, content}], or None for text; anything else is an error."""
    if isinstance(value, str):
        return None
    if isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise DataError(f"{where}: column {col!r} must be text or chat messages (a list of {{role, content}})")


def render_messages(messages: list[dict[str, str]]) -> str:
    """A dialogue as text, in the "\\n\\nHuman: ...\\n\\nAssistant: ..." form."""
    return "".join(f"\n\n{ROLES.get(m['role'].lower(), m['role'].capitalize())}: {m['content']}" for m in messages)


def _reply(messages: list[dict[str, str]]) -> str:
    """The messages that answer a prompt that ends with "Assistant:"."""
    if messages and messages[0]["role"].lower() == "assistant":
        return " " + messages[0]["content"] + render_messages(messages[1:])
    return render_messages(messages)


def _label(query: str, responses: list[str], best: int, **extra: Any) -> LabelRecord:
    return LabelRecord(id="-", query=query, responses=responses, best=best, tie=best < 0, extra=extra)


def _pairwise(row: dict[str, Any], where: str, c: Columns) -> LabelRecord:
    chosen_col, rejected_col = c.chosen or "chosen", c.rejected or "rejected"
    chosen, rejected = _get(row, chosen_col, where), _get(row, rejected_col, where)
    prompt_col = c.prompt or ("prompt" if "prompt" in row else None)
    return _pair(row, where, prompt_col, (chosen_col, chosen), (rejected_col, rejected), 0)


def _pair(
    row: dict[str, Any],
    where: str,
    prompt_col: str | None,
    first: tuple[str, Any],
    second: tuple[str, Any],
    best: int,
) -> LabelRecord:
    m1, m2 = messages_of(first[1], where, first[0]), messages_of(second[1], where, second[0])
    if (m1 is None) != (m2 is None):
        raise DataError(f"{where}: {first[0]!r} and {second[0]!r} must both be text or both be chat messages")
    if prompt_col is not None:
        prompt = _get(row, prompt_col, where)
        pm = messages_of(prompt, where, prompt_col)
        if pm is not None:
            query = render_messages(pm) + "\n\n" + ASSISTANT
            return _label(query, [_reply(m1 or []), _reply(m2 or [])], best, prompt_messages=pm)
        if m1 is not None and m2 is not None:
            return _label(prompt, [_reply(m1), _reply(m2)], best)
        return _label(prompt, [first[1], second[1]], best)
    if m1 is not None and m2 is not None:  # whole conversations: the shared turns are the prompt
        n = 0
        while n < min(len(m1), len(m2)) - 1 and m1[n] == m2[n]:
            n += 1
        pm = m1[:n]
        query = render_messages(pm) + "\n\n" + ASSISTANT
        return _label(query, [_reply(m1[n:]), _reply(m2[n:])], best, prompt_messages=pm)
    a, b = first[1], second[1]
    cut = split_shared_prefix(a, b)
    return _label(a[:cut], [a[cut:], b[cut:]], best)


def split_shared_prefix(a: str, b: str) -> int:
    """Where the query ends in two texts that share it: after the last "Assistant:" of their common
    prefix (dialogues), else at the last whitespace of the common prefix (never mid-word)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    common = a[:n]
    at = common.rfind(ASSISTANT)
    if at >= 0:
        return at + len(ASSISTANT)
    if n == len(a) == len(b):
        return n
    space = max(common.rfind(" "), common.rfind("\n"))
    return space + 1 if space >= 0 else 0


def _labeled(row: dict[str, Any], where: str, c: Columns) -> LabelRecord:
    a, b = _ab_columns(set(row), c)
    if a is None or b is None:
        raise DataError(f"{where}: name both answers with --a-col and --b-col")
    label_col = c.label or next((k for k in ("label", "preference", "winner", "choice", "better") if k in row), None)
    if label_col is None:
        raise DataError(f"{where}: missing column 'label' (the better of {a!r} and {b!r}); name it with --label-col")
    value = str(_get(row, label_col, where)).strip().lower()
    if value in A_LABELS or value == a.lower():
        best = 0
    elif value in B_LABELS or value == b.lower():
        best = 1
    elif value in TIE_LABELS:
        best = -1
    else:
        raise DataError(f"{where}: column {label_col!r} is {value!r}; expected a or b (or 0/1, {a}/{b}, tie)")
    prompt_col = c.prompt or next((k for k in PROMPT_COLUMNS if k in row), None)
    return _pair(row, where, prompt_col, (a, _get(row, a, where)), (b, _get(row, b, where)), best)


def _scored(row: dict[str, Any], where: str, c: Columns) -> LabelRecord:
    prompt_col = c.prompt or next((k for k in PROMPT_COLUMNS if k in row), "prompt")
    prompt = _get(row, prompt_col, where)
    if not isinstance(prompt, str):
        raise DataError(f"{where}: column {prompt_col!r} must be text")
    responses_col = c.responses or ("completions" if "completions" in row else "responses")
    items = _get(row, responses_col, where)
    if not isinstance(items, list) or len(items) < 2:
        raise DataError(f"{where}: column {responses_col!r} must list at least 2 responses")
    texts: list[str] = []
    scores: list[float] = []
    ranks = c.ranks
    if all(isinstance(x, dict) for x in items):  # UltraFeedback: [{response, overall_score, ...}]
        for x in items:
            text = x.get("response", x.get("text", x.get("content")))
            key = c.scores or next((k for k in (*SCORE_KEYS, "rank") if x.get(k) is not None), None)
            if not isinstance(text, str) or key is None or x.get(key) is None:
                raise DataError(
                    f"{where}: each of {responses_col!r} needs a 'response' and a score ({', '.join(SCORE_KEYS)})"
                )
            ranks = ranks or key == "rank"
            texts.append(text)
            scores.append(_number(x[key], where, key))
    else:
        if not all(isinstance(x, str) for x in items):
            raise DataError(f"{where}: column {responses_col!r} must hold texts or {{response, score}} objects")
        texts = list(items)
        score_col = c.scores or next((k for k in ("scores", "ratings", "rewards", "ranks") if k in row), None)
        if score_col is None:
            raise DataError(f"{where}: missing column 'scores' (one per response); name it with --scores-col")
        ranks = ranks or score_col == "ranks"
        values = _get(row, score_col, where)
        if not isinstance(values, list) or len(values) != len(texts):
            raise DataError(f"{where}: column {score_col!r} must hold one score per response ({len(texts)})")
        scores = [_number(v, where, score_col) for v in values]
    keyed = [-s for s in scores] if ranks else scores
    top = max(keyed)
    winners = [i for i, s in enumerate(keyed) if s == top]
    best = winners[0] if len(winners) == 1 else -1
    return _label(prompt, texts, best, scores=scores)


def _number(v: Any, where: str, col: str) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {col!r} must be a number, got {v!r}") from None


# ---------------------------------------------------------------- labels -> TRL


def trl_rows(labels: Iterable[LabelRecord], *, conversational: bool = False) -> list[dict[str, Any]]:
    """TRL's standard preference rows: one {prompt, chosen, rejected} per (best, other) pair of each
    label (K - 1 rows per best-of-K label; ties left out). Conversational rows hold chat messages."""
    rows = []
    for label in labels:
        if label.tie or label.best < 0:
            continue
        chosen = label.responses[label.best]
        for i, other in enumerate(label.responses):
            if i == label.best:
                continue
            if conversational:
                prompt = label.extra.get("prompt_messages") or [{"role": "user", "content": label.query}]
                rows.append(
                    {
                        "prompt": prompt,
                        "chosen": [{"role": "assistant", "content": chosen.strip()}],
                        "rejected": [{"role": "assistant", "content": other.strip()}],
                    }
                )
            else:
                rows.append({"prompt": label.query, "chosen": chosen, "rejected": other})
    return rows


def write_preferences(rows: list[dict[str, Any]], out: str | Path) -> str:
    """JSONL when `out` ends in .jsonl / .json, else a `datasets` dataset saved to the folder `out`
    (`datasets.load_from_disk(out)` reads it). Returns what was written, in words."""
    out = Path(out)
    if out.suffix.lower() in (".jsonl", ".json"):
        write_jsonl(out, rows)
        return f"{out} (JSONL)"
    write_dataset(rows, out)
    return f"{out} (a datasets folder: datasets.load_from_disk({json.dumps(str(out))}))"


def write_dataset(rows: list[dict[str, Any]], out: str | Path) -> None:
    """`rows` as a `datasets` dataset saved to the folder `out`, written whole (a temporary folder,
    then one rename)."""
    import datasets

    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_list(rows)
    with atomic_dir(out) as tmp:
        ds.save_to_disk(str(tmp))
