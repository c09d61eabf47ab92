"""The page's cutting of text; the copying rule itself is tested in tests/test_copying.py."""

from lmpref.web.copying import copied_spans, segments


def test_segments_cover_the_text():
    text = "He said: The cat sat on the mat. Then left."
    pieces = segments(text, [(9, 31)])
    assert pieces == [("He said: ", False), ("The cat sat on the mat", True), (". Then left.", False)]
    assert "".join(p for p, _ in pieces) == text
    assert segments("abc", []) == [("abc", False)]


def test_page_uses_the_shared_rule():
    text = "He said: The cat sat on the mat. Then left."
    pieces = segments(text, copied_spans(text, "the cat sat on the mat").spans)
    assert [p for p, copied in pieces if copied] == ["The cat sat on the mat"]
