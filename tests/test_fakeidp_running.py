"""Server.running() and the live fixtures stop at once (issue 17 item 2): the serving
loop sleeps in one select() on the listening socket and a wakeup socket instead of
polling for a shutdown flag, so a stop never waits for a poll. How long a stop takes is
measured in tests/benchmarks/test_bench_start.py, never asserted here."""

from __future__ import annotations

import socket
import threading

import pytest
import requests
from conftest import share_session_keys

import codeflow

pytestmark = pytest.mark.http


def test_running_serves_then_refuses_connections_once_stopped() -> None:
    """DESIGN "a context manager runs it on a free 127.0.0.1 port ... shuts down cleanly"."""
    srv = share_session_keys(codeflow.Server())
    with srv.running() as url:
        assert requests.get(url + codeflow.JWKS_PATH, timeout=5).status_code == 200
        port = int(url.rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass


def test_a_stop_is_not_held_up_by_an_idle_connection() -> None:
    """A client that connected and sends nothing (a keep-alive, a slowloris) does not keep
    the server from stopping: its connection belongs to a handler thread of its own."""
    srv = share_session_keys(codeflow.Server())
    with srv.running() as url:
        port = int(url.rsplit(":", 1)[1])
        idle = socket.create_connection(("127.0.0.1", port))
    with idle, pytest.raises(ConnectionRefusedError):  # the block ended with idle still open
        socket.create_connection(("127.0.0.1", port)).close()


def test_stop_before_the_loop_starts_still_ends_it() -> None:
    """stop() leaves its wakeup in the socket, so a loop that starts after it returns at
    once (socketserver's shutdown() before serve_forever() would wait for ever)."""
    httpd = codeflow.ThreadingWSGIServer(("127.0.0.1", 0), codeflow.QuietHandler)
    try:
        httpd.stop()
        thread = threading.Thread(target=httpd.serve_until_stopped, daemon=True)
        thread.start()
        thread.join()
    finally:
        httpd.server_close()

