"""The page's cutting of text; the copying rule itself is tested in tests/test_copying.py."""

import re

from lmpref.web.copying import context_segments, copied_spans, segments


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


def test_context_segments_mark_each_source_with_the_samples_that_copied_it():
    context = "the quick brown fox jumps over the lazy dog"
    a = copied_spans("so the quick brown fox ran", context).context_spans  # "the quick brown fox"
    b = copied_spans("it jumps over the lazy dog", context).context_spans  # "jumps over the lazy dog"
    c = copied_spans("brown fox jumps over here", context).context_spans  # "brown fox jumps over"
    pieces = context_segments(context, [a, b, c])
    assert "".join(p for p, _ in pieces) == context
    assert pieces == [
        ("the quick ", (1,)),
        ("brown fox", (1, 3)),
        (" ", (3,)),
        ("jumps over", (2, 3)),
        (" the lazy dog", (2,)),
    ]
    assert context_segments("abc", [[], []]) == [("abc", ())]


def test_compare_page_marks_the_copied_source_in_the_context(app, client, tokens):
    from web_helpers import enqueue, login

    from web_store_fixtures import record

    rec = record(0)
    rec["responses"][2] = "He wrote that the quick brown fox jumps over it."
    enqueue(app, [rec])
    login(client, tokens["ann"])
    page = client.get("/compare").text
    context = re.search(r'<div class="context-text" id="context">(.*?)</div>', page, re.S).group(1)
    texts = [s.split("</div>")[0] for s in page.split('class="sample-text">')[1:]]
    position = 1 + next(i for i, t in enumerate(texts) if "He wrote" in t)
    assert f'<mark class="copied source" data-samples="{position}"' in context
    assert ">the quick brown fox jumps over</mark>" in context
