"""Dynamic Client Registration: RFC 7591 §3 (the registration endpoint), §2 (client
metadata), §3.2.1 (the client information response), §3.2.2 (errors); RFC 8252 §7.3
(loopback redirect URIs of native apps). In-process through WSGI (wsgiref.validate),
with a flow over a live socket at the end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from conftest import (
    PASSWORD,
    USERNAME,
    Clock,
    browser_authorize,
    new_flow,
    share_session_keys,
)
from test_node_caches import postgresql_stores, sqlite_stores
from wsgi_client import Response, WSGIClient

import codeflow

ISSUER = "http://127.0.0.1:8000"
NATIVE = {
    "client_name": "Native Tool",
    "redirect_uris": ["http://127.0.0.1/callback"],
    "application_type": "native",
    "token_endpoint_auth_method": "none",
    "grant_types": ["authorization_code", "refresh_token"],
    "response_types": ["code"],
}
WEB = {
    "client_name": "Web App",
    "redirect_uris": ["https://app.example/cb"],
    "token_endpoint_auth_method": "client_secret_basic",
    "grant_types": ["authorization_code", "refresh_token"],
}


def get(url: str, **options: Any) -> requests.Response:
    return requests.get(url, timeout=10, **options)


def post(url: str, **options: Any) -> requests.Response:
    return requests.post(url, timeout=10, **options)


def make(clock: Any = None, **options: Any) -> codeflow.Server:
    options.setdefault("registration", "open")
    srv = codeflow.Server(issuer=ISSUER, clock=clock or Clock(), **options)
    srv.add_user(USERNAME, PASSWORD)
    return share_session_keys(srv)


def register(wc: WSGIClient, metadata: Any, headers: dict[str, str] | None = None,
             address: str = "203.0.113.5") -> Response:  # fmt: skip
    body = metadata if isinstance(metadata, bytes) else json.dumps(metadata).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    return wc.request("POST", "/register", body=body, headers=headers, REMOTE_ADDR=address)


def assert_error(r: Response, error: str, words: str = "", status: int = 400) -> None:
    assert (r.status, r.json()["error"]) == (status, error), r.text
    assert words in r.json()["error_description"], r.text


@pytest.fixture
def srv(clock: Clock) -> codeflow.Server:
    return make(clock)


@pytest.fixture
def wc(srv: codeflow.Server) -> WSGIClient:
    return WSGIClient(srv.wsgi)


def test_public_native_client_registered(srv: codeflow.Server, wc: WSGIClient) -> None:
    """RFC 7591 §3.2.1: 201 with the client_id, the metadata as registered and, being
    public (token_endpoint_auth_method none), no secret; RFC 7592 §3: a registration
    access token and the registration_client_uri."""
    r = register(wc, NATIVE)
    assert r.status == 201, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    client_id = body["client_id"]
    assert body["client_name"] == "Native Tool"
    assert body["redirect_uris"] == NATIVE["redirect_uris"]
    assert body["token_endpoint_auth_method"] == "none"
    assert body["application_type"] == "native"
    assert body["grant_types"] == ["authorization_code", "refresh_token"]
    assert body["client_id_issued_at"] == int(srv.clock())
    assert "client_secret" not in body and "client_secret_expires_at" not in body
    assert body["registration_client_uri"] == f"{ISSUER}/register/{client_id}"
    stored = srv.storage.get_client(client_id)
    assert stored is not None and stored.public and stored.unverified
    assert stored.registration == codeflow.REGISTERED_DYNAMICALLY
    # RFC 7592 §3: the registration access token is kept only as a hash.
    assert stored.registration_token_hash == codeflow.token_hash(body["registration_access_token"])


def test_confidential_client_gets_its_secret_once(srv: codeflow.Server, wc: WSGIClient) -> None:
    """RFC 7591 §3.2.1: client_secret, and client_secret_expires_at (0: never); storage
    keeps only the secret's hash, which authenticates the client (RFC 6749 §2.3.1)."""
    body = register(wc, WEB).json()
    secret = body["client_secret"]
    assert body["client_secret_expires_at"] == 0
    stored = srv.storage.get_client(body["client_id"])
    assert stored is not None and stored.secret_hash and secret not in stored.secret_hash
    assert codeflow.verify_password(secret, stored.secret_hash)
    got = srv.issue_tokens(None, body["client_id"], "openid")
    assert "access_token" in got
    r = wc.post("/token", {"grant_type": "refresh_token", "refresh_token": "nope"},
                headers=basic_auth(body["client_id"], secret))  # fmt: skip
    assert r.json()["error"] == "invalid_grant"  # authenticated; the grant is what fails


def basic_auth(client_id: str, secret: str) -> dict[str, str]:
    from wsgi_client import basic

    return basic(client_id, secret)


def test_default_auth_method_is_client_secret_basic(wc: WSGIClient) -> None:
    """RFC 7591 §2 token_endpoint_auth_method: "If unspecified or omitted, the default is
    client_secret_basic"; grant_types defaults to authorization_code, response_types to
    code."""
    body = register(wc, {"redirect_uris": ["https://app.example/cb"]}).json()
    assert body["token_endpoint_auth_method"] == "client_secret_basic"
    assert body["grant_types"] == ["authorization_code"]
    assert body["response_types"] == ["code"]
    assert "client_secret" in body


@pytest.mark.parametrize(
    ("metadata", "error", "words"),
    [
        ({"redirect_uris": ["http://app.example/cb"]}, "invalid_redirect_uri", "must be https"),
        ({"redirect_uris": ["https://app.example/cb#x"]}, "invalid_redirect_uri", "fragment"),
        ({"redirect_uris": ["/cb"]}, "invalid_redirect_uri", ""),
        ({"redirect_uris": ["com.example.app:/cb"]}, "invalid_redirect_uri", "not allowed"),
        ({"redirect_uris": ["javascript:alert(1)"], "application_type": "native"},
         "invalid_redirect_uri", "not allowed"),
        ({"redirect_uris": ["https://user@app.example/cb"]}, "invalid_redirect_uri", "userinfo"),
        ({"redirect_uris": []}, "invalid_redirect_uri", "required"),
        ({}, "invalid_redirect_uri", "required"),
        ({"redirect_uris": "https://app.example/cb"}, "invalid_redirect_uri", "array"),
        ({"redirect_uris": [f"https://app.example/{i}" for i in range(21)]},
         "invalid_redirect_uri", "at most 20"),
        ({"redirect_uris": ["https://a.example/cb"],
          "token_endpoint_auth_method": "private_key_jwt"},
         "invalid_client_metadata", "token_endpoint_auth_method"),
        ({"redirect_uris": ["https://a.example/cb"], "grant_types": ["implicit"]},
         "invalid_client_metadata", "grant_types"),
        ({"redirect_uris": ["https://a.example/cb"], "grant_types": ["password"]},
         "invalid_client_metadata", "grant_types"),
        ({"redirect_uris": ["https://a.example/cb"], "response_types": ["code", "token"]},
         "invalid_client_metadata", "response_types"),
        ({"redirect_uris": ["https://a.example/cb"], "grant_types": ["refresh_token"]},
         "invalid_client_metadata", "go together"),
        ({"redirect_uris": ["https://a.example/cb"], "token_endpoint_auth_method": "none",
          "grant_types": ["client_credentials"], "response_types": []},
         "invalid_client_metadata", "grant_types"),
        ({"redirect_uris": ["https://a.example/cb"], "application_type": "desktop"},
         "invalid_client_metadata", "application_type"),
        ({"redirect_uris": ["https://a.example/cb"], "client_name": 42},
         "invalid_client_metadata", "client_name"),
        ({"redirect_uris": ["https://a.example/cb"], "client_name": "x" * 101},
         "invalid_client_metadata", "client_name"),
        ({"redirect_uris": ["https://a.example/cb"], "logo_uri": "http://a.example/logo.png"},
         "invalid_client_metadata", "logo_uri"),
        ({"redirect_uris": ["https://a.example/cb"], "client_uri": "javascript:alert(1)"},
         "invalid_client_metadata", "client_uri"),
        ({"redirect_uris": ["https://a.example/cb"], "scope": "openid \"quoted\""},
         "invalid_client_metadata", "scope"),
        ({"redirect_uris": ["https://a.example/cb"], "contacts": "ops@example.com"},
         "invalid_client_metadata", "contacts"),
        ({"redirect_uris": ["https://a.example/cb"], "id_token_signed_response_alg": "none"},
         "invalid_client_metadata", "id_token_signed_response_alg"),
        ({"redirect_uris": ["https://a.example/cb"], "jwks_uri": "https://a.example/jwks"},
         "invalid_client_metadata", "jwks_uri"),
        ({"redirect_uris": ["https://a.example/cb"], "backchannel_logout_uri": "https://a.example/l"},
         "invalid_client_metadata", "backchannel_logout_uri"),
        ({"redirect_uris": ["https://a.example/cb"], "subject_type": "pairwise"},
         "invalid_client_metadata", "subject_type"),
        ([1, 2], "invalid_client_metadata", "JSON object"),
        (b"{not json", "invalid_client_metadata", "not JSON"),
        (b"\xff\xfe", "invalid_client_metadata", "not JSON"),
    ],
)  # fmt: skip
def test_bad_metadata_refused_with_rfc7591_error_codes(
    srv: codeflow.Server, wc: WSGIClient, metadata: Any, error: str, words: str
) -> None:
    """RFC 7591 §3.2.2: invalid_redirect_uri "The value of one or more redirection URIs is
    invalid"; invalid_client_metadata "The value of one of the client metadata fields is
    invalid and the server has rejected this request". Nothing is stored."""
    assert_error(register(wc, metadata), error, words)
    assert srv.storage.list_clients() == []


@pytest.mark.parametrize("bad", ["\ud800", "a\x00b", "line\nbreak"])
@pytest.mark.parametrize("member", ["contacts", "redirect_uris", "client_name", "software_id",
                                    "scope", "post_logout_redirect_uris"])  # fmt: skip
def test_unprintable_strings_refused_on_sqlite(tmp_path: Path, member: str, bad: str) -> None:
    """A lone surrogate (JSON carries it, UTF-8 cannot) or a control character in any
    string member is a 400, not a 500 from storage; here on a real SQLite file."""
    storage = codeflow.open_storage(f"sqlite:///{tmp_path / 'idp.db'}")
    wc = WSGIClient(codeflow.Server(issuer=ISSUER, storage=storage, registration="open").wsgi)
    value: Any = [f"https://a.example/{bad}"] if member.endswith("uris") else bad
    if member == "contacts":
        value = [bad]
    r = register(wc, {"redirect_uris": ["https://a.example/cb"], member: value})
    assert r.status == 400, r.text
    assert r.json()["error"] in ("invalid_client_metadata", "invalid_redirect_uri")
    assert storage.list_clients() == []


def test_unknown_members_ignored(wc: WSGIClient) -> None:
    """RFC 7591 §2: "The authorization server MUST ignore any client metadata sent by the
    client that it does not understand"."""
    body = register(wc, {**NATIVE, "x_vendor_flag": True, "software_statement": "ey.x.y"}).json()
    assert "x_vendor_flag" not in body and "client_id" in body


def test_null_members_count_as_absent(wc: WSGIClient) -> None:
    """RFC 7592 §2.2 treats omitted members as null; a client library that sends every
    member, the unset ones as null (jwks_uri, contacts, ...), registers."""
    nulls = dict.fromkeys(("client_uri", "logo_uri", "contacts", "tos_uri", "policy_uri",
                           "jwks_uri", "jwks", "software_id", "software_version",
                           "scope"))  # fmt: skip
    r = register(wc, {**NATIVE, **nulls})
    assert r.status == 201, r.text
    assert not set(nulls) & set(r.json())


def test_echoed_metadata(wc: WSGIClient) -> None:
    """RFC 7591 §3.2.1: "all registered metadata about the client" comes back."""
    extra = {"client_uri": "https://app.example/", "logo_uri": "https://app.example/logo.png",
             "tos_uri": "https://app.example/tos", "policy_uri": "https://app.example/privacy",
             "contacts": ["ops@app.example"], "software_id": "4NRB1-0XZABZI9E6-5SM3R",
             "software_version": "2.1", "scope": "openid profile",
             "post_logout_redirect_uris": ["https://app.example/bye"]}  # fmt: skip
    body = register(wc, {**WEB, **extra}).json()
    for name, value in extra.items():
        assert body[name] == value


@pytest.mark.parametrize(
    "uri",
    ["http://127.0.0.1/callback", "http://[::1]/callback", "http://localhost:3000/callback",
     "http://127.0.0.1:8765/callback"],
)  # fmt: skip
def test_loopback_redirect_uris_accepted(wc: WSGIClient, uri: str) -> None:
    """RFC 8252 §7.3: loopback redirect URIs over http (only this machine answers them),
    for native apps and for a developer's web app alike; MCP clients register these."""
    r = register(wc, {"redirect_uris": [uri], "token_endpoint_auth_method": "none"})
    assert r.status == 201, r.text


def test_private_use_scheme_for_native_apps(wc: WSGIClient) -> None:
    """RFC 8252 §7.1: a native app may use a private-use URI scheme."""
    r = register(wc, {**NATIVE, "redirect_uris": ["com.example.app:/oauth2redirect"]})
    assert r.status == 201, r.text


def test_registration_off_by_default() -> None:
    """Off by default (secure defaults): 403, and no registration_endpoint in discovery
    (RFC 8414 §2: only endpoints that exist)."""
    srv = codeflow.Server(issuer=ISSUER)
    wc = WSGIClient(srv.wsgi)
    assert_error(register(wc, NATIVE), "access_denied", "not enabled", 403)
    assert "registration_endpoint" not in wc.get("/.well-known/oauth-authorization-server").json()
    assert "registration_endpoint" not in wc.get("/.well-known/openid-configuration").json()


@pytest.mark.parametrize("path", ["/.well-known/oauth-authorization-server",
                                  "/.well-known/openid-configuration"])  # fmt: skip
def test_discovery_lists_the_registration_endpoint(wc: WSGIClient, path: str) -> None:
    """RFC 8414 §2 registration_endpoint: "URL of the authorization server's OAuth 2.0
    Dynamic Client Registration endpoint"; the URL works."""
    endpoint = wc.get(path).json()["registration_endpoint"]
    assert endpoint == ISSUER + "/register"
    assert register(wc, NATIVE).status == 201


def test_token_policy_needs_an_initial_access_token(clock: Clock) -> None:
    """RFC 7591 §3: with an initial access token, presented as a Bearer token (RFC 6750);
    without it or with a wrong one, RFC 6750 §3.1's 401 invalid_token."""
    srv = make(clock, registration="token", registration_tokens=["iat-1", "iat-2"])
    wc = WSGIClient(srv.wsgi)
    r = register(wc, NATIVE)
    assert r.status == 401 and r.headers["www-authenticate"].startswith("Bearer")
    r = register(wc, NATIVE, {"Authorization": "Bearer wrong"})
    assert_error(r, "invalid_token", status=401)
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert register(wc, NATIVE, {"Authorization": "Bearer iat-2"}).status == 201


def test_token_policy_without_tokens_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="registration_tokens"):
        codeflow.Server(registration="token")
    with pytest.raises(ValueError, match="registration must be one of"):
        codeflow.Server(registration="anyone")  # type: ignore[arg-type]


def test_content_type_must_be_json(wc: WSGIClient) -> None:
    """RFC 7591 §3.1: the metadata is sent "as a JSON document" (application/json)."""
    r = wc.request("POST", "/register", body=b"redirect_uris=x",
                   headers={"Content-Type": "application/x-www-form-urlencoded"})  # fmt: skip
    assert_error(r, "invalid_request", "application/json")


def test_one_address_cannot_fill_storage(srv: codeflow.Server, wc: WSGIClient,
                                         clock: Clock) -> None:  # fmt: skip
    """Bounding an open endpoint: REGISTRATION_BURST registrations from one address, then
    429 with Retry-After (RFC 6585 §4) until its budget refills; another address is not
    held up."""
    for _ in range(codeflow.REGISTRATION_BURST):
        assert register(wc, NATIVE).status == 201
    r = register(wc, NATIVE)
    assert r.status == 429 and int(r.headers["retry-after"]) > 0
    assert register(wc, NATIVE, address="198.51.100.7").status == 201
    clock.advance(codeflow.REGISTRATION_INTERVAL)
    assert register(wc, NATIVE).status == 201
    # An IPv6 client rotating through its own /64 (or /56) is one address.
    for i in range(codeflow.REGISTRATION_BURST):
        assert register(wc, NATIVE, address=f"2001:db8:0:1::{i + 1}").status == 201
    assert register(wc, NATIVE, address="2001:db8:0:2::99").status == 429


def test_an_ipv4_client_has_one_budget_on_ipv4_and_dual_stack_sockets(
    srv: codeflow.Server, wc: WSGIClient
) -> None:
    """Bounding an open endpoint (RFC 7591 §3) per address: a node listening on a dual-stack
    socket sees an IPv4 client as ::ffff:a.b.c.d (RFC 4291 §2.5.5.2), one on an IPv4
    socket (or a proxy) as a.b.c.d; both are the one address, with one budget, so that a
    client reaching nodes of both kinds does not get REGISTRATION_BURST from each."""
    for i in range(codeflow.REGISTRATION_BURST):
        address = "198.51.100.9" if i % 2 else "::ffff:198.51.100.9"
        assert register(wc, NATIVE, address=address).status == 201
    for address in ("198.51.100.9", "::ffff:198.51.100.9", "::FFFF:c633:6409"):
        assert register(wc, NATIVE, address=address).status == 429, address


@pytest.mark.parametrize("stores", [sqlite_stores, postgresql_stores], ids=["sqlite", "postgresql"])
def test_one_address_has_one_budget_across_nodes(
    stores: Any, tmp_path: Path, clock: Clock
) -> None:
    """Bounding an open endpoint (RFC 7591 §3), where several nodes or worker processes
    share a store (README "Run several nodes"): REGISTRATION_BURST registrations from one
    address spread over two nodes spend one budget, then 429 with Retry-After (RFC 6585 §4)
    on both, and REGISTRATION_INTERVAL later one more, wherever it lands. Were the budget
    per process, two nodes would take twice as many."""
    made = stores(tmp_path)
    store_a, store_b = next(made)
    nodes = [WSGIClient(make(clock, storage=store).wsgi) for store in (store_a, store_b)]
    for i in range(codeflow.REGISTRATION_BURST):
        assert register(nodes[i % 2], NATIVE).status == 201
    for node in nodes:
        r = register(node, NATIVE)
        assert r.status == 429 and int(r.headers["retry-after"]) == codeflow.REGISTRATION_INTERVAL
    clock.advance(codeflow.REGISTRATION_INTERVAL - 10)
    assert int(register(nodes[1], NATIVE).headers["retry-after"]) == 10  # refused: not spent
    clock.advance(10)
    assert register(nodes[1], NATIVE).status == 201
    assert register(nodes[0], NATIVE).status == 429
    assert register(nodes[0], NATIVE, address="198.51.100.7").status == 201
    next(made, None)


def test_total_of_registered_clients_bounded(clock: Clock) -> None:
    """From many addresses together: no more than max_registered_clients; operator
    clients do not count, and removing one makes room."""
    srv = make(clock, max_registered_clients=3)
    srv.add_client("operator-app", redirect_uris=["https://op.example/cb"])
    wc = WSGIClient(srv.wsgi)
    ids = [register(wc, NATIVE, address=f"192.0.2.{i}").json()["client_id"] for i in range(3)]
    r = register(wc, NATIVE, address="192.0.2.200")
    assert r.status == 429 and r.json()["error"] == "temporarily_unavailable"
    srv.remove_client(ids[0])
    assert register(wc, NATIVE, address="192.0.2.201").status == 201


def test_audit_event(wc: WSGIClient, caplog: pytest.LogCaptureFixture) -> None:
    """README "Logs": client.registered names the client and the address, never a secret."""
    with caplog.at_level(logging.INFO, logger="codeflow.audit"):
        body = register(wc, WEB).json()
    events = [r for r in caplog.records if getattr(r, "event", "") == "client.registered"]
    assert len(events) == 1
    fields = events[0].fields  # type: ignore[attr-defined]
    assert fields["client"] == body["client_id"] and fields["address"] == "203.0.113.5"
    assert body["client_secret"] not in caplog.text
    assert body["registration_access_token"] not in caplog.text


def test_registered_scope_does_not_cap_later_requests(srv: codeflow.Server, wc: WSGIClient) -> None:
    """The registered scope is what the client expects to ask for, not a ceiling: a later
    request for more (step-up) goes to the user's consent (issue 15, item 4)."""
    body = register(wc, {**NATIVE, "scope": "openid"}).json()
    srv.auto_approve = USERNAME
    flow = new_flow(body["client_id"], redirect_uri="http://127.0.0.1:4000/callback",
                    scope="openid profile email")  # fmt: skip
    r = wc.get("/authorize", params=flow.params)
    assert r.status == 302 and "code=" in r.headers["location"], r.text


def test_registered_client_reaches_a_resource_beyond_its_registered_scope(
    srv: codeflow.Server, wc: WSGIClient
) -> None:
    """RFC 8707 §2.1 with RFC 7591 §2 scope: a client registered with scope "openid" asks
    for a resource's scope with ``resource`` (step-up within the resource's scopes); the
    access token is for that resource, with that scope."""
    srv.add_resource("https://mcp.example/mcp", scopes=["mcp:tools"])
    body = register(wc, {**NATIVE, "scope": "openid"}).json()
    srv.auto_approve = USERNAME
    redirect = "http://127.0.0.1:4000/callback"
    flow = new_flow(body["client_id"], redirect_uri=redirect, scope="mcp:tools",
                    resource="https://mcp.example/mcp")  # fmt: skip
    r = wc.get("/authorize", params=flow.params)
    assert r.status == 302, r.text
    code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(r.headers["location"]).query))["code"]
    tokens = wc.post("/token", {
        "grant_type": "authorization_code", "code": code, "client_id": body["client_id"],
        "redirect_uri": redirect, "code_verifier": flow.verifier,
        "resource": "https://mcp.example/mcp",
    }).json()  # fmt: skip
    assert tokens["scope"] == "mcp:tools", tokens
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["aud"] == "https://mcp.example/mcp"
    assert claims["client_id"] == body["client_id"]


def test_consent_marks_a_registered_client_unverified() -> None:
    """A self-registered client's name is its own claim: the consent page says so, with
    the host the answer goes to; then the flow completes with PKCE over real HTTP."""
    srv = make(time.time)
    with srv.running() as url:
        srv.issuer = url
        body = post(url + "/register", json={
            **NATIVE, "client_name": "Totally Google Drive",
            "redirect_uris": ["http://127.0.0.1:9000/callback"],
        }).json()  # fmt: skip
        flow = new_flow(body["client_id"], redirect_uri="http://127.0.0.1:9000/callback")
        s = requests.Session()
        r = s.get(url + "/authorize", params=flow.params)
        assert 'action="login"' in r.text
        from conftest import form_fields

        r = s.post(url + "/login", data={**form_fields(r.text), "username": USERNAME,
                                         "password": PASSWORD})  # fmt: skip
        text = " ".join(r.text.split())
        assert "Unverified app." in text and "registered itself with this server" in text
        assert "<strong>Totally Google Drive</strong> asks to" in text
        assert "Your answer goes to <strong>127.0.0.1:9000</strong>" in text
        callback = browser_authorize(url, flow, s)
        tokens = post(url + "/token", data={
            "grant_type": "authorization_code", "code": callback["code"],
            "client_id": body["client_id"], "redirect_uri": "http://127.0.0.1:9000/callback",
            "code_verifier": flow.verifier,
        })  # fmt: skip
        assert tokens.status_code == 200, tokens.text
        assert tokens.json()["token_type"] == "Bearer"


# -- codeflow serve: the options and config keys -------------------------------------


@contextmanager
def serve_process(*args: str) -> Iterator[str]:
    """``python codeflow.py serve ARGS`` on a free port until the block ends; its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, codeflow.__file__, "serve", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # noqa: S603
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            with contextlib.suppress(requests.ConnectionError):
                if get(base + "/.well-known/oauth-authorization-server").ok:
                    break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield base
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


def test_serve_options_enable_registration_and_metadata_documents() -> None:
    """`codeflow serve --registration open --client-id-metadata-documents`: discovery lists
    both (RFC 8414 §2, CIMD §5) and a client registers (RFC 7591 §3)."""
    with serve_process("--registration", "open", "--client-id-metadata-documents",
                       "--fetch-allow-network", "127.0.0.0/8") as base:  # fmt: skip
        meta = get(base + "/.well-known/openid-configuration").json()
        assert meta["registration_endpoint"] == base + "/register"
        assert meta["client_id_metadata_document_supported"] is True
        assert post(base + "/register", json=NATIVE).status_code == 201


def test_serve_config_keys(tmp_path: Path) -> None:
    """The same settings in the config file: registration = "token" with its
    registration_tokens (kept off the command line, which other users can see)."""
    config = tmp_path / "codeflow.toml"
    config.write_text('registration = "token"\nregistration_tokens = ["iat-secret"]\n'
                      "client_id_metadata_documents = true\n")  # fmt: skip
    with serve_process("--config", str(config)) as base:
        meta = get(base + "/.well-known/oauth-authorization-server").json()
        assert meta["client_id_metadata_document_supported"] is True
        assert post(base + "/register", json=NATIVE).status_code == 401
        headers = {"Authorization": "Bearer iat-secret"}
        assert post(base + "/register", json=NATIVE, headers=headers).status_code == 201


def test_serve_defaults_are_off() -> None:
    with serve_process() as base:
        meta = get(base + "/.well-known/oauth-authorization-server").json()
        assert "registration_endpoint" not in meta
        assert "client_id_metadata_document_supported" not in meta
        assert post(base + "/register", json=NATIVE).status_code == 403


@pytest.mark.parametrize(
    ("content", "message"),
    [('registration = "token"\n', "registration_tokens"),
     ('registration = "sometimes"\n', "registration must be one of"),
     ("registration_tokens = \"one\"\n", "registration_tokens must be a list"),
     ("client_id_metadata_documents = \"yes\"\n", "must be a bool"),
     ('fetch_allowed_networks = ["intranet"]\n', "fetch_allowed_networks")],
)  # fmt: skip
def test_serve_bad_settings_exit_with_a_clear_message(
    tmp_path: Path, content: str, message: str
) -> None:
    config = tmp_path / "codeflow.toml"
    config.write_text(content)
    result = subprocess.run(  # noqa: S603
        [sys.executable, codeflow.__file__, "serve", "--config", str(config), "--port", "0"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_client_list_marks_registered_clients(tmp_path: Path) -> None:
    """The operator sees which clients registered themselves (`codeflow client list`),
    and can remove one (`codeflow client remove`) like any other."""
    url = f"sqlite:///{tmp_path / 'idp.db'}"
    srv = codeflow.Server(issuer=ISSUER, storage=codeflow.open_storage(url),
                          registration="open")  # fmt: skip
    srv.add_client("operator-app", redirect_uris=["https://op.example/cb"])
    client_id = register(WSGIClient(srv.wsgi), NATIVE).json()["client_id"]

    def cli(*args: str) -> str:
        result = subprocess.run(  # noqa: S603
            [sys.executable, codeflow.__file__, *args, "--storage", url],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return result.stdout

    rows = {line.split("\t")[0]: line.split("\t") for line in cli("client", "list").splitlines()}
    assert rows[client_id][1:3] == ["public, registered itself", "Native Tool"]
    assert rows["operator-app"][1] == "public"
    cli("client", "remove", client_id)
    assert client_id not in cli("client", "list")
