"""OpenID Connect Discovery 1.0 §3, §4 and RFC 8414 §2, §3: the provider metadata at
/.well-known/openid-configuration, and that what it advertises actually works.

In-process through wsgiref.validate; the issuer and JWKS checks also run over real HTTP.
"""

from __future__ import annotations

import jwt
import pytest
import requests
from conftest import (
    CONFIDENTIAL,
    ISSUER,
    REDIRECT,
    USERNAME,
    Clock,
    make_server,
    new_flow,
    query_of,
)
from oidc_helpers import bearer, jwks_keys, redeem, verify_jwt
from wsgi_client import WSGIClient, basic

import codeflow

OIDC_PATH = "/.well-known/openid-configuration"
OAUTH_PATH = "/.well-known/oauth-authorization-server"

# OIDC Discovery 1.0 §3: the REQUIRED members (token_endpoint is REQUIRED unless only
# the implicit flow is used; this server has no implicit flow).
REQUIRED = (
    "issuer",
    "authorization_endpoint",
    "token_endpoint",
    "jwks_uri",
    "response_types_supported",
    "subject_types_supported",
    "id_token_signing_alg_values_supported",
)


@pytest.fixture
def doc(server: codeflow.Server) -> dict:
    r = WSGIClient(server.wsgi).get(OIDC_PATH)
    assert r.status == 200, r.text
    return r.json()


@pytest.fixture
def auto(clock: Clock) -> codeflow.Server:
    """The conftest server, approving every authorization request as alice at once."""
    return make_server(clock, auto_approve=USERNAME)


def test_metadata_is_a_json_object_served_with_200(server):
    """OIDC Discovery §4.2: "The response is a set of Claims about the OpenID Provider's
    configuration. A successful response MUST use the 200 OK HTTP status code and return a
    JSON object using the application/json content type".
    """
    r = WSGIClient(server.wsgi).get(OIDC_PATH)
    assert r.status == 200
    assert r.headers["content-type"].split(";")[0].strip() == "application/json"
    assert isinstance(r.json(), dict)


@pytest.mark.parametrize("name", REQUIRED)
def test_every_required_member_is_present(doc, name):
    """OIDC Discovery §3: issuer, authorization_endpoint, token_endpoint, jwks_uri,
    response_types_supported, subject_types_supported and
    id_token_signing_alg_values_supported are "REQUIRED"."""
    assert doc.get(name), doc


def test_recommended_members_are_present(doc):
    """OIDC Discovery §3: userinfo_endpoint "RECOMMENDED"; scopes_supported "RECOMMENDED ...
    The server MUST support the openid scope value"; claims_supported "RECOMMENDED";
    RP-Initiated Logout §2.1: end_session_endpoint "REQUIRED" for an OP that supports it.
    """
    assert doc["userinfo_endpoint"] == ISSUER + "/userinfo"
    assert doc["end_session_endpoint"].startswith(ISSUER + "/")
    assert "openid" in doc["scopes_supported"]
    assert "sub" in doc["claims_supported"]


def test_issuer_is_exactly_the_server_issuer(server, doc):
    """OIDC Discovery §4.3: "The issuer value returned MUST be identical to the Issuer URL
    that was used as the prefix to /.well-known/openid-configuration to retrieve the
    configuration information."
    """
    assert doc["issuer"] == server.issuer == ISSUER


def test_issuer_over_http_is_the_url_the_document_was_fetched_from(live):
    """OIDC Discovery §4.3: "The issuer value returned MUST be identical to the Issuer URL
    that was used as the prefix to /.well-known/openid-configuration"; and every endpoint
    it names is reachable there.
    """
    _, url = live
    r = requests.get(url + OIDC_PATH, timeout=10)
    assert r.status_code == 200
    doc = r.json()
    assert doc["issuer"] == url
    assert requests.get(doc["jwks_uri"], timeout=10).status_code == 200
    assert requests.get(doc["userinfo_endpoint"], timeout=10).status_code == 401


def test_it_is_the_same_document_as_the_rfc8414_metadata(server, doc):
    """RFC 8414 §3 and OIDC Discovery §4: the two well-known documents describe one
    authorization server, so they must not disagree; RFC 8414 §2: "issuer REQUIRED".
    """
    r = WSGIClient(server.wsgi).get(OAUTH_PATH)
    assert r.status == 200
    assert r.json() == doc


def test_rs256_is_advertised(doc):
    """OIDC Discovery §3 id_token_signing_alg_values_supported: "The algorithm RS256 MUST be
    included."
    """
    assert "RS256" in doc["id_token_signing_alg_values_supported"]
    assert "none" not in doc["id_token_signing_alg_values_supported"]


def test_code_response_type_and_public_subjects(doc):
    """OIDC Discovery §3 response_types_supported: "Dynamic OpenID Providers MUST support
    the code, id_token, and the id_token token Response Type values" (we are not dynamic:
    code only); subject_types_supported: "Valid types include pairwise and public."
    """
    assert "code" in doc["response_types_supported"]
    assert set(doc["subject_types_supported"]) <= {"pairwise", "public"}


def test_request_objects_are_advertised_as_unsupported_and_refused(server, doc):
    """OIDC Discovery §3: request_uri_parameter_supported "If omitted, the default value is
    true", so a server without it must say false; OIDC Core §6: a request it does not
    support is answered with request_not_supported / request_uri_not_supported.
    """
    assert doc["request_parameter_supported"] is False
    assert doc["request_uri_parameter_supported"] is False
    browser = WSGIClient(server.wsgi)
    for param, error in [
        ("request", "request_not_supported"),
        ("request_uri", "request_uri_not_supported"),
    ]:
        r = browser.get(doc["authorization_endpoint"], params=new_flow(**{param: "x"}).params)
        assert r.status == 302
        assert query_of(r.location)["error"] == error


def test_every_advertised_signing_alg_signs_id_tokens(auto, clock):
    """OIDC Discovery §3 id_token_signing_alg_values_supported: "JSON array containing a
    list of the JWS signing algorithms (alg values) supported by the OP for the ID Token";
    a client registered with each gets an ID token signed with it, verifiable at jwks_uri.
    """
    browser = WSGIClient(auto.wsgi)
    doc = browser.get(OIDC_PATH).json()
    assert doc["id_token_signing_alg_values_supported"]
    for alg in doc["id_token_signing_alg_values_supported"]:
        client_id = f"app-{alg}"
        auto.add_client(
            client_id,
            client_secret="s",
            redirect_uris=[REDIRECT],
            id_token_signed_response_alg=alg,
        )
        flow = new_flow(client_id, scope="openid")
        r = browser.get(doc["authorization_endpoint"], params=flow.params)
        tokens = redeem(browser, flow, query_of(r.location)["code"], client_id, "s")
        header, claims = verify_jwt(
            tokens["id_token"], jwks_keys(browser), audience=client_id, now=clock()
        )
        assert header["alg"] == alg
        assert claims["sub"] == USERNAME


def test_every_advertised_scope_is_accepted(auto):
    """OIDC Discovery §3 scopes_supported: "JSON array containing a list of the OAuth 2.0
    [RFC6749] scope values that this server supports"; a client registered with all of
    them may request each one, and all together.
    """
    browser = WSGIClient(auto.wsgi)
    doc = browser.get(OIDC_PATH).json()
    scopes = doc["scopes_supported"]
    auto.add_client(
        "all-scopes",
        client_secret="s",
        redirect_uris=[REDIRECT],
        scopes=scopes,
    )
    for requested in [*scopes, " ".join(scopes)]:
        flow = new_flow("all-scopes", scope=requested)
        r = browser.get(doc["authorization_endpoint"], params=flow.params)
        assert r.status == 302
        q = query_of(r.location)
        assert "code" in q, (requested, q)
        tokens = redeem(browser, flow, q["code"], "all-scopes", "s")
        assert set(tokens["scope"].split()) == set(requested.split())


def test_claims_supported_cover_what_userinfo_returns(server):
    """OIDC Discovery §3 claims_supported: "JSON array containing a list of the Claim Names
    of the Claims that the OpenID Provider MAY be able to supply values for"; a user with
    every standard claim gets back only advertised claim names.
    """
    browser = WSGIClient(server.wsgi)
    doc = browser.get(OIDC_PATH).json()
    advertised = set(doc["claims_supported"])
    claims = {
        "name": "Dana",
        "email": "dana@example.com",
        "email_verified": True,
        "address": {"country": "NZ"},
        "phone_number": "+64 1",
        "locale": "en-NZ",
    }
    server.add_user("dana", "dana-password", claims=claims)
    token = server.issue_tokens("dana", CONFIDENTIAL, "openid profile email")["access_token"]
    info = browser.get("/userinfo", headers=bearer(token)).json()
    assert "sub" in info
    assert set(info) <= advertised


def test_jwks_uri_over_http_verifies_id_tokens(live):
    """OIDC Discovery §3 jwks_uri: "URL of the OP's JSON Web Key Set [JWK] document. This
    contains the signing key(s) the RP uses to validate signatures from the OP."
    """
    srv, url = live
    doc = requests.get(url + OIDC_PATH, timeout=10).json()
    id_token = srv.issue_tokens(USERNAME, CONFIDENTIAL, "openid")["id_token"]
    key = jwt.PyJWKClient(doc["jwks_uri"]).get_signing_key_from_jwt(id_token)
    claims = jwt.decode(
        id_token,
        key.key,
        algorithms=doc["id_token_signing_alg_values_supported"],
        audience=CONFIDENTIAL,
        issuer=doc["issuer"],
    )
    assert claims["sub"] == USERNAME


def test_claims_supported_cover_what_id_tokens_carry(auto, clock):
    """OIDC Discovery §3 claims_supported: "JSON array containing a list of the Claim Names
    of the Claims that the OpenID Provider MAY be able to supply values for"; an ID token
    for a user with standard claims, with every advertised scope granted, fresh from a code
    flow and again from a refresh (OIDC Core §12.2), names only advertised claims.
    """
    browser = WSGIClient(auto.wsgi)
    doc = browser.get(OIDC_PATH).json()
    advertised = set(doc["claims_supported"])
    auto.add_client("every-scope", client_secret="s", redirect_uris=[REDIRECT],
                    scopes=doc["scopes_supported"])  # fmt: skip
    auto.set_claims(USERNAME, {"email": "alice@example.com", "email_verified": True,
                               "address": {"country": "NZ"}, "phone_number": "+64 1"})  # fmt: skip
    flow = new_flow("every-scope", scope=" ".join(doc["scopes_supported"]), nonce="n")
    r = browser.get(doc["authorization_endpoint"], params=flow.params)
    tokens = redeem(browser, flow, query_of(r.location)["code"], "every-scope", "s")
    refreshed = browser.post(
        "/token", {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        headers=basic("every-scope", "s"),
    ).json()  # fmt: skip
    for id_token in (tokens["id_token"], refreshed["id_token"]):
        _, claims = verify_jwt(id_token, jwks_keys(browser), audience="every-scope", now=clock())
        assert "name" in claims and "email" in claims
        assert set(claims) <= advertised, set(claims) - advertised
