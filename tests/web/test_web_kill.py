"""A `kill -9` of the server loses no acknowledged label and leaves nothing half-written (SQLite
file in WAL mode with synchronous=NORMAL: a commit is in the WAL before the answer is sent)."""

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from sqlalchemy import func, select

from lmpref import store
from lmpref.store.models import Assignment, Label
from web_store_fixtures import record, wait_for_port

SRC = str(Path(store.__file__).resolve().parents[2])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_kill_9_loses_no_acknowledged_label(tmp_path):
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    factory = store.open_store(url)
    with store.transaction(factory) as session:
        tokens = [store.create_labeler(session, name=f"l{i}")[1] for i in range(8)]
        store.enqueue(session, run="r", records=[record(i) for i in range(400)], redundancy=2)
    factory.kw["bind"].dispose()
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "lmpref.cli", "serve", "--db", url, "--port", str(port), "--min-seconds", "0"]
    server = subprocess.Popen([*cmd, "--log-level", "warning"], env=env)
    acked: list[int] = []
    stop = threading.Event()

    def labeler(token: str) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}) as c:
            while not stop.is_set():
                try:
                    task = c.get("/api/tasks/next", timeout=10).json()
                    r = c.post(f"/api/tasks/{task['task_id']}/label", json={"best": 0}, timeout=10)
                except (httpx.HTTPError, ValueError):
                    return  # the server is gone
                if r.status_code == 201:
                    acked.append(r.json()["id"])

    try:
        wait_for_port(port, timeout=120)  # `lmpref serve` starts slowly on a busy machine
        with concurrent.futures.ThreadPoolExecutor(len(tokens)) as pool:
            futures = [pool.submit(labeler, t) for t in tokens]
            deadline = time.time() + 60
            while len(acked) < 30 and time.time() < deadline:
                time.sleep(0.05)
            os.kill(server.pid, signal.SIGKILL)  # mid-load: requests are in flight
            server.wait(10)
            stop.set()
            for f in futures:
                f.result()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)
    assert len(acked) >= 30
    factory = store.open_store(url)
    with store.transaction(factory) as session:
        stored = set(session.scalars(select(Label.id)))
        done = session.scalar(select(func.count(Assignment.id)).where(Assignment.status == "done"))
    factory.kw["bind"].dispose()
    assert set(acked) <= stored  # every acknowledged label survived
    assert done == len(stored)  # and each label with its assignment closed: nothing half-written
