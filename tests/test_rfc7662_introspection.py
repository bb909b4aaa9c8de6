"""Token introspection: RFC 7662 §2.1 (the request), §2.2 (the response), in-process.

Tokens are minted with Server.issue_tokens and through the token endpoint's
client_credentials grant; time moves with the conftest clock.
"""

from __future__ import annotations

import pytest
from conftest import CONFIDENTIAL, ISSUER, PUBLIC, SECRET, USERNAME, Clock
from wsgi_client import Response, WSGIClient, basic

import codeflow


@pytest.fixture
def wc(server: codeflow.Server) -> WSGIClient:
    return WSGIClient(server.wsgi)


AUTH = basic(CONFIDENTIAL, SECRET)


def introspect(wc: WSGIClient, token: str, **params: str) -> Response:
    return wc.post("/introspect", {"token": token, **params}, headers=AUTH)


def assert_error(r: Response, error: str, status: int) -> None:
    assert (r.status, r.json().get("error")) == (status, error), r.text


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({}, None),
        ({"client_id": CONFIDENTIAL}, None),
        ({"client_id": CONFIDENTIAL, "client_secret": "wrong"}, None),
        ({}, basic(CONFIDENTIAL, "wrong")),
        ({}, {"Authorization": "Bearer some-access-token"}),
    ],
    ids=["none", "client-id-only", "wrong-secret-post", "wrong-secret-basic", "bearer"],
)
def test_introspection_requires_client_authentication(
    server: codeflow.Server,
    wc: WSGIClient,
    params: dict[str, str],
    headers: dict[str, str] | None,
) -> None:
    """RFC 7662 §2.1: "To prevent token scanning attacks, the endpoint MUST also require some
    form of authorization to access this endpoint"; RFC 7662 §2.3: "If the protected
    resource uses OAuth 2.0 client credentials to authenticate to the introspection endpoint
    and its credentials are invalid, the authorization server responds with an HTTP 401
    (Unauthorized) as described in Section 5.2 of OAuth 2.0"."""
    issued = server.issue_tokens(USERNAME, CONFIDENTIAL, "profile")
    r = wc.post("/introspect", {"token": issued["access_token"], **params}, headers=headers)
    assert_error(r, "invalid_client", 401)
    assert "active" not in r.json()


def test_wrong_basic_secret_gets_www_authenticate(wc: WSGIClient) -> None:
    """RFC 7662 §2.3: invalid credentials get "an HTTP 401 (Unauthorized) as described in
    Section 5.2 of OAuth 2.0", which for HTTP Basic says the server MUST "include the
    "WWW-Authenticate" response header field matching the authentication scheme"."""
    r = wc.post("/introspect", {"token": "x"}, headers=basic(CONFIDENTIAL, "wrong"))
    assert_error(r, "invalid_client", 401)
    assert r.headers["www-authenticate"].lower().startswith("basic")


def test_public_client_may_not_introspect(server: codeflow.Server, wc: WSGIClient) -> None:
    """RFC 7662 §2.1: "the endpoint MUST also require some form of authorization"; a public
    client has no credentials, so it cannot authorize (codeflow answers invalid_client)."""
    issued = server.issue_tokens(USERNAME, PUBLIC, "profile")
    r = wc.post("/introspect", {"token": issued["access_token"], "client_id": PUBLIC})
    assert_error(r, "invalid_client", 401)
    assert "active" not in r.json()


def test_active_access_token_fields(server: codeflow.Server, wc: WSGIClient, clock: Clock) -> None:
    """RFC 7662 §2.2: "active REQUIRED. Boolean indicator of whether or not the presented
    token is currently active", with the OPTIONAL scope, client_id, username, token_type,
    exp, iat, sub and iss describing it."""
    issued = server.issue_tokens(USERNAME, PUBLIC, "profile email")
    r = introspect(wc, issued["access_token"])
    assert r.status == 200, r.text
    assert r.headers["content-type"].split(";")[0] == "application/json"
    body = r.json()
    assert body["active"] is True
    assert set(body["scope"].split(" ")) == {"profile", "email"}
    assert body["client_id"] == PUBLIC  # the token's client, not the introspecting one
    assert body["sub"] == USERNAME
    assert body["username"] == USERNAME
    assert body["iss"] == ISSUER
    assert body["token_type"] == "Bearer"
    assert body["iat"] == int(clock.now)
    assert body["exp"] == int(clock.now) + codeflow.ACCESS_TOKEN_LIFETIME
    assert all(isinstance(body[k], int) for k in ("iat", "exp"))


def test_active_refresh_token(server: codeflow.Server, wc: WSGIClient, clock: Clock) -> None:
    """RFC 7662 §2.1: the token may be "the string value of the token", access or refresh
    ("token_type_hint" lists both); an active refresh token is described like any other."""
    issued = server.issue_tokens(USERNAME, CONFIDENTIAL, "profile api:read")
    body = introspect(wc, issued["refresh_token"], token_type_hint="refresh_token").json()
    assert body["active"] is True
    assert body["scope"] == "profile api:read"
    assert body["client_id"] == CONFIDENTIAL
    assert body["sub"] == USERNAME
    assert body["exp"] == int(clock.now) + codeflow.REFRESH_TOKEN_LIFETIME


def test_client_credentials_token_has_no_user(wc: WSGIClient) -> None:
    """RFC 7662 §2.2: "sub OPTIONAL ... Usually a machine-readable identifier of the resource
    owner who authorized this token"; a client_credentials token has none."""
    r = wc.post("/token", {"grant_type": "client_credentials", "scope": "api:read"}, headers=AUTH)
    assert r.status == 200, r.text
    body = introspect(wc, r.json()["access_token"]).json()
    assert body["active"] is True
    assert body["client_id"] == CONFIDENTIAL
    assert body["scope"] == "api:read"
    assert "sub" not in body and "username" not in body


def test_a_wrong_token_type_hint_is_ignored(server: codeflow.Server, wc: WSGIClient) -> None:
    """RFC 7662 §2.1: "If the server is unable to locate the token using the given hint, it
    MUST extend its search across all of its supported token types."""
    issued = server.issue_tokens(USERNAME, CONFIDENTIAL, "profile")
    body = introspect(wc, issued["access_token"], token_type_hint="refresh_token").json()
    assert body["active"] is True


@pytest.mark.parametrize(
    ("elapsed", "is_active"),
    [(codeflow.ACCESS_TOKEN_LIFETIME - 1, True), (codeflow.ACCESS_TOKEN_LIFETIME, False)],
    ids=["just-before-expiry", "expired"],
)
def test_expired_token_is_inactive_and_nothing_else(
    server: codeflow.Server, wc: WSGIClient, clock: Clock, elapsed: int, is_active: bool
) -> None:
    """RFC 7662 §2.2: "If the introspection call is properly authorized but the token is not
    active, does not exist on this server, or the protected resource is not allowed to
    introspect this particular token, then the authorization server MUST return an
    introspection response with the "active" field set to "false". ... the authorization
    server SHOULD NOT include any additional information about an inactive token"."""
    issued = server.issue_tokens(USERNAME, CONFIDENTIAL, "profile")
    clock.advance(elapsed)
    r = introspect(wc, issued["access_token"])
    assert r.status == 200, r.text
    if is_active:
        assert r.json()["active"] is True
    else:
        assert r.json() == {"active": False}


def test_revoked_token_is_inactive(server: codeflow.Server, wc: WSGIClient) -> None:
    """RFC 7662 §4: "If the token has been revoked after it was issued, the authorization
    server MUST determine whether or not such a revocation has taken place"; RFC 7662 §2.2:
    a token that is not active gets "active": false."""
    issued = server.issue_tokens(USERNAME, CONFIDENTIAL, "profile")
    assert wc.post("/revoke", {"token": issued["refresh_token"]}, headers=AUTH).status == 200
    for kind in ("access_token", "refresh_token"):
        r = introspect(wc, issued[kind])
        assert r.status == 200, r.text
        assert r.json() == {"active": False}


def test_unknown_token_is_inactive(wc: WSGIClient) -> None:
    """RFC 7662 §2.2: a token that does "not exist on this server" MUST get a response with
    "active" set to false."""
    r = introspect(wc, "never-issued-by-this-server")
    assert r.status == 200, r.text
    assert r.json() == {"active": False}


def test_missing_token_is_invalid_request(wc: WSGIClient) -> None:
    """RFC 7662 §2.1: "token REQUIRED. The string value of the token."; a request without it
    is RFC 6749 §5.2 invalid_request: "The request is missing a required parameter"."""
    r = wc.post("/introspect", {"token_type_hint": "access_token"}, headers=AUTH)
    assert_error(r, "invalid_request", 400)
