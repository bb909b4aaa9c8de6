"""Shared fixtures: a server with known clients and users, a clock tests can move,
and small helpers that act as a browser and as a client app on the wire."""

from __future__ import annotations

import html
import re
import secrets
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

import codeflow

ISSUER = "http://127.0.0.1:8000"
CONFIDENTIAL = "confidential-app"
SECRET = "confidential-secret"
PUBLIC = "public-app"
REDIRECT = "http://127.0.0.1:9000/callback"
NATIVE_REDIRECT = "http://127.0.0.1/native/callback"
USERNAME, PASSWORD = "alice", "alice-password"


def pytest_configure(config: pytest.Config) -> None:
    """The fake-IdP fixtures come from codeflow_sdk's pytest plugin, which an installed
    codeflow registers (entry point pytest11); from a source tree, register it here."""
    if not config.pluginmanager.has_plugin("codeflow"):
        from codeflow_sdk import pytest_plugin

        config.pluginmanager.register(pytest_plugin, "codeflow")


@pytest.fixture(autouse=True, scope="session")
def fast_password_hashing() -> Iterator[None]:
    """scrypt at its real cost (16 MiB, ~100 ms) would dominate the suite's time, so tests
    hash with a cheaper N; the hash format records N, so verification is unchanged.
    test_secure_defaults.py checks the real default."""
    real = codeflow.SCRYPT_N
    codeflow.SCRYPT_N = 2**8
    yield
    codeflow.SCRYPT_N = real


# One key pair per algorithm for the whole session, as a test suite embedding codeflow
# would share them: RSA key generation costs ~200 ms a server otherwise.
SESSION_KEYS = [codeflow.new_signing_key(alg, 0.0) for alg in codeflow.SIGNING_ALGS]


def share_session_keys(srv: codeflow.Server) -> codeflow.Server:
    for key in SESSION_KEYS:
        srv.storage.get_or_add_signing_key(key)
    return srv


class Clock:
    """A clock that only moves when a test moves it."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_server(clock: Clock | None = None, **options) -> codeflow.Server:
    srv = share_session_keys(codeflow.Server(issuer=ISSUER, clock=clock or Clock(), **options))
    srv.add_client(
        CONFIDENTIAL,
        client_secret=SECRET,
        redirect_uris=[REDIRECT],
        name="Confidential App",
        scopes=["openid", "profile", "email", "offline_access", "api:read", "api:write"],
        grant_types=["authorization_code", "refresh_token", "client_credentials"],
    )
    srv.add_client(PUBLIC, redirect_uris=[REDIRECT, NATIVE_REDIRECT], name="Public App")
    srv.add_user(USERNAME, PASSWORD, claims={"name": "Alice"})
    return srv


@pytest.fixture
def server(clock: Clock) -> codeflow.Server:
    """A Server at ISSUER on memory storage, with its clock under the test's control."""
    return make_server(clock)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """The path of a SQLite file for ``srv`` (not made yet)."""
    return tmp_path / "codeflow.db"


@pytest.fixture
def srv(db: Path, clock: Clock) -> Iterator[codeflow.Server]:
    """The conftest server (a confidential and a public client, alice), on the SQLite file
    ``db``, which the ``codeflow`` command can edit from another process while it serves.
    (Modules that mean another server by ``srv`` define their own.)"""
    from codeflow_storage.sqlite import SQLiteStorage

    storage = SQLiteStorage(db)
    yield make_server(clock, storage=storage)
    storage.close()


@pytest.fixture
def live() -> Iterator[tuple[codeflow.Server, str]]:
    """A Server on a real socket on 127.0.0.1 (real clock); yields (server, base URL)."""
    srv = share_session_keys(codeflow.Server())
    with srv.running() as url:
        srv.add_client(
            CONFIDENTIAL,
            client_secret=SECRET,
            redirect_uris=[REDIRECT],
            grant_types=["authorization_code", "refresh_token", "client_credentials"],
            scopes=["openid", "profile", "email", "offline_access", "api:read"],
        )
        srv.add_client(PUBLIC, redirect_uris=[REDIRECT, NATIVE_REDIRECT])
        srv.add_user(USERNAME, PASSWORD)
        yield srv, url


def pkce_pair() -> tuple[str, str]:
    """A fresh (code_verifier, S256 code_challenge), computed independently of codeflow."""
    import base64
    import hashlib

    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


@dataclass
class Flow:
    """The parameters of one authorization request and its PKCE verifier."""

    params: dict[str, str]
    verifier: str


def new_flow(client_id: str = CONFIDENTIAL, **overrides: str) -> Flow:
    verifier, challenge = pkce_pair()
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "scope": "openid profile offline_access",
        "state": secrets.token_urlsafe(8),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    params.update(overrides)
    return Flow({k: v for k, v in params.items() if v is not None}, verifier)


def form_fields(page: str) -> dict[str, str]:
    """The hidden fields of the first form on an HTML page."""
    return {
        name: html.unescape(value)
        for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page)
    }


def form_of(page: str, action: str) -> dict[str, str]:
    """The hidden fields of the form that posts to ``action``."""
    match = re.search(rf'<form method="post" action="{re.escape(action)}"[^>]*>(.*?)</form>',
                      page, re.S)  # fmt: skip
    assert match, f"no form for {action}"
    return form_fields(match.group(1))


def query_of(location: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


def browser_authorize(
    base: str,
    flow: Flow,
    session: requests.Session | None = None,
    username: str = USERNAME,
    password: str = PASSWORD,
    decision: str = "approve",
) -> dict[str, str]:
    """Act as a browser over real HTTP: authorize, log in, consent; return the callback query."""
    s = session or requests.Session()
    r = s.get(base + "/authorize", params=flow.params, allow_redirects=False)
    if r.status_code == 200 and 'action="login"' in r.text:
        data = {**form_fields(r.text), "username": username, "password": password}
        r = s.post(base + "/login", data=data, allow_redirects=False)
        assert r.status_code == 303, r.text
        r = s.get(r.headers["Location"], allow_redirects=False)
    if r.status_code == 200 and 'action="consent"' in r.text:
        data = {**form_fields(r.text), "decision": decision}
        r = s.post(base + "/consent", data=data, allow_redirects=False)
    assert r.status_code in (302, 303), r.text
    return query_of(r.headers["Location"])


def redeem_over_http(
    token_url: str,
    code: str,
    flow: Flow,
    session: requests.Session | None = None,
    timeout: float = 10,
) -> requests.Response:
    """RFC 6749 §4.1.3 over real HTTP: the confidential client (HTTP Basic) exchanges the
    code from ``flow``'s callback at REDIRECT, with the flow's PKCE code_verifier."""
    return (session or requests).post(
        token_url,
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": flow.verifier,
        },
        auth=(CONFIDENTIAL, SECRET),
        timeout=timeout,
    )


# The SDK tests' live-provider fixtures, defined with their helpers.
from sdk_support import idp, provider  # noqa: E402, F401
