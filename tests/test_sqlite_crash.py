"""``kill -9`` a SQLite-backed server under load, restart it on the same file: nothing it
answered is lost, and the file is sound.

Issue 4: "kill -9 a server under load, restart it; every token it returned before the
kill still introspects as active, and PRAGMA integrity_check says ok."
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import requests
from serve_process import CLIENT_ID, CLIENT_SECRET, serving, write_config

pytestmark = pytest.mark.http

ISSUER = "http://auth.codeflow.test"
AUTH = (CLIENT_ID, CLIENT_SECRET)
LOAD_THREADS = 4
MAX_TOKENS = 2000  # the load is bounded by count and by time
MAX_SECONDS = 3.0
KILL_AFTER = 0.8  # seconds into the load


def load(base: str, tokens: list[str], stop: threading.Event) -> None:
    """Ask for client_credentials tokens until told to stop or the server dies; record
    every token whose response arrived whole."""
    deadline = time.monotonic() + MAX_SECONDS
    with requests.Session() as session:
        while not stop.is_set() and len(tokens) < MAX_TOKENS and time.monotonic() < deadline:
            try:
                r = session.post(
                    base + "/token",
                    data={"grant_type": "client_credentials", "scope": "api:read"},
                    auth=AUTH,
                    timeout=5,
                )
            except requests.RequestException:
                return  # killed
            if r.status_code == 200:
                tokens.append(r.json()["access_token"])


def test_tokens_survive_kill_9_and_the_file_stays_sound(tmp_path: Path) -> None:
    """RFC 7662 §2.2: a token the server issued and did not revoke is "active" until it
    expires - also after the server was killed mid-write (SIGKILL) and restarted."""
    db, config, log = tmp_path / "codeflow.db", write_config(tmp_path), tmp_path / "serve.log"
    tokens: list[str] = []
    stop = threading.Event()
    with serving(db, config, issuer=ISSUER, log=log) as (proc, base):
        threads = [
            threading.Thread(target=load, args=(base, tokens, stop)) for _ in range(LOAD_THREADS)
        ]
        for t in threads:
            t.start()
        try:
            time.sleep(KILL_AFTER)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert len(tokens) >= 10, f"too little load before the kill: {len(tokens)} tokens"

    with serving(db, config, issuer=ISSUER, log=log) as (_, base), requests.Session() as s:
        inactive = [
            token
            for token in tokens
            if not s.post(base + "/introspect", data={"token": token}, auth=AUTH, timeout=10)
            .json()
            .get("active")
        ]
        assert inactive == [], f"{len(inactive)} of {len(tokens)} tokens lost"

    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT count(*) FROM tokens").fetchone()[0] >= len(tokens)
    finally:
        conn.close()
