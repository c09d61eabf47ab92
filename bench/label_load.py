"""Load benchmark of the labeling server: many concurrent labelers on loopback.

Starts `lmpref serve`'s app (uvicorn, one process) on a fresh store, creates labelers and
tasks, then each simulated labeler loops GET /api/tasks/next -> POST /api/tasks/{id}/label
with no think time until the queue is empty or the time is up. Prints labels/s and latency
percentiles and the CPU per label of the server and of this load generator (aiohttp). Client
and server share the machine, so on few cores this understates the server.

    python bench/label_load.py                      # SQLite file in a temp dir
    python bench/label_load.py --db postgresql://postgres@127.0.0.1:5432/bench
    python bench/label_load.py --workers 2          # `lmpref serve --workers 2`
    python bench/label_load.py --src /tmp/old/src   # another checkout's code (before/after)

Besides wall-clock figures it prints the server's CPU seconds per label (its processes' user +
system time over the run, from /proc): a figure that other load on the machine barely moves.
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

import aiohttp

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
    from lmpref import store  # here, so that --src decides which code this is

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


async def labeler(client: aiohttp.ClientSession, token: str, deadline: float, lat: dict[str, list[float]]) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    rng = random.Random(token)
    done = 0
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        async with client.get("/api/tasks/next", headers=headers) as r:
            if r.status == 204:
                lat["next"].append(time.perf_counter() - t0)
                return done
            r.raise_for_status()
            task = await r.json()
        lat["next"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        body = {"best": rng.randrange(len(task["samples"]))}
        async with client.post(f"/api/tasks/{task['task_id']}/label", headers=headers, json=body) as r:
            r.raise_for_status()
            await r.read()
        lat["label"].append(time.perf_counter() - t0)
        done += 1
    return done


def pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=1000)[int(q * 1000) - 1] * 1000 if len(xs) > 1 else float("nan")


async def drive(base: str, tokens: list[str], seconds: float) -> tuple[int, float, dict[str, list[float]]]:
    lat: dict[str, list[float]] = {"next": [], "label": []}
    # aiohttp, not httpx: on 2 cores the load generator shares the CPU with the server, and httpx
    # spent 16 ms of CPU per label (its one core saturated, the server 40% busy), so it measured itself.
    connector = aiohttp.TCPConnector(limit=len(tokens))
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(base_url=base, connector=connector, timeout=timeout) as client:
        start = time.perf_counter()
        counts = await asyncio.gather(*(labeler(client, t, start + seconds, lat) for t in tokens))
        elapsed = time.perf_counter() - start
    return sum(counts), elapsed, lat


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and its live descendants (uvicorn's workers), Linux only."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parents.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier.extend(kids)
    return sum(times.get(p, 0.0) for p in tree)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default=None, help="store URL (default: a new SQLite file)")
    ap.add_argument("--labelers", type=int, default=50, help="concurrent simulated labelers")
    ap.add_argument("--tasks", type=int, default=3000)
    ap.add_argument("--redundancy", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=30.0, help="stop after this long")
    ap.add_argument("--workers", type=int, default=1, help="server processes (>1: `lmpref serve --workers N`)")
    ap.add_argument(
        "--src", default=None, help="run setup and server from this source tree (e.g. an older checkout's src/)"
    )
    args = ap.parse_args()
    if args.src and os.environ.get("LMPREF_BENCH_SRC") != args.src:
        # Re-run this script with that tree first on the path: its migrations, store and server.
        env = {
            **os.environ,
            "LMPREF_BENCH_SRC": args.src,
            "PYTHONPATH": args.src + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    tmp = tempfile.mkdtemp(prefix="lmpref-bench-")
    db = args.db or f"sqlite:///{Path(tmp) / 'bench.db'}"
    tokens = setup(db, args.labelers, args.tasks, args.redundancy)
    port = free_port()
    src = args.src or str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if args.workers > 1:
        cmd = [
            sys.executable,
            "-m",
            "lmpref.cli",
            "serve",
            "--db",
            db,
            "--port",
            str(port),
            "--min-seconds",
            "0",
            "--workers",
            str(args.workers),
            "--log-level",
            "warning",
        ]
    else:
        cmd = [sys.executable, "-c", SERVER, db, str(port)]
    server = subprocess.Popen(cmd, env=env)
    try:
        for _ in range(200):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        time.sleep(1.0 if args.workers > 1 else 0.0)  # every worker listening, not just the first
        cpu0, client0 = cpu_seconds(server.pid), time.process_time()
        labels, elapsed, lat = asyncio.run(drive(f"http://127.0.0.1:{port}", tokens, args.seconds))
        cpu, client_cpu = cpu_seconds(server.pid) - cpu0, time.process_time() - client0
    finally:
        server.terminate()
        server.wait(10)
    both = lat["next"] + lat["label"]
    backend = db.split(":", 1)[0]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"store={backend} labelers={args.labelers} tasks={args.tasks} redundancy={args.redundancy} "
        f"workers={args.workers} cpus={os.cpu_count()} load={load:.2f}"
    )
    print(
        f"labels: {labels} in {elapsed:.1f}s = {labels / elapsed:.1f} labels/s ({len(both) / elapsed:.1f} requests/s)"
    )
    print(f"server CPU: {cpu:.1f} s = {cpu / max(labels, 1) * 1000:.2f} ms per label")
    print(f"client CPU: {client_cpu:.1f} s = {client_cpu / max(labels, 1) * 1000:.2f} ms per label (load generator)")
    for name, xs in (("next", lat["next"]), ("label", lat["label"]), ("all", both)):
        print(
            f"latency {name:5s}: p50 {pct(xs, 0.5):7.1f} ms  p99 {pct(xs, 0.99):7.1f} ms  max {max(xs) * 1000:7.1f} ms"
        )


if __name__ == "__main__":
    main()
