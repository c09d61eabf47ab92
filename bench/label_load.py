"""Load benchmark of the labeling server: many concurrent labelers on loopback.

Starts `lmpref serve`'s app (uvicorn, one process) on a fresh store, creates labelers and
tasks, then each simulated labeler loops GET /api/tasks/next -> POST /api/tasks/{id}/label
with no think time until the queue is empty or the time is up. Prints labels/s and latency
percentiles. Client and server share the machine, so on few cores this understates the server.

    python bench/label_load.py                      # SQLite file in a temp dir
    python bench/label_load.py --db postgresql://postgres@127.0.0.1:5432/bench
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from lmpref import store

SERVER = (
    "import sys, uvicorn\n"
    "from lmpref.web import Settings, create_app\n"
    "app = create_app(Settings(db_url=sys.argv[1], min_seconds=0))\n"
    "uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[2]), log_level='warning', access_log=False)\n"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def setup(db: str, n_labelers: int, n_tasks: int, redundancy: int) -> list[str]:
    factory = store.open_store(db)
    with store.transaction(factory) as session:
        tokens = [store.create_labeler(session, name=f"bench{i}")[1] for i in range(n_labelers)]
        records = (
            {
                "id": f"q{i:06d}",
                "query": "The quick brown fox jumps over the lazy dog. " * 8,
                "responses": [f"Sample {j} of query {i}: the quick brown fox ran away." for j in range(4)],
                "policy": "ref:bench",
            }
            for i in range(n_tasks)
        )
        store.enqueue(session, run="bench", records=records, redundancy=redundancy)
    factory.kw["bind"].dispose()
    return tokens


async def labeler(client: httpx.AsyncClient, token: str, deadline: float, lat: dict[str, list[float]]) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    rng = random.Random(token)
    done = 0
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        r = await client.get("/api/tasks/next", headers=headers)
        lat["next"].append(time.perf_counter() - t0)
        if r.status_code == 204:
            return done
        r.raise_for_status()
        task = r.json()
        t0 = time.perf_counter()
        r = await client.post(
            f"/api/tasks/{task['task_id']}/label", headers=headers, json={"best": rng.randrange(len(task["samples"]))}
        )
        lat["label"].append(time.perf_counter() - t0)
        r.raise_for_status()
        done += 1
    return done


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=1000)[int(q * 1000) - 1] * 1000 if len(xs) > 1 else float("nan")


async def drive(base: str, tokens: list[str], seconds: float) -> tuple[int, float, dict[str, list[float]]]:
    lat: dict[str, list[float]] = {"next": [], "label": []}
    limits = httpx.Limits(max_connections=len(tokens), max_keepalive_connections=len(tokens))
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:
        start = time.perf_counter()
        counts = await asyncio.gather(*(labeler(client, t, start + seconds, lat) for t in tokens))
        elapsed = time.perf_counter() - start
    return sum(counts), elapsed, lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default=None, help="store URL (default: a new SQLite file)")
    ap.add_argument("--labelers", type=int, default=50, help="concurrent simulated labelers")
    ap.add_argument("--tasks", type=int, default=3000)
    ap.add_argument("--redundancy", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=30.0, help="stop after this long")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="lmpref-bench-")
    db = args.db or f"sqlite:///{Path(tmp) / 'bench.db'}"
    tokens = setup(db, args.labelers, args.tasks, args.redundancy)
    port = free_port()
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen([sys.executable, "-c", SERVER, db, str(port)], env=env)
    try:
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        labels, elapsed, lat = asyncio.run(drive(f"http://127.0.0.1:{port}", tokens, args.seconds))
    finally:
        server.terminate()
        server.wait(10)
    both = lat["next"] + lat["label"]
    backend = db.split(":", 1)[0]
    print(
        f"store={backend} labelers={args.labelers} tasks={args.tasks} redundancy={args.redundancy} "
        f"cpus={os.cpu_count()}"
    )
    print(
        f"labels: {labels} in {elapsed:.1f}s = {labels / elapsed:.1f} labels/s ({len(both) / elapsed:.1f} requests/s)"
    )
    for name, xs in (("next", lat["next"]), ("label", lat["label"]), ("all", both)):
        print(
            f"latency {name:5s}: p50 {pct(xs, 0.5):7.1f} ms  p99 {pct(xs, 0.99):7.1f} ms  max {max(xs) * 1000:7.1f} ms"
        )


if __name__ == "__main__":
    main()
