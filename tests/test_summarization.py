import json

import pytest

from lmpref.core.responses import truncate_response
from lmpref.io import DataError
from lmpref.tasks.summarization import (
    SummaryExample,
    clean_cnndm_article,
    cut_to_tokens,
    detokenize_ptb,
    format_query,
    load_cnndm,
    load_summaries_jsonl,
    load_tldr,
    read_tldr_comparisons,
)


def truncate_at_stop_token(ids, stop, after):
    n, valid = truncate_response(ids, stop if isinstance(stop, int) else set(stop), after)
    return list(ids[:n]), valid


class ByteTokenizer:
    """One token per UTF-8 byte: newline is token 10, "." is 46."""

    def encode(self, text):
        return list(text.encode("utf-8"))


class FakeHFTokenizer(ByteTokenizer):
    """Looks like a transformers tokenizer: adds a BOS token unless told not to."""

    all_special_ids = [0]

    def encode(self, text, add_special_tokens=True):
        return ([0] if add_special_tokens else []) + super().encode(text)


# ---------------------------------------------------------------- truncation


def test_truncate_keeps_first_stop_at_or_after_index():
    assert truncate_at_stop_token([5, 1, 9, 1, 7], 1, 2) == ([5, 1, 9, 1], True)
    assert truncate_at_stop_token([5, 1, 9, 1, 7], 1, 3) == ([5, 1, 9, 1], True)
    assert truncate_at_stop_token([5, 1, 9, 1, 7], 1, 0) == ([5, 1], True)


def test_truncate_without_stop_after_index_is_invalid_and_uncut():
    assert truncate_at_stop_token([5, 1, 9, 7], 1, 2) == ([5, 1, 9, 7], False)
    assert truncate_at_stop_token([], 1, 0) == ([], False)


def test_truncate_accepts_a_set_of_stop_tokens():
    # GPT-2 has "\n" = 198 and "\n\n" = 628; either ends a summary.
    assert truncate_at_stop_token([3, 628, 4, 198], {198, 628}, 1) == ([3, 628], True)


# ---------------------------------------------------------------- query cut and format


def test_cut_keeps_text_that_fits():
    assert cut_to_tokens("aaa\nbbb", ByteTokenizer(), 7) == "aaa\nbbb"


def test_cut_at_last_line_end_that_fits():
    text = "aaa\nbbb\nccc"
    assert cut_to_tokens(text, ByteTokenizer(), 10) == "aaa\nbbb"
    assert cut_to_tokens(text, ByteTokenizer(), 7) == "aaa\nbbb"
    assert cut_to_tokens(text, ByteTokenizer(), 6) == "aaa"
    assert cut_to_tokens(text, ByteTokenizer(), 2) is None


def test_cut_falls_back_to_sentence_end_without_line_ends():
    assert cut_to_tokens("One two. Three four. Five", ByteTokenizer(), 12) == "One two."
    assert cut_to_tokens("One two. Three four. Five", ByteTokenizer(), 22) == "One two. Three four."
    assert cut_to_tokens("abcdefghij", ByteTokenizer(), 5) is None


def test_cut_does_not_count_special_tokens_of_hf_tokenizers():
    assert cut_to_tokens("aaa\nbbb", FakeHFTokenizer(), 7) == "aaa\nbbb"


def test_format_query_matches_the_paper():
    assert format_query("tldr", "My post.", None) == "My post.\n\nTL;DR:"
    assert format_query("cnndm", "An article.", None) == "Article:\n\nAn article.\n\nTL;DR:"
    assert format_query("cnndm", "aaa\nbbb\nccc", ByteTokenizer(), 8) == "Article:\n\naaa\nbbb\n\nTL;DR:"
    assert format_query("tldr", "abcdefghij", ByteTokenizer(), 5) is None
    with pytest.raises(ValueError, match="unknown summarization task"):
        format_query("books", "x", None)


# ---------------------------------------------------------------- CNN/DM clean-up


@pytest.mark.parametrize(
    "raw, clean",
    [
        (
            "By . John Smith . PUBLISHED: . 12:01 EST, 1 January 2013 . | . UPDATED: . 14:02 EST, "
            "1 January 2013 . The body starts here.",
            "The body starts here.",
        ),
        ("By . Daily Mail Reporter . PUBLISHED: . 09:24 EST, 1 December 2013 . The body.", "The body."),
        ("By . Sam Webb and . Tom Jones . The body starts.", "The body starts."),
        ("By\nSam Webb\n\nThe body.", "The body."),
        ("Last updated at 5:05 PM on 3rd January 2012 . The body.", "The body."),
        ("LONDON, England (CNN) -- Police said on Monday.", "Police said on Monday."),
        ("(CNN) -- Police said.", "Police said."),
        ("(CNN)They may not be aliens.", "They may not be aliens."),
        ("New Delhi, India (CNN)As the earth shook.", "As the earth shook."),
        ("Rio de Janeiro, Brazil (CNN) -- Rain fell.", "Rain fell."),
        ("Byron said (CNN) was wrong.", "Byron said (CNN) was wrong."),
        ("It\u2019s a \u2018test\u2019.\n\n\n\nNext.", "It's a 'test'.\n\nNext."),
    ],
)
def test_clean_cnndm_article(raw, clean):
    assert clean_cnndm_article(raw) == clean


def test_detokenize_ptb():
    assert detokenize_ptb("Locke 's first six games . Kite 's length is 6 km -LRB- 3.7 miles -RRB- .") == (
        "Locke's first six games. Kite's length is 6 km (3.7 miles)."
    )
    assert detokenize_ptb("A troll called ` fatalsplash ' then , he said `` no '' .") == (
        "A troll called 'fatalsplash' then, he said \"no\"."
    )
    assert detokenize_ptb("an extra £ 2,100 a year , and did n't stop") == "an extra £2,100 a year, and didn't stop"


# ---------------------------------------------------------------- loading


def test_load_user_jsonl(tmp_path):
    path = tmp_path / "mine.jsonl"
    rows = [{"id": "a", "article": "(CNN) -- Text.", "reference": "Ref."}, {"post": "A post."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_summaries_jsonl(path, task="cnndm") == [
        SummaryExample("a", "Text.", "Ref."),
        SummaryExample("mine:2", "A post.", None),
    ]
    assert load_summaries_jsonl(path, task="tldr")[0].document == "(CNN) -- Text."


def test_load_user_jsonl_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "a", "post": "ok"}\n{"id": "b", "text": "no article"}\n')
    with pytest.raises(DataError, match="bad.jsonl:2"):
        load_summaries_jsonl(path, task="tldr")


def test_shipped_cnndm():
    examples = load_cnndm()
    assert len(examples) == 250 and len({e.id for e in examples}) == 250
    assert all(e.reference and " ." not in e.reference for e in examples)
    assert not any(e.document.startswith(("(CNN)", "By .")) or "(CNN)" in e.document[:80] for e in examples)


def test_shipped_tldr_posts():
    posts = load_tldr()
    assert len(posts) == len({e.document for e in posts}) == 880
    assert sum(e.reference is not None for e in posts) == 14
    assert not any("[summary]" in e.document for e in posts)


def test_tldr_comparisons_are_best_of_2_labels():
    records = read_tldr_comparisons()
    assert len(records) == 929 and len({r["id"] for r in records}) == 929
    assert len({r["doc_id"] for r in records}) == 866  # one id per post; 55 posts are compared more than once
    first = records[0]
    assert set(first) == {"id", "doc_id", "query", "responses", "best", "tie", "labeler"}
    assert first["doc_id"] == next(p.id for p in load_tldr() if first["query"].startswith(p.document[:200]))
    assert first["query"].startswith("I had been in a long distance relationship")
    assert first["query"].endswith("bigger mess than it needs to be.\n\nTL;DR:")
    assert first["responses"][0].startswith(" Ex is threatening me with legal action")
    assert first["best"] == 0 and first["tie"] is False
    assert {r["best"] for r in records} == {0, 1}


def test_tldr_comparisons_skip_posts_that_cannot_be_cut(tmp_path):
    path = tmp_path / "cmp.jsonl"
    rows = [
        {"input_text": "short post. [summary]: ", "candidate_0": " a", "candidate_1": " b", "choice": 1},
        {"input_text": "x" * 50 + " [summary]: ", "candidate_0": " a", "candidate_1": " b", "choice": 0},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = read_tldr_comparisons(path, tokenizer=ByteTokenizer(), max_tokens=20)
    assert [r["query"] for r in records] == ["short post.\n\nTL;DR:"]
    assert records[0]["best"] == 1
