"""Small file helpers: atomic writes and JSONL with errors that name the file and line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """A malformed input file; the message names the file, the line and what is wrong."""


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says what to use instead. (Defined here,
    not in `models`, so the CLI can catch it without importing torch.)"""


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write through a temporary file in the same directory and rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Write a folder whole: yields a temporary path beside `path` (not yet created) to write into;
    when the block ends without error, `path` is replaced by it in one rename. An error removes the
    temporary folder; a kill leaves the old folder or the new one (and a stale temporary folder that
    the next write clears), never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(path, ignore_errors=True)
    tmp.rename(path)


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(
    path: str | Path, *, on_error: Callable[[DataError], None] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record); a line that is not a JSON object raises DataError naming it, or,
    with `on_error`, is handed to it and skipped (for readers that show what they can, like the
    report). The one JSONL reader of the project; `write_jsonl` is the one writer."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            rec, err = _parse_line(path, lineno, raw)
            if err is not None:
                if on_error is None:
                    raise err
                on_error(err)
            elif rec is not None:
                yield lineno, rec


def _parse_line(path: Path, lineno: int, raw: bytes) -> tuple[dict[str, Any] | None, DataError | None]:
    """One JSONL line: (record, None), (None, None) for a blank line, or (None, the error naming it)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, DataError(
            f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); save the file as "
            "UTF-8"
        )
    if not line.strip():
        return None, None
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        return None, DataError(f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be one JSON object")
    if not isinstance(rec, dict):
        return None, DataError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
    return rec, None


def read_json_or_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """OpenAI's released label files are one JSON list; ours are JSONL. Accept both."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    head = path.read_bytes()[:64].lstrip()[:1] if path.stat().st_size else b""
    if head == b"[":
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text (at byte {e.start}); save the file as UTF-8") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        for i, r in enumerate(data):
            if not isinstance(r, dict):
                raise DataError(
                    f"{path}: item {i + 1} of the list is a {type(r).__name__}, not a label object "
                    "({query, responses, best} or OpenAI's {query, sample0..3, best}); write one object per item"
                )
        return [(i + 1, r) for i, r in enumerate(data)]
    return list(read_jsonl(path))


def read_json_object(path: str | Path) -> dict[str, Any]:
    """A JSON file holding an object (a sidecar a step wrote beside a model), or {} when it is absent,
    unreadable, not JSON or not an object: for optional records a model from elsewhere lacks."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return {}
    return data if isinstance(data, dict) else {}


def require_keys(path: str | Path, lineno: int, rec: dict[str, Any], keys: Iterable[str], what: str) -> None:
    """A record missing a key the step needs is a DataError naming the file, line and keys."""
    missing = [k for k in keys if k not in rec]
    if missing:
        raise DataError(
            f"{path}:{lineno}: {what} record lacks {', '.join(repr(k) for k in missing)}; "
            f"is this the file `lmpref sample --out` wrote?"
        )


def require_records(path: str | Path, records: list, what: str) -> None:
    """An input file with no records at all is an error that names it."""
    if not records:
        raise DataError(
            f"{path}: empty: no {what} in it (run `lmpref sample --out {path}` first, or give another file)"
        )


def check_writable(path: str | Path, flag: str = "--out") -> None:
    """Fail before the work, not after it: `path`'s folder must exist or be creatable, and take a file."""
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".lmpref-write-check-"):
            pass
    except OSError as e:
        raise DataError(f"{flag} {path}: cannot write in {folder} ({e.strerror}); choose a writable folder") from None
