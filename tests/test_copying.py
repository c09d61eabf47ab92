"""The one copying rule (lmpref.eval.copying), checked on literal examples."""

import pytest

from lmpref.eval.copying import CopiedRun, copied_spans


def test_copied_run_is_found_with_case_and_punctuation_ignored():
    sample = "He said: The cat sat on the mat. Then left."
    c = copied_spans(sample, "Yesterday the cat sat on the mat today")
    assert c.spans == [(9, 31)] and sample[9:31] == "The cat sat on the mat"
    assert c.runs == [CopiedRun(start=2, context_start=1, length=6)]
    assert c.context_spans == [(10, 32)]
    assert (c.copied_words, c.words) == (6, 10)
    assert c.fraction == pytest.approx(0.6)


def test_runs_shorter_than_three_words_are_not_copying():
    c = copied_spans("the cat ran home", "the cat sat at home")
    assert c.spans == [] and c.runs == [] and c.fraction == 0.0


def test_min_words_is_a_parameter():
    assert copied_spans("the cat ran", "the cat sat", min_words=2).spans == [(0, 7)]
    with pytest.raises(ValueError):
        copied_spans("a", "a", min_words=0)


def test_words_must_be_consecutive_in_the_context_too():
    # Every 2-gram of "a b c d" is in the context, but no 3 words in a row are.
    assert copied_spans("a b c d", "a b x b c y c d").spans == []


def test_every_word_in_a_qualifying_run_counts_not_a_greedy_choice():
    # "a b c" (context 0) and "b c d" (context 4) both qualify: all four words are copied, which a
    # greedy left-to-right choice of "a b c" would miss for "d".
    c = copied_spans("a b c d", "a b c x b c d")
    assert c.runs == [CopiedRun(0, 0, 3), CopiedRun(1, 4, 3)]
    assert c.copied_words == 4 and c.spans == [(0, 7)]


def test_the_longest_run_and_earliest_context_position_are_reported():
    c = copied_spans("x b c d e", "b c d q b c d e b c d e")
    assert c.runs == [CopiedRun(start=1, context_start=4, length=4)]


def test_two_separate_copies():
    sample = "one two three NEW four five six"
    c = copied_spans(sample, "one two three and four five six")
    assert [sample[s:e] for s, e in c.spans] == ["one two three", "four five six"]
    assert c.runs == [CopiedRun(0, 0, 3), CopiedRun(4, 4, 3)]
    assert c.copied_words == 6


def test_adjacent_copies_from_different_places_join():
    sample = "one two three four five six"
    context = "four five six ... one two three"
    c = copied_spans(sample, context)
    assert c.spans == [(0, len(sample))] and c.fraction == 1.0
    assert [context[s:e] for s, e in c.context_spans] == ["one two three", "four five six"]


def test_apostrophes_split_words():
    # `\w+` words: "don't" is "don" + "t", so "don't stop" is a run of three words.
    assert copied_spans("I don't stop", "you don't stop").copied_words == 3


def test_empty_texts():
    assert copied_spans("", "anything").fraction == 0.0
    assert copied_spans("some words here", "").spans == []
