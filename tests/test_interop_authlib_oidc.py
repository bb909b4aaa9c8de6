"""Interop: authlib's OpenID Connect client pieces run a whole code flow against a live
codeflow on loopback: discovery, code + PKCE S256 + nonce, ID token validation, userinfo,
refresh.

authlib's ``OAuth2Session`` (requests) builds the authorization URL, checks state and
redeems the code, calls userinfo and refreshes. The ID token is validated the way
authlib's own OpenID client does it (``OpenIDMixin.parse_id_token`` in
authlib.integrations.base_client): the JWS with joserfc against the discovered JWKS,
restricted to the discovered algorithms, then the claims with authlib's
``authlib.oidc.core.CodeIDToken`` (iss, aud, exp, iat, nonce, azp, at_hash).
``authlib.jose`` is not used: authlib deprecates it in favour of joserfc, which authlib
itself depends on and uses.

(tests/test_interop_authlib.py covers the plain OAuth 2.0 flow with authlib.)
"""

from __future__ import annotations

import secrets
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oidc.core import CodeIDToken, UserInfo
from conftest import form_fields, query_of
from joserfc import jwt
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry
from test_interop_node import (
    CLAIMS,
    CLIENTS,
    PASSWORD,
    REDIRECT,
    USERNAME,
    impostor_jwks,
    interop_server,
)

import codeflow

pytestmark = pytest.mark.http

# The clients, user and REDIRECT (nothing listens there: the browser stops at the
# redirect) are test_interop_node's, registered by its interop_server.
SCOPE = "openid profile email offline_access"
AUTH_METHOD = {"confidential-basic": "client_secret_basic"}  # the others: none


@pytest.fixture
def live() -> Iterator[tuple[codeflow.Server, str]]:
    """test_interop_node's interop_server: a fresh codeflow on a real loopback socket,
    with the interop clients and user (no npm needed here)."""
    with interop_server() as running:
        yield running


def discover(issuer: str) -> dict[str, Any]:
    """OIDC Discovery 1.0 §4: GET {issuer}/.well-known/openid-configuration; §4.3: "The
    issuer value returned MUST be identical to the Issuer URL that was used as the prefix
    to /.well-known/openid-configuration"."""
    r = requests.get(issuer + "/.well-known/openid-configuration", timeout=10)
    r.raise_for_status()
    metadata = r.json()
    assert metadata["issuer"] == issuer
    return metadata


def sign_in_and_approve(authorization_url: str) -> str:
    """Act as the user's browser: login page, consent page; return the callback URL."""
    s = requests.Session()
    r = s.get(authorization_url, allow_redirects=False, timeout=10)
    assert r.status_code == 200 and 'name="password"' in r.text, r.text
    data = {**form_fields(r.text), "username": USERNAME, "password": PASSWORD}
    r = s.post(urllib.parse.urljoin(r.url, "login"), data=data, allow_redirects=False)
    assert r.status_code == 303, r.text
    r = s.get(r.headers["Location"], allow_redirects=False, timeout=10)
    assert r.status_code == 200 and 'name="decision"' in r.text, r.text
    data = {**form_fields(r.text), "decision": "approve"}
    r = s.post(urllib.parse.urljoin(r.url, "consent"), data=data, allow_redirects=False)
    assert r.status_code == 303, r.text
    return r.headers["Location"]


def verify_signature(metadata: dict[str, Any], id_token: str) -> jwt.Token:
    """The JWS against the issuer's JWKS, with the algorithms discovery lists (joserfc,
    as authlib's OpenIDMixin.parse_id_token does it)."""
    jwks = requests.get(metadata["jwks_uri"], timeout=10).json()
    return jwt.decode(
        id_token,
        KeySet.import_key_set(jwks),
        registry=JWSRegistry(algorithms=metadata["id_token_signing_alg_values_supported"]),
    )


def validate_id_token(
    metadata: dict[str, Any], id_token: str, client_id: str, nonce: str, access_token: str
) -> CodeIDToken:
    """What authlib's OpenIDMixin.parse_id_token does: the signature, then authlib's
    CodeIDToken claim rules, here with iss, aud and nonce essential."""
    token = verify_signature(metadata, id_token)
    claims = CodeIDToken(
        token.claims,
        token.header,
        {
            "iss": {"essential": True, "value": metadata["issuer"]},
            "aud": {"essential": True, "value": client_id},
            "nonce": {"essential": True, "value": nonce},
        },
        {"client_id": client_id, "nonce": nonce, "access_token": access_token},
    )
    claims.validate()
    return claims


@pytest.mark.parametrize("client_id", list(CLIENTS))
def test_authlib_code_flow_with_id_token_userinfo_and_refresh(
    live: tuple[codeflow.Server, str], client_id: str
) -> None:
    """OIDC Core §3.1.3.7: "Clients MUST validate the ID Token in the Token Response"; the
    iss Claim "MUST exactly match" the discovered issuer, aud "contains its client_id", "If
    a nonce value was sent in the Authentication Request, a nonce Claim MUST be present and
    its value checked", and the signature is checked with "the keys provided by the
    Issuer". OIDC Core §5.3.2: userinfo's sub "MUST be verified to exactly match the sub
    Claim in the ID Token". RFC 6749 §6: a refresh token buys a new access token.

    Checked by authlib (Python): state in the callback, the PKCE S256 challenge it sends
    and the verifier it redeems with, client auth (client_secret_basic, or none for the
    public clients), and the ID token's claims (CodeIDToken: iss, aud, exp, iat, nonce,
    azp, at_hash against the access token); by joserfc (authlib's JOSE library): the
    ID token's signature, RS256 or ES256, against the JWKS. Checked here: discovery's
    issuer, RFC 9207 §2.4's iss in the callback, userinfo's sub, the refresh.
    """
    _srv, issuer = live
    metadata = discover(issuer)
    secret = CLIENTS[client_id].get("client_secret")
    session = OAuth2Session(
        client_id,
        secret,
        token_endpoint_auth_method=AUTH_METHOD.get(client_id, "none"),
        scope=SCOPE,
        redirect_uri=REDIRECT,
        code_challenge_method="S256",
    )
    verifier = secrets.token_urlsafe(48)
    nonce = secrets.token_urlsafe(16)
    url, state = session.create_authorization_url(
        metadata["authorization_endpoint"], code_verifier=verifier, nonce=nonce
    )
    assert query_of(url)["code_challenge_method"] == "S256"

    callback = sign_in_and_approve(url)
    # RFC 9207 §2.4: the client compares iss to the issuer it sent the request to.
    assert query_of(callback)["iss"] == issuer

    token = session.fetch_token(
        metadata["token_endpoint"],
        authorization_response=callback,
        state=state,
        code_verifier=verifier,
    )
    claims = validate_id_token(metadata, token["id_token"], client_id, nonce, token["access_token"])
    assert claims["sub"] == USERNAME
    assert claims.header["alg"] == CLIENTS[client_id].get("id_token_signed_response_alg", "RS256")

    r = session.get(metadata["userinfo_endpoint"], timeout=10)
    r.raise_for_status()
    userinfo = UserInfo(r.json())
    assert userinfo["sub"] == claims["sub"]
    assert userinfo == {**CLAIMS, "sub": USERNAME}

    old = dict(token)
    new = session.refresh_token(metadata["token_endpoint"])
    assert new["access_token"] != old["access_token"]
    assert new["refresh_token"] != old["refresh_token"]  # rotated: RFC 9700 §4.14.2
    assert new["token_type"].lower() == "bearer"
    r = session.get(metadata["userinfo_endpoint"], timeout=10)  # with the new token
    assert r.status_code == 200 and r.json()["sub"] == USERNAME


def test_joserfc_rejects_id_token_signed_by_another_key(
    live: tuple[codeflow.Server, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """OIDC Core §3.1.3.7 step 6: "The Client MUST use the keys provided by the Issuer."

    A control for the test above: with the JWKS serving other keys under codeflow's kids,
    the same validation refuses the ID token, so the passing test did check codeflow's
    signature and not just decode it."""
    srv, issuer = live
    metadata = discover(issuer)
    id_token = srv.issue_tokens(USERNAME, "confidential-basic", "openid")["id_token"]
    assert verify_signature(metadata, id_token).claims["sub"] == USERNAME
    monkeypatch.setattr(codeflow, "jwks", impostor_jwks(codeflow.jwks))
    with pytest.raises(BadSignatureError):
        verify_signature(metadata, id_token)
