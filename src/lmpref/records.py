"""Records that cross a boundary between rooms: what a task hands to sampling (`TaskQuery`), and the
header by which a programmatic labeler announces itself to the labeling app (`PROGRAM_HEADER`).
Plain data only: no torch, so the store and the web app may import it."""

from __future__ import annotations

from dataclasses import dataclass

PROGRAM_HEADER = "X-Lmpref-Labeler"  # sent by `lmpref label-worker`; the app counts those labels apart


@dataclass
class TaskQuery:
    id: str
    text: str
    ids: list[int]
    extra: dict | None = None  # e.g. a reference summary
