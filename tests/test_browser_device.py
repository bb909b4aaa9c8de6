"""The /device page (RFC 8628 §3.3) in a real headless Chromium: a user types the code a
device shows (in lower case, without the dash: §6.1), signs in with password and TOTP
(RFC 6238), sees the device's name, the scopes and the code, and allows it; the device,
polling over real HTTP, then gets its tokens. And the link with the code in it
(verification_uri_complete, §3.3.1) still asks, and Deny reaches the device as
access_denied. Each page meets the accessibility checks of tests/test_browser.py and is
screenshotted there.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyotp
import pytest
import requests
import test_browser
from test_browser import CHROMIUM, Tab, assert_accessible, screenshot, submit, sync_playwright

import codeflow

chromium = test_browser.chromium  # the headless Chromium of tests/test_browser.py, a fixture

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
TOTP = pyotp.random_base32()

pytestmark = [
    pytest.mark.browser,
    pytest.mark.http,
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not importable"),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)"),
]


@pytest.fixture
def user_tab(chromium: test_browser.Browser) -> Iterator[Tab]:
    t = Tab(chromium)
    yield t
    t.close()


@pytest.fixture
def live() -> Iterator[tuple[codeflow.Server, str]]:
    srv = codeflow.Server()
    with srv.running() as url:
        srv.add_client("tv", name="Living Room TV", grant_types=[DEVICE_GRANT, "refresh_token"],
                       scopes=["openid", "profile", "offline_access"])  # fmt: skip
        srv.add_user("alice", "wonderland", claims={"name": "Alice"}, totp_secret=TOTP)
        yield srv, url


def start(url: str) -> dict:
    r = requests.post(url + "/device_authorization",
                      data={"client_id": "tv", "scope": "openid profile"}, timeout=10)  # fmt: skip
    assert r.status_code == 200, r.text
    return r.json()


def poll(url: str, device_code: str) -> requests.Response:
    return requests.post(url + "/token", data={"grant_type": DEVICE_GRANT, "client_id": "tv",
                                               "device_code": device_code}, timeout=10)  # fmt: skip


def sign_in(tab: Tab) -> None:
    page = tab.page
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("wonderland")
    submit(tab.page, "Sign in")
    assert_accessible(tab, "Enter your code")
    page.get_by_label("Authentication code").fill(pyotp.TOTP(TOTP).now())
    submit(tab.page, "Verify")


def test_typing_the_code_signing_in_and_allowing(user_tab: Tab, live) -> None:
    """RFC 8628 §3.3: the user types the code (§6.1: case and dash do not matter), signs
    in (TOTP too), confirms on a page naming the device and showing the code (§5.4), and
    the device's next poll gets the tokens (§3.5)."""
    _, url = live
    codes = start(url)
    tab = user_tab
    page = tab.page
    page.goto(url + "/device")
    assert_accessible(tab, "Connect a device")
    screenshot(tab, "device-code-entry")
    page.get_by_label("Code").fill(codes["user_code"].replace("-", "").lower())
    submit(page, "Continue")
    assert_accessible(tab, "Sign in")
    assert "Living Room TV" in page.content()
    sign_in(tab)
    assert_accessible(tab, "Allow a device?")
    body = page.locator("main").inner_text()
    assert "Living Room TV" in body and codes["user_code"] in body
    assert "See your name and basic profile" in body
    screenshot(tab, "device-confirm")
    assert poll(url, codes["device_code"]).json()["error"] == "authorization_pending"
    submit(page, "Allow")
    assert_accessible(tab, "Device connected")
    screenshot(tab, "device-connected")
    tokens = poll(url, codes["device_code"])
    assert tokens.status_code == 200, tokens.text
    assert tokens.json()["token_type"] == "Bearer" and "id_token" in tokens.json()


def test_the_link_with_the_code_still_asks_and_deny_reaches_the_device(
    user_tab: Tab, live
) -> None:
    """RFC 8628 §3.3.1: verification_uri_complete fills in the code, and the user still
    confirms; Deny reaches the device as access_denied (§3.5)."""
    _, url = live
    codes = start(url)
    tab = user_tab
    page = tab.page
    page.goto(codes["verification_uri_complete"])
    sign_in(tab)
    assert_accessible(tab, "Allow a device?")
    assert poll(url, codes["device_code"]).json()["error"] == "authorization_pending"
    submit(page, "Deny")
    assert_accessible(tab, "Request denied")
    r = poll(url, codes["device_code"])
    assert r.status_code == 400 and r.json()["error"] == "access_denied"
