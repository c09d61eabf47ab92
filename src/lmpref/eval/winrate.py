"""The math of evaluation: win rates judged by a labeler (policy vs reference, and every pair of
policies), people's win rates and accuracy ratings tallied per policy, Wilson intervals, KL, and
the printed table. The steps that sample and write `eval.json` are `lmpref.steps.evaluate`."""

from __future__ import annotations

import math

import torch

from lmpref.eval.labelers import ProgramLabeler
from lmpref.eval.plots import POLICY_COLUMNS, policy_cell


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion (ties count as half a success)."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def judge(
    labeler: ProgramLabeler, query: str, a: str, a_valid: bool, b: str, b_valid: bool, reference: str | None = None
) -> float:
    """1 if `a` wins, 0 if `b` wins, 0.5 for a tie. An invalid response (no sentence end in the
    allowed window: never shown to a labeler) loses to a valid one; two invalid ones tie."""
    if a_valid != b_valid:
        return 1.0 if a_valid else 0.0
    if not a_valid:
        return 0.5
    sa = labeler.score(query, a, reference=reference)
    sb = labeler.score(query, b, reference=reference)
    return 1.0 if sa > sb else 0.0 if sa < sb else 0.5


def win_rate(labeler: ProgramLabeler, pairs: list[dict]) -> dict:
    """pairs: {query, policy_response, policy_valid, ref_response, ref_valid[, reference]}."""
    outcomes = [
        judge(
            labeler,
            p["query"],
            p["policy_response"],
            p["policy_valid"],
            p["ref_response"],
            p["ref_valid"],
            p.get("reference"),
        )
        for p in pairs
    ]
    wins = sum(outcomes)
    lo, hi = wilson_interval(wins, len(outcomes))
    # The same on the pairs a labeler would actually see (both responses valid): separates "writes
    # better" from "learned to end a sentence in the window".
    both = [o for o, p in zip(outcomes, pairs) if p["policy_valid"] and p["ref_valid"]]
    return {
        "win_rate": wins / len(outcomes) if outcomes else float("nan"),
        "win_rate_ci": [lo, hi],
        "n_comparisons": len(outcomes),
        "wins": sum(o == 1.0 for o in outcomes),
        "losses": sum(o == 0.0 for o in outcomes),
        "ties": sum(o == 0.5 for o in outcomes),
        "win_rate_both_valid": sum(both) / len(both) if both else float("nan"),
        "win_rate_both_valid_ci": list(wilson_interval(sum(both), len(both))),
        "n_both_valid": len(both),
    }


def win_rate_over(labeler: ProgramLabeler, pairs: list[dict], name: str, base: str = "ref") -> dict:
    """`win_rate` of policy `name` over `base` on evaluation rows that hold every policy's
    `<name>_response` and `<name>_valid` (eval_samples.jsonl's rows)."""
    return win_rate(
        labeler,
        [
            {
                "query": p["query"],
                "reference": p.get("reference"),
                "policy_response": p[f"{name}_response"],
                "policy_valid": p[f"{name}_valid"],
                "ref_response": p[f"{base}_response"],
                "ref_valid": p[f"{base}_valid"],
            }
            for p in pairs
        ],
    )


def pairwise_win_rates(
    labeler, queries: list[str], responses: dict[str, list[tuple[str, bool]]], references: list[str | None]
) -> list[dict]:
    """Win rate of every policy over every later one on the same queries, judged by the labeler's
    noise-free scores (`evaluate.judge`: an invalid response loses to a valid one).
    responses: {name: [(text, valid)] per query}. One row per unordered pair {a, b, win_rate (of a), ...}."""
    names, rows = list(responses), []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            outcomes = [
                judge(labeler, q, *responses[a][k], *responses[b][k], reference=references[k])
                for k, q in enumerate(queries)
            ]
            wins = sum(outcomes)
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "win_rate": wins / len(outcomes) if outcomes else float("nan"),
                    "win_rate_ci": list(wilson_interval(wins, len(outcomes))),
                    "n": len(outcomes),
                }
            )
    return rows


def human_win_rates(labels: list[dict]) -> list[dict]:
    """Win rates per pair of policies from people's labels (the store's best-of-K export rows with
    `policies`, `best` and `tie`; a tie counts half). One row per unordered pair, as `pairwise_win_rates`."""
    tally: dict[tuple[str, str], list[float]] = {}
    for rec in labels:
        names = rec.get("policies") or []
        if len(names) != 2 or names[0] == names[1]:
            continue
        a, b = sorted(names)
        outcome = 0.5 if rec.get("tie") else float(names[rec["best"]] == a)
        tally.setdefault((a, b), []).append(outcome)
    return [
        {"a": a, "b": b, "win_rate": sum(o) / len(o), "win_rate_ci": list(wilson_interval(sum(o), len(o))), "n": len(o)}
        for (a, b), o in sorted(tally.items())
    ]


def human_accuracy(ratings: list[dict]) -> dict[str, dict]:
    """Per policy, people's ratings (the store's `ratings` export rows): counts, the accurate share
    of all ratings (unsure counts as not accurate) and its 95% Wilson interval."""
    out: dict[str, dict] = {}
    for rec in ratings:
        row = out.setdefault(rec["policy"], {"accurate": 0, "inaccurate": 0, "unsure": 0})
        row[rec["rating"]] += 1
    for row in out.values():
        row["n"] = n = row["accurate"] + row["inaccurate"] + row["unsure"]
        row["accurate_share"] = row["accurate"] / n
        row["ci"] = list(wilson_interval(row["accurate"], n))
    return dict(sorted(out.items()))


@torch.no_grad()
def format_table(result: dict) -> str:
    lo, hi = result["win_rate_ci"]
    rows = [
        ("win rate vs reference (labeler)", f"{result['win_rate']:.1%}  (95% CI {lo:.1%}–{hi:.1%})"),
        (
            "comparisons (wins / losses / ties)",
            f"{result['n_comparisons']}  ({result['wins']} / {result['losses']} / {result['ties']})",
        ),
        (
            "win rate where both are valid",
            f"{result['win_rate_both_valid']:.1%}  (95% CI "
            f"{result['win_rate_both_valid_ci'][0]:.1%}–{result['win_rate_both_valid_ci'][1]:.1%}, "
            f"n={result['n_both_valid']})",
        ),
        (
            "mean reward: policy / reference",
            f"{result['mean_reward']['policy']:+.3f} / {result['mean_reward']['ref']:+.3f}",
        ),
        (
            "labeler score: policy / reference",
            f"{result['labeler_score']['policy']:+.3f} / {result['labeler_score']['ref']:+.3f}",
        ),
        (
            "valid responses: policy / reference",
            f"{result['valid_fraction']['policy']:.1%} / {result['valid_fraction']['ref']:.1%}",
        ),
        ("KL(policy || reference) per episode", f"{result['kl']:.2f} nats"),
    ]
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"  {k:<{w}}  {v}" for k, v in rows)


def format_policies(by_policy: dict[str, dict]) -> str:
    """eval.json's `by_policy` as a printed table, one policy a row."""
    header = ["policy", *(title for _, title in POLICY_COLUMNS)]
    rows = [[name, *(policy_cell(k, row.get(k)) for k, _ in POLICY_COLUMNS)] for name, row in by_policy.items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in [header, *rows]
    )
