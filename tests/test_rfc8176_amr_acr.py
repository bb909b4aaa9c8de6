"""Authentication context in ID tokens: amr (OIDC Core §2, with RFC 8176 §2's values pwd,
otp, mfa) and acr (OIDC Core §2); acr_values (OIDC Core §3.1.2.1) asking for a second factor
make the sign-in require the TOTP code (RFC 6238) for that request, and say so to a user
who has none (issue 14 item 5). max_age and auth_time keep working.

In-process through wsgiref.validate with the test clock; ID tokens verified with PyJWT
against the published JWKS.
"""

from __future__ import annotations

from typing import Any

import pyotp
import pytest
from conftest import (
    CONFIDENTIAL,
    PASSWORD,
    REDIRECT,
    SECRET,
    USERNAME,
    Clock,
    Flow,
    form_fields,
    make_server,
    new_flow,
    query_of,
)
from oidc_helpers import approve, is_consent_page, is_login_page, jwks_keys, redeem, verify_jwt
from wsgi_client import Response, WSGIClient, basic

import codeflow

# OpenID Provider Authentication Policy Extension 1.0 §4: the multi-factor policy, the
# acr value relying parties send to ask for a second factor (Auth0's and Okta's docs too).
MFA = "http://schemas.openid.net/pape/policies/2007/06/multi-factor"
TOTP_SECRET = pyotp.random_base32()
BOB, BOB_PASSWORD = "bob", "bob-password"


@pytest.fixture
def srv(clock: Clock) -> codeflow.Server:
    """alice signs in with a password and a TOTP code; bob with a password only."""
    srv = make_server(clock)
    srv.set_totp(USERNAME, TOTP_SECRET)
    srv.add_user(BOB, BOB_PASSWORD, claims={"name": "Bob"})
    return srv


@pytest.fixture
def browser(srv: codeflow.Server) -> WSGIClient:
    return WSGIClient(srv.wsgi)


def sign_in(
    browser: WSGIClient, clock: Clock, page: Response, username: str, password: str
) -> Response:
    """Fill in the login page, and the code page if it follows; return where that leads."""
    assert is_login_page(page), page.text
    r = browser.post("/login", {**form_fields(page.text), "username": username,
                                "password": password})  # fmt: skip
    if r.status == 200 and 'name="otp"' in r.text:
        otp = pyotp.TOTP(TOTP_SECRET).at(clock())
        r = browser.post("/login", {**form_fields(r.text), "otp": otp})
    if r.status == 303:
        r = browser.get(r.location or "")
        if is_consent_page(r):
            r = approve(browser, r)
    return r


def id_token_of(browser: WSGIClient, clock: Clock, flow: Flow, r: Response) -> dict[str, Any]:
    assert r.status in (302, 303), r.text
    tokens = redeem(browser, flow, query_of(r.location or "")["code"])
    return verify_jwt(tokens["id_token"], jwks_keys(browser), audience=CONFIDENTIAL,
                      now=clock())[1]  # fmt: skip


def test_a_password_sign_in_says_pwd(browser: WSGIClient, clock: Clock) -> None:
    """OIDC Core §2: amr "Authentication Methods References. JSON array of strings that are
    identifiers for authentication methods used in the authentication"; RFC 8176 §2: "pwd
    Password-based authentication". acr: the class that password alone meets, one of
    discovery's acr_values_supported, and not the multi-factor one."""
    flow = new_flow()
    r = sign_in(browser, clock, browser.get("/authorize", params=flow.params), BOB, BOB_PASSWORD)
    claims = id_token_of(browser, clock, flow, r)
    assert claims["amr"] == ["pwd"]
    supported = browser.get("/.well-known/openid-configuration").json()["acr_values_supported"]
    assert claims["acr"] in supported and claims["acr"] != MFA


def test_a_sign_in_with_a_code_says_pwd_otp_mfa(browser: WSGIClient, clock: Clock) -> None:
    """RFC 8176 §2: "otp One-time password"; "mfa Multiple-factor authentication. When this
    is present, specific authentication methods used may also be included"; the acr is the
    multi-factor class (PAPE §4)."""
    flow = new_flow()
    r = sign_in(browser, clock, browser.get("/authorize", params=flow.params), USERNAME, PASSWORD)
    claims = id_token_of(browser, clock, flow, r)
    assert sorted(claims["amr"]) == ["mfa", "otp", "pwd"]
    assert claims["acr"] == MFA


def test_acr_values_asking_for_a_second_factor_tell_a_user_without_one(
    browser: WSGIClient, clock: Clock
) -> None:
    """OIDC Core §3.1.2.1: acr_values "Requested Authentication Context Class Reference
    values ... specifies the acr values that the Authorization Server is being requested to
    use for processing this Authentication Request". Asked for the multi-factor class, a user
    with no second factor is told so in plain words after the password, gets no code, and
    may go back to the app, which learns why (OpenID Connect Core Error Code
    unmet_authentication_requirements 1.0: "The Authorization Server is unable to meet the
    requirements of the Relying Party for the authentication of the End-User")."""
    flow = new_flow(acr_values=MFA)
    r = sign_in(browser, clock, browser.get("/authorize", params=flow.params), BOB, BOB_PASSWORD)
    assert r.status == 403, r.text
    assert "second factor" in r.text and "Confidential App" in r.text
    assert "codeflow_session" not in browser.cookies
    back = browser.post("/login", {**form_fields(r.text), "cancel": "yes"})
    assert back.status == 303, back.text
    query = query_of(back.location or "")
    assert back.location.startswith(REDIRECT + "?")
    assert query["error"] == "unmet_authentication_requirements"
    assert query["state"] == flow.params["state"] and "code" not in query


def test_a_session_without_a_second_factor_does_not_satisfy_it(
    browser: WSGIClient, clock: Clock
) -> None:
    """OIDC Core §3.1.2.1 acr_values: the request's class applies to this request: bob,
    signed in with his password, is told at once that the app asks for a second factor; with
    prompt=none he is not shown a page (§3.1.2.1: "MUST NOT display any authentication or
    consent user interface pages") and the app gets the error."""
    flow = new_flow()
    sign_in(browser, clock, browser.get("/authorize", params=flow.params), BOB, BOB_PASSWORD)
    asked = browser.get("/authorize", params=new_flow(acr_values=MFA).params)
    assert asked.status == 403 and "second factor" in asked.text
    silent = new_flow(acr_values=MFA, prompt="none")
    r = browser.get("/authorize", params=silent.params)
    assert r.status == 302, r.text
    assert query_of(r.location or "")["error"] == "unmet_authentication_requirements"


def test_acr_values_that_accept_a_password_do_not_require_a_code(
    browser: WSGIClient, clock: Clock
) -> None:
    """OIDC Core §3.1.2.1: acr_values is a "Space-separated string that specifies the acr
    values ... with the values appearing in order of preference": a list that names the
    password class too is met by a password; values we do not know are ignored."""
    supported = browser.get("/.well-known/openid-configuration").json()["acr_values_supported"]
    password_class = next(v for v in supported if v != MFA)
    for values in (f"{password_class} {MFA}", "urn:example:unknown"):
        flow = new_flow(acr_values=values)
        browser.cookies.clear()
        r = sign_in(browser, clock, browser.get("/authorize", params=flow.params), BOB,
                    BOB_PASSWORD)  # fmt: skip
        claims = id_token_of(browser, clock, flow, r)
        assert claims["acr"] == password_class and claims["amr"] == ["pwd"]


def test_a_second_factor_with_max_age_and_auth_time(
    browser: WSGIClient, srv: codeflow.Server, clock: Clock
) -> None:
    """OIDC Core §3.1.2.1 max_age: past it "the OP MUST attempt to actively re-authenticate
    the End-User", and §2 auth_time is when that happened; asked for the multi-factor class,
    the new sign-in asks for the code again and the ID token says so."""
    flow = new_flow(acr_values=MFA)
    first = sign_in(browser, clock, browser.get("/authorize", params=flow.params), USERNAME,
                    PASSWORD)  # fmt: skip
    signed_in_at = int(clock())
    assert id_token_of(browser, clock, flow, first)["auth_time"] == signed_in_at
    clock.advance(120)
    again = new_flow(acr_values=MFA, max_age="60")
    page = browser.get("/authorize", params=again.params)
    assert is_login_page(page)
    clock.advance(31)  # the next TOTP step: a code is accepted once (RFC 6238 §5.2)
    claims = id_token_of(browser, clock, again, sign_in(browser, clock, page, USERNAME, PASSWORD))
    assert claims["auth_time"] == int(clock()) > signed_in_at
    assert claims["acr"] == MFA and "otp" in claims["amr"]


def test_a_refreshed_id_token_keeps_the_authentication_context(
    browser: WSGIClient, clock: Clock
) -> None:
    """OIDC Core §12.2: a refreshed ID token follows "the same rules ... as apply when
    issuing an ID Token at the time of the original authentication": the same amr and
    acr, as auth_time."""
    flow = new_flow(scope="openid offline_access")
    r = sign_in(browser, clock, browser.get("/authorize", params=flow.params), USERNAME, PASSWORD)
    tokens = redeem(browser, flow, query_of(r.location or "")["code"])
    again = browser.post(
        "/token", {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        headers=basic(CONFIDENTIAL, SECRET),
    ).json()  # fmt: skip
    keys = jwks_keys(browser)
    first = verify_jwt(tokens["id_token"], keys, audience=CONFIDENTIAL, now=clock())[1]
    second = verify_jwt(again["id_token"], keys, audience=CONFIDENTIAL, now=clock())[1]
    assert (second["amr"], second["acr"]) == (first["amr"], first["acr"])
    assert sorted(second["amr"]) == ["mfa", "otp", "pwd"]


def test_discovery_lists_the_acr_values_and_claims(clock: Clock) -> None:
    """OIDC Discovery §3: acr_values_supported "JSON array containing a list of the
    Authentication Context Class References that this OP supports"; claims_supported names
    amr and acr, which ID tokens carry."""
    doc = WSGIClient(make_server(clock).wsgi).get("/.well-known/openid-configuration").json()
    assert MFA in doc["acr_values_supported"] and len(doc["acr_values_supported"]) == 2
    assert {"amr", "acr"} <= set(doc["claims_supported"])
