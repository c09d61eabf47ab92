"""Preference data in and out (`lmpref.formats.preferences`, `lmpref import-preferences`,
`lmpref export-preferences`): each input shape and file type, the one-line errors, the split by
prompt, and the TRL format's round trip."""

import sys
from pathlib import Path

import datasets
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from lmpref import store  # noqa: E402
from lmpref.cli import main  # noqa: E402
from lmpref.formats.preferences import (  # noqa: E402
    Columns,
    doc_id_of,
    read_preferences,
    split_shared_prefix,
    trl_rows,
    write_preferences,
)
from lmpref.io import DataError, read_jsonl, write_jsonl  # noqa: E402
from web_store_fixtures import record, sqlite_url  # noqa: E402


def _jsonl(path: Path, rows: list[dict]) -> Path:
    write_jsonl(path, rows)
    return path


def _triples(labels):
    return [(lab.query, lab.responses, lab.best, lab.tie) for lab in labels]


# ---------------------------------------------------------------- pairwise


def test_pairwise_text_with_prompt(tmp_path):
    path = _jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "Name a fruit.", "chosen": " Apple.", "rejected": " Chair."},
            {"prompt": "Name a fruit.", "chosen": " Pear.", "rejected": " Table."},
            {"prompt": "Name a colour.", "chosen": " Red.", "rejected": " Seven."},
        ],
    )
    labels = read_preferences(path)
    assert _triples(labels) == [
        ("Name a fruit.", [" Apple.", " Chair."], 0, False),
        ("Name a fruit.", [" Pear.", " Table."], 0, False),
        ("Name a colour.", [" Red.", " Seven."], 0, False),
    ]
    ids = [lab.extra["doc_id"] for lab in labels]
    assert ids[0] == ids[1] == doc_id_of("Name a fruit.") != ids[2]  # one prompt, one doc_id
    assert len({lab.id for lab in labels}) == 3


def test_dialogues_without_prompt_split_at_the_last_assistant_turn(tmp_path):
    human = "\n\nHuman: Hi.\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke.\n\nAssistant:"
    path = _jsonl(
        tmp_path / "hh.jsonl",
        [{"chosen": human + " Why did the chicken cross the road?", "rejected": human + " No."}],
    )
    (label,) = read_preferences(path)
    assert label.query == human  # through the LAST "Assistant:", not the first
    assert label.responses == [" Why did the chicken cross the road?", " No."] and label.best == 0


def test_shared_prefix_without_a_dialogue_never_cuts_a_word():
    a, b = "The cat sat on the mat", "The cat sang"
    cut = split_shared_prefix(a, b)
    assert a[:cut] == "The cat " and (a[cut:], b[cut:]) == ("sat on the mat", "sang")


def test_chat_messages_with_and_without_prompt(tmp_path):
    user = [{"role": "user", "content": "2+2?"}]
    good, bad = [{"role": "assistant", "content": "4"}], [{"role": "assistant", "content": "5"}]
    path = _jsonl(
        tmp_path / "chat.jsonl",
        [{"prompt": user, "chosen": good, "rejected": bad}],
    )
    (label,) = read_preferences(path)
    assert label.query == "\n\nHuman: 2+2?\n\nAssistant:" and label.responses == [" 4", " 5"]
    assert label.extra["prompt_messages"] == user
    whole = _jsonl(tmp_path / "whole.jsonl", [{"chosen": user + good, "rejected": user + bad}])
    (same,) = read_preferences(whole)
    assert (same.query, same.responses, same.extra["doc_id"]) == (label.query, label.responses, label.extra["doc_id"])


# ---------------------------------------------------------------- labeled a/b, scored


def test_csv_answer_a_b_with_a_label_and_a_tie(tmp_path):
    path = tmp_path / "ab.csv"
    path.write_text(
        "question,answer_a,answer_b,label\nWhy?,Because.,No idea.,a\nHow?,Badly.,Carefully.,B\nWho?,Me.,You.,tie\n"
    )
    labels = read_preferences(path)
    assert _triples(labels) == [
        ("Why?", ["Because.", "No idea."], 0, False),
        ("How?", ["Badly.", "Carefully."], 1, False),
        ("Who?", ["Me.", "You."], -1, True),
    ]


def test_other_column_names_by_flag(tmp_path):
    path = _jsonl(tmp_path / "x.jsonl", [{"instr": "Say hi.", "left": "hi", "right": "bye", "winner": 1}])
    (label,) = read_preferences(path, Columns(prompt="instr", a="left", b="right", label="winner"))
    assert (label.query, label.responses, label.best) == ("Say hi.", ["hi", "bye"], 1)


def test_parquet_ultrafeedback_best_of_k_and_ties(tmp_path):
    def comp(text, score):
        return {"response": text, "overall_score": score}

    rows = [
        {"instruction": "Write a haiku.", "completions": [comp("a", 3.0), comp("b", 8.5), comp("c", 5.0)]},
        {"instruction": "Add 1+1.", "completions": [comp("2", 9.0), comp("two", 9.0), comp("3", 1.0)]},
    ]
    path = tmp_path / "uf.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    labels = read_preferences(path)
    assert _triples(labels) == [
        ("Write a haiku.", ["a", "b", "c"], 1, False),
        ("Add 1+1.", ["2", "two", "3"], -1, True),  # the top two are equal: a tie
    ]
    assert labels[0].extra["scores"] == [3.0, 8.5, 5.0]


def test_responses_with_ranks_lower_is_better(tmp_path):
    path = _jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "responses": ["x", "y", "z"], "ranks": [2, 1, 3]}])
    (label,) = read_preferences(path)
    assert label.best == 1
    (by_flag,) = read_preferences(
        _jsonl(tmp_path / "s.jsonl", [{"prompt": "p", "outs": ["x", "y", "z"], "pos": [2, 1, 3]}]),
        Columns(responses="outs", scores="pos", ranks=True),
    )
    assert by_flag.best == 1


# ---------------------------------------------------------------- folders


def test_save_to_disk_dataset_and_its_splits(tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": "good", "rejected": "bad"} for i in range(3)]
    folder = tmp_path / "ds"
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    assert [lab.query for lab in read_preferences(folder)] == ["q0", "q1", "q2"]
    dd = tmp_path / "dd"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:2]), "test": datasets.Dataset.from_list(rows[2:])}
    ).save_to_disk(str(dd))
    assert [lab.query for lab in read_preferences(dd, split="test")] == ["q2"]
    with pytest.raises(DataError, match="no split 'dev'"):
        read_preferences(dd, split="dev")


# ---------------------------------------------------------------- errors, one line, exit 2


def _cli_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmpref: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_missing_column_names_the_file_the_row_and_the_column(tmp_path, capsys):
    path = _jsonl(
        tmp_path / "bad.jsonl",
        [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"prompt": "a", "chosen": "b", "rejected": None}],
    )
    err = _cli_error(capsys, ["import-preferences", str(path), "--out", str(tmp_path / "o.jsonl")])
    assert f"{path}: row 2: missing column 'rejected'" in err
    assert not (tmp_path / "o.jsonl").exists()


def test_unknown_columns_and_bad_labels_are_clear(tmp_path, capsys):
    path = _jsonl(tmp_path / "what.jsonl", [{"text": "a", "score": 1}])
    err = _cli_error(capsys, ["import-preferences", str(path), "--out", str(tmp_path / "o.jsonl")])
    assert "no preference columns found (it has score, text)" in err and "--chosen-col" in err
    path = _jsonl(tmp_path / "ab.jsonl", [{"prompt": "p", "answer_a": "x", "answer_b": "y", "label": "maybe"}])
    err = _cli_error(capsys, ["import-preferences", str(path), "--out", str(tmp_path / "o.jsonl")])
    assert f"{path}: row 1: column 'label' is 'maybe'" in err


def test_an_unreachable_hub_id_is_one_line(tmp_path, capsys, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # read at import time: offline now, so the test answers at once instead of retrying the network
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    err = _cli_error(capsys, ["import-preferences", "someone/no-such-prefs", "--out", str(tmp_path / "o.jsonl")])
    assert "someone/no-such-prefs: not a local file or directory, and the Hugging Face Hub dataset could not" in err
    err = _cli_error(capsys, ["import-preferences", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o")])
    assert "missing.jsonl: no such file or directory" in err


# ---------------------------------------------------------------- the split by prompt


def test_labels_of_one_prompt_are_held_out_together(tmp_path):
    from lmpref.core.reward import Choice, split_labels

    rows = [{"prompt": f"prompt {i % 7}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(40)]
    labels = read_preferences(_jsonl(tmp_path / "p.jsonl", rows))
    choices = [Choice([1], [[2], [3]], 0, lab.extra["doc_id"]) for lab in labels]
    train, heldout = split_labels(choices, 0.25, seed=0)
    assert heldout and train
    assert not {c.doc_id for c in train} & {c.doc_id for c in heldout}
    assert len({c.doc_id for c in train} | {c.doc_id for c in heldout}) == 7


# ---------------------------------------------------------------- out: TRL, and back


def test_trl_export_round_trips_as_jsonl_and_as_a_dataset_folder(tmp_path, capsys):
    labels = tmp_path / "labels.jsonl"
    _jsonl(
        labels,
        [
            {"id": "a", "query": "Q1", "responses": [" x", " y", " z"], "best": 2, "tie": False, "labeler": "ann"},
            {"id": "b", "query": "Q2", "responses": [" u", " v"], "best": -1, "tie": True, "labeler": "ann"},
        ],
    )
    out = tmp_path / "trl.jsonl"
    assert main(["export-preferences", str(labels), "--format", "trl", "--out", str(out)]) == 0
    rows = [r for _, r in read_jsonl(out)]
    assert rows == [
        {"prompt": "Q1", "chosen": " z", "rejected": " x"},
        {"prompt": "Q1", "chosen": " z", "rejected": " y"},
    ]  # K - 1 pairs of a best-of-3 label; the tie is left out
    back = read_preferences(out)
    assert _triples(back) == [("Q1", [" z", " x"], 0, False), ("Q1", [" z", " y"], 0, False)]
    folder = tmp_path / "trl_ds"
    assert main(["export-preferences", str(labels), "--out", str(folder)]) == 0
    assert "datasets.load_from_disk" in capsys.readouterr().out
    assert datasets.load_from_disk(str(folder)).to_list() == rows
    assert _triples(read_preferences(folder)) == _triples(back)


def test_conversational_export_keeps_the_prompt_messages(tmp_path):
    user = [{"role": "user", "content": "2+2?"}]
    src = _jsonl(
        tmp_path / "chat.jsonl",
        [
            {
                "prompt": user,
                "chosen": [{"role": "assistant", "content": "4"}],
                "rejected": [{"role": "assistant", "content": "5"}],
            }
        ],
    )
    rows = trl_rows(read_preferences(src), conversational=True)
    assert rows == [
        {
            "prompt": user,
            "chosen": [{"role": "assistant", "content": "4"}],
            "rejected": [{"role": "assistant", "content": "5"}],
        }
    ]
    write_preferences(rows, tmp_path / "chat_ds")
    (again,) = read_preferences(tmp_path / "chat_ds")
    assert (again.query, again.responses) == ("\n\nHuman: 2+2?\n\nAssistant:", [" 4", " 5"])


def test_import_writes_lmpref_labels_that_train_reward_reads(tmp_path, capsys):
    from lmpref.core.reward import read_labels
    from lmpref.records import LabelRecord

    src = _jsonl(tmp_path / "p.jsonl", [{"prompt": "Q", "chosen": " a", "rejected": " b"}])
    out = tmp_path / "labels.jsonl"
    assert main(["import-preferences", str(src), "--out", str(out)]) == 0
    assert "wrote 1 best-of-K labels (0 ties) of 1 prompts" in capsys.readouterr().out
    (rec,) = [LabelRecord.from_json(r) for _, r in read_jsonl(out)]
    assert (rec.query, rec.responses, rec.best, rec.extra["doc_id"]) == ("Q", [" a", " b"], 0, doc_id_of("Q"))

    class Tok:
        def __len__(self):
            return 1000

        def encode(self, text, add_special_tokens=False):
            return [ord(c) for c in text]

    (choice,) = read_labels(out, Tok())
    assert choice.doc_id == doc_id_of("Q") and choice.response_ids == [[32, 97], [32, 98]]


# ---------------------------------------------------------------- lmpref's own exports, through the importer


@pytest.fixture
def labeled_store(tmp_path):
    factory = store.open_store(sqlite_url(tmp_path))
    with store.transaction(factory) as session:
        ann = store.create_labeler(session, name="ann")[0]
        store.enqueue(session, run="r", records=[record(i) for i in range(3)])
        for _ in range(3):
            served = store.next_task(session, labeler=ann, run="r")
            store.save_label(session, labeler=ann, task_id=served.task.id, best=served.task.id % 4, min_seconds=0.0)
    yield factory
    factory.kw["bind"].dispose()


@pytest.mark.parametrize("fmt", ["bestofk", "pairwise", "openai"])
def test_every_export_labels_format_reads_back(labeled_store, tmp_path, fmt):
    with store.transaction(labeled_store) as session:
        rows = list(store.export_records(session, run="r", fmt=fmt))
    path = _jsonl(tmp_path / f"{fmt}.jsonl", rows)
    if fmt == "openai":  # token ids: the reward model's reader takes these, with its tokenizer
        with pytest.raises(DataError, match="pass the file to `lmpref train-reward --labels` directly"):
            read_preferences(path)
        return
    labels = read_preferences(path)
    assert len(labels) == len(rows)
    for row, label in zip(rows, labels):
        if fmt == "bestofk":
            assert (label.id, label.query, label.responses, label.best) == (
                row["id"],
                row["query"],
                row["responses"],
                row["best"],
            )
            assert label.response_ids == row["response_ids"] and label.labeler == "ann"
        else:
            assert (label.query, label.responses, label.best) == (row["prompt"], [row["chosen"], row["rejected"]], 0)
        assert label.extra["doc_id"]


def test_export_labels_writes_a_datasets_folder(labeled_store, tmp_path, capsys):
    url = str(labeled_store.kw["bind"].url)
    with store.transaction(labeled_store) as session:
        rows = list(store.export_records(session, run="r", fmt="pairwise"))
    out = tmp_path / "pairs_ds"
    assert main(["export-labels", "--db", url, "--run", "r", "--format", "pairwise", "--dataset", str(out)]) == 0
    assert f"wrote {len(rows)} pairwise rows" in capsys.readouterr().out
    assert datasets.load_from_disk(str(out)).to_list() == rows
    assert len(read_preferences(out)) == len(rows) == 9  # 3 labels of 4 responses: 3 pairs each
