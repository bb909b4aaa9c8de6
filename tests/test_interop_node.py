"""Interop: two independent OpenID Connect client libraries from npm, openid-client (v6)
and oauth4webapi (v3), each run a whole code flow against a live codeflow on loopback.

The drivers are tests/interop/openid_client_flow.mjs and tests/interop/oauth4webapi_flow.mjs
(pinned in tests/interop/package.json and its lock file; the tests install them with
``npm ci`` on first use). Each one discovers codeflow, builds the authorization
request (PKCE S256, state, nonce), acts as the browser through the login and consent pages,
then hands the callback URL to the library, which validates the authorization response,
redeems the code, validates the ID token (claims and JWS signature against the JWKS),
calls userinfo and refreshes. The driver prints one JSON line with what the library
accepted; these tests check it.

Without ``node`` on PATH the tests skip, saying so.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import codeflow

INTEROP = Path(__file__).parent / "interop"
NODE = shutil.which("node")
DRIVERS = {
    "openid-client": "openid_client_flow.mjs",
    "oauth4webapi": "oauth4webapi_flow.mjs",
}
REDIRECT = "http://127.0.0.1:9/callback"  # nothing listens: the driver stops at the redirect
USERNAME, PASSWORD = "alice", "alice-interop-password"
CLAIMS = {"name": "Alice Liddell", "email": "alice@example.com", "email_verified": True}
SCOPES = ["openid", "profile", "email", "offline_access"]
SECRET = "interop-client-secret"
# client_id -> how it is registered; each one runs with each library.
CLIENTS: dict[str, dict[str, Any]] = {
    "confidential-basic": {"client_secret": SECRET},  # client_secret_basic
    "public-pkce": {},  # token_endpoint_auth_method none; PKCE is its proof
    "public-es256": {"id_token_signed_response_alg": "ES256"},
}

pytestmark = [
    pytest.mark.http,
    pytest.mark.skipif(
        NODE is None,
        reason="node is not on PATH: the openid-client/oauth4webapi interop tests need "
        "Node.js 20+ (CI installs it; locally: apt-get install nodejs npm)",
    ),
]


_npm_lock = threading.Lock()
# What npm_packages installs (from the lock file): the drivers' libraries, oidc-client-ts
# for the single-page app of tests/test_interop_spa.py, and express-openid-connect (on
# express) for the web app of tests/test_interop_express.py.
PACKAGES = ("openid-client", "oauth4webapi", "oidc-client-ts", "express", "express-openid-connect")


def npm_packages() -> None:
    """Install the pinned npm packages on first use, so that a bare `tox` runs these tests."""
    npm_ci(INTEROP, PACKAGES)


def npm_ci(directory: Path, packages: Iterable[str]) -> None:
    """``npm ci`` in ``directory`` unless its ``packages`` are installed: exactly the lock
    file's versions (it needs the npm registry), one install at a time."""
    with _npm_lock:
        modules = directory / "node_modules"
        if all((modules / name).is_dir() for name in packages):
            return
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail("node is installed but npm is not: apt-get install npm")
        subprocess.run(  # noqa: S603 -- npm from PATH, fixed arguments
            [npm, "ci", "--no-audit", "--no-fund"], cwd=directory, check=True, timeout=300,
            capture_output=True,
        )  # fmt: skip


@contextlib.contextmanager
def interop_server() -> Iterator[tuple[codeflow.Server, str]]:
    """A fresh codeflow on a real loopback socket, with the interop clients and user.

    Registered after ``running()`` has set the issuer to the URL with its port."""
    srv = codeflow.Server()
    with srv.running() as url:
        for client_id, options in CLIENTS.items():
            srv.add_client(
                client_id,
                redirect_uris=[REDIRECT],
                scopes=SCOPES,
                grant_types=["authorization_code", "refresh_token"],
                **options,
            )
        srv.add_user(USERNAME, PASSWORD, claims=CLAIMS)
        yield srv, url


@pytest.fixture
def live() -> Iterator[tuple[codeflow.Server, str]]:
    """The interop_server, once the pinned npm packages are installed."""
    npm_packages()
    with interop_server() as running:
        yield running


def run_driver(library: str, issuer: str, client_id: str) -> dict[str, Any]:
    """Run one driver with node and return the JSON line it printed."""
    config = {
        "issuer": issuer,
        "client_id": client_id,
        "client_secret": CLIENTS[client_id].get("client_secret"),
        "redirect_uri": REDIRECT,
        "username": USERNAME,
        "password": PASSWORD,
        "id_token_signed_response_alg": CLIENTS[client_id].get("id_token_signed_response_alg"),
    }
    result, returncode = run_node(DRIVERS[library], config)
    assert (returncode == 0) == (result.get("ok") is True), (returncode, result)
    return result


def run_node(script: str, config: dict[str, Any], timeout: float = 60) -> tuple[Any, int]:
    """Run ``script`` (in tests/interop) with node, ``config`` on its stdin as JSON: the
    JSON line it printed last, and its exit status."""
    assert NODE is not None
    proc = subprocess.run(  # noqa: S603 -- our own script, with node from PATH
        [NODE, script], input=json.dumps(config), capture_output=True, text=True,
        cwd=INTEROP, timeout=timeout, check=False,
    )  # fmt: skip
    lines = proc.stdout.strip().splitlines()
    assert lines, f"{script} printed nothing (exit {proc.returncode}); stderr:\n{proc.stderr}"
    return json.loads(lines[-1]), proc.returncode


def explain(result: dict[str, Any]) -> str:
    """What the library rejected, for the assertion message."""
    return json.dumps({k: v for k, v in result.items() if k != "stack"}, indent=2) + (
        "\n" + result.get("stack", "")
    )


LIBRARIES = pytest.mark.parametrize("library", list(DRIVERS))
ALL_CLIENTS = pytest.mark.parametrize("client_id", list(CLIENTS))


@LIBRARIES
@ALL_CLIENTS
def test_code_flow_with_id_token_userinfo_and_refresh(
    live: tuple[codeflow.Server, str], library: str, client_id: str
) -> None:
    """OIDC Core §3.1.3.7: "Clients MUST validate the ID Token in the Token Response"; the
    iss Claim "MUST exactly match" the discovered issuer, aud "contains its client_id", and
    "If a nonce value was sent in the Authentication Request, a nonce Claim MUST be present
    and its value checked". RFC 9207 §2.4: the client compares the authorization response's
    iss to the issuer. OIDC Core §5.3.2: userinfo's sub "MUST be verified to exactly match
    the sub Claim in the ID Token". RFC 6749 §6: a refresh token buys a new access token.

    Checked by the library under test (openid-client or oauth4webapi, npm): discovery
    (OIDC Discovery §4.3, issuer equality), state and RFC 9207 iss in the callback, PKCE
    S256 at the token endpoint, client auth (client_secret_basic, or none for the public
    clients), every ID token claim check above, the ID token's JWS signature against the
    jwks_uri keys with the client's registered alg (RS256, or ES256), userinfo's sub, and
    the refresh response. Checked here: the values the library accepted.
    """
    srv, issuer = live
    result = run_driver(library, issuer, client_id)
    assert result["ok"] is True, f"{library} rejected codeflow:\n{explain(result)}"
    assert result["library"].startswith(f"{library}@")
    confidential = "client_secret" in CLIENTS[client_id]
    assert result["client_auth"] == ("client_secret_basic" if confidential else "none")

    # The authorization response carried RFC 9207's iss, which the library compared.
    assert {"code", "state", "iss"} <= set(result["callback_params"])

    claims = result["id_token_claims"]
    assert result["sub"] == claims["sub"] == USERNAME
    assert claims["iss"] == issuer
    assert claims["aud"] == client_id
    assert isinstance(claims["nonce"], str) and claims["nonce"]

    # The key the library verified with is one codeflow publishes, with the client's alg.
    header = result["id_token_header"]
    expected_alg = CLIENTS[client_id].get("id_token_signed_response_alg", "RS256")
    assert header["alg"] == expected_alg
    assert header["kid"] in {k["kid"] for k in codeflow.jwks(srv)["keys"]}

    assert result["granted_scope"].split() == SCOPES
    assert result["token_type"].lower() == "bearer"
    assert result["userinfo"] == {**CLAIMS, "sub": USERNAME}

    assert result["refreshed"] is True
    refresh = result["refresh"]
    assert refresh["access_token_changed"] is True
    assert refresh["refresh_token_rotated"] is True  # OAuth 2.1 / RFC 9700 §4.14.2
    assert refresh["token_type"].lower() == "bearer"


def impostor_jwks(real: Any) -> Any:
    """codeflow.jwks, with each published key swapped for a fresh one under the same kid."""

    def fake(srv: codeflow.Server) -> dict[str, Any]:
        keys = []
        for jwk in real(srv)["keys"]:
            if jwk["kty"] == "RSA":
                public = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                to_jwk = jwt.algorithms.RSAAlgorithm.to_jwk
            else:
                public = ec.generate_private_key(ec.SECP256R1())
                to_jwk = jwt.algorithms.ECAlgorithm.to_jwk
            impostor = json.loads(to_jwk(public.public_key()))
            keys.append({**impostor, "kid": jwk["kid"], "alg": jwk["alg"], "use": "sig"})
        return {"keys": keys}

    return fake


@LIBRARIES
def test_library_rejects_id_token_not_signed_by_published_key(
    live: tuple[codeflow.Server, str], library: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OIDC Core §3.1.3.7 step 6: "The Client MUST validate the signature of all other ID
    Tokens according to JWS [JWS] using the algorithm specified in the JWT alg Header
    Parameter. The Client MUST use the keys provided by the Issuer."

    A control for the test above: the flow runs over plain HTTP, where TLS cannot stand in
    for the signature, so the drivers ask the library to verify it (openid-client's
    enableNonRepudiationChecks, oauth4webapi's validateApplicationLevelSignature). Here
    the JWKS serves other keys under the same kids; the library must refuse the ID token,
    which shows the passing test above did verify codeflow's signature.
    """
    _srv, issuer = live
    monkeypatch.setattr(codeflow, "jwks", impostor_jwks(codeflow.jwks))
    result = run_driver(library, issuer, "confidential-basic")
    assert result["ok"] is False, f"{library} accepted a bad signature: {result}"
    # The library's own words, along its chain of causes.
    assert any("signature" in m.lower() for m in result["messages"]), explain(result)
