import io
import json
import math
import os
from pathlib import Path

import pytest

from lmpref.eval.plots import copy_strip_svg, line_plot_svg, scatter_svg
from lmpref.eval.report import copy_ranges, highlight, render_report, write_report
from lmpref.eval.winrate import human_accuracy

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# ---------------------------------------------------------------- pure pieces


def test_highlight_escapes_and_merges_overlaps():
    assert highlight("a<b & c", [(0, 3)]) == "<mark>a&lt;b</mark> &amp; c"
    assert highlight("abcdef", [(3, 5), (0, 2), (1, 4)]) == "<mark>abcde</mark>f"
    assert highlight('"x"', []) == "&quot;x&quot;"


def test_copy_ranges_point_at_the_copied_words():
    response, context = "He said the cat sat down.", "Then the cat sat down again."
    in_response, in_context = copy_ranges(response, context)
    assert [response[s:e] for s, e in in_response] == ["the cat sat down"]
    assert [context[s:e] for s, e in in_context] == ["the cat sat down"]


def test_line_plot_draws_each_series_and_drops_nan():
    svg = line_plot_svg({"a": [(0, 1.0), (1, math.nan), (2, 3.0)], "b": [(0, 2.0)]}, title="T<1>")
    assert svg.startswith("<svg") and svg.count("<polyline") == 2
    assert "T&lt;1&gt;" in svg and "nan" not in svg.lower()
    assert "no finite values" in line_plot_svg({"a": [(0, math.inf)]}, title="empty")


def test_scatter_and_strip():
    svg = scatter_svg(
        [("lead-3", 0.0, 40.0), ("policy", 10.0, 30.0), ("bad", None, 1.0)], title="s", xlabel="x", ylabel="y"
    )
    assert svg.count("<circle") == 2 and "lead-3" in svg
    assert copy_strip_svg(10, [0, 9], label="l").count('class="tick"') == 2


# ---------------------------------------------------------------- a whole run dir


def make_run(run: Path) -> None:
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "metrics.jsonl", "w") as f:
        for step in range(30):
            row = {
                "step": step,
                "objective/scores": 0.1 * step,
                "objective/kl": 0.3 * step,
                "objective/kl_coef": 0.1,
                "ppo/policy/clipfrac": 0.01 * (step % 7),
            }
            if step % 10 == 0:
                row["eval/win_rate"] = 0.5 + step / 100
            f.write(json.dumps(row) + "\n")
        f.write("not json\n")
    query = (
        "Article:\n\nThe storm hit the coast on Monday night. Thousands lost power, officials said. "
        "Schools will stay closed.\n\nTL;DR:"
    )
    samples = [
        {
            "query": query,
            "ref_response": " <script>alert('x')</script> storms & power",
            "policy_response": " The storm hit the coast on Monday night. Thousands lost power.",
            "policy_score": 1.5,
            "ref_score": -0.5,
        },
        {
            "query": "Hi all. My cat ran away.\n\nTL;DR:",
            "ref_response": " cat gone",
            "policy_response": " My cat ran away.",
        },
    ]
    # people's accuracy ratings as `lmpref evaluate --read-human` saves them
    ratings = [{"policy": "policy", "rating": r} for r in ("accurate", "inaccurate", "accurate")]
    ratings += [{"policy": "ref", "rating": r} for r in ("accurate", "unsure", "inaccurate", "inaccurate")]
    (run / "eval.json").write_text(
        json.dumps(
            {
                "win_rate": 0.64,
                "win_rate_ci": [0.57, 0.71],
                "n_comparisons": 200,
                "mean_reward": {"policy": 1.2, "ref": -0.1},
                "kl": 8.3,
                "samples": samples,
                "human_accuracy": human_accuracy(ratings),
                "human_run": "eval-run",
            }
        )
    )
    (run / "summary_eval.json").write_text(
        json.dumps(
            {
                "task": "cnndm",
                "n_documents": 2,
                "policies": {
                    "lead-3": {
                        "n": 2,
                        "rouge1": 40.1,
                        "rougeLsum": 36.2,
                        "novel_2grams": 0.0,
                        "copies_from_start": 100.0,
                    },
                    "ref": {"n": 2, "rouge1": 30.5, "rougeLsum": 27.0, "novel_2grams": 45.0, "copies_from_start": 5.0},
                    "policy": {
                        "n": 2,
                        "rouge1": 38.0,
                        "rougeLsum": 33.3,
                        "novel_2grams": 8.0,
                        "copies_from_start": 80.0,
                    },
                },
            }
        )
    )


def test_report_from_a_full_run(tmp_path):
    make_run(tmp_path / "run")
    page = write_report(tmp_path / "run").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "0.64 (95% CI [0.57, 0.71])" in page
    assert "skipped 1 unreadable line" in page
    # per policy: accurate share, its Wilson 95% interval, n, then the counts
    assert "<td>policy</td><td>0.6667</td><td>[0.2077, 0.9385]</td><td>3</td><td>2</td><td>1</td><td>0</td>" in page
    assert "<td>ref</td><td>0.25</td><td>[0.04559, 0.6994]</td><td>4</td><td>1</td><td>2</td><td>1</td>" in page
    assert "Store run eval-run." in page and "No accuracy ratings recorded" not in page
    # reward, KL, kl_coef, win rate, clipfrac, novelty-vs-ROUGE, and 2 strips per sample
    assert page.count("<svg") == 6 + 4
    assert "<mark>The storm hit the coast on Monday night. Thousands lost power</mark>." in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")  # no external assets


def test_report_tolerates_missing_and_broken_files(tmp_path):
    empty = write_report(tmp_path, tmp_path / "out" / "r.html").read_text()
    assert "eval.json not found" in empty and "metrics.jsonl not found" in empty
    (tmp_path / "eval.json").write_text("{broken")
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "objective/kl": "n/a"}) + "\n")
    page = write_report(tmp_path).read_text()
    assert "eval.json could not be read" in page and "no numeric metrics" in page
    (tmp_path / "eval.json").write_text(json.dumps({"win_rate": 0.5, "samples": [{"query": "q"}]}))
    page = write_report(tmp_path).read_text()
    assert "eval.json lacks win_rate_ci, n_comparisons, mean_reward, kl" in page
    assert "no policy_response" in page
    assert "No accuracy ratings recorded" in page and "accurate share" not in page
    (tmp_path / "eval.json").write_text(json.dumps({"win_rate": 0.5, "human_accuracy": {}}))
    assert "No accuracy ratings recorded" in write_report(tmp_path).read_text()


# ---------------------------------------------------------------- in a real browser


@pytest.mark.browser
def test_every_policy_table_without_training_records_shows_dashes():
    """An eval.json from before `by_policy`: the table keeps its columns, "—" in the new ones."""
    ev = {"policies": {"policy": "runs/x/policy", "ref": "gpt2"}, "kl_by_policy": {"policy": 1.5}}
    page = render_report("old run", ev, [], None, [])
    assert "<th>win rate vs ref</th><th>both valid</th><th>labeler score</th><th>labels</th>" in page
    assert "<td>policy</td><td>runs/x/policy</td><td>–</td><td>1.5</td>" + "<td>—</td>" * 6 + "</tr>" in page
    rows = {"policy": {"win_rate": 0.625, "win_rate_both_valid": None, "labels": 12, "episodes": 48, "minutes": 2.25}}
    page = render_report("new run", {**ev, "by_policy": rows}, [], None, [])
    assert "<td>62.5%</td><td>—</td><td>—</td><td>12</td><td>48</td><td>2.2</td></tr>" in page


def test_report_renders_in_chromium(tmp_path):
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing on CI")
        pytest.skip(f"{CHROMIUM} not installed")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    make_run(tmp_path / "run")
    path = write_report(tmp_path / "run")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(path.as_uri())
            sizes = page.evaluate(
                "[...document.querySelectorAll('svg')].map(s => {const r = s.getBoundingClientRect();"
                " return [r.width, r.height]})"
            )
            png = page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert len(sizes) == 10 and all(w > 0 and h > 0 for w, h in sizes)
    image = pytest.importorskip("PIL.Image").open(io.BytesIO(png)).convert("L")
    lo, hi = image.getextrema()
    assert hi - lo > 100  # not a blank page
    dark = sum(image.histogram()[:128])
    assert dark > 0.002 * image.width * image.height  # there is text and lines on it
