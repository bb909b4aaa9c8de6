"""When storage is down, requests answer 503 with Retry-After, never 500, and never a
redirect that loses the request.

Issue 16 item 4: "when PostgreSQL is unreachable or restarting, requests answer 503 with
`Retry-After` (JSON or an HTML page as fits), never 500; the pool reconnects by itself".
RFC 6749 §4.1.2.1 and §5.2 (as extended by OAuth 2.1): ``temporarily_unavailable``, "The
authorization server is currently unable to handle the request due to a temporary
overloading or maintenance of the server". RFC 9110 §15.6.4: 503 Service Unavailable, "The
server MAY send a Retry-After header field (Section 10.2.3) to suggest an appropriate
amount of time for the client to wait before retrying the request."

Real parts: a real PostgreSQL (a schema of its own; made unreachable through a TCP relay
the test stops, its connections terminated with ``pg_terminate_backend``, its pool
exhausted) and a real SQLite file whose write lock another connection holds.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from codeflow_storage.sqlite import SQLiteStorage
from conftest import CONFIDENTIAL, PUBLIC, REDIRECT, SECRET, Clock, make_server, new_flow
from oidc_helpers import authorize, bearer, sign_in_for_tokens
from postgres_support import fresh_schema, server_url, with_options
from wsgi_client import Response, WSGIClient, basic

import codeflow

ORIGIN = "http://127.0.0.1:9000"


def assert_unavailable(r: Response, *, page: bool) -> None:
    """RFC 9110 §15.6.4: 503 with Retry-After; JSON temporarily_unavailable for an API,
    an HTML page (never a redirect) for a browser."""
    assert r.status == 503, (r.status, r.text, r.errors)
    assert int(r.headers["retry-after"]) > 0
    assert "location" not in r.headers
    if r.headers.get("content-type") == "application/json" and "status" in r.json():
        assert r.json() == {"status": "unavailable"}  # /healthz, for load balancers
    elif page:
        assert r.headers["content-type"].startswith("text/html")
        assert "temporarily unavailable" in r.text.lower()
    else:
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"] == "temporarily_unavailable"
        assert r.headers["cache-control"] == "no-store"


# -- Every endpoint, over a storage that fails on demand ----------------------------


class FailingStorage:
    """Delegates to a MemoryStorage until ``down``; then every call raises
    StorageUnavailable, as a backend does when its database cannot be reached."""

    def __init__(self) -> None:
        self.inner = codeflow.MemoryStorage()
        self.down = False

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise codeflow.StorageUnavailable("the test's storage is down")
            return method(*args, **kwargs)

        return call


@pytest.fixture
def failing() -> tuple[codeflow.Server, FailingStorage, WSGIClient]:
    store = FailingStorage()
    srv = make_server(Clock(), storage=store)
    return srv, store, WSGIClient(srv.wsgi)


def test_every_endpoint_answers_503_while_storage_is_down(
    failing: tuple[codeflow.Server, FailingStorage, WSGIClient],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RFC 6749 §4.1.2.1, §5.2 temporarily_unavailable; RFC 9110 §15.6.4: each endpoint
    that needs storage answers 503 with Retry-After, in the form it owes (a page for the
    browser, never a redirect; JSON for API clients), and the failure is logged once."""
    _, store, browser = failing
    flow = new_flow()
    query = authorize(browser, flow)  # signed in: the next authorize would redirect
    tokens = sign_in_for_tokens(browser)
    store.down = True
    origin = {"Origin": ORIGIN}
    caplog.set_level(logging.WARNING, logger="codeflow")
    browser_calls: list[Callable[[], Response]] = [
        lambda: browser.get("/authorize", params=new_flow().params),
        lambda: browser.post("/login", {"username": "alice", "password": "x"}),
        lambda: browser.post("/consent", {"decision": "approve"}),
        lambda: browser.get("/logout"),
    ]
    api_calls: list[Callable[[], Response]] = [
        lambda: browser.post(
            "/token",
            {"grant_type": "authorization_code", "code": query["code"], "redirect_uri": REDIRECT,
             "code_verifier": flow.verifier},
            headers={**basic(CONFIDENTIAL, SECRET), **origin},
        ),
        lambda: browser.post(
            "/token", {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                       "client_id": PUBLIC}, headers=origin,
        ),
        lambda: browser.post("/introspect", {"token": tokens["access_token"]},
                             headers=basic(CONFIDENTIAL, SECRET)),
        lambda: browser.post("/revoke", {"token": tokens["access_token"]},
                             headers={**basic(CONFIDENTIAL, SECRET), **origin}),
        lambda: browser.get("/userinfo", headers={**bearer(tokens["access_token"]), **origin}),
        lambda: browser.get("/healthz"),
    ]
    for call in browser_calls:
        caplog.clear()
        assert_unavailable(call(), page=True)
        assert len([r for r in caplog.records if "storage" in r.getMessage()]) == 1
    for call in api_calls:
        caplog.clear()
        assert_unavailable(call(), page=False)
        assert len([r for r in caplog.records if "storage" in r.getMessage()]) == 1
    store.down = False
    assert browser.get("/userinfo", headers=bearer(tokens["access_token"])).status == 200
    assert browser.get("/healthz").status == 200


# -- PostgreSQL ----------------------------------------------------------------------


class Relay:
    """A TCP relay from a port of its own to the PostgreSQL server: stopping it makes the
    server unreachable for whoever connects through it (and cuts its connections), as a
    server that went down does, without touching the server the other tests share."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.running:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                target.sendall(data)
        for s in (source, target):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def down(self) -> None:
        """New connections are refused at once; open ones are cut."""
        self.running = False
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self.sockets.clear()

    def up(self) -> None:
        self.running = True

    def close(self) -> None:
        self.down()
        self.listener.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A storage URL of a fresh schema, its connections named so a test can find them."""
    pytest.importorskip("psycopg", reason="PostgreSQL tests need psycopg (the dev extra)")
    with fresh_schema() as (url, _schema):
        yield with_options(url, application_name=f"codeflow_{secrets.token_hex(6)}")


@pytest.fixture
def quick_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wait 0.5 s, not POOL_TIMEOUT, for a pooled connection, so an outage shows at once."""
    from codeflow_storage import postgresql

    monkeypatch.setattr(postgresql, "POOL_TIMEOUT", 0.5)


def test_postgresql_down_answers_503_and_up_again_serves(
    pg_url: str, quick_pool: None
) -> None:
    """Issue 16 item 4: "when PostgreSQL is unreachable ... requests answer 503 with
    Retry-After ..., never 500; the pool reconnects by itself"."""
    import psycopg
    from codeflow_storage.postgresql import from_url

    info = psycopg.conninfo.conninfo_to_dict(server_url())
    relay = Relay(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432))
    try:
        via_relay = with_options(pg_url, host="127.0.0.1", port=str(relay.port))
        with from_url(via_relay) as store:
            srv = make_server(Clock(), storage=store)
            browser = WSGIClient(srv.wsgi)
            tokens = sign_in_for_tokens(browser)
            flow = new_flow()
            query = authorize(browser, flow)
            relay.down()
            token_request = {
                "grant_type": "authorization_code", "code": query["code"],
                "redirect_uri": REDIRECT, "code_verifier": flow.verifier,
            }
            r = browser.post("/token", token_request, headers=basic(CONFIDENTIAL, SECRET))
            assert_unavailable(r, page=False)
            r = browser.get("/userinfo", headers=bearer(tokens["access_token"]))
            assert_unavailable(r, page=False)
            assert_unavailable(browser.get("/authorize", params=new_flow().params), page=True)
            assert_unavailable(browser.get("/healthz"), page=False)
            relay.up()
            # The pool reconnects by itself; nothing of the 503s was lost: the code that
            # could not be redeemed while down is redeemed now, once.
            back = time.monotonic()  # a probe at most every PROBE_INTERVAL
            while browser.get("/healthz").status != 200 and time.monotonic() - back < 5:
                time.sleep(0.02)
            r = browser.post("/token", token_request, headers=basic(CONFIDENTIAL, SECRET))
            assert r.status == 200, r.text
            assert browser.get("/userinfo", headers=bearer(tokens["access_token"])).status == 200
    finally:
        relay.close()


def test_postgresql_restart_never_answers_500(pg_url: str) -> None:
    """Issue 16 item 4, a restart: every connection of the storage is terminated
    (``pg_terminate_backend``, as a server restart does) while it is in use; each next
    request succeeds on a reconnected pool or answers 503, never 500; and soon succeeds."""
    import psycopg
    from codeflow_storage.postgresql import from_url

    app_name = pg_url.rpartition("application_name=")[2]
    with from_url(with_options(pg_url, pool_min_size="4")) as store:
        srv = make_server(Clock(), storage=store)
        browser = WSGIClient(srv.wsgi)
        tokens = sign_in_for_tokens(browser)
        flows = [new_flow() for _ in range(3)]
        codes = [authorize(browser, flow)["code"] for flow in flows]
        with psycopg.connect(server_url(), autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s",
                [app_name],
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        statuses = []
        for flow, code in zip(flows, codes, strict=True):
            request = {"grant_type": "authorization_code", "code": code,
                       "redirect_uri": REDIRECT, "code_verifier": flow.verifier}
            for _ in range(10):  # a client retrying after 503, as Retry-After asks
                r = browser.post("/token", request, headers=basic(CONFIDENTIAL, SECRET))
                statuses.append(r.status)
                if r.status != 503:
                    break
                assert_unavailable(r, page=False)
                # A connection lost mid-call marks the server down until the background
                # probe (every PROBE_INTERVAL) has reconnected: a client pauses, as
                # Retry-After asks, if briefly; ten immediate retries could all come first.
                time.sleep(0.1)
            assert r.status == 200, r.text  # redeemed once, after the restart
        for _ in range(10):
            r = browser.get("/userinfo", headers=bearer(tokens["access_token"]))
            statuses.append(r.status)
            if r.status != 503:
                break
        assert r.status == 200
        assert 500 not in statuses


def test_postgresql_restart_the_first_request_after_succeeds(pg_url: str) -> None:
    """Issue 16 item 4, "the pool reconnects by itself": every pooled connection terminated
    while idle (``pg_terminate_backend``, what a restart does to them) costs no 503: the
    storage sees that the server hung up on a connection before it sends anything on it,
    reconnects, and the very next request - a one-shot code redemption (RFC 6749 §4.1.3)
    and a read - succeeds."""
    import psycopg
    from codeflow_storage.postgresql import from_url

    app_name = pg_url.rpartition("application_name=")[2]
    with from_url(with_options(pg_url, pool_min_size="4")) as store:
        srv = make_server(Clock(), storage=store)
        browser = WSGIClient(srv.wsgi)
        tokens = sign_in_for_tokens(browser)
        flow = new_flow()
        code = authorize(browser, flow)["code"]
        with psycopg.connect(server_url(), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %s",
                [app_name],
            )
            for _ in range(100):  # until they are gone, so that the server has hung up
                (left,) = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    [app_name],
                ).fetchone() or (0,)
                if left == 0:
                    break
                time.sleep(0.01)
        request = {"grant_type": "authorization_code", "code": code,
                   "redirect_uri": REDIRECT, "code_verifier": flow.verifier}  # fmt: skip
        r = browser.post("/token", request, headers=basic(CONFIDENTIAL, SECRET))
        assert r.status == 200, r.text
        assert browser.get("/userinfo", headers=bearer(tokens["access_token"])).status == 200
        assert browser.get("/healthz").status == 200


def test_postgresql_one_connection_cut_keeps_the_others(pg_url: str) -> None:
    """One pooled connection closed by the server while idle (a proxy's idle timeout,
    ``idle_session_timeout``, an operator's ``pg_terminate_backend``) with the server up:
    the next request succeeds, and only that connection is replaced - the pool's other
    connections (their server processes) stay, not the whole pool."""
    import psycopg
    from codeflow_storage.postgresql import from_url

    app_name = pg_url.rpartition("application_name=")[2]
    backends = "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
    with from_url(with_options(pg_url, pool_min_size="3")) as store:
        srv = make_server(Clock(), storage=store)
        browser = WSGIClient(srv.wsgi)
        tokens = sign_in_for_tokens(browser)
        with psycopg.connect(server_url(), autocommit=True) as admin:
            before = {pid for (pid,) in admin.execute(backends, [app_name])}
            assert len(before) >= 3
            cut = min(before)
            admin.execute("SELECT pg_terminate_backend(%s)", [cut])
            for _ in range(100):
                if cut not in {pid for (pid,) in admin.execute(backends, [app_name])}:
                    break
                time.sleep(0.01)
            for _ in range(len(before)):  # each pooled connection in turn
                r = browser.get("/userinfo", headers=bearer(tokens["access_token"]))
                assert r.status == 200, r.text
            after = {pid for (pid,) in admin.execute(backends, [app_name])}
        assert cut not in after
        assert before - {cut} <= after, "live connections were replaced too"


def test_postgresql_down_answers_503_at_once(pg_url: str) -> None:
    """Issue 16 item 4: while PostgreSQL cannot be reached, requests answer 503 with
    Retry-After (RFC 9110 §15.6.4) at once - not after waiting POOL_TIMEOUT for a
    connection that cannot come - and one probe at a time tries to reconnect, so that
    once the server is back the next requests succeed within a second."""
    import psycopg
    from codeflow_storage.postgresql import from_url

    info = psycopg.conninfo.conninfo_to_dict(server_url())
    relay = Relay(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432))
    try:
        via_relay = with_options(pg_url, host="127.0.0.1", port=str(relay.port))
        with from_url(with_options(via_relay, pool_min_size="2")) as store:
            srv = make_server(Clock(), storage=store)
            browser = WSGIClient(srv.wsgi)
            tokens = sign_in_for_tokens(browser)
            relay.down()
            started = time.monotonic()
            for _ in range(5):
                r = browser.get("/userinfo", headers=bearer(tokens["access_token"]))
                assert_unavailable(r, page=False)
                assert_unavailable(browser.get("/authorize", params=new_flow().params), page=True)
                assert_unavailable(browser.get("/healthz"), page=False)
            assert time.monotonic() - started < 2.0  # 15 answers, none waited for a pool
            relay.up()
            back = time.monotonic()
            while browser.get("/healthz").status != 200:
                assert time.monotonic() - back < 2.0, "not reconnected within 2 s"
                time.sleep(0.02)
            assert browser.get("/userinfo", headers=bearer(tokens["access_token"])).status == 200
    finally:
        relay.close()


@contextlib.contextmanager
def pool_held(store: Any) -> Iterator[None]:
    """Every connection of ``store``'s pool held by another thread, as requests in flight
    would hold them: the pool busy, the server up."""
    pool = store._current_pool()
    size = pool.get_stats()["pool_max"]
    held, release = threading.Barrier(size + 1), threading.Event()

    def hold() -> None:
        with pool.connection():
            held.wait(10)
            release.wait(30)

    threads = [threading.Thread(target=hold) for _ in range(size)]
    for thread in threads:
        thread.start()
    held.wait(10)
    try:
        yield
    finally:
        release.set()
        for thread in threads:
            thread.join()


def waited_for(request: Callable[[], Response]) -> tuple[Response, float]:
    started = time.monotonic()
    r = request()
    return r, time.monotonic() - started


def test_postgresql_pool_busy_answers_503_after_the_urls_pool_timeout(pg_url: str) -> None:
    """RFC 9110 §15.6.4: the pool's connections all held by other threads (busy, not down),
    a request waits ``pool_timeout`` (a storage URL option) for one, then answers 503 with
    Retry-After: JSON temporarily_unavailable from an API, a page for a browser; never
    500. Once a connection is free again, requests are served."""
    from codeflow_storage.postgresql import from_url

    with from_url(with_options(pg_url, pool_max_size="1", pool_timeout="0.5")) as store:
        srv = make_server(Clock(), storage=store)
        browser = WSGIClient(srv.wsgi)
        tokens = sign_in_for_tokens(browser)
        with pool_held(store):
            r, waited = waited_for(
                lambda: browser.get("/userinfo", headers=bearer(tokens["access_token"]))
            )
            assert_unavailable(r, page=False)
            assert r.headers["retry-after"] == "1"  # busy, not down: soon
            assert 0.5 <= waited < 0.5 + 2.5, waited  # room for a loaded shared machine
            assert_unavailable(browser.get("/authorize", params=new_flow().params), page=True)
        assert browser.get("/userinfo", headers=bearer(tokens["access_token"])).status == 200


def test_postgresql_pool_busy_waits_less_than_a_clients_patience_by_default(
    pg_url: str,
) -> None:
    """RFC 9110 §15.6.4: without ``pool_timeout``, a request on a busy pool answers 503 with
    Retry-After within POOL_TIMEOUT, which is well inside the few seconds an HTTP client
    waits for an answer (openid-client 5 gives up after 3.5 s by default), so the client
    hears "retry" rather than timing out."""
    from codeflow_storage import postgresql

    assert postgresql.POOL_TIMEOUT < 3.5
    with postgresql.from_url(with_options(pg_url, pool_max_size="1")) as store:
        srv = make_server(Clock(), storage=store)
        client = WSGIClient(srv.wsgi)
        with pool_held(store):
            r, waited = waited_for(lambda: client.post(
                "/token", data={"grant_type": "client_credentials"},
                headers=basic(CONFIDENTIAL, SECRET),
            ))  # fmt: skip
        assert_unavailable(r, page=False)
        assert postgresql.POOL_TIMEOUT <= waited < 3.5, waited


# -- SQLite ----------------------------------------------------------------------------


def test_sqlite_locked_past_its_busy_timeout_answers_503(tmp_path: Path) -> None:
    """A SQLite file whose write lock another connection holds (BEGIN IMMEDIATE) longer
    than the busy timeout: "database is locked" becomes 503 with Retry-After, a page for
    the browser (never the redirect with a code the server could not save), JSON for the
    token endpoint; once the lock is gone, the same requests succeed."""
    path = tmp_path / "codeflow.db"
    with SQLiteStorage(path, busy_timeout=0.1) as store:
        srv = make_server(Clock(), storage=store)
        browser = WSGIClient(srv.wsgi)
        flow = new_flow()
        query = authorize(browser, flow)
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            assert_unavailable(browser.get("/authorize", params=new_flow().params), page=True)
            request = {"grant_type": "authorization_code", "code": query["code"],
                       "redirect_uri": REDIRECT, "code_verifier": flow.verifier}
            r = browser.post("/token", request, headers=basic(CONFIDENTIAL, SECRET))
            assert_unavailable(r, page=False)
            other.execute("COMMIT")
        finally:
            other.close()
        r = browser.post("/token", request, headers=basic(CONFIDENTIAL, SECRET))
        assert r.status == 200, r.text
        assert browser.get("/authorize", params=new_flow().params).status == 302
