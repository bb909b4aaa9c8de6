"""RFC 9068: JWT profile for OAuth 2.0 access tokens, a per-client option
(``access_token_jwt=True``): the header (§2.1), the claims (§2.2), the default audience
(§3), verification against the JWKS (§4), and introspection (RFC 7662), revocation
(RFC 7009) and userinfo working on them.

Verified independently with PyJWT against the published JWKS; in-process with the test
clock, and once over real HTTP with PyJWKClient.
"""

from __future__ import annotations

import jwt
import pytest
from conftest import ISSUER, PASSWORD, REDIRECT, USERNAME, Clock, make_server, new_flow
from oidc_helpers import authorize, basic, bearer, jwks_keys, redeem, sign_in_for_tokens, verify_jwt
from wsgi_client import WSGIClient

import codeflow

JWT_APP, JWT_SECRET = "jwt-app", "jwt-secret"


def add_jwt_client(srv: codeflow.Server) -> None:
    srv.add_client(
        JWT_APP,
        client_secret=JWT_SECRET,
        redirect_uris=[REDIRECT],
        scopes=["openid", "profile", "offline_access", "api:read"],
        grant_types=["authorization_code", "refresh_token", "client_credentials"],
        access_token_jwt=True,
    )


@pytest.fixture
def server(clock: Clock) -> codeflow.Server:
    srv = make_server(clock)
    add_jwt_client(srv)
    return srv


@pytest.fixture
def browser(server: codeflow.Server) -> WSGIClient:
    return WSGIClient(server.wsgi)


def code_flow(browser: WSGIClient, **params: str) -> dict:
    return sign_in_for_tokens(browser, JWT_APP, JWT_SECRET, USERNAME, PASSWORD, **params)


def client_credentials(browser: WSGIClient, scope: str = "api:read") -> dict:
    r = browser.post(
        "/token",
        data={"grant_type": "client_credentials", "scope": scope},
        headers=basic(JWT_APP, JWT_SECRET),
    )
    assert r.status == 200, r.text
    return r.json()


def introspect(browser: WSGIClient, token: str) -> dict:
    r = browser.post("/introspect", data={"token": token}, headers=basic(JWT_APP, JWT_SECRET))
    assert r.status == 200, r.text
    return r.json()


def verify_at(server: codeflow.Server, browser: WSGIClient, token: str, now: float):
    """RFC 9068 §4: validate as a resource server would, typ included."""
    header, claims = verify_jwt(
        token, jwks_keys(browser), audience=server.access_token_audience, now=now
    )
    # RFC 9068 §4: "Resource servers MUST verify that the typ header value is "at+jwt" or
    # "application/at+jwt" and reject tokens carrying any other value."
    assert header["typ"] in ("at+jwt", "application/at+jwt")
    return header, claims


###############################################################################
# Header and claims: RFC 9068 §2.1, §2.2 ######################################
###############################################################################


def test_access_token_is_a_jwt_typed_at_jwt_and_signed_with_a_published_key(server, clock, browser):
    """RFC 9068 §2.1: "JWT access tokens MUST include this media type in the typ header
    parameter ... the typ value used SHOULD be at+jwt"; "JWT access tokens MUST be
    signed"; RFC 7515 §4.1.4 kid names the key in the published set.
    """
    tokens = code_flow(browser)
    assert tokens["token_type"] == "Bearer"
    header, _ = verify_at(server, browser, tokens["access_token"], clock())
    assert header["typ"] == "at+jwt"
    assert header["alg"] == "RS256"
    assert header["kid"] in jwks_keys(browser)


def test_required_claims_of_a_user_token(server, clock, browser):
    """RFC 9068 §2.2: iss, exp, aud, sub, client_id, iat, jti are REQUIRED; sub: "In cases
    of access tokens obtained through grants where a resource owner is involved, such as
    the authorization code grant, the value of "sub" SHOULD correspond to the subject
    identifier of the resource owner"; §2.2.3: the scope claim.
    """
    flow = new_flow(JWT_APP, scope="openid profile api:read")
    login_time = int(clock())
    q = authorize(browser, flow)
    clock.advance(15)  # the code is redeemed a little after the login
    tokens = redeem(browser, flow, q["code"], JWT_APP, JWT_SECRET)
    _, claims = verify_at(server, browser, tokens["access_token"], clock())
    assert claims["iss"] == ISSUER
    assert claims["aud"] in (ISSUER, [ISSUER])
    assert claims["sub"] == USERNAME
    assert claims["client_id"] == JWT_APP
    assert claims["iat"] == int(clock())
    assert claims["exp"] == claims["iat"] + tokens["expires_in"]
    assert claims["jti"]
    assert claims["scope"] == "openid profile api:read"
    assert claims["auth_time"] == login_time  # §2.2.1: when the user authenticated


def test_client_credentials_sub_is_the_client(server, clock, browser):
    """RFC 9068 §2.2 sub: "In cases of access tokens obtained through grants where no
    resource owner is involved, such as the client credentials grant, the value of "sub"
    SHOULD correspond to an identifier the authorization server uses to indicate the client
    application."
    """
    tokens = client_credentials(browser)
    _, claims = verify_at(server, browser, tokens["access_token"], clock())
    assert claims["sub"] == JWT_APP
    assert claims["client_id"] == JWT_APP
    assert claims["scope"] == "api:read"
    assert "auth_time" not in claims


def test_audience_defaults_to_the_issuer(server):
    """RFC 9068 §3: "If the request does not include a resource parameter, the
    authorization server MUST use a default resource indicator in the aud claim."
    """
    assert server.access_token_audience == ISSUER


def test_audience_can_be_configured(clock):
    """RFC 9068 §3: the default resource indicator is the server's to choose; a configured
    access_token_audience is what lands in aud.
    """
    srv = codeflow.Server(ISSUER, clock=clock, access_token_audience="https://api.example")
    add_jwt_client(srv)
    srv.add_user(USERNAME, PASSWORD)
    browser = WSGIClient(srv.wsgi)
    token = srv.issue_tokens(USERNAME, JWT_APP, "api:read")["access_token"]
    _, claims = verify_at(srv, browser, token, clock())
    assert srv.access_token_audience == "https://api.example"
    assert claims["aud"] in ("https://api.example", ["https://api.example"])
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(
            token,
            jwks_keys(browser)[jwt.get_unverified_header(token)["kid"]].key,
            algorithms=["RS256"],
            audience=ISSUER,
            options={"verify_exp": False, "verify_iat": False},
        )


def test_jti_is_unique_across_tokens(server, clock, browser):
    """RFC 9068 §2.2 jti via RFC 7519 §4.1.7: "The identifier value MUST be assigned in a
    manner that ensures that there is a negligible probability that the same value will be
    accidentally assigned to a different data object".
    """
    tokens = [code_flow(browser)["access_token"] for _ in range(2)]
    tokens += [client_credentials(browser)["access_token"] for _ in range(3)]  # same second
    tokens += [server.issue_tokens(USERNAME, JWT_APP, "api:read")["access_token"] for _ in "ab"]
    jtis = [verify_at(server, browser, t, clock())[1]["jti"] for t in tokens]
    assert len(set(jtis)) == len(jtis) == 7


def test_refreshed_access_token_is_a_jwt_too(server, clock, browser):
    """RFC 9068 §2: the profile applies to the access tokens the client gets; RFC 6749 §6:
    a refresh "issues a new access token", for the same user and client.
    """
    tokens = code_flow(browser, scope="openid offline_access api:read")
    clock.advance(120)
    r = browser.post(
        "/token",
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        headers=basic(JWT_APP, JWT_SECRET),
    )
    assert r.status == 200, r.text
    _, claims = verify_at(server, browser, r.json()["access_token"], clock())
    assert claims["sub"] == USERNAME
    assert claims["client_id"] == JWT_APP
    assert claims["iat"] == int(clock())


def test_id_token_is_not_typed_as_an_access_token(server, clock, browser):
    """RFC 9068 §2.1: explicit typing exists so that "JWT access tokens" are told apart
    from other JWTs, such as ID tokens; a resource server checking typ (§4) rejects the
    ID token.
    """
    tokens = code_flow(browser)
    assert jwt.get_unverified_header(tokens["access_token"])["typ"] == "at+jwt"
    assert jwt.get_unverified_header(tokens["id_token"]).get("typ") not in (
        "at+jwt",
        "application/at+jwt",
    )


def test_other_clients_keep_opaque_access_tokens(server, browser):
    """RFC 9068 is a per-client option here: a client without it gets an opaque token
    (RFC 6749 §1.4: "The string is usually opaque to the client")."""
    tokens = sign_in_for_tokens(browser)  # the conftest CONFIDENTIAL client
    with pytest.raises(jwt.DecodeError):
        jwt.get_unverified_header(tokens["access_token"])


###############################################################################
# Introspection, revocation, userinfo #########################################
###############################################################################


def test_introspection_of_a_jwt_access_token_is_active(server, clock, browser):
    """RFC 7662 §2.2 active: "a boolean indicator of whether or not the presented token is
    currently active"; the JWT access token is a token like any other, and the answer
    agrees with its claims.
    """
    tokens = code_flow(browser)
    _, claims = verify_at(server, browser, tokens["access_token"], clock())
    info = introspect(browser, tokens["access_token"])
    assert info["active"] is True
    assert info["sub"] == claims["sub"]
    assert info["client_id"] == claims["client_id"]
    assert info["scope"] == claims["scope"]
    assert info["exp"] == claims["exp"]


def test_revoked_jwt_is_inactive_at_introspection_but_still_verifies_locally(
    server, clock, browser
):
    """RFC 7009 §2: revocation invalidates the token at the authorization server;
    RFC 7662 §2.2: it is then not "active". A self-contained JWT cannot be recalled: a
    resource server that only checks the signature keeps accepting it until exp (the
    documented meaning of revoking one).
    """
    tokens = code_flow(browser)
    access = tokens["access_token"]
    r = browser.post("/revoke", data={"token": access}, headers=basic(JWT_APP, JWT_SECRET))
    assert r.status == 200, r.text
    assert introspect(browser, access) == {"active": False}
    _, claims = verify_at(server, browser, access, clock())  # still a valid signature
    assert claims["exp"] > clock()
    info = browser.get("/userinfo", headers=bearer(access))
    assert info.status == 401
    assert 'error="invalid_token"' in info.headers["www-authenticate"]


def test_userinfo_accepts_a_jwt_access_token(server, browser):
    """OIDC Core §5.3.1: "The Access Token obtained from an OpenID Connect Authentication
    Request MUST be sent as a Bearer Token"; a JWT access token is one.
    """
    tokens = code_flow(browser)
    r = browser.get("/userinfo", headers=bearer(tokens["access_token"]))
    assert r.status == 200, r.text
    assert r.json() == {"sub": USERNAME, "name": "Alice"}


def test_jwt_access_token_outlives_a_key_rotation(clock):
    """RFC 9068 §4: the resource server validates the signature with the issuer's keys;
    after a rotation, the key that signed a still-live access token stays published until
    the token expires, even when access tokens live longer than ID tokens.
    """
    srv = codeflow.Server(ISSUER, clock=clock, access_token_lifetime=7200, id_token_lifetime=600)
    add_jwt_client(srv)
    browser = WSGIClient(srv.wsgi)
    token = srv.issue_tokens(None, JWT_APP, "api:read")["access_token"]
    srv.rotate_keys()
    clock.advance(7199)
    verify_at(srv, browser, token, clock())
    clock.advance(1)
    srv.storage.purge_expired(clock())
    assert jwt.get_unverified_header(token)["kid"] not in jwks_keys(browser)


def test_jwt_access_token_verifies_with_pyjwkclient_over_http(live):
    """RFC 9068 §4: "The resource server MUST validate the signature of all incoming JWT
    access tokens according to [RFC7515] using the algorithm specified in the JWT alg
    Header Parameter" with the keys at the issuer's jwks_uri.
    """
    srv, url = live
    add_jwt_client(srv)
    token = srv.issue_tokens(USERNAME, JWT_APP, "openid api:read")["access_token"]
    key = jwt.PyJWKClient(url + "/jwks").get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        key.key,
        algorithms=["RS256"],
        audience=srv.access_token_audience,
        issuer=url,
        options={"require": ["iss", "exp", "aud", "sub", "client_id", "iat", "jti"]},
    )
    assert claims["aud"] == url
    assert claims["client_id"] == JWT_APP
    assert jwt.get_unverified_header(token)["typ"] == "at+jwt"
