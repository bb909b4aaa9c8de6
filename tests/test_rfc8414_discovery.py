"""Authorization server metadata: RFC 8414 §2 (the document), §3 (getting it).

Most tests here derive their checks from the document itself: what it lists must
work, and what it leaves out must be refused. In-process through wsgiref.validate,
except where the endpoint URLs themselves are followed over real HTTP. Scopes leave
out "openid": this is plain OAuth, and no ID token needs signing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import urllib.parse
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import requests
from conftest import (
    CONFIDENTIAL,
    ISSUER,
    PUBLIC,
    REDIRECT,
    SECRET,
    USERNAME,
    Clock,
    make_server,
    new_flow,
    pkce_pair,
    query_of,
)
from dpop_helpers import DPoPKey
from wsgi_client import Response, WSGIClient, basic

import codeflow

METADATA_PATH = "/.well-known/oauth-authorization-server"

# Values other servers use; whatever the document does not list must be refused.
KNOWN_RESPONSE_TYPES = [
    "code",
    "token",
    "id_token",
    "none",
    "code token",
    "code id_token",
    "id_token token",
    "code id_token token",
]
KNOWN_GRANT_TYPES = [
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "password",
    "implicit",
    "urn:ietf:params:oauth:grant-type:device_code",
    "urn:ietf:params:oauth:grant-type:jwt-bearer",
    "urn:ietf:params:oauth:grant-type:saml2-bearer",
    "urn:ietf:params:oauth:grant-type:token-exchange",
]
KNOWN_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt",
                      "client_secret_jwt", "none"]  # fmt: skip
# OAuth 2.0 Multiple Response Type Encoding Practices §2.1, Form Post Response Mode §2, JARM.
KNOWN_RESPONSE_MODES = ["query", "fragment", "form_post", "query.jwt", "fragment.jwt",
                        "form_post.jwt", "jwt", "web_message"]  # fmt: skip
JWT_BEARER_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
KEYED = "keyed-app"  # a private_key_jwt client (RFC 7523 §2.2)
CLIENT_KEY = DPoPKey("ES256")  # its key pair, made with cryptography (tests/dpop_helpers.py)


@pytest.fixture
def srv(clock: Clock) -> codeflow.Server:
    """The conftest server, approving every authorization request as alice at once, with
    a client that authenticates with private_key_jwt (RFC 7523)."""
    srv = make_server(clock, auto_approve=USERNAME)
    srv.add_client(KEYED, jwks={"keys": [CLIENT_KEY.jwk]}, redirect_uris=[REDIRECT],
                   scopes=["profile"])  # fmt: skip
    return srv


@pytest.fixture
def wc(srv: codeflow.Server) -> WSGIClient:
    return WSGIClient(srv.wsgi)


@pytest.fixture
def metadata(wc: WSGIClient) -> dict[str, Any]:
    r = wc.get(METADATA_PATH)
    assert r.status == 200, r.text
    return r.json()


def path_of(url: str) -> str:
    """The in-process path of an absolute endpoint URL at ISSUER."""
    assert url.startswith(ISSUER + "/"), url
    return url.removeprefix(ISSUER)


def as_client(
    method: str, now: float = 0.0
) -> tuple[str, dict[str, str], dict[str, str] | None]:
    """(client_id, extra form fields, headers) that authenticate with ``method`` at
    ``now`` (an assertion's time)."""
    if method == "client_secret_basic":
        return CONFIDENTIAL, {}, basic(CONFIDENTIAL, SECRET)
    if method == "client_secret_post":
        return CONFIDENTIAL, {"client_id": CONFIDENTIAL, "client_secret": SECRET}, None
    if method == "none":
        return PUBLIC, {"client_id": PUBLIC}, None
    if method in ("private_key_jwt", "client_secret_jwt"):
        # RFC 7523 §2.2; client_secret_jwt is OIDC Core §9's HS256 with the client secret.
        keyed = method == "private_key_jwt"
        assertion = private_key_jwt(now) if keyed else client_secret_jwt(ISSUER)
        fields = {"client_assertion_type": JWT_BEARER_ASSERTION, "client_assertion": assertion}
        return (KEYED if keyed else CONFIDENTIAL), fields, None
    raise AssertionError(f"the metadata lists {method!r}: teach this test to use it")


def authorize(wc: WSGIClient, **params: str | None) -> dict[str, str]:
    """GET the authorization endpoint; return the query of the redirect to the client."""
    r = wc.get("/authorize", params=new_flow(**{"scope": "profile", **params}).params)
    assert r.status == 302, r.text
    return query_of(r.location or "")


def code_grant(wc: WSGIClient, srv: codeflow.Server) -> Response:
    flow = new_flow(scope="profile")
    r = wc.get("/authorize", params=flow.params)
    code = query_of(r.location or "")["code"]
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": flow.params["redirect_uri"],
        "code_verifier": flow.verifier,
    }
    return wc.post("/token", data, headers=basic(CONFIDENTIAL, SECRET))


def refresh_grant(wc: WSGIClient, srv: codeflow.Server) -> Response:
    issued = srv.issue_tokens(USERNAME, CONFIDENTIAL, "profile")
    data = {"grant_type": "refresh_token", "refresh_token": issued["refresh_token"]}
    return wc.post("/token", data, headers=basic(CONFIDENTIAL, SECRET))


def client_credentials_grant(wc: WSGIClient, srv: codeflow.Server) -> Response:
    data = {"grant_type": "client_credentials"}
    return wc.post("/token", data, headers=basic(CONFIDENTIAL, SECRET))


def token_exchange_grant(wc: WSGIClient, srv: codeflow.Server) -> Response:
    """RFC 8693 §2.1: CONFIDENTIAL serves an API and may exchange its tokens for another."""
    api, downstream = "https://api.example/", "https://downstream.example/"
    srv.add_resource(api, scopes=["api:read"], client_id=CONFIDENTIAL)
    srv.add_resource(downstream, scopes=["api:read"])
    grants = [*srv.storage.get_client(CONFIDENTIAL).grant_types, codeflow.TOKEN_EXCHANGE]
    srv.update_client(CONFIDENTIAL, grant_types=grants, token_exchange=[downstream])
    subject = srv.issue_tokens(USERNAME, CONFIDENTIAL, "api:read", resource=api)
    data = {"grant_type": codeflow.TOKEN_EXCHANGE, "subject_token": subject["access_token"],
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "resource": downstream}  # fmt: skip
    return wc.post("/token", data, headers=basic(CONFIDENTIAL, SECRET))


def device_code_grant(wc: WSGIClient, srv: codeflow.Server) -> Response:
    """RFC 8628 §3.1, §3.4: a device code, approved at once (auto-approve), redeemed."""
    grants = srv.storage.get_client(CONFIDENTIAL).grant_types  # type: ignore[union-attr]
    srv.update_client(CONFIDENTIAL, grant_types=[*grants, DEVICE_CODE])
    started = wc.post("/device_authorization", {"scope": "profile"},
                      headers=basic(CONFIDENTIAL, SECRET))  # fmt: skip
    assert started.status == 200, started.text
    data = {"grant_type": DEVICE_CODE, "device_code": started.json()["device_code"]}
    return wc.post("/token", data, headers=basic(CONFIDENTIAL, SECRET))


DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"
GRANT_EXERCISES: dict[str, Callable[[WSGIClient, codeflow.Server], Response]] = {
    "authorization_code": code_grant,
    "refresh_token": refresh_grant,
    "client_credentials": client_credentials_grant,
    "urn:ietf:params:oauth:grant-type:token-exchange": token_exchange_grant,
    DEVICE_CODE: device_code_grant,
}


def private_key_jwt(now: float, alg: str = "ES256") -> str:
    """An RFC 7523 §3 client assertion of KEYED, signed with its registered key."""
    claims = {"iss": KEYED, "sub": KEYED, "aud": ISSUER, "exp": int(now) + 60,
              "jti": secrets.token_urlsafe(8)}  # fmt: skip
    return jwt.encode(claims, CLIENT_KEY.private, algorithm=alg)


def client_secret_jwt(audience: str) -> str:
    """A well-formed RFC 7523 §3 client assertion, HS256 with the client secret."""

    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims = {"iss": CONFIDENTIAL, "sub": CONFIDENTIAL, "aud": audience, "exp": 2_000_000_000}
    signing_input = part({"alg": "HS256", "typ": "JWT"}) + "." + part({**claims, "jti": "1"})
    mac = hmac.new(SECRET.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


###############################################################################
# RFC 8414 §3: the document and where it is ###################################
###############################################################################


def test_metadata_is_json_at_the_well_known_uri(wc: WSGIClient) -> None:
    """RFC 8414 §3.2: "A successful response MUST use the 200 OK HTTP status code and return
    a JSON object using the "application/json" content type"."""
    r = wc.get(METADATA_PATH)
    assert r.status == 200, r.text
    assert r.headers["content-type"].split(";")[0].strip() == "application/json"
    assert isinstance(r.json(), dict)


def test_issuer_is_the_servers_issuer(metadata: dict[str, Any]) -> None:
    """RFC 8414 §3.3: "The "issuer" value returned MUST be identical to the authorization
    server's issuer identifier value into which the well-known URI string was inserted";
    RFC 8414 §2: it has "no query or fragment components"."""
    assert metadata["issuer"] == ISSUER
    parts = urllib.parse.urlsplit(metadata["issuer"])
    assert (parts.query, parts.fragment) == ("", "")


def test_required_fields_are_present_and_no_list_is_empty(metadata: dict[str, Any]) -> None:
    """RFC 8414 §2: issuer, authorization_endpoint, token_endpoint and
    response_types_supported are REQUIRED; "Claims with zero elements MUST be omitted from
    the response."""
    for name in ("issuer", "authorization_endpoint", "token_endpoint", "response_types_supported"):
        assert metadata.get(name), name
    assert [k for k, v in metadata.items() if v == [] or v == {}] == []


@pytest.mark.http
def test_every_endpoint_listed_exists(live: tuple[codeflow.Server, str]) -> None:
    """RFC 8414 §2: each *_endpoint (and jwks_uri) is the "URL of the authorization server's"
    endpoint; followed over real HTTP, none of them is missing (404), and the document
    fetched at <issuer>/.well-known/oauth-authorization-server names that issuer (§3.3)."""
    srv, base = live
    metadata = requests.get(base + METADATA_PATH, timeout=10).json()
    assert metadata["issuer"] == srv.issuer == base
    urls = {k: v for k, v in metadata.items() if k.endswith("_endpoint") or k == "jwks_uri"}
    assert {"authorization_endpoint", "token_endpoint"} <= set(urls)
    for name, url in urls.items():
        assert url.startswith(base + "/"), (name, url)
        r = requests.get(url, timeout=10, allow_redirects=False)
        assert r.status_code != 404, (name, url, r.status_code)
        assert r.status_code < 500, (name, url, r.status_code)
        r = requests.post(url, data={}, timeout=10, allow_redirects=False)
        assert r.status_code != 404, (name, url, r.status_code)
        assert r.status_code < 500, (name, url, r.status_code)


###############################################################################
# RFC 8414 §2: what is listed works, what is not is refused ###################
###############################################################################


def test_listed_response_types_are_accepted(wc: WSGIClient, metadata: dict[str, Any]) -> None:
    """RFC 8414 §2: response_types_supported: "JSON array containing a list of the OAuth 2.0
    "response_type" values that this authorization server supports"."""
    for response_type in metadata["response_types_supported"]:
        query = authorize(wc, response_type=response_type)
        assert "error" not in query, (response_type, query)
        assert "code" in response_type.split(" ") and query.get("code"), (response_type, query)


def test_unlisted_response_types_are_unsupported(wc: WSGIClient, metadata: dict[str, Any]) -> None:
    """RFC 6749 §4.1.2.1: unsupported_response_type: "The authorization server does not
    support obtaining an authorization code using this method"; RFC 9700 §2.1.2: no implicit
    grant ("token", "id_token token")."""
    unlisted = [t for t in KNOWN_RESPONSE_TYPES if t not in metadata["response_types_supported"]]
    assert {"token", "id_token", "code token"} <= set(unlisted)
    for response_type in unlisted:
        query = authorize(wc, response_type=response_type)
        assert query.get("error") == "unsupported_response_type", (response_type, query)
        assert "code" not in query and "access_token" not in query


def test_listed_response_modes_answer_that_way_and_no_other(
    wc: WSGIClient, metadata: dict[str, Any]
) -> None:
    """RFC 8414 §2: response_modes_supported: "JSON array containing a list of the OAuth 2.0
    "response_mode" values that this authorization server supports, as specified in "OAuth
    2.0 Multiple Response Type Encoding Practices""; each listed mode carries the code as it
    says (query: on the redirect's query, §2.1; form_post: a form POSTed to the redirect URI,
    Form Post Response Mode §2), and an unlisted one is refused with no code."""
    listed = metadata["response_modes_supported"]
    for mode in listed:
        flow = new_flow(scope="profile", response_mode=mode)
        r = wc.get("/authorize", params=flow.params)
        if mode == "query":
            assert r.status == 302 and query_of(r.location or "").get("code"), r.text
        elif mode == "form_post":
            assert r.status == 200 and '<form method="post"' in r.text, r.text
            assert 'name="code"' in r.text
        else:
            raise AssertionError(f"the metadata lists {mode!r}: teach this test it")
    for mode in (m for m in KNOWN_RESPONSE_MODES if m not in listed):
        query = authorize(wc, response_mode=mode)
        assert query.get("error") == "invalid_request", (mode, query)
        assert "code" not in query


def test_listed_grant_types_work(
    wc: WSGIClient, srv: codeflow.Server, metadata: dict[str, Any]
) -> None:
    """RFC 8414 §2: grant_types_supported: "JSON array containing a list of the OAuth 2.0
    grant type values that this authorization server supports"; each works for a client
    registered for it (CONFIDENTIAL has them all)."""
    for grant_type in metadata["grant_types_supported"]:
        exercise = GRANT_EXERCISES.get(grant_type)
        assert exercise is not None, f"the metadata lists {grant_type!r}: teach this test it"
        r = exercise(wc, srv)
        assert r.status == 200, (grant_type, r.text)
        assert r.json()["access_token"]


def test_unlisted_grant_types_are_unsupported(wc: WSGIClient, metadata: dict[str, Any]) -> None:
    """RFC 6749 §5.2: unsupported_grant_type: "The authorization grant type is not supported
    by the authorization server"; RFC 9700 §2.4: "The resource owner password credentials
    grant MUST NOT be used"."""
    unlisted = [g for g in KNOWN_GRANT_TYPES if g not in metadata["grant_types_supported"]]
    assert {"password", "implicit"} <= set(unlisted)
    for grant_type in unlisted:
        data = {"grant_type": grant_type, "username": USERNAME, "password": "x", "code": "x"}
        r = wc.post("/token", data, headers=basic(CONFIDENTIAL, SECRET))
        assert (r.status, r.json()["error"]) == (400, "unsupported_grant_type"), grant_type


@pytest.mark.parametrize(
    ("list_name", "endpoint"),
    [
        ("token_endpoint_auth_methods_supported", "token_endpoint"),
        ("introspection_endpoint_auth_methods_supported", "introspection_endpoint"),
        ("revocation_endpoint_auth_methods_supported", "revocation_endpoint"),
    ],
)
def test_listed_client_auth_methods_work_and_no_other(
    wc: WSGIClient, srv: codeflow.Server, metadata: dict[str, Any], list_name: str, endpoint: str
) -> None:
    """RFC 8414 §2: token_endpoint_auth_methods_supported (and the introspection and
    revocation lists): "JSON array containing a list of client authentication methods
    supported by this token endpoint"; a method not listed gets invalid_client (RFC 6749
    §5.2: "unsupported authentication method")."""
    listed = metadata[list_name]
    path = path_of(metadata[endpoint])
    for method in KNOWN_AUTH_METHODS:
        client_id, fields, headers = as_client(method, srv.clock())
        issued = srv.issue_tokens(USERNAME, client_id, "profile")
        if endpoint == "token_endpoint":
            data = {"grant_type": "refresh_token", "refresh_token": issued["refresh_token"]}
        else:
            data = {"token": issued["access_token"]}
        r = wc.post(path, {**data, **fields}, headers=headers)
        if method in listed:
            assert r.status == 200, (method, r.text)
        else:
            assert (r.status, r.json()["error"]) == (401, "invalid_client"), (method, r.text)
    assert set(listed) <= set(KNOWN_AUTH_METHODS), "teach this test the new methods"


@pytest.mark.parametrize(
    "endpoint", ["token_endpoint", "introspection_endpoint", "revocation_endpoint"]
)
def test_unlisted_client_auth_methods_are_refused(
    wc: WSGIClient, srv: codeflow.Server, metadata: dict[str, Any], endpoint: str
) -> None:
    """RFC 6749 §5.2: invalid_client for an "unsupported authentication method";
    client_secret_jwt and private_key_jwt (RFC 7523 §2.2) are not in the metadata, nor are
    other HTTP schemes; and RFC 6749 §2.3.1: the credentials "MUST NOT be included in the
    request URI"."""
    listed = set(metadata["token_endpoint_auth_methods_supported"])
    assert "client_secret_jwt" not in listed
    path = path_of(metadata[endpoint])
    issued = srv.issue_tokens(USERNAME, CONFIDENTIAL, "profile")
    if endpoint == "token_endpoint":
        data = {"grant_type": "refresh_token", "refresh_token": issued["refresh_token"]}
    else:
        data = {"token": issued["access_token"]}
    assertion = {
        "client_assertion_type": JWT_BEARER_ASSERTION,
        "client_assertion": client_secret_jwt(metadata["token_endpoint"]),
    }
    attempts: list[tuple[dict[str, str], dict[str, str] | None, dict[str, str] | None]] = [
        (assertion, None, None),
        ({**assertion, "client_id": CONFIDENTIAL}, None, None),
        ({}, {"Authorization": f"Bearer {issued['access_token']}"}, None),
        ({}, {"Authorization": 'Digest username="confidential-app"'}, None),
        ({}, None, {"client_id": CONFIDENTIAL, "client_secret": SECRET}),
    ]
    for fields, headers, query in attempts:
        r = wc.post(path, {**data, **fields}, headers=headers, params=query)
        assert (r.status, r.json()["error"]) == (401, "invalid_client"), (fields, headers, query)
    introspected = wc.post(
        "/introspect", {"token": issued["access_token"]}, headers=basic(CONFIDENTIAL, SECRET)
    )
    assert introspected.json()["active"] is True


def test_code_challenge_methods_are_exactly_s256(wc: WSGIClient, metadata: dict[str, Any]) -> None:
    """RFC 8414 §2: code_challenge_methods_supported: "JSON array containing a list of Proof
    Key for Code Exchange (PKCE) code challenge methods supported"; RFC 9700 §2.1.1: clients
    SHOULD use S256, so plain is not offered. RFC 7636 §4.4.1: "If the server supporting PKCE
    does not support the requested transformation, the authorization endpoint MUST return the
    authorization error response with "error" value set to "invalid_request"."""
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    for method in metadata["code_challenge_methods_supported"]:
        assert authorize(wc, code_challenge_method=method).get("code")
    verifier, _ = pkce_pair()
    for method in ("plain", None):  # RFC 7636 §4.3: an absent method means "plain"
        query = authorize(wc, code_challenge=verifier[:43], code_challenge_method=method)
        assert query.get("error") == "invalid_request", (method, query)
        assert "code" not in query


def test_iss_appears_in_authorization_responses(wc: WSGIClient, metadata: dict[str, Any]) -> None:
    """RFC 9207 §3: authorization_response_iss_parameter_supported: "Boolean parameter
    indicating whether the authorization server provides the iss parameter in the
    authorization response"; RFC 9207 §2: "In authorization responses to the client,
    including error responses, an authorization server supporting this specification MUST
    indicate its identity by including the iss parameter in the response."""
    assert metadata["authorization_response_iss_parameter_supported"] is True
    success = authorize(wc)
    assert success.get("code") and success.get("iss") == metadata["issuer"]
    failure = authorize(wc, response_type="token")
    assert failure.get("error") and failure.get("iss") == metadata["issuer"]


def test_resource_indicators_are_advertised_and_honoured(
    wc: WSGIClient, srv: codeflow.Server, metadata: dict[str, Any]
) -> None:
    """resource_indicators_supported (no RFC 8414 member exists for RFC 8707; RFC 8414 §2
    allows additional ones, and this is the one MCP clients read) is true, and true to its
    word: resource at the authorization and token endpoints makes the token's audience
    (RFC 7662 §2.2 aud); an unknown one is invalid_target (RFC 8707 §2)."""
    assert metadata["resource_indicators_supported"] is True
    api = "https://api.example/"
    srv.add_resource(api, scopes=["api:read"])
    flow = new_flow(scope="api:read")
    r = wc.get("/authorize", params=[*flow.params.items(), ("resource", api)])
    code = query_of(r.location or "")["code"]
    data = {"grant_type": "authorization_code", "code": code, "resource": api,
            "redirect_uri": flow.params["redirect_uri"],
            "code_verifier": flow.verifier}  # fmt: skip
    token = wc.post("/token", data, headers=basic(CONFIDENTIAL, SECRET)).json()["access_token"]
    info = wc.post(metadata["introspection_endpoint"].removeprefix(ISSUER), {"token": token},
                   headers=basic(CONFIDENTIAL, SECRET)).json()  # fmt: skip
    assert info["aud"] == api
    unknown = wc.get("/authorize", params=[*new_flow().params.items(),
                                           ("resource", "https://unknown.example/")])  # fmt: skip
    assert query_of(unknown.location or "")["error"] == "invalid_target"


@pytest.mark.parametrize(
    "endpoint", ["token_endpoint", "introspection_endpoint", "revocation_endpoint"]
)
def test_listed_client_assertion_algs_work_and_no_other(
    wc: WSGIClient, srv: codeflow.Server, metadata: dict[str, Any], endpoint: str
) -> None:
    """RFC 8414 §2 token_endpoint_auth_signing_alg_values_supported (and the introspection
    and revocation lists): "JSON array containing a list of the JWS signing algorithms
    ("alg" values) supported by the token endpoint for the signature on the JWT"; "The
    value "none" MUST NOT be used". Each listed alg authenticates a private_key_jwt
    client; none and HS* (client_secret_jwt, refused: see the test above) are not listed."""
    prefix = endpoint.removesuffix("_endpoint")
    listed = metadata[f"{prefix}_endpoint_auth_signing_alg_values_supported"]
    assert listed and "none" not in listed and not any(a.startswith("HS") for a in listed)
    path = path_of(metadata[endpoint])
    for alg in listed:
        key = DPoPKey(alg)
        srv.update_client(KEYED, jwks={"keys": [key.jwk]})
        claims = {"iss": KEYED, "sub": KEYED, "aud": ISSUER, "exp": int(srv.clock()) + 60,
                  "jti": secrets.token_urlsafe(8)}  # fmt: skip
        fields = {"client_assertion_type": JWT_BEARER_ASSERTION,
                  "client_assertion": jwt.encode(claims, key.private, algorithm=alg)}  # fmt: skip
        issued = srv.issue_tokens(USERNAME, KEYED, "profile")
        if endpoint == "token_endpoint":
            data = {"grant_type": "refresh_token", "refresh_token": issued["refresh_token"]}
        else:
            data = {"token": issued["access_token"]}
        r = wc.post(path, {**data, **fields})
        assert r.status == 200, (alg, r.text)
