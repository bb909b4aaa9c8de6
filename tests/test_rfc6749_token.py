"""The token endpoint: RFC 6749 §4.1.3, §5.1, §5.2, §6, §4.4, §2.3, §2.3.1, §3.1,
with refresh-token rotation and reuse detection per RFC 9700 §4.14.2.

In-process through wsgiref.validate; codes come from an auto-approving server, so no
browser is needed. The concurrency tests run over real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import base64
import threading
import urllib.parse
from collections.abc import Callable

import pytest
import requests
from conftest import (
    CONFIDENTIAL,
    PUBLIC,
    REDIRECT,
    SECRET,
    USERNAME,
    Clock,
    Flow,
    browser_authorize,
    make_server,
    new_flow,
    query_of,
)
from wsgi_client import Response, WSGIClient, basic

import codeflow

THREADS = 16
ODD_CLIENT, ODD_SECRET = "svc+odd:1", "s3:cr%41t+ é/="  # characters §2.3.1 encoding changes


def oauth_flow(client_id: str = CONFIDENTIAL, **overrides: str | None) -> Flow:
    """conftest's new_flow without "openid": plain OAuth, so no ID token is signed here."""
    return new_flow(client_id, **{"scope": "profile", **overrides})


@pytest.fixture
def srv(clock: Clock) -> codeflow.Server:
    """The conftest server, approving every authorization request as alice at once."""
    return make_server(clock, auto_approve=USERNAME)


@pytest.fixture
def wc(srv: codeflow.Server) -> WSGIClient:
    return WSGIClient(srv.wsgi)


def get_code(wc: WSGIClient, flow: Flow) -> str:
    r = wc.get("/authorize", params=flow.params)
    assert r.status == 302, r.text
    query = query_of(r.location or "")
    assert "code" in query, query
    return query["code"]


def redeem(
    wc: WSGIClient,
    flow: Flow,
    code: str,
    client_id: str = CONFIDENTIAL,
    secret: str | None = SECRET,
    **overrides: str | None,
) -> Response:
    """POST an authorization_code token request; ``secret=None`` sends only client_id."""
    data: dict[str, str | None] = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": flow.params.get("redirect_uri"),
        "code_verifier": flow.verifier,
    }
    headers = None
    if secret is None:
        data["client_id"] = client_id
    else:
        headers = basic(client_id, secret)
    data.update(overrides)
    return wc.post("/token", {k: v for k, v in data.items() if v is not None}, headers=headers)


def tokens(wc: WSGIClient, client_id: str = CONFIDENTIAL, **params: str) -> dict:
    """Run a whole authorization code flow for alice and return the token response."""
    flow = oauth_flow(client_id, **params)
    r = redeem(
        wc, flow, get_code(wc, flow), client_id, SECRET if client_id == CONFIDENTIAL else None
    )
    assert r.status == 200, r.text
    return r.json()


def refresh(
    wc: WSGIClient, refresh_token: str, client_id: str = CONFIDENTIAL, **params: str
) -> Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token, **params}
    if client_id == CONFIDENTIAL:
        return wc.post("/token", data, headers=basic(CONFIDENTIAL, SECRET))
    return wc.post("/token", {**data, "client_id": client_id})


def introspect(wc: WSGIClient, token: str) -> dict:
    r = wc.post("/introspect", {"token": token}, headers=basic(CONFIDENTIAL, SECRET))
    assert r.status == 200, r.text
    return r.json()


def active(wc: WSGIClient, token: str) -> bool:
    return introspect(wc, token)["active"]


def assert_error(r: Response, error: str, status: int = 400) -> None:
    assert (r.status, r.json().get("error")) == (status, error), r.text
    assert r.headers["content-type"].startswith("application/json")


###############################################################################
# RFC 6749 §4.1.3, §5.1: exchanging a code #####################################
###############################################################################


def test_code_exchange_returns_the_access_token_response(
    wc: WSGIClient, srv: codeflow.Server
) -> None:
    """RFC 6749 §5.1: the response carries access_token, token_type, expires_in, scope and
    refresh_token, and "The authorization server MUST include the HTTP "Cache-Control"
    response header field with a value of "no-store" ... as well as the "Pragma" response
    header field with a value of "no-cache"."""
    flow = oauth_flow(scope="profile api:read")
    r = redeem(wc, flow, get_code(wc, flow))

    assert r.status == 200, r.text
    assert r.headers["content-type"].split(";")[0] == "application/json"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["pragma"] == "no-cache"
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == codeflow.ACCESS_TOKEN_LIFETIME == srv.access_token_lifetime
    assert isinstance(body["expires_in"], int)
    assert set(body["scope"].split(" ")) == {"profile", "api:read"}
    assert body["access_token"] and body["refresh_token"]
    assert body["access_token"] != body["refresh_token"]
    assert introspect(wc, body["access_token"])["sub"] == USERNAME


def test_public_client_exchanges_a_code_with_client_id_only(wc: WSGIClient) -> None:
    """RFC 6749 §4.1.3: "client_id REQUIRED, if the client is not authenticating with the
    authorization server"; a public client (RFC 6749 §2.1) authenticates with none."""
    flow = oauth_flow(PUBLIC)
    r = redeem(wc, flow, get_code(wc, flow), PUBLIC, secret=None)
    assert r.status == 200, r.text
    assert introspect(wc, r.json()["access_token"])["client_id"] == PUBLIC


def test_missing_code_is_invalid_request(wc: WSGIClient) -> None:
    """RFC 6749 §4.1.3: "code REQUIRED"; RFC 6749 §5.2: invalid_request "The request is
    missing a required parameter"."""
    flow = oauth_flow()
    data = {
        "grant_type": "authorization_code",
        "redirect_uri": REDIRECT,
        "code_verifier": flow.verifier,
    }
    r = wc.post("/token", data, headers=basic(CONFIDENTIAL, SECRET))
    assert_error(r, "invalid_request")


def test_unknown_code_is_invalid_grant(wc: WSGIClient) -> None:
    """RFC 6749 §5.2: invalid_grant: "The provided authorization grant (e.g., authorization
    code, resource owner credentials) or refresh token is invalid, expired, revoked, ..."."""
    r = redeem(wc, oauth_flow(), "not-a-code-this-server-issued")
    assert_error(r, "invalid_grant")


def test_code_used_twice_is_denied_and_its_tokens_revoked(wc: WSGIClient) -> None:
    """RFC 6749 §4.1.2: "If an authorization code is used more than once, the authorization
    server MUST deny the request and SHOULD revoke (when possible) all tokens previously
    issued based on that authorization code."""
    flow = oauth_flow()
    code = get_code(wc, flow)
    first = redeem(wc, flow, code)
    assert first.status == 200, first.text
    issued = first.json()
    assert active(wc, issued["access_token"]) and active(wc, issued["refresh_token"])

    second = redeem(wc, flow, code)

    assert_error(second, "invalid_grant")
    assert "access_token" not in second.json()
    assert not active(wc, issued["access_token"])
    assert not active(wc, issued["refresh_token"])
    assert_error(refresh(wc, issued["refresh_token"]), "invalid_grant")


def test_code_replay_revokes_tokens_refreshed_from_it(wc: WSGIClient) -> None:
    """RFC 6749 §4.1.2: a replayed code SHOULD revoke "all tokens previously issued based on
    that authorization code", including those issued by refreshing its refresh token."""
    flow = oauth_flow()
    code = get_code(wc, flow)
    issued = redeem(wc, flow, code).json()
    rotated = refresh(wc, issued["refresh_token"])
    assert rotated.status == 200, rotated.text

    assert_error(redeem(wc, flow, code), "invalid_grant")

    assert not active(wc, rotated.json()["access_token"])
    assert not active(wc, rotated.json()["refresh_token"])


@pytest.mark.parametrize(
    ("elapsed", "status"),
    [(codeflow.CODE_LIFETIME - 1, 200), (codeflow.CODE_LIFETIME, 400)],
    ids=["just-before-expiry", "at-expiry"],
)
def test_code_expires_after_code_lifetime(
    wc: WSGIClient, clock: Clock, elapsed: int, status: int
) -> None:
    """RFC 6749 §4.1.2: "The authorization code MUST expire shortly after it is issued";
    an expired code is invalid_grant (RFC 6749 §5.2)."""
    flow = oauth_flow()
    code = get_code(wc, flow)
    clock.advance(elapsed)
    r = redeem(wc, flow, code)
    assert r.status == status, r.text
    if status == 400:
        assert_error(r, "invalid_grant")


@pytest.mark.parametrize(
    ("issued_to", "presented_by"),
    [(CONFIDENTIAL, PUBLIC), (PUBLIC, CONFIDENTIAL)],
    ids=["confidential-code-by-public", "public-code-by-confidential"],
)
def test_code_is_bound_to_its_client_and_burned_by_another(
    wc: WSGIClient, issued_to: str, presented_by: str
) -> None:
    """RFC 6749 §4.1.3: the server MUST "ensure that the authorization code was issued to the
    authenticated confidential client, or if the client is public, ensure that the code was
    issued to "client_id" in the request"; a code that fails a check stays used."""
    flow = oauth_flow(issued_to)
    code = get_code(wc, flow)

    def secret(client_id: str) -> str | None:
        return SECRET if client_id == CONFIDENTIAL else None

    assert_error(redeem(wc, flow, code, presented_by, secret(presented_by)), "invalid_grant")
    assert_error(redeem(wc, flow, code, issued_to, secret(issued_to)), "invalid_grant")


@pytest.mark.parametrize(
    "redirect_uri",
    [None, REDIRECT + "/other", REDIRECT + "?x=1", REDIRECT.upper()],
    ids=["missing", "other-path", "extra-query", "case-changed"],
)
def test_code_is_bound_to_the_redirect_uri_it_was_sent_with(
    wc: WSGIClient, redirect_uri: str | None
) -> None:
    """RFC 6749 §4.1.3: the server MUST "ensure that the "redirect_uri" parameter is present
    if the "redirect_uri" parameter was included in the initial authorization request ...
    and if included ensure that their values are identical"; a failed check burns the code."""
    flow = oauth_flow()
    code = get_code(wc, flow)
    assert_error(redeem(wc, flow, code, redirect_uri=redirect_uri), "invalid_grant")
    assert_error(redeem(wc, flow, code), "invalid_grant")


def test_redirect_uri_may_be_omitted_when_the_request_omitted_it(wc: WSGIClient) -> None:
    """RFC 6749 §4.1.3: redirect_uri is "REQUIRED, if the "redirect_uri" parameter was
    included in the authorization request"; otherwise it may be left out."""
    flow = oauth_flow(redirect_uri=None)  # CONFIDENTIAL registers exactly one redirect_uri
    r = redeem(wc, flow, get_code(wc, flow))
    assert r.status == 200, r.text


###############################################################################
# RFC 6749 §2.3: client authentication #########################################
###############################################################################


def test_client_secret_basic_authenticates(wc: WSGIClient) -> None:
    """RFC 6749 §2.3.1: "The authorization server MUST support the HTTP Basic authentication
    scheme for authenticating clients that were issued a client password."""
    flow = oauth_flow()
    r = redeem(wc, flow, get_code(wc, flow), CONFIDENTIAL, SECRET)
    assert r.status == 200, r.text


def test_client_secret_basic_form_urlencodes_id_and_secret(srv: codeflow.Server) -> None:
    """RFC 6749 §2.3.1: "The client identifier is encoded using the
    "application/x-www-form-urlencoded" encoding algorithm ..., and the encoded value is used
    as the username; the client password is encoded using the same algorithm and used as the
    password." """
    srv.add_client(ODD_CLIENT, client_secret=ODD_SECRET, grant_types=["client_credentials"])
    wc = WSGIClient(srv.wsgi)
    r = wc.post(
        "/token", {"grant_type": "client_credentials"}, headers=basic(ODD_CLIENT, ODD_SECRET)
    )
    assert r.status == 200, r.text
    assert introspect(wc, r.json()["access_token"])["client_id"] == ODD_CLIENT
    # Without the §2.3.1 encoding, "+" reads as a space and "%41" as "A": a different secret.
    raw = base64.b64encode(f"{urllib.parse.quote_plus(ODD_CLIENT)}:{ODD_SECRET}".encode())
    r = wc.post(
        "/token",
        {"grant_type": "client_credentials"},
        headers={"Authorization": f"Basic {raw.decode()}"},
    )
    assert_error(r, "invalid_client", 401)


def test_client_secret_post_authenticates(wc: WSGIClient) -> None:
    """RFC 6749 §2.3.1: "the authorization server MAY support including the client
    credentials in the request-body using ... client_id ... client_secret"."""
    flow = oauth_flow()
    r = redeem(wc, flow, get_code(wc, flow), CONFIDENTIAL, secret=None, client_secret=SECRET)
    assert r.status == 200, r.text


def test_wrong_secret_via_basic_is_401_with_www_authenticate(wc: WSGIClient) -> None:
    """RFC 6749 §5.2: invalid_client: "If the client attempted to authenticate via the
    "Authorization" request header field, the authorization server MUST respond with an
    HTTP 401 (Unauthorized) status code and include the "WWW-Authenticate" response header
    field matching the authentication scheme used by the client."""
    r = wc.post(
        "/token", {"grant_type": "client_credentials"}, headers=basic(CONFIDENTIAL, "wrong")
    )
    assert_error(r, "invalid_client", 401)
    assert r.headers["www-authenticate"].lower().startswith("basic")


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic " + base64.b64encode(b"no-such-client:x").decode(),
        "Basic not base64!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
    ],
    ids=["unknown-client", "not-base64", "no-colon"],
)
def test_bad_basic_credentials_are_401_with_www_authenticate(
    wc: WSGIClient, authorization: str
) -> None:
    """RFC 6749 §5.2: a failed HTTP Basic authentication MUST get "HTTP 401 (Unauthorized)"
    and "the "WWW-Authenticate" response header field"."""
    r = wc.post(
        "/token", {"grant_type": "client_credentials"}, headers={"Authorization": authorization}
    )
    assert_error(r, "invalid_client", 401)
    assert r.headers["www-authenticate"].lower().startswith("basic")


def test_wrong_secret_via_post_is_invalid_client(wc: WSGIClient) -> None:
    """RFC 6749 §5.2: invalid_client: "Client authentication failed (e.g., unknown client,
    no client authentication included, or unsupported authentication method)." The
    authorization server "MAY return an HTTP 401 (Unauthorized) status code"."""
    r = wc.post(
        "/token",
        {"grant_type": "client_credentials", "client_id": CONFIDENTIAL, "client_secret": "x"},
    )
    assert_error(r, "invalid_client", 401)


def test_basic_and_client_secret_together_is_invalid_request(wc: WSGIClient) -> None:
    """RFC 6749 §2.3: "The client MUST NOT use more than one authentication method in each
    request."; RFC 6749 §5.2: invalid_request "utilizes more than one mechanism for
    authenticating the client"."""
    r = wc.post(
        "/token",
        {"grant_type": "client_credentials", "client_id": CONFIDENTIAL, "client_secret": SECRET},
        headers=basic(CONFIDENTIAL, SECRET),
    )
    assert_error(r, "invalid_request")


def test_public_client_sending_a_secret_is_invalid_client(wc: WSGIClient) -> None:
    """RFC 6749 §2.3: a public client has no credentials; RFC 6749 §5.2: invalid_client
    "Client authentication failed"."""
    flow = oauth_flow(PUBLIC)
    code = get_code(wc, flow)
    assert_error(
        redeem(wc, flow, code, PUBLIC, secret=None, client_secret="x"), "invalid_client", 401
    )
    assert_error(redeem(wc, flow, code, PUBLIC, secret="x"), "invalid_client", 401)


def test_confidential_client_without_secret_is_invalid_client(wc: WSGIClient) -> None:
    """RFC 6749 §3.2.1: "Confidential clients ... MUST authenticate with the authorization
    server as described in Section 2.3 when making requests to the token endpoint."""
    flow = oauth_flow()
    r = redeem(wc, flow, get_code(wc, flow), CONFIDENTIAL, secret=None)
    assert_error(r, "invalid_client", 401)


def test_no_client_identification_is_invalid_client(wc: WSGIClient) -> None:
    """RFC 6749 §5.2: invalid_client: "no client authentication included"."""
    r = wc.post("/token", {"grant_type": "client_credentials"})
    assert_error(r, "invalid_client", 401)


###############################################################################
# RFC 6749 §5.2, §3.1, §3.2: malformed requests ###############################
###############################################################################


def test_unknown_grant_type_is_unsupported_grant_type(wc: WSGIClient) -> None:
    """RFC 6749 §5.2: unsupported_grant_type: "The authorization grant type is not supported
    by the authorization server."""
    r = wc.post(
        "/token",
        {"grant_type": "password", "username": USERNAME, "password": "x"},
        headers=basic(CONFIDENTIAL, SECRET),
    )
    assert_error(r, "unsupported_grant_type")


def test_missing_grant_type_is_invalid_request(wc: WSGIClient) -> None:
    """RFC 6749 §4.1.3: "grant_type REQUIRED"; RFC 6749 §5.2: invalid_request "The request is
    missing a required parameter"."""
    r = wc.post("/token", {"scope": "api:read"}, headers=basic(CONFIDENTIAL, SECRET))
    assert_error(r, "invalid_request")


def test_grant_the_client_may_not_use_is_unauthorized_client(srv: codeflow.Server) -> None:
    """RFC 6749 §5.2: unauthorized_client: "The authenticated client is not authorized to use
    this authorization grant type."""
    srv.add_client("machine", client_secret="machine-secret", grant_types=["client_credentials"])
    wc = WSGIClient(srv.wsgi)
    r = wc.post(
        "/token",
        {"grant_type": "refresh_token", "refresh_token": "whatever"},
        headers=basic("machine", "machine-secret"),
    )
    assert_error(r, "unauthorized_client")
    r = wc.post(
        "/token",
        {"grant_type": "authorization_code", "code": "whatever"},
        headers=basic("machine", "machine-secret"),
    )
    assert_error(r, "unauthorized_client")


@pytest.mark.parametrize(
    "body",
    [
        b"grant_type=client_credentials&grant_type=client_credentials",
        b"grant_type=client_credentials&scope=api:read&scope=api:write",
    ],
    ids=["grant_type", "scope"],
)
def test_repeated_parameter_is_invalid_request(wc: WSGIClient, body: bytes) -> None:
    """RFC 6749 §3.1: "Request and response parameters MUST NOT be included more than once.";
    RFC 6749 §5.2: invalid_request "repeats a parameter"."""
    r = wc.post("/token", body=body, headers=basic(CONFIDENTIAL, SECRET))
    assert_error(r, "invalid_request")


def test_json_body_is_invalid_request(wc: WSGIClient) -> None:
    """RFC 6749 §4.1.3: the client makes a request "using the
    "application/x-www-form-urlencoded" format"; anything else is invalid_request (§5.2)."""
    r = wc.post(
        "/token",
        body=b'{"grant_type": "client_credentials"}',
        content_type="application/json",
        headers=basic(CONFIDENTIAL, SECRET),
    )
    assert_error(r, "invalid_request")


def test_get_on_the_token_endpoint_is_405(wc: WSGIClient) -> None:
    """RFC 6749 §3.2: "The client MUST use the HTTP "POST" method when making access token
    requests."""
    r = wc.get(
        "/token", params={"grant_type": "client_credentials"}, headers=basic(CONFIDENTIAL, SECRET)
    )
    assert r.status == 405
    assert "POST" in r.headers.get("allow", "")


###############################################################################
# RFC 6749 §6, RFC 9700 §4.14.2: refreshing ###################################
###############################################################################


def test_refresh_rotates_and_reuse_revokes_the_family(wc: WSGIClient) -> None:
    """RFC 9700 §4.14.2: with refresh token rotation, "If a refresh token is compromised and
    subsequently used by both the attacker and the legitimate client, one of them will
    present an invalidated refresh token, which will inform the authorization server of
    the breach. The authorization server cannot determine which party submitted the invalid
    refresh token, but it will revoke the active refresh token.\""""
    first = tokens(wc)
    second = refresh(wc, first["refresh_token"])
    assert second.status == 200, second.text
    second_body = second.json()
    assert second_body["refresh_token"] not in (first["refresh_token"], None)
    assert second_body["access_token"] != first["access_token"]
    assert second.headers["cache-control"] == "no-store"
    third = refresh(wc, second_body["refresh_token"])
    assert third.status == 200, third.text
    assert not active(wc, first["refresh_token"])

    assert_error(refresh(wc, first["refresh_token"]), "invalid_grant")

    for issued in (first, second_body, third.json()):
        assert not active(wc, issued["access_token"])
        assert not active(wc, issued["refresh_token"])
    assert_error(refresh(wc, third.json()["refresh_token"]), "invalid_grant")


def test_refresh_may_narrow_the_scope_and_keeps_the_grant(wc: WSGIClient) -> None:
    """RFC 6749 §6: "If a new refresh token is issued, the refresh token scope MUST be
    identical to that of the refresh token included by the client in the request."; the
    requested scope may be narrower."""
    first = tokens(wc, scope="profile api:read api:write")
    r = refresh(wc, first["refresh_token"], scope="api:read")
    assert r.status == 200, r.text
    body = r.json()
    assert body["scope"] == "api:read"
    assert introspect(wc, body["access_token"])["scope"] == "api:read"
    kept = introspect(wc, body["refresh_token"])["scope"]
    assert set(kept.split(" ")) == {"profile", "api:read", "api:write"}
    r = refresh(wc, body["refresh_token"], scope="profile api:write")
    assert r.status == 200, r.text
    assert set(r.json()["scope"].split(" ")) == {"profile", "api:write"}


def test_refresh_never_widens_the_scope(wc: WSGIClient) -> None:
    """RFC 6749 §6: "The requested scope MUST NOT include any scope not originally granted
    by the resource owner"; RFC 6749 §5.2: invalid_scope "exceeds the scope granted"."""
    first = tokens(wc, scope="profile api:read")
    r = refresh(wc, first["refresh_token"], scope="profile api:read api:write")
    assert_error(r, "invalid_scope")
    assert active(wc, first["refresh_token"])  # a refused request does not spend the token


def test_refresh_token_of_another_client_is_invalid_grant(wc: WSGIClient) -> None:
    """RFC 6749 §6: the server MUST "validate the refresh token" and "ensure that the refresh
    token was issued to the authenticated client"; RFC 6749 §5.2: invalid_grant "was issued
    to another client"."""
    public = tokens(wc, PUBLIC)
    assert_error(refresh(wc, public["refresh_token"], CONFIDENTIAL), "invalid_grant")
    assert refresh(wc, public["refresh_token"], PUBLIC).status == 200


def test_expired_refresh_token_is_invalid_grant(
    wc: WSGIClient, srv: codeflow.Server, clock: Clock
) -> None:
    """RFC 6749 §5.2: invalid_grant: "The provided ... refresh token is invalid, expired,
    revoked ..."."""
    first = tokens(wc)
    clock.advance(srv.refresh_token_lifetime)
    assert_error(refresh(wc, first["refresh_token"]), "invalid_grant")


def test_access_token_is_not_a_refresh_token(wc: WSGIClient) -> None:
    """RFC 6749 §6: the server MUST "validate the refresh token"; an access token is not one
    (RFC 6749 §5.2 invalid_grant)."""
    first = tokens(wc)
    assert_error(refresh(wc, first["access_token"]), "invalid_grant")
    assert active(wc, first["access_token"])


def test_missing_refresh_token_is_invalid_request(wc: WSGIClient) -> None:
    """RFC 6749 §6: "refresh_token REQUIRED"; RFC 6749 §5.2: invalid_request."""
    r = wc.post("/token", {"grant_type": "refresh_token"}, headers=basic(CONFIDENTIAL, SECRET))
    assert_error(r, "invalid_request")


###############################################################################
# RFC 6749 §4.4: client credentials ###########################################
###############################################################################


def test_client_credentials_issues_an_access_token_only(wc: WSGIClient) -> None:
    """RFC 6749 §4.4.3: "If the access token request is valid and authorized, the
    authorization server issues an access token as described in Section 5.1. A refresh token
    SHOULD NOT be included."""
    r = wc.post("/token", {"grant_type": "client_credentials"}, headers=basic(CONFIDENTIAL, SECRET))
    assert r.status == 200, r.text
    body = r.json()
    assert "refresh_token" not in body
    assert body["token_type"] == "Bearer"
    assert r.headers["cache-control"] == "no-store"
    info = introspect(wc, body["access_token"])
    assert info["active"] is True
    assert info["client_id"] == CONFIDENTIAL
    assert "sub" not in info  # no resource owner: the client acts on its own behalf


@pytest.mark.parametrize("allowed", [False, True], ids=["default-grants", "grant-registered"])
def test_client_credentials_is_for_confidential_clients_only(
    srv: codeflow.Server, allowed: bool
) -> None:
    """RFC 6749 §4.4: "The client credentials grant type MUST only be used by confidential
    clients."; RFC 6749 §5.2: unauthorized_client."""
    client_id = PUBLIC
    if allowed:
        client_id = "public-machine"
        srv.add_client(client_id, grant_types=["authorization_code", "client_credentials"])
    wc = WSGIClient(srv.wsgi)
    r = wc.post("/token", {"grant_type": "client_credentials", "client_id": client_id})
    assert_error(r, "unauthorized_client")


def test_client_credentials_scope_must_be_a_subset(wc: WSGIClient) -> None:
    """RFC 6749 §4.4.2: "scope OPTIONAL"; RFC 6749 §5.2: invalid_scope "The requested scope
    is invalid, unknown, malformed, or exceeds the scope granted by the resource owner."""
    auth = basic(CONFIDENTIAL, SECRET)
    r = wc.post("/token", {"grant_type": "client_credentials", "scope": "api:read"}, headers=auth)
    assert r.status == 200, r.text
    assert r.json()["scope"] == "api:read"
    assert introspect(wc, r.json()["access_token"])["scope"] == "api:read"
    r = wc.post(
        "/token", {"grant_type": "client_credentials", "scope": "api:read admin"}, headers=auth
    )
    assert_error(r, "invalid_scope")


###############################################################################
# Server.issue_tokens: minting without a browser ##############################
###############################################################################


def test_issue_tokens_mints_tokens_that_introspect_active(
    srv: codeflow.Server, wc: WSGIClient
) -> None:
    """RFC 6749 §5.1: minted tokens are the token endpoint's response; RFC 7662 §2.2: they
    introspect as "active": true with their scope and user."""
    body = srv.issue_tokens(USERNAME, CONFIDENTIAL, "profile api:read")
    assert body["token_type"] == "Bearer"
    for kind in ("access_token", "refresh_token"):
        info = introspect(wc, body[kind])
        assert info["active"] is True
        assert info["scope"] == "profile api:read"
        assert info["sub"] == USERNAME
    assert refresh(wc, body["refresh_token"]).status == 200

    machine = srv.issue_tokens(None, CONFIDENTIAL, ["api:write"])
    assert "refresh_token" not in machine
    assert introspect(wc, machine["access_token"])["scope"] == "api:write"


###############################################################################
# Concurrency over real HTTP: exactly one winner #############################
###############################################################################


def race(call: Callable[[], requests.Response]) -> list[requests.Response]:
    """Run ``call`` in THREADS threads released together; return every response.

    A connection the server resets is tried again: the stdlib server's listen backlog
    (see test_loopback_server_accepts_a_burst_of_connections) can drop connections it
    never accepted, so the request never reached the app. A retry cannot make a second
    winner: it can only lose a race, never add one.
    """
    barrier = threading.Barrier(THREADS)
    results: list[requests.Response | BaseException | None] = [None] * THREADS

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            for _ in range(5):
                try:
                    results[i] = call()
                    return
                except requests.ConnectionError as exc:
                    results[i] = exc
        except BaseException as exc:  # reported below, in the test's thread
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    responses = [r for r in results if isinstance(r, requests.Response)]
    assert len(responses) == THREADS, results
    return responses


def assert_one_winner(base: str, responses: list[requests.Response]) -> None:
    """One 200, the rest invalid_grant; and since every loser is a replay, the winner's
    tokens end up revoked too, whichever order the threads ran in."""
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [400] * (THREADS - 1), statuses
    assert {r.json()["error"] for r in responses if r.status_code == 400} == {"invalid_grant"}
    (winner,) = (r.json() for r in responses if r.status_code == 200)
    for kind in ("access_token", "refresh_token"):
        r = requests.post(
            base + "/introspect",
            data={"token": winner[kind]},
            auth=(CONFIDENTIAL, SECRET),
            timeout=30,
        )
        assert r.json() == {"active": False}, kind


@pytest.mark.http
def test_concurrent_redemptions_of_one_code_have_one_winner(
    live: tuple[codeflow.Server, str],
) -> None:
    """RFC 6749 §4.1.2: "The client MUST NOT use the authorization code more than once"
    and "If an authorization code is used more than once, the authorization server MUST deny
    the request and SHOULD revoke (when possible) all tokens previously issued based on that
    authorization code": of 16 simultaneous redemptions over HTTP exactly one gets tokens,
    the rest invalid_grant, and the replays revoke the winner's tokens."""
    _, base = live
    flow = oauth_flow(PUBLIC)
    code = browser_authorize(base, flow)["code"]
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": flow.verifier,
        "client_id": PUBLIC,
    }
    assert_one_winner(base, race(lambda: requests.post(base + "/token", data=data, timeout=30)))


@pytest.mark.http
def test_concurrent_rotations_of_one_refresh_token_have_one_winner(
    live: tuple[codeflow.Server, str],
) -> None:
    """RFC 9700 §4.14.2: with rotation, a refresh token is invalidated when it is used, so of
    16 simultaneous refreshes over HTTP exactly one gets new tokens; the others are reuse,
    on which the server "will revoke the active refresh token" (and the grant's tokens)."""
    srv, base = live
    issued = srv.issue_tokens(USERNAME, PUBLIC, "profile")
    data = {
        "grant_type": "refresh_token",
        "refresh_token": issued["refresh_token"],
        "client_id": PUBLIC,
    }
    assert_one_winner(base, race(lambda: requests.post(base + "/token", data=data, timeout=30)))


@pytest.mark.http
def test_loopback_server_accepts_a_burst_of_connections() -> None:
    """DESIGN.md: the thread server is what test suites run against, and "nothing a client
    sends makes a 5xx"; 16 clients connecting at once must each get an answer.

    The listen backlog is checked directly: a burst over a backlog of 5 resets some
    connections only on some runs (and delays others by SYN retransmits), which no
    deterministic test can catch on the wire.
    """
    assert codeflow.ThreadingWSGIServer.request_queue_size >= THREADS
