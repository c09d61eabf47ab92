"""Test helpers shared by tests/store and tests/web: a throwaway PostgreSQL server,
Chromium discovery, sampling records. Loaded by those directories' conftest.py files.

Locally a missing PostgreSQL or Chromium skips those tests; under CI=true it fails them,
so CI can never pass by silently skipping (`.ci/run` installs both).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"
CHROMIUM = os.environ.get("LMPREF_CHROMIUM", "/usr/bin/chromium")


def skip_or_fail(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: install it, do not skip)", pytrace=False)
    pytest.skip(reason)


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Yield the URL of a superuser on a fresh PostgreSQL cluster on loopback; remove it after.

    `$LMPREF_TEST_POSTGRES_URL` (a server you run) is used instead when set.
    """
    url = os.environ.get("LMPREF_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        skip_or_fail("PostgreSQL binaries (initdb, pg_ctl) not found")
    # PostgreSQL refuses to run as root; as root we run it as the `postgres` user.
    as_user: list[str] = []
    root = os.geteuid() == 0
    if root:
        as_user = ["runuser", "-u", "postgres", "--"]
    base = Path(tempfile.mkdtemp(prefix="lmpref-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if root:
        shutil.chown(base, "postgres")
        shutil.chown(sock, "postgres")
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C"}
    subprocess.run(
        [*as_user, initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
        check=True,
        capture_output=True,
        env=env,
    )
    opts = f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run(
        [*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "start"],
        check=True,
        capture_output=True,
        env=env,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True, env=env
        )
        shutil.rmtree(base, ignore_errors=True)


def fresh_database(server_url: str) -> str:
    """Create an empty database on the server; return its URL."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    dsn = server_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + "/" + name


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'labels.db'}"


def record(i: int, k: int = 4, *, valid: list[bool] | None = None, **extra: Any) -> dict[str, Any]:
    """A sampling-JSONL record as `lmpref sample` writes it."""
    return {
        "id": f"q{i:06d}",
        "query": f"Query number {i}: the quick brown fox jumps over the lazy dog",
        "query_ids": [100 + i, 101, 102],
        "responses": [f"Response {j} to query {i}." for j in range(k)],
        "response_ids": [[i, j, 13] for j in range(k)],
        "valid": valid if valid is not None else [True] * k,
        "policy": "ref:test",
        "seed": 0,
        **extra,
    }


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port}")
