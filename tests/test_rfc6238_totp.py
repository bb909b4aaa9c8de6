"""The TOTP second factor on the login page (RFC 6238): asked after a right password,
one step of clock drift allowed, a code used once in its time step refused, wrong codes
rate-limited, and a pending sign-in that expires with a way back.

In-process through the WSGI app; the codes come from pyotp, as an authenticator app's.
"""

from __future__ import annotations

import html
import re

import pyotp
import pytest
from conftest import ISSUER, PASSWORD, USERNAME, Clock, form_fields, make_server, new_flow
from wsgi_client import Response, WSGIClient

import codeflow

SECRET = pyotp.random_base32()


@pytest.fixture
def server(clock: Clock) -> codeflow.Server:
    srv = make_server(clock)
    srv.add_user(USERNAME, PASSWORD, claims={"name": "Alice"}, totp_secret=SECRET)
    return srv


@pytest.fixture
def browser(server: codeflow.Server) -> WSGIClient:
    return WSGIClient(server.wsgi)


def otp_page(browser: WSGIClient) -> Response:
    page = browser.get("/authorize", params=new_flow().params)
    data = {**form_fields(page.text), "username": USERNAME, "password": PASSWORD}
    r = browser.post("/login", data=data)
    assert r.status == 200 and 'name="otp"' in r.text, r.text
    return r


def send_code(browser: WSGIClient, page: Response, otp: str) -> Response:
    return browser.post("/login", data={**form_fields(page.text), "otp": otp})


def code_at(clock: Clock, steps: int = 0) -> str:
    return pyotp.TOTP(SECRET).at(clock() + steps * 30)


def test_a_right_password_asks_for_the_code_and_signs_in_nobody_yet(browser):
    """RFC 6238 §1: the code is a second factor: the right password alone shows the code
    page (naming the user, field ``otp`` with autocomplete=one-time-code) and sets no
    session."""
    r = otp_page(browser)
    assert "<strong>alice</strong>" in r.text and "Confidential App" in r.text
    assert re.search(r'<input id="otp" name="otp"[^>]* autocomplete="one-time-code"', r.text)
    assert '<label for="otp">' in r.text
    assert "codeflow_session" not in browser.cookies


@pytest.mark.parametrize("drift", [-1, 0, 1])
def test_the_current_code_or_one_step_either_side_signs_in(browser, clock, drift):
    """RFC 6238 §5.2: "We RECOMMEND that at most one time step is allowed as the network
    delay"; a code of the step before or after is accepted, and signs in (303)."""
    r = send_code(browser, otp_page(browser), code_at(clock, drift))
    assert r.status == 303 and r.location.startswith(ISSUER + "/authorize?")
    assert "codeflow_session" in browser.cookies


def test_a_code_two_steps_away_is_wrong(browser, clock):
    """RFC 6238 §5.2: beyond the allowed drift a code is refused, with a plain message."""
    r = send_code(browser, otp_page(browser), code_at(clock, 2))
    assert r.status == 200
    assert 'role="alert">That code is not right' in r.text
    assert 'aria-invalid="true"' in r.text


def test_a_code_used_once_is_refused_in_its_time_step(server, clock):
    """RFC 6238 §5.2: "the verifier MUST NOT accept the second attempt of the OTP after
    the successful validation has been issued for the first OTP"."""
    code = code_at(clock)
    first, second = WSGIClient(server.wsgi), WSGIClient(server.wsgi)
    pages = otp_page(first), otp_page(second)
    assert send_code(first, pages[0], code).status == 303
    r = send_code(second, pages[1], code)
    assert r.status == 200 and "already used" in r.text
    assert "codeflow_session" not in second.cookies


def test_wrong_codes_are_rate_limited(browser, clock):
    """DESIGN "failed logins rate-limited", NIST SP 800-63B §5.2.2: after
    FAILURES_BEFORE_DELAY wrong codes even the right one is answered 429, unchecked,
    saying how long to wait (also in Retry-After, RFC 9110 §10.2.3)."""
    page = otp_page(browser)
    for _ in range(codeflow.FAILURES_BEFORE_DELAY):
        assert send_code(browser, page, code_at(clock, 5)).status == 200
    r = send_code(browser, page, code_at(clock))
    assert r.status == 429
    assert r.headers["retry-after"] == str(codeflow.FIRST_DELAY)
    assert "Too many wrong codes. Try again in 30 seconds." in r.text


def test_a_pending_sign_in_expires_with_a_way_back(browser, clock):
    """RFC 6749 §10.12: the signed proof of the right password lives OTP_LIFETIME; after it
    the page says the sign-in expired (400, no redirect) and links to the same request."""
    page = otp_page(browser)
    clock.advance(codeflow.OTP_LIFETIME + 1)
    r = send_code(browser, page, code_at(clock))
    assert r.status == 400 and "location" not in r.headers
    assert "<h1>This form has expired</h1>" in r.text and "sign-in has expired" in r.text
    assert f"only works for {codeflow.OTP_LIFETIME // 60} minutes" in r.text
    restart = re.search(r'<a class="button" href="([^"]+)">Start again</a>', r.text)
    assert restart and html.unescape(restart.group(1)).startswith(ISSUER + "/authorize?")
