"""Benchmark: what a test pays for its fake IdP (issue 6 "Server() plus its first issued
token in well under 50 ms when the signing key is shared across the servers of a test
session").

Measured the way the pytest plugin makes its servers (test mode, a Clock, the session's
RS256 key, fast password hashing): in-process, and live on a loopback port (start and
first token, and in a column of its own the stop, which waited up to 50 ms for
serve_forever's poll before issue 17 item 2); and, for comparison, a server that makes
its own RSA key. Printed whatever the capture setting; nothing is asserted about time.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable

import pytest
from codeflow_sdk.pytest_plugin import _Factory
from codeflow_sdk.testing import Clock

import codeflow

REDIRECT = "http://127.0.0.1:9000/callback"


def first_token(key: codeflow.SigningKey | None, live: bool) -> Callable[[], None]:
    """Make a server and mint its first token; return what stops it (not timed)."""
    stack = contextlib.ExitStack()
    if key is not None:  # as the plugin's fixtures make them
        srv = _Factory(key)()
    else:
        srv = codeflow.Server(test_mode=True, clock=Clock())
    srv.add_client("app", redirect_uris=[REDIRECT])  # public: no secret to hash
    if live:
        stack.enter_context(srv.running())
    body = srv.issue_tokens("alice", "app", "openid")
    assert body["id_token"].count(".") == 2
    return stack.close


def timed(fn: Callable[[], Callable[[], None]], n: int) -> tuple[list[float], list[float]]:
    """Sorted milliseconds of n starts (with the first token) and of their stops."""
    fn()()  # warm-up: imports, first parse of the shared key
    times, stops = [], []
    for _ in range(n):
        start = time.perf_counter()
        stop = fn()
        stopping = time.perf_counter()
        times.append((stopping - start) * 1000)
        stop()
        stops.append((time.perf_counter() - stopping) * 1000)
    return sorted(times), sorted(stops)


def test_start_cost(capsys: pytest.CaptureFixture[str]) -> None:
    """Row per case: median and 90th percentile milliseconds of Server() + first token."""
    import logging

    logging.getLogger("codeflow").setLevel(logging.ERROR)  # test mode's warning, each time
    key = codeflow.new_signing_key("RS256", 0)
    cases = {
        "in-process, session key": (lambda: first_token(key, False), 200),
        "live on 127.0.0.1, session key": (lambda: first_token(key, True), 50),
        "in-process, own RSA key": (lambda: first_token(None, False), 10),
    }
    with capsys.disabled():
        print("\n\nStart cost: Server() + its first issued token (ID token signed RS256)")
        print(f"{'case':<34} {'median ms':>10} {'p90 ms':>8} {'stop ms':>8} {'n':>5}")
        for name, (fn, n) in cases.items():
            times, stops = timed(fn, n)
            p90 = times[int(len(times) * 0.9) - 1]
            print(f"{name:<34} {statistics.median(times):>10.2f} {p90:>8.2f} "
                  f"{statistics.median(stops):>8.2f} {n:>5}")  # fmt: skip
    logging.getLogger("codeflow").setLevel(logging.NOTSET)
