"""SummarizationSource: the paper's queries for the pipeline, with the reference in Query.extra."""

import pytest

from lmpref.config import ConfigError, make_config
from lmpref.tasks import make_query_source
from lmpref.tasks.summarization import (
    CNNDM_PREFIX,
    TLDR_SUFFIX,
    SummarizationSource,
    document_of_query,
    in_eval_split,
    query_token_ids,
)


class WordTokenizer:
    """One token per character: lengths are easy to work out by hand."""

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(map(chr, ids))


def test_query_is_prefix_cut_document_suffix_within_query_length():
    tok = WordTokenizer()
    doc = "First line.\nSecond line here.\nThird."
    budget = 12 + len(CNNDM_PREFIX) + len(TLDR_SUFFIX)  # room for "First line." (11 chars) only
    ids = query_token_ids("cnndm", doc, tok, budget)
    assert tok.decode(ids) == CNNDM_PREFIX + "First line." + TLDR_SUFFIX
    assert len(ids) <= budget
    assert tok.decode(query_token_ids("tldr", doc, tok, 200)) == doc + TLDR_SUFFIX
    assert query_token_ids("tldr", "nolineendhere" * 3, tok, 10 + len(TLDR_SUFFIX)) is None
    with pytest.raises(ConfigError):
        query_token_ids("cnndm", doc, tok, 5)


def test_document_of_query_strips_the_prompt():
    assert document_of_query(CNNDM_PREFIX + "An article." + TLDR_SUFFIX) == "An article."
    assert document_of_query("A post." + TLDR_SUFFIX) == "A post."


def test_split_is_a_fixed_function_of_the_id():
    ids = [f"doc-{i}" for i in range(1000)]
    held = [i for i in ids if in_eval_split(i, 0.2)]
    assert 150 < len(held) < 250
    assert held == [i for i in ids if in_eval_split(i, 0.2)]
    assert not any(in_eval_split(i, 0.0) for i in ids)


@pytest.fixture(scope="module")
def tok():
    from lmpref.core.loading import load_tokenizer

    return load_tokenizer("tiny-gpt2")


def test_cnndm_source_with_a_real_tokenizer(tok):
    cfg = make_config("cnndm", "tiny")
    train = make_query_source(tok, cfg.task, "train")
    held = SummarizationSource(tok, cfg.task, "eval")
    assert isinstance(train, SummarizationSource)
    assert not {d.id for d in train.documents} & {d.id for d in held.documents}
    a, b = train.sample(5, "k"), train.sample(5, "k")
    assert [q.id for q in a] == [q.id for q in b] and [q.ids for q in a] == [q.ids for q in b]
    assert [q.id for q in train.sample(5, "other")] != [q.id for q in a]
    for q in a:
        assert len(q.ids) <= cfg.task.query_length
        assert q.text.startswith(CNNDM_PREFIX) and q.text.endswith(TLDR_SUFFIX)
        assert q.extra["reference"] and q.extra["task"] == "cnndm"
    more = held.sample(len(held.queries()) + 3, "k")  # more than there are: fresh passes, distinct ids
    assert len({q.id for q in more}) == len(more) and more[-1].id.endswith("~r1")


def test_user_jsonl_is_a_summarization_source(tok, tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        '{"id": "a", "post": "I lost my keys.\\nThen I found them.", "reference": "keys found"}\n'
        '{"id": "b", "post": "My cat sleeps all day.", "reference": "lazy cat"}\n'
    )
    cfg = make_config("tldr", "tiny", {"task.query_dataset": str(path), "task.holdout_fraction": 0.0})
    (q1, q2) = sorted(make_query_source(tok, cfg.task, "train").sample(2, 0), key=lambda q: q.id)
    assert q1.text == "I lost my keys.\nThen I found them." + TLDR_SUFFIX and q1.extra["reference"] == "keys found"
