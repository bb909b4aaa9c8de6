"""DESIGN / issue 4: "codeflow purge deletes expired codes, tokens and sessions; the server
also purges on its own, off the request path"."""

from __future__ import annotations

import threading
import time

from conftest import CONFIDENTIAL, Clock, make_server

import codeflow


def test_the_server_purges_expired_records_in_a_background_thread() -> None:
    """Expired tokens go without any request arriving: purge_forever runs in its own
    daemon thread, on the server's clock."""
    clock = Clock()
    srv = make_server(clock)
    tokens = srv.issue_tokens("alice", CONFIDENTIAL, "api:read")
    stored = codeflow.token_hash(tokens["access_token"])
    assert srv.storage.get_token(stored) is not None
    clock.advance(srv.access_token_lifetime)
    stop = threading.Event()
    thread = codeflow.purge_forever(srv, interval=0.01, stop=stop)
    assert thread.daemon
    deadline = time.monotonic() + 5
    while srv.storage.get_token(stored) is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(timeout=5)
    assert srv.storage.get_token(stored) is None
    assert not thread.is_alive()


def test_a_failing_purge_does_not_stop_the_purger(caplog) -> None:
    """The purge "must never take the server down": an exception is logged and the next
    round still runs."""
    calls: list[float] = []

    class Flaky(codeflow.MemoryStorage):
        def purge_expired(self, now: float) -> int:
            calls.append(now)
            if len(calls) == 1:
                raise OSError("disk full")
            return 0

    srv = codeflow.Server(storage=Flaky())
    stop = threading.Event()
    thread = codeflow.purge_forever(srv, interval=0.01, stop=stop)
    deadline = time.monotonic() + 5
    while len(calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(timeout=5)
    assert len(calls) >= 2
    assert "purge failed" in caplog.text
