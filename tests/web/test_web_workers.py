"""`lmpref serve --workers N`: several server processes on one store. On a SQLite file they take
turns writing through a lock file; labels are still stored exactly once and no request fails."""

import concurrent.futures
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from lmpref import store
from lmpref.store.db import _ProcessesLock
from lmpref.store.models import Label
from web_store_fixtures import record, wait_for_port

SRC = str(Path(store.__file__).resolve().parents[2])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_processes_lock_is_used_only_for_several_processes_on_a_file(tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    one, two = store.open_store(url), store.open_store(url, processes=2)
    assert not isinstance(one.kw["info"]["write_lock"], _ProcessesLock)
    assert isinstance(two.kw["info"]["write_lock"], _ProcessesLock)
    with store.transaction(two) as session:
        store.create_labeler(session, name="ann")
    assert (tmp_path / "x.db.lock").exists()
    assert not isinstance(store.open_store("sqlite://", processes=2).kw["info"]["write_lock"], _ProcessesLock)
    for f in (one, two):
        f.kw["bind"].dispose()


def test_serve_with_two_workers_on_sqlite(tmp_path):
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    factory = store.open_store(url)
    with store.transaction(factory) as session:
        tokens = [store.create_labeler(session, name=f"l{i}")[1] for i in range(8)]
        store.enqueue(session, run="r", records=[record(i) for i in range(12)], redundancy=2)
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lmpref.cli",
            "serve",
            "--db",
            url,
            "--port",
            str(port),
            "--workers",
            "2",
            "--min-seconds",
            "0",
            "--log-level",
            "warning",
        ],
        env=env,
    )
    try:
        wait_for_port(port, timeout=60)

        def label_all(token: str) -> int:
            h = {"Authorization": f"Bearer {token}"}
            done = 0
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                while True:
                    r = client.get("/api/tasks/next", headers=h)
                    if r.status_code == 204:
                        return done
                    assert r.status_code == 200, r.text
                    r = client.post(f"/api/tasks/{r.json()['task_id']}/label", headers=h, json={"best": 0})
                    assert r.status_code == 201, r.text
                    done += 1

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert sum(pool.map(label_all, tokens)) == 24
    finally:
        server.terminate()
        server.wait(30)
    with store.transaction(factory) as session:
        assert session.query(Label).count() == 24
        assert store.progress(session, run="r").complete == 12
    factory.kw["bind"].dispose()
