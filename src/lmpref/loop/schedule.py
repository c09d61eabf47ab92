"""The loop's plan: how many comparisons by the end of each round, where PPO segments end, and the
names of online label batches (`round-003`, `round-003-u0040`)."""

from __future__ import annotations

import re

_BATCH = re.compile(r"round-(\d{3,})(?:-u\d+)?")


def label_schedule(total: int, rounds: int, power: float) -> list[int]:
    """Cumulative comparisons wanted by the end of each round: total * ((r+1)/rounds) ** power.
    power < 1 front-loads labels (the paper collected more early, when the policy changes fastest).
    Each round gets at least one; the last target is `total`."""
    targets, prev = [], 0
    for r in range(rounds):
        want = round(total * ((r + 1) / rounds) ** power)
        prev = min(total - (rounds - 1 - r), max(prev + 1, want))
        targets.append(prev)
    return targets


def segment_ends(num_updates: int, rounds: int) -> list[int]:
    """The PPO update at which each round's segment ends; equal shares, the last ends the run."""
    return [round((r + 1) * num_updates / rounds) for r in range(rounds)]


def enqueue_interval(every: int, seg_updates: int, comparisons: int, per_batch: int) -> int:
    """`experiment.enqueue_every`, or when 0 the interval at which a segment of `seg_updates` PPO
    updates enqueues about `per_batch` comparisons at a time (one generation batch: fewer would
    waste the sampling pass and the model loads), but never less often than once a segment."""
    if every:
        return every
    return max(1, min(seg_updates, seg_updates * per_batch // max(1, comparisons)))


def online_plan(
    seg_start: int, seg_end: int, every: int, comparisons: int, validation_share: float
) -> list[tuple[int, int, int]]:
    """Online collection during the PPO segment (seg_start, seg_end]: (update, comparisons, of them
    validation) for each enqueue point, i.e. after every `every`-th update of the segment (at least
    after its last; an empty segment enqueues at its start). The segment's `comparisons`, and their
    validation share, are split evenly with cumulative rounding, so the parts sum to what one batch
    would hold; points that get nothing are left out. A pure function of the config: a resumed run
    plans the same batches."""
    points = list(range(seg_start + every, seg_end + 1, every)) or [seg_end]
    plan, prev_n, prev_v = [], 0, 0
    for i, update in enumerate(points, 1):
        n = round(comparisons * i / len(points))
        v = round(validation_share * n)  # cumulative, so a part never holds more validation than comparisons
        if n > prev_n:
            plan.append((update, n - prev_n, v - prev_v))
        prev_n, prev_v = n, v
    return plan


def online_batch(r: int, update: int) -> str:
    """The store batch of round r's comparisons sampled from the policy after `update` (online mode)."""
    return f"round-{r:03d}-u{update:06d}"


def batch_round(name: str) -> int | None:
    """The round whose retrain first trains on a batch (round-NNN or round-NNN-uUUUUUU), else None."""
    m = _BATCH.fullmatch(name)
    return int(m.group(1)) if m else None
