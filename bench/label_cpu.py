"""Server CPU per label, in process: the labeling app driven through ASGI, one request at a time.

The same two requests as `label_load.py` (GET /api/tasks/next, then POST /api/tasks/{id}/label,
Bearer token, round-robin over the labelers) are sent straight to `create_app(...)` as ASGI calls,
with no sockets and no uvicorn, and `time.process_time()` (every thread of this process) is read
around them. CPU time, unlike wall time, barely moves when other jobs load the machine, so this
compares two versions of the request path where `label_load.py`'s wall-clock figures cannot.
uvicorn's own share (HTTP parsing, about 0.3 ms per request) is not in it.

    python bench/label_cpu.py                       # SQLite file in a temp dir, 5 rounds of 500 labels
    python bench/label_cpu.py --profile 25          # and cProfile's top 25 functions (by own time)
    python bench/label_cpu.py --src /tmp/old/src    # another checkout's code (before/after)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from label_load import setup  # this directory is on sys.path when the script runs


class Client:
    """Raw ASGI requests: a scope like uvicorn's, the body in one message, the response collected."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def request(self, method: str, path: str, token: str, body: bytes = b"") -> tuple[int, bytes]:
        headers = [
            (b"host", b"127.0.0.1:8000"),
            (b"accept", b"*/*"),
            (b"accept-encoding", b"gzip, deflate"),
            (b"user-agent", b"label_cpu"),
            (b"authorization", b"Bearer " + token.encode()),
        ]
        if body:
            headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 50000),
            "scheme": "http",
            "method": method,
            "root_path": "",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "headers": headers,
            "state": {},
        }
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.Event().wait()  # a disconnect never comes
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        status, chunks = 0, []

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, b"".join(chunks)

    async def label(self, token: str, best: int) -> bool:
        status, body = await self.request("GET", "/api/tasks/next", token)
        if status == 204:
            return False
        assert status == 200, (status, body)
        task = json.loads(body)
        answer = json.dumps({"best": best % len(task["samples"])}).encode()
        status, body = await self.request("POST", f"/api/tasks/{task['task_id']}/label", token, answer)
        assert status == 201, (status, body)
        return True


async def run(client: Client, tokens: list[str], n: int, start: int) -> int:
    done = 0
    for i in range(start, start + n):
        done += await client.label(tokens[i % len(tokens)], i)
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labelers", type=int, default=64)
    ap.add_argument("--tasks", type=int, default=3000)
    ap.add_argument("--redundancy", type=int, default=3)
    ap.add_argument("--labels", type=int, default=500, help="labels per timed round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=200, help="labels before timing (caches, lazy imports)")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="also profile one round; print the top N")
    ap.add_argument("--src", default=None, help="run from this source tree (e.g. an older checkout's src/)")
    args = ap.parse_args()
    if args.src and os.environ.get("LMPREF_BENCH_SRC") != args.src:
        env = {**os.environ, "LMPREF_BENCH_SRC": args.src, "PYTHONPATH": args.src}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if not args.src:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from lmpref.web import Settings, create_app

    db = f"sqlite:///{Path(tempfile.mkdtemp(prefix='lmpref-cpu-')) / 'bench.db'}"
    tokens = setup(db, args.labelers, args.tasks, args.redundancy)
    client = Client(create_app(Settings(db_url=db, min_seconds=0)))
    try:
        import uvloop  # what uvicorn runs on when it is installed

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    at = 0
    loop.run_until_complete(run(client, tokens, args.warmup, at))
    at += args.warmup
    per_label = []
    for _ in range(args.rounds):
        t0 = time.process_time()
        done = loop.run_until_complete(run(client, tokens, args.labels, at))
        per_label.append((time.process_time() - t0) / max(done, 1) * 1000)
        at += args.labels
    print(
        f"store=sqlite labelers={args.labelers} labels/round={args.labels} rounds={args.rounds} "
        f"load={os.getloadavg()[0]:.2f}"
    )
    print(
        f"server CPU per label (in process, no uvicorn): min {min(per_label):.2f} ms, "
        f"median {statistics.median(per_label):.2f} ms, "
        f"rounds {' '.join(f'{x:.2f}' for x in per_label)}"
    )
    if args.profile:
        # cProfile sees one thread: each call the API hands to a worker thread gets its own profiler.
        from lmpref.web import api

        profilers = [cProfile.Profile(time.thread_time)]
        to_thread = api.run_in_threadpool

        async def profiled_threadpool(func: Any, *a: Any, **kw: Any) -> Any:
            def profiled() -> Any:
                profilers.append(cProfile.Profile(time.thread_time))
                return profilers[-1].runcall(func, *a, **kw)

            return await to_thread(profiled)

        api.run_in_threadpool = profiled_threadpool  # type: ignore[assignment]
        profilers[0].enable()
        loop.run_until_complete(run(client, tokens, args.labels, at))
        profilers[0].disable()
        pstats.Stats(*profilers).sort_stats("tottime").print_stats(args.profile)
    loop.close()


if __name__ == "__main__":
    main()
