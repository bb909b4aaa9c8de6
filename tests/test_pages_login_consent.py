"""The login and consent pages: CSRF, failed-login limits, cookies, anti-framing, and the
answers they send back to the client (RFC 6749 §4.1.1, §4.1.2, §4.1.2.1, §10.12,
RFC 9700 §4.12, §4.16, RFC 6265).

In-process through the WSGI app (wsgiref.validate), plus one flow on a real socket.
"""

from __future__ import annotations

import html
import re

import pytest
import requests
from conftest import (
    CONFIDENTIAL,
    ISSUER,
    PASSWORD,
    PUBLIC,
    REDIRECT,
    USERNAME,
    Clock,
    form_fields,
    make_server,
    new_flow,
    query_of,
)
from wsgi_client import Response, WSGIClient

import codeflow

SESSION_COOKIE = "codeflow_session"
CSRF_COOKIE = "codeflow_csrf"


@pytest.fixture
def browser(server: codeflow.Server) -> WSGIClient:
    return WSGIClient(server.wsgi)


def login_page(browser: WSGIClient, **overrides: str) -> Response:
    r = browser.get("/authorize", params=new_flow(**overrides).params)
    assert r.status == 200, r.text
    assert 'action="login"' in r.text
    return r


def submit_login(
    browser: WSGIClient, page: Response, username: str = USERNAME, password: str = PASSWORD
) -> Response:
    data = {**form_fields(page.text), "username": username, "password": password}
    return browser.post("/login", data=data)


def consent_page(browser: WSGIClient, **overrides: str) -> Response:
    """Log in (if needed) and follow the redirect back to the authorization endpoint."""
    r = browser.get("/authorize", params=new_flow(**overrides).params)
    if 'action="login"' in r.text:
        r = submit_login(browser, r)
        assert r.status == 303, r.text
        r = browser.get(r.location)
    assert r.status == 200, r.text
    assert 'action="consent"' in r.text
    return r


def decide(browser: WSGIClient, page: Response, decision: str | None) -> Response:
    data = form_fields(page.text)
    if decision is not None:
        data["decision"] = decision
    return browser.post("/consent", data=data)


def cookie_attributes(set_cookie: str) -> dict[str, str]:
    """The attributes of one Set-Cookie header, names lower-cased (RFC 6265 §5.2)."""
    attrs = {}
    for part in set_cookie.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        attrs[name.lower()] = value
    return attrs


def set_cookie(r: Response, name: str) -> str | None:
    found = [c for c in r.cookies_set if c.startswith(name + "=")]
    assert len(found) <= 1
    return found[0] if found else None


def assert_error_page(r: Response) -> None:
    assert r.status == 400, r.text
    assert "location" not in r.headers
    assert r.headers["content-type"].startswith("text/html")
    assert set_cookie(r, SESSION_COOKIE) is None


###############################################################################
# The login page ###############################################################
###############################################################################


def test_login_page_names_the_client_and_has_the_form_fields(browser):
    """RFC 6749 §4.1.1: "The authorization server validates the request ... If the request
    is valid, the authorization server authenticates the resource owner"; the page says
    which client asks, and its fields are the stable names username and password with a
    hidden CSRF token (RFC 6749 §10.12) and the signed request.
    """
    r = login_page(browser)
    assert "Confidential App" in r.text
    assert re.search(r'<input[^>]* name="username"', r.text)
    assert re.search(r'<input[^>]* name="password"[^>]* type="password"', r.text)
    assert set(form_fields(r.text)) == {"csrf_token", "request"}
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert CSRF_COOKIE in browser.cookies


def test_login_page_escapes_what_the_request_carries(browser):
    """RFC 6749 §10.14: "The authorization server and client MUST sanitize (and validate
    when possible) any value received"; login_hint is shown in the username field.
    """
    r = login_page(browser, login_hint='"><script>alert(1)</script>')
    assert "<script>alert(1)" not in r.text
    assert "&quot;&gt;&lt;script&gt;" in r.text


def test_right_password_signs_in_with_a_303_back_to_the_authorization_endpoint(browser):
    """RFC 6749 §4.1.1: after authenticating the resource owner the server continues the
    authorization request; RFC 9700 §4.12: after a form POST "the authorization server
    ... MUST NOT use HTTP status code 307"; we answer 303.
    """
    flow = new_flow()
    page = browser.get("/authorize", params=flow.params)
    r = submit_login(browser, page)
    assert r.status == 303
    assert r.location.startswith(ISSUER + "/authorize?")
    assert query_of(r.location) == flow.params
    assert set_cookie(r, SESSION_COOKIE) is not None


def test_wrong_password_shows_the_page_again_without_a_session(browser):
    """RFC 6749 §4.1.1: the server "authenticates the resource owner"; a failed sign-in
    says so and establishes nothing.
    """
    r = submit_login(browser, login_page(browser), password="not-the-password")
    assert r.status == 200
    assert "Wrong username or password" in r.text
    assert 'action="login"' in r.text
    assert set_cookie(r, SESSION_COOKIE) is None
    assert SESSION_COOKIE not in browser.cookies
    # The page keeps the username typed, marks both fields, and starts in the password.
    assert re.search(r'<input id="username"[^>]* aria-invalid="true"[^>]* value="alice"', r.text)
    assert re.search(r'<input id="password"[^>]* autofocus aria-invalid="true"', r.text)


def test_unknown_user_gets_the_same_answer_as_a_wrong_password(browser):
    """RFC 6749 §10.10 spirit: the answer does not tell which usernames exist."""
    r = submit_login(browser, login_page(browser), username="nobody", password="x")
    assert r.status == 200
    assert "Wrong username or password" in r.text
    assert set_cookie(r, SESSION_COOKIE) is None


###############################################################################
# Failed-login limits ##########################################################
###############################################################################


def test_too_many_failures_for_a_user_blocks_even_the_right_password(browser):
    """RFC 6749 §10.10 / RFC 9700 §2.4 spirit, NIST SP 800-63B §5.2.2: the server limits
    password guessing. After FAILURES_BEFORE_DELAY failures from one address the next
    attempt there is refused with 429, unchecked, saying when to try again.
    """
    page = login_page(browser)
    for _ in range(codeflow.FAILURES_BEFORE_DELAY):
        assert submit_login(browser, page, password="guess").status == 200
    r = submit_login(browser, page)
    assert r.status == 429
    assert r.headers["retry-after"] == str(codeflow.FIRST_DELAY)
    assert "Too many failed sign-in attempts" in r.text and "try again in 30 seconds" in r.text
    assert set_cookie(r, SESSION_COOKIE) is None


def test_guesses_from_every_address_count_against_the_account(server, clock):
    """NIST SP 800-63B §5.2.2: guesses at one account from many addresses are counted
    against that account: after 100, a new address waits (at most MAX_ACCOUNT_DELAY, a
    wait and not a lock: issue 12 item 2b), then signs in.
    """
    for i in range(100):
        attacker = WSGIClient(server.wsgi, remote_addr=f"192.0.{i // 250}.{i % 250 + 1}")
        submit_login(attacker, login_page(attacker), password="guess")
    user = WSGIClient(server.wsgi, remote_addr="198.51.100.7")
    r = submit_login(user, login_page(user))
    assert r.status == 429
    wait = int(r.headers["retry-after"])
    assert 0 < wait <= codeflow.MAX_ACCOUNT_DELAY
    clock.advance(wait)
    assert submit_login(user, login_page(user)).status == 303


def test_guesses_from_one_address_do_not_lock_the_user_out_elsewhere(server):
    """NIST SP 800-63B §5.2.2 spirit: the tight limit is per user and address, so an
    attacker's wrong guesses do not keep the real user from signing in from their own."""
    attacker = WSGIClient(server.wsgi, remote_addr="192.0.2.66")
    page = login_page(attacker)
    for _ in range(codeflow.FAILURES_BEFORE_DELAY):
        assert submit_login(attacker, page, password="guess").status == 200
    assert submit_login(attacker, page).status == 429
    user = WSGIClient(server.wsgi, remote_addr="198.51.100.7")
    r = submit_login(user, login_page(user))
    assert r.status == 303
    assert set_cookie(r, SESSION_COOKIE) is not None


def test_failures_under_other_names_do_not_delay_an_address(server):
    """NIST SP 800-63B §5.2.2: limits apply to "a single account". An address that sprays
    many usernames is delayed on each of them, but the same address (a proxy or NAT many
    users share) still signs alice in: issue 12 item 2a, which this test once encoded
    the other way round.
    """
    shared = WSGIClient(server.wsgi, remote_addr="192.0.2.66")
    page = login_page(shared)
    for i in range(20):
        assert submit_login(shared, page, username=f"user{i}", password="x").status == 200
    assert submit_login(shared, page).status == 303


def test_the_wait_lifts_when_it_is_over(browser, clock):
    """NIST SP 800-63B §5.2.2: a wait after failed attempts, not a permanent lockout: the
    right password is refused until Retry-After has passed, then accepted.
    """
    page = login_page(browser)
    for _ in range(codeflow.FAILURES_BEFORE_DELAY):
        submit_login(browser, page, password="guess")
    assert submit_login(browser, page).status == 429
    clock.advance(codeflow.FIRST_DELAY - 1)
    assert submit_login(browser, page).status == 429
    clock.advance(1)
    r = submit_login(browser, page)
    assert r.status == 303
    assert set_cookie(r, SESSION_COOKIE) is not None


###############################################################################
# CSRF on the forms: RFC 6749 §10.12 ###########################################
###############################################################################


def test_login_without_the_csrf_cookie_is_refused(server, browser):
    """RFC 6749 §10.12: the server "MUST implement CSRF protection for its authorization
    endpoint"; a login POST from a browser that never loaded the form is refused.
    """
    page = login_page(browser)
    stranger = WSGIClient(server.wsgi)
    assert_error_page(submit_login(stranger, page))
    assert SESSION_COOKIE not in stranger.cookies


def test_login_with_a_csrf_token_from_another_browser_is_refused(server, browser):
    """RFC 6749 §10.12: the CSRF token binds the form to the browser's own cookie: a token
    lifted from another browser's form does not fit this browser's cookie.
    """
    victim = WSGIClient(server.wsgi)
    login_page(victim)
    attackers_form = form_fields(login_page(browser).text)
    data = {**attackers_form, "username": USERNAME, "password": PASSWORD}
    r = victim.post("/login", data=data)
    assert_error_page(r)
    assert SESSION_COOKIE not in victim.cookies


def test_expired_login_form_is_refused(browser, clock):
    """RFC 6749 §10.12 and RFC 9700 §4.7: the form's CSRF token and signed request are
    short-lived: after FORM_LIFETIME they are no longer accepted. The page says so plainly
    and offers the way back: the same authorization request, made (and checked) anew.
    """
    flow = new_flow()
    page = browser.get("/authorize", params=flow.params)
    clock.advance(codeflow.FORM_LIFETIME + 1)
    r = submit_login(browser, page)
    assert_error_page(r)
    assert "<h1>This form has expired</h1>" in r.text and 'role="alert"' in r.text
    restart = re.search(r'<a class="button" href="([^"]+)">Start again</a>', r.text)
    assert restart, r.text
    again = html.unescape(restart.group(1))
    assert again.startswith(ISSUER + "/authorize?") and query_of(again) == flow.params
    assert 'action="login"' in browser.get(again).text


def test_tampered_request_field_is_refused(browser):
    """RFC 6749 §10.12: the request the form continues is signed; any change to it (here,
    swapping one character of the payload) makes the form invalid.
    """
    page = login_page(browser)
    data = {**form_fields(page.text), "username": USERNAME, "password": PASSWORD}
    value = data["request"]
    i = len(value) // 3
    data["request"] = value[:i] + ("A" if value[i] != "A" else "B") + value[i + 1 :]
    assert_error_page(browser.post("/login", data=data))


def test_request_signed_by_another_server_is_refused(browser):
    """RFC 6749 §10.12: a form is only good on the server that issued it."""
    page = login_page(browser)
    other = make_server(secret_key="another key")
    data = {
        **form_fields(page.text),
        "request": other.signer.request(new_flow(scope="openid email").params),
        "username": USERNAME,
        "password": PASSWORD,
    }
    assert_error_page(browser.post("/login", data=data))


@pytest.mark.parametrize(
    "content_type", ["application/json", "text/plain", "multipart/form-data; boundary=x", None]
)
def test_login_post_that_is_not_a_form_is_refused(browser, content_type):
    """RFC 6749 §3.1 (via the HTML form it serves): the login form is sent as
    application/x-www-form-urlencoded; any other body is a bad request, never a 5xx.
    """
    page = login_page(browser)
    fields = {**form_fields(page.text), "username": USERNAME, "password": PASSWORD}
    body = "&".join(f"{k}={v}" for k, v in fields.items()).encode()
    r = browser.post("/login", body=body, content_type=content_type)
    assert_error_page(r)


def test_consent_with_a_csrf_token_from_another_browser_is_refused(server, browser):
    """RFC 6749 §10.12: "The authorization server MUST implement CSRF protection for its
    authorization endpoint and ensure that a malicious client cannot obtain authorization
    without the awareness and explicit consent of the resource owner."
    """
    victim = WSGIClient(server.wsgi)
    victims_form = form_fields(consent_page(victim).text)
    attacker = WSGIClient(server.wsgi)
    attackers_form = form_fields(consent_page(attacker).text)
    data = {**victims_form, "csrf_token": attackers_form["csrf_token"], "decision": "approve"}
    r = victim.post("/consent", data=data)
    assert_error_page(r)
    assert server.storage.get_consent(USERNAME, CONFIDENTIAL) == frozenset()


###############################################################################
# Cookies: RFC 6265 ############################################################
###############################################################################


def test_session_cookie_is_httponly_samesite_lax_and_not_secure_on_http(browser):
    """RFC 6265 §4.1.2.6 HttpOnly, RFC 6265bis SameSite=Lax: the session cookie is out of
    reach of scripts and of cross-site POSTs; on an http issuer it cannot be Secure
    (RFC 6265 §4.1.2.5), or the browser would never send it back.
    """
    r = submit_login(browser, login_page(browser))
    attrs = cookie_attributes(set_cookie(r, SESSION_COOKIE))
    assert "httponly" in attrs
    assert attrs["samesite"].lower() == "lax"
    assert "secure" not in attrs
    assert attrs["path"] == "/"


def test_csrf_cookie_is_httponly_and_samesite_lax(server):
    """RFC 6265 §4.1.2.6: HttpOnly; RFC 6265bis: SameSite=Lax, like the session cookie."""
    r = login_page(WSGIClient(server.wsgi))
    attrs = cookie_attributes(set_cookie(r, CSRF_COOKIE))
    assert "httponly" in attrs
    assert attrs["samesite"].lower() == "lax"
    assert "secure" not in attrs


def test_cookies_are_secure_when_the_issuer_is_https(clock):
    """RFC 6265 §4.1.2.5: the Secure attribute "limits the scope of the cookie to "secure"
    channels"; RFC 9700 §4.1 spirit: on an https issuer the session never travels in clear.
    """
    srv = codeflow.Server(issuer="https://login.example.com", clock=clock)
    srv.add_client(PUBLIC, redirect_uris=[REDIRECT])
    srv.add_user(USERNAME, PASSWORD)
    browser = WSGIClient(srv.wsgi, host="login.example.com", scheme="https")
    page = login_page(browser, client_id=PUBLIC)
    # RFC 6265bis §4.1.3.2: the __Host- prefix pins them to this host, Secure and Path=/.
    csrf = cookie_attributes(set_cookie(page, "__Host-" + CSRF_COOKIE))
    assert "secure" in csrf
    assert csrf["path"] == "/"
    assert "domain" not in csrf
    r = submit_login(browser, page)
    assert r.status == 303
    assert r.location.startswith("https://login.example.com/authorize?")
    session = cookie_attributes(set_cookie(r, "__Host-" + SESSION_COOKIE))
    assert "secure" in session
    assert "httponly" in session
    assert session["samesite"].lower() == "lax"


###############################################################################
# The consent page: RFC 6749 §4.1.2, §4.1.2.1 ##################################
###############################################################################


def test_consent_page_lists_the_requested_scopes(browser):
    """RFC 6749 §4.1.1: the server "obtains an authorization decision" from the resource
    owner; RFC 6749 §3.3: the scope requested is what the user decides on.
    """
    r = consent_page(browser, scope="openid profile api:read")
    for scope in ("openid", "profile", "api:read"):
        assert f"<code>{scope}</code>" in r.text
    assert "<code>email</code>" not in r.text
    assert codeflow.SCOPE_WORDS["profile"] in r.text
    assert "Confidential App" in r.text
    assert 'name="decision" value="approve"' in r.text
    assert 'name="decision" value="deny"' in r.text


def test_consent_page_offers_to_sign_in_as_someone_else(browser):
    """OIDC Core §3.1.2.1 prompt=login: "Not you?" makes the same request again with
    prompt=login, which asks for a fresh sign-in even though a session exists.
    """
    flow = new_flow()
    r = consent_page(browser, **{k: v for k, v in flow.params.items() if k != "client_id"})
    link = re.search(r'<a href="([^"]+)">Not you\? Sign in as someone else</a>', r.text)
    assert link, r.text
    again = html.unescape(link.group(1))
    assert query_of(again) == {**flow.params, "prompt": "login"}
    assert 'action="login"' in browser.get(again).text


def test_deny_redirects_with_access_denied_state_and_iss(browser):
    """RFC 6749 §4.1.2.1: access_denied: "The resource owner or authorization server denied
    the request", with state "REQUIRED if a "state" parameter was present"; RFC 9207 §2:
    iss; RFC 9700 §4.12: 303 after the form POST.
    """
    flow = new_flow()
    page = consent_page(browser, state=flow.params["state"])
    r = decide(browser, page, "deny")
    assert r.status == 303
    assert r.location.startswith(REDIRECT + "?")
    q = query_of(r.location)
    assert q["error"] == "access_denied"
    assert q["state"] == flow.params["state"]
    assert q["iss"] == ISSUER
    assert "code" not in q


def test_deny_remembers_nothing(server, browser):
    """RFC 6749 §4.1.2.1: a denial grants nothing; the next request asks again."""
    decide(browser, consent_page(browser), "deny")
    assert server.storage.get_consent(USERNAME, CONFIDENTIAL) == frozenset()
    consent_page(browser)


def test_approve_redirects_with_a_code_state_and_iss(server, browser):
    """RFC 6749 §4.1.2: "If the resource owner grants the access request, the authorization
    server issues an authorization code and delivers it to the client by adding the
    following parameters to the query component of the redirection URI"; RFC 9207 §2.
    """
    page = consent_page(browser, state="xyz", scope="openid api:read")
    r = decide(browser, page, "approve")
    assert r.status == 303
    q = query_of(r.location)
    assert set(q) == {"code", "state", "iss"}
    assert q["state"] == "xyz"
    assert q["iss"] == ISSUER
    assert server.storage.get_consent(USERNAME, CONFIDENTIAL) == {"openid", "api:read"}


@pytest.mark.parametrize("decision", ["yes", "APPROVE", "", None], ids=repr)
def test_unknown_decision_is_refused(server, browser, decision):
    """RFC 6749 §4.1.1: the code is only issued on the resource owner's explicit decision;
    consent submits decision=approve or decision=deny (DESIGN.md) and nothing else counts.
    """
    r = decide(browser, consent_page(browser), decision)
    assert r.status == 400
    assert "location" not in r.headers
    assert server.storage.get_consent(USERNAME, CONFIDENTIAL) == frozenset()


def test_consent_without_a_session_asks_to_sign_in(server, browser):
    """RFC 6749 §4.1.1: the decision must come from an authenticated resource owner."""
    page = consent_page(browser)
    del browser.cookies[SESSION_COOKIE]
    r = decide(browser, page, "approve")
    assert r.status == 200
    assert 'action="login"' in r.text
    assert server.storage.get_consent(USERNAME, CONFIDENTIAL) == frozenset()


@pytest.mark.parametrize(
    "second", ["openid profile", "profile", "openid"], ids=["same", "fewer", "one"]
)
def test_remembered_consent_skips_the_page_for_the_same_or_fewer_scopes(browser, second):
    """RFC 6749 §4.1.1: the server "obtains an authorization decision" (here, one given
    before for at least these scopes) and §4.1.2 answers with a code at once.
    """
    decide(browser, consent_page(browser, scope="openid profile"), "approve")
    flow = new_flow(scope=second)
    r = browser.get("/authorize", params=flow.params)
    assert r.status == 302
    q = query_of(r.location)
    assert q["state"] == flow.params["state"]
    assert q["iss"] == ISSUER
    assert "code" in q


def test_wider_scope_asks_for_consent_again(browser):
    """RFC 6749 §3.3: consent covers the scope the user saw; a request for more scope
    needs a new decision.
    """
    decide(browser, consent_page(browser, scope="openid profile"), "approve")
    r = browser.get("/authorize", params=new_flow(scope="openid profile email").params)
    assert r.status == 200
    assert 'action="consent"' in r.text
    assert "<code>email</code>" in r.text


def test_session_expires_after_its_lifetime(browser, clock):
    """RFC 6749 §4.1.1: the server authenticates the resource owner; a sign-in lasts
    SESSION_LIFETIME, after which the authorization endpoint asks again.
    """
    consent_page(browser)
    clock.advance(codeflow.SESSION_LIFETIME - 1)
    assert 'action="consent"' in browser.get("/authorize", params=new_flow().params).text
    clock.advance(1)
    assert 'action="login"' in browser.get("/authorize", params=new_flow().params).text


def test_consent_is_per_user(server):
    """RFC 6749 §4.1.1: each resource owner decides for themselves."""
    server.add_user("bob", "bob-password")
    alice = WSGIClient(server.wsgi)
    decide(alice, consent_page(alice), "approve")
    bob = WSGIClient(server.wsgi)
    page = bob.get("/authorize", params=new_flow().params)
    r = bob.get(submit_login(bob, page, "bob", "bob-password").location)
    assert 'action="consent"' in r.text


###############################################################################
# Headers on every page: RFC 9700 §4.16, RFC 6749 §10.13 #######################
###############################################################################


@pytest.fixture(scope="module")
def pages() -> dict[str, Response]:
    """One of each page and answer the browser-facing endpoints give, built once."""
    server = make_server(Clock())
    b = WSGIClient(server.wsgi)
    pages = {"login": login_page(b)}
    pages["wrong password"] = submit_login(b, pages["login"], password="x")
    pages["error page"] = b.get("/authorize", params=new_flow(client_id="nobody").params)
    pages["consent"] = consent_page(b)
    pages["bad decision"] = decide(b, pages["consent"], "maybe")
    pages["csrf failure"] = WSGIClient(server.wsgi).post(
        "/login", data=form_fields(pages["login"].text)
    )
    limited = WSGIClient(server.wsgi, remote_addr="192.0.2.9")
    page = login_page(limited)
    for _ in range(codeflow.FAILURES_BEFORE_DELAY):
        submit_login(limited, page, password="x")
    pages["rate limited"] = submit_login(limited, page)
    pages["redirect"] = decide(b, pages["consent"], "approve")
    return pages


PAGE_NAMES = [
    "login",
    "wrong password",
    "error page",
    "consent",
    "bad decision",
    "csrf failure",
    "rate limited",
    "redirect",
]


@pytest.mark.parametrize("name", PAGE_NAMES)
def test_every_page_forbids_framing_and_caching(pages, name):
    """RFC 9700 §4.16: "Authorization servers MUST prevent clickjacking attacks", with
    X-Frame-Options and CSP frame-ancestors; RFC 6749 §10.13 likewise. Pages carry
    per-user forms and codes, so they are never cached (Cache-Control: no-store).
    """
    r = pages[name]
    assert r.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store"


def test_pages_answer_with_the_statuses_they_should(pages):
    """RFC 9700 §4.12: after a form POST, "the authorization server ... MUST NOT use HTTP
    status code 307"; pages that refuse something say so with a 4xx.
    """
    assert {name: r.status for name, r in pages.items()} == {
        "login": 200,
        "wrong password": 200,
        "error page": 400,
        "consent": 200,
        "bad decision": 400,
        "csrf failure": 400,
        "rate limited": 429,
        "redirect": 303,
    }


###############################################################################
# 303, never 307: RFC 9700 §4.12 ###############################################
###############################################################################


def test_every_form_post_redirect_is_a_303(server, browser):
    """RFC 9700 §4.12: "the authorization server ... MUST NOT use HTTP status code 307"
    to redirect after a POST, since the browser would resend the password to the client.
    """
    flow = new_flow()
    page = browser.get("/authorize", params=flow.params)
    after_login = submit_login(browser, page)
    consent = browser.get(after_login.location)
    approved = decide(browser, consent, "approve")
    denied = decide(browser, consent_page(browser, scope="openid email"), "deny")
    posted = browser.post("/authorize", data=new_flow().params)
    posted_error = browser.post("/authorize", data=new_flow(response_type="token").params)
    for r in (after_login, approved, denied, posted, posted_error):
        assert r.status == 303, r.text


###############################################################################
# On the wire ##################################################################
###############################################################################


@pytest.mark.http
def test_on_the_wire_login_and_consent_with_a_real_browser_session(live):
    """RFC 6749 §4.1.1, §4.1.2 over real HTTP: the login POST is answered 303 with an
    HttpOnly, SameSite=Lax session cookie, and the consent approval with a 303 carrying
    code, state and iss (RFC 9207 §2).
    """
    _, base = live
    s = requests.Session()
    flow = new_flow(PUBLIC)
    r = s.get(base + "/authorize", params=flow.params, allow_redirects=False, timeout=10)
    assert r.status_code == 200
    assert r.headers["X-Frame-Options"] == "DENY"
    data = {**form_fields(r.text), "username": USERNAME, "password": PASSWORD}
    r = s.post(base + "/login", data=data, allow_redirects=False, timeout=10)
    assert r.status_code == 303
    raw = r.headers["Set-Cookie"]
    assert SESSION_COOKIE + "=" in raw
    assert "httponly" in raw.lower()
    assert "samesite=lax" in raw.lower()
    r = s.get(r.headers["Location"], allow_redirects=False, timeout=10)
    assert 'action="consent"' in r.text
    r = s.post(
        base + "/consent",
        data={**form_fields(r.text), "decision": "approve"},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 303
    q = query_of(r.headers["Location"])
    assert q["state"] == flow.params["state"]
    assert q["iss"] == base
    assert q["code"]
