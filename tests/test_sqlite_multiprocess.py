"""Two ``codeflow serve`` processes on one SQLite file, behind one issuer: what one issues,
the other honours, and a one-shot grant is still used once across both.

Issue 4: "two codeflow serve processes on one SQLite file with one issuer; a code issued
by one is redeemed by the other; a simultaneous double redemption across the two yields
exactly one token."
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Iterator

import pytest
import requests
from serve_process import CLIENT_ID, CLIENT_SECRET, REDIRECT, pkce_pair, serving, write_config

pytestmark = pytest.mark.http

ISSUER = "http://auth.codeflow.test"  # the name both processes serve behind
AUTH = (CLIENT_ID, CLIENT_SECRET)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Processes A and B serving one SQLite file; yields their base URLs."""
    tmp = tmp_path_factory.mktemp("multiprocess")
    db, config, log = tmp / "codeflow.db", write_config(tmp), tmp / "serve.log"
    with (
        serving(db, config, issuer=ISSUER, log=log, auto_approve="alice") as (_, a),
        serving(db, config, issuer=ISSUER, log=log, auto_approve="alice") as (_, b),
    ):
        yield a, b


def authorize(base: str) -> tuple[str, str]:
    """GET /authorize at ``base`` (auto-approved); return (code, code_verifier)."""
    verifier, challenge = pkce_pair()
    params = {
        "response_type": "code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT,
        "scope": "openid offline_access",
        "state": "xyz",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    r = requests.get(base + "/authorize", params=params, allow_redirects=False, timeout=10)
    assert r.status_code in (302, 303), r.text
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(r.headers["Location"]).query))
    assert query["state"] == "xyz" and query["iss"] == ISSUER
    return query["code"], verifier


def redeem(base: str, code: str, verifier: str) -> requests.Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }
    return requests.post(base + "/token", data=data, auth=AUTH, timeout=10)


def introspect(base: str, token: str) -> dict:
    r = requests.post(base + "/introspect", data={"token": token}, auth=AUTH, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def together(*calls: tuple[str, dict]) -> list[requests.Response]:
    """POST each (url, form) from its own thread, released at once by a barrier."""
    barrier = threading.Barrier(len(calls))
    responses: list[requests.Response | BaseException] = [None] * len(calls)  # type: ignore[list-item]

    def run(i: int, url: str, data: dict) -> None:
        try:
            barrier.wait(timeout=10)
            responses[i] = requests.post(url, data=data, auth=AUTH, timeout=10)
        except BaseException as exc:  # reported by the assertion below
            responses[i] = exc

    threads = [
        threading.Thread(target=run, args=(i, url, data)) for i, (url, data) in enumerate(calls)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert all(isinstance(r, requests.Response) for r in responses), responses
    return responses  # type: ignore[return-value]


def test_code_issued_by_one_process_is_redeemed_at_the_other(pair: tuple[str, str]) -> None:
    """RFC 6749 §4.1.3: the token endpoint exchanges a code the authorization endpoint
    issued, whichever process served each; the tokens are then known to both."""
    a, b = pair
    code, verifier = authorize(a)
    r = redeem(b, code, verifier)
    assert r.status_code == 200, r.text
    tokens = r.json()
    assert introspect(a, tokens["access_token"])["active"] is True
    assert introspect(b, tokens["refresh_token"])["active"] is True


def test_double_redemption_across_processes_yields_one_token(pair: tuple[str, str]) -> None:
    """RFC 6749 §4.1.2: "The client MUST NOT use the authorization code more than once. If
    an authorization code is used more than once, the authorization server MUST deny the
    request and SHOULD revoke (when possible) all tokens previously issued based on that
    authorization code." - with the two redemptions at two processes at once."""
    a, b = pair
    for base in pair:  # each process verifies the client secret once, outside the race
        introspect(base, "warm-up")
    code, verifier = authorize(a)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }
    responses = together((a + "/token", form), (b + "/token", form))

    assert sorted(r.status_code for r in responses) == [200, 400], [r.text for r in responses]
    winner = next(r for r in responses if r.status_code == 200).json()
    loser = next(r for r in responses if r.status_code == 400).json()
    assert loser["error"] == "invalid_grant"
    # The replay revokes what the code issued, whichever of the two finished first.
    for base in pair:
        assert introspect(base, winner["access_token"]) == {"active": False}
        assert introspect(base, winner["refresh_token"]) == {"active": False}


def test_refresh_token_rotated_once_across_processes(pair: tuple[str, str]) -> None:
    """RFC 9700 §4.14.2 (refresh token rotation): a refresh token is used once; two
    simultaneous refreshes at two processes yield one new token and revoke the grant."""
    a, b = pair
    code, verifier = authorize(a)
    tokens = redeem(a, code, verifier).json()
    form = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    responses = together((a + "/token", form), (b + "/token", form))

    assert sorted(r.status_code for r in responses) == [200, 400], [r.text for r in responses]
    loser = next(r for r in responses if r.status_code == 400).json()
    assert loser["error"] == "invalid_grant"
    winner = next(r for r in responses if r.status_code == 200).json()
    # Reuse of a rotated refresh token revokes the grant, at either process.
    assert introspect(b, winner["refresh_token"]) == {"active": False}
    assert introspect(a, tokens["access_token"]) == {"active": False}
