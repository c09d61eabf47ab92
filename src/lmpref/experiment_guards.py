"""Schedules and automatic guards of the experiment loop: plain functions of numbers and label rows,
tested with literal values. A guard returns the reason to pull the Andon cord, or None.

The guards watch for the failures the paper reports or that a sign error produces:
- a reward model that does not prefer the labeled-best sample on held-out labels (a flipped sign
  scores *below* chance, and PPO would then optimise against the labelers);
- reward hacking: the policy's reward rising while the labelers' win rate over rho falls
  (the paper's "smart copier" summaries fooled the reward model, not the people; §4.2);
- KL(pi || rho) far above the adaptive controller's target (the policy has run off).
"""

from __future__ import annotations

import re
from pathlib import Path

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


def online_plan(seg_start: int, seg_end: int, every: int, comparisons: int, validation_share: float) -> list[tuple[int, int, int]]:
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


def reward_guard(accuracy: float, chance: float, n: int, margin: float) -> str | None:
    """Before PPO: the reward model must pick the labeled-best sample more often than chance (+ margin)."""
    if margin < 0:
        return None
    if n == 0:
        return "guard: the reward model has no held-out labels to be checked on (collect more labels or raise reward.holdout_fraction)"
    if accuracy <= chance + margin:
        flipped = " (below chance: is the reward's sign flipped?)" if accuracy < chance else ""
        return (f"guard: the reward model picks the labeled-best sample on {accuracy:.1%} of {n} held-out labels, "
                f"not above chance {chance:.1%} + margin {margin:.1%}{flipped}; PPO was not started")
    return None


def hacking_guard(rounds: list[dict], win_drop: float, min_labels: int) -> str | None:
    """Reward hacking: between the last two rounds with enough validation labels, the policy's mean
    reward (`policy_score`) rose while the labelers' win rate over rho fell by more than `win_drop`."""
    judged = [r for r in rounds if r.get("n_validation", 0) >= min_labels and r.get("policy_score") is not None]
    if len(judged) < 2:
        return None
    a, b = judged[-2], judged[-1]
    if b["policy_score"] > a["policy_score"] and b["win_rate"] < a["win_rate"] - win_drop:
        return (f"guard: reward hacking? mean reward rose {a['policy_score']:.3f} -> {b['policy_score']:.3f} while the "
                f"labelers' win rate over rho fell {a['win_rate']:.1%} -> {b['win_rate']:.1%} (rounds {a['round']} -> {b['round']})")
    return None


def kl_guard(kl: float, target: float, factor: float) -> str | None:
    """During PPO: KL(pi || rho) of an update far above the controller's target."""
    if factor > 0 and kl > factor * target:
        return f"guard: KL(pi || rho) = {kl:.2f} nats is above {factor:g} x the target {target:g}"
    return None


def validation_win_rate(rows: list[dict]) -> tuple[float, int]:
    """The labelers' win rate of the current policy over rho on validation comparisons (best-of-K
    export rows with `kind` "validation" and `policies`): a pick of a policy sample wins, of a rho
    sample loses, a tie counts half. Returns (win rate, n); nan when there are none."""
    outcomes = []
    for row in rows:
        if row.get("kind") != "validation":
            continue
        outcomes.append(0.5 if row.get("tie") else float(row["policies"][row["best"]].startswith("policy:")))
    return (sum(outcomes) / len(outcomes) if outcomes else float("nan")), len(outcomes)


def heldout_accuracy(rm_dir: Path, labels_path: Path, holdout_fraction: float, seed: int) -> tuple[float, float, int]:
    """Accuracy of the reward model *as saved* (after its final gain and bias: what PPO will load)
    on the labels `train_reward` held out (same split, same seed). Returns (accuracy, chance, n)."""
    from lmpref.models import RewardModel, load_tokenizer
    from lmpref.reward import accuracy, read_labels, split_labels

    tok = load_tokenizer(str(rm_dir))
    _, heldout = split_labels(read_labels(labels_path, tok), holdout_fraction, seed)
    if not heldout:
        return float("nan"), float("nan"), 0
    rm = RewardModel.load(rm_dir).eval()
    chance = sum(1 / len(label.response_ids) for label in heldout) / len(heldout)
    return accuracy(rm, heldout, tok.pad_token_id), chance, len(heldout)
