"""CSRF protection of the login, consent and logout forms (RFC 6749 §10.12, RFC 9700 §4.4):
tokens bound to a browser id the server signed and set (and replaced at sign-in) and to the
login session, and forms accepted only from our own origin (Fetch Metadata, Origin).

In-process through the WSGI app; the browser-level attack (a page on another loopback
port planting the cookie) is in tests/test_browser.py.
"""

from __future__ import annotations

import pytest
from conftest import ISSUER, PASSWORD, USERNAME, form_fields, new_flow, query_of
from wsgi_client import WSGIClient

import codeflow


def at_consent(server: codeflow.Server) -> tuple[WSGIClient, dict[str, str]]:
    """A browser signed in as alice, at the consent page: its form fields."""
    browser = WSGIClient(server.wsgi)
    page = browser.get("/authorize", params=new_flow().params)
    r = browser.post("/login", {**form_fields(page.text), "username": USERNAME,
                                "password": PASSWORD})  # fmt: skip
    assert r.status == 303
    consent = browser.get(r.location)
    assert 'action="consent"' in consent.text
    return browser, form_fields(consent.text)


@pytest.mark.parametrize(
    "headers",
    [{"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
     {"Origin": "http://127.0.0.1:9999"}, {"Origin": "null"}],
    ids=["cross-site", "same-site (another port, a sibling subdomain)", "other-origin", "null"],
)  # fmt: skip
def test_consent_from_another_site_is_refused(server: codeflow.Server, headers) -> None:
    """RFC 9700 §4.4 (CSRF): a consent form posted from a page that is not ours is refused
    with a 403 page, even with the victim's own cookies, and issues no code."""
    browser, fields = at_consent(server)
    r = browser.post("/consent", {**fields, "decision": "approve"}, headers=headers)
    assert r.status == 403 and r.location is None
    assert "another" in r.text
    assert not server.storage.get_consent(USERNAME, "confidential-app")


@pytest.mark.parametrize(
    "headers", [{}, {"Sec-Fetch-Site": "same-origin"}, {"Origin": ISSUER}],
    ids=["no-headers", "same-origin", "own-origin"],
)  # fmt: skip
def test_consent_from_our_own_page_is_accepted(server: codeflow.Server, headers) -> None:
    """RFC 6749 §4.1.2: the user's own approval, from our page, issues the code."""
    browser, fields = at_consent(server)
    r = browser.post("/consent", {**fields, "decision": "approve"}, headers=headers)
    assert r.status == 303 and "code" in query_of(r.location or "")


def test_login_from_another_site_is_refused(server: codeflow.Server) -> None:
    """RFC 6749 §10.12 (login CSRF): a login form posted cross-site signs nobody in."""
    browser = WSGIClient(server.wsgi)
    fields = form_fields(browser.get("/authorize", params=new_flow().params).text)
    r = browser.post("/login", {**fields, "username": USERNAME, "password": PASSWORD},
                     headers={"Sec-Fetch-Site": "cross-site"})  # fmt: skip
    assert r.status == 403
    assert codeflow.SESSION_COOKIE not in browser.cookies


def test_a_planted_csrf_cookie_is_not_the_servers(server: codeflow.Server) -> None:
    """RFC 9700 §4.4: a CSRF cookie value the server did not sign (planted by a page on a
    sibling origin) is replaced with one of the server's own."""
    browser = WSGIClient(server.wsgi)
    browser.cookies[codeflow.CSRF_COOKIE] = "A" * 22
    browser.get("/authorize", params=new_flow().params)
    assert browser.cookies[codeflow.CSRF_COOKIE] != "A" * 22
    assert server.signer.loads(browser.cookies[codeflow.CSRF_COOKIE], "browser")


def test_signing_in_replaces_the_browser_id(server: codeflow.Server) -> None:
    """RFC 6749 §10.12: the CSRF cookie a page could have planted before sign-in is
    replaced when the user signs in."""
    browser = WSGIClient(server.wsgi)
    fields = form_fields(browser.get("/authorize", params=new_flow().params).text)
    before = browser.cookies[codeflow.CSRF_COOKIE]
    r = browser.post("/login", {**fields, "username": USERNAME, "password": PASSWORD})
    assert r.status == 303
    assert browser.cookies[codeflow.CSRF_COOKIE] != before


def test_a_form_token_of_another_session_is_refused(server: codeflow.Server) -> None:
    """RFC 6749 §10.12 ("bind the request to the user-agent's authenticated state"): the
    attacker's own form token and signed request, posted with the victim's session and a
    CSRF cookie the attacker planted after the victim signed in, are refused."""
    attacker = WSGIClient(server.wsgi)
    evil = form_fields(attacker.get("/authorize", params=new_flow().params).text)
    victim, _ = at_consent(server)
    victim.cookies[codeflow.CSRF_COOKIE] = attacker.cookies[codeflow.CSRF_COOKIE]
    r = victim.post("/consent", {**evil, "decision": "approve"})
    assert r.status == 400 and "This form has expired" in r.text
    assert r.location is None
