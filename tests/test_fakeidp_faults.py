"""The fault plan (issue 6 "the next N calls of an endpoint answer a chosen OAuth error,
an HTTP 500, a delay, malformed JSON, or a token that is wrong in one chosen way"), set
from Python and over HTTP in test mode, checked against the SDK's client on the wire."""

from __future__ import annotations

import logging
import time

import jwt
import pytest
import requests
from codeflow_sdk import AuthorizationError, Client, IDTokenError, TokenError
from test_cli import TIMEOUT, serving

import codeflow

REDIRECT = "http://127.0.0.1:9/callback"


@pytest.fixture
def idp(codeflow_live):
    codeflow_live.auto_approve = "alice"
    codeflow_live.add_client("app", client_secret="app-secret", redirect_uris=[REDIRECT])
    return codeflow_live


@pytest.fixture
def client(idp) -> Client:
    return Client(idp.url, "app", "app-secret", redirect_uri=REDIRECT)


def login(client: Client, scope: str = "openid"):
    """The whole code flow: auto-approved authorize, then the token request."""
    url, record = client.start_login(scope)
    r = requests.get(url, allow_redirects=False, timeout=TIMEOUT)
    return client.finish_login(r.headers["Location"], record)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("bad_signature", "signature"),
        ("wrong_iss", "iss"),
        ("wrong_aud", "aud"),
        ("expired", "expired"),
        ("unknown_kid", "key"),
    ],
)
def test_a_wrong_id_token_is_refused_by_a_correct_client(idp, client, kind, message) -> None:
    """OIDC Core §3.1.3.7: each wrong ID token fails exactly the check it is made for,
    and the next login, past the planned fault, succeeds."""
    idp.faults.add(endpoint="token", kind=kind)
    with pytest.raises(IDTokenError, match=f"(?i){message}"):
        login(client)
    assert login(client).sub == "alice"


def test_each_wrong_id_token_is_otherwise_valid(idp) -> None:
    """Only the chosen property is wrong: the others still verify (RFC 7519 §7.2)."""
    idp.add_client("raw", client_secret="raw-secret", redirect_uris=[REDIRECT])
    key = codeflow.signing_key(idp.server, "RS256")
    public = codeflow.private_key(key).public_key()
    good = idp.issue_tokens("alice", "raw", "openid")["id_token"]
    checks = {"iss": idp.issuer, "aud": "raw"}
    for kind, broken in [("wrong_iss", "iss"), ("wrong_aud", "aud")]:
        token = codeflow.alter_id_token(idp.server, good, kind)
        claims = jwt.decode(token, public, algorithms=["RS256"], options={"verify_aud": False})
        assert claims[broken] != checks[broken]
        assert all(claims[k] == v for k, v in checks.items() if k != broken)
    expired = codeflow.alter_id_token(idp.server, good, "expired")
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(expired, public, algorithms=["RS256"], audience="raw")
    unknown = codeflow.alter_id_token(idp.server, good, "unknown_kid")
    assert jwt.get_unverified_header(unknown)["kid"] != key.kid
    jwt.decode(unknown, public, algorithms=["RS256"], audience="raw")  # only the kid is wrong
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(codeflow.alter_id_token(idp.server, good, "bad_signature"), public,
                   algorithms=["RS256"], audience="raw")  # fmt: skip


def test_an_oauth_error_at_the_token_endpoint(idp, client) -> None:
    """RFC 6749 §5.2: the planned error code and status, as JSON; twice, then normal."""
    idp.faults.add(endpoint="token", kind="oauth_error", error="invalid_grant", times=2)
    for _ in range(2):
        with pytest.raises(TokenError) as caught:
            login(client)
        assert caught.value.error == "invalid_grant" and caught.value.status == 400
    assert login(client).sub == "alice"
    assert idp.faults.pending == []


def test_an_oauth_error_at_the_authorization_endpoint_redirects(idp, client) -> None:
    """RFC 6749 §4.1.2.1: at authorize, the error goes back to the client's redirect_uri
    with its state and (RFC 9207) iss."""
    idp.faults.add(endpoint="authorize", kind="oauth_error", error="temporarily_unavailable")
    url, record = client.start_login("openid")
    r = requests.get(url, allow_redirects=False, timeout=TIMEOUT)
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT)
    with pytest.raises(AuthorizationError) as caught:
        client.finish_login(r.headers["Location"], record)
    assert caught.value.error == "temporarily_unavailable"


def test_an_http_500(idp, client) -> None:
    """An HTTP 500 from the token endpoint is a TokenError, not a crash of the client."""
    idp.faults.add(endpoint="token", kind="http_500")
    with pytest.raises(TokenError) as caught:
        login(client)
    assert caught.value.status == 500


def test_malformed_json(idp, client) -> None:
    """RFC 6749 §5.1: a token response that is not JSON is refused."""
    idp.faults.add(endpoint="token", kind="malformed_json")
    with pytest.raises(TokenError, match="not JSON"):
        login(client)


def test_a_delay(idp) -> None:
    """A delayed answer comes late, then is the real one (a client's timeout under test)."""
    idp.faults.add(endpoint="jwks", kind="delay", delay=0.2)
    started = time.monotonic()
    r = requests.get(idp.url + "/jwks", timeout=TIMEOUT)
    assert time.monotonic() - started >= 0.2
    assert r.status_code == 200 and r.json()["keys"]


def test_userinfo_error_carries_the_bearer_challenge(idp) -> None:
    """RFC 6750 §3: an injected userinfo error has WWW-Authenticate: Bearer."""
    idp.faults.add(endpoint="userinfo", kind="oauth_error", error="invalid_token")
    r = requests.get(idp.url + "/userinfo", timeout=TIMEOUT)
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]


def test_the_plan_refuses_what_it_cannot_do(codeflow_server) -> None:
    """A fault plan entry is checked when it is made, not when it would apply."""
    with pytest.raises(ValueError, match="endpoint"):
        codeflow_server.faults.add(endpoint="nowhere", kind="http_500")
    with pytest.raises(ValueError, match="kind"):
        codeflow_server.faults.add(endpoint="token", kind="explode")
    with pytest.raises(ValueError, match="token endpoint"):
        codeflow_server.faults.add(endpoint="jwks", kind="expired")
    with pytest.raises(ValueError, match="times"):
        codeflow_server.faults.add(endpoint="token", kind="http_500", times=0)
    with pytest.raises(ValueError, match="delay"):
        codeflow_server.faults.add(endpoint="token", kind="delay", delay=10**9)
    assert codeflow_server.faults.pending == []


def test_faults_over_http_in_test_mode(idp, client) -> None:
    """Issue 6 "set from Python and over HTTP": POST a fault as JSON, list, delete."""
    control = idp.url + "/_codeflow/faults"
    r = requests.post(control, json={"endpoint": "token", "kind": "http_500", "times": 3},
                      timeout=TIMEOUT)  # fmt: skip
    assert r.status_code == 201 and r.json()["times"] == 3
    assert [f["kind"] for f in requests.get(control, timeout=TIMEOUT).json()] == ["http_500"]
    with pytest.raises(TokenError):
        login(client)
    assert requests.get(control, timeout=TIMEOUT).json()[0]["times"] == 2
    assert requests.delete(control, timeout=TIMEOUT).json() == []
    assert login(client).sub == "alice"
    bad = requests.post(control, json={"endpoint": "token", "kind": "nope"}, timeout=TIMEOUT)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_request"
    bad = requests.post(control, json={"endpoint": "token", "surprise": 1}, timeout=TIMEOUT)
    assert bad.status_code == 400


def test_no_control_surface_without_test_mode(codeflow_factory) -> None:
    """DESIGN "Test conveniences ... are explicit opt-ins": without test mode the control
    endpoint does not exist, though the Python fault plan still works."""
    live = codeflow_factory(live=True, test_mode=False)
    r = requests.post(live.url + "/_codeflow/faults",
                      json={"endpoint": "jwks", "kind": "http_500"}, timeout=TIMEOUT)  # fmt: skip
    assert r.status_code == 404
    assert requests.get(live.url + "/_codeflow/transcript", timeout=TIMEOUT).status_code == 404
    live.faults.add(endpoint="jwks", kind="http_500")
    assert requests.get(live.url + "/jwks", timeout=TIMEOUT).status_code == 500


def test_test_mode_announces_itself(caplog: pytest.LogCaptureFixture) -> None:
    """DESIGN "Test conveniences ... announce themselves": a warning when made."""
    with caplog.at_level(logging.WARNING, logger="codeflow"):
        codeflow.Server(test_mode=True)
    assert any("TEST MODE" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="codeflow"):
        codeflow.Server()
    assert not caplog.records


def test_serve_test_mode_prints_a_warning_and_serves_the_control_surface() -> None:
    """CLI ``codeflow serve --test-mode``: prints a WARNING and accepts faults over HTTP."""
    with serving("--test-mode") as server:
        control = server.base + "/_codeflow/faults"
        r = requests.post(control, json={"endpoint": "jwks", "kind": "http_500"}, timeout=TIMEOUT)
        assert r.status_code == 201
        assert requests.get(server.base + "/jwks", timeout=TIMEOUT).status_code == 500
        assert requests.get(server.base + "/jwks", timeout=TIMEOUT).status_code == 200
        assert server.interrupt() == 0, server.stderr
    assert "WARNING: --test-mode" in server.stdout


def test_serve_help_names_the_fake_idp_options() -> None:
    """CLI: ``codeflow serve --help`` lists --test-mode and --internal-url."""
    from test_cli import run

    result = run("serve", "--help")
    assert "--test-mode" in result.stdout and "--internal-url" in result.stdout


def test_an_oauth_error_on_a_page_is_a_page(idp) -> None:
    """Browser-facing endpoints (login, consent, logout) answer an injected error as HTML."""
    idp.faults.add(endpoint="logout", kind="oauth_error", error="temporarily_unavailable")
    r = requests.get(idp.url + "/logout", timeout=TIMEOUT)
    assert r.status_code == 400 and r.headers["Content-Type"].startswith("text/html")
    assert "temporarily_unavailable" in r.text
