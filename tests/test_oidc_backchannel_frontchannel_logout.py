"""OpenID Connect Back-Channel Logout 1.0 and Front-Channel Logout 1.0: ``sid`` in ID
tokens, Logout Tokens POSTed to each client's ``backchannel_logout_uri`` (received here by
a real HTTP server on 127.0.0.1 and verified with PyJWT against the published JWKS), and
the signed-out page's iframes with the Content-Security-Policy that allows exactly them.

The authorization server runs in-process through wsgiref.validate with the test clock;
the relying party's back-channel endpoint is a real socket.
"""

from __future__ import annotations

import queue
import socket
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import ISSUER, REDIRECT, USERNAME, Clock, query_of
from oidc_helpers import jwks_keys, sign_in_for_tokens, verify_jwt
from sdk_support import serving
from wsgi_client import WSGIClient

import codeflow

BACK_RP, BACK_SECRET = "back-rp", "back-secret"
FRONT_RP, FRONT_SECRET = "front-rp", "front-secret"
FRONT_LOGOUT = "https://front.example:8443/oidc/frontchannel?tenant=a"
LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"


@pytest.fixture
def receiver() -> Iterator[tuple[str, queue.Queue[dict[str, Any]]]]:
    """A relying party's back-channel logout endpoint on a real socket: it records each
    request (method, path, content type, form) and answers 200 (Back-Channel §2.8)."""
    received: queue.Queue[dict[str, Any]] = queue.Queue()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        size = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(size).decode()
        received.put({
            "method": environ["REQUEST_METHOD"],
            "path": environ["PATH_INFO"],
            "content_type": environ.get("CONTENT_TYPE", ""),
            "form": urllib.parse.parse_qs(body),
        })  # fmt: skip
        start_response("200 OK", [("Cache-Control", "no-store")])
        return [b""]

    with serving(app) as url:
        yield url, received


def make_server(clock: Clock, backchannel_uri: str) -> codeflow.Server:
    srv = codeflow.Server(issuer=ISSUER, clock=clock)
    srv.add_client(
        BACK_RP, client_secret=BACK_SECRET, redirect_uris=[REDIRECT],
        backchannel_logout_uri=backchannel_uri,
    )  # fmt: skip
    srv.add_client(
        FRONT_RP, client_secret=FRONT_SECRET, redirect_uris=[REDIRECT],
        frontchannel_logout_uri=FRONT_LOGOUT,
    )  # fmt: skip
    srv.add_user(USERNAME, "alice-password", claims={"name": "Alice"})
    return srv


def sign_in(browser: WSGIClient, client_id: str, secret: str) -> dict[str, Any]:
    return sign_in_for_tokens(browser, client_id, secret, password="alice-password",
                              scope="openid offline_access")  # fmt: skip


def claims_of(browser: WSGIClient, clock: Clock, token: str, aud: str) -> dict[str, Any]:
    return verify_jwt(token, jwks_keys(browser), audience=aud, now=clock())[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_id_tokens_carry_the_session_sid_also_after_a_refresh(clock, receiver):
    """Front-Channel Logout §3 / Back-Channel §2.4 sid: "Session ID - String identifier for
    a Session"; OIDC Core §12.2: a refreshed ID token is about the same sign-in, so it
    names the same session. Two apps signed in through one browser session share it."""
    srv = make_server(clock, receiver[0] + "/bc")
    browser = WSGIClient(srv.wsgi)
    tokens = sign_in(browser, BACK_RP, BACK_SECRET)
    sid = claims_of(browser, clock, tokens["id_token"], BACK_RP)["sid"]
    assert isinstance(sid, str) and len(sid) >= 16
    other = sign_in(browser, FRONT_RP, FRONT_SECRET)
    assert claims_of(browser, clock, other["id_token"], FRONT_RP)["sid"] == sid
    r = browser.post("/token", data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
        "client_id": BACK_RP, "client_secret": BACK_SECRET,
    })  # fmt: skip
    assert r.status == 200, r.text
    assert claims_of(browser, clock, r.json()["id_token"], BACK_RP)["sid"] == sid


def test_logout_posts_a_logout_token_to_the_backchannel_uri(clock, receiver):
    """Back-Channel Logout §2.5: "The OP uses an HTTP POST to the registered back-channel
    logout URI to send the Logout Token to each RP"; §2.4: iss, aud, iat, exp, jti and
    events REQUIRED, with "http://schemas.openid.net/event/backchannel-logout"; sub and/or
    sid; "A nonce Claim MUST NOT be present"; explicitly typed "logout+jwt" (§2.4, RFC
    8725 §3.11)."""
    url, received = receiver
    srv = make_server(clock, url + "/bc")
    browser = WSGIClient(srv.wsgi)
    tokens = sign_in(browser, BACK_RP, BACK_SECRET)
    id_claims = claims_of(browser, clock, tokens["id_token"], BACK_RP)
    r = browser.get("/logout", params={"id_token_hint": tokens["id_token"]})
    assert r.status == 200, r.text
    request = received.get(timeout=10)
    assert request["method"] == "POST" and request["path"] == "/bc"
    assert request["content_type"].startswith("application/x-www-form-urlencoded")
    [logout_token] = request["form"]["logout_token"]
    header, claims = verify_jwt(logout_token, jwks_keys(browser), audience=BACK_RP,
                                now=clock())  # fmt: skip
    assert header["typ"] == "logout+jwt"
    assert claims["iss"] == ISSUER
    assert claims["events"] == {LOGOUT_EVENT: {}}
    assert claims["sid"] == id_claims["sid"]
    assert claims["sub"] == id_claims["sub"]
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16
    assert "nonce" not in claims
    assert received.empty()


def test_a_receiver_that_is_down_does_not_hold_up_the_logout(clock, caplog, monkeypatch):
    """Back-Channel Logout §2.8: the OP sends the requests "in parallel" and a failure is
    the RP's to handle; the user's logout is not held up by it: the signed-out page comes
    at once, and the failure is logged (audit event logout.backchannel_failed)."""
    monkeypatch.setattr(codeflow, "BACKCHANNEL_RETRY_DELAYS", ())  # no retries after the test
    srv = make_server(clock, f"http://127.0.0.1:{free_port()}/bc")  # nothing listens
    browser = WSGIClient(srv.wsgi)
    tokens = sign_in(browser, BACK_RP, BACK_SECRET)
    caplog.set_level("INFO", logger="codeflow.audit")
    started = time.monotonic()
    r = browser.get("/logout", params={"id_token_hint": tokens["id_token"]})
    assert time.monotonic() - started < 2
    assert r.status == 200, r.text
    assert "signed out" in r.text.lower()
    deadline = time.monotonic() + 10
    while not any(getattr(rec, "event", "") == "logout.backchannel_failed"
                  for rec in caplog.records):  # fmt: skip
        assert time.monotonic() < deadline, caplog.text
        time.sleep(0.05)


def test_a_delivery_that_fails_for_a_while_is_retried(clock, monkeypatch):
    """Back-Channel Logout §2.8: an RP that cannot process the token at once (a 5xx, or a
    refused connection) is not a final answer; the OP tries again a few times, with the
    same Logout Token, and then gives up (audit: logout.backchannel_failed per attempt,
    logout.backchannel_sent once it arrived). A 400 ("the logout request was invalid or
    failed") is final: the same token would fail again."""
    monkeypatch.setattr(codeflow, "BACKCHANNEL_RETRY_DELAYS", (0.05, 0.05, 0.05))
    answers = iter(["503 Service Unavailable", "502 Bad Gateway", "200 OK"])
    received: queue.Queue[str] = queue.Queue()

    def flaky(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        size = int(environ.get("CONTENT_LENGTH") or 0)
        received.put(environ["wsgi.input"].read(size).decode())
        start_response(next(answers), [("Cache-Control", "no-store")])
        return [b""]

    with serving(flaky) as url:
        srv = make_server(clock, url + "/bc")
        browser = WSGIClient(srv.wsgi)
        tokens = sign_in(browser, BACK_RP, BACK_SECRET)
        r = browser.get("/logout", params={"id_token_hint": tokens["id_token"]})
        assert r.status == 200, r.text
        bodies = [received.get(timeout=10) for _ in range(3)]
    assert len(set(bodies)) == 1  # the same Logout Token each time
    assert received.empty()


def test_a_logout_token_the_rp_refuses_is_not_sent_again(clock):
    """Back-Channel Logout §2.8: "If the logout request was invalid or failed, the RP
    MUST respond with HTTP 400"; sending the same token again cannot succeed."""
    received: queue.Queue[str] = queue.Queue()

    def refusing(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        received.put(environ["PATH_INFO"])
        start_response("400 Bad Request", [("Cache-Control", "no-store")])
        return [b""]

    with serving(refusing) as url:
        srv = make_server(clock, url + "/bc")
        browser = WSGIClient(srv.wsgi)
        tokens = sign_in(browser, BACK_RP, BACK_SECRET)
        browser.get("/logout", params={"id_token_hint": tokens["id_token"]})
        assert received.get(timeout=10) == "/bc"
        time.sleep(1.5)  # longer than the first retry delay
    assert received.empty()


def test_signed_out_page_frames_the_frontchannel_uri_with_iss_and_sid(clock, receiver):
    """Front-Channel Logout §2: the OP renders "<iframe src="frontchannel_logout_uri">" in
    the page it shows on logout; §3: with iss and sid "as query parameters" (the URI's own
    query kept, RFC 6749 §3.1.2). The page's CSP allows frames from exactly that origin,
    and no script: the page works without JavaScript."""
    srv = make_server(clock, receiver[0] + "/bc")
    browser = WSGIClient(srv.wsgi)
    tokens = sign_in(browser, FRONT_RP, FRONT_SECRET)
    sid = claims_of(browser, clock, tokens["id_token"], FRONT_RP)["sid"]
    r = browser.get("/logout", params={"id_token_hint": tokens["id_token"]})
    assert r.status == 200, r.text
    frames = [part.split('"', 1)[0] for part in r.text.split('<iframe src="')[1:]]
    assert len(frames) == 1, r.text
    src = frames[0].replace("&amp;", "&")
    assert src.split("?")[0] == FRONT_LOGOUT.split("?")[0]
    assert query_of(src) == {"tenant": "a", "iss": ISSUER, "sid": sid}
    csp = r.headers["content-security-policy"]
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert directives["frame-src"] == ["https://front.example:8443"]
    assert directives["default-src"] == ["'none'"]
    assert "script-src" not in directives and "<script" not in r.text
    # Only the signed-out page frames anything.
    assert "frame-src" not in browser.get("/").headers["content-security-policy"]


def test_discovery_says_both_logouts_are_supported(clock, receiver):
    """Back-Channel Logout §2.1 and Front-Channel Logout §3: backchannel_logout_supported,
    backchannel_logout_session_supported, frontchannel_logout_supported and
    frontchannel_logout_session_supported in the OP's metadata."""
    browser = WSGIClient(make_server(clock, receiver[0] + "/bc").wsgi)
    doc = browser.get("/.well-known/openid-configuration").json()
    for name in ("backchannel_logout_supported", "backchannel_logout_session_supported",
                 "frontchannel_logout_supported", "frontchannel_logout_session_supported"):
        assert doc[name] is True, name


@pytest.mark.parametrize("uri", [
    "http://rp.example/logout",  # http only on loopback
    "https://rp.example/logout#frag",
    "/relative/logout",
    "ftp://rp.example/logout",
])  # fmt: skip
@pytest.mark.parametrize("setting", ["backchannel_logout_uri", "frontchannel_logout_uri"])
def test_logout_uris_must_be_absolute_https_or_loopback(clock, setting, uri):
    """Back-Channel Logout §2.2: the RP's logout URI "MUST be an absolute URI" and "MUST
    NOT include a fragment component"; https, with http only for loopback (RFC 8252 §8.3
    reasoning: nobody else can listen there)."""
    srv = codeflow.Server(issuer=ISSUER, clock=clock)
    with pytest.raises(ValueError, match=setting):
        srv.add_client("rp", client_secret="s", redirect_uris=[REDIRECT], **{setting: uri})
    srv.add_client("rp", client_secret="s", redirect_uris=[REDIRECT],
                   **{setting: "http://127.0.0.1:9/logout"})  # fmt: skip
    with pytest.raises(ValueError, match=setting):
        srv.update_client("rp", **{setting: uri})
