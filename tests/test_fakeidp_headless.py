"""The headless login helper (codeflow_sdk.testing): authorize, login (and TOTP),
consent and the redirect back, over plain HTTP with no browser (RFC 6749 §4.1.1-§4.1.2)."""

from __future__ import annotations

import urllib.parse

import pyotp
import pytest
from codeflow_sdk import Client
from codeflow_sdk.testing import HeadlessBrowser, LoginError, headless_login

REDIRECT = "http://127.0.0.1:9/callback"  # never fetched: the helper returns the URL


@pytest.fixture
def idp(codeflow_live):
    codeflow_live.add_client("app", client_secret="app-secret", redirect_uris=[REDIRECT])
    codeflow_live.add_user("alice", "wonderland", claims={"name": "Alice"})
    return codeflow_live


@pytest.fixture
def client(idp) -> Client:
    return Client(idp.url, "app", "app-secret", redirect_uri=REDIRECT)


def query(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def test_login_and_consent_return_the_callback_with_a_code(idp, client: Client) -> None:
    """RFC 6749 §4.1.2: after login and consent the provider redirects to the client with
    code, state and (RFC 9207) iss; the SDK completes the flow from that URL."""
    url, record = client.start_login("openid profile")
    callback = headless_login(url, "alice", "wonderland")
    assert callback.startswith(REDIRECT + "?")
    assert query(callback)["state"] == record.state and query(callback)["iss"] == idp.url
    tokens = client.finish_login(callback, record)
    assert tokens.sub == "alice"


def test_the_second_factor(idp, client: Client) -> None:
    """RFC 6238: a user with TOTP is asked for the code; the helper computes it."""
    secret = pyotp.random_base32()
    idp.add_user("tom", "tom-password", totp_secret=secret)
    url, record = client.start_login("openid")
    assert client.finish_login(headless_login(url, "tom", "tom-password", totp_secret=secret),
                               record).sub == "tom"  # fmt: skip


def test_a_missing_totp_secret_is_named(idp, client: Client) -> None:
    """The helper says what it lacks rather than guessing."""
    idp.add_user("tom", "tom-password", totp_secret=pyotp.random_base32())
    url, _ = client.start_login("openid")
    with pytest.raises(LoginError, match="TOTP"):
        headless_login(url, "tom", "tom-password")


def test_deny_returns_access_denied(client: Client) -> None:
    """RFC 6749 §4.1.2.1: a denied consent comes back as error=access_denied."""
    url, _ = client.start_login("openid")
    assert query(headless_login(url, "alice", "wonderland", decision="deny"))["error"] == (
        "access_denied"
    )


def test_a_wrong_password_raises(client: Client) -> None:
    """The login page answers again with its error: the helper raises with that message."""
    url, _ = client.start_login("openid")
    with pytest.raises(LoginError, match="Wrong username or password"):
        headless_login(url, "alice", "not-the-password")


def test_an_untrusted_request_raises_with_the_page(idp) -> None:
    """RFC 6749 §4.1.2.1: an unknown redirect_uri gets an error page, never a redirect."""
    url = idp.url + "/authorize?" + urllib.parse.urlencode(
        {"response_type": "code", "client_id": "app", "redirect_uri": "http://evil.example/"}
    )
    with pytest.raises(LoginError, match="400") as caught:
        headless_login(url, "alice", "wonderland")
    assert "redirect_uri" in caught.value.page


def test_one_browser_keeps_its_session(idp, client: Client) -> None:
    """OIDC Core §3.1.2.1 prompt=none: a second login in the same browser needs no
    password, as single sign-on does."""
    browser = HeadlessBrowser()
    url, _ = client.start_login("openid")
    browser.login(url, "alice", "wonderland")
    url, record = client.start_login("openid", prompt="none")
    assert client.finish_login(browser.login(url), record).sub == "alice"


def test_auto_approve_needs_no_credentials(idp, client: Client) -> None:
    """DESIGN "Auto-approve": the helper simply follows the redirect back."""
    idp.auto_approve = "alice"
    url, record = client.start_login("openid")
    assert client.finish_login(headless_login(url), record).sub == "alice"


def test_totp_follows_a_moved_server_clock(idp, client: Client, codeflow_clock) -> None:
    """RFC 6238 §4: the code is for the server's time step; with the server's clock moved
    an hour ahead, the helper computes the code on that clock (``clock=``)."""
    secret = pyotp.random_base32()
    idp.add_user("tom", "tom-password", totp_secret=secret)
    codeflow_clock.advance(3600)
    url, _ = client.start_login("openid")
    with pytest.raises(LoginError, match="TOTP code was refused"):
        headless_login(url, "tom", "tom-password", totp_secret=secret)
    url, _ = client.start_login("openid")
    callback = headless_login(url, "tom", "tom-password", totp_secret=secret, clock=codeflow_clock)
    assert query(callback)["code"]
