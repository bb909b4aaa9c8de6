"""Helpers for the SDK and example tests: a live codeflow whose clock and wire a test
controls, a browser that follows the authorization redirect, and a WSGI app on a socket.

The SDK under test never imports codeflow; these helpers do, because codeflow is the
provider the SDK talks to over a real socket.
"""

from __future__ import annotations

import contextlib
import json
import socket
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

import codeflow

DISCOVERY = "/.well-known/openid-configuration"
CONFIDENTIAL, SECRET = "sdk-app", "sdk-app-secret"
PUBLIC = "sdk-public"
ES_CLIENT, ES_SECRET = "sdk-es-app", "sdk-es-secret"
JWT_CLIENT, JWT_SECRET = "sdk-jwt-app", "sdk-jwt-secret"
INTROSPECTOR, INTROSPECTOR_SECRET = "sdk-api", "sdk-api-secret"
REDIRECT = "http://127.0.0.1:9000/callback"
SCOPES = ["openid", "profile", "email", "offline_access", "api:read", "api:write"]
ALL_GRANTS = ["authorization_code", "refresh_token", "client_credentials"]
ALICE_CLAIMS = {"name": "Alice Liddell", "email": "alice@example.org", "email_verified": True}


class Clock:
    """A clock that moves only when a test moves it."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Wire:
    """WSGI middleware around the provider: counts requests per path, and lets a test
    rewrite the JSON body a path answers with (a provider misbehaving on the wire)."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.hits: Counter[str] = Counter()
        self.authorization: dict[str, str | None] = {}  # path -> its last Authorization
        self.rewrite: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {}

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        self.hits[path] += 1
        self.authorization[path] = environ.get("HTTP_AUTHORIZATION")
        rewrite = self.rewrite.get(path)
        if rewrite is None:
            return self.app(environ, start_response)
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list, exc_info: Any = None) -> Callable:
            captured.update(status=status, headers=headers)
            return lambda data: None

        result = self.app(environ, capture)
        try:
            body = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        new = json.dumps(rewrite(json.loads(body))).encode()
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        start_response(captured["status"], [*headers, ("Content-Length", str(len(new)))])
        return [new]


@dataclass
class IdP:
    """A running codeflow with its clock and wire."""

    srv: codeflow.Server
    url: str
    clock: Clock
    wire: Wire

    def reset(self) -> None:
        self.clock.now = time.time()
        self.wire.rewrite.clear()
        self.wire.hits.clear()
        self.wire.authorization.clear()
        self.srv.auto_approve = "alice"

    def sign(
        self, claims: dict[str, Any], *, typ: str = "JWT", alg: str = "RS256", **header: Any
    ) -> str:
        """A JWS signed with the provider's current key: a token with any claims we like,
        which only claim checks (not the signature check) can reject."""
        key = codeflow.signing_key(self.srv, alg)
        headers = {"kid": key.kid, "typ": typ, **header}
        return jwt.encode(claims, codeflow.private_key(key), algorithm=alg, headers=headers)


@contextlib.contextmanager
def running_idp() -> Iterator[IdP]:
    """codeflow on 127.0.0.1 with auto-approve as alice, the clients the SDK tests use,
    and a clock the test controls (it starts at the real time)."""
    clock = Clock()
    srv = codeflow.Server(clock=clock, auto_approve="alice")
    wire = Wire(srv.wsgi)
    srv.wsgi = wire
    with srv.running() as url:
        srv.add_client(
            CONFIDENTIAL, client_secret=SECRET, redirect_uris=[REDIRECT], scopes=SCOPES,
            grant_types=ALL_GRANTS, post_logout_redirect_uris=["http://127.0.0.1:9000/"],
        )  # fmt: skip
        srv.add_client(PUBLIC, redirect_uris=[REDIRECT])
        srv.add_client(
            ES_CLIENT, client_secret=ES_SECRET, redirect_uris=[REDIRECT],
            id_token_signed_response_alg="ES256",
        )  # fmt: skip
        srv.add_client(
            JWT_CLIENT, client_secret=JWT_SECRET, redirect_uris=[REDIRECT], scopes=SCOPES,
            grant_types=ALL_GRANTS, access_token_jwt=True,
        )  # fmt: skip
        srv.add_client(
            INTROSPECTOR, client_secret=INTROSPECTOR_SECRET, grant_types=["client_credentials"]
        )
        srv.add_user("alice", claims=ALICE_CLAIMS)
        srv.add_user("bob", claims={"name": "Bob"})
        yield IdP(srv, url, clock, wire)


# The SDK test modules' fixtures (conftest.py makes them visible): each module gets its
# own live codeflow (module scope), reset before each of its tests.


@pytest.fixture(scope="module")
def provider() -> Iterator[IdP]:
    with running_idp() as idp:
        yield idp


@pytest.fixture
def idp(provider: IdP) -> IdP:
    provider.reset()
    return provider


def follow(authorization_url: str) -> str:
    """Be the browser: GET the authorization URL and return where it redirects to."""
    with requests.get(authorization_url, allow_redirects=False, timeout=10) as r:
        assert r.status_code == 302, r.text
        return r.headers["Location"]


def rogue_key() -> rsa.RSAPrivateKey:
    """A key the provider never published."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serving(app: Callable[..., Iterable[bytes]], port: int = 0) -> Iterator[str]:
    """Serve a WSGI app on 127.0.0.1 in a thread; yield its base URL."""
    httpd = make_server("127.0.0.1", port, app, _ThreadingServer, _Quiet)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
