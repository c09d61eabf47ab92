import pytest
from rouge_score import rouge_scorer

from lmpref.eval.metrics import (
    bigram_lcs,
    copied_pct,
    copy_start,
    has_uninformative_preamble,
    lead_k,
    mean_rouge,
    novel_ngram_pct,
    novel_sentence_pct,
    rouge,
    summary_eval,
    summary_stats,
)
from lmpref.text import split_sentences, words

# ---------------------------------------------------------------- words and sentences


def test_words_lowercase_and_drop_punctuation():
    assert words("The cat's  mat, (it\u2019s) 3.5!") == ["the", "cat's", "mat", "it's", "3", "5"]


def test_sentence_splitter_on_news_text():
    text = (
        'Mr. Smith went to Washington, D.C. on Monday. He met John F. Kennedy Jr. there! "Wow." '
        "Then, at 3 p.m. he left. The U.S. Army was 3.5 km away. What? Yes."
    )
    assert split_sentences(text) == [
        "Mr. Smith went to Washington, D.C. on Monday.",
        "He met John F. Kennedy Jr. there!",
        '"Wow."',
        "Then, at 3 p.m. he left.",
        "The U.S. Army was 3.5 km away.",
        "What?",
        "Yes.",
    ]


def test_sentence_splitter_on_reddit_text():
    text = "hi reddit\n\nso my gf and I... we broke up. it was bad. Any advice?"
    assert split_sentences(text) == ["hi reddit", "so my gf and I... we broke up.", "it was bad.", "Any advice?"]


def test_unknown_splitter_is_an_error():
    with pytest.raises(ValueError, match="sentence splitter"):
        split_sentences("A. B.", splitter="spacy")


def test_lead_k():
    assert lead_k("One. Two. Three. Four.", 3) == "One.\nTwo.\nThree."
    assert lead_k("Only one", 3) == "Only one"


# ---------------------------------------------------------------- ROUGE


def test_rouge_hand_worked():
    # 5 of 6 unigrams match both ways; bigrams: "the cat", "on the", "the mat" = 3 of 5.
    scores = rouge("the cat sat on the mat", "the cat was on the mat")
    assert scores["rouge1"] == pytest.approx(100 * 5 / 6)
    assert scores["rouge2"] == pytest.approx(100 * 3 / 5)


def test_rouge_matches_rouge_score_package():
    # Sentences in the opposite order: whole-text LCS (rougeL) sees one, the summary-level
    # union LCS (rougeLsum, needs a sentence a line) sees both.
    summary = "They were charged with thefts on Monday. Police arrested two men."
    reference = "Police arrested two men. They were charged with theft."
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    expected = scorer.score(
        "Police arrested two men.\nThey were charged with theft.",
        "They were charged with thefts on Monday.\nPolice arrested two men.",
    )
    ours = rouge(summary, reference)
    for key in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert ours[key] == pytest.approx(100 * expected[key].fmeasure)
    assert ours["rouge1"] == pytest.approx(90.0)  # stemming makes thefts = theft: P 9/11, R 9/9
    assert ours["rougeLsum"] > ours["rougeL"] + 10


def test_mean_rouge_averages_and_checks_lengths():
    assert mean_rouge(["a b", "c d"], ["a b", "x y"])["rouge1"] == pytest.approx(50.0)
    with pytest.raises(ValueError):
        mean_rouge(["a"], [])


# ---------------------------------------------------------------- novelty


def test_novel_ngrams_hand_worked():
    summary, source = "The cat sat.", "the cat ran"
    assert novel_ngram_pct(summary, source, 1) == pytest.approx(100 / 3)  # "sat"
    assert novel_ngram_pct(summary, source, 2) == pytest.approx(50.0)  # "cat sat"
    assert novel_ngram_pct(summary, source, 3) == pytest.approx(100.0)
    assert novel_ngram_pct(summary, source, 4) is None  # no 4-grams in a 3-word summary


def test_novel_sentences():
    source = "Yesterday the cat ran home. Nobody saw."
    assert novel_sentence_pct("The cat ran. A dog barked.", source) == pytest.approx(50.0)
    assert novel_sentence_pct("Nobody saw!", source) == 0.0
    assert novel_sentence_pct("...", source) is None


# ---------------------------------------------------------------- copying


def test_copy_start():
    source = "So, hi all. My cat ran away from home today."
    assert copy_start("So hi all my cat ran", source) == 0
    assert copy_start("My cat ran away from home", source) == 3
    assert copy_start("My dog ran away from home", source) is None
    assert copy_start("My cat ran", source) is None  # fewer than 5 words


def test_uninformative_preamble():
    assert has_uninformative_preamble("Hi reddit, long time lurker.", "tldr")
    assert has_uninformative_preamble("So... my landlord", "tldr")
    assert not has_uninformative_preamble("Hiking is my hobby. So", "tldr")
    assert has_uninformative_preamble("EXCLUSIVE: The star said", "cnndm")
    assert has_uninformative_preamble("The man said: no", "cnndm")
    assert not has_uninformative_preamble("A story about colons: here", "cnndm")
    with pytest.raises(ValueError):
        has_uninformative_preamble("x", "books")


def test_bigram_lcs_hand_worked():
    # context bigrams: 0 ab, 1 bc, 2 cd, 3 de, 4 ef, 5 fa, 6 ab; summary: 0 ab, 1 bx, 2 xe, 3 ef
    assert bigram_lcs("a b c d e f a b", "a b x e f") == [(0, 0), (4, 3)]


def test_bigram_lcs_is_a_subsequence_not_greedy():
    # Greedy matching of "x y" at context 0 would lose "p q x y"; the LCS takes 2, 3, 4.
    assert bigram_lcs("x y p q x y", "p q x y") == [(2, 0), (3, 1), (4, 2)]
    assert bigram_lcs("a b", "c d") == []
    assert bigram_lcs("", "a b") == []


def test_copied_pct_hand_worked():
    summary, context = "The cat sat on the mat today.", "Yesterday the cat sat on the mat, and today..."
    assert copied_pct(summary, context) == pytest.approx(100 * 6 / 7)
    assert copied_pct("a b c d", "a b c x b c d") == 100.0  # "a b c" and "b c d" both qualify
    assert copied_pct("a b x c d", "a b y c d") == 0.0  # runs of 2 do not count
    assert copied_pct("a b x c d", "a b y c d", 2) == 80.0
    assert copied_pct("", "a b c") is None


def test_summary_stats_hand_worked():
    documents = ["Hi all. My cat ran away from home today.", "The storm hit the coast on Monday night."]
    summaries = ["My cat ran away from home.", "A storm hit."]
    stats = summary_stats(summaries, documents, ["My cat ran away.", "Storm hits coast."], task="tldr")
    assert stats["n"] == 2 and stats["mean_words"] == pytest.approx(4.5)
    assert stats["copies_from_start"] == 0.0 and stats["copies_anywhere"] == pytest.approx(50.0)
    assert stats["preamble_n"] == 1
    assert stats["preamble_copies_from_start"] == 0.0 and stats["preamble_copies_anywhere"] == 100.0
    assert stats["novel_1grams"] == pytest.approx((0 + 100 / 3) / 2)  # "a" is new
    assert stats["copied_words"] == pytest.approx((100 + 0) / 2)
    assert {"rouge1", "rouge2", "rougeL", "rougeLsum"} <= set(stats)


def test_summary_stats_without_references_has_no_rouge():
    stats = summary_stats(["a b c"], ["a b c d"], None, task="cnndm")
    assert "rouge1" not in stats and stats["preamble_copies_from_start"] is None
    with pytest.raises(ValueError):
        summary_stats(["a"], [], task="cnndm")


def test_summary_eval_adds_lead3():
    out = summary_eval({"policy": ["One."]}, ["One. Two."], ["One."], task="cnndm")
    assert out["task"] == "cnndm" and out["n_documents"] == 1
    assert list(out["policies"]) == ["lead-3", "policy"]
    assert out["policies"]["policy"]["rouge1"] == pytest.approx(100.0)
