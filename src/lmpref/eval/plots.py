"""SVG plots for the report (line plots, scatter plots, copy strips), written as text: no plotting
library, so a report renders anywhere; and the cells of the every-policy table (`policy_cell`), which
`lmpref evaluate` prints and the report draws."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def num(x) -> float | None:
    """A finite float, or None (bools, strings, NaN and missing values are not plottable)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def fmt(x) -> str:
    v = num(x)
    if v is None:
        return "–" if x is None else esc(x)
    return str(int(v)) if v.is_integer() and abs(v) < 1e9 else f"{v:.4g}"


POLICY_COLUMNS = (
    ("win_rate", "win rate vs ref"),
    ("win_rate_both_valid", "both valid"),
    ("labeler_score", "labeler score"),
    ("kl", "KL (nats)"),
    ("labels", "labels"),
    ("episodes", "episodes"),
    ("minutes", "minutes"),
)


def policy_cell(key: str, value) -> str:
    """One cell of the every-policy table: a share as a percentage, a score or KL to 3 places, a count
    whole, minutes to 1 place; "—" where a policy has none (ρ's training, an older policy's record)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if key.startswith("win_rate"):
        return f"{value:.1%}"
    if key in ("labels", "episodes"):
        return str(int(value))
    return f"{value:.1f}" if key == "minutes" else f"{value:+.3f}" if key == "labeler_score" else f"{value:.3f}"


PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def _padded_range(values: Sequence[float]) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    pad = (hi - lo) * 0.05 or abs(lo) * 0.1 or 1.0  # a flat line or one point still gets room
    return lo - pad, hi + pad


# ---------------------------------------------------------------- SVG


def _axes(title, xlabel, ylabel, x_lo, x_hi, y_lo, y_hi, width, height, m) -> list[str]:
    """Frame, ticks and labels; `m` = (left, right, top, bottom) margins."""
    left, right, top, bottom = m
    parts = [
        f'<text x="{width / 2}" y="14" text-anchor="middle" class="t">{esc(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" class="frame"/>',
        f'<text x="{width / 2}" y="{height - 4}" text-anchor="middle" class="l">{esc(xlabel)}</text>',
        f'<text x="12" y="{height / 2}" text-anchor="middle" class="l" '
        f'transform="rotate(-90 12 {height / 2})">{esc(ylabel)}</text>',
    ]
    for v in _ticks(x_lo, x_hi):
        x = left + (v - x_lo) / (x_hi - x_lo) * (width - left - right)
        label = fmt(float(f"{v:.3g}"))
        parts.append(f'<text x="{x:.1f}" y="{height - bottom + 14}" text-anchor="middle" class="k">{label}</text>')
    for v in _ticks(y_lo, y_hi):
        y = height - bottom - (v - y_lo) / (y_hi - y_lo) * (height - top - bottom)
        parts.append(
            f'<text x="{left - 4}" y="{y + 3:.1f}" text-anchor="end" class="k">{fmt(float(f"{v:.3g}"))}</text>'
        )
    return parts


def line_plot_svg(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    xlabel: str = "step",
    ylabel: str = "",
    width: int = 460,
    height: int = 240,
) -> str:
    """An SVG line plot of named (x, y) series; non-finite points are dropped."""
    clean = {k: [(x, y) for x, y in pts if num(x) is not None and num(y) is not None] for k, pts in series.items()}
    clean = {k: v for k, v in clean.items() if v}
    if not clean:
        return f'<p class="note">{esc(title)}: no finite values to plot.</p>'
    m = (58, 12, 24, 36)
    xs = [x for pts in clean.values() for x, _ in pts]
    ys = [y for pts in clean.values() for _, y in pts]
    (x_lo, x_hi), (y_lo, y_hi) = _padded_range(xs), _padded_range(ys)

    def px(x, y):
        return (
            m[0] + (x - x_lo) / (x_hi - x_lo) * (width - m[0] - m[1]),
            height - m[3] - (y - y_lo) / (y_hi - y_lo) * (height - m[2] - m[3]),
        )

    parts = _axes(title, xlabel, ylabel, x_lo, x_hi, y_lo, y_hi, width, height, m)
    for i, (name, pts) in enumerate(clean.items()):
        color = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{a:.1f},{b:.1f}" for a, b in (px(x, y) for x, y in sorted(pts)))
        parts.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.8"/>')
        if len(pts) == 1:
            a, b = px(*pts[0])
            parts.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{color}"/>')
        parts.append(f'<text x="{m[0] + 6}" y="{m[2] + 14 + 13 * i}" fill="{color}" class="k">{esc(name)}</text>')
    return _svg(width, height, parts, title)


def scatter_svg(
    points: Sequence[tuple[str, float | None, float | None]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    width: int = 460,
    height: int = 260,
) -> str:
    """An SVG scatter of labelled (label, x, y) points."""
    pts = [(lab, fx, fy) for lab, x, y in points if (fx := num(x)) is not None and (fy := num(y)) is not None]
    if not pts:
        return f'<p class="note">{esc(title)}: no points to plot.</p>'
    m = (58, 12, 24, 36)
    (x_lo, x_hi), (y_lo, y_hi) = _padded_range([p[1] for p in pts]), _padded_range([p[2] for p in pts])
    parts = _axes(title, xlabel, ylabel, x_lo, x_hi, y_lo, y_hi, width, height, m)
    placed: list[tuple[float, float]] = []  # label positions, to stack labels of coinciding points
    for i, (label, x, y) in enumerate(pts):
        a = m[0] + (x - x_lo) / (x_hi - x_lo) * (width - m[0] - m[1])
        b = height - m[3] - (y - y_lo) / (y_hi - y_lo) * (height - m[2] - m[3])
        color = PALETTE[i % len(PALETTE)]
        parts.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="5" fill="{color}"><title>{esc(label)}</title></circle>')
        anchor = "end" if a > width * 0.7 else "start"
        ly = b + 4
        while any(abs(a - pa) < 60 and abs(ly - py) < 11 for pa, py in placed):
            ly -= 12
        placed.append((a, ly))
        tx = a + (-8 if anchor == "end" else 8)
        parts.append(
            f'<text x="{tx:.1f}" y="{ly:.1f}" text-anchor="{anchor}" fill="{color}" class="k">{esc(label)}</text>'
        )
    return _svg(width, height, parts, title)


def copy_strip_svg(
    n_positions: int, positions: Sequence[int], *, label: str, width: int = 460, height: int = 16
) -> str:
    """A bar for the context (left = start) with a tick at each copied position (bigram LCS)."""
    parts = [f'<rect x="0" y="3" width="{width}" height="{height - 6}" class="strip"/>']
    for p in positions:
        x = (p + 0.5) / max(n_positions, 1) * width
        parts.append(f'<rect x="{x - 1:.1f}" y="0" width="2" height="{height}" class="tick"/>')
    return _svg(width, height, parts, label)


def _svg(width: int, height: int, parts: list[str], label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(label)}">' + "".join(parts) + "</svg>"
    )
