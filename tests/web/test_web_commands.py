import argparse
import json

import pytest

from lmpref import store
from lmpref.cli.web import register
from web_store_fixtures import record


@pytest.fixture
def lmpref(tmp_path, monkeypatch):
    """Run `lmpref ...` through our subcommands on a parser like cli.py's."""
    monkeypatch.setenv("LMPREF_DB", f"sqlite:///{tmp_path / 'env.db'}")
    parser = argparse.ArgumentParser(prog="lmpref")
    register(parser.add_subparsers(dest="command"))

    def run(*argv):
        args = parser.parse_args([str(a) for a in argv])
        return args.func(args)

    return run


def test_labelers_add_prints_a_working_token(lmpref, tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    assert lmpref("labelers", "add", "ann", "--role", "admin", "--db", db) == 0
    token = capsys.readouterr().out.strip()
    with store.transaction(store.open_store(db)) as session:
        assert store.authenticate(session, token=token).role == "admin"
    assert lmpref("labelers", "list", "--db", db) == 0
    assert capsys.readouterr().out.startswith("ann\tadmin\tactive")
    assert lmpref("labelers", "add", "ann", "--db", db) == 2  # exists
    assert lmpref("labelers", "rotate", "ann", "--db", db) == 0
    assert capsys.readouterr().out.strip() != token
    assert lmpref("labelers", "disable", "ann", "--db", db) == 0
    with pytest.raises(SystemExit):
        lmpref("labelers", "add", "bob", "--role", "root", "--db", db)


def test_enqueue_label_export(lmpref, tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(record(i)) + "\n" for i in range(3)))
    assert lmpref("enqueue", "--run", "r", "--batch", "round-0", "--redundancy", "2", samples) == 0
    assert "3 tasks created" in capsys.readouterr().out
    assert lmpref("enqueue", "--run", "r", "--batch", "round-0", samples) == 0
    assert "3 already enqueued" in capsys.readouterr().out
    factory = store.open_store()  # $LMPREF_DB
    with store.transaction(factory) as session:
        ann, _ = store.create_labeler(session, name="ann")
        served = store.next_task(session, labeler=ann)
        store.save_label(session, labeler=ann, task_id=served.task.id, best=0)
    for fmt, rows in (("bestofk", 1), ("openai", 1), ("pairwise", 3), ("ratings", 0)):
        out = tmp_path / f"{fmt}.jsonl"
        assert lmpref("export-labels", "--run", "r", "--format", fmt, out) == 0
        assert len(out.read_text().splitlines()) == rows
    assert lmpref("label-progress", "--run", "r", "--batch", "round-0") == 0
    out = capsys.readouterr().out
    assert "wrote 3 pairwise rows" in out and "one per (chosen, other) pair" in out
    assert (
        "1 labels on non-gold tasks (1 exportable, 0 too fast, 0 bare flags), 0/3 tasks complete, 5 labels still wanted"
    ) in out
    assert lmpref("export-labels", "--run", "nope", tmp_path / "x.jsonl") == 2


def test_bad_samples_file_is_a_clear_error(lmpref, tmp_path, capsys):
    samples = tmp_path / "bad.jsonl"
    samples.write_text('{"id": "q1", "query": "x", "responses": "nope"}\n')
    assert lmpref("enqueue", "--run", "r", samples) == 2
    assert "responses" in capsys.readouterr().err


def test_andon_commands(lmpref, capsys):
    with store.transaction(store.open_store()) as session:
        store.ensure_run(session, name="r")
    assert lmpref("andon", "status", "--run", "r") == 0
    assert lmpref("andon", "pull", "--run", "r", "--reason", "bad samples") == 0
    assert lmpref("andon", "status", "--run", "r") == 1  # scripts can gate on this
    event_id = capsys.readouterr().out.split("pulled Andon event ")[1].split(":")[0]
    assert lmpref("andon", "clear", event_id, "--note", "ok") == 0
    assert lmpref("andon", "status") == 0
    assert lmpref("andon", "clear", event_id) == 2


def test_serve_is_registered():
    parser = argparse.ArgumentParser(prog="lmpref")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--db", "sqlite:///x.db", "--port", "9000"])
    assert (args.host, args.port, args.db, args.min_seconds, args.lease_minutes) == (
        "127.0.0.1",
        9000,
        "sqlite:///x.db",
        5.0,
        15.0,
    )
    assert callable(args.func)  # started for real by test_browser.py


def test_serve_refuses_a_non_positive_lease(lmpref, capsys):
    assert lmpref("serve", "--lease-minutes", "0") == 2
    assert "--lease-minutes and --session-hours as positive numbers" in capsys.readouterr().err
    assert lmpref("serve", "--session-hours", "0") == 2
