"""OpenID Connect Core 1.0: what an ID token says about the user. The claims the granted
scopes allow (§5.4, §2 "ID Tokens MAY contain other Claims"), unless the client asks for
minimal ID tokens; an ID token on refresh (§12.2) with the same sub and current claims.

ID tokens are verified independently with PyJWT against the published JWKS, in-process
through wsgiref.validate with the test clock.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import CONFIDENTIAL, ISSUER, REDIRECT, SECRET, Clock
from oidc_helpers import bearer, jwks_keys, sign_in_for_tokens, verify_jwt
from wsgi_client import WSGIClient, basic

import codeflow

APP, APP_SECRET = "claims-app", "claims-secret"
MINIMAL = "minimal-app"
CAROL = "carol"
CAROL_CLAIMS = {
    "name": "Carol Lewis",
    "given_name": "Carol",
    "family_name": "Lewis",
    "email": "carol@example.com",
    "email_verified": True,
    "address": {"formatted": "1 Main Street, Springfield"},
    "phone_number": "+1 555 0100",
    "phone_number_verified": False,
    "employee_id": "E-42",  # not a standard claim: no scope releases it
}
# OIDC Core §2 and §3.1.3.6: the claims of the protocol, not of the user.
PROTOCOL = {"iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "at_hash", "amr", "acr",
            "sid", "azp"}  # fmt: skip
SCOPE_RELEASES = {
    "openid": set(),
    "openid profile": {"name", "given_name", "family_name"},
    "openid email": {"email", "email_verified"},
    "openid address": {"address"},
    "openid phone": {"phone_number", "phone_number_verified"},
    "openid profile email address phone": {
        "name", "given_name", "family_name", "email", "email_verified", "address",
        "phone_number", "phone_number_verified",
    },
}  # fmt: skip


@pytest.fixture
def srv(server: codeflow.Server) -> codeflow.Server:
    """The conftest server, with carol (many claims), a client for every scope and one that
    asks for minimal ID tokens."""
    scopes = ["openid", "profile", "email", "address", "phone", "offline_access"]
    server.add_client(APP, client_secret=APP_SECRET, redirect_uris=[REDIRECT], scopes=scopes)
    server.add_client(
        MINIMAL, client_secret=APP_SECRET, redirect_uris=[REDIRECT], scopes=scopes,
        minimal_id_token=True,
    )  # fmt: skip
    server.add_user(CAROL, "carol-password", claims=CAROL_CLAIMS)
    return server


@pytest.fixture
def browser(srv: codeflow.Server) -> WSGIClient:
    return WSGIClient(srv.wsgi)


def user_claims(claims: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in claims.items() if k not in PROTOCOL}


def verified(browser: WSGIClient, token: str, now: float, audience: str = APP) -> dict[str, Any]:
    return verify_jwt(token, jwks_keys(browser), audience=audience, now=now)[1]


@pytest.mark.parametrize("scope", SCOPE_RELEASES, ids=lambda s: s.replace(" ", "+"))
def test_id_token_carries_the_claims_the_granted_scopes_allow(
    srv: codeflow.Server, browser: WSGIClient, clock: Clock, scope: str
) -> None:
    """OIDC Core §5.4: "profile OPTIONAL. This scope value requests access to the End-User's
    default profile Claims" (email, address and phone likewise); §2: "ID Tokens MAY contain
    other Claims". The ID token carries what userinfo would answer for the same scopes, and
    nothing a scope does not release (employee_id)."""
    tokens = srv.issue_tokens(CAROL, APP, scope)
    claims = verified(browser, tokens["id_token"], clock())
    assert user_claims(claims) == {name: CAROL_CLAIMS[name] for name in SCOPE_RELEASES[scope]}
    info = browser.get("/userinfo", headers=bearer(tokens["access_token"])).json()
    assert {k: v for k, v in info.items() if k != "sub"} == user_claims(claims)


def test_id_token_of_a_code_flow_greets_the_user_by_name(
    browser: WSGIClient, clock: Clock
) -> None:
    """OIDC Core §5.4 through the whole code flow: with profile and email granted, a relying
    party that reads the user from the ID token (as Authlib's and express-openid-connect's
    docs show) finds the name and email there (issue 14: "Hello, Alice Liddell")."""
    tokens = sign_in_for_tokens(
        browser, APP, APP_SECRET, CAROL, "carol-password", scope="openid profile email"
    )
    claims = verified(browser, tokens["id_token"], clock())
    assert claims["sub"] == CAROL
    assert claims["name"] == "Carol Lewis"
    assert (claims["email"], claims["email_verified"]) == ("carol@example.com", True)
    assert "address" not in claims and "employee_id" not in claims


def test_a_client_may_ask_for_minimal_id_tokens(
    srv: codeflow.Server, browser: WSGIClient, clock: Clock
) -> None:
    """OIDC Core §5.4: the scope claims "are returned from the UserInfo Endpoint ... when a
    response_type value is used that results in an Access Token being issued"; a client
    registered with minimal_id_token gets them there only."""
    tokens = srv.issue_tokens(CAROL, MINIMAL, "openid profile email")
    claims = verified(browser, tokens["id_token"], clock(), MINIMAL)
    assert claims["sub"] == CAROL
    assert user_claims(claims) == {}
    info = browser.get("/userinfo", headers=bearer(tokens["access_token"])).json()
    assert info["name"] == "Carol Lewis"


def refresh(browser: WSGIClient, refresh_token: str, client_id: str = APP, **extra: str) -> Any:
    r = browser.post(
        "/token",
        {"grant_type": "refresh_token", "refresh_token": refresh_token, **extra},
        headers=basic(client_id, APP_SECRET if client_id != CONFIDENTIAL else SECRET),
    )
    assert r.status == 200, r.text
    return r.json()


def test_refresh_answers_with_an_id_token_for_the_same_user_with_current_claims(
    srv: codeflow.Server, browser: WSGIClient, clock: Clock
) -> None:
    """OIDC Core §12.2: "If an ID Token is returned as a result of a token refresh request,
    the following requirements apply: its iss Claim Value MUST be the same as in the ID
    Token issued when the original authentication occurred, its sub Claim Value MUST be the
    same ..., its iat Claim MUST represent the time that the new ID Token is issued, its
    aud Claim Value MUST be the same ..., if the ID Token contains an auth_time Claim, its
    value MUST represent the time of the original authentication - not the time that the
    new ID token is issued, ... it SHOULD NOT have a nonce Claim Value". The user's claims
    are today's: a name changed since sign-in shows in the new ID token."""
    first = sign_in_for_tokens(
        browser, APP, APP_SECRET, CAROL, "carol-password",
        scope="openid profile offline_access", nonce="n-1",
    )  # fmt: skip
    original = verified(browser, first["id_token"], clock())
    clock.advance(600)
    srv.set_claims(CAROL, {"name": "Carol Lewis-Dodgson"})

    again = refresh(browser, first["refresh_token"])
    assert again["id_token"]
    claims = verified(browser, again["id_token"], clock())
    for name in ("iss", "sub", "aud", "auth_time"):
        assert claims[name] == original[name], name
    assert claims["iss"] == ISSUER and claims["sub"] == CAROL
    assert claims["iat"] == int(clock()) > original["iat"]
    assert "nonce" not in claims
    assert claims["name"] == "Carol Lewis-Dodgson"
    info = browser.get("/userinfo", headers=bearer(again["access_token"])).json()
    assert info["sub"] == claims["sub"]


def test_refresh_narrowed_without_openid_gets_no_id_token(
    browser: WSGIClient, clock: Clock
) -> None:
    """OIDC Core §12.2: the response "might not contain an id_token"; RFC 6749 §6: a
    narrowed scope without openid is no OpenID request (OIDC Core §3.1.2.1), so no ID
    token, as for a code flow without openid."""
    first = sign_in_for_tokens(
        browser, APP, APP_SECRET, CAROL, "carol-password", scope="openid profile offline_access"
    )
    again = refresh(browser, first["refresh_token"], scope="profile")
    assert "id_token" not in again
    assert again["scope"] == "profile"


def test_refreshed_id_token_of_a_minimal_client_stays_minimal(
    srv: codeflow.Server, browser: WSGIClient, clock: Clock
) -> None:
    """OIDC Core §12.2: "otherwise, the same rules apply as apply when issuing an ID Token
    at the time of the original authentication": a minimal client's stays minimal."""
    first = srv.issue_tokens(CAROL, MINIMAL, "openid profile offline_access")
    again = refresh(browser, first["refresh_token"], MINIMAL)
    claims = verified(browser, again["id_token"], clock(), MINIMAL)
    assert claims["sub"] == CAROL and user_claims(claims) == {}


def test_minimal_id_token_setting_in_the_config_file(srv: codeflow.Server) -> None:
    """Issue 14 item 2: "a per-client setting to keep ID tokens minimal", in the config file
    as in Python."""
    codeflow.load_config(srv, {"clients": [{
        "client_id": "portal", "client_secret": "s", "redirect_uris": [REDIRECT],
        "minimal_id_token": True,
    }]})  # fmt: skip
    client = srv.storage.get_client("portal")
    assert client is not None and client.minimal_id_token is True
    assert srv.storage.get_client(APP).minimal_id_token is False
