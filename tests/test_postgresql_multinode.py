"""Two ``codeflow serve`` nodes on one PostgreSQL database, behind one issuer: every step of
a flow may land on either node (no sticky sessions), and a one-shot grant is still used
once across both.

Issue 16 item 8: "two codeflow serve nodes on one database with every step of a flow spread
across them (authorize on one, token on the other, refresh and introspect back), concurrent
redemptions and rotations across nodes with exactly one winner".

The nodes are real processes on 127.0.0.1 (tests/serve_process.py), on the server of
``CODEFLOW_TEST_POSTGRES_URL`` in a schema of their own (tests/postgres_support.py);
without a server these tests skip (fail under CI).
"""

from __future__ import annotations

import itertools
import urllib.parse
from collections.abc import Iterator

import pytest
import requests
from conftest import form_fields
from postgres_support import fresh_schema
from serve_process import CLIENT_ID, CLIENT_SECRET, REDIRECT, pkce_pair, serving, write_config
from test_sqlite_multiprocess import introspect, redeem, together

pytestmark = pytest.mark.http

ISSUER = "http://auth.codeflow.test"  # the name both nodes serve behind
AUTH = (CLIENT_ID, CLIENT_SECRET)
PASSWORD = "alice-password"  # serve_process.CONFIG's alice


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Nodes A and B, started together on one new schema; yields their base URLs."""
    tmp = tmp_path_factory.mktemp("multinode")
    config, log = write_config(tmp), tmp / "serve.log"
    with (
        fresh_schema() as (url, _),
        serving(url, config, issuer=ISSUER, log=log) as (_, a),
        serving(url, config, issuer=ISSUER, log=log) as (_, b),
    ):
        yield a, b


def path_of(location: str) -> str:
    """A Location's path and query: the nodes name themselves by the issuer, which only a
    load balancer would answer at; here the test is the load balancer."""
    parts = urllib.parse.urlsplit(location)
    return parts.path + ("?" + parts.query if parts.query else "")


def sign_in_across(nodes: tuple[str, str], session: requests.Session) -> tuple[str, str]:
    """Act as a browser whose every request a load balancer sends to the next node in
    turn: authorize, sign in, consent. Returns (code, code_verifier)."""
    turn = itertools.cycle(nodes)
    verifier, challenge = pkce_pair()
    params = {
        "response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT,
        "scope": "openid profile offline_access", "state": "xyz",
        "code_challenge": challenge, "code_challenge_method": "S256",
    }  # fmt: skip
    r = session.get(next(turn) + "/authorize", params=params, allow_redirects=False)
    while r.status_code == 200:
        if 'action="login"' in r.text:
            data = {**form_fields(r.text), "username": "alice", "password": PASSWORD}
            r = session.post(next(turn) + "/login", data=data, allow_redirects=False)
        elif 'action="consent"' in r.text:
            data = {**form_fields(r.text), "decision": "approve"}
            r = session.post(next(turn) + "/consent", data=data, allow_redirects=False)
        else:
            raise AssertionError(r.text)
        assert r.status_code in (302, 303), r.text
        location = r.headers["Location"]
        if location.startswith(REDIRECT):
            break
        r = session.get(next(turn) + path_of(location), allow_redirects=False)
    assert r.headers["Location"].startswith(REDIRECT), r.text
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(r.headers["Location"]).query))
    assert query["state"] == "xyz" and query["iss"] == ISSUER
    return query["code"], verifier


def test_every_step_of_a_flow_may_land_on_either_node(nodes: tuple[str, str]) -> None:
    """RFC 6749 §4.1 across nodes: authorization request, sign-in and consent alternate
    between A and B (the login session cookie and the forms' CSRF tokens are signed with
    the key both share through storage); the code is redeemed at the other node than the
    one that issued it (RFC 6749 §4.1.3), the refresh token is rotated back at the first
    (§6), and each node's introspection (RFC 7662) and userinfo (OIDC Core §5.3) know
    what the other issued."""
    a, b = nodes
    with requests.Session() as browser:
        code, verifier = sign_in_across(nodes, browser)
    r = redeem(b, code, verifier)
    assert r.status_code == 200, r.text
    tokens = r.json()
    assert introspect(a, tokens["access_token"])["active"] is True

    r = requests.post(a + "/token", auth=AUTH, timeout=10,
                      data={"grant_type": "refresh_token",
                            "refresh_token": tokens["refresh_token"]})  # fmt: skip
    assert r.status_code == 200, r.text
    refreshed = r.json()
    assert introspect(b, refreshed["access_token"])["active"] is True
    assert introspect(b, tokens["refresh_token"]) == {"active": False}  # rotated at A
    r = requests.get(b + "/userinfo", timeout=10,
                     headers={"Authorization": f"Bearer {refreshed['access_token']}"})  # fmt: skip
    assert r.status_code == 200 and r.json()["sub"] == "alice", r.text
    # Both nodes publish the same keys, so an ID token from either verifies with either.
    keys = [requests.get(base + "/jwks", timeout=10).json() for base in nodes]
    assert keys[0] == keys[1] and keys[0]["keys"]


def test_double_redemption_across_nodes_yields_one_token(nodes: tuple[str, str]) -> None:
    """RFC 6749 §4.1.2: "If an authorization code is used more than once, the authorization
    server MUST deny the request and SHOULD revoke (when possible) all tokens previously
    issued based on that authorization code" - with the two redemptions at two nodes at
    once: one answer 200, the other invalid_grant, and the tokens revoked at both."""
    a, b = nodes
    for base in nodes:  # each node verifies the client secret once, outside the race
        introspect(base, "warm-up")
    with requests.Session() as browser:
        code, verifier = sign_in_across(nodes, browser)
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "code_verifier": verifier}  # fmt: skip
    responses = together((a + "/token", form), (b + "/token", form))

    assert sorted(r.status_code for r in responses) == [200, 400], [r.text for r in responses]
    winner = next(r for r in responses if r.status_code == 200).json()
    assert next(r for r in responses if r.status_code == 400).json()["error"] == "invalid_grant"
    for base in nodes:
        assert introspect(base, winner["access_token"]) == {"active": False}
        assert introspect(base, winner["refresh_token"]) == {"active": False}


def test_refresh_token_rotated_once_across_nodes(nodes: tuple[str, str]) -> None:
    """RFC 9700 §4.14.2 (refresh token rotation): two refreshes with one token at two nodes
    at once yield one new token; the other is reuse, which revokes the grant at both."""
    a, b = nodes
    with requests.Session() as browser:
        code, verifier = sign_in_across(nodes, browser)
    tokens = redeem(a, code, verifier).json()
    form = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    responses = together((a + "/token", form), (b + "/token", form))

    assert sorted(r.status_code for r in responses) == [200, 400], [r.text for r in responses]
    winner = next(r for r in responses if r.status_code == 200).json()
    assert introspect(b, winner["refresh_token"]) == {"active": False}
    assert introspect(a, tokens["access_token"]) == {"active": False}
