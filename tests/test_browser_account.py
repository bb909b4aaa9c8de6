"""The account area (README "Your account") in a real headless Chromium: every step by
keyboard alone, with the accessibility and contrast checks of tests/test_browser.py; TOTP
enrolment (RFC 6238) from its QR code's key, then a recovery code in place of the app's
code (NIST SP 800-63B §5.1.2); revoking a connected app makes its refresh token fail
(RFC 7009 §2.1).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pyotp
import pytest
import requests
import test_browser
from conftest import CONFIDENTIAL, PASSWORD, REDIRECT, SECRET, USERNAME, new_flow, query_of
from test_browser import (
    CHROMIUM,
    Tab,
    assert_accessible,
    launched_chromium,
    screenshot,
    submit,
    sync_playwright,
)

import codeflow

tab = test_browser.tab  # tests/test_browser.py's fixture: a tab of this module's chromium

if sync_playwright is not None:
    from playwright.sync_api import Browser

pytestmark = [
    pytest.mark.browser,
    pytest.mark.http,
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not importable"),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)"),
]


@pytest.fixture
def provider() -> codeflow.Server:
    srv = codeflow.Server()
    with srv.running():
        srv.add_client(CONFIDENTIAL, client_secret=SECRET, redirect_uris=[REDIRECT],
                       name="Confidential App")  # fmt: skip
        srv.add_user(USERNAME, PASSWORD)
        yield srv


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    """Debian's Chromium (tests/test_browser.py's fixture would delete the other
    modules' screenshots)."""
    with launched_chromium() as browser:
        yield browser


def focused(tab: Tab) -> list[str]:
    return tab.page.evaluate(
        "[document.activeElement.tagName, (document.activeElement.id ||"
        " document.activeElement.textContent).trim().replace(/\\s+/g, ' '),"
        " getComputedStyle(document.activeElement).outlineStyle]"
    )


def tab_to(tab: Tab, target: str, tag: str | None = None, limit: int = 40) -> None:
    """Press Tab until the focused element's id or text is ``target`` (a ``tag`` element, if
    given); each stop must show a focus ring."""
    for _ in range(limit):
        tab.page.keyboard.press("Tab")
        found, name, outline = focused(tab)
        if found in ("BUTTON", "INPUT", "A", "SUMMARY"):
            assert outline != "none", f"{found} {name} has no visible focus"
        if name == target and tag in (None, found):
            return
    raise AssertionError(f"Tab never reached {target!r}")


def enter(tab: Tab) -> None:
    with tab.page.expect_navigation():
        tab.page.keyboard.press("Enter")


def test_the_account_area_by_keyboard_alone(tab: Tab, provider: codeflow.Server) -> None:
    """Sign in, change the password, set up an authenticator app from the key shown beside
    its QR code, see the recovery codes, sign out another session: by keyboard alone, each
    page accessible (labels, one h1, no script, contrast)."""
    page = tab.page
    other = requests.Session()  # another browser, signed in too
    r = other.get(provider.issuer + "/account/login", timeout=10)
    from conftest import form_fields

    other.post(provider.issuer + "/account/login", timeout=10, data={
        **form_fields(r.text), "username": USERNAME, "password": PASSWORD})  # fmt: skip

    page.goto(provider.issuer + "/account")
    assert page.url.endswith("/account/login")
    assert_accessible(tab, "Sign in")
    assert focused(tab)[1] == "username"
    page.keyboard.type(USERNAME)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    enter(tab)
    assert_accessible(tab, "Your account")
    screenshot(tab, "account-1-overview")

    tab_to(tab, "current_password")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Tab")
    assert focused(tab)[1] == "new_password"
    page.keyboard.type("password123")
    enter(tab)
    assert "most common" in page.locator('[role="alert"]').inner_text()
    assert_accessible(tab, "Your account")
    screenshot(tab, "account-2-password-refused", phone=False)
    tab_to(tab, "current_password")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Tab")
    page.keyboard.type("correct horse battery staple")
    enter(tab)
    assert "Your password was changed" in page.locator('[role="status"]').inner_text()
    assert other.get(provider.issuer + "/account", allow_redirects=False,
                     timeout=10).status_code == 302  # fmt: skip

    tab_to(tab, "Set up an authenticator app")
    enter(tab)
    assert_accessible(tab, "Set up an authenticator app")
    assert page.locator("figure.qr svg").count() == 1
    screenshot(tab, "account-3-totp-enrol")
    key = page.locator("#totp-key").inner_text().replace(" ", "")
    assert focused(tab)[1] == "otp"
    page.keyboard.type(pyotp.TOTP(key).now())
    enter(tab)
    assert_accessible(tab, "Save your recovery codes")
    codes = page.locator("ul.codes code").all_inner_texts()
    assert len(codes) == 10
    screenshot(tab, "account-4-recovery-codes")
    tab_to(tab, "Back to your account")
    enter(tab)
    assert "An authenticator app is set up" in page.locator("main").inner_text()
    assert_accessible(tab, "Your account")

    # Sign in again elsewhere with a recovery code; then sign that session out from here.
    t2 = Tab(tab.context.browser)
    try:
        p2 = t2.page
        p2.goto(provider.issuer + "/account")
        p2.get_by_label("Username").fill(USERNAME)
        p2.get_by_label("Password").fill("correct horse battery staple")
        submit(p2, "Sign in")
        assert_accessible(t2, "Enter your code")
        p2.get_by_text("Lost your authenticator app?").click()
        p2.get_by_label("Recovery code").fill(codes[0])
        submit(p2, "Use recovery code")
        assert_accessible(t2, "Your account")
        page.reload()
        # The first session listed is the newest: the other browser's.
        tab_to(tab, "Sign out", "BUTTON")
        enter(tab)
        assert "That session was signed out" in page.locator('[role="status"]').inner_text()
        p2.reload()
        assert p2.url.endswith("/account/login")
    finally:
        t2.close()
    assert provider.storage.recovery_codes_left(USERNAME) == 9


def test_revoking_an_app_in_the_browser_makes_its_refresh_token_fail(
    tab: Tab, provider: codeflow.Server
) -> None:
    """RFC 7009 §2.1: after the user revokes the app on the account page, its refresh token
    is refused (RFC 6749 §5.2 invalid_grant)."""
    page = tab.page
    flow = new_flow(scope="openid profile offline_access")
    page.goto(provider.issuer + "/authorize?" + "&".join(
        f"{k}={requests.utils.quote(v)}" for k, v in flow.params.items()))  # fmt: skip
    page.get_by_label("Username").fill(USERNAME)
    page.get_by_label("Password").fill(PASSWORD)
    submit(page, "Sign in")
    # The app's redirect URI answers (nothing listens there), so that the navigation ends
    # on a page rather than on Chromium's error page, which could land in the middle of
    # the next navigation.
    callback = re.compile(re.escape(REDIRECT) + r"\?")
    page.route(callback, lambda route: route.fulfill(body="The app got its code."))
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(callback)
    code = query_of(page.url)["code"]
    tokens = requests.post(provider.issuer + "/token", auth=(CONFIDENTIAL, SECRET), data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
        "code_verifier": flow.verifier}, timeout=10).json()  # fmt: skip
    assert "refresh_token" in tokens

    page.goto(provider.issuer + "/account")
    text = page.locator("main").inner_text()
    assert "Confidential App" in text and "See your name and basic profile" in text
    submit(page, "Revoke access for Confidential App")
    assert "No app has access to your account" in page.locator("main").inner_text()
    assert_accessible(tab, "Your account")
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    r = requests.post(provider.issuer + "/token", auth=(CONFIDENTIAL, SECRET), data=refresh,
                      timeout=10)  # fmt: skip
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_the_account_pages_in_dark_mode(chromium: Browser, provider: codeflow.Server) -> None:
    """With the system in dark mode the account pages keep their contrast (WCAG 2.1
    §1.4.3): the overview with a refused password, the enrolment page (its QR code on a
    light card, for cameras) and the recovery codes."""
    t = Tab(chromium, color_scheme="dark")
    try:
        page = t.page
        page.goto(provider.issuer + "/account")
        page.get_by_label("Username").fill(USERNAME)
        page.get_by_label("Password").fill(PASSWORD)
        submit(page, "Sign in")
        page.get_by_label("Current password").fill("wrong")
        page.get_by_label("New password").fill("correct horse battery staple")
        submit(page, "Change password")
        assert_accessible(t, "Your account")
        screenshot(t, "account-5-dark", phone=False)
        submit(page, "Set up an authenticator app")
        assert page.evaluate(
            "getComputedStyle(document.querySelector('figure.qr')).backgroundColor"
        ) == "rgb(255, 255, 255)"
        assert_accessible(t, "Set up an authenticator app")
        key = page.locator("#totp-key").inner_text().replace(" ", "")
        page.get_by_label("Code from the app").fill(pyotp.TOTP(key).now())
        submit(page, "Turn on")
        assert_accessible(t, "Save your recovery codes")
        screenshot(t, "account-6-dark-recovery-codes", phone=False)
    finally:
        t.close()
