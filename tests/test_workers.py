"""`codeflow serve --workers N` (issue "Beyond one machine", item 5): N pre-forked worker
processes share one listening socket and one database, so a flow may meet a different
worker at each step; Ctrl-C stops them all. Real processes on a real SQLite file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from conftest import pkce_pair, query_of
from test_cli import SHUTDOWN, STARTUP, free_port
from test_cli_manage import cli, one_line_error
from test_server_limits import SERVERS

pytestmark = [
    pytest.mark.http,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]


def children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
    return found


@contextlib.contextmanager
def serving(
    kind: str, *args: str, log: Path | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``codeflow serve ARGS`` under waitress or the stdlib server, until it answers;
    its stderr to ``log`` if given."""
    port = free_port()
    with open(log or os.devnull, "wb") as stderr:
        process = subprocess.Popen(  # noqa: S603 -- our own command line
            [*SERVERS[kind], "serve", "--port", str(port), *args],
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP
        while True:
            assert process.poll() is None, "codeflow serve exited"
            try:
                requests.get(base + "/healthz", timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "codeflow serve did not answer"
                time.sleep(0.05)
        yield process, base
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=SHUTDOWN)


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_two_workers_serve_one_flow_and_stop_together(tmp_path: Path, kind: str) -> None:
    """A code issued by one worker is redeemed at whichever worker accepts the token
    request (they share the SQLite file); Ctrl-C stops the parent and both workers.
    Under waitress and under the stdlib server alike."""
    db = f"sqlite:///{tmp_path / 'codeflow.db'}"
    add = cli("client", "add", "app", "--redirect-uri", "http://127.0.0.1:9/cb",
              "--storage", db)  # fmt: skip
    secret = add.stdout.split("client_secret: ")[1].split()[0]
    with serving(kind, "--workers", "2", "--storage", db, "--auto-approve", "alice") as (
        process, base
    ):
        workers = children(process.pid)
        assert len(workers) == 2, workers
        for _ in range(6):  # each connection may land on either worker
            verifier, challenge = pkce_pair()
            r = requests.get(base + "/authorize", allow_redirects=False, timeout=10,
                             params={"response_type": "code", "client_id": "app",
                                     "redirect_uri": "http://127.0.0.1:9/cb",
                                     "scope": "openid", "code_challenge": challenge,
                                     "code_challenge_method": "S256"})  # fmt: skip
            code = query_of(r.headers["Location"])["code"]
            token = requests.post(base + "/token", auth=("app", secret), timeout=10,
                                  data={"grant_type": "authorization_code", "code": code,
                                        "redirect_uri": "http://127.0.0.1:9/cb",
                                        "code_verifier": verifier})  # fmt: skip
            assert token.status_code == 200, token.text
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=SHUTDOWN + 5) == 0
        assert not {pid for pid in workers if Path(f"/proc/{pid}").exists()
                    and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]}


def test_each_worker_writes_its_access_lines_as_it_serves(tmp_path: Path) -> None:
    """A forked worker has no thread of its parent's, the log writer's included: each
    worker writes its own access lines within a moment of each request, a worker started
    after the parent logged (in place of one that died) too, and the lines queued when
    Ctrl-C comes are written before it exits."""
    db = f"sqlite:///{tmp_path / 'codeflow.db'}"
    log = tmp_path / "stderr.log"
    with serving("waitress", "--workers", "2", "--storage", db, log=log) as (process, base):
        first = children(process.pid)
        os.kill(min(first), signal.SIGKILL)  # the parent logs it and starts another
        deadline = time.monotonic() + 15
        while len(children(process.pid) - first) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "starting another" in log.read_text()
        for _ in range(20):  # a connection each: both workers answer some
            assert requests.get(base + "/jwks", timeout=10).status_code == 200
        deadline = time.monotonic() + 5
        while log.read_text().count("GET /jwks 200") < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert log.read_text().count("GET /jwks 200") == 20, log.read_text()
        for _ in range(5):
            requests.get(base + "/.well-known/openid-configuration", timeout=10)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=SHUTDOWN + 5) == 0
    assert log.read_text().count("GET /.well-known/openid-configuration 200") == 5


def test_workers_need_shared_storage() -> None:
    """Memory storage is per process: workers would not know each other's codes."""
    one_line_error(cli("serve", "--workers", "2"), "--workers", "storage")


def test_workers_do_not_outlive_a_killed_parent(tmp_path: Path) -> None:
    """A parent killed with SIGKILL cannot stop its workers itself: they stop on their own
    (Linux's parent-death signal), so no orphan keeps serving the port."""
    db = f"sqlite:///{tmp_path / 'codeflow.db'}"
    with serving("waitress", "--workers", "2", "--storage", db) as (process, _base):
        workers = children(process.pid)
        assert len(workers) == 2
        process.kill()
        process.wait(timeout=SHUTDOWN)
        deadline = time.monotonic() + 10
        alive = workers
        while alive and time.monotonic() < deadline:
            alive = {pid for pid in workers if Path(f"/proc/{pid}").exists()
                     and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]}
            time.sleep(0.05)
        assert not alive, alive
