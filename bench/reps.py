"""The pure logic of the throughput harness (no torch): shapes, the alternating order of repetitions,
medians, the ratio and the results table. tests/test_bench_reps.py checks it."""

from __future__ import annotations

import statistics

PHASES = ("generation", "logprobs", "reward", "train")


def parse_shape(text: str) -> dict[str, int]:
    """'12x384x6' (blocks x width x heads) -> GPT2Config keywords {n_layer, n_embd, n_head}."""
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"shape {text!r}: expected LAYERSxWIDTHxHEADS, e.g. 12x384x6")
    n_layer, n_embd, n_head = (int(p) for p in parts)
    if n_embd % n_head:
        raise ValueError(f"shape {text!r}: width {n_embd} is not a multiple of {n_head} heads")
    return {"n_layer": n_layer, "n_embd": n_embd, "n_head": n_head}


def shape_name(shape: dict[str, int]) -> str:
    return f"{shape['n_layer']}x{shape['n_embd']}x{shape['n_head']}"


def alternating(systems: list[str], reps: int) -> list[tuple[int, str]]:
    """(rep, system) in the order they run: every system once per repetition, in the given order
    (lmpref, TRL, lmpref, TRL, ...), so slow drifts of the machine's load fall on both alike."""
    if reps < 1:
        raise ValueError("reps must be >= 1")
    return [(r, s) for r in range(1, reps + 1) for s in systems]


def median_row(runs: list[dict]) -> dict:
    """One system's repetitions -> the median of episodes/s and of each phase it reports (phases a
    run lacks are left out), with the count and the spread (min, max) of episodes/s."""
    if not runs:
        raise ValueError("no runs")
    eps = [r["episodes_per_s"] for r in runs]
    out = {"reps": len(runs), "episodes_per_s": statistics.median(eps), "eps_min": min(eps), "eps_max": max(eps)}
    for k in (*PHASES, "cpu_s_per_update"):
        vals = [r[k] for r in runs if r.get(k) is not None]
        if len(vals) == len(runs):
            out[k] = statistics.median(vals)
    return out


def ratio(ours: dict, theirs: dict) -> float:
    """Median episodes/s of one row over another's."""
    return ours["episodes_per_s"] / theirs["episodes_per_s"]


def summarise(results: list[dict], baseline: str = "trl") -> dict[str, dict]:
    """Per-run results {system, episodes_per_s, phases...} -> per-system medians, each with its
    ratio to `baseline` where that system ran."""
    by: dict[str, list[dict]] = {}
    for r in results:
        by.setdefault(r["system"], []).append(r)
    rows = {s: median_row(runs) for s, runs in by.items()}
    if baseline in rows:
        for row in rows.values():
            row["ratio"] = ratio(row, rows[baseline])
    return rows


def table(rows: list[dict]) -> str:
    """Markdown rows of the README's results table: system, device, comparison, shape, batch /
    micro, episodes/s (median of N), the four phases (s per update; '-' where a system does not
    report it) and the ratio to TRL."""

    def f(v, spec=".3g"):
        return "-" if v is None else format(v, spec)

    head = (
        "| system | device | comparison | shape | batch / micro | episodes/s (median) | reps | generation s | "
        "log-probs s | reward s | train s | ratio vs TRL |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['device']} | {r['comparison']} | {r['shape']} | {r['batch']} / {r['micro']} | "
            f"{f(r['episodes_per_s'])} ({f(r['eps_min'])}-{f(r['eps_max'])}) | {r['reps']} | "
            + " | ".join(f(r.get(k)) for k in PHASES)
            + f" | {f(r.get('ratio'), '.2f')} |"
        )
    return "\n".join(lines)
