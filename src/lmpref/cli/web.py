"""`lmpref` subcommands for the label store and server; `lmpref.cli` calls `register(sub)`.

Each handler opens the store, does one transaction and returns an exit code. Errors the
user can fix (unknown run, bad record) print one line to stderr and return 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from lmpref import store
from lmpref.io import write_jsonl


def _db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=None, help="store URL (default: $LMPREF_DB or sqlite:///lmpref.db)")


def _command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except store.StoreError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    return run


@_command
def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from lmpref.web import Settings, create_app

    try:
        settings = Settings(
            db_url=args.db or store.default_url(),
            min_seconds=args.min_seconds,
            secure_cookies=args.secure_cookies,
            lease_minutes=args.lease_minutes,
            session_hours=args.session_hours,
            workers=args.workers,
        )
    except ValueError as err:
        print(
            f"error: {err}; pass --lease-minutes and --session-hours as positive numbers, --workers as 1-64",
            file=sys.stderr,
        )
        return 2
    print(f"lmpref labeling server on http://{args.host}:{args.port} (store: {settings.db_url})", file=sys.stderr)
    if settings.workers == 1:
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level=args.log_level)
        return 0
    import dataclasses
    import json
    import os

    from lmpref.web.app import SETTINGS_ENV

    # Migrations and the cookie-signing secret once, here, not raced by the workers (which read
    # the secret from the store: it never goes into the environment).
    sessions = store.open_store(settings.db_url)
    with store.transaction(sessions) as session:
        store.server_secret(session)
    sessions.kw["bind"].dispose()
    os.environ[SETTINGS_ENV] = json.dumps(dataclasses.asdict(settings))
    uvicorn.run(
        "lmpref.web.app:app_from_env",
        factory=True,
        workers=settings.workers,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
    )
    return 0


@_command
def labelers_add(args: argparse.Namespace) -> int:
    with store.transaction(store.open_store(args.db)) as session:
        labeler, token = store.create_labeler(session, name=args.name, role=args.role)
    print(f"added {labeler.role} {labeler.name!r}; token (shown once, store it now):", file=sys.stderr)
    print(token)
    return 0


@_command
def labelers_list(args: argparse.Namespace) -> int:
    with store.transaction(store.open_store(args.db)) as session:
        for x in store.list_labelers(session):
            print(f"{x.name}\t{x.role}\t{'active' if x.active else 'disabled'}\t{x.created_at:%Y-%m-%d}")
    return 0


@_command
def labelers_rotate(args: argparse.Namespace) -> int:
    with store.transaction(store.open_store(args.db)) as session:
        token = store.rotate_token(session, name=args.name)
    print(f"new token for {args.name!r} (the old one no longer works):", file=sys.stderr)
    print(token)
    return 0


@_command
def labelers_disable(args: argparse.Namespace) -> int:
    with store.transaction(store.open_store(args.db)) as session:
        store.set_active(session, name=args.name, active=False)
    print(f"disabled {args.name!r}", file=sys.stderr)
    return 0


@_command
def enqueue(args: argparse.Namespace) -> int:
    with store.transaction(store.open_store(args.db)) as session:
        result = store.enqueue(
            session,
            run=args.run,
            records=store.read_jsonl(args.samples),
            batch=args.batch,
            redundancy=args.redundancy,
            gold=args.gold,
            gold_rate=args.gold_rate,
        )
    print(
        f"run {result.run!r} batch {result.batch!r}: {result.created} tasks created, "
        f"{result.existing} already enqueued, {result.too_few_valid} skipped (fewer than 2 valid responses)"
    )
    return 0


# What one row of each export format is, so a count is never read as "labels" when it is not.
ROW_UNITS = {
    "bestofk": "one per comparison label",
    "openai": "one per 4-sample comparison label with token ids, ties left out",
    "pairwise": "one per (chosen, other) pair: K-1 per comparison label, ties left out",
    "ratings": "one per accuracy rating",
    "critiques": "one per label with a critique or correction",
}


@_command
def export_labels(args: argparse.Namespace) -> int:
    with store.transaction(store.open_store(args.db)) as session:
        records = store.export_records(
            session,
            run=args.run,
            fmt=args.format,
            batch=args.batch,
            include_fast=args.include_fast,
            include_gold=args.include_gold,
        )
        if args.dataset:  # a datasets folder (datasets.load_from_disk), written whole like the JSONL
            from lmpref.formats.preferences import write_dataset

            rows = list(records)
            write_dataset(rows, args.out)
            n = len(rows)
        else:
            n = write_jsonl(args.out, records)  # written whole: a failed export leaves no half file
    unit = ROW_UNITS[args.format]
    left_out = [x for x, kept in (("too-fast", args.include_fast), ("gold-task", args.include_gold)) if not kept]
    note = f"; {' and '.join(left_out)} labels left out" if left_out else ""
    print(f"wrote {n} {args.format} rows to {args.out} ({unit}; bare flags are never exported{note})")
    return 0


@_command
def label_progress(args: argparse.Namespace) -> int:
    with store.transaction(store.open_store(args.db)) as session:
        p = store.progress(session, run=args.run, batch=args.batch)
    print(
        f"{p.labels} labels on non-gold tasks ({p.exportable} exportable, {p.too_fast} too fast, "
        f"{p.flag_only} bare flags), {p.complete}/{p.tasks} tasks complete, {p.queue_depth} labels still wanted, "
        f"{p.gold_tasks} gold tasks"
    )
    return 0


@_command
def andon(args: argparse.Namespace) -> int:
    with store.transaction(store.open_store(args.db)) as session:
        if args.andon_command == "pull":
            event = store.pull_andon(session, reason=args.reason, run=args.run)
            print(f"pulled Andon event {event.id}: training of {args.run or 'every run'} must stop")
            return 0
        if args.andon_command == "clear":
            store.clear_andon(session, event_id=args.event_id, note=args.note)
            print(f"cleared Andon event {args.event_id}")
            return 0
        events = store.open_andon_events(session, run=args.run)
        for e in events:
            print(f"{e.id}\t{e.run.name if e.run else '*'}\t{e.pulled_at:%Y-%m-%d %H:%M}\t{e.reason}")
        print("STOP: open Andon events" if events else "clear: no open Andon events", file=sys.stderr)
        return 1 if events else 0  # scripts can gate on the exit code


def register(subparsers: argparse._SubParsersAction) -> None:  # noqa: SLF001
    p = subparsers.add_parser("serve", help="run the labeling web app")
    _db(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--min-seconds", type=float, default=5.0, help="labels faster than this are marked too fast")
    p.add_argument("--secure-cookies", action="store_true", help="mark cookies Secure (behind HTTPS)")
    p.add_argument(
        "--session-hours", type=float, default=12.0, help="a browser login ends this long after it began (default 12)"
    )
    p.add_argument(
        "--lease-minutes",
        type=float,
        default=15.0,
        help="how long a served task is held for its labeler before another may take the slot (default 15)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server processes (default 1); more use more cores, on SQLite taking turns to write",
    )
    p.add_argument("--log-level", default="info")
    p.set_defaults(func=serve)

    p = subparsers.add_parser("labelers", help="manage labeler accounts")
    sub = p.add_subparsers(dest="labelers_command", required=True)
    q = sub.add_parser("add", help="add a labeler and print its one-time token")
    _db(q)
    q.add_argument("name")
    q.add_argument("--role", choices=["labeler", "admin"], default="labeler")
    q.set_defaults(func=labelers_add)
    q = sub.add_parser("list", help="list labelers")
    _db(q)
    q.set_defaults(func=labelers_list)
    q = sub.add_parser("rotate", help="replace a labeler's token")
    _db(q)
    q.add_argument("name")
    q.set_defaults(func=labelers_rotate)
    q = sub.add_parser("disable", help="stop a labeler's token and sessions from working")
    _db(q)
    q.add_argument("name")
    q.set_defaults(func=labelers_disable)

    p = subparsers.add_parser("enqueue", help="enqueue sampling JSONL as comparison tasks")
    _db(p)
    p.add_argument("--run", required=True)
    p.add_argument("--batch", default="default", help="round of the experiment loop (re-enqueueing is a no-op)")
    p.add_argument("--redundancy", type=int, default=1, help="labelers per comparison")
    p.add_argument("--gold-rate", type=float, default=None, help="fraction of served tasks that are gold")
    p.add_argument("--gold", action="store_true", help="records carry 'best' and become gold tasks")
    p.add_argument("samples", help="sampling JSONL from `lmpref sample`")
    p.set_defaults(func=enqueue)

    p = subparsers.add_parser("export-labels", help="write a run's labels as JSONL")
    _db(p)
    p.add_argument("--run", required=True)
    p.add_argument("--format", choices=list(store.FORMATS), default="bestofk")
    p.add_argument("--batch", default=None)
    p.add_argument("--include-fast", action="store_true", help="keep labels under the minimum time")
    p.add_argument("--include-gold", action="store_true", help="keep labels of gold tasks")
    p.add_argument(
        "--dataset",
        action="store_true",
        help="write OUT as a datasets folder (datasets.load_from_disk; --format pairwise is TRL's) instead of JSONL",
    )
    p.add_argument("out")
    p.set_defaults(func=export_labels)

    p = subparsers.add_parser("label-progress", help="how far labeling of a run is")
    _db(p)
    p.add_argument("--run", required=True)
    p.add_argument("--batch", default=None)
    p.set_defaults(func=label_progress)

    p = subparsers.add_parser("andon", help="the Andon cord: status (exit 1 if stopped), pull, clear")
    sub = p.add_subparsers(dest="andon_command", required=True)
    q = sub.add_parser("status")
    _db(q)
    q.add_argument("--run", default=None)
    q = sub.add_parser("pull")
    _db(q)
    q.add_argument("--run", default=None, help="default: every run")
    q.add_argument("--reason", required=True)
    q = sub.add_parser("clear")
    _db(q)
    q.add_argument("event_id", type=int)
    q.add_argument("--note", default="")
    for q in sub.choices.values():
        q.set_defaults(func=andon)
