"""The automatic guards: plain functions of numbers and label rows, tested with literal values, used by
`lmpref train-policy` and the experiment loop. A guard returns the reason to pull the Andon cord, or None.

The guards watch for the failures the paper reports or that a sign error produces:
- a reward model that does not prefer the labeled-best sample on held-out labels (a flipped sign
  scores *below* chance, and PPO would then optimise against the labelers);
- reward hacking: the policy's reward rising while the labelers' win rate over rho falls
  (the paper's "smart copier" summaries fooled the reward model, not the people; §4.2);
- KL(pi || rho) far above the adaptive controller's target (the policy has run off).
"""

from __future__ import annotations

from pathlib import Path


def reward_guard(accuracy: float, chance: float, n: int, margin: float) -> str | None:
    """Before PPO: the reward model must pick the labeled-best sample more often than chance (+ margin)."""
    if margin < 0:
        return None
    if n == 0:
        return (
            "guard: the reward model has no held-out labels to be checked on "
            "(collect more labels or raise reward.holdout_fraction)"
        )
    if accuracy <= chance + margin:
        flipped = " (below chance: is the reward's sign flipped?)" if accuracy < chance else ""
        return (
            f"guard: the reward model picks the labeled-best sample on {accuracy:.1%} of {n} held-out labels, "
            f"not above chance {chance:.1%} + margin {margin:.1%}{flipped}; PPO was not started"
        )
    return None


def hacking_guard(rounds: list[dict], win_drop: float, min_labels: int) -> str | None:
    """Reward hacking: between the last two rounds with enough validation labels, the policy's mean
    reward (`policy_score`) rose while the labelers' win rate over rho fell by more than `win_drop`."""
    judged = [r for r in rounds if r.get("n_validation", 0) >= min_labels and r.get("policy_score") is not None]
    if len(judged) < 2:
        return None
    a, b = judged[-2], judged[-1]
    if b["policy_score"] > a["policy_score"] and b["win_rate"] < a["win_rate"] - win_drop:
        return (
            f"guard: reward hacking? mean reward rose {a['policy_score']:.3f} -> {b['policy_score']:.3f} while the "
            f"labelers' win rate over rho fell {a['win_rate']:.1%} -> {b['win_rate']:.1%} (rounds {a['round']} -> "
            f"{b['round']})"
        )
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
    on the labels `train_reward` held out (same split, same seed). Returns (accuracy, chance, n).

    It reloads the model on purpose rather than reading `accuracy_after` from lmpref_reward.json:
    that figure is measured before the gain and bias are set, so a negated gain (a flipped sign,
    the paper's bug; tests/test_experiment.py) shows only in the model as saved."""
    from lmpref.core.loading import load_tokenizer
    from lmpref.core.reward import RewardModel, accuracy, read_labels, split_labels

    tok = load_tokenizer(str(rm_dir))
    _, heldout = split_labels(read_labels(labels_path, tok), holdout_fraction, seed)
    if not heldout:
        return float("nan"), float("nan"), 0
    rm = RewardModel.load(rm_dir).eval()
    chance = sum(1 / len(label.response_ids) for label in heldout) / len(heldout)
    return accuracy(rm, heldout, tok.pad_token_id, desc="saved reward model, held-out labels"), chance, len(heldout)


def fingerprint(rm, pairs, pad_id: int) -> dict:
    """A few (query, response) pairs and the rewards the trained model gives them, kept in
    lmpref_reward.json: whoever loads the model later can check it still scores as it did."""
    from lmpref.core.reward import score_pairs

    pairs = [(list(q), list(r)) for q, r in pairs[:8]]
    return {"pairs": pairs, "rewards": score_pairs(rm, pairs, pad_id).tolist()} if pairs else {}


def saved_reward_guard(rm_dir: Path, margin: float, holdout_fraction: float, seed: int) -> tuple[dict, str | None]:
    """Measure what PPO will load: the reward model reloaded from `rm_dir`. (1) It must score its
    fingerprint pairs as it did when trained (a gain or bias negated or changed in config.json, a
    wrong folder); (2) on the labels it was trained from (named in lmpref_reward.json, when still
    there) its held-out accuracy must beat chance (`reward_guard`). Returns (measurements, the
    reason to stop or None)."""
    import json

    from lmpref.core.loading import load_tokenizer
    from lmpref.core.reward import RewardModel, score_pairs

    meta_path = Path(rm_dir) / "lmpref_reward.json"
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else {}
    rm = RewardModel.load(rm_dir).eval()
    tok = load_tokenizer(str(rm_dir))
    seen: dict = {}
    fp = meta.get("fingerprint") or {}
    if fp.get("pairs"):
        now = score_pairs(rm, [tuple(p) for p in fp["pairs"]], tok.pad_token_id).tolist()
        was = fp["rewards"]
        diff = sum(abs(a - b) for a, b in zip(now, was)) / len(was)
        scale = sum(abs(b) for b in was) / len(was)
        seen["fingerprint_diff"] = diff
        if diff > 0.05 + 0.05 * scale:
            agree = sum((a > 0) == (b > 0) for a, b in zip(now, was))
            flipped = " (opposite signs: is its gain or bias negated?)" if agree < len(was) / 2 else ""
            return seen, (
                f"guard: the reward model in {rm_dir} does not score as it did when trained: rewards "
                f"{', '.join(f'{b:.2f}' for b in was[:3])} then, {', '.join(f'{a:.2f}' for a in now[:3])} now "
                f"(mean difference {diff:.2f}){flipped}; check its config.json (lmpref_reward_gain, "
                "lmpref_reward_bias) or retrain it"
            )
    labels = Path(meta["labels"]) if meta.get("labels") else None
    if labels is None or not labels.exists():
        return seen, None
    acc, chance, n = heldout_accuracy(
        Path(rm_dir), labels, meta.get("holdout_fraction", holdout_fraction), meta.get("seed", seed)
    )
    seen.update(accuracy=acc, chance=chance, n_heldout=n)
    return seen, reward_guard(acc, chance, n, margin) if n else None


def _slope(ys: list[float]) -> float:
    """Least-squares slope of ys against 0, 1, 2, ..."""
    n = len(ys)
    mx, my = (n - 1) / 2, sum(ys) / n
    return sum((x - mx) * (y - my) for x, y in enumerate(ys)) / sum((x - mx) ** 2 for x in range(n))


def direction_guard(rows: list[dict], window: int) -> str | None:
    """During PPO: over the last `window` updates the reward model's score of the policy's samples
    (`objective/scores`) fell while the score PPO is fed (`ppo/scores_seen`, read back from the
    shaped rewards; RLOO's `rloo/scores_seen`) rose. PPO is then improving its objective by going
    against the reward model: a sign flipped inside PPO, the paper's overnight bug (Ziegler et al.
    2019, §4.4). In a sound run the two are the same number, so this never fires on noise."""
    if window < 2:
        return None
    seen_key = lambda r: "ppo/scores_seen" if "ppo/scores_seen" in r else "rloo/scores_seen"  # noqa: E731
    tail = [r for r in rows if "objective/scores" in r and seen_key(r) in r][-window:]
    if len(tail) < window:
        return None
    scores, seen = [r["objective/scores"] for r in tail], [r[seen_key(r)] for r in tail]
    if _slope(scores) < 0 < _slope(seen):
        return (
            f"guard: over PPO updates {tail[0]['step']}-{tail[-1]['step']} the reward model's score of the policy's "
            "samples fell "
            f"{scores[0]:.3f} -> {scores[-1]:.3f} while the score PPO maximises rose {seen[0]:.3f} -> {seen[-1]:.3f}: "
            "PPO is optimising against the reward model (a sign flipped inside PPO?)"
        )
    return None


def gold_guard(labelers: list[tuple[str, int, int]], chance: float, min_answered: int) -> str | None:
    """Inverted labels (a labeler who picks the worst): a reward model trained on them agrees with
    its own held-out labels, so only a known answer shows it. `labelers` are (name, gold tasks
    answered, answered right) from the store's quality report; a labeler with at least
    `min_answered` gold answers whose 95% interval of gold accuracy lies below `chance` stops the run."""
    from lmpref.eval.winrate import wilson_interval

    for name, answered, correct in labelers:
        if answered >= max(1, min_answered):
            lo, hi = wilson_interval(correct, answered)
            if hi < chance:
                return (
                    f"guard: labeler {name} picks the known best on {correct / answered:.1%} of {answered} gold tasks "
                    f"(95% CI {lo:.1%}-{hi:.1%}), below chance {chance:.1%}: inverted labels? Deactivate the labeler "
                    "(lmpref labelers) and drop their labels before resuming"
                )
    return None


def win_rate_guard(rounds: list[dict], min_labels: int) -> str | None:
    """The labelers' win rate of the policy over rho falling on its own, whatever the reward does:
    between the first and the last round with at least `min_labels` validation labels, the two 95%
    intervals do not overlap and the later one is lower. (A policy that gets worse for the people
    who judge it is going the wrong way, sign flip or not.)"""
    from lmpref.eval.winrate import wilson_interval

    judged = [r for r in rounds if r.get("n_validation", 0) >= max(1, min_labels) and r.get("win_rate") is not None]
    if len(judged) < 2:
        return None
    a, b = judged[0], judged[-1]
    a_lo, a_hi = wilson_interval(a["win_rate"] * a["n_validation"], a["n_validation"])
    b_lo, b_hi = wilson_interval(b["win_rate"] * b["n_validation"], b["n_validation"])
    if b_hi < a_lo:
        return (
            f"guard: the labelers' win rate of the policy over rho fell {a['win_rate']:.1%} (95% CI "
            f"{a_lo:.1%}-{a_hi:.1%}, "
            f"n={a['n_validation']}) -> {b['win_rate']:.1%} (95% CI {b_lo:.1%}-{b_hi:.1%}, n={b['n_validation']}) "
            f"from round {a['round']} to {b['round']}: the policy is getting worse for the people judging it"
        )
    return None
