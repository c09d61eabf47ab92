"""Request (…Create) and response (…Public) bodies of the JSON API.

Bounds here are the first line of validation; the store checks the same things again
because it is also called without the web layer.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from lmpref.store.enqueue import MAX_TEXT
from lmpref.store.models import Rating
from lmpref.store.queue import MAX_NOTE

MAX_K = 16
# No store keeps a NUL (PostgreSQL refuses it); saying so in the schema lets clients (and
# schemathesis) know. The app rejects it everywhere anyway, nested extra keys included.
NO_NUL = r"^[^\x00]*$"
Note = Field(default=None, max_length=MAX_NOTE, pattern=NO_NUL)


class Strict(BaseModel):
    # strict: `false` is not a number and "1" not an integer (lax mode coerced both).
    model_config = ConfigDict(extra="forbid", strict=True)


class LabelerCreate(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    role: Literal["labeler", "admin"] = "labeler"


class LabelerPublic(BaseModel):
    name: str
    role: str
    active: bool
    created_at: dt.datetime


class LabelerCreated(LabelerPublic):
    token: str = Field(description="Shown once; only its hash is stored.")


class SamplePublic(BaseModel):
    position: int = Field(description="What to send back as `best`; samples are shuffled per labeler.")
    text: str
    copied_fraction: float = Field(description="Share of the words copied verbatim from the context.")
    copied_spans: list[tuple[int, int]] = Field(description="[start, end) character ranges copied from the context.")
    context_spans: list[tuple[int, int]] = Field(
        default_factory=list, description="[start, end) character ranges of the context those copies came from."
    )


class TaskPublic(BaseModel):
    task_id: int
    run: str
    kind: Literal["compare", "accuracy"] = Field(
        description="compare: send `best` or `tie`; accuracy: one sample, send a `rating`."
    )
    context: str
    samples: list[SamplePublic]
    served_at: dt.datetime
    guidelines: str | None = Field(default=None, description="The run's labeling guidelines, written by an admin.")


class LabelCreate(Strict):
    """A comparison: one of `best`, `tie: true`, or only a `flag` reason. An accuracy task:
    a `rating` (with `critique` as an optional note) or only a `flag` reason."""

    best: int | None = Field(default=None, ge=0, lt=MAX_K, description="Position of the best sample.")
    tie: bool = Field(default=False, description="All samples equally good or bad; the reward loss skips it.")
    ranking: list[int] | None = Field(default=None, max_length=MAX_K, description="Positions, best to worst.")
    critique: str | None = Note
    correction: str | None = Note
    flag: str | None = Note
    rating: Rating | None = Field(default=None, description="Accuracy tasks only.")


class LabelPublic(BaseModel):
    id: int
    task_id: int
    best: int | None = Field(description="Position chosen, as it was shown to this labeler.")
    tie: bool
    rating: str | None
    seconds: float
    too_fast: bool
    flag: str | None
    created_at: dt.datetime


class SkipPublic(BaseModel):
    task_id: int
    status: str


class AndonCreate(Strict):
    reason: str = Field(
        min_length=1, max_length=2000, pattern=r"^[^\x00]*\S[^\x00]*$", description="Why training should stop."
    )
    run: str | None = Field(default=None, max_length=128, pattern=NO_NUL, description="None stops every run.")


class GuidelinesUpdate(Strict):
    text: str = Field(max_length=20_000, pattern=NO_NUL, description="Plain text; blank removes them.")


class AndonClear(Strict):
    note: str = Field(default="", max_length=2000, pattern=NO_NUL)


class AndonPublic(BaseModel):
    id: int
    run: str | None
    reason: str
    pulled_by: str | None
    pulled_at: dt.datetime
    cleared_at: dt.datetime | None
    cleared_by: str | None
    clear_note: str | None


class AndonStatus(BaseModel):
    run: str
    stop: bool = Field(description="True while any event below is open: training must not step.")
    events: list[AndonPublic]


class ProgressPublic(BaseModel):
    run: str
    batch: str | None
    tasks: int
    gold_tasks: int
    labels: int = Field(description="Every label on non-gold tasks, bare flags and too-fast ones included.")
    complete: int
    queue_depth: int
    exportable: int = Field(description="Of `labels`: answers not too fast, the rows a default export holds.")
    flag_only: int = Field(description="Of `labels`: bare flags (never exported).")
    too_fast: int = Field(description="Of `labels`: answers under the minimum time (exported only on request).")


class RunPublic(BaseModel):
    name: str
    gold_rate: float
    batches: list[str]
    progress: ProgressPublic
    guidelines: str | None = None


class SamplingRecord(BaseModel):
    """One line of the sampling JSONL written by `lmpref sample`; other keys are kept as they are."""

    model_config = ConfigDict(extra="allow", strict=True)
    id: str = Field(min_length=1, max_length=128, pattern=NO_NUL)
    query: str = Field(max_length=MAX_TEXT, pattern=NO_NUL)
    query_ids: list[int] | None = None
    responses: list[Annotated[str, Field(max_length=MAX_TEXT, pattern=NO_NUL)]] = Field(min_length=1, max_length=MAX_K)
    response_ids: list[list[int] | None] | None = Field(default=None, max_length=MAX_K)
    valid: list[bool] | None = Field(default=None, max_length=MAX_K, description="False: never shown.")
    policy: str = Field(default="", max_length=256, pattern=NO_NUL)
    policies: list[Annotated[str, Field(pattern=NO_NUL)]] | None = Field(
        default=None, max_length=MAX_K, description="Per-response policy ids."
    )
    best: int | None = Field(default=None, ge=0, lt=MAX_K, description="Gold records only: the right response.")


class EnqueueCreate(Strict):
    records: list[SamplingRecord] = Field(max_length=5000, description="Sampling-JSONL records.")
    batch: str = Field(default="default", min_length=1, max_length=128, pattern=NO_NUL)
    redundancy: int = Field(default=1, ge=1, le=100)
    gold: bool = False
    gold_rate: float | None = Field(default=None, ge=0, lt=1)


class EnqueuePublic(BaseModel):
    run: str
    batch: str
    created: int
    existing: int
    too_few_valid: int


class LabelerQualityPublic(BaseModel):
    name: str
    labels: int = Field(description="Every label in scope, gold tasks, bare flags and too-fast ones included.")
    exportable: int = Field(description="Answers on non-gold tasks, not too fast: rows in a default export.")
    gold_answered: int
    gold_accuracy: float | None
    agreement_pairs: int
    agreement: float | None
    labels_per_hour: float | None
    median_seconds: float | None
    too_fast: int
    flagged: int
    skipped: int


class QualityPublic(BaseModel):
    run: str | None
    alpha: float | None = Field(description="Krippendorff's alpha (nominal) over tasks with 2+ answers.")
    alpha_units: int
    labelers: list[LabelerQualityPublic]
    queues: list[ProgressPublic]
