"""Interop: the device authorization grant (RFC 8628) and pushed authorization requests
(RFC 9126) with two independent client libraries from npm, openid-client (v6) and
oauth4webapi (v3), pinned in tests/interop/package.json and its lock file, against a
live codeflow on loopback.

The drivers are tests/interop/openid_client_device_par.mjs and
tests/interop/oauth4webapi_device_par.mjs; the user's side (the /device page, login and
consent) is tests/interop/browser.mjs acting as a browser. Each driver prints one JSON line
with what the library accepted; these tests check it. Without ``node`` on PATH they skip.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from test_interop_node import NODE, explain, npm_packages, run_node

import codeflow

DRIVERS = {
    "openid-client": "openid_client_device_par.mjs",
    "oauth4webapi": "oauth4webapi_device_par.mjs",
}
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
REDIRECT = "http://127.0.0.1:9/callback"  # nothing listens: the driver stops at the redirect
USERNAME, PASSWORD = "alice", "alice-interop-password"
SECRET = "interop-client-secret"
# client_id -> its secret (None: public).
CLIENTS = {"confidential-basic": SECRET, "public-none": None}

pytestmark = [
    pytest.mark.http,
    pytest.mark.skipif(
        NODE is None, reason="node is not on PATH: these interop tests need Node.js 20+"
    ),
]


@contextlib.contextmanager
def interop_server(**options: Any) -> Iterator[tuple[codeflow.Server, str]]:
    srv = codeflow.Server(**options)
    with srv.running() as url:
        for client_id, secret in CLIENTS.items():
            srv.add_client(
                client_id, client_secret=secret, redirect_uris=[REDIRECT], name="Interop App",
                scopes=["openid", "profile", "offline_access"],
                grant_types=["authorization_code", "refresh_token", DEVICE_GRANT],
            )  # fmt: skip
        srv.add_user(USERNAME, PASSWORD, claims={"name": "Alice Liddell"})
        yield srv, url


def run_driver(library: str, mode: str, issuer: str, client_id: str) -> dict[str, Any]:
    config = {"mode": mode, "issuer": issuer, "client_id": client_id,
              "client_secret": CLIENTS[client_id], "redirect_uri": REDIRECT,
              "username": USERNAME, "password": PASSWORD}  # fmt: skip
    result: dict[str, Any]
    result, returncode = run_node(DRIVERS[library], config, timeout=90)
    assert result.get("ok") is True, explain(result)
    assert returncode == 0
    return result


LIBRARIES = pytest.mark.parametrize("library", list(DRIVERS))
ALL_CLIENTS = pytest.mark.parametrize("client_id", list(CLIENTS))


@LIBRARIES
@ALL_CLIENTS
def test_device_flow(library: str, client_id: str) -> None:
    """RFC 8628 §3.1-§3.5 with an independent client: it asks for the codes (a confidential
    client authenticated with HTTP Basic, a public one with client_id), polls while the user
    allows the device on /device, validates the ID token (OIDC Core §3.1.3.7: iss, aud, exp,
    signature against the JWKS) and calls userinfo; openid-client refreshes too. The
    low-level oauth4webapi driver polls twice at once first: authorization_pending, then
    slow_down (§3.5), and after the tokens a replay of the device code is invalid_grant."""
    npm_packages()
    with interop_server() as (_, issuer):
        result = run_driver(library, "device", issuer, client_id)
    assert result["sub"] == USERNAME and result["id_token_claims"]["aud"] == client_id
    assert result["id_token_claims"]["iss"] == issuer
    assert result["userinfo"]["name"] == "Alice Liddell"
    assert result["granted_scope"] == "openid profile offline_access"
    if library == "oauth4webapi":
        assert result["first_errors"] == ["authorization_pending", "slow_down"]
        assert result["refresh_token"] is True
        assert result["replay_error"] == "invalid_grant"
    else:
        assert result["interval"] == 5 and result["expires_in"] == 600
        assert result["refreshed"] is True


@LIBRARIES
@ALL_CLIENTS
def test_pushed_authorization_request(library: str, client_id: str) -> None:
    """RFC 9126 §2, §4 with an independent client, on a server that requires pushed
    requests (§5): the library pushes the request (authenticated), sends the browser with
    client_id and request_uri only, and redeems the code it gets back after login and
    consent (state, PKCE, nonce and the ID token checked by the library)."""
    npm_packages()
    with interop_server(require_pushed_authorization_requests=True) as (_, issuer):
        result = run_driver(library, "par", issuer, client_id)
    assert result["sub"] == USERNAME and result["granted_scope"] == "openid profile"
    assert result["request_uri_prefix"] == "urn:ietf:params:oauth:request_uri"
    if library == "openid-client":
        assert result["authorization_url_params"] == ["client_id", "request_uri"]
    else:
        assert result["expires_in"] == 60
