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



def test_handler_threads_are_reused_and_end_with_the_server() -> None:
    """Connections one after another are answered by the same thread (a thread per open
    connection, reused: starting one per request cost as much as the request); a
    connection held open does not keep the next one waiting, which gets a thread of its
    own; and server_close() ends them all."""
    seen: list[threading.Thread] = []

    def app(environ, start_response):
        seen.append(threading.current_thread())
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    httpd = codeflow.ThreadingWSGIServer(("127.0.0.1", 0), codeflow.QuietHandler)
    httpd.set_app(app)
    loop = threading.Thread(target=httpd.serve_until_stopped, daemon=True)
    loop.start()
    url = f"http://127.0.0.1:{httpd.server_port}/"
    try:
        for _ in range(20):
            assert requests.get(url, timeout=5).text == "ok"
        # Reused: on a busy machine a thread may not be back in time for the very next
        # connection, so a few may serve them; never one per request.
        assert len(set(seen)) <= 5
        with socket.create_connection(("127.0.0.1", httpd.server_port)):  # holds a thread
            assert requests.get(url, timeout=5).text == "ok"  # served meanwhile
    finally:
        httpd.stop()
        loop.join()
        httpd.server_close()
    for thread in set(seen):
        thread.join()  # each ends: server_close() told it to
