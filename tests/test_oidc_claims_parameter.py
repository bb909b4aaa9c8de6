"""The claims request parameter, OIDC Core §5.5: individual claims asked for the ID token
and for userinfo, essential or voluntary, value and values (§5.5.1), advertised with
claims_parameter_supported (OIDC Discovery §3); issue 14 item 3.

In-process through wsgiref.validate with the test clock; ID tokens verified with PyJWT
against the published JWKS.
"""

from __future__ import annotations

import json
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
    form_fields,
    make_server,
    new_flow,
    query_of,
)
from oidc_helpers import (
    approve,
    bearer,
    is_consent_page,
    is_login_page,
    jwks_keys,
    redeem,
    submit_login,
    verify_jwt,
)
from wsgi_client import WSGIClient, basic

import codeflow

MINIMAL = "minimal-app"
NARROW = "narrow-app"  # may ask for openid and email only
MFA = "http://schemas.openid.net/pape/policies/2007/06/multi-factor"
ALICE_CLAIMS = {"name": "Alice Liddell", "email": "alice@example.com", "email_verified": True,
                "phone_number": "+44 20 7946 0000"}  # fmt: skip


def setup(srv: codeflow.Server) -> codeflow.Server:
    scopes = ["openid", "profile", "email", "phone", "offline_access"]
    srv.add_client(MINIMAL, client_secret="s", redirect_uris=[REDIRECT], scopes=scopes,
                   minimal_id_token=True)  # fmt: skip
    srv.add_client(NARROW, client_secret="s", redirect_uris=[REDIRECT], scopes=["openid", "email"])
    srv.set_claims(USERNAME, ALICE_CLAIMS)
    return srv


@pytest.fixture
def auto(clock: Clock) -> codeflow.Server:
    return setup(make_server(clock, auto_approve=USERNAME))


def claims(value: dict[str, Any]) -> str:
    return json.dumps(value)


def tokens_for(srv: codeflow.Server, client_id: str, **params: str) -> dict[str, Any]:
    browser = WSGIClient(srv.wsgi)
    flow = new_flow(client_id, **params)
    r = browser.get("/authorize", params=flow.params)
    assert r.status == 302, r.text
    query = query_of(r.location or "")
    assert "code" in query, query
    secret = SECRET if client_id == CONFIDENTIAL else "s"
    return redeem(browser, flow, query["code"], client_id, secret)


def id_token_claims(srv: codeflow.Server, token: str, audience: str, now: float) -> dict:
    keys = jwks_keys(WSGIClient(srv.wsgi))
    return verify_jwt(token, keys, audience=audience, now=now)[1]


def userinfo(srv: codeflow.Server, access_token: str) -> dict[str, Any]:
    r = WSGIClient(srv.wsgi).get("/userinfo", headers=bearer(access_token))
    assert r.status == 200, r.text
    return r.json()


def test_discovery_says_the_claims_parameter_is_supported(auto: codeflow.Server) -> None:
    """OIDC Discovery §3: claims_parameter_supported "Boolean value specifying whether the OP
    supports use of the claims parameter, with true indicating support. If omitted, the
    default value is false"."""
    doc = WSGIClient(auto.wsgi).get("/.well-known/openid-configuration").json()
    assert doc["claims_parameter_supported"] is True


def test_individual_claims_for_the_id_token(auto: codeflow.Server, clock: Clock) -> None:
    """OIDC Core §5.5: "id_token OPTIONAL. Requests that the listed individual Claims be
    returned in the ID Token"; a client with minimal ID tokens and only openid gets exactly
    the claims it names there, and userinfo none of them (not asked for there)."""
    request = {"id_token": {"email": None, "name": {"essential": True}}}
    tokens = tokens_for(auto, MINIMAL, scope="openid", claims=claims(request))
    got = id_token_claims(auto, tokens["id_token"], MINIMAL, clock())
    assert (got["email"], got["name"]) == ("alice@example.com", "Alice Liddell")
    assert "email_verified" not in got and "phone_number" not in got
    assert userinfo(auto, tokens["access_token"]) == {"sub": USERNAME}


def test_individual_claims_for_userinfo_also_after_a_refresh(
    auto: codeflow.Server, clock: Clock
) -> None:
    """OIDC Core §5.5: "userinfo OPTIONAL. Requests that the listed individual Claims be
    returned from the UserInfo Endpoint"; the grant keeps the request, so the access token
    of a refresh (RFC 6749 §6) answers the same."""
    request = {"userinfo": {"phone_number": None}}
    tokens = tokens_for(auto, MINIMAL, scope="openid offline_access", claims=claims(request))
    assert userinfo(auto, tokens["access_token"]) == {
        "sub": USERNAME, "phone_number": "+44 20 7946 0000"
    }  # fmt: skip
    assert "phone_number" not in id_token_claims(auto, tokens["id_token"], MINIMAL, clock())
    again = WSGIClient(auto.wsgi).post(
        "/token", {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        headers=basic(MINIMAL, "s"),
    ).json()  # fmt: skip
    assert userinfo(auto, again["access_token"])["phone_number"] == "+44 20 7946 0000"


def test_claims_the_client_may_not_ask_for_are_not_returned(
    auto: codeflow.Server, clock: Clock
) -> None:
    """OIDC Core §5.5.1: "even if the Claims are not available because the End-User did not
    authorize their release or they are not present, the Authorization Server MUST NOT
    generate an error when Claims are not returned, whether they are Essential or
    Voluntary"; a client registered for openid and email gets no phone number, nor a claim
    the user does not have."""
    request = {"id_token": {"phone_number": {"essential": True}, "email": None,
                            "nickname": None},
               "userinfo": {"phone_number": None}}  # fmt: skip
    tokens = tokens_for(auto, NARROW, scope="openid", claims=claims(request))
    got = id_token_claims(auto, tokens["id_token"], NARROW, clock())
    assert got["email"] == "alice@example.com"
    assert "phone_number" not in got and "nickname" not in got
    assert userinfo(auto, tokens["access_token"]) == {"sub": USERNAME}


@pytest.mark.parametrize(
    "value",
    ["not json", "[]", '{"id_token": []}', '{"userinfo": {"email": 5}}',
     '{"id_token": {"email": {"essential": "yes"}}}', '{"id_token": {"email": {"values": "a"}}}',
     '{"id_token": {"acr": {"values": [1]}}}'],
)  # fmt: skip
def test_a_malformed_claims_parameter_is_invalid_request(auto: codeflow.Server, value: str) -> None:
    """OIDC Core §5.5: the value is "a JSON object listing the requested Claims", whose
    members are objects of claim names to null or an object (§5.5.1: essential a boolean,
    values an array); anything else is RFC 6749 §4.1.2.1's invalid_request, with no code."""
    flow = new_flow(claims=value)
    r = WSGIClient(auto.wsgi).get("/authorize", params=flow.params)
    assert r.status == 302, r.text
    query = query_of(r.location or "")
    assert query["error"] == "invalid_request" and "claims" in query["error_description"]
    assert "code" not in query


def test_the_consent_page_names_the_individually_requested_claims(
    clock: Clock,
) -> None:
    """OIDC Core §5.5: the claims parameter requests claims beyond the scopes; the user sees
    them on the consent page before they are released (RFC 6749 §4.1: the resource owner
    grants), and the ID token then carries them."""
    srv = setup(make_server(clock))
    browser = WSGIClient(srv.wsgi)
    flow = new_flow(MINIMAL, scope="openid", claims=claims({"id_token": {"email": None}}))
    page = browser.get("/authorize", params=flow.params)
    consent = submit_login(browser, page)
    assert is_consent_page(consent)
    assert "See your email address" in consent.text
    r = approve(browser, consent)
    tokens = redeem(browser, flow, query_of(r.location or "")["code"], MINIMAL, "s")
    assert id_token_claims(srv, tokens["id_token"], MINIMAL, clock())["email"]
    # The consent is remembered with what the page showed: the same request asks no more.
    again = new_flow(MINIMAL, scope="openid", claims=claims({"id_token": {"email": None}}))
    assert browser.get("/authorize", params=again.params).status == 302


def test_an_essential_acr_asking_for_a_second_factor_requires_the_code(clock: Clock) -> None:
    """OIDC Core §5.5.1.1: "the acr Claim is requested as an Essential Claim for the ID Token
    ... with a values parameter requesting specific Authentication Context Class Reference
    values"; OpenID Connect Core Error Code unmet_authentication_requirements 1.0: the error
    when the OP cannot meet it. A user with a TOTP code signs in with it, and the ID token's
    acr is the one asked for; a user without one is told so."""
    srv = setup(make_server(clock))
    secret = pyotp.random_base32()
    srv.set_totp(USERNAME, secret)
    srv.add_user("bob", "bob-password")
    request = claims({"id_token": {"acr": {"essential": True, "values": [MFA]}}})

    bob = WSGIClient(srv.wsgi)
    page = bob.get("/authorize", params=new_flow(claims=request).params)
    r = bob.post("/login", {**form_fields(page.text), "username": "bob",
                            "password": "bob-password"})  # fmt: skip
    assert r.status == 403 and "second factor" in r.text

    alice = WSGIClient(srv.wsgi)
    flow = new_flow(claims=request)
    page = alice.get("/authorize", params=flow.params)
    assert is_login_page(page)
    r = alice.post("/login", {**form_fields(page.text), "username": USERNAME,
                              "password": PASSWORD})  # fmt: skip
    r = alice.post("/login", {**form_fields(r.text), "otp": pyotp.TOTP(secret).at(clock())})
    r = alice.get(r.location or "")
    r = approve(alice, r) if is_consent_page(r) else r
    tokens = redeem(alice, flow, query_of(r.location or "")["code"])
    assert id_token_claims(srv, tokens["id_token"], CONFIDENTIAL, clock())["acr"] == MFA


def test_a_sub_value_is_answered_only_for_that_user(auto: codeflow.Server) -> None:
    """OIDC Core §3.1.2.1 and §5.5.1: "If the sub (subject) Claim is requested with a
    specific value for the ID Token, the Authorization Server MUST only send a positive
    response if the End-User identified by that sub value has an active session with the
    Authorization Server or has been Authenticated as a result of the request"."""
    other = new_flow(claims=claims({"id_token": {"sub": {"value": "bob"}}}), prompt="none")
    r = WSGIClient(auto.wsgi).get("/authorize", params=other.params)
    assert query_of(r.location or "")["error"] == "login_required"
    same = tokens_for(auto, CONFIDENTIAL, claims=claims({"id_token": {"sub": {"value": USERNAME}}}))
    assert same["id_token"]
