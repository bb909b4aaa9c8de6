"""CORS (Fetch Standard §3.2, the CORS protocol) on the endpoints a browser app calls:
discovery and JWKS for any origin; token, userinfo and revocation for the origins of the
client's registration; never the authorization, login, consent or logout pages, nor
introspection (issue 14 item 1, DESIGN "Protocol surface").

In-process through wsgiref.validate: CORS is headers on the wire.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import (
    CONFIDENTIAL,
    SECRET,
    USERNAME,
    Clock,
    make_server,
    new_flow,
    query_of,
)
from wsgi_client import Response, WSGIClient, basic

import codeflow

SPA = "spa"
SPA_ORIGIN = "https://spa.example"
SPA_REDIRECT = SPA_ORIGIN + "/callback"
EXPLICIT_ORIGIN = "https://dashboard.example:8443"
OTHER_ORIGIN = "https://evil.example"


@pytest.fixture
def srv(clock: Clock) -> codeflow.Server:
    """The conftest server approving at once as alice, with a browser app (SPA) whose
    redirect URI is at SPA_ORIGIN, and the confidential client allowed EXPLICIT_ORIGIN."""
    srv = make_server(clock, auto_approve=USERNAME)
    srv.add_client(SPA, redirect_uris=[SPA_REDIRECT], name="Single-page app")
    srv.update_client(CONFIDENTIAL, allowed_origins=[EXPLICIT_ORIGIN])
    return srv


@pytest.fixture
def wc(srv: codeflow.Server) -> WSGIClient:
    return WSGIClient(srv.wsgi)


def spa_tokens(wc: WSGIClient, origin: str = SPA_ORIGIN) -> Response:
    """The SPA's code flow: authorize (auto-approved), then redeem from ``origin``."""
    flow = new_flow(SPA, redirect_uri=SPA_REDIRECT, scope="openid profile offline_access")
    code = query_of(wc.get("/authorize", params=flow.params).location or "")["code"]
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": SPA_REDIRECT,
        "code_verifier": flow.verifier,
        "client_id": SPA,
    }
    return wc.post("/token", data, headers={"Origin": origin})


def vary(r: Response) -> set[str]:
    return {v.strip().lower() for h in r.header_values("Vary") for v in h.split(",")}


def cors_headers(r: Response) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k.startswith("access-control-")}


def preflight(wc: WSGIClient, path: str, origin: str, method: str, headers: str) -> Response:
    return wc.request(
        "OPTIONS",
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )


@pytest.mark.parametrize(
    "path", ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server",
             "/jwks"],
)  # fmt: skip
def test_discovery_and_jwks_may_be_read_by_any_origin(wc: WSGIClient, path: str) -> None:
    """Fetch §3.2.3: Access-Control-Allow-Origin "Indicates whether the response can be
    shared, via returning the literal value of the `Origin` request header (which can be
    `null`) or `*` in a response"; public documents are shared with every origin, and
    never with credentials (Fetch §3.2.5)."""
    r = wc.get(path, headers={"Origin": OTHER_ORIGIN})
    assert r.status == 200
    assert r.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in r.headers
    pre = preflight(wc, path, OTHER_ORIGIN, "GET", "")
    assert pre.status in (200, 204)
    assert pre.headers["access-control-allow-origin"] == "*"
    assert "GET" in pre.headers["access-control-allow-methods"]


def test_token_endpoint_shares_with_a_public_clients_redirect_origin(wc: WSGIClient) -> None:
    """OAuth 2.0 for Browser-Based Apps (draft) "Cross-Domain Requests": "Since these
    requests will be made from a browser, authorization servers MUST support the necessary
    CORS headers (defined in [Fetch]) to allow the browser to make the request"; the
    origins are those of the public client's registered redirect URIs. Fetch §3.2: "If CORS
    protocol requirements are more complicated than setting `Access-Control-Allow-Origin`
    to `*` or a static origin, `Vary` is to be used", and no credentials (§3.2.5)."""
    r = spa_tokens(wc)
    assert r.status == 200, r.text
    assert r.json()["access_token"]
    assert r.headers["access-control-allow-origin"] == SPA_ORIGIN
    assert "origin" in vary(r)
    assert "access-control-allow-credentials" not in r.headers

    # The SPA refreshes from the same origin; an error is readable too, so the app can
    # tell that it must sign in again.
    refresh = {"grant_type": "refresh_token", "client_id": SPA,
               "refresh_token": r.json()["refresh_token"]}  # fmt: skip
    again = wc.post("/token", refresh, headers={"Origin": SPA_ORIGIN})
    assert again.status == 200, again.text
    assert again.headers["access-control-allow-origin"] == SPA_ORIGIN
    reused = wc.post("/token", refresh, headers={"Origin": SPA_ORIGIN})
    assert reused.json()["error"] == "invalid_grant"
    assert reused.headers["access-control-allow-origin"] == SPA_ORIGIN


def test_token_endpoint_does_not_share_with_other_origins(wc: WSGIClient) -> None:
    """Fetch §3.2.3: without an `Access-Control-Allow-Origin` that matches, the browser
    does not share the response: a page of another origin cannot read the SPA's tokens,
    nor a confidential client's origin derived from its (server-side) redirect URI."""
    r = spa_tokens(wc, OTHER_ORIGIN)
    assert cors_headers(r) == {}
    assert "origin" in vary(r)
    issued = wc.post(
        "/token",
        {"grant_type": "client_credentials"},
        headers={**basic(CONFIDENTIAL, SECRET), "Origin": "http://127.0.0.1:9000"},
    )
    assert issued.status == 200
    assert cors_headers(issued) == {}


def test_an_explicit_allowed_origin_is_shared_with(wc: WSGIClient) -> None:
    """Issue 14 item 1: allowed origins per client, "plus an explicit `allowed_origins`
    setting": a confidential client's browser front end at another origin."""
    r = wc.post(
        "/token",
        {"grant_type": "client_credentials"},
        headers={**basic(CONFIDENTIAL, SECRET), "Origin": EXPLICIT_ORIGIN},
    )
    assert r.status == 200, r.text
    assert r.headers["access-control-allow-origin"] == EXPLICIT_ORIGIN


def test_userinfo_preflight_and_response(wc: WSGIClient) -> None:
    """Fetch §3.2.2: a CORS-preflight request "includes an `Access-Control-Request-Method`
    header" and may include "`Access-Control-Request-Headers`"; §3.2.3: the answer names
    them in `Access-Control-Allow-Methods` and `-Headers`. OIDC Core §5.3.1: userinfo is
    called with the access token in the Authorization header (not a CORS-safelisted
    header, so the browser asks first); RFC 6750 §3: errors carry WWW-Authenticate, which
    the page may read (`Access-Control-Expose-Headers`)."""
    token = spa_tokens(wc).json()["access_token"]
    pre = preflight(wc, "/userinfo", SPA_ORIGIN, "GET", "authorization")
    assert pre.status in (200, 204), pre.text
    assert pre.headers["access-control-allow-origin"] == SPA_ORIGIN
    assert "GET" in pre.headers["access-control-allow-methods"]
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    assert "origin" in vary(pre)
    assert "access-control-allow-credentials" not in pre.headers

    r = wc.get("/userinfo", headers={"Authorization": f"Bearer {token}", "Origin": SPA_ORIGIN})
    assert r.status == 200
    assert r.json()["sub"] == USERNAME
    assert r.headers["access-control-allow-origin"] == SPA_ORIGIN
    stranger = wc.get(
        "/userinfo", headers={"Authorization": f"Bearer {token}", "Origin": OTHER_ORIGIN}
    )
    assert cors_headers(stranger) == {}

    bad = wc.get("/userinfo", headers={"Authorization": "Bearer nope", "Origin": SPA_ORIGIN})
    assert bad.status == 401
    assert bad.headers["access-control-allow-origin"] == SPA_ORIGIN
    assert "www-authenticate" in bad.headers["access-control-expose-headers"].lower()


def test_preflight_from_an_unknown_origin_is_not_allowed(wc: WSGIClient) -> None:
    """Fetch §3.2.3: a preflight answered without `Access-Control-Allow-Origin` fails in
    the browser, which then never sends the request."""
    for path, method in [("/token", "POST"), ("/userinfo", "GET"), ("/revoke", "POST")]:
        pre = preflight(wc, path, OTHER_ORIGIN, method, "authorization")
        assert pre.status in (200, 204), (path, pre.text)
        assert cors_headers(pre) == {}, path
        ok = preflight(wc, path, SPA_ORIGIN, method, "content-type")
        assert ok.headers["access-control-allow-origin"] == SPA_ORIGIN, path


def test_revocation_is_shared_with_the_clients_origin(wc: WSGIClient) -> None:
    """RFC 7009 §2.1, from a browser app: the SPA revokes its refresh token on sign-out and
    reads the answer (Browser-Based Apps "Cross-Domain Requests": revocation too)."""
    refresh_token = spa_tokens(wc).json()["refresh_token"]
    r = wc.post(
        "/revoke", {"token": refresh_token, "client_id": SPA}, headers={"Origin": SPA_ORIGIN}
    )
    assert r.status == 200, r.text
    assert r.headers["access-control-allow-origin"] == SPA_ORIGIN


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/authorize"), ("POST", "/login"), ("POST", "/consent"), ("GET", "/logout"),
     ("POST", "/logout"), ("POST", "/introspect"), ("OPTIONS", "/authorize"),
     ("OPTIONS", "/login"), ("OPTIONS", "/introspect"), ("OPTIONS", "/logout")],
)  # fmt: skip
def test_pages_and_introspection_never_answer_cors(wc: WSGIClient, method: str, path: str) -> None:
    """Browser-Based Apps (draft): the authorization endpoint is reached by navigation,
    never by a script; DESIGN "Protocol surface": "the authorization, login, consent and
    logout pages never do" answer CORS, and introspection is for resource servers."""
    headers = {"Origin": SPA_ORIGIN, "Access-Control-Request-Method": "POST"}
    data: dict[str, Any] = {"client_id": SPA}
    if method == "GET":
        r = wc.get(path, params=new_flow(SPA, redirect_uri=SPA_REDIRECT).params, headers=headers)
    elif method == "POST":
        r = wc.post(path, data, headers=headers)
    else:
        r = wc.request("OPTIONS", path, headers=headers)
    assert cors_headers(r) == {}, (method, path, r.headers)


@pytest.mark.parametrize(
    "origin",
    ["*", "null", "https://a.example/", "https://a.example/app", "ftp://a.example",
     "https://A.example", "https://a.example:443", "a.example"],
)  # fmt: skip
def test_allowed_origins_must_be_serialized_origins(srv: codeflow.Server, origin: str) -> None:
    """Fetch §3.2.3: the value that allows one origin is "the literal value of the `Origin`
    request header", a serialized origin (HTML §7.1.1: scheme "://" host [":" port], no
    path, default port omitted, host lower case); a wildcard is never registered."""
    with pytest.raises(ValueError, match="allowed_origins"):
        srv.add_client("other", redirect_uris=[SPA_REDIRECT], allowed_origins=[origin])


def test_allowed_origins_from_the_config_file(clock: Clock) -> None:
    """Issue 14 item 1: the `allowed_origins` client setting, in the config file as in
    Python; a public client's redirect URIs need none."""
    srv = make_server(clock)
    codeflow.load_config(srv, {"clients": [{
        "client_id": "portal", "client_secret": "s", "redirect_uris": [SPA_REDIRECT],
        "allowed_origins": [EXPLICIT_ORIGIN],
    }]})  # fmt: skip
    client = srv.storage.get_client("portal")
    assert client is not None and client.allowed_origins == (EXPLICIT_ORIGIN,)
