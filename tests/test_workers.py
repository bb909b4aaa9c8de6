"""`codeflow serve --workers N` (issue "Beyond one machine", item 5): N pre-forked worker
processes share one listening socket and one database, so a flow may meet a different
worker at each step; Ctrl-C stops them all. Real processes on a real SQLite file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from http.client import HTTPConnection
from pathlib import Path

import pytest
import requests
from conftest import pkce_pair, query_of
from test_cli import SHUTDOWN, STARTUP, free_port
from test_cli_manage import cli, one_line_error
from test_server_limits import SERVERS

import codeflow

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
    kind: str,
    *args: str,
    log: Path | None = None,
    prefix: Sequence[str] = (),
    preexec_fn: Callable[[], None] | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``codeflow serve ARGS`` under waitress or the stdlib server, until it answers;
    its stderr to ``log`` if given; run through the command ``prefix`` (unshare), and
    ``preexec_fn`` in the child before it starts, if given."""
    port = free_port()
    with open(log or os.devnull, "wb") as stderr:
        process = subprocess.Popen(  # noqa: S603 -- our own command line
            [*prefix, *SERVERS[kind], "serve", "--port", str(port), *args],
            stdout=subprocess.DEVNULL, stderr=stderr, preexec_fn=preexec_fn,
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


# Which worker holds a connection. A keep-alive connection (RFC 9112 §9.3: persistent by
# default in HTTP/1.1) stays with the worker that accepted it for its whole life, so how
# the workers share a few long-lived connections (a benchmark's load threads, a reverse
# proxy's upstream pool) decides how they share the work.


def socket_inodes(server_port: int, client_ports: set[int]) -> dict[str, int]:
    """The inodes of the server-side sockets of the given client connections, each with
    its client's port: the lines of /proc/net/tcp{,6} whose local port is the server's
    and whose remote port is a client's."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                local, remote = (int(end.rsplit(":", 1)[1], 16) for end in fields[1:3])
                if local == server_port and remote in client_ports:
                    found[fields[9]] = remote
    return found


def held_by(workers: set[int], base: str, conns: list[HTTPConnection]) -> list[int]:
    """The worker holding each of ``conns``, by the ``socket:[inode]`` links among its
    file descriptors (/proc/PID/fd); each must be held by exactly one of ``workers``."""
    port = int(base.rsplit(":", 1)[1])
    ports = [conn.sock.getsockname()[1] for conn in conns]
    inodes = socket_inodes(port, set(ports))
    holder: dict[int, list[int]] = {port: [] for port in ports}
    for pid in workers:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    holder[inodes[link[8:-1]]].append(pid)
    assert all(len(pids) == 1 for pids in holder.values()), holder
    return [holder[port][0] for port in ports]


def shares(workers: set[int], base: str, conns: list[HTTPConnection]) -> list[int]:
    """How many of ``conns`` each worker holds, fewest first."""
    held = held_by(workers, base, conns)
    return sorted(held.count(pid) for pid in workers)


def keep_alive(base: str, path: str = "/healthz") -> HTTPConnection:
    """A new connection with one request answered on it, left open (RFC 9112 §9.3)."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    conn = HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    assert response.status == 200
    assert not response.will_close  # the server keeps it open
    return conn


def in_their_loops(workers: set[int]) -> set[int]:
    """Wait until each of ``workers`` runs waitress's loop: its request threads started
    and its main thread waiting in poll() (/proc/PID/wchan; where the kernel hides it,
    a moment instead). A worker takes its turns once it runs; before, the others take
    every connection."""
    deadline = time.monotonic() + STARTUP

    def waiting(pid: int) -> bool:
        if len(os.listdir(f"/proc/{pid}/task")) <= 8:  # SERVER_THREADS, then the main one
            return False
        wchan = Path(f"/proc/{pid}/wchan").read_text()
        if wchan in ("", "0"):
            time.sleep(0.5)
            return True
        return "poll" in wchan

    for pid in workers:
        while not waiting(pid):
            assert time.monotonic() < deadline, f"worker {pid} did not start serving"
            time.sleep(0.02)
    return workers


def living(workers: set[int]) -> set[int]:
    """Those of ``workers`` that run (not gone, not a zombie)."""
    return {pid for pid in workers if Path(f"/proc/{pid}").exists()
            and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]}  # fmt: skip


def test_workers_take_keep_alive_connections_in_turn(tmp_path: Path) -> None:
    """Keep-alive connections opened one after another (RFC 9112 §9.3) are shared evenly:
    a worker accepts only while it holds no more open connections than any other, so
    after each of 10 connections the two workers' shares differ by at most one, whichever
    wins each race to accept (by chance, all 5 pairs would split evenly 1 time in 32).
    Each connection then serves further requests from the worker that holds it."""
    db = f"sqlite:///{tmp_path / 'codeflow.db'}"
    with serving("waitress", "--workers", "2", "--storage", db) as (process, base):
        workers = in_their_loops(children(process.pid))
        assert len(workers) == 2
        conns: list[HTTPConnection] = []
        try:
            for opened in range(1, 11):
                conns.append(keep_alive(base))
                assert shares(workers, base, conns) == [opened // 2, (opened + 1) // 2]
            for conn in conns:  # still open, still answered
                conn.request("GET", "/jwks")
                response = conn.getresponse()
                assert response.status == 200 and b'"keys"' in response.read()
            assert shares(workers, base, conns) == [5, 5]
        finally:
            for conn in conns:
                conn.close()


def test_new_connections_are_answered_at_once_beside_idle_ones(tmp_path: Path) -> None:
    """Connections held idle between requests (RFC 9112 §9.3) never keep a new one
    waiting: the least-loaded worker always listens, so each of 20 short connections
    opened beside 10 idle keep-alive ones is answered well within a second, where a
    worker that stopped listening and missed its turn would only notice at its next
    loop (one second)."""
    db = f"sqlite:///{tmp_path / 'codeflow.db'}"
    with serving("waitress", "--workers", "2", "--storage", db) as (process, base):
        workers = in_their_loops(children(process.pid))
        idle = [keep_alive(base) for _ in range(10)]
        try:
            slowest = 0.0
            for _ in range(20):
                started = time.monotonic()
                keep_alive(base).close()
                slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.02)  # the closed connection leaves its worker's count
            assert slowest < 0.5, slowest
            assert shares(workers, base, idle) == [5, 5]
        finally:
            for conn in idle:
                conn.close()


def test_a_restarted_worker_takes_its_share_of_connections(tmp_path: Path) -> None:
    """A worker killed while holding keep-alive connections (RFC 9112 §9.3) is replaced:
    while it is down the survivor answers (the dead worker's count in the shared table
    holds no one up), and once the replacement runs it takes every new connection until
    it holds as many as the survivor."""
    db = f"sqlite:///{tmp_path / 'codeflow.db'}"
    with serving("waitress", "--workers", "2", "--storage", db) as (process, base):
        first = in_their_loops(children(process.pid))
        conns = [keep_alive(base) for _ in range(6)]
        where = held_by(first, base, conns)
        killed = min(first)
        (survivor,) = first - {killed}
        os.kill(killed, signal.SIGKILL)
        kept = [conn for conn, pid in zip(conns, where, strict=True) if pid == survivor]
        for conn in conns:
            if conn not in kept:
                conn.close()
        kept.append(keep_alive(base))  # the parent waits a second before restarting
        deadline = time.monotonic() + 15
        while len(living(children(process.pid))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        (replacement,) = in_their_loops(living(children(process.pid)) - first)
        new = [keep_alive(base) for _ in kept]
        try:
            workers = {survivor, replacement}
            assert held_by(workers, base, new) == [replacement] * len(new)
            assert shares(workers, base, kept + new) == [len(kept), len(kept)]
        finally:
            for conn in kept + new:
                conn.close()


def test_a_hung_worker_holding_the_fewest_does_not_stall_the_others(tmp_path: Path) -> None:
    """A worker that stops turning its loop (here SIGSTOP) while it holds the fewest
    connections would otherwise keep every other worker from accepting: its count is
    ignored once it is a few seconds old, so a new connection waits seconds, not until
    the others' idle keep-alive connections (RFC 9112 §9.3) time out."""
    db = f"sqlite:///{tmp_path / 'codeflow.db'}"
    with serving("waitress", "--workers", "2", "--storage", db) as (process, base):
        workers = in_their_loops(children(process.pid))
        conns = [keep_alive(base) for _ in range(3)]  # two on one worker, one on the other
        where = held_by(workers, base, conns)
        hung = min(workers, key=where.count)
        (other,) = workers - {hung}
        os.kill(hung, signal.SIGSTOP)
        try:
            started = time.monotonic()
            conns.append(keep_alive(base))
            assert time.monotonic() - started < 6
            assert held_by(workers, base, conns[-1:]) == [other]
        finally:
            os.kill(hung, signal.SIGCONT)
            for conn in conns:
                conn.close()


def test_workers_frozen_together_keep_accepting_when_they_resume(tmp_path: Path) -> None:
    """Every worker stopped for longer than WorkerTurns.STALE at once (a frozen container,
    a paused VM, a machine swapping hard) with a connection waiting: on resuming, each
    worker's own count is older than STALE when it next accepts, and must still count.
    The waiting connection and the next ones are answered (RFC 9112 §9.3 keep-alive
    ones too), rather than a worker's accept failing and waitress closing its listening
    socket for good, which would leave the port open with no one accepting."""
    db, log = f"sqlite:///{tmp_path / 'codeflow.db'}", tmp_path / "stderr.log"
    with serving("waitress", "--workers", "2", "--storage", db, log=log) as (process, base):
        workers = in_their_loops(children(process.pid))
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        try:
            host, port = base.removeprefix("http://").rsplit(":", 1)
            waiting = HTTPConnection(host, int(port), timeout=10)
            waiting.request("GET", "/healthz")  # in the backlog: no worker runs
            time.sleep(codeflow.WorkerTurns.STALE + 2)
        finally:
            for pid in workers:
                os.kill(pid, signal.SIGCONT)
        response = waiting.getresponse()
        assert response.status == 200
        response.read()
        waiting.close()
        time.sleep(1.5)  # a loop turn or two in every worker
        conns = [keep_alive(base) for _ in range(4)]
        try:
            assert shares(workers, base, conns) == [2, 2]
        finally:
            for conn in conns:
                conn.close()
        assert living(workers) == workers
    assert "exception" not in log.read_text().lower(), log.read_text()


# Where CLOCK_MONOTONIC is far from zero: a time namespace's offset (Linux 5.6+; CRIU
# gives a restored container the clock it was checkpointed with), here 2**31 + 10**8 s.
MONOTONIC_OFFSET = 2**31 + 10**8
TIME_NAMESPACE = ["unshare", "--user", "--map-root-user", "--time",
                  "--monotonic", str(MONOTONIC_OFFSET)]  # fmt: skip


def in_a_time_namespace() -> bool:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        probe = subprocess.run(  # noqa: S603 -- fixed arguments
            [*TIME_NAMESPACE, sys.executable, "-c", "import time; print(time.monotonic())"],
            capture_output=True, timeout=10, check=False,
        )  # fmt: skip
        return probe.returncode == 0 and float(probe.stdout) > 2**31
    return False


def test_workers_serve_where_monotonic_seconds_pass_2_to_the_31(tmp_path: Path) -> None:
    """WorkerTurns notes each worker's turn in whole seconds of CLOCK_MONOTONIC: past
    2**31 of them (a time namespace's offset) the shared table must still hold them, or
    every worker fails as it starts and is started again, and no request is answered."""
    if not in_a_time_namespace():
        pytest.skip("cannot make a time namespace here (unshare --user --time)")
    db, log = f"sqlite:///{tmp_path / 'codeflow.db'}", tmp_path / "stderr.log"
    with serving("waitress", "--workers", "2", "--storage", db, log=log,
                 prefix=TIME_NAMESPACE) as (_, base):  # fmt: skip
        deadline, answered = time.monotonic() + STARTUP, 0
        while answered < 10 and time.monotonic() < deadline:
            with contextlib.suppress(requests.ConnectionError, requests.Timeout):
                answered += requests.get(base + "/healthz", timeout=1).status_code == 200
                continue
            time.sleep(0.05)
        assert answered == 10, log.read_text()
        assert "failed" not in log.read_text(), log.read_text()


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (/proc/PID/stat), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_many_workers_stop_at_their_connection_limit_before_the_file_limit(
    tmp_path: Path,
) -> None:
    """Each worker holds two sockets a worker for WorkerTurns besides its connections: its
    connection limit must leave room for them under the file limit (RLIMIT_NOFILE), or
    a worker flooded with connections runs out of file descriptors first, and then
    fails every accept of the waiting ones in a busy loop (a core's worth of CPU and a
    warning a turn) instead of no longer listening until one closes. Here 40 workers
    under a file limit of 200, 39 of them stopped so that the flood meets one."""
    db, log = f"sqlite:///{tmp_path / 'codeflow.db'}", tmp_path / "stderr.log"

    def low_file_limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))

    flood: list[socket.socket] = []
    with serving("waitress", "--workers", "40", "--storage", db, log=log,
                 preexec_fn=low_file_limit) as (process, base):  # fmt: skip
        try:
            deadline = time.monotonic() + STARTUP * 3
            while len(children(process.pid)) < 40:
                assert process.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            workers = in_their_loops(children(process.pid))
            flooded, *stopped = sorted(workers)
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
            time.sleep(codeflow.WorkerTurns.STALE + 2)  # their counts go stale
            host, port = base.removeprefix("http://").rsplit(":", 1)
            for _ in range(200):
                with contextlib.suppress(OSError):
                    flood.append(socket.create_connection((host, int(port)), timeout=0.2))
            time.sleep(1)
            before = cpu_seconds(flooded)
            time.sleep(2)
            assert cpu_seconds(flooded) - before < 0.5
            assert "accept() threw an exception" not in log.read_text()
        finally:
            for sock in flood:
                sock.close()
            with contextlib.suppress(ProcessLookupError):
                for pid in children(process.pid):
                    os.kill(pid, signal.SIGCONT)
