"""The pytest plugin (DESIGN "pytest plugin ... fixtures for a running server"): the
fixtures of codeflow_sdk.pytest_plugin, used here exactly as a third party uses them."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
import requests
from wsgi_client import WSGIClient

import codeflow

ROOT = Path(__file__).resolve().parent.parent
REDIRECT = "http://127.0.0.1:9000/callback"


def test_in_process_server_answers_on_its_wsgi_app(codeflow_server: codeflow.Server) -> None:
    """DESIGN "a pytest fixture": codeflow_server is a Server whose .wsgi answers in-process."""
    body = WSGIClient(codeflow_server.wsgi).get("/.well-known/openid-configuration").json()
    assert body["issuer"] == codeflow_server.issuer
    assert codeflow_server.test_mode and codeflow_server.transcript.enabled


def test_live_server_answers_on_a_free_loopback_port(codeflow_live) -> None:
    """DESIGN "runs it on a free 127.0.0.1 port": codeflow_live.url is the issuer and serves."""
    assert codeflow_live.url.startswith("http://127.0.0.1:")
    assert codeflow_live.issuer == codeflow_live.url
    r = requests.get(codeflow_live.url + "/.well-known/openid-configuration", timeout=5)
    assert r.json()["issuer"] == codeflow_live.url
    assert isinstance(codeflow_live.server, codeflow.Server)


def test_servers_share_the_session_signing_key(
    codeflow_server: codeflow.Server, codeflow_live, codeflow_session_server, codeflow_signing_key
) -> None:
    """DESIGN "a server ready in milliseconds": every server signs with the session's key."""
    for srv in (codeflow_server, codeflow_live.server, codeflow_session_server):
        assert codeflow.signing_key(srv, "RS256").kid == codeflow_signing_key.kid


SEEN: dict[str, str] = {}  # per process: each pytest-xdist worker has its own session


@pytest.mark.parametrize("round_", [1, 2])
def test_session_live_server_is_the_same_in_every_test(codeflow_session_live, round_) -> None:
    """DESIGN "session-scoped": the session's live server keeps its port across tests."""
    assert SEEN.setdefault("url", codeflow_session_live.url) == codeflow_session_live.url
    assert requests.get(codeflow_session_live.url + "/jwks", timeout=5).status_code == 200


def test_the_clock_fixture_moves_the_servers_time(codeflow_server, codeflow_clock) -> None:
    """DESIGN "a controllable clock so a test can jump past expiry": advancing the
    codeflow_clock fixture expires the token for userinfo (RFC 6750 §3.1 invalid_token)."""
    codeflow_server.add_client("app", client_secret="s", redirect_uris=[REDIRECT])
    codeflow_server.add_user("alice", claims={"name": "Alice"})
    tokens = codeflow_server.issue_tokens("alice", "app", "openid profile")
    client = WSGIClient(codeflow_server.wsgi)
    auth = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert client.get("/userinfo", headers=auth).json()["name"] == "Alice"
    codeflow_clock.advance(codeflow_server.access_token_lifetime + 1)
    r = client.get("/userinfo", headers=auth)
    assert r.status == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]


def test_the_clock_follows_wall_time_until_moved(codeflow_clock) -> None:
    """The default Clock follows the wall clock (so live clients agree with the server)."""
    assert abs(codeflow_clock() - time.time()) < 5
    codeflow_clock.advance(600)
    assert abs(codeflow_clock() - time.time() - 600) < 5


def test_factory_makes_servers_with_options(codeflow_factory) -> None:
    """DESIGN "Server(auto_approve=...)" through the factory, live or in-process."""
    live = codeflow_factory(live=True, auto_approve="bob", test_mode=False)
    assert live.auto_approve == "bob" and not live.test_mode
    assert requests.get(live.url + "/_codeflow/faults", timeout=5).status_code == 404
    inproc = codeflow_factory(issuer="https://idp.example")
    assert inproc.issuer == "https://idp.example"


def test_a_token_from_a_fixture_verifies_against_its_jwks(codeflow_live) -> None:
    """RFC 7517: an ID token minted by issue_tokens verifies with the live server's JWKS."""
    codeflow_live.add_client("app", client_secret="s", redirect_uris=[REDIRECT])
    id_token = codeflow_live.issue_tokens("alice", "app", "openid")["id_token"]
    keys = jwt.PyJWKClient(codeflow_live.url + "/jwks")
    claims = jwt.decode(id_token, keys.get_signing_key_from_jwt(id_token).key,
                        algorithms=["RS256"], audience="app", issuer=codeflow_live.url)
    assert claims["sub"] == "alice"


def test_plugin_fixtures_in_a_fresh_pytest(tmp_path: Path) -> None:
    """DESIGN "pytest plugin (entry point pytest11)": a suite with no conftest of its own
    gets the fixtures when the plugin is loaded (as the installed entry point does)."""
    (tmp_path / "test_it.py").write_text(
        "import requests\n"
        "def test_it(codeflow_live, codeflow_server):\n"
        "    assert requests.get(codeflow_live.url + '/jwks', timeout=5).ok\n"
        "    assert codeflow_server.issue_tokens(None, codeflow_server.add_client('c',"
        " client_secret='s'))['access_token']\n"
    )
    env_path = f"{ROOT}:{ROOT / 'storage'}:{ROOT / 'sdk'}"
    plugin = [] if _entry_point_installed() else ["-p", "codeflow_sdk.pytest_plugin"]
    result = subprocess.run(  # noqa: S603 -- our own interpreter and arguments
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
        env={**_env(), "PYTHONPATH": env_path},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def _entry_point_installed() -> bool:
    from importlib.metadata import entry_points

    return any(ep.value == "codeflow_sdk.pytest_plugin" for ep in entry_points(group="pytest11"))


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}


def test_documents_fixture_serves_https_client_ids_self_registration_accepts(
    codeflow_factory, codeflow_documents
) -> None:
    """Issue 15 item 9: ``codeflow_documents`` serves a Client ID Metadata Document over
    https on 127.0.0.1 (the MCP SDKs take no other client_id URL), and a server made with
    ``self_registration=True`` trusts its CA and takes that client_id at once; a server
    without it does not (the document is never fetched)."""
    client_id = codeflow_documents.publish_client("/plugin-test.json", [REDIRECT])
    assert client_id.startswith("https://127.0.0.1:")
    verifier = "v" * 43
    challenge = (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    )  # fmt: skip
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT,
              "code_challenge": challenge.decode(), "code_challenge_method": "S256",
              "state": "s"}  # fmt: skip
    live = codeflow_factory(live=True, self_registration=True, auto_approve="alice")
    live.add_user("alice")
    r = requests.get(live.url + "/authorize", params=params, allow_redirects=False, timeout=10)
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT + "?code="), r.text
    assert codeflow_documents.hits["/plugin-test.json"] == 1

    closed = codeflow_factory(live=True, auto_approve="alice")
    r = requests.get(closed.url + "/authorize", params=params, allow_redirects=False, timeout=10)
    assert r.status_code == 400 and "Location" not in r.headers
    assert codeflow_documents.hits["/plugin-test.json"] == 1
