"""Token revocation: RFC 7009 §2.1 (the request), §2.2 (the response), in-process.

Tokens are minted with Server.issue_tokens; whether a token is still good is read
through the introspection endpoint (RFC 7662) and by using it at the token endpoint.
"""

from __future__ import annotations

import pytest
from conftest import CONFIDENTIAL, PUBLIC, SECRET, USERNAME
from wsgi_client import Response, WSGIClient, basic

import codeflow


@pytest.fixture
def wc(server: codeflow.Server) -> WSGIClient:
    return WSGIClient(server.wsgi)


AUTH = basic(CONFIDENTIAL, SECRET)


def revoke(wc: WSGIClient, token: str, **params: str) -> Response:
    return wc.post("/revoke", {"token": token, **params}, headers=AUTH)


def active(wc: WSGIClient, token: str) -> bool:
    r = wc.post("/introspect", {"token": token}, headers=AUTH)
    assert r.status == 200, r.text
    return r.json()["active"]


def refresh(wc: WSGIClient, refresh_token: str) -> Response:
    return wc.post(
        "/token", {"grant_type": "refresh_token", "refresh_token": refresh_token}, headers=AUTH
    )


def assert_error(r: Response, error: str, status: int) -> None:
    assert (r.status, r.json().get("error")) == (status, error), r.text


def test_revoking_an_access_token_revokes_only_that_token(
    server: codeflow.Server, wc: WSGIClient
) -> None:
    """RFC 7009 §2.1: "If the token passed to the request is an access token, the server MAY
    revoke the respective refresh token as well." codeflow does not: the access token goes,
    the refresh token keeps working."""
    issued = server.issue_tokens(USERNAME, CONFIDENTIAL, "profile api:read")
    sibling = server.issue_tokens(USERNAME, CONFIDENTIAL, "profile")

    r = revoke(wc, issued["access_token"])

    assert r.status == 200, r.text
    assert not active(wc, issued["access_token"])
    assert active(wc, issued["refresh_token"])
    assert active(wc, sibling["access_token"])
    renewed = refresh(wc, issued["refresh_token"])
    assert renewed.status == 200, renewed.text
    assert active(wc, renewed.json()["access_token"])


def test_revoking_a_refresh_token_revokes_the_grant(
    server: codeflow.Server, wc: WSGIClient
) -> None:
    """RFC 7009 §2.1: "If the particular token is a refresh token and the authorization
    server supports the revocation of access tokens, then the authorization server SHOULD
    also invalidate all access tokens based on the same authorization grant"."""
    issued = server.issue_tokens(USERNAME, CONFIDENTIAL, "profile api:read")
    rotated = refresh(wc, issued["refresh_token"]).json()
    other_grant = server.issue_tokens(USERNAME, CONFIDENTIAL, "profile")

    r = revoke(wc, rotated["refresh_token"])

    assert r.status == 200, r.text
    for token in (issued["access_token"], rotated["access_token"], rotated["refresh_token"]):
        assert not active(wc, token)
    assert_error(refresh(wc, rotated["refresh_token"]), "invalid_grant", 400)
    assert active(wc, other_grant["access_token"])
    assert active(wc, other_grant["refresh_token"])


@pytest.mark.parametrize(
    ("kind", "hint"),
    [("access_token", "refresh_token"), ("refresh_token", "access_token")],
    ids=["access-with-refresh-hint", "refresh-with-access-hint"],
)
def test_a_wrong_token_type_hint_does_not_stop_revocation(
    server: codeflow.Server, wc: WSGIClient, kind: str, hint: str
) -> None:
    """RFC 7009 §2.1: "If the server is unable to locate the token using the given hint, it
    MUST extend its search across all of its supported token types."""
    issued = server.issue_tokens(USERNAME, CONFIDENTIAL, "profile")
    assert revoke(wc, issued[kind], token_type_hint=hint).status == 200
    assert not active(wc, issued[kind])


@pytest.mark.parametrize("hint", [None, "access_token", "refresh_token", "something_else"])
def test_unknown_token_is_200(wc: WSGIClient, hint: str | None) -> None:
    """RFC 7009 §2.2: "Note: invalid tokens do not cause an error response since the client
    cannot handle such an error in a reasonable way"."""
    params = {"token_type_hint": hint} if hint else {}
    r = revoke(wc, "never-issued-by-this-server", **params)
    assert r.status == 200, r.text


def test_revoking_twice_is_200(server: codeflow.Server, wc: WSGIClient) -> None:
    """RFC 7009 §2.2: "The authorization server responds with HTTP status code 200 if the
    token has been revoked successfully or if the client submitted an invalid token."""
    issued = server.issue_tokens(USERNAME, CONFIDENTIAL, "profile")
    assert revoke(wc, issued["refresh_token"]).status == 200
    assert revoke(wc, issued["refresh_token"]).status == 200
    assert revoke(wc, issued["access_token"]).status == 200


def test_token_of_another_client_is_refused_and_stays_active(
    server: codeflow.Server, wc: WSGIClient
) -> None:
    """RFC 7009 §2.1: the server "verifies whether the token was issued to the client making
    the revocation request. If this validation fails, the request is refused and the client
    is informed of the error": 400 unauthorized_client, and the token is left alone."""
    theirs = server.issue_tokens(USERNAME, PUBLIC, "openid offline_access")
    for kind in ("access_token", "refresh_token"):
        r = revoke(wc, theirs[kind])
        assert r.status == 400, r.text
        assert r.json()["error"] == "unauthorized_client"
        stored = server.storage.get_token(codeflow.token_hash(theirs[kind]))
        assert stored is not None and not stored.revoked


def test_missing_token_is_invalid_request(wc: WSGIClient) -> None:
    """RFC 7009 §2.1: "token REQUIRED"; RFC 7009 §2.2.1: the error response is that of
    RFC 6749 §5.2, here invalid_request."""
    r = wc.post("/revoke", {"token_type_hint": "access_token"}, headers=AUTH)
    assert_error(r, "invalid_request", 400)


def test_public_client_revokes_with_its_client_id(server: codeflow.Server, wc: WSGIClient) -> None:
    """RFC 7009 §2.1: "The client also includes its authentication credentials as described
    in Section 2.3. of [RFC6749]"; a public client identifies itself with client_id."""
    issued = server.issue_tokens(USERNAME, PUBLIC, "profile")
    r = wc.post("/revoke", {"token": issued["refresh_token"], "client_id": PUBLIC})
    assert r.status == 200, r.text
    assert not active(wc, issued["refresh_token"])
    assert not active(wc, issued["access_token"])


def test_wrong_secret_via_basic_is_401_with_www_authenticate(
    server: codeflow.Server, wc: WSGIClient
) -> None:
    """RFC 7009 §2.2.1: "invalid_client" per RFC 6749 §5.2, which for HTTP Basic "MUST respond
    with an HTTP 401 (Unauthorized) status code and include the "WWW-Authenticate" response
    header field"; the token is not revoked."""
    issued = server.issue_tokens(USERNAME, CONFIDENTIAL, "profile")
    r = wc.post("/revoke", {"token": issued["access_token"]}, headers=basic(CONFIDENTIAL, "x"))
    assert_error(r, "invalid_client", 401)
    assert r.headers["www-authenticate"].lower().startswith("basic")
    assert active(wc, issued["access_token"])


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"client_id": CONFIDENTIAL},
        {"client_id": CONFIDENTIAL, "client_secret": "wrong"},
        {"client_id": "no-such-client"},
    ],
    ids=["no-client", "no-secret", "wrong-secret", "unknown-client"],
)
def test_failed_client_authentication_is_401(
    server: codeflow.Server, wc: WSGIClient, params: dict[str, str]
) -> None:
    """RFC 7009 §2.1: "The authorization server first validates the client credentials";
    RFC 6749 §5.2: invalid_client "Client authentication failed"."""
    issued = server.issue_tokens(USERNAME, CONFIDENTIAL, "profile")
    r = wc.post("/revoke", {"token": issued["access_token"], **params})
    assert_error(r, "invalid_client", 401)
    assert active(wc, issued["access_token"])
