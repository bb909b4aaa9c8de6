"""One clock for the provider and the app under test (issue 17 item 3; DESIGN "a
controllable clock"): ``codeflow_clock`` follows the time-freezing libraries, patches the
process's time itself when asked (``patch_time()``, with time-machine), and may be
patched into ``time.time`` without recursion or a double move. The app here is a real
OIDC client, Authlib's, whose refresh after ``advance(3600)`` is the issue's case."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest
import time_machine
from authlib.integrations.requests_client import OAuth2Session
from authlib.oidc.core import CodeIDToken
from codeflow_sdk.testing import Clock, headless_login
from test_interop_authlib_oidc import discover, verify_signature

import codeflow

ROOT = Path(__file__).resolve().parent.parent
REDIRECT = "http://127.0.0.1:9/callback"  # never fetched: the headless login stops there
SLACK = 60  # seconds: a test's own run time on a loaded machine, far below the moves


def iat_of(srv: codeflow.Server) -> int:
    """The iat of an ID token the server mints now (what it thinks the time is)."""
    if srv.storage.get_client("app") is None:
        srv.add_client("app", client_secret="s", redirect_uris=[REDIRECT])
    id_token = srv.issue_tokens("alice", "app", "openid")["id_token"]
    return jwt.decode(id_token, options={"verify_signature": False})["iat"]


def test_time_time_patched_with_the_clock_neither_recurses_nor_moves_twice(
    codeflow_server, codeflow_clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Patching time.time with codeflow_clock (so the app shares it) used to recurse;
    now the clock reads the time underneath, and advance moves app and provider once."""
    real = time.time()
    monkeypatch.setattr(time, "time", codeflow_clock)
    assert abs(time.time() - real) < SLACK
    codeflow_clock.advance(3600)
    assert abs(time.time() - real - 3600) < SLACK  # the app: moved once
    assert abs(codeflow_clock() - time.time()) < SLACK  # the provider: the same time
    assert abs(iat_of(codeflow_server) - time.time()) < SLACK


def test_two_clocks_patched_into_each_other_still_answer() -> None:
    """A clock reading a time.time that is another clock adds both offsets, once each."""
    outer, inner = Clock(), Clock()
    inner.advance(100)
    outer.advance(10)
    real = time.time()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "time", inner)
        assert abs(outer() - real - 110) < SLACK
        assert abs(time.time() - real - 100) < SLACK


def test_the_provider_follows_a_time_machine_travel(codeflow_server) -> None:
    """A suite that already travels with time-machine moves the provider with it."""
    with time_machine.travel(dt.datetime(2031, 1, 1, tzinfo=dt.UTC), tick=False) as traveller:
        assert iat_of(codeflow_server) == int(dt.datetime(2031, 1, 1, tzinfo=dt.UTC).timestamp())
        traveller.shift(3600)
        assert iat_of(codeflow_server) == int(dt.datetime(2031, 1, 1, 1, tzinfo=dt.UTC).timestamp())


def test_the_provider_follows_a_patched_time_time(
    codeflow_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """freezegun's freeze_time replaces time.time in the time module, as this does: the
    provider reads it at each call, so it follows."""
    monkeypatch.setattr(time, "time", lambda: 1_900_000_000.0)
    assert iat_of(codeflow_server) == 1_900_000_000


def test_patch_time_moves_the_whole_process_with_the_clock(codeflow_server, codeflow_clock) -> None:
    """After patch_time(), advance moves time.time(), datetime.now() and the provider
    together, once; restore_time() gives the process its real time back and the clock
    keeps its advance."""
    before = time.time()
    codeflow_clock.patch_time()
    codeflow_clock.advance(3600)
    assert abs(time.time() - before - 3600) < SLACK
    assert abs(dt.datetime.now(dt.UTC).timestamp() - time.time()) < SLACK
    assert abs(codeflow_clock() - time.time()) < SLACK
    assert abs(iat_of(codeflow_server) - time.time()) < SLACK
    codeflow_clock.restore_time()
    assert abs(time.time() - before) < SLACK
    assert abs(codeflow_clock() - before - 3600) < SLACK


def test_a_frozen_clock_keeps_the_process_still_and_moves_it_by_advance() -> None:
    clock = Clock(1_900_000_000.0)
    clock.patch_time()
    try:
        assert time.time() == clock() == 1_900_000_000.0
        clock.advance(10)
        assert time.time() == clock() == 1_900_000_010.0
        clock.set(1_900_000_100.0)
        assert time.time() == 1_900_000_100.0
    finally:
        clock.restore_time()
    assert clock() == 1_900_000_100.0 and abs(time.time() - 1_900_000_100.0) > SLACK


@pytest.mark.http
def test_an_apps_authlib_client_refreshes_after_advance(codeflow_live, codeflow_clock) -> None:
    """RFC 6749 §6 and OIDC Core §3.1.3.7 through an app's real client: Authlib's
    OAuth2Session signs in (RFC 7636 PKCE); after codeflow_clock.advance(3600) it sees its
    access token expired on its own clock, refreshes it and calls userinfo with the new
    one; and the ID token of a new sign-in passes its checks (an iat an hour ahead of the
    app's clock was "issued in the future" before the two shared a clock)."""
    codeflow_live.add_user("alice", "wonderland", claims={"name": "Alice"})
    codeflow_live.add_client("app", client_secret="app-secret", redirect_uris=[REDIRECT])
    codeflow_clock.patch_time()  # the app's time.time() is the provider's from here on
    metadata = discover(codeflow_live.url)
    refreshed: list[dict] = []
    app = OAuth2Session(
        "app", "app-secret", scope="openid profile offline_access", redirect_uri=REDIRECT,
        code_challenge_method="S256", token_endpoint=metadata["token_endpoint"],
        update_token=lambda token, refresh_token=None: refreshed.append(token),
    )  # fmt: skip

    def sign_in() -> dict:
        verifier = codeflow.new_secret()
        url, _ = app.create_authorization_url(
            metadata["authorization_endpoint"], code_verifier=verifier, nonce="n-0S6"
        )
        callback = headless_login(url, "alice", "wonderland")
        return app.fetch_token(authorization_response=callback, code_verifier=verifier)

    first = sign_in()
    validate(metadata, first)
    codeflow_clock.advance(3600)
    r = app.get(metadata["userinfo_endpoint"], timeout=5)  # Authlib refreshes first
    assert r.status_code == 200 and r.json()["name"] == "Alice"
    assert len(refreshed) == 1 and refreshed[0]["access_token"] != first["access_token"]
    again = validate(metadata, sign_in())
    assert again["iat"] >= issued_at(first) + 3600


def validate(metadata: dict, token: dict) -> CodeIDToken:
    """What Authlib's OpenID client checks of an ID token: the signature against the
    JWKS, then CodeIDToken's rules (iss, aud, exp, iat, at_hash) on the app's clock."""
    id_token = verify_signature(metadata, token["id_token"])
    claims = CodeIDToken(
        id_token.claims, id_token.header,
        {"iss": {"essential": True, "value": metadata["issuer"]},
         "aud": {"essential": True, "value": "app"}},
        {"client_id": "app", "access_token": token["access_token"]},
    )  # fmt: skip
    claims.validate()  # now = int(time.time()): "issued in the future" if clocks differ
    return claims


def issued_at(token: dict) -> int:
    return jwt.decode(token["id_token"], options={"verify_signature": False})["iat"]


def test_without_patch_time_the_app_keeps_its_own_time(codeflow_server, codeflow_clock) -> None:
    """advance alone moves the provider only, as documented: the app's clock stays."""
    before = time.time()
    codeflow_clock.advance(7200)
    assert abs(time.time() - before) < SLACK
    assert iat_of(codeflow_server) - time.time() > 7200 - SLACK


def test_the_fixture_gives_the_process_its_time_back(tmp_path: Path) -> None:
    """The codeflow_clock fixture undoes patch_time() after its test: the next test of the
    suite sees real time, not the previous test's."""
    (tmp_path / "test_it.py").write_text(
        "import time\n"
        "REAL = time.time()\n"
        "def test_patches(codeflow_clock):\n"
        "    codeflow_clock.patch_time()\n"
        "    codeflow_clock.advance(10 * 365 * 86400)\n"
        "    assert time.time() > REAL + 9 * 365 * 86400\n"
        "def test_after(codeflow_clock):\n"
        "    assert abs(time.time() - REAL) < 600\n"
    )
    env_path = f"{ROOT}:{ROOT / 'storage'}:{ROOT / 'sdk'}"
    plugin = [] if _entry_point_installed() else ["-p", "codeflow_sdk.pytest_plugin"]
    result = subprocess.run(  # noqa: S603 -- our own interpreter and arguments
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
        env={**_env(), "PYTHONPATH": env_path},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def _entry_point_installed() -> bool:
    from importlib.metadata import entry_points

    return any(ep.value == "codeflow_sdk.pytest_plugin" for ep in entry_points(group="pytest11"))


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}

