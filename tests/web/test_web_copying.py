import pytest

from lmpref.web.copying import copied_spans, segments


def test_copied_run_is_found_with_case_and_punctuation_ignored():
    sample = "He said: The cat sat on the mat. Then left."
    c = copied_spans(sample, "the cat sat on the mat today")
    assert c.spans == [(9, 31)] and sample[9:31] == "The cat sat on the mat"
    assert (c.copied_words, c.words) == (6, 10)
    assert c.fraction == pytest.approx(0.6)


def test_runs_shorter_than_three_words_are_not_copying():
    c = copied_spans("the cat ran home", "the cat sat at home")
    assert c.spans == [] and c.fraction == 0.0


def test_min_words_is_a_parameter():
    assert copied_spans("the cat ran", "the cat sat", min_words=2).spans == [(0, 7)]


def test_words_must_be_consecutive_in_the_context_too():
    # Every 2-gram of "a b c d" is in the context, but no 3 words in a row are.
    assert copied_spans("a b c d", "a b x b c y c d").spans == []


def test_two_separate_copies():
    sample = "one two three NEW four five six"
    c = copied_spans(sample, "one two three and four five six")
    assert [sample[s:e] for s, e in c.spans] == ["one two three", "four five six"]
    assert c.copied_words == 6


def test_adjacent_copies_from_different_places_join():
    sample = "one two three four five six"
    c = copied_spans(sample, "four five six ... one two three")
    assert c.spans == [(0, len(sample))] and c.fraction == 1.0


def test_empty_texts():
    assert copied_spans("", "anything").fraction == 0.0
    assert copied_spans("some words here", "").spans == []


def test_segments_cover_the_text():
    text = "He said: The cat sat on the mat. Then left."
    pieces = segments(text, [(9, 31)])
    assert pieces == [("He said: ", False), ("The cat sat on the mat", True), (". Then left.", False)]
    assert "".join(p for p, _ in pieces) == text
    assert segments("abc", []) == [("abc", False)]
