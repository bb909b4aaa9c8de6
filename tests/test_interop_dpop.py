"""Interop for DPoP (RFC 9449) and private_key_jwt (RFC 7523 §2.2): two independent
clients from npm, oauth4webapi (v3) and openid-client (v6), pinned in
tests/interop/package.json, each run a DPoP-bound code flow with refresh against a live
codeflow on loopback, as a public client and as a private_key_jwt client, with and
without server nonces; Authlib's PrivateKeyJWT authenticates a client_credentials grant.

The drivers are tests/interop/oauth4webapi_dpop_flow.mjs and openid_client_dpop_flow.mjs:
the library makes every proof and assertion (its own key pair; the client's private key
given as a JWK), binds the code with dpop_jkt where it can (oauth4webapi), retries when
asked for a nonce, and calls userinfo with the DPoP scheme. Checked here: what the library
accepted, and that codeflow bound the tokens to the library's key (introspection's
cnf.jkt against the RFC 7638 thumbprint of the public key the driver reports).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from dpop_helpers import thumbprint
from test_interop_node import NODE, PASSWORD, REDIRECT, USERNAME, explain, npm_packages, run_node

import codeflow

DRIVERS = {
    "openid-client": "openid_client_dpop_flow.mjs",
    "oauth4webapi": "oauth4webapi_dpop_flow.mjs",
}
INTROSPECTOR, INTROSPECTOR_SECRET = "introspector", "introspector-secret"
CLIENT_KEY = ec.generate_private_key(ec.SECP256R1())
PRIVATE_JWK = {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(CLIENT_KEY)), "kid": "k1",
               "alg": "ES256"}  # fmt: skip
PUBLIC_JWK = {k: v for k, v in PRIVATE_JWK.items() if k != "d"}
CLIENTS = {
    "dpop-public": {},  # token_endpoint_auth_method none, refresh token bound to the key
    "dpop-keyed": {"jwks": {"keys": [PUBLIC_JWK]}},  # private_key_jwt
}

pytestmark = [
    pytest.mark.http,
    pytest.mark.skipif(NODE is None, reason="node is not on PATH (see test_interop_node.py)"),
]


@contextlib.contextmanager
def dpop_server(nonces: bool) -> Iterator[tuple[codeflow.Server, str]]:
    srv = codeflow.Server(dpop_nonces=nonces)
    with srv.running() as url:
        for client_id, options in CLIENTS.items():
            srv.add_client(client_id, redirect_uris=[REDIRECT], dpop_bound_access_tokens=True,
                           scopes=["openid", "profile", "offline_access"], **options)  # fmt: skip
        srv.add_client(INTROSPECTOR, client_secret=INTROSPECTOR_SECRET,
                       grant_types=["client_credentials"])  # fmt: skip
        srv.add_user(USERNAME, PASSWORD, claims={"name": "Alice"})
        yield srv, url


def run_driver(library: str, issuer: str, client_id: str) -> dict[str, Any]:
    config = {"issuer": issuer, "client_id": client_id, "redirect_uri": REDIRECT,
              "username": USERNAME, "password": PASSWORD,
              "private_jwk": PRIVATE_JWK if "jwks" in CLIENTS[client_id] else None}  # fmt: skip
    return run_node(DRIVERS[library], config)[0]


@pytest.mark.parametrize("nonces", [False, True], ids=["no-nonces", "nonces"])
@pytest.mark.parametrize("client_id", list(CLIENTS))
@pytest.mark.parametrize("library", list(DRIVERS))
def test_dpop_bound_code_flow_with_refresh(library: str, client_id: str, nonces: bool) -> None:
    """RFC 9449 §5: the token request with a proof gets token_type DPoP, bound to the
    library's key (§6.2 cnf.jkt, RFC 7638 thumbprint); §7.1: userinfo with the DPoP scheme
    and ath; §5: the refresh (a public client's refresh token bound to the key) gets a new
    bound token; §8, §9: with server nonces, the library retries with the nonce given.
    RFC 7523 §2.2: the keyed client authenticates with the library's private_key_jwt
    assertion (aud the issuer). Checked by the library: discovery, state, iss, the ID token;
    here: what it accepted and the binding codeflow made."""
    npm_packages()
    with dpop_server(nonces) as (_, issuer):
        result = run_driver(library, issuer, client_id)
        assert result.get("ok") is True, f"{library} failed against codeflow:\n{explain(result)}"
        assert result["library"].startswith(f"{library}@")
        keyed = "jwks" in CLIENTS[client_id]
        assert result["client_auth"] == ("private_key_jwt" if keyed else "none")
        # RFC 6749 §5.1: token_type is case-insensitive (the libraries lower-case it).
        types = (result["token_type"].lower(), result["refresh_token_type"].lower())
        assert types == ("dpop", "dpop")
        assert result["sub"] == result["userinfo_sub"] == result["userinfo_after_refresh_sub"]
        assert result["sub"] == USERNAME
        assert result["refresh_token_rotated"] is True
        jkt = thumbprint(result["dpop_public_jwk"])
        for token in (result["access_token"], result["refreshed_access_token"]):
            r = requests.post(issuer + "/introspect", data={"token": token},
                              auth=(INTROSPECTOR, INTROSPECTOR_SECRET), timeout=10)  # fmt: skip
            info = r.json()
            assert info["active"] is True, info
            assert (info["token_type"], info["cnf"]) == ("DPoP", {"jkt": jkt})


def test_authlib_private_key_jwt() -> None:
    """RFC 7523 §2.2 with Authlib (PyPI, an independent implementation): its PrivateKeyJWT
    client authentication signs the assertion; given the issuer as the audience (what
    codeflow accepts: see README "Sender-constrained tokens"), client_credentials works."""

    with dpop_server(nonces=False) as (srv, url):
        authlib_client_credentials(srv, url)


def authlib_client_credentials(srv: codeflow.Server, url: str) -> None:
    from authlib.integrations.requests_client import OAuth2Session, OAuthError
    from authlib.oauth2.rfc7523 import PrivateKeyJWT

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key.public_key()))
    srv.add_client("authlib-keyed", jwks={"keys": [public]},
                   grant_types=["client_credentials"], scopes=["api:read"])  # fmt: skip
    pem = rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip

    def session(auth: PrivateKeyJWT) -> OAuth2Session:
        return OAuth2Session("authlib-keyed", pem, scope="api:read",
                             token_endpoint_auth_method=auth)  # fmt: skip

    token = session(PrivateKeyJWT(url)).fetch_token(url + "/token", grant_type="client_credentials")
    assert token["token_type"] == "Bearer" and token["scope"] == "api:read"
    # Authlib's default audience is the token endpoint URL, which codeflow refuses.
    with pytest.raises(OAuthError, match="invalid_client"):
        session(PrivateKeyJWT()).fetch_token(url + "/token", grant_type="client_credentials")
