"""Every comparison format `lmpref export-labels` writes is read back by `train-reward`'s reader
(`read_labels`), with the same choices; the ratings format gets a clear error instead."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from lmpref import store  # noqa: E402
from lmpref.core.reward import read_labels  # noqa: E402
from lmpref.io import DataError, write_jsonl  # noqa: E402
from web_store_fixtures import record, sqlite_url  # noqa: E402


class _Tok:
    def __len__(self):
        return 1000

    def encode(self, text, add_special_tokens=False):
        return [ord(c) % 1000 for c in text]


@pytest.fixture
def labeled_store(tmp_path):
    factory = store.open_store(sqlite_url(tmp_path))
    with store.transaction(factory) as session:
        ann = store.create_labeler(session, name="ann")[0]
        store.enqueue(session, run="r", records=[record(i) for i in range(3)])
        for _ in range(3):
            served = store.next_task(session, labeler=ann, run="r")
            best = served.task.id % 4
            store.save_label(session, labeler=ann, task_id=served.task.id, best=best, min_seconds=0.0)
    yield factory
    factory.kw["bind"].dispose()


@pytest.mark.parametrize("fmt", ["bestofk", "openai", "pairwise"])
def test_each_comparison_format_round_trips_through_train_reward(labeled_store, tmp_path, fmt):
    with store.transaction(labeled_store) as session:
        rows = list(store.export_records(session, run="r", fmt=fmt))
    path = tmp_path / f"{fmt}.jsonl"
    assert write_jsonl(path, rows) == len(rows) > 0
    labels = read_labels(path, _Tok())
    assert len(labels) == len(rows)
    for row, label in zip(rows, labels):
        if fmt == "pairwise":  # chosen is always response 0
            assert label.best == 0 and label.response_ids[0] == _Tok().encode(row["chosen"])
        elif fmt == "bestofk":
            assert label.best == row["best"] and label.response_ids == row["response_ids"]
        else:
            assert label.best == row["best"] and label.response_ids == [row[f"sample{i}"] for i in range(4)]


def test_the_ratings_format_gets_a_clear_error(tmp_path):
    path = tmp_path / "ratings.jsonl"
    write_jsonl(
        path,
        [
            {
                "id": "a",
                "doc_id": None,
                "policy": "p",
                "query": "q",
                "response": "r",
                "rating": "accurate",
                "note": None,
                "labeler": "ann",
            }
        ],
    )
    with pytest.raises(DataError, match="accuracy rating, not a comparison"):
        read_labels(path, _Tok())


def test_the_critiques_format_gets_a_clear_error(tmp_path):
    path = tmp_path / "critiques.jsonl"
    write_jsonl(
        path,
        [
            {
                "id": "a",
                "task_id": 1,
                "kind": "compare",
                "labeler": "ann",
                "query": "q",
                "answer": "r",
                "critique": "too long",
                "correction": None,
                "created_at": "2026-01-01T00:00:00",
            }
        ],
    )
    with pytest.raises(DataError, match="a critique, not a comparison"):
        read_labels(path, _Tok())
