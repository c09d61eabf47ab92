"""`lmpref train-reward` on outside preference data, as a user runs it (tiny random GPT-2): text
labels and text-only samples, no samples at all, a separate test file, the saved split by prompt,
the truncation to the config's lengths and the held-out accuracy with its interval."""

import json

import pytest

from lmpref.cli import main
from lmpref.core.reward import Choice, truncate_labels
from lmpref.io import read_jsonl, write_jsonl
from lmpref.steps.train import _sample_ids, longer_wins

TINY = ["--preset", "test", "--scale", "tiny"]


def _pairs(path, n=24, prompts=8, offset=0):
    rows = [
        {
            "prompt": f"Question {offset + i % prompts}: tell me about the number {offset + i % prompts}.",
            "chosen": f" It is a fine number, {i}, and here is why.",
            "rejected": " No.",
        }
        for i in range(n)
    ]
    write_jsonl(path, rows)
    return path


def _metrics(out):
    return json.loads((out / "lmpref_reward.json").read_text())


def test_text_only_samples_no_longer_end_in_a_key_error(tmp_path, capsys):
    labels = _pairs(tmp_path / "prefs.jsonl")
    samples = tmp_path / "samples.jsonl"
    write_jsonl(samples, [{"id": f"s{i}", "query": f"Q{i}", "responses": [" a b", " c"]} for i in range(3)])
    out = tmp_path / "rm"
    argv = ["train-reward", *TINY, "--labels", str(labels), "--samples", str(samples), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    m = _metrics(out)
    lo, hi = m["accuracy_after_ci"]
    assert m["n_heldout"] > 0 and lo - 1e-9 <= m["accuracy_after"] <= hi + 1e-9
    assert f"(95% CI {lo:.1%}-{hi:.1%}, n={m['n_heldout']} labels of {m['n_heldout_prompts']} prompts" in printed
    assert m["accuracy_longer_wins"] == 1.0  # chosen is always the longer one here
    # The split it made is saved, and held out by prompt: no held-out prompt was trained on.
    heldout = [r for _, r in read_jsonl(tmp_path / "rm_heldout_labels.jsonl")]
    trained = [r for _, r in read_jsonl(tmp_path / "rm_labels.jsonl")]
    assert len(heldout) == m["n_heldout"] and m["n_train"] + m["n_heldout"] == len(trained) == 24
    held_prompts = {r["query"] for r in heldout}
    held_ids = {r["id"] for r in heldout}
    assert not held_prompts & {r["query"] for r in trained if r["id"] not in held_ids}
    assert m["n_heldout_prompts"] == len(held_prompts) and m["n_heldout_prompts_also_trained"] == 0
    # The folder carries a model card with the data, the algorithm and the figures.
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and "best-of-K loss" in card
    assert f"labels: `{labels}`" in card and f"trained on {m['n_train']} labels" in card
    assert f"| trained model | {m['accuracy_after']:.1%} (95% Wilson CI {lo:.1%}-{hi:.1%}) |" in card
    assert "| longer response wins | 100.0% |" in card


def test_no_samples_and_a_separate_test_file(tmp_path, capsys):
    labels = _pairs(tmp_path / "train.csv.jsonl")
    test = _pairs(tmp_path / "test.jsonl", n=6, prompts=3, offset=100)
    out = tmp_path / "rm"
    argv = ["train-reward", *TINY, "--labels", str(labels), "--test-labels", str(test), "--out", str(out)]
    assert main(argv) == 0
    m = _metrics(out)
    assert (m["n_train"], m["n_heldout"], m["holdout_fraction"]) == (24, 6, 0.0)  # all trained on; the file held out
    assert 0.0 <= m["accuracy_before"] <= 1.0 and 0.0 <= m["accuracy_after"] <= 1.0
    assert "the test labels" in capsys.readouterr().out
    assert not (tmp_path / "rm_heldout_labels.jsonl").exists()


def test_a_bad_labels_file_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    write_jsonl(bad, [{"prompt": "p", "chosen": "a"}])
    assert main(["train-reward", *TINY, "--labels", str(bad), "--out", str(tmp_path / "rm")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}: row 1: missing column 'rejected'" in err


def test_truncation_keeps_the_end_of_a_query_and_the_start_of_a_response():
    c = Choice(list(range(10)), [list(range(100, 108)), [7]], 1, "d")
    (cut,) = truncate_labels([c], query_length=4, response_length=3)
    assert cut.query_ids == [6, 7, 8, 9] and cut.response_ids == [[100, 101, 102], [7]]
    assert (cut.best, cut.doc_id) == (1, "d")
    (whole,) = truncate_labels([c], 0, 0)
    assert whole == c


def test_text_samples_are_tokenised_and_cut_like_the_labels():
    class Tok:
        def encode(self, text, add_special_tokens=False):
            return [ord(ch) for ch in text]

    rec = _sample_ids("s.jsonl", 1, {"query": "abcdef", "responses": ["xyz", "w"]}, Tok(), 2, 2)
    assert rec == {"query_ids": [101, 102], "response_ids": [[120, 121], [119]]}
    ids = _sample_ids("s.jsonl", 1, {"query_ids": [1, 2, 3], "response_ids": [[4, 5, 6]]}, Tok(), 2, 1)
    assert ids == {"query_ids": [2, 3], "response_ids": [[4]]}


@pytest.mark.parametrize(
    "labels, expected",
    [
        ([Choice([1], [[1, 2, 3], [1]], 0)], 1.0),
        ([Choice([1], [[1, 2, 3], [1]], 1)], 0.0),
        ([Choice([1], [[1, 2], [3, 4]], 1)], 0.5),  # equal lengths: a guess
    ],
)
def test_longer_response_wins_baseline(labels, expected):
    assert longer_wins(labels) == expected


def test_policy_card_names_the_start_the_reward_model_and_the_figures():
    from lmpref.formats.cards import policy_card

    card = policy_card(
        {"preset": "tldr", "scale": "small", "seed": 3, "model": {"name": "smollm2-135m"}, "task": {"name": "tldr"}},
        {"update": 6, "mean_reward": 0.25, "stopped": None},
        reward_model="runs/x/reward_model",
    )
    assert "base_model: smollm2-135m" in card and "reward model: `runs/x/reward_model`" in card
    assert "| update | 6 |" in card and "| mean_reward | 0.25 |" in card and "PPO" in card


def test_noise_free_labeler_accuracy_is_the_ceiling_on_literal_labels():
    from lmpref.eval.labelers import noise_free_accuracy

    good, bad, flat = " What a wonderful, happy day.", " A horrible, sad and awful day.", " The door is brown."
    rows = [
        {"query": "Q.", "responses": [bad, good], "best": 1, "labeler": "sentiment@T0.05"},  # the labeler's pick
        {"query": "Q.", "responses": [good, bad, flat], "best": 2, "labeler": "sentiment@T0.05"},  # noise: a miss
        {"query": "Q.", "responses": [flat, " The wall is brown."], "best": 0, "labeler": "sentiment@T0.05"},  # tie
    ]
    assert noise_free_accuracy(rows) == pytest.approx((1 + 0 + 0.5) / 3)
    assert noise_free_accuracy([{**rows[0], "labeler": "alice"}]) is None  # people's labels: no ceiling
    assert noise_free_accuracy([]) is None
    assert noise_free_accuracy([{**rows[0], "labeler": "rouge@T0.05"}]) is None  # its reference is not in the label
    with_ref = {**rows[0], "labeler": "rouge@T0.05", "reference": bad.strip()}
    assert noise_free_accuracy([with_ref]) == 0.0  # ROUGE prefers the response closer to the reference


def test_train_reward_reports_the_labelers_ceiling_on_its_own_labels(tmp_path, capsys):
    rows = [
        {
            "id": f"l{i}",
            "query": f"Passage {i}.",
            "responses": [" It was a lovely, happy evening.", " It was a dreadful, miserable evening."],
            "best": 0 if i % 4 else 1,  # one in four flipped, as noise would
            "labeler": "sentiment@T0.05",
        }
        for i in range(16)
    ]
    write_jsonl(tmp_path / "labels.jsonl", rows)
    out = tmp_path / "rm"
    assert main(["train-reward", *TINY, "--labels", str(tmp_path / "labels.jsonl"), "--out", str(out)]) == 0
    m = _metrics(out)
    held = [r for _, r in read_jsonl(tmp_path / "rm_heldout_labels.jsonl")]
    assert m["accuracy_labeler_noise_free"] == pytest.approx(sum(r["best"] == 0 for r in held) / len(held))
    printed = capsys.readouterr().out
    assert f"the labeler without its noise (the ceiling): {m['accuracy_labeler_noise_free']:.1%}" in printed
    assert "| the labeler without its noise (ceiling) |" in (out / "README.md").read_text()
