"""Passkeys (WebAuthn Level 2) in headless Chromium with its virtual authenticator (DevTools
protocol WebAuthn.addVirtualAuthenticator, through a CDP session): registered on the account
page, then a sign-in without a password (amr hwk, user, mfa: RFC 8176 §2) and the second
factor after the password (amr pwd, hwk, mfa); a ceremony's challenge works once (WebAuthn
§13.4.3); without JavaScript the password form works as before.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import pytest
import requests
import test_browser
from conftest import CONFIDENTIAL, PASSWORD, REDIRECT, SECRET, USERNAME, new_flow, query_of
from sdk_support import free_port
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

pytest.importorskip("webauthn")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.http,
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not importable"),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)"),
]


@pytest.fixture
def provider() -> Iterator[codeflow.Server]:
    """WebAuthn §5.1.3: an RP ID is a domain, never an IP address: the issuer is localhost."""
    port = free_port()
    srv = codeflow.Server(issuer=f"http://localhost:{port}", passkeys=True)
    with srv.running(port=port):
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


def virtual_authenticator(tab: Tab) -> tuple[object, str]:
    """A platform authenticator that holds discoverable credentials and verifies the user
    (a screen lock), answering at once."""
    cdp = tab.page.context.new_cdp_session(tab.page)
    cdp.send("WebAuthn.enable")
    found = cdp.send("WebAuthn.addVirtualAuthenticator", {"options": {
        "protocol": "ctap2", "transport": "internal", "hasResidentKey": True,
        "hasUserVerification": True, "isUserVerified": True,
        "automaticPresenceSimulation": True}})  # fmt: skip
    return cdp, found["authenticatorId"]


def sign_in_with_password(tab: Tab, provider: codeflow.Server) -> None:
    page = tab.page
    page.goto(provider.issuer + "/account")
    page.get_by_label("Username").fill(USERNAME)
    page.get_by_label("Password").fill(PASSWORD)
    submit(page, "Sign in", exact=True)


def register(tab: Tab, provider: codeflow.Server, *, passwordless: bool) -> None:
    page = tab.page
    assert_accessible(tab, "Your account", scripts=1)
    page.get_by_label("Name of the new passkey").fill("Laptop")
    if passwordless:
        page.get_by_label("Also sign in with it alone").check()
    submit(page, "Add a passkey", exact=True)
    assert "The passkey was added" in page.locator('[role="status"]').inner_text()
    assert "Laptop" in page.locator("#passkeys-heading").locator("..").inner_text()
    assert_accessible(tab, "Your account", scripts=1)


def id_token_amr(tab: Tab, provider: codeflow.Server, sign_in: str) -> list[str]:
    """Run an authorization request in the tab, signing in with ``sign_in`` (the button
    pressed on the login page); return the ID token's amr."""
    page = tab.page
    flow = new_flow()
    page.goto(provider.issuer + "/authorize?" + requests.compat.urlencode(flow.params))
    if sign_in == "password":
        page.get_by_label("Username").fill(USERNAME)
        page.get_by_label("Password").fill(PASSWORD)
        submit(page, "Sign in", exact=True)
        assert_accessible(tab, "Confirm it is you", scripts=1)
        sign_in = "Use your passkey"
    with page.expect_request(lambda r: r.url.startswith(REDIRECT + "?")) as callback:
        page.get_by_role("button", name=sign_in, exact=True).click()
        page.get_by_role("button", name="Allow").click()  # the app's first request: consent
    code = query_of(callback.value.url)["code"]
    tokens = requests.post(provider.issuer + "/token", auth=(CONFIDENTIAL, SECRET), data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
        "code_verifier": flow.verifier}, timeout=10).json()  # fmt: skip
    payload = tokens["id_token"].split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=="))["amr"]


def test_a_passkey_registered_on_the_account_page_signs_in_without_a_password(
    tab: Tab, provider: codeflow.Server
) -> None:
    """WebAuthn §7.1 registration from the account page; §7.2 authentication with a
    discoverable credential and the user verified: the ID token's amr is hwk (a key kept
    on the device), user and mfa (RFC 8176 §2)."""
    virtual_authenticator(tab)
    sign_in_with_password(tab, provider)
    register(tab, provider, passwordless=True)
    screenshot(tab, "passkeys-1-account")
    (passkey,) = provider.storage.list_passkeys(USERNAME)
    assert passkey.passwordless and passkey.name == "Laptop" and not passkey.backed_up

    page = tab.page
    page.goto(provider.issuer + "/logout")
    submit(page, "Sign out", exact=True)
    page.goto(provider.issuer + "/account/login")
    assert_accessible(tab, "Sign in", scripts=1)
    screenshot(tab, "passkeys-2-sign-in")
    submit(page, "Sign in with a passkey", exact=True)
    assert page.url == provider.issuer + "/account"
    assert "Signed in as alice" in page.locator("main").inner_text()

    page.goto(provider.issuer + "/logout")
    submit(page, "Sign out", exact=True)
    assert id_token_amr(tab, provider, "Sign in with a passkey") == ["hwk", "user", "mfa"]
    assert provider.storage.get_passkey(passkey.credential_id).last_used_at is not None


def test_a_passkey_is_the_second_factor_after_the_password(
    tab: Tab, provider: codeflow.Server
) -> None:
    """A passkey not allowed to sign in alone is asked for after the password (amr pwd,
    hwk, mfa), and is refused as a sign-in of its own."""
    virtual_authenticator(tab)
    sign_in_with_password(tab, provider)
    register(tab, provider, passwordless=False)
    page = tab.page
    page.goto(provider.issuer + "/logout")
    submit(page, "Sign out", exact=True)
    page.goto(provider.issuer + "/account/login")
    submit(page, "Sign in with a passkey", exact=True)
    assert "That passkey cannot sign you in" in page.locator('[role="alert"]').first.inner_text()
    assert id_token_amr(tab, provider, "password") == ["pwd", "hwk", "mfa"]


def test_a_ceremony_challenge_works_once(tab: Tab, provider: codeflow.Server) -> None:
    """WebAuthn §13.4.3: the server "MUST" not accept a challenge twice: the same signed
    assertion posted again, from the same browser's cookies, is refused."""
    virtual_authenticator(tab)
    sign_in_with_password(tab, provider)
    register(tab, provider, passwordless=True)
    page = tab.page
    page.goto(provider.issuer + "/logout")
    submit(page, "Sign out", exact=True)
    page.goto(provider.issuer + "/account/login")
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    with page.expect_request(lambda r: r.method == "POST") as posted:
        submit(page, "Sign in with a passkey", exact=True)
    assert page.url == provider.issuer + "/account"
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    replay = requests.post(provider.issuer + "/account/login", data=posted.value.post_data,
                           cookies=cookies, headers=form, allow_redirects=False, timeout=10)
    assert replay.status_code == 200 and "That passkey cannot sign you in" in replay.text


def test_without_javascript_the_password_form_works(
    chromium: Browser, provider: codeflow.Server
) -> None:
    """The passkey button needs JavaScript and stays hidden without it; the password form
    signs in as before."""
    t = Tab(chromium, javascript=False)
    try:
        page = t.page
        page.goto(provider.issuer + "/account/login")
        assert not page.get_by_role("button", name="Sign in with a passkey").is_visible()
        page.get_by_label("Username").fill(USERNAME)
        page.get_by_label("Password").fill(PASSWORD)
        submit(page, "Sign in", exact=True)
        assert page.url == provider.issuer + "/account"
        assert "Adding a passkey needs JavaScript" in page.locator("main").inner_text()
    finally:
        t.close()
