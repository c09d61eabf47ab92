"""Records that cross a boundary between rooms: what a task hands to sampling (`TaskQuery`), and the
header by which a programmatic labeler announces itself to the labeling app (`PROGRAM_HEADER`).
Plain data only: no torch, so the store and the web app may import it."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmpref.io import DataError

PROGRAM_HEADER = "X-Lmpref-Labeler"  # sent by `lmpref label-worker`; the app counts those labels apart


@dataclass
class TaskQuery:
    id: str
    text: str
    ids: list[int]
    extra: dict | None = None  # e.g. a reference summary


# ---------------------------------------------------------------- file records
# The two JSONL schemas that cross rooms: sampling writes `SampleRecord`s (samples.jsonl) that the
# labelers, the reward step and the label store read; the labelers and the store's export write
# `LabelRecord`s (labels.jsonl) that the reward model's reader reads. Each schema is checked here,
# once; a reader adds only its own limits (the store's text sizes, the reward step's token ids).

MAX_ID = 128  # characters of a record id


def _where(where: str, rid: object = None) -> str:
    at = f"{where}: " if where else ""
    return f"{at}record {rid}: " if isinstance(rid, str) and rid else at


def _int_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def _check_common(rec: object, where: str) -> tuple[str, str, list[str]]:
    """id, query and responses, the fields both schemas share."""
    if not isinstance(rec, dict):
        raise DataError(f"{_where(where)}a record must be a JSON object")
    rid = rec.get("id")
    if not isinstance(rid, str) or not 0 < len(rid) <= MAX_ID:
        raise DataError(f"{_where(where)}record 'id' must be a string of 1-{MAX_ID} characters")
    at = _where(where, rid)
    if not isinstance(rec.get("query"), str):
        raise DataError(f"{at}'query' must be a string")
    responses = rec.get("responses")
    if not isinstance(responses, list) or not responses or not all(isinstance(r, str) for r in responses):
        raise DataError(f"{at}'responses' must be a non-empty list of strings")
    if "query_ids" in rec and rec["query_ids"] is not None and not _int_list(rec["query_ids"]):
        raise DataError(f"{at}'query_ids' must be a list of token ids")
    k = len(responses)
    for key in ("valid", "response_ids", "policies"):
        if key in rec and rec[key] is not None and (not isinstance(rec[key], list) or len(rec[key]) != k):
            raise DataError(f"{at}'{key}' must have one entry per response ({k})")
    ids = rec.get("response_ids")
    if ids is not None and not all(r is None or _int_list(r) for r in ids):
        raise DataError(f"{at}'response_ids' must hold a list of token ids per response")
    return rid, rec["query"], responses


@dataclass(frozen=True)
class SampleRecord:
    """One query and its K responses: a line of samples.jsonl (`lmpref sample`, the experiment's
    rounds, `lmpref evaluate`'s enqueues) and what the label store enqueues. Responses are stored
    cut by the truncation rule; `valid[i]` is False where the rule found no end (never shown)."""

    id: str
    query: str
    responses: list[str]
    query_ids: list[int] | None = None
    response_ids: list[list[int] | None] | None = None
    valid: list[bool] | None = None  # None: every response is valid
    policy: str = ""  # the policy that sampled every response ...
    policies: list[str] | None = None  # ... or one per response (comparisons of several policies)
    seed: int | None = None
    kind: str = "compare"  # "compare" (pick the best) | "accuracy" (rate one response)
    best: int | None = None  # a gold record's known best response
    extra: dict = field(default_factory=dict)  # any other key, kept as is (reference, doc_id, note, ...)

    KEYS = (
        "id",
        "query",
        "responses",
        "query_ids",
        "response_ids",
        "valid",
        "policy",
        "policies",
        "seed",
        "kind",
        "best",
    )

    @property
    def k(self) -> int:
        return len(self.responses)

    def is_valid(self, i: int) -> bool:
        return True if self.valid is None else bool(self.valid[i])

    def policy_of(self, i: int) -> str:
        return self.policies[i] if self.policies is not None else self.policy

    @classmethod
    def from_json(cls, rec: object, where: str = "") -> SampleRecord:
        """Check a parsed JSON object against the schema; DataError names the record and the field."""
        rid, query, responses = _check_common(rec, where)
        assert isinstance(rec, dict)
        at = _where(where, rid)
        if "policies" not in rec and not isinstance(rec.get("policy", ""), str):
            raise DataError(f"{at}'policy' must be a string")
        kind = rec.get("kind", "compare")
        if kind not in ("compare", "accuracy"):
            kind = "compare"  # an unknown kind is a comparison (records of other tools carry their own "kind")
        if kind == "accuracy" and len(responses) != 1:
            raise DataError(f"{at}an accuracy record has exactly one response, not {len(responses)}")
        best = rec.get("best")
        if not isinstance(best, int) or isinstance(best, bool) or not 0 <= best < len(responses):
            best = None  # not a known best (a gold record's is checked where gold is asked for)
        valid = rec.get("valid")
        return cls(
            id=rid,
            query=query,
            responses=list(responses),
            query_ids=rec.get("query_ids"),
            response_ids=rec.get("response_ids"),
            valid=None if valid is None else [bool(v) for v in valid],
            policy=str(rec.get("policy", "")),
            policies=None if rec.get("policies") is None else [str(p) for p in rec["policies"]],
            seed=rec.get("seed"),
            kind=kind,
            best=best,
            extra={key: v for key, v in rec.items() if key not in cls.KEYS or (key == "best" and best is None)},
        )

    def to_json(self) -> dict:
        rec: dict = {"id": self.id, "query": self.query, "query_ids": self.query_ids, "responses": self.responses}
        rec["response_ids"] = self.response_ids
        rec["valid"] = self.valid
        if self.policies is not None:
            rec["policies"] = self.policies
        else:
            rec["policy"] = self.policy
        rec["seed"] = self.seed
        if self.kind != "compare":
            rec["kind"] = self.kind
        if self.best is not None:
            rec["best"] = self.best
        rec = {key: v for key, v in rec.items() if v is not None}
        rec.update(self.extra)
        return rec


@dataclass(frozen=True)
class LabelRecord:
    """A best-of-K label: the responses shown (valid ones only, in the order shown), the index of
    the one chosen, or a tie. A line of labels.jsonl (`lmpref label`, the store's `bestofk`
    export) and what `lmpref train-reward` reads in lmpref's own schema."""

    id: str
    query: str
    responses: list[str]
    best: int  # -1 for a tie
    tie: bool = False
    labeler: str = ""
    query_ids: list[int] | None = None
    response_ids: list[list[int] | None] | None = None
    extra: dict = field(default_factory=dict)  # policies, batch, seconds, critique, reference, doc_id, ...

    KEYS = ("id", "query", "responses", "best", "tie", "labeler", "query_ids", "response_ids")

    @classmethod
    def from_json(cls, rec: object, where: str = "") -> LabelRecord:
        rid, query, responses = _check_common(rec, where)
        assert isinstance(rec, dict)
        at = _where(where, rid)
        tie = rec.get("tie", False)
        if not isinstance(tie, bool):
            raise DataError(f"{at}'tie' must be true or false, got {tie!r}")
        best = rec.get("best", -1 if tie else None)
        if tie:
            best = -1
        elif not isinstance(best, int) or isinstance(best, bool) or not 0 <= best < len(responses):
            raise DataError(f"{at}'best' must be an integer index in [0, {len(responses)}), got {best!r}")
        return cls(
            id=rid,
            query=query,
            responses=list(responses),
            best=best,
            tie=tie,
            labeler=str(rec.get("labeler", "")),
            query_ids=rec.get("query_ids"),
            response_ids=rec.get("response_ids"),
            extra={key: v for key, v in rec.items() if key not in cls.KEYS},
        )

    def to_json(self) -> dict:
        rec: dict = {"id": self.id, "query": self.query, "responses": self.responses, "best": self.best}
        rec.update(tie=self.tie, labeler=self.labeler)
        if self.query_ids is not None:
            rec["query_ids"] = self.query_ids
        if self.response_ids is not None:
            rec["response_ids"] = self.response_ids
        rec.update(self.extra)
        return rec
