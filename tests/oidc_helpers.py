"""Helpers for the OpenID Connect tests: an in-process browser that signs in and
consents, a token request, and JWT verification done independently of codeflow
(PyJWT against the published JWKS, never codeflow's own keys)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import jwt
from conftest import (
    CONFIDENTIAL,
    ISSUER,
    PASSWORD,
    REDIRECT,
    SECRET,
    USERNAME,
    Flow,
    form_fields,
    new_flow,
    query_of,
)
from wsgi_client import Response, WSGIClient, basic

PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")  # RFC 7518 §6.2.2, §6.3.2, §6.4


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def is_login_page(r: Response) -> bool:
    return r.status == 200 and 'action="login"' in r.text


def is_consent_page(r: Response) -> bool:
    return r.status == 200 and 'action="consent"' in r.text


def submit_login(
    browser: WSGIClient, page: Response, username: str = USERNAME, password: str = PASSWORD
) -> Response:
    """Fill in the login page and follow the redirect back to the authorization endpoint."""
    assert is_login_page(page), page.text
    data = {**form_fields(page.text), "username": username, "password": password}
    r = browser.post("/login", data=data)
    assert r.status == 303, r.text
    return browser.get(r.location)


def approve(browser: WSGIClient, page: Response, decision: str = "approve") -> Response:
    assert is_consent_page(page), page.text
    return browser.post("/consent", data={**form_fields(page.text), "decision": decision})


def authorize(
    browser: WSGIClient, flow: Flow, username: str = USERNAME, password: str = PASSWORD
) -> dict[str, str]:
    """Act as the user: authorize, sign in and consent when asked; return the callback query."""
    r = browser.get("/authorize", params=flow.params)
    if is_login_page(r):
        r = submit_login(browser, r, username, password)
    if is_consent_page(r):
        r = approve(browser, r)
    assert r.status in (302, 303), r.text
    assert r.location.startswith(flow.params.get("redirect_uri", REDIRECT) + "?"), r.location
    return query_of(r.location)


def redeem(
    browser: WSGIClient,
    flow: Flow,
    code: str,
    client_id: str = CONFIDENTIAL,
    secret: str | None = SECRET,
) -> dict[str, Any]:
    """RFC 6749 §4.1.3: exchange a code; returns the §5.1 token response."""
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": flow.params.get("redirect_uri", REDIRECT),
        "code_verifier": flow.verifier,
    }
    headers = None
    if secret is None:
        data["client_id"] = client_id
    else:
        headers = basic(client_id, secret)
    r = browser.post("/token", data=data, headers=headers)
    assert r.status == 200, r.text
    return r.json()


def sign_in_for_tokens(
    browser: WSGIClient,
    client_id: str = CONFIDENTIAL,
    secret: str | None = SECRET,
    username: str = USERNAME,
    password: str = PASSWORD,
    **params: str | None,
) -> dict[str, Any]:
    """A whole code flow through the browser and the token endpoint."""
    flow = new_flow(client_id, **params)
    query = authorize(browser, flow, username, password)
    assert "code" in query, query
    return redeem(browser, flow, query["code"], client_id, secret)


def jwks_keys(browser: WSGIClient) -> dict[str, jwt.PyJWK]:
    """The published key set (RFC 7517 §5), by kid."""
    r = browser.get("/jwks")
    assert r.status == 200, r.text
    return {k["kid"]: jwt.PyJWK(k) for k in r.json()["keys"]}


def verify_jwt(
    token: str,
    keys: dict[str, jwt.PyJWK],
    *,
    audience: str,
    now: float,
    issuer: str = ISSUER,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify a JWT as a relying party would (OIDC Core §3.1.3.7): the header's kid names
    a published key, the alg is that key's, the signature holds, iss and aud match, and
    iat <= now < exp on the test's clock. Returns (header, claims)."""
    header = jwt.get_unverified_header(token)
    assert "kid" in header, header
    assert header["kid"] in keys, (header["kid"], list(keys))
    key = keys[header["kid"]]
    assert header["alg"] == key.algorithm_name
    claims = jwt.decode(
        token,
        key.key,
        algorithms=[key.algorithm_name],
        audience=audience,
        issuer=issuer,
        # Times are checked below against the test's clock, not the wall clock.
        options={
            "verify_exp": False,
            "verify_iat": False,
            "verify_nbf": False,
            "require": ["iss", "sub", "aud", "exp", "iat"],
        },
    )
    assert isinstance(claims["iat"], int) and isinstance(claims["exp"], int)
    assert claims["iat"] <= now < claims["exp"], (claims["iat"], now, claims["exp"])
    return header, claims


def left_half_sha256(value: str) -> str:
    """OIDC Core §3.3.2.11: base64url of the left-most half of the SHA-256 of the ASCII value."""
    digest = hashlib.sha256(value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode()
