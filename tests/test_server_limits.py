"""Server limits (issue 12 item 5), on a real ``codeflow serve`` process on 127.0.0.1, with
waitress and with the stdlib fallback (the same command with waitress made unimportable):
a body over the protocol's limit is answered 413 before it is read, and clients that
open connections and send half a request cannot keep a real client out (slowloris).

Every wait is bounded: sockets have timeouts, and the idle connections are few.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import requests
from test_cli import STARTUP, free_port

import codeflow

pytestmark = pytest.mark.http

ANSWER_WITHIN = 5.0  # seconds: "at once", with room for a loaded CI machine
# More idle connections than waitress's default connection_limit (100), which made it
# stop accepting until its 120 s channel_timeout closed them.
IDLE_CONNECTIONS = 150
# `import waitress` fails in this process, so serve() takes the stdlib fallback.
WITHOUT_WAITRESS = (
    "import runpy, sys; sys.modules['waitress'] = None; "
    "sys.argv = ['codeflow.py', *sys.argv[1:]]; "
    f"runpy.run_path({str(codeflow.__file__)!r}, run_name='__main__')"
)
SERVERS = {
    "waitress": [sys.executable, codeflow.__file__],
    "stdlib": [sys.executable, "-c", WITHOUT_WAITRESS],
}


@contextlib.contextmanager
def serving(kind: str) -> Iterator[tuple[str, int]]:
    """``codeflow serve`` on a free port until the block ends: yields (host, port)."""
    port = free_port()
    command = [*SERVERS[kind], "serve", "--port", str(port)]
    process = subprocess.Popen(  # noqa: S603 -- our own command line
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + STARTUP
        while True:
            assert process.poll() is None, process.communicate()[1].decode()
            try:
                requests.get(f"http://127.0.0.1:{port}/jwks", timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, f"codeflow serve ({kind}) did not start"
                time.sleep(0.05)
        yield "127.0.0.1", port
    finally:
        process.kill()
        process.communicate(timeout=10)


@pytest.fixture(scope="module", params=sorted(SERVERS))
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    with serving(request.param) as address:
        yield address


def read_status(sock: socket.socket) -> int:
    """The status code of the response on ``sock`` (its socket timeout bounds the wait)."""
    received = b""
    while b"\r\n" not in received:
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    return int(received.split(b"\r\n", 1)[0].split()[1])


def test_a_body_over_the_limit_is_answered_413_without_being_read(server) -> None:
    """RFC 9110 §15.5.14: "The 413 (Content Too Large) status code indicates that the server
    is refusing to process a request because the request content is larger than the server
    is willing or able to process." No request of this protocol needs more than MAX_BODY:
    a client announcing 100 MiB gets its 413 at once, after sending only 1 KiB of it
    (waitress's own limit was 1 GiB, which it would have read and spooled to disk first)."""
    started = time.monotonic()
    with socket.create_connection(server, timeout=ANSWER_WITHIN) as sock:
        head = (
            "POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {100 * 1024 * 1024}\r\n\r\n"
        )
        sock.sendall(head.encode() + b"a" * 1024)
        assert read_status(sock) == 413
    assert time.monotonic() - started < ANSWER_WITHIN


def test_headers_over_the_limit_are_refused(server) -> None:
    """RFC 6585 §5: "The 431 status code indicates that the server is unwilling to process
    the request because its header fields are too large." The request line and headers
    are bounded (MAX_HEADER), well above what a browser sends to an authorization server."""
    with socket.create_connection(server, timeout=ANSWER_WITHIN) as sock:
        filler = "".join(f"X-Filler-{i}: {'a' * 1000}\r\n" for i in range(80))
        sock.sendall(f"GET /jwks HTTP/1.1\r\nHost: 127.0.0.1\r\n{filler}\r\n".encode())
        assert read_status(sock) == 431


def test_idle_half_sent_requests_do_not_keep_a_real_client_out(server) -> None:
    """RFC 9112 §9.5: "Servers will usually have some timeout value beyond which they will
    no longer maintain an inactive connection." Slowloris: IDLE_CONNECTIONS clients each
    send half a request and then nothing; a real client that comes next is still
    answered at once."""
    host, port = server
    idle = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            sock = socket.create_connection(server, timeout=ANSWER_WITHIN)
            idle.append(sock)
            sock.sendall(b"POST /token HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
        started = time.monotonic()
        r = requests.get(f"http://{host}:{port}/jwks", timeout=ANSWER_WITHIN)
        assert r.status_code == 200
        assert time.monotonic() - started < ANSWER_WITHIN
    finally:
        for sock in idle:
            sock.close()


def test_an_idle_connection_is_closed_after_the_idle_timeout() -> None:
    """RFC 9112 §9.5: "Servers will usually have some timeout value beyond which they will
    no longer maintain an inactive connection." A connection that sends nothing for
    IDLE_TIMEOUT seconds is closed by the server (a little later with waitress, which
    looks every CLEANUP_INTERVAL): so connections held
    open by an attacker free their place within a bounded time. Both servers at once, so
    that the test waits the timeout only once."""
    bound = codeflow.IDLE_TIMEOUT + codeflow.CLEANUP_INTERVAL + ANSWER_WITHIN
    with serving("waitress") as waitress, serving("stdlib") as stdlib:
        socks = [socket.create_connection(address, timeout=bound) for address in (waitress, stdlib)]
        started = time.monotonic()
        try:
            for sock in socks:
                sock.sendall(b"GET /jwks HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            for sock in socks:
                with contextlib.suppress(ConnectionResetError):
                    assert sock.recv(4096) == b""  # closed, without an answer
                elapsed = time.monotonic() - started
                assert codeflow.IDLE_TIMEOUT - 1 <= elapsed < bound
        finally:
            for sock in socks:
                sock.close()
