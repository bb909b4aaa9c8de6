"""A third party's tests of its web app's login, with codeflow as the fake IdP, through
nothing but the fixtures of codeflow's pytest plugin:

    python -m pytest examples/thirdparty_fixture_tests

The browser is split in two, as in life: ``requests`` talks to the app, and the
headless login helper plays the user on the IdP's own login and consent forms.
"""

# ruff: noqa: S101 -- pytest checks with assert; the test IdP has fake secrets

from __future__ import annotations

import pyotp
import requests
from codeflow_sdk.testing import headless_login


def log_in(app_url: str, username: str = "", password: str = "", **options) -> requests.Response:
    """Open the app's /login, sign in at the IdP, and let the app handle the callback."""
    browser = requests.Session()
    authorize = browser.get(f"{app_url}/login", allow_redirects=False).headers["Location"]
    callback = headless_login(authorize, username, password, **options)
    return browser.get(callback)


def test_login_shows_the_users_name(app_url) -> None:
    r = log_in(app_url, "alice", "wonderland")
    assert r.status_code == 200 and "Hello, Alice Liddell" in r.text


def test_login_with_a_second_factor(idp, app_url) -> None:
    secret = pyotp.random_base32()
    idp.add_user("carol", "carol-password", claims={"name": "Carol"}, totp_secret=secret)
    assert "Hello, Carol" in log_in(app_url, "carol", "carol-password", totp_secret=secret).text


def test_the_app_shows_claims_the_idp_was_told_to_send(idp, app_url) -> None:
    idp.set_claims("bob", {"name": "Robert"})
    idp.auto_approve = "bob"  # no login or consent page at all
    assert "Hello, Robert" in log_in(app_url).text


def test_a_denied_login_is_explained(app_url) -> None:
    r = log_in(app_url, "alice", "wonderland", decision="deny")
    assert r.status_code == 400 and "access_denied" in r.text


def test_the_app_survives_a_failing_token_endpoint(idp, app_url) -> None:
    idp.faults.add(endpoint="token", kind="http_500")
    r = log_in(app_url, "alice", "wonderland")
    assert r.status_code == 400 and "Login failed" in r.text
    assert "Hello, Alice" in log_in(app_url, "alice", "wonderland").text  # it recovers


def test_the_app_refuses_an_id_token_from_another_issuer(idp, app_url) -> None:
    idp.faults.add(endpoint="token", kind="wrong_iss")
    r = log_in(app_url, "alice", "wonderland")
    assert r.status_code == 400 and "invalid_id_token" in r.text


def test_the_app_refuses_an_expired_id_token(idp, app_url) -> None:
    idp.faults.add(endpoint="token", kind="expired")
    assert "invalid_id_token" in log_in(app_url, "alice", "wonderland").text


def test_the_app_uses_pkce_and_basic_auth(idp, app_url) -> None:
    log_in(app_url, "alice", "wonderland")
    token_request = idp.transcript.find(path="/token")[0]
    assert token_request.params["code_verifier"] == "[redacted]"  # present, and kept secret
    assert token_request.request_headers["Authorization"] == "[redacted]"
    assert idp.transcript.relaxations == []  # nothing relaxed for this client
