"""Scripting the fake IdP from Python (DESIGN "users/claims set from Python, auto-approve
so no browser is needed, tokens minted directly for API tests, a controllable clock")."""

from __future__ import annotations

import base64

import jwt
import pytest
from codeflow_sdk.testing import Clock
from conftest import (
    CONFIDENTIAL,
    PASSWORD,
    REDIRECT,
    SECRET,
    USERNAME,
    make_server,
    new_flow,
    query_of,
)
from wsgi_client import WSGIClient

import codeflow

BASIC = {
    "Authorization": "Basic " + base64.b64encode(f"{CONFIDENTIAL}:{SECRET}".encode()).decode()
}


def claims_of(id_token: str) -> dict:
    return jwt.decode(id_token, options={"verify_signature": False})


def redeem(server: codeflow.Server, flow) -> dict:
    """Authorize (auto-approved unless the server names another user) and redeem the code."""
    server.auto_approve = server.auto_approve or USERNAME
    client = WSGIClient(server.wsgi)
    r = client.get("/authorize", params=flow.params)
    code = query_of(r.location)["code"]
    r = client.post("/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
        "code_verifier": flow.verifier,
    }, headers=BASIC)  # fmt: skip
    assert r.status == 200, r.text
    return r.json()


def test_set_claims_changes_what_userinfo_answers(server: codeflow.Server) -> None:
    """OIDC Core §5.3: userinfo answers the user's claims, as set_claims scripted them."""
    server.set_claims(USERNAME, {"email": "alice@example.org", "email_verified": True})
    tokens = server.issue_tokens(USERNAME, CONFIDENTIAL, "openid profile email")
    client = WSGIClient(server.wsgi)
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    body = client.get("/userinfo", headers=auth).json()
    assert body == {"sub": USERNAME, "name": "Alice", "email": "alice@example.org",
                    "email_verified": True}  # fmt: skip
    server.set_claims(USERNAME, {"name": "Alice L."}, merge=False)
    assert client.get("/userinfo", headers=auth).json() == {"sub": USERNAME, "name": "Alice L."}
    with pytest.raises(ValueError, match="unknown user"):
        server.set_claims("nobody", {})


def test_next_claims_apply_to_the_next_id_token_only(server: codeflow.Server) -> None:
    """OIDC Core §2: next_claims scripts the claims of the next ID token, once."""
    server.next_claims({"email": "alice@example.org", "groups": ["admin"]})
    first = claims_of(redeem(server, new_flow())["id_token"])
    assert first["email"] == "alice@example.org" and first["groups"] == ["admin"]
    assert first["iss"] == server.issuer and first["sub"] == USERNAME
    second = claims_of(redeem(server, new_flow())["id_token"])
    assert "email" not in second and "groups" not in second


def test_next_claims_for_one_user_wait_for_that_user(server: codeflow.Server) -> None:
    """next_claims(username=...) skips other users' ID tokens and waits for that user's."""
    server.add_user("bob", "bob-password")
    server.next_claims({"acr": "gold"}, username="bob")
    server.next_claims({"amr": ["pwd"]})
    alice = claims_of(server.issue_tokens(USERNAME, CONFIDENTIAL, "openid")["id_token"])
    assert alice.get("amr") == ["pwd"] and "acr" not in alice
    bob = claims_of(server.issue_tokens("bob", CONFIDENTIAL, "openid")["id_token"])
    assert bob["acr"] == "gold"


def test_next_claims_may_override_standard_claims(server: codeflow.Server) -> None:
    """A scripted claim wins over the one the server would send (here OIDC Core §2 sub)."""
    server.next_claims({"sub": "someone-else"})
    assert claims_of(redeem(server, new_flow())["id_token"])["sub"] == "someone-else"


def test_issue_tokens_mints_access_id_and_refresh(server: codeflow.Server) -> None:
    """RFC 6749 §5.1 and OIDC Core §3.1.3.3: issue_tokens returns what the token endpoint
    would, without a browser; the access token works at introspection (RFC 7662)."""
    body = server.issue_tokens(USERNAME, CONFIDENTIAL, "openid offline_access",
                               claims={"tenant": "t1"})  # fmt: skip
    assert {"access_token", "id_token", "refresh_token"} <= body.keys()
    assert claims_of(body["id_token"])["tenant"] == "t1"
    r = WSGIClient(server.wsgi).post(
        "/introspect", data={"token": body["access_token"]}, headers=BASIC
    )
    assert r.json()["active"] is True and r.json()["sub"] == USERNAME


def test_auto_approve_by_name_and_by_login_hint(clock) -> None:
    """DESIGN "Auto-approve": as the named user, or as the user named by login_hint."""
    server = make_server(clock, auto_approve=USERNAME)
    server.add_user("bob", "bob-password")
    assert claims_of(redeem(server, new_flow())["id_token"])["sub"] == USERNAME
    hinted = claims_of(redeem(server, new_flow(login_hint="bob"))["id_token"])
    assert hinted["sub"] == "bob"


def test_clock_class_frozen_and_following(server: codeflow.Server) -> None:
    """The Clock of codeflow_sdk.testing: frozen at a start, moved by advance and set;
    as Server(clock=...) it dates the ID token (OIDC Core §2 iat)."""
    clock = Clock(1_000_000.0)
    assert clock() == 1_000_000.0
    clock.advance(30)
    assert clock() == 1_000_030.0
    clock.set(2_000_000.0)
    assert clock() == 2_000_000.0
    srv = codeflow.Server(clock=clock)
    srv.storage.get_or_add_signing_key(codeflow.signing_key(server))
    srv.add_client("c", client_secret="s", redirect_uris=[REDIRECT])
    assert claims_of(srv.issue_tokens("u", "c", "openid")["id_token"])["iat"] == 2_000_000


def test_login_with_password_is_unchanged(server: codeflow.Server) -> None:
    """Strict by default: without auto-approve, authorize shows the login page."""
    r = WSGIClient(server.wsgi).get("/authorize", params=new_flow().params)
    assert r.status == 200 and 'name="password"' in r.text
    assert PASSWORD not in r.text
