"""OpenID Connect Core 1.0: the ID token (§2, §3.1.3.3, §3.1.3.6, §3.1.3.7), userinfo
(§5.3 with RFC 6750 §2, §3), the authentication request parameters prompt, max_age,
login_hint, ui_locales (§3.1.2.1), and request objects refused (§6).

ID tokens are verified independently with PyJWT against the key set the server
publishes. In-process through wsgiref.validate with the test clock; one full flow and
the JWKS fetch (PyJWKClient) run over real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import re

import jwt
import pytest
import requests
from conftest import (
    CONFIDENTIAL,
    ISSUER,
    PASSWORD,
    PUBLIC,
    REDIRECT,
    SECRET,
    USERNAME,
    Clock,
    browser_authorize,
    new_flow,
    query_of,
    redeem_over_http,
)
from oidc_helpers import (
    approve,
    basic,
    bearer,
    is_consent_page,
    is_login_page,
    jwks_keys,
    left_half_sha256,
    redeem,
    sign_in_for_tokens,
    submit_login,
    verify_jwt,
)
from wsgi_client import Response, WSGIClient

import codeflow

CLAIMS_APP, CLAIMS_SECRET = "claims-app", "claims-secret"
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


@pytest.fixture
def browser(server: codeflow.Server) -> WSGIClient:
    return WSGIClient(server.wsgi)


@pytest.fixture
def signed_in(server: codeflow.Server, browser: WSGIClient) -> WSGIClient:
    """A browser where alice has signed in and consented to openid profile for CONFIDENTIAL."""
    sign_in_for_tokens(browser)
    return browser


@pytest.fixture
def claims_server(server: codeflow.Server) -> codeflow.Server:
    """The conftest server plus carol, who has many claims, and a client for every scope."""
    server.add_client(
        CLAIMS_APP,
        client_secret=CLAIMS_SECRET,
        redirect_uris=[REDIRECT],
        scopes=["openid", "profile", "email", "address", "phone", "api:read"],
        grant_types=["authorization_code", "client_credentials"],
    )
    server.add_user(CAROL, "carol-password", claims=CAROL_CLAIMS)
    return server


def id_claims(browser: WSGIClient, token: str, now: float, audience: str = CONFIDENTIAL) -> dict:
    """The claims of an ID token that verify_jwt accepted against the published JWKS."""
    return verify_jwt(token, jwks_keys(browser), audience=audience, now=now)[1]


def redirect_query(r: Response) -> dict[str, str]:
    """A redirect back to the client, not a page."""
    assert r.status == 302, r.text
    assert r.location.startswith(REDIRECT + "?"), r.location
    assert not r.body
    return query_of(r.location)


def assert_error_redirect(r: Response, error: str, state: str) -> None:
    q = redirect_query(r)
    assert q["error"] == error, q
    assert q["state"] == state
    assert q["iss"] == ISSUER
    assert "code" not in q


###############################################################################
# The ID token: OIDC Core §2, §3.1.3.3, §3.1.3.6, §3.1.3.7 ####################
###############################################################################


def test_id_token_verifies_against_the_jwks_with_the_required_claims(server, clock, browser):
    """OIDC Core §3.1.3.7: "The Issuer Identifier for the OpenID Provider ... MUST exactly
    match the value of the iss (issuer) Claim", "The Client MUST validate that the aud
    (audience) Claim contains its client_id value", "The current time MUST be before the
    time represented by the exp Claim"; §2: iss, sub, aud, exp, iat are REQUIRED.
    """
    tokens = sign_in_for_tokens(browser)
    header, claims = verify_jwt(
        tokens["id_token"], jwks_keys(browser), audience=CONFIDENTIAL, now=clock()
    )
    assert header["alg"] == "RS256"
    assert claims["iss"] == ISSUER == server.issuer
    assert claims["sub"] == USERNAME
    assert claims["aud"] in (CONFIDENTIAL, [CONFIDENTIAL])
    assert claims["iat"] == int(clock())
    assert claims["exp"] > claims["iat"]
    assert claims["exp"] == claims["iat"] + codeflow.ID_TOKEN_LIFETIME


def test_id_token_is_signed_rs256_by_default_and_names_its_key(server, clock, browser):
    """OIDC Core §3.1.3.7: "The default alg value is RS256"; RFC 7515 §4.1.4: the kid
    header "is a hint indicating which key was used to secure the JWS", and it resolves
    to a key in the published set.
    """
    tokens = sign_in_for_tokens(browser)
    header = jwt.get_unverified_header(tokens["id_token"])
    keys = browser.get("/jwks").json()["keys"]
    published = {k["kid"]: k for k in keys}
    assert header["alg"] == "RS256"
    assert published[header["kid"]]["kty"] == "RSA"
    assert published[header["kid"]]["alg"] == "RS256"


def test_es256_client_gets_an_es256_id_token(server, clock, browser):
    """OIDC Registration §2: id_token_signed_response_alg is the "JWS alg algorithm
    REQUIRED for signing the ID Token issued to this Client"; OIDC Core §3.1.3.7: the alg
    "SHOULD be the default of RS256 or the algorithm sent by the Client in the
    id_token_signed_response_alg parameter during Registration".
    """
    server.add_client(
        "es-app", client_secret="es-secret", redirect_uris=[REDIRECT],
        id_token_signed_response_alg="ES256",
    )  # fmt: skip
    tokens = sign_in_for_tokens(browser, "es-app", "es-secret")
    keys = jwks_keys(browser)
    header, claims = verify_jwt(tokens["id_token"], keys, audience="es-app", now=clock())
    assert header["alg"] == "ES256"
    assert keys[header["kid"]].key_type == "EC"
    assert claims["sub"] == USERNAME
    # The default client, on the same server, still gets RS256.
    rs_header = jwt.get_unverified_header(sign_in_for_tokens(browser)["id_token"])
    assert rs_header["alg"] == "RS256"
    assert rs_header["kid"] != header["kid"]


def test_sub_is_stable_across_logins_and_differs_between_users(server, clock):
    """OIDC Core §2: sub is "A locally unique and never reassigned identifier within the
    Issuer for the End-User"; §5.7: "the sub (subject) and iss (issuer) Claims, used
    together, are the only Claims that an RP can rely upon as a stable identifier".
    """
    server.add_user("bob", "bob-password")
    subs = []
    for username, password in [(USERNAME, PASSWORD), (USERNAME, PASSWORD), ("bob", "bob-password")]:
        browser = WSGIClient(server.wsgi)  # a fresh browser: a new login each time
        tokens = sign_in_for_tokens(browser, username=username, password=password)
        claims = id_claims(browser, tokens["id_token"], clock())
        subs.append(claims["sub"])
        clock.advance(600)
    assert subs[0] == subs[1] == USERNAME
    assert subs[2] == "bob"


def test_auth_time_is_when_the_user_signed_in_not_when_the_token_was_issued(server, clock, browser):
    """OIDC Core §2: auth_time is the "Time when the End-User authentication occurred";
    a later code from the same browser session carries the original login time.
    """
    login_time = int(clock())
    first = sign_in_for_tokens(browser)
    clock.advance(125)
    flow = new_flow()
    r = browser.get("/authorize", params=flow.params)  # session and consent: no page
    later = redeem(browser, flow, redirect_query(r)["code"])
    keys = jwks_keys(browser)
    _, c1 = verify_jwt(first["id_token"], keys, audience=CONFIDENTIAL, now=clock())
    _, c2 = verify_jwt(later["id_token"], keys, audience=CONFIDENTIAL, now=clock())
    assert c1["auth_time"] == c2["auth_time"] == login_time
    assert c2["iat"] == login_time + 125


def test_nonce_is_echoed_when_sent(server, clock, browser):
    """OIDC Core §3.1.3.6 via §2: "If present in the Authentication Request, Authorization
    Servers MUST include a nonce Claim in the ID Token with the Claim Value being the
    nonce value sent in the Authentication Request."
    """
    nonce = "n-0S6_WzA2Mj"
    tokens = sign_in_for_tokens(browser, nonce=nonce)
    claims = id_claims(browser, tokens["id_token"], clock())
    assert claims["nonce"] == nonce


def test_nonce_is_absent_when_not_sent(server, clock, browser):
    """OIDC Core §2: "If present in the Authentication Request, Authorization Servers MUST
    include a nonce Claim"; none was sent, so none is invented.
    """
    tokens = sign_in_for_tokens(browser)
    claims = id_claims(browser, tokens["id_token"], clock())
    assert "nonce" not in claims


def test_nonce_is_bound_to_its_own_code(server, clock, browser):
    """OIDC Core §3.1.3.6 via §2: the nonce Claim Value is "the nonce value sent in the
    Authentication Request" that the code was issued for, not another request's.
    """
    sign_in_for_tokens(browser, nonce="first")
    flow_a, flow_b = new_flow(nonce="nonce-a"), new_flow(nonce="nonce-b")
    code_a = redirect_query(browser.get("/authorize", params=flow_a.params))["code"]
    code_b = redirect_query(browser.get("/authorize", params=flow_b.params))["code"]
    keys = jwks_keys(browser)
    for flow, code, nonce in [(flow_b, code_b, "nonce-b"), (flow_a, code_a, "nonce-a")]:
        tokens = redeem(browser, flow, code)
        _, claims = verify_jwt(tokens["id_token"], keys, audience=CONFIDENTIAL, now=clock())
        assert claims["nonce"] == nonce


def test_at_hash_is_the_left_half_of_the_sha256_of_the_access_token(server, clock, browser):
    """OIDC Core §3.3.2.11: "Its value is the base64url encoding of the left-most half of
    the hash of the octets of the ASCII representation of the access_token value, where
    the hash algorithm used is the hash algorithm used in the alg Header Parameter".
    """
    server.add_client(
        "es-app", client_secret="es-secret", redirect_uris=[REDIRECT],
        id_token_signed_response_alg="ES256",
    )  # fmt: skip
    for client_id, secret in [(CONFIDENTIAL, SECRET), ("es-app", "es-secret")]:
        tokens = sign_in_for_tokens(browser, client_id, secret)
        keys = jwks_keys(browser)
        header, claims = verify_jwt(tokens["id_token"], keys, audience=client_id, now=clock())
        assert header["alg"] in ("RS256", "ES256")  # both hash with SHA-256
        assert claims["at_hash"] == left_half_sha256(tokens["access_token"])
        assert len(claims["at_hash"]) == 22  # 16 octets, base64url without padding


def test_no_id_token_without_the_openid_scope(server, clock, browser):
    """OIDC Core §3.1.2.1: "OpenID Connect requests MUST contain the openid scope value. If
    the openid scope value is not present, the behavior is entirely unspecified": a plain
    OAuth request gets no ID token.
    """
    tokens = sign_in_for_tokens(browser, scope="profile api:read")
    assert tokens["access_token"]
    assert "id_token" not in tokens


def test_client_credentials_grant_gets_no_id_token(server, browser):
    """OIDC Core §3.1.3.3: the ID token is part of the response to an authorization code
    that authenticated an End-User; client_credentials (RFC 6749 §4.4) has no End-User.
    """
    r = browser.post(
        "/token",
        data={"grant_type": "client_credentials", "scope": "openid api:read"},
        headers=basic(CONFIDENTIAL, SECRET),
    )
    assert r.status == 200, r.text
    assert "id_token" not in r.json()


def test_server_issue_tokens_mints_an_id_token_with_extra_claims(server, clock, browser):
    """OIDC Core §5.1: "Additional Claims MAY be used"; Server.issue_tokens(..., claims=)
    adds them to an ID token that verifies like any other, while the §2 REQUIRED claims
    stay the server's own.
    """
    tokens = server.issue_tokens(
        USERNAME,
        CONFIDENTIAL,
        "openid profile",
        claims={"groups": ["admins"], "tenant": "t1", "sub": "mallory", "iss": "https://evil"},
    )
    claims = id_claims(browser, tokens["id_token"], clock())
    assert claims["groups"] == ["admins"]
    assert claims["tenant"] == "t1"
    assert claims["sub"] == USERNAME
    assert claims["iss"] == ISSUER
    assert claims["auth_time"] == int(clock())
    assert claims["at_hash"] == left_half_sha256(tokens["access_token"])


def test_openid_request_without_offline_access_gets_no_refresh_token(server, browser):
    """OIDC Core §11: offline_access "requests that an OAuth 2.0 Refresh Token be issued
    that can be used to obtain an Access Token that grants access to the End-User's
    UserInfo Endpoint even when the End-User is not present"; codeflow's rule (issue 3):
    in an OpenID request, a refresh token only when offline_access was granted.
    """
    tokens = sign_in_for_tokens(browser, scope="openid profile")
    assert "id_token" in tokens
    assert "refresh_token" not in tokens


def test_openid_request_with_offline_access_gets_a_refresh_token(server, browser):
    """OIDC Core §11: "offline_access ... requests that an OAuth 2.0 Refresh Token be
    issued that can be used to obtain an Access Token that grants access to the End-User's
    UserInfo Endpoint even when the End-User is not present (not logged in)."
    """
    tokens = sign_in_for_tokens(browser, scope="openid profile offline_access")
    assert "id_token" in tokens
    assert tokens["refresh_token"]


def test_full_flow_over_http_id_token_verified_with_pyjwkclient(live):
    """OIDC Core §3.1.3.7: "The Client MUST validate the signature of all other ID Tokens
    according to JWS using the algorithm specified in the JWT alg Header Parameter. The
    Client MUST use the keys provided by the Issuer." Over real HTTP, with the wall clock.
    """
    _, url = live
    flow = new_flow(nonce="wire-nonce")
    callback = browser_authorize(url, flow)
    assert callback["iss"] == url
    r = redeem_over_http(url + "/token", callback["code"], flow, timeout=10)
    assert r.status_code == 200, r.text
    tokens = r.json()
    jwks_uri = requests.get(url + "/.well-known/openid-configuration", timeout=10).json()[
        "jwks_uri"
    ]
    signing_key = jwt.PyJWKClient(jwks_uri).get_signing_key_from_jwt(tokens["id_token"])
    claims = jwt.decode(
        tokens["id_token"],
        signing_key.key,
        algorithms=["RS256"],
        audience=CONFIDENTIAL,
        issuer=url,
        options={"require": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce"]},
    )
    assert claims["sub"] == USERNAME
    assert claims["nonce"] == "wire-nonce"
    assert claims["at_hash"] == left_half_sha256(tokens["access_token"])
    info = requests.get(url + "/userinfo", headers=bearer(tokens["access_token"]), timeout=10)
    assert info.status_code == 200, info.text
    assert info.json()["sub"] == claims["sub"]


###############################################################################
# Userinfo: OIDC Core §5.3, RFC 6750 §2, §3 ###################################
###############################################################################

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


@pytest.mark.parametrize("scope", SCOPE_RELEASES, ids=lambda s: s.replace(" ", "+"))
def test_userinfo_returns_sub_and_only_the_claims_the_scopes_allow(claims_server, scope):
    """OIDC Core §5.4: "profile OPTIONAL. This scope value requests access to the End-User's
    default profile Claims" (and email, address, phone likewise); §5.3.2: "The sub Claim
    MUST always be returned in the UserInfo Response."
    """
    tokens = claims_server.issue_tokens(CAROL, CLAIMS_APP, scope)
    r = WSGIClient(claims_server.wsgi).get("/userinfo", headers=bearer(tokens["access_token"]))
    assert r.status == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body.pop("sub") == CAROL
    assert body == {name: CAROL_CLAIMS[name] for name in SCOPE_RELEASES[scope]}


def test_userinfo_sub_matches_the_id_token_sub(server, clock, browser):
    """OIDC Core §5.3.2: "The sub Claim in the UserInfo Response MUST be verified to exactly
    match the sub Claim in the ID Token; if they do not match, the UserInfo Response
    values MUST NOT be used."
    """
    tokens = sign_in_for_tokens(browser, scope="openid profile")
    claims = id_claims(browser, tokens["id_token"], clock())
    r = browser.get("/userinfo", headers=bearer(tokens["access_token"]))
    assert r.status == 200, r.text
    assert r.json() == {"sub": claims["sub"], "name": "Alice"}


def test_userinfo_accepts_get_with_a_bearer_header(claims_server):
    """OIDC Core §5.3.1: "It is RECOMMENDED that the request use the HTTP GET method and the
    Access Token be sent using the Authorization header field."
    """
    tokens = claims_server.issue_tokens(CAROL, CLAIMS_APP, "openid email")
    r = WSGIClient(claims_server.wsgi).get("/userinfo", headers=bearer(tokens["access_token"]))
    assert r.status == 200, r.text
    assert r.json() == {"sub": CAROL, "email": CAROL_CLAIMS["email"], "email_verified": True}


def test_userinfo_accepts_a_bodyless_post_with_a_bearer_header(live):
    """OIDC Core §5.3.1: "The UserInfo Endpoint MUST support the use of the HTTP GET and
    HTTP POST methods"; RFC 6750 §2.1: the Authorization header works with any method, so
    a POST with only the header (no body, hence no Content-Type) is a valid request.
    """
    srv, url = live
    token = srv.issue_tokens(USERNAME, CONFIDENTIAL, "openid")["access_token"]
    r = requests.post(url + "/userinfo", headers=bearer(token), timeout=10)
    assert r.status_code == 200, r.text
    assert r.json() == {"sub": USERNAME}


def test_userinfo_post_with_a_bearer_header_and_an_empty_form_body(claims_server):
    """OIDC Core §5.3.1: "The UserInfo Endpoint MUST support the use of the HTTP GET and
    HTTP POST methods"; here the POST carries the header and an empty form body.
    """
    tokens = claims_server.issue_tokens(CAROL, CLAIMS_APP, "openid")
    r = WSGIClient(claims_server.wsgi).post("/userinfo", headers=bearer(tokens["access_token"]))
    assert r.status == 200, r.text
    assert r.json() == {"sub": CAROL}


def test_userinfo_bearer_scheme_is_case_insensitive(claims_server):
    """RFC 6750 §2.1 uses RFC 7235 credentials, and RFC 7235 §2.1: "It uses a
    case-insensitive token as a means to identify the authentication scheme".
    """
    tokens = claims_server.issue_tokens(CAROL, CLAIMS_APP, "openid")
    r = WSGIClient(claims_server.wsgi).get(
        "/userinfo", headers={"Authorization": "bearer " + tokens["access_token"]}
    )
    assert r.status == 200, r.text


def test_userinfo_accepts_the_token_in_a_form_body(claims_server):
    """RFC 6750 §2.2: "When sending the access token in the HTTP request entity-body, the
    client adds the access token to the request-body using the "access_token" parameter."
    """
    tokens = claims_server.issue_tokens(CAROL, CLAIMS_APP, "openid phone")
    r = WSGIClient(claims_server.wsgi).post(
        "/userinfo", data={"access_token": tokens["access_token"]}
    )
    assert r.status == 200, r.text
    assert r.json() == {
        "sub": CAROL,
        "phone_number": CAROL_CLAIMS["phone_number"],
        "phone_number_verified": False,
    }


def test_userinfo_token_in_header_and_body_is_invalid_request(claims_server):
    """RFC 6750 §2: "Clients MUST NOT use more than one method to transmit the token in
    each request"; §3.1 invalid_request: "uses more than one method for including an
    access token" ... "The resource server SHOULD respond with the HTTP 400".
    """
    token = claims_server.issue_tokens(CAROL, CLAIMS_APP, "openid")["access_token"]
    r = WSGIClient(claims_server.wsgi).post(
        "/userinfo", data={"access_token": token}, headers=bearer(token)
    )
    assert r.status == 400, r.text
    assert r.json()["error"] == "invalid_request"
    assert 'error="invalid_request"' in r.headers["www-authenticate"]


def test_userinfo_without_a_token_is_401_without_an_error_code(claims_server):
    """RFC 6750 §3: "If the protected resource request does not include authentication
    credentials ... the resource server MUST include the HTTP "WWW-Authenticate" response
    header field"; §3.1: "If the request lacks any authentication information ..., the
    resource server SHOULD NOT include an error code or other error information."
    """
    wc = WSGIClient(claims_server.wsgi)
    for r in (wc.get("/userinfo"), wc.post("/userinfo")):
        assert r.status == 401, r.text
        challenge = r.headers["www-authenticate"]
        assert re.fullmatch(r'Bearer realm="[^"]+"', challenge), challenge
        assert "error" not in challenge


@pytest.mark.parametrize(
    "authorization",
    ["Bearer", "Bearer ", "Basic YWxpY2U6cHc=", "Token abc", "Bearer a b", "Bearer \u00e9"],
)
def test_userinfo_with_a_malformed_authorization_header_is_401(claims_server, authorization):
    """RFC 6750 §3: "If the protected resource request does not include authentication
    credentials or does not contain an access token that enables access to the protected
    resource, the resource server MUST include the HTTP "WWW-Authenticate" response header
    field"; a malformed header is a 401 with a Bearer challenge, never a 5xx.
    """
    r = WSGIClient(claims_server.wsgi).get(
        "/userinfo", headers={"Authorization": authorization.encode().decode("latin-1")}
    )
    assert r.status == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer ")


def _spoiled_tokens(server: codeflow.Server, clock: Clock) -> dict[str, str]:
    """How a presented token can be invalid: unknown, expired, revoked, a refresh token."""
    wc = WSGIClient(server.wsgi)
    expired = server.issue_tokens(CAROL, CLAIMS_APP, "openid")["access_token"]
    revoked = server.issue_tokens(CAROL, CLAIMS_APP, "openid")["access_token"]
    r = wc.post("/revoke", data={"token": revoked}, headers=basic(CLAIMS_APP, CLAIMS_SECRET))
    assert r.status == 200, r.text
    refresh = server.issue_tokens(USERNAME, CONFIDENTIAL, "openid offline_access")["refresh_token"]
    clock.advance(codeflow.ACCESS_TOKEN_LIFETIME + 1)
    return {
        "unknown": "not-a-token-we-issued",
        "expired": expired,
        "revoked": revoked,
        "refresh token": refresh,
    }


@pytest.mark.parametrize("kind", ["unknown", "expired", "revoked", "refresh token"])
def test_userinfo_with_a_bad_token_is_401_invalid_token(claims_server, clock, kind):
    """RFC 6750 §3.1 invalid_token: "The access token provided is expired, revoked,
    malformed, or invalid for other reasons. The resource SHOULD respond with the HTTP 401
    (Unauthorized) status code."
    """
    token = _spoiled_tokens(claims_server, clock)[kind]
    r = WSGIClient(claims_server.wsgi).get("/userinfo", headers=bearer(token))
    assert r.status == 401, r.text
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="invalid_token"' in challenge
    assert r.json()["error"] == "invalid_token"


def test_userinfo_token_is_valid_until_it_expires(claims_server, clock):
    """RFC 6749 §5.1 expires_in: "The lifetime in seconds of the access token"; up to then
    the token is good at the userinfo endpoint.
    """
    tokens = claims_server.issue_tokens(CAROL, CLAIMS_APP, "openid")
    wc = WSGIClient(claims_server.wsgi)
    clock.advance(tokens["expires_in"] - 1)
    assert wc.get("/userinfo", headers=bearer(tokens["access_token"])).status == 200
    clock.advance(1)
    assert wc.get("/userinfo", headers=bearer(tokens["access_token"])).status == 401


def test_userinfo_with_a_client_credentials_token_is_403_insufficient_scope(claims_server):
    """RFC 6750 §3.1 insufficient_scope: "The request requires higher privileges than
    provided by the access token. The resource server SHOULD respond with the HTTP 403
    (Forbidden) status code"; OIDC Core §5.3: userinfo needs an access token for openid.
    """
    wc = WSGIClient(claims_server.wsgi)
    r = wc.post(
        "/token",
        data={"grant_type": "client_credentials", "scope": "api:read"},
        headers=basic(CLAIMS_APP, CLAIMS_SECRET),
    )
    assert r.status == 200, r.text
    info = wc.get("/userinfo", headers=bearer(r.json()["access_token"]))
    assert info.status == 403, info.text
    assert 'error="insufficient_scope"' in info.headers["www-authenticate"]
    assert info.json()["error"] == "insufficient_scope"


def test_userinfo_with_a_user_token_without_openid_is_403_insufficient_scope(claims_server):
    """OIDC Core §5.3: "The Access Token obtained from an OpenID Connect Authentication
    Request MUST be sent as a Bearer Token"; a plain OAuth token (no openid) lacks the
    privilege: RFC 6750 §3.1 insufficient_scope, 403.
    """
    tokens = claims_server.issue_tokens(CAROL, CLAIMS_APP, "profile email")
    r = WSGIClient(claims_server.wsgi).get("/userinfo", headers=bearer(tokens["access_token"]))
    assert r.status == 403, r.text
    assert 'error="insufficient_scope"' in r.headers["www-authenticate"]


###############################################################################
# prompt: OIDC Core §3.1.2.1, §3.1.2.6 ########################################
###############################################################################


def test_prompt_none_without_a_session_is_login_required(browser):
    """OIDC Core §3.1.2.1 prompt=none: "The Authorization Server MUST NOT display any
    authentication or consent user interface pages. An error is returned if an End-User is
    not already authenticated"; §3.1.2.6 login_required.
    """
    flow = new_flow(prompt="none")
    assert_error_redirect(
        browser.get("/authorize", params=flow.params), "login_required", flow.params["state"]
    )


def test_prompt_none_with_a_session_but_no_consent_is_consent_required(server, signed_in):
    """OIDC Core §3.1.2.6 consent_required: "The Authorization Server requires End-User
    consent. This error MAY be returned when the prompt parameter value in the
    Authentication Request is none".
    """
    flow = new_flow(prompt="none", scope="openid profile email")  # email: not consented yet
    assert_error_redirect(
        signed_in.get("/authorize", params=flow.params), "consent_required", flow.params["state"]
    )


def test_prompt_none_with_a_session_and_remembered_consent_gets_a_code(server, signed_in):
    """OIDC Core §3.1.2.1 prompt=none: the server answers without any page; with a session
    and the consent remembered, that answer is a code (§3.1.2.5).
    """
    flow = new_flow(prompt="none")
    q = redirect_query(signed_in.get("/authorize", params=flow.params))
    assert q["state"] == flow.params["state"]
    assert q["iss"] == ISSUER
    assert redeem(signed_in, flow, q["code"])["id_token"]


@pytest.mark.parametrize("prompt", ["none login", "login none", "none consent"])
def test_prompt_none_with_another_value_is_invalid_request(signed_in, prompt):
    """OIDC Core §3.1.2.1: "If this parameter contains none with any other value, an error
    is returned."
    """
    flow = new_flow(prompt=prompt)
    assert_error_redirect(
        signed_in.get("/authorize", params=flow.params), "invalid_request", flow.params["state"]
    )


def test_prompt_login_asks_again_and_does_not_loop(server, clock, signed_in):
    """OIDC Core §3.1.2.1 prompt=login: "The Authorization Server SHOULD prompt the End-User
    for reauthentication." After signing in again the flow moves on (no second login page)
    and auth_time is the new login.
    """
    clock.advance(300)
    flow = new_flow(prompt="login")
    r = signed_in.get("/authorize", params=flow.params)
    assert is_login_page(r)
    relogin = int(clock())
    r = submit_login(signed_in, r)
    assert not is_login_page(r)
    q = (
        redirect_query_after_post(approve(signed_in, r))
        if is_consent_page(r)
        else (redirect_query(r))
    )
    tokens = redeem(signed_in, flow, q["code"])
    claims = id_claims(signed_in, tokens["id_token"], clock())
    assert claims["auth_time"] == relogin


def test_prompt_consent_asks_even_when_consent_is_remembered(server, signed_in):
    """OIDC Core §3.1.2.1 prompt=consent: "The Authorization Server SHOULD prompt the
    End-User for consent before returning information to the Client."
    """
    flow = new_flow(prompt="consent")
    r = signed_in.get("/authorize", params=flow.params)
    assert is_consent_page(r)
    q = redirect_query_after_post(approve(signed_in, r))
    assert q["state"] == flow.params["state"]
    assert redeem(signed_in, flow, q["code"])["access_token"]


def redirect_query_after_post(r: Response) -> dict[str, str]:
    assert r.status == 303, r.text
    assert r.location.startswith(REDIRECT + "?")
    return query_of(r.location)


###############################################################################
# max_age: OIDC Core §3.1.2.1 #################################################
###############################################################################


def test_max_age_exceeded_asks_to_sign_in_again(server, clock, signed_in):
    """OIDC Core §3.1.2.1 max_age: "If the elapsed time is greater than this value, the OP
    MUST attempt to actively re-authenticate the End-User"; "When max_age is used, the ID
    Token returned MUST include an auth_time Claim Value."
    """
    clock.advance(301)
    flow = new_flow(max_age="300")
    r = signed_in.get("/authorize", params=flow.params)
    assert is_login_page(r)
    relogin = int(clock())
    r = submit_login(signed_in, r)
    tokens = redeem(signed_in, flow, redirect_query(r)["code"])  # consent is remembered
    claims = id_claims(signed_in, tokens["id_token"], clock())
    assert claims["auth_time"] == relogin


def test_max_age_not_exceeded_keeps_the_session(server, clock, signed_in):
    """OIDC Core §3.1.2.1 max_age: "Specifies the allowable elapsed time in seconds since
    the last time the End-User was actively authenticated by the OP"; within it, no new
    login, and auth_time is the original one.
    """
    login_time = int(clock())
    clock.advance(300)
    flow = new_flow(max_age="300")
    tokens = redeem(
        signed_in, flow, redirect_query(signed_in.get("/authorize", params=flow.params))["code"]
    )
    claims = id_claims(signed_in, tokens["id_token"], clock())
    assert claims["auth_time"] == login_time


def test_max_age_exceeded_with_prompt_none_is_login_required(server, clock, signed_in):
    """OIDC Core §3.1.2.1: with prompt=none "The Authorization Server MUST NOT display any
    authentication or consent user interface pages"; a session older than max_age needs a
    login, so the answer is login_required (§3.1.2.6).
    """
    clock.advance(61)
    flow = new_flow(max_age="60", prompt="none")
    assert_error_redirect(
        signed_in.get("/authorize", params=flow.params), "login_required", flow.params["state"]
    )


def test_max_age_zero_is_equivalent_to_prompt_login(server, clock, signed_in):
    """OIDC Core §3.1.2.1 (errata set 2) max_age: "Note that max_age=0 is equivalent to
    prompt=login." The login page is shown however recent the session, and signing in
    then does not loop.
    """
    flow = new_flow(max_age="0")
    r = signed_in.get("/authorize", params=flow.params)
    assert is_login_page(r)
    r = submit_login(signed_in, r)
    assert redirect_query(r)["code"]


@pytest.mark.parametrize("max_age", ["abc", "-1", "1.5", "1e3", " 60", "\u0663"])
def test_max_age_that_is_not_an_integer_is_invalid_request(browser, max_age):
    """OIDC Core §3.1.2.1 max_age: "Specifies the allowable elapsed time in seconds"
    (a non-negative integer, JSON number in Registration default_max_age); anything else
    is a malformed request, RFC 6749 §4.1.2.1 invalid_request.
    """
    flow = new_flow(max_age=max_age)
    assert_error_redirect(
        browser.get("/authorize", params=flow.params), "invalid_request", flow.params["state"]
    )


###############################################################################
# login_hint, ui_locales; request objects: OIDC Core §3.1.2.1, §6 ##############
###############################################################################


def test_login_hint_prefills_the_username(browser):
    """OIDC Core §3.1.2.1 login_hint: "Hint to the Authorization Server about the login
    identifier the End-User might use to log in (if necessary)."
    """
    r = browser.get("/authorize", params=new_flow(login_hint="bob@example.com").params)
    assert is_login_page(r)
    field = re.search(r'<input id="username"[^>]*>', r.text)
    assert field is not None
    assert 'value="bob@example.com"' in field.group(0)


def test_login_hint_is_escaped_in_the_page(browser):
    """RFC 6749 §10.14: "The authorization server and client MUST sanitize (and validate
    when possible) any value received"; login_hint (OIDC Core §3.1.2.1), echoed into the
    login page, stays text.
    """
    hint = '"><script>alert(1)</script>'
    r = browser.get("/authorize", params=new_flow(login_hint=hint).params)
    assert is_login_page(r)
    assert "<script>" not in r.text
    assert "&lt;script&gt;" in r.text


def test_ui_locales_is_accepted(server, signed_in):
    """OIDC Core §3.1.2.1 ui_locales: "End-User's preferred languages and scripts for the
    user interface" ... "An error SHOULD NOT result if some or all of the requested
    locales are not supported by the OpenID Provider."
    """
    r = WSGIClient(server.wsgi).get("/authorize", params=new_flow(ui_locales="fr-CA fr en").params)
    assert is_login_page(r)
    flow = new_flow(ui_locales="x-klingon")
    assert "code" in redirect_query(signed_in.get("/authorize", params=flow.params))


@pytest.mark.parametrize(
    ("param", "error"),
    [("request", "request_not_supported"), ("request_uri", "request_uri_not_supported")],
)
def test_request_objects_are_refused_with_their_error(browser, param, error):
    """OIDC Core §6 and §3.1.2.6: request_not_supported "The OP does not support use of the
    request parameter"; request_uri_not_supported "The OP does not support use of the
    request_uri parameter"; both returned to the client's redirect_uri.
    """
    value = (
        "eyJhbGciOiJub25lIn0.eyJzY29wZSI6Im9wZW5pZCJ9."
        if param == "request"
        else ("https://rp.example/request.jwt")
    )
    flow = new_flow(PUBLIC, **{param: value})
    assert_error_redirect(
        browser.get("/authorize", params=flow.params), error, flow.params["state"]
    )
