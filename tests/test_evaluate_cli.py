"""Evaluation: win rates between policies (labeler and people), the label-store round trip, and a
tiny CNN/DM run through the CLI whose report renders in Chromium."""

import io
import json
import os
from pathlib import Path

import pytest

from lmpref.eval.labelers import make_labeler
from lmpref.eval.winrate import human_accuracy, human_win_rates, pairwise_win_rates, wilson_interval
from lmpref.steps.evaluate import accuracy_records, comparison_records

QUERY = "Article:\n\nThe cat sat on the mat. It was happy.\n\nTL;DR:"


def test_pairwise_win_rates_judge_every_pair_on_the_same_queries():
    responses = {
        "copier": [(" The cat sat on the mat.", True), (" The cat sat.", True)],
        "writer": [(" A feline rested.", True), (" The cat sat on the mat.", True)],
        "broken": [(" The cat sat on the mat.", False), (" x", False)],
    }
    rows = pairwise_win_rates(make_labeler("copy-start"), [QUERY, QUERY], responses, [None, None])
    by = {(r["a"], r["b"]): r for r in rows}
    assert list(by) == [("copier", "writer"), ("copier", "broken"), ("writer", "broken")]
    assert by["copier", "writer"]["win_rate"] == 0.75  # a win, then a tie (both copy fully from the start)
    assert by["copier", "broken"]["win_rate"] == 1.0  # invalid responses lose
    assert by["copier", "writer"]["n"] == 2 and by["copier", "writer"]["win_rate_ci"][0] < 0.75


def test_comparison_records_skip_invalid_and_name_the_policies():
    rows = [
        {
            "id": "q1",
            "query": "Q",
            "reference": "R",
            "a_response": "A",
            "a_valid": True,
            "b_response": "B",
            "b_valid": True,
        },
        {
            "id": "q2",
            "query": "Q",
            "reference": None,
            "a_response": "A",
            "a_valid": True,
            "b_response": "B",
            "b_valid": False,
        },
    ]
    recs = comparison_records(rows, [("a", "b")], seed=0)
    assert len(recs) == 1 and recs[0]["id"] == "q1:a|b" and recs[0]["reference"] == "R"
    assert sorted(recs[0]["policies"]) == ["a", "b"]
    assert recs[0]["responses"] == [{"a": "A", "b": "B"}[p] for p in recs[0]["policies"]]


def test_human_win_rates_tally_by_policy_whatever_the_order():
    labels = [
        {"policies": ["rl", "sft"], "best": 0, "tie": False},
        {"policies": ["sft", "rl"], "best": 1, "tie": False},
        {"policies": ["sft", "rl"], "best": 0, "tie": False},
        {"policies": ["sft", "rl"], "best": -1, "tie": True},
    ]
    (row,) = human_win_rates(labels)
    assert (row["a"], row["b"], row["n"]) == ("rl", "sft", 4)
    assert row["win_rate"] == pytest.approx(2.5 / 4)


def test_enqueue_and_read_back_people_through_the_store(tmp_path):
    from lmpref import store
    from lmpref.steps.evaluate import step_enqueue_comparisons, step_read_human

    samples = tmp_path / "eval_samples.jsonl"
    rows = [
        {
            "id": f"q{i}",
            "query": f"Q{i}",
            "reference": None,
            "policy_response": f"P{i}",
            "policy_valid": True,
            "ref_response": f"R{i}",
            "ref_valid": True,
        }
        for i in range(3)
    ]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    db = f"sqlite:///{tmp_path / 'store.db'}"
    result = step_enqueue_comparisons(samples, db=db, run="eval-x", batch="eval", pairs=None, seed=0)
    assert result.created == 3
    factory = store.open_store(db)
    with store.transaction(factory) as session:
        person, _ = store.create_labeler(session, name="ann")
    for _ in range(3):  # ann always prefers the policy's summary
        with store.transaction(factory) as session:
            person = store.get_labeler(session, name="ann")
            served = store.next_task(session, labeler=person, run="eval-x")
            best = [s.policy for s in served.samples].index("policy")  # a display position
            store.save_label(session, labeler=person, task_id=served.task.id, best=best)
    (row,) = step_read_human(db=db, run="eval-x", eval_path=tmp_path / "eval.json")
    assert (row["a"], row["b"], row["n"], row["win_rate"]) == ("policy", "ref", 3, 1.0)
    assert json.loads((tmp_path / "eval.json").read_text())["human_pairwise"] == [row]


def test_accuracy_records_take_n_queries_and_every_valid_response():
    rows = [
        {
            "id": f"q{i}",
            "query": f"Q{i}",
            "reference": "R" if i == 0 else None,
            "a_response": f"A{i}",
            "a_valid": True,
            "b_response": f"B{i}",
            "b_valid": i != 1,
        }
        for i in range(3)
    ]
    recs = accuracy_records(rows, ["a", "b"], n_queries=2, seed=0)
    assert sorted(r["id"] for r in recs) == ["q0:a", "q0:b", "q1:a"]  # q1's b is invalid, q2 is past N
    (q0a,) = [r for r in recs if r["id"] == "q0:a"]
    assert q0a == {
        "id": "q0:a",
        "query": "Q0",
        "responses": ["A0"],
        "policy": "a",
        "kind": "accuracy",
        "doc_id": "q0",
        "reference": "R",
    }


def test_human_accuracy_counts_unsure_as_not_accurate():
    ratings = [{"policy": "rl", "rating": r} for r in ("accurate", "accurate", "inaccurate", "unsure")]
    acc = human_accuracy(ratings + [{"policy": "sft", "rating": "accurate"}])
    assert list(acc) == ["rl", "sft"]
    assert {k: acc["rl"][k] for k in ("accurate", "inaccurate", "unsure", "n", "accurate_share")} == {
        "accurate": 2,
        "inaccurate": 1,
        "unsure": 1,
        "n": 4,
        "accurate_share": 0.5,
    }
    assert acc["rl"]["ci"] == pytest.approx(list(wilson_interval(2, 4)))


def test_enqueue_accuracy_and_read_ratings_back_through_the_store(tmp_path, capsys):
    from lmpref import store
    from lmpref.cli import main
    from lmpref.steps.evaluate import step_enqueue_accuracy

    samples = tmp_path / "eval_samples.jsonl"
    rows = [
        {
            "id": f"q{i}",
            "query": f"Q{i}",
            "reference": None,
            "policy_response": f"P{i}",
            "policy_valid": True,
            "ref_response": f"R{i}",
            "ref_valid": True,
        }
        for i in range(5)
    ]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "eval.json").write_text(json.dumps({"win_rate": 0.5}))
    db = f"sqlite:///{tmp_path / 'store.db'}"
    result = step_enqueue_accuracy(samples, db=db, run="eval-x", batch="eval", n_queries=3, seed=0)
    assert result.created == 6  # 3 queries x 2 policies
    factory = store.open_store(db)
    with store.transaction(factory) as session:
        store.create_labeler(session, name="ann")
    for _ in range(6):  # ann finds the policy accurate on q0 and q1 only, the reference always
        with store.transaction(factory) as session:
            person = store.get_labeler(session, name="ann")
            served = store.next_task(session, labeler=person, run="eval-x")
            (sample,) = served.samples
            good = sample.policy == "ref" or served.task.query.extra["doc_id"] in ("q0", "q1")
            store.save_label(
                session, labeler=person, task_id=served.task.id, rating="accurate" if good else "inaccurate"
            )
    assert (
        main(["evaluate", "--read-human", "--db", db, "--store-run", "eval-x", "--out", str(tmp_path / "eval.json")])
        == 0
    )
    assert "policy accurate 66.7%" in capsys.readouterr().out
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["win_rate"] == 0.5 and saved["human_pairwise"] == []
    policy, ref = saved["human_accuracy"]["policy"], saved["human_accuracy"]["ref"]
    assert (policy["accurate"], policy["inaccurate"], policy["unsure"], policy["n"]) == (2, 1, 0, 3)
    assert policy["accurate_share"] == pytest.approx(2 / 3) and policy["ci"] == pytest.approx(
        list(wilson_interval(2, 3))
    )
    assert (ref["accurate"], ref["n"], ref["accurate_share"]) == (3, 3, 1.0)


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def test_tiny_cnndm_run_sft_evaluate_report_in_chromium(tmp_path):
    """The whole summarization path through the CLI on tiny-gpt2 (a few CPU minutes)."""
    from lmpref.cli import main

    run = tmp_path / "run"
    small = [
        "--preset",
        "cnndm",
        "--scale",
        "tiny",
        "--run-dir",
        str(run),
        "--set",
        "sample.num_queries=4",
        "--set",
        "ppo.total_episodes=8",
        "--set",
        "eval.num_queries=4",
        "--set",
        "reward.holdout_fraction=0.5",
    ]
    assert main(["run", *small]) == 0
    assert (
        main(
            [
                "sft",
                *small,
                "--set",
                "sft.eval_pairs=4",
                "--set",
                "task.holdout_fraction=0.9",
                "--out",
                str(run / "sft"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                *small,
                "--policy",
                str(run / "policy"),
                "--reward-model",
                str(run / "reward_model"),
                "--compare",
                f"sft={run / 'sft'}",
                "--out",
                str(run / "eval.json"),
                "--enqueue-accuracy",
                "2",
                "--db",
                f"sqlite:///{tmp_path / 'store.db'}",
                "--store-run",
                "acc",
            ]
        )
        == 0
    )
    from lmpref import store

    with store.transaction(store.open_store(f"sqlite:///{tmp_path / 'store.db'}")) as session:
        assert store.progress(session, run="acc").tasks == 2 * 5  # 2 queries x {policy, ref, sft, lead-3, reference}
    ev = json.loads((run / "eval.json").read_text())
    for key in (
        "win_rate",
        "win_rate_ci",
        "n_comparisons",
        "wins",
        "losses",
        "ties",
        "mean_reward",
        "labeler_score",
        "valid_fraction",
        "kl",
        "samples",
    ):
        assert key in ev
    assert {(r["a"], r["b"]) for r in ev["pairwise"]} >= {("policy", "sft"), ("ref", "lead-3"), ("lead-3", "reference")}
    se = json.loads((run / "summary_eval.json").read_text())
    assert set(se["policies"]) == {"lead-3", "policy", "ref", "sft", "reference"}
    assert se["policies"]["lead-3"]["copies_from_start"] == 100.0 and se["policies"]["reference"][
        "rouge1"
    ] == pytest.approx(100)
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "Win rates between policies" in page and "Novelty vs. ROUGE" in page
    if not CHROMIUM.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing on CI")
        pytest.skip(f"{CHROMIUM} not installed")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto((run / "report.html").as_uri())
            sizes = page.evaluate(
                "[...document.querySelectorAll('svg')].map(s => {const r = s.getBoundingClientRect();"
                " return [r.width, r.height]})"
            )
            png = page.screenshot(full_page=True)
        finally:
            browser.close()
    assert len(sizes) >= 5 and all(w > 0 and h > 0 for w, h in sizes)  # training plots, scatter, copy strips
    image = pytest.importorskip("PIL.Image").open(io.BytesIO(png)).convert("L")
    assert image.getextrema()[1] - image.getextrema()[0] > 100
    assert sum(image.histogram()[:128]) > 0.002 * image.width * image.height


def test_evaluate_and_report_show_labels_episodes_and_minutes_of_every_policy(tmp_path, capsys):
    """An RLOO policy and a DPO one trained on the same labels, a copy of the DPO one saved without its
    record (an older policy), and best-of-2 of ρ: one row each, against ρ, in eval.json, the printed
    table and the report."""
    import math
    import shutil

    from lmpref.cli import main
    from lmpref.eval.plots import policy_cell

    tiny = ["--preset", "test", "--scale", "tiny"]
    run, dpo, old = tmp_path / "rloo", tmp_path / "dpo", tmp_path / "old"
    assert main(["run", *tiny, "--algo", "rloo", "--run-dir", str(run)]) == 0
    labels = ["--labels", str(run / "labels.jsonl")]
    assert main(["train-policy", *tiny, "--algo", "dpo", *labels, "--run-dir", str(dpo)]) == 0
    shutil.copytree(dpo / "policy", old)
    (old / "lmpref_policy.json").unlink()
    out = tmp_path / "eval" / "eval.json"
    out.parent.mkdir()
    capsys.readouterr()
    argv = ["evaluate", *tiny, "--policy", str(run / "policy"), "--reward-model", str(run / "reward_model")]
    argv += ["--compare", f"dpo={dpo / 'policy'}", "--compare", f"old={old}", "--best-of", "bon2=2:ref"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    rows = result["by_policy"]
    assert list(rows) == ["policy", "ref", "dpo", "old", "bon2"]
    rm_labels = json.loads((run / "reward_model" / "lmpref_reward.json").read_text())["n_train"]
    trained = json.loads((dpo / "dpo.json").read_text())["n_train"]
    assert rows["policy"]["labels"] == rm_labels and rows["policy"]["episodes"] == 32  # 2 RLOO updates of 16
    assert rows["dpo"]["labels"] == trained and rows["dpo"]["episodes"] == trained * 4  # 1 epoch x K = 4
    assert rows["policy"]["minutes"] > 0 and rows["dpo"]["minutes"] > 0
    assert [rows[n][k] for n in ("ref", "old") for k in ("labels", "episodes", "minutes")] == [None] * 6
    assert (rows["bon2"]["labels"], rows["bon2"]["episodes"], rows["bon2"]["minutes"]) == (0, 0, None)
    assert rows["ref"]["win_rate"] is None and rows["ref"]["kl"] == 0.0
    assert rows["bon2"]["kl"] == pytest.approx(math.log(2) - 1 / 2)
    assert rows["policy"]["win_rate"] == result["win_rate"] and rows["policy"]["kl"] == result["kl"]
    assert rows["policy"]["win_rate_both_valid"] == result["win_rate_both_valid"]
    assert rows["policy"]["labeler_score"] == result["labeler_score"]["policy"]
    assert rows["ref"]["labeler_score"] == result["labeler_score"]["ref"]
    pairwise = {(r["a"], r["b"]): r["win_rate"] for r in result["pairwise"]}
    for name in ("dpo", "old", "bon2"):  # the same judge as the pairwise table: ρ's loss is their win
        assert rows[name]["win_rate"] == pytest.approx(1 - pairwise["ref", name])
    assert rows["old"]["win_rate"] == rows["dpo"]["win_rate"]  # the same weights
    header = next(line for line in printed.splitlines() if "episodes" in line)
    assert header.split()[-3:] == ["labels", "episodes", "minutes"]
    bon2 = next(line for line in printed.splitlines() if line.split()[:1] == ["bon2"])
    assert bon2.split()[-3:] == ["0", "0", "—"]
    assert main(["report", str(out.parent)]) == 0
    page = (out.parent / "report.html").read_text()
    assert "<th>labels</th><th>episodes</th><th>minutes</th>" in page
    minutes = policy_cell("minutes", rows["policy"]["minutes"])
    assert f"<td>{rm_labels}</td><td>32</td><td>{minutes}</td></tr>" in page
    assert "<td>0</td><td>0</td><td>—</td></tr>" in page and "<td>—</td><td>—</td><td>—</td></tr>" in page
