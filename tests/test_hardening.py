"""Findings of a security review, each pinned by a test: sessions that outlive their user,
introspection that shows too much, forms that travel, headers, and a 5xx."""

from __future__ import annotations

import dataclasses

import pyotp
from conftest import (
    CONFIDENTIAL,
    ISSUER,
    PASSWORD,
    PUBLIC,
    REDIRECT,
    SECRET,
    USERNAME,
    Clock,
    form_fields,
    make_server,
    new_flow,
    query_of,
)
from wsgi_client import WSGIClient, basic

import codeflow


def signed_in_at_consent(server: codeflow.Server) -> tuple[WSGIClient, dict[str, str]]:
    """A browser signed in as alice, looking at the consent page: its form fields."""
    browser = WSGIClient(server.wsgi)
    page = browser.get("/authorize", params=new_flow().params)
    r = browser.post(
        "/login", {**form_fields(page.text), "username": USERNAME, "password": PASSWORD}
    )
    assert r.status == 303
    consent = browser.get(r.location)
    assert 'action="consent"' in consent.text
    return browser, form_fields(consent.text)


def test_a_removed_user_cannot_approve_with_an_old_session(server: codeflow.Server) -> None:
    """OIDC Core §2: an ID token's sub is an End-User of the OP. A session whose user was
    removed since signing in is no session: consent asks for a login instead of a code."""
    browser, fields = signed_in_at_consent(server)
    assert server.storage.remove_user(USERNAME)
    r = browser.post("/consent", {**fields, "decision": "approve"})
    assert r.status == 200
    assert 'action="login"' in r.text
    assert r.location is None


def test_a_password_change_ends_existing_sessions(server: codeflow.Server) -> None:
    """RFC 9700 §2.4 spirit: after a password reset, a session opened with the old password
    (perhaps by whoever knew it) no longer counts."""
    browser, fields = signed_in_at_consent(server)
    user = server.storage.get_user(USERNAME)
    assert user is not None
    new_hash = codeflow.hash_password("a new password")
    server.storage.add_user(dataclasses.replace(user, password_hash=new_hash))
    r = browser.post("/consent", {**fields, "decision": "approve"})
    assert 'action="login"' in r.text


def test_a_code_of_a_removed_user_is_refused(clock) -> None:
    """RFC 6749 §4.1.3: the server must "ensure that the authorization code was issued to"
    a grant still valid; a code whose user was removed since gets invalid_grant."""
    srv = make_server(clock, auto_approve=USERNAME)
    wc = WSGIClient(srv.wsgi)
    flow = new_flow()
    code = query_of(wc.get("/authorize", params=flow.params).location)["code"]
    srv.storage.remove_user(USERNAME)
    r = wc.post(
        "/token",
        {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
         "code_verifier": flow.verifier},
        headers=basic(CONFIDENTIAL, SECRET),
    )  # fmt: skip
    assert r.status == 400
    assert r.json()["error"] == "invalid_grant"


def test_introspection_hides_another_clients_refresh_token(server: codeflow.Server) -> None:
    """RFC 7662 §2.2: if "the protected resource is not allowed to introspect this
    particular token", the answer is {"active": false}: only the client that holds a
    refresh token may introspect it."""
    theirs = server.issue_tokens(USERNAME, PUBLIC, "openid offline_access")
    other = server.add_client("rs", client_secret="rs-secret", redirect_uris=[REDIRECT])
    wc = WSGIClient(server.wsgi)
    auth = basic(other.client_id, "rs-secret")
    r = wc.post("/introspect", {"token": theirs["refresh_token"]}, headers=auth)
    assert r.json() == {"active": False}
    # An access token is for resource servers to check: that one stays visible.
    r = wc.post("/introspect", {"token": theirs["access_token"]}, headers=auth)
    assert r.json()["active"] is True


def test_tokens_of_a_removed_user_or_client_are_inactive(server: codeflow.Server) -> None:
    """RFC 7662 §2.2: "active" says whether the token is "currently active"; a token whose
    user or client no longer exists is not."""
    wc = WSGIClient(server.wsgi)
    auth = basic(CONFIDENTIAL, SECRET)
    mine = server.issue_tokens(USERNAME, CONFIDENTIAL, "api:read")
    public = server.issue_tokens(USERNAME, PUBLIC, "profile")
    server.storage.remove_client(PUBLIC)
    r = wc.post("/introspect", {"token": public["access_token"]}, headers=auth)
    assert r.json() == {"active": False}
    server.storage.remove_user(USERNAME)
    r = wc.post("/introspect", {"token": mine["access_token"]}, headers=auth)
    assert r.json() == {"active": False}


def test_a_redirect_uri_with_an_unparsable_host_is_a_400_page(server: codeflow.Server) -> None:
    """DESIGN "nothing a client sends makes a 5xx"; RFC 6749 §4.1.2.1: an invalid redirect
    URI gets an error page and no redirect."""
    wc = WSGIClient(server.wsgi)
    for uri in ("http://[", "http://[::1/cb", "http://[zz]/cb"):
        r = wc.get("/authorize", params=new_flow(PUBLIC, redirect_uri=uri).params)
        assert r.status == 400, (uri, r.status)
        assert r.location is None


def test_the_totp_step_cannot_be_finished_in_another_browser(clock) -> None:
    """RFC 6238 §5.2 spirit: the step after a right password belongs to the browser that
    typed it; its pending form carried elsewhere is refused."""
    srv = make_server(clock)
    secret = pyotp.random_base32()
    srv.add_user("bob", "bob-password", totp_secret=secret)
    first = WSGIClient(srv.wsgi)
    page = first.get("/authorize", params=new_flow().params)
    otp_page = first.post(
        "/login", {**form_fields(page.text), "username": "bob", "password": "bob-password"}
    )
    assert 'name="otp"' in otp_page.text
    second = WSGIClient(srv.wsgi)
    second.get("/authorize", params=new_flow().params)  # its own CSRF cookie
    fields = form_fields(otp_page.text)
    fields["csrf_token"] = form_fields(second.get(
        "/authorize", params=new_flow().params).text)["csrf_token"]  # fmt: skip
    code = pyotp.TOTP(secret).at(int(clock()))
    r = second.post("/login", {**fields, "otp": code})
    assert r.status == 400
    assert r.location is None


def test_a_logout_form_cannot_stand_in_for_an_authorization_request(
    server: codeflow.Server,
) -> None:
    """Distinct salts per purpose (itsdangerous): the signed blob of the logout
    confirmation form is refused where a login form's blob is expected."""
    browser, fields = signed_in_at_consent(server)
    logout = browser.get("/logout")
    assert 'action="logout"' in logout.text
    blob = form_fields(logout.text)["request"]
    r = browser.post("/consent", {**fields, "request": blob, "decision": "approve"})
    assert r.status == 400
    assert r.location is None


def test_https_issuers_send_hsts() -> None:
    """RFC 6797 §7.1: an HTTPS host sends Strict-Transport-Security; an http one (tests,
    loopback) does not."""
    https = codeflow.Server(issuer="https://login.example.com")
    r = WSGIClient(https.wsgi, host="login.example.com", scheme="https").get(
        "/.well-known/openid-configuration"
    )
    assert r.headers["strict-transport-security"].startswith("max-age=")
    r = WSGIClient(codeflow.Server(issuer=ISSUER).wsgi).get("/.well-known/openid-configuration")
    assert "strict-transport-security" not in r.headers


def test_the_stdlib_server_times_out_a_stalled_request() -> None:
    """A client that stops sending mid-request must not hold a thread for ever: the
    fallback server's handler has a socket timeout."""
    assert 0 < codeflow.QuietHandler.timeout <= 60


def test_wrong_client_secrets_are_rate_limited(server: codeflow.Server, clock: Clock) -> None:
    """RFC 6749 §10.10 spirit: each unverified secret costs a memory-hard hash, so after
    SECRET_CHECK_BURST of them from one address the next attempt there waits (429 with
    Retry-After) without another hash; the right secret from elsewhere still works, and
    there too after the wait: wrong secrets never lock the client out (issue 12)."""
    attacker = WSGIClient(server.wsgi, remote_addr="192.0.2.9")
    data = {"grant_type": "client_credentials"}
    for _ in range(codeflow.SECRET_CHECK_BURST):
        r = attacker.post("/token", data, headers=basic(CONFIDENTIAL, "wrong"))
        assert r.status == 401
    r = attacker.post("/token", data, headers=basic(CONFIDENTIAL, SECRET))
    assert r.status == 429
    assert "Too many" in r.json()["error_description"]
    elsewhere = WSGIClient(server.wsgi, remote_addr="198.51.100.7")
    assert elsewhere.post("/token", data, headers=basic(CONFIDENTIAL, SECRET)).status == 200
    clock.advance(int(r.headers["retry-after"]))
    assert attacker.post("/token", data, headers=basic(CONFIDENTIAL, SECRET)).status == 200
