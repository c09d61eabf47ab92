"""One self-contained HTML page describing a run: tables, inline-SVG plots, samples with copying.

`write_report(run_dir)` reads, when present (a missing file or key leaves a note on the page):

- `eval.json`: `{"win_rate": float, "win_rate_ci": [lo, hi], "n_comparisons": int,
  "mean_reward": {"policy": float, "ref": float}, "kl": float,
  "samples": [{"query": str, "ref_response": str, "policy_response": str, ...}]}`;
  any other numeric keys of a sample (e.g. `policy_score`) are shown with it.
  Optional `policies` ({name: what it is}), `mean_reward_by_policy` and `kl_by_policy` ({name: float}):
  every policy evaluated (PPO / DPO / RLOO policies, checkpoints, best-of-N) in one table, with
  `by_policy` ({name: {"win_rate", "win_rate_both_valid", "labeler_score", "kl", "labels", "episodes",
  "minutes"}}, `lmpref.steps.evaluate.policy_rows`) as its other columns ("—" where a value is missing).
  Optional `pairwise` and `human_pairwise`: `[{"a", "b", "win_rate" (of a), "win_rate_ci", "n"}]`
  (`lmpref evaluate`: judged by the labeler; `--read-human`: by people), each drawn as a table.
  Optional `human_accuracy` (`--read-human` after `--enqueue-accuracy`; `lmpref.eval.winrate.human_accuracy`):
  `{policy: {"accurate", "inaccurate", "unsure", "n", "accurate_share", "ci"}}`, people's ratings
  per policy, drawn as a table (or a note that none were recorded).
- `metrics.jsonl`: one JSON object per PPO update: `step` plus namespaced numbers
  (`objective/scores`, `objective/kl`, `objective/kl_coef`, `ppo/...`, and any other key a trainer
  logs). Every numeric key is plotted against `step`.
- `summary_eval.json` (written by `lmpref evaluate` through `lmpref.eval.metrics.summary_eval`):
  `{"task": "tldr" | "cnndm", "n_documents": int, "policies": {name: stats}}` where `stats` is
  `lmpref.eval.metrics.summary_stats`: `n`, `mean_words`, ROUGE F1 x 100 `rouge1`, `rouge2`, `rougeL`,
  `rougeLsum` (only with references), and in percent `novel_1grams`..`novel_4grams`,
  `novel_sentences`, `copied_words`, `copies_from_start`, `copies_anywhere`,
  `preamble_copies_from_start`, `preamble_copies_anywhere` (None when `preamble_n` is 0).
  Names are free; `lead-3`, `ref` (the initial policy) and `policy` are the usual ones.

The page has no external assets: it renders offline. All text from the run is escaped.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from lmpref.eval.copying import copied_spans
from lmpref.eval.metrics import bigram_lcs, copied_pct, novel_ngram_pct
from lmpref.eval.plots import POLICY_COLUMNS, copy_strip_svg, esc, fmt, line_plot_svg, num, policy_cell, scatter_svg
from lmpref.io import DataError, read_jsonl
from lmpref.text import words

MAX_SAMPLES = 20
# (title, metric keys) drawn first; every other numeric metrics.jsonl key gets its own small plot.
MAIN_PLOTS = (
    ("Reward (reward-model score)", ("objective/scores",)),
    ("KL(policy || reference), nats", ("objective/kl",)),
    ("KL coefficient", ("objective/kl_coef",)),
)
SUMMARY_COLUMNS = (
    ("n", "n"),
    ("mean_words", "words"),
    ("rouge1", "R-1"),
    ("rouge2", "R-2"),
    ("rougeL", "R-L"),
    ("rougeLsum", "R-Lsum"),
    ("novel_1grams", "novel 1g %"),
    ("novel_2grams", "novel 2g %"),
    ("novel_3grams", "novel 3g %"),
    ("novel_4grams", "novel 4g %"),
    ("novel_sentences", "novel sent %"),
    ("copied_words", "copied words %"),
    ("copies_from_start", "copies start %"),
    ("copies_anywhere", "copies %"),
    ("preamble_n", "preamble n"),
    ("preamble_copies_from_start", "preamble: copies start %"),
    ("preamble_copies_anywhere", "preamble: copies %"),
)


# ---------------------------------------------------------------- text with highlights


def highlight(text: str, ranges: Sequence[tuple[int, int]]) -> str:
    """Escaped `text` with the character ranges wrapped in <mark>; overlapping ranges are merged."""
    merged: list[list[int]] = []
    for s, e in sorted(ranges):
        if merged and s <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    out, pos = [], 0
    for s, e in merged:
        out += [esc(text[pos:s]), "<mark>", esc(text[s:e]), "</mark>"]
        pos = e
    out.append(esc(text[pos:]))
    return "".join(out)


def copy_ranges(response: str, context: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Character ranges of the copied words in the response and of their runs in the context."""
    c = copied_spans(response, context)
    return c.spans, c.context_spans


# ---------------------------------------------------------------- sections


def _table(header: Sequence[str] | None, rows: Sequence[Sequence[str]]) -> str:
    """Cells are HTML already (escaped by the caller); the header is plain text."""
    head = "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _interval(ci) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else "–"


def _headline(ev: Mapping) -> str:
    ci_txt = _interval(ev.get("win_rate_ci"))
    mean_reward = ev.get("mean_reward")
    reward: Mapping = mean_reward if isinstance(mean_reward, Mapping) else {}
    rows = [
        ("win rate of policy over reference", f"{fmt(ev.get('win_rate'))} (95% CI {ci_txt})"),
        ("comparisons", fmt(ev.get("n_comparisons"))),
        ("mean reward: policy", fmt(reward.get("policy"))),
        ("mean reward: reference", fmt(reward.get("ref"))),
        ("KL(policy || reference)", fmt(ev.get("kl"))),
    ]
    return _table(None, [(esc(a), b) for a, b in rows])


def _pairwise(rows, judge: str) -> str:
    """eval.json `pairwise` / `human_pairwise`: [{a, b, win_rate (of a), win_rate_ci, n}]."""
    if not isinstance(rows, list) or not rows:
        return f'<p class="note">No win rates judged by {esc(judge)}.</p>'
    cells = []
    for r in rows:
        if not isinstance(r, Mapping):
            continue
        cells.append(
            [
                esc(r.get("a", "?")),
                esc(r.get("b", "?")),
                fmt(r.get("win_rate")),
                _interval(r.get("win_rate_ci")),
                fmt(r.get("n")),
            ]
        )
    return f"<h3>Judged by {esc(judge)}</h3>" + _table(["policy A", "policy B", "A wins", "95% CI", "n"], cells)


def _policies(ev: Mapping) -> str:
    """eval.json `policies` {name: what it is} with `mean_reward_by_policy` and `kl_by_policy`: every
    policy evaluated (trained ones, checkpoints, best-of-N) side by side."""

    def mapping(key: str) -> Mapping:
        value = ev.get(key)
        return value if isinstance(value, Mapping) else {}

    what, reward, kl = mapping("policies"), mapping("mean_reward_by_policy"), mapping("kl_by_policy")
    by_policy = mapping("by_policy")
    names = list(dict.fromkeys([*what, *reward, *by_policy]))
    if not names:
        return '<p class="note">No per-policy results in eval.json.</p>'
    columns = [(k, title) for k, title in POLICY_COLUMNS if k != "kl"]

    def cells(n: str) -> list[str]:
        row = by_policy.get(n)
        row = row if isinstance(row, Mapping) else {}
        values = [(k, row.get(k)) for k, _ in columns]
        return [esc(policy_cell(k, v)) if v is None or isinstance(v, (int, float)) else "—" for k, v in values]

    rows = [
        [esc(n), esc(what.get(n, "")), fmt(reward.get(n)), fmt(kl.get(n, 0.0 if n == "ref" else None)), *cells(n)]
        for n in names
    ]
    return _table(["policy", "what", "mean reward", "KL vs reference (nats)", *(t for _, t in columns)], rows)


def _accuracy(ratings, run) -> str:
    """eval.json `human_accuracy`: {policy: {accurate, inaccurate, unsure, n, accurate_share, ci}}.
    The ratings are categories, not a scale: the accurate share is the mean of accurate = 1,
    inaccurate or unsure = 0, and its interval is Wilson's."""
    rows = [(name, r) for name, r in ratings.items() if isinstance(r, Mapping)] if isinstance(ratings, Mapping) else []
    if not rows:
        return '<p class="note">No accuracy ratings recorded.</p>'
    cells = [
        [
            esc(name),
            fmt(r.get("accurate_share")),
            _interval(r.get("ci")),
            fmt(r.get("n")),
            fmt(r.get("accurate")),
            fmt(r.get("inaccurate")),
            fmt(r.get("unsure")),
        ]
        for name, r in rows
    ]
    return (
        f'<p class="small">Store run {esc(run)}. One summary at a time, rated against its document; '
        "unsure counts as not accurate.</p>"
        + _table(["policy", "accurate share", "95% CI", "n", "accurate", "inaccurate", "unsure"], cells)
    )


def _training_plots(rows: Sequence[Mapping]) -> str:
    keys = sorted({k for r in rows for k, v in r.items() if k != "step" and num(v) is not None})
    if not keys:
        return '<p class="note">metrics.jsonl has no numeric metrics.</p>'

    def series(key):
        return [(r.get("step", i), r[key]) for i, r in enumerate(rows) if key in r]

    plots, used = [], set()
    for title, wanted in MAIN_PLOTS:
        present = [k for k in wanted if k in keys]
        used.update(present)
        if present:
            plots.append(line_plot_svg({k: series(k) for k in present}, title=title))
        else:
            plots.append(f'<p class="note">{esc(title)}: not logged ({esc(", ".join(wanted))}).</p>')
    other = "".join(line_plot_svg({k: series(k)}, title=k, width=300, height=180) for k in keys if k not in used)
    return f'<div class="grid">{"".join(plots)}</div><h3>All other metrics</h3><div class="grid">{other or "–"}</div>'


def _summary_section(se: Mapping) -> str:
    policies = se.get("policies")
    if not isinstance(policies, Mapping) or not policies:
        return '<p class="note">summary_eval.json has no "policies".</p>'
    rows = [
        [esc(name)] + [fmt(st.get(k)) if isinstance(st, Mapping) else "–" for k, _ in SUMMARY_COLUMNS]
        for name, st in policies.items()
    ]
    y_key = next(
        (
            k
            for k in ("rougeLsum", "rougeL", "rouge1")
            if any(isinstance(s, Mapping) and num(s.get(k)) is not None for s in policies.values())
        ),
        None,
    )
    scatter = '<p class="note">No ROUGE (no references), so no novelty-vs-ROUGE plot.</p>'
    if y_key:
        pts = [(n, s.get("novel_2grams"), s.get(y_key)) for n, s in policies.items() if isinstance(s, Mapping)]
        scatter = scatter_svg(pts, title="Novelty vs. ROUGE", xlabel="novel bigrams (%)", ylabel=f"{y_key} F1")
    info = f"task: {esc(se.get('task', '?'))}, documents: {fmt(se.get('n_documents'))}"
    return f"<p>{info}</p>" + _table(["policy"] + [c for _, c in SUMMARY_COLUMNS], rows) + scatter


def _response_cell(name: str, response: str, query: str, extras: Mapping) -> str:
    in_resp, _ = copy_ranges(response, query)
    n_bigrams = max(len(words(query)) - 1, 0)
    strip = copy_strip_svg(n_bigrams, [c for c, _ in bigram_lcs(query, response)], label=f"{name}: copied positions")
    stats = [
        f"copied {fmt(copied_pct(response, query))}%",
        f"novel bigrams {fmt(novel_ngram_pct(response, query, 2))}%",
    ]
    stats += [f"{esc(k)} {fmt(v)}" for k, v in extras.items()]
    return (
        f'<div class="resp"><h4>{esc(name)}</h4><p class="text">{highlight(response, in_resp)}</p>'
        f'<p class="small">{"; ".join(stats)}</p><p class="small">where it copies from '
        f"(bigram LCS; left = start of the query):</p>{strip}</div>"
    )


def _sample(i: int, s: Mapping) -> str:
    query = str(s.get("query", ""))
    cells, context_ranges = [], []
    for name, key in (("reference policy", "ref_response"), ("policy", "policy_response")):
        response = s.get(key)
        if not isinstance(response, str):
            cells.append(f'<div class="resp"><p class="note">no {key}</p></div>')
            continue
        extras = {k: v for k, v in s.items() if k.startswith(key.split("_")[0]) and num(v) is not None}
        cells.append(_response_cell(name, response, query, extras))
        if key == "policy_response":
            context_ranges = copy_ranges(response, query)[1]
    shared = {k: v for k, v in s.items() if num(v) is not None and not k.startswith(("ref", "policy"))}
    shared_txt = "; ".join(f"{esc(k)} {fmt(v)}" for k, v in shared.items())
    return (
        f'<div class="sample"><h3>Sample {i}</h3><p class="small">{shared_txt}</p>'
        f"<details><summary>query (spans the policy copied are marked)</summary>"
        f'<p class="text">{highlight(query, context_ranges)}</p></details>'
        f'<div class="pair">{"".join(cells)}</div></div>'
    )


# ---------------------------------------------------------------- page

_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 12px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:first-child{text-align:left}.note{color:#a15c00;font-style:italic}
.grid{display:flex;flex-wrap:wrap;gap:12px}.pair{display:flex;gap:16px}.resp{flex:1;min-width:0}
.text{white-space:pre-wrap;background:#fafafa;border:1px solid #eee;padding:6px}
mark{background:#ffe08a}.small{font-size:12px;color:#555}.sample{border-top:1px solid #ddd;margin-top:14px}
svg .t{font-size:13px;font-weight:600}svg .l{font-size:11px}svg .k{font-size:10px}
svg .frame{fill:none;stroke:#999}svg .strip{fill:#e8e8e8}svg .tick{fill:#d62728}
"""


def _read_json(path: Path, notes: list[str]):
    if not path.exists():
        notes.append(f"{path.name} not found.")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        notes.append(f"{path.name} could not be read: {e}")
        return None


def _read_metrics(path: Path, notes: list[str]) -> list[dict]:
    if not path.exists():
        notes.append(f"{path.name} not found: no training curves.")
        return []
    bad: list[DataError] = []
    rows = [row for _, row in read_jsonl(path, on_error=bad.append)]
    if bad:
        notes.append(f"{path.name}: skipped {len(bad)} unreadable line(s).")
    return rows


def render_report(title: str, ev, metrics_rows: Sequence[Mapping], se, notes: Sequence[str]) -> str:
    """The page's HTML from already-read inputs (None for a missing file)."""
    notes = list(notes)
    body = [f"<h1>{esc(title)}</h1>"]
    body.append("<h2>Evaluation</h2>")
    if isinstance(ev, Mapping):
        missing = [k for k in ("win_rate", "win_rate_ci", "n_comparisons", "mean_reward", "kl") if k not in ev]
        if missing:
            notes.append(f"eval.json lacks {', '.join(missing)}.")
        body.append(_headline(ev))
        if "policies" in ev or "mean_reward_by_policy" in ev:
            body.append("<h3>Every policy</h3>" + _policies(ev))
    else:
        body.append('<p class="note">No evaluation (eval.json missing or unreadable).</p>')
    if isinstance(ev, Mapping) and ("pairwise" in ev or "human_pairwise" in ev):
        body.append('<h2>Win rates between policies</h2><p class="small">Ties count half.</p>')
        body.append(_pairwise(ev.get("pairwise"), str(ev.get("judge", "the labeler"))))
        body.append(_pairwise(ev.get("human_pairwise"), f"people (store run {ev.get('human_run', '?')})"))
    body.append("<h2>Accuracy rated by people</h2>")
    people = ev if isinstance(ev, Mapping) else {}
    body.append(_accuracy(people.get("human_accuracy"), people.get("human_run", "?")))
    no_metrics = '<p class="note">No training metrics.</p>'
    body.append("<h2>Training</h2>" + (_training_plots(metrics_rows) if metrics_rows else no_metrics))
    body.append("<h2>Summaries: ROUGE, novelty, copying</h2>")
    no_summary = '<p class="note">No summary_eval.json (not a summarization run, or not evaluated).</p>'
    body.append(_summary_section(se) if isinstance(se, Mapping) else no_summary)
    samples = ev.get("samples") if isinstance(ev, Mapping) else None
    body.append("<h2>Samples</h2>")
    if isinstance(samples, list) and samples:
        body.append(
            f'<p class="small">Showing {min(len(samples), MAX_SAMPLES)} of {len(samples)}. '
            "Marked: runs of 3+ words copied verbatim from the query.</p>"
        )
        body += [_sample(i, s) for i, s in enumerate(samples[:MAX_SAMPLES]) if isinstance(s, Mapping)]
    else:
        body.append('<p class="note">No samples in eval.json.</p>')
    if notes:
        body.insert(
            1, '<div class="note"><b>Notes:</b><ul>' + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul></div>"
        )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>"
    )


def write_report(run_dir: str | Path, out_path: str | Path | None = None) -> Path:
    """Write `run_dir/report.html` (or `out_path`) from the run's files; return its path."""
    run_dir = Path(run_dir)
    notes: list[str] = []
    ev = _read_json(run_dir / "eval.json", notes)
    rows = _read_metrics(run_dir / "metrics.jsonl", notes)
    se = _read_json(run_dir / "summary_eval.json", notes) if (run_dir / "summary_eval.json").exists() else None
    page = render_report(f"lmpref run: {run_dir.resolve().name}", ev, rows, se, notes)
    out = Path(out_path) if out_path else run_dir / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
