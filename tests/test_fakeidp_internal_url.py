"""Separate public (browser-facing) and internal (back-channel) base URLs, for apps whose
browser and backend reach the provider by different host names (containers, proxies)."""

from __future__ import annotations

import urllib.parse

import jwt
import pytest
import requests
from codeflow_sdk.testing import headless_login
from conftest import pkce_pair, query_of
from wsgi_client import WSGIClient

import codeflow

PUBLIC, INTERNAL = "http://localhost:8080", "http://idp:8000"
BACK_CHANNEL = ("token_endpoint", "userinfo_endpoint", "jwks_uri", "introspection_endpoint",
                "revocation_endpoint")  # fmt: skip


@pytest.mark.parametrize("path", [codeflow.OIDC_METADATA_PATH, codeflow.OAUTH_METADATA_PATH])
def test_discovery_on_the_internal_url_lists_back_channel_endpoints_there(path: str) -> None:
    """RFC 8414 §2, OIDC Discovery §3: asked on the internal host, the document lists the
    back-channel endpoints on the internal base; authorize and end_session, which the
    browser opens, stay on the public issuer, and the issuer is the public one (§3.3)."""
    srv = codeflow.Server(issuer=PUBLIC, internal_url=INTERNAL)
    meta = WSGIClient(srv.wsgi, host="idp:8000").get(path).json()
    assert meta["issuer"] == PUBLIC
    assert meta["authorization_endpoint"] == PUBLIC + "/authorize"
    assert meta["end_session_endpoint"] == PUBLIC + "/logout"
    for name in BACK_CHANNEL:
        assert meta[name].startswith(INTERNAL + "/"), name


def test_discovery_on_the_public_url_lists_everything_publicly() -> None:
    """A browser-side client that discovers on the public host gets public URLs only."""
    srv = codeflow.Server(issuer=PUBLIC, internal_url=INTERNAL)
    meta = WSGIClient(srv.wsgi, host="localhost:8080").get(codeflow.OIDC_METADATA_PATH).json()
    assert all(meta[name].startswith(PUBLIC + "/") for name in BACK_CHANNEL)


def test_a_backend_on_the_internal_url_completes_the_flow(codeflow_factory) -> None:
    """The whole flow with two names for one server: the browser on the public issuer
    (here 'localhost'), the app's back channel on the internal URL (here '127.0.0.1');
    the ID token's iss is the public issuer (OIDC Core §3.1.3.7)."""
    live = codeflow_factory(live=True, auto_approve="alice")
    port = live.url.rsplit(":", 1)[1]
    public = f"http://localhost:{port}"
    live.issuer, live.internal_url = public, live.url
    redirect = "http://127.0.0.1:9/callback"
    live.add_client("app", client_secret="s", redirect_uris=[redirect])
    meta = requests.get(live.url + codeflow.OIDC_METADATA_PATH, timeout=10).json()
    assert meta["token_endpoint"] == live.url + "/token"
    assert meta["authorization_endpoint"] == public + "/authorize"
    # The browser opens the public authorization endpoint; the backend redeems the code
    # at the internal token endpoint the metadata named.
    verifier, challenge = pkce_pair()
    url = meta["authorization_endpoint"] + "?" + urllib.parse.urlencode({
        "response_type": "code", "client_id": "app", "redirect_uri": redirect,
        "scope": "openid", "code_challenge": challenge, "code_challenge_method": "S256",
    })  # fmt: skip
    callback = query_of(headless_login(url))
    assert callback["iss"] == public  # RFC 9207 §2
    r = requests.post(meta["token_endpoint"], auth=("app", "s"), timeout=10, data={
        "grant_type": "authorization_code", "code": callback["code"], "redirect_uri": redirect,
        "code_verifier": verifier,
    })  # fmt: skip
    claims = jwt.decode(r.json()["id_token"], options={"verify_signature": False})
    assert claims["iss"] == public


def test_serve_internal_url() -> None:
    """CLI ``codeflow serve --issuer PUBLIC --internal-url INTERNAL``: discovery on the
    internal host names the internal token endpoint and the public authorize endpoint."""
    from test_cli import TIMEOUT, free_port, serving

    port = free_port()
    internal = f"http://127.0.0.1:{port}"
    with serving("--issuer", f"http://localhost:{port}", "--internal-url", internal,
                 port=port) as server:  # fmt: skip
        meta = requests.get(internal + codeflow.OIDC_METADATA_PATH, timeout=TIMEOUT).json()
        assert meta["token_endpoint"] == internal + "/token"
        assert meta["authorization_endpoint"] == f"http://localhost:{port}/authorize"
        assert server.interrupt() == 0, server.stderr
