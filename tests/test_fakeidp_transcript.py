"""The transcript (issue 6 "every request and response the server handled, secrets
redacted, available to assertions and as a JSON file") and the per-client relaxations
it names (issue 6 "explicit per-client relaxations for legacy clients, each named")."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from conftest import (
    CONFIDENTIAL,
    PASSWORD,
    REDIRECT,
    SECRET,
    USERNAME,
    form_fields,
    make_server,
    new_flow,
    query_of,
)
from wsgi_client import WSGIClient

import codeflow

BASIC = {
    "Authorization": "Basic " + base64.b64encode(f"{CONFIDENTIAL}:{SECRET}".encode()).decode()
}
LEGACY, LEGACY_SECRET = "legacy-app", "legacy-secret"


def full_flow(server: codeflow.Server) -> tuple[WSGIClient, dict]:
    """Authorize, log in, consent, redeem: a browser and a client on the wire."""
    browser = WSGIClient(server.wsgi)
    flow = new_flow()
    r = browser.get("/authorize", params=flow.params)
    r = browser.post("/login", data={**form_fields(r.text), "username": USERNAME,
                                     "password": PASSWORD})  # fmt: skip
    r = browser.get(r.location)
    r = browser.post("/consent", data={**form_fields(r.text), "decision": "approve"})
    code = query_of(r.location)["code"]
    r = browser.post("/token", data={"grant_type": "authorization_code", "code": code,
                                     "redirect_uri": REDIRECT, "code_verifier": flow.verifier},
                     headers=BASIC)  # fmt: skip
    assert r.status == 200, r.text
    return browser, r.json()


@pytest.fixture
def recorded(clock) -> codeflow.Server:
    return make_server(clock, transcript=True)


def test_every_exchange_is_recorded_in_order(recorded: codeflow.Server) -> None:
    """Each request the server handled, with its method, path, status and body."""
    full_flow(recorded)
    assert [(e.method, e.path, e.status) for e in recorded.transcript] == [
        ("GET", "/authorize", 200), ("POST", "/login", 303), ("GET", "/authorize", 200),
        ("POST", "/consent", 303), ("POST", "/token", 200),
    ]  # fmt: skip
    token = recorded.transcript.find(path="/token")[0]
    assert token.params["grant_type"] == "authorization_code"
    assert token.body["token_type"] == "Bearer" and token.body["scope"]
    assert token.headers["Cache-Control"] == "no-store"


def test_secrets_are_redacted(recorded: codeflow.Server) -> None:
    """Passwords, codes, verifiers, tokens, the Authorization header and cookies never
    reach the transcript."""
    browser, tokens = full_flow(recorded)
    dumped = json.dumps(recorded.transcript.to_json())
    secrets = [PASSWORD, SECRET, tokens["access_token"], tokens["id_token"],
               tokens["refresh_token"], *browser.cookies.values()]  # fmt: skip
    for secret in secrets:
        assert secret not in dumped
    login = recorded.transcript.find(path="/login")[0]
    assert login.params["password"] == "[redacted]" and login.params["username"] == USERNAME
    assert login.params["csrf_token"] == "[redacted]"
    assert login.headers["Set-Cookie"] == "[redacted]"
    consent = recorded.transcript.find(path="/consent")[0]
    assert "code=%5Bredacted%5D" in consent.headers["Location"]
    token = recorded.transcript.find(path="/token")[0]
    assert token.request_headers["Authorization"] == "[redacted]"
    assert token.params["code"] == token.params["code_verifier"] == "[redacted]"
    assert token.body["access_token"] == token.body["id_token"] == "[redacted]"


def test_dump_writes_json(recorded: codeflow.Server, tmp_path: Path) -> None:
    """transcript.dump(path) writes the exchanges as a JSON array."""
    full_flow(recorded)
    path = tmp_path / "transcript.json"
    recorded.transcript.dump(str(path))
    exchanges = json.loads(path.read_text())
    assert [e["path"] for e in exchanges][-1] == "/token"
    assert {"method", "path", "params", "status", "headers", "body"} <= exchanges[0].keys()


def test_nothing_is_recorded_unless_asked(server: codeflow.Server) -> None:
    """Production pays nothing: without transcript=True or test_mode nothing is kept."""
    full_flow(server)
    assert not server.transcript.enabled and len(server.transcript) == 0


def test_an_injected_fault_is_named(recorded: codeflow.Server) -> None:
    """The transcript says which answers the fault plan made."""
    recorded.faults.add(endpoint="jwks", kind="http_500")
    WSGIClient(recorded.wsgi).get("/jwks")
    assert recorded.transcript[-1].fault == "http_500" and recorded.transcript[-1].status == 500


def test_the_transcript_over_http_in_test_mode(codeflow_live) -> None:
    """GET /_codeflow/transcript (test mode only) for suites not written in Python."""
    import requests

    requests.get(codeflow_live.url + "/jwks", timeout=10)
    body = requests.get(codeflow_live.url + "/_codeflow/transcript", timeout=10).json()
    assert [e["path"] for e in body] == ["/jwks"]


def test_strict_by_default_pkce_is_required(recorded: codeflow.Server) -> None:
    """RFC 9700 §2.1.1: without a relaxation, a confidential client must send PKCE."""
    flow = new_flow(code_challenge=None, code_challenge_method=None)
    r = WSGIClient(recorded.wsgi).get("/authorize", params=flow.params)
    assert query_of(r.location)["error"] == "invalid_request"
    assert recorded.transcript.relaxations == []


def test_a_legacy_client_without_pkce_is_named_in_the_transcript(
    recorded: codeflow.Server,
) -> None:
    """RFC 9700 §2.1.1 relaxed for one registered client (require_pkce=False): the flow
    works, and the transcript names the relaxation at authorize and at the token endpoint."""
    recorded.add_client(LEGACY, client_secret=LEGACY_SECRET, redirect_uris=[REDIRECT],
                        require_pkce=False)  # fmt: skip
    recorded.auto_approve = USERNAME
    client = WSGIClient(recorded.wsgi)
    flow = new_flow(LEGACY, code_challenge=None, code_challenge_method=None)
    code = query_of(client.get("/authorize", params=flow.params).location)["code"]
    r = client.post("/token", data={"grant_type": "authorization_code", "code": code,
                                    "redirect_uri": REDIRECT, "client_id": LEGACY,
                                    "client_secret": LEGACY_SECRET})  # fmt: skip
    assert r.status == 200, r.text
    authorize, token = recorded.transcript.find(path="/authorize")[0], recorded.transcript[-1]
    assert authorize.relaxations == [
        "client 'legacy-app': require_pkce=False: an authorization request without PKCE"
    ]
    assert token.relaxations == [
        "client 'legacy-app': require_pkce=False: a code redeemed without code_verifier"
    ]
    assert len(recorded.transcript.relaxations) == 2
