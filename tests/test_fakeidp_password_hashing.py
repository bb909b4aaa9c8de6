"""Test-speed password hashing (issue 17 item 1): ``Server(password_hashing="fast")``, on
by default in the pytest plugin's fixtures, announced in the log and the transcript,
refused by ``codeflow serve`` without ``--test-mode``; its hashes are marked, and a
server not in fast mode never accepts them (DESIGN "Defaults": passwords hashed with a
memory-hard KDF; "Test conveniences ... are explicit opt-ins that announce themselves")."""

from __future__ import annotations

import logging

import pytest
import requests
from conftest import (
    CONFIDENTIAL,
    ISSUER,
    PASSWORD,
    REDIRECT,
    SECRET,
    USERNAME,
    browser_authorize,
    form_fields,
    new_flow,
    redeem_over_http,
    share_session_keys,
)
from test_cli import free_port, run, serving

import codeflow


def fast_server(**options) -> codeflow.Server:
    """A fast server; at ISSUER unless given None, when running() makes its URL the issuer."""
    options.setdefault("issuer", ISSUER)
    return share_session_keys(codeflow.Server(password_hashing="fast", **options))


def register(srv: codeflow.Server) -> codeflow.Server:
    srv.add_client(CONFIDENTIAL, client_secret=SECRET, redirect_uris=[REDIRECT])
    srv.add_user(USERNAME, PASSWORD, claims={"name": "Alice"})
    return srv


def test_fast_hashes_are_marked_and_verify_only_in_fast_mode() -> None:
    """A fast hash carries a scheme of its own, verifies the right password in fast mode
    only; scrypt hashes verify in both modes."""
    fast = codeflow.hash_password("wonderland", hashing="fast")
    assert fast.startswith(codeflow.FAST_HASH_SCHEME + "$")
    assert not fast.startswith("scrypt$") and "wonderland" not in fast
    assert codeflow.verify_password("wonderland", fast, hashing="fast")
    assert not codeflow.verify_password("not wonderland", fast, hashing="fast")
    assert not codeflow.verify_password("wonderland", fast)  # a production check
    slow = codeflow.hash_password("wonderland")
    assert codeflow.verify_password("wonderland", slow, hashing="fast")
    assert codeflow.verify_password("wonderland", slow)


@pytest.mark.parametrize(
    "encoded",
    ["test-only-sha256$", "test-only-sha256$a$b$c", "test-only-sha256$!!!$???"],
)
def test_a_malformed_fast_hash_verifies_nothing(encoded: str) -> None:
    assert not codeflow.verify_password("", encoded, hashing="fast")


def test_server_hashes_every_secret_fast_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """add_user, add_client, set_password and rotate_client_secret all hash fast, and the
    server announces the mode in its log as it starts."""
    with caplog.at_level(logging.WARNING, logger="codeflow"):
        srv = register(fast_server())
    assert "password_hashing='fast'" in caplog.text and "production" in caplog.text
    prefix = codeflow.FAST_HASH_SCHEME + "$"
    assert srv.storage.get_user(USERNAME).password_hash.startswith(prefix)
    assert srv.storage.get_client(CONFIDENTIAL).secret_hash.startswith(prefix)
    srv.set_password(USERNAME, "new password")
    new_secret = srv.rotate_client_secret(CONFIDENTIAL)
    assert srv.storage.get_user(USERNAME).password_hash.startswith(prefix)
    client = srv.storage.get_client(CONFIDENTIAL)
    assert client.secret_hash.startswith(prefix)
    assert codeflow.verify_password(new_secret, client.secret_hash, hashing="fast")


def test_an_unknown_password_hashing_is_refused() -> None:
    with pytest.raises(ValueError, match="password_hashing"):
        codeflow.Server(password_hashing="md5")


def test_login_and_token_exchange_work_with_fast_hashes_and_the_transcript_says_so() -> None:
    """RFC 6749 §4.1 end to end on a fast server: the password and the client secret are
    checked against their fast hashes, and each exchange that did so names it."""
    srv = register(fast_server(issuer=None, transcript=True))
    with srv.running() as url:
        flow = new_flow()
        callback = browser_authorize(url, flow)
        r = redeem_over_http(url + codeflow.TOKEN_PATH, callback["code"], flow)
        assert r.status_code == 200, r.text
    (login,) = srv.transcript.find(path=codeflow.LOGIN_PATH)
    assert login.conveniences == [f"user 'alice': {codeflow.FAST_HASH_NOTE}"]
    (token,) = srv.transcript.find(path=codeflow.TOKEN_PATH)
    assert token.conveniences == [f"client {CONFIDENTIAL!r}: {codeflow.FAST_HASH_NOTE}"]
    assert srv.transcript.conveniences == login.conveniences + token.conveniences
    assert "conveniences" in token.to_json()
    assert srv.transcript.relaxations == []  # the client's protocol was not relaxed


def test_a_store_a_fast_server_wrote_lets_no_one_in_on_a_production_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What a test server hashed fast never verifies on a server in the default mode: the
    user's right password is refused at login, the client's right secret at the token
    endpoint (RFC 6749 §5.2 invalid_client), and the log says why."""
    storage = codeflow.MemoryStorage()
    register(fast_server(storage=storage))
    production = share_session_keys(codeflow.Server(storage=storage))
    with production.running() as url:
        session = requests.Session()
        flow = new_flow()
        r = session.get(url + codeflow.AUTHORIZE_PATH, params=flow.params, timeout=5)
        fields = form_fields(r.text)
        with caplog.at_level(logging.WARNING, logger="codeflow"):
            r = session.post(url + codeflow.LOGIN_PATH, timeout=5, allow_redirects=False,
                             data={**fields, "username": USERNAME, "password": PASSWORD})
        assert r.status_code == 200 and "Wrong username or password" in r.text
        assert "hashed for test suites" in caplog.text
        r = requests.post(url + codeflow.TOKEN_PATH, auth=(CONFIDENTIAL, SECRET), timeout=5,
                          data={"grant_type": "client_credentials"})
        assert r.status_code == 401 and r.json()["error"] == "invalid_client"


def test_a_config_declaration_made_fast_is_applied_again_by_a_production_server() -> None:
    """A config file loaded by a fast server and then by a production one on the same
    store: the production server re-applies the entries (their declarations were hashed
    fast), so the users it keeps have scrypt hashes and can sign in."""
    storage = codeflow.MemoryStorage()
    config = {"users": [{"username": USERNAME, "password": PASSWORD}]}
    codeflow.load_config(fast_server(storage=storage), config)
    assert storage.get_user(USERNAME).password_hash.startswith(codeflow.FAST_HASH_SCHEME)
    codeflow.load_config(codeflow.Server(issuer=ISSUER, storage=storage), config)
    stored = storage.get_user(USERNAME).password_hash
    assert stored.startswith("scrypt$") and codeflow.verify_password(PASSWORD, stored)


def test_the_plugins_servers_hash_fast_unless_told_otherwise(
    codeflow_server, codeflow_live, codeflow_factory
) -> None:
    """No fixture pays scrypt: codeflow_server, codeflow_live and the factory's servers
    are in fast mode; ``password_hashing="scrypt"`` asks for the real thing."""
    assert codeflow_server.password_hashing == "fast"
    assert codeflow_live.password_hashing == "fast"
    assert codeflow_factory().password_hashing == "fast"
    real = codeflow_factory(password_hashing="scrypt")
    assert real.add_user("bob", "builder").password_hash.startswith("scrypt$")


def test_the_plugins_live_server_signs_in_with_a_fast_hash(codeflow_live) -> None:
    codeflow_live.add_user(USERNAME, PASSWORD)
    codeflow_live.add_client(CONFIDENTIAL, client_secret=SECRET, redirect_uris=[REDIRECT])
    flow = new_flow()
    callback = browser_authorize(codeflow_live.url, flow)
    r = redeem_over_http(codeflow_live.url + codeflow.TOKEN_PATH, callback["code"], flow)
    assert r.status_code == 200 and "id_token" in r.json()
    assert len(codeflow_live.transcript.conveniences) == 2


def test_serve_refuses_fast_hashing_without_test_mode() -> None:
    """``codeflow serve --password-hashing fast`` alone exits with a message, before it
    listens: fast hashes are a test convenience."""
    result = run("serve", "--password-hashing", "fast", "--port", str(free_port()))
    assert result.returncode == 2
    assert "serving" not in result.stdout
    assert "--test-mode" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.http
def test_serve_in_test_mode_hashes_fast_and_warns(tmp_path) -> None:
    """``serve --test-mode --password-hashing fast``: the config's user signs in (with a
    fast hash), and the server prints a WARNING naming the mode."""
    config = tmp_path / "codeflow.toml"
    config.write_text(
        f'[[clients]]\nclient_id = "{CONFIDENTIAL}"\nclient_secret = "{SECRET}"\n'
        f'redirect_uris = ["{REDIRECT}"]\n'
        f'[[users]]\nusername = "{USERNAME}"\npassword = "{PASSWORD}"\n'
    )
    with serving("--config", str(config), "--test-mode", "--password-hashing", "fast") as server:
        flow = new_flow()
        callback = browser_authorize(server.base, flow)
        r = redeem_over_http(server.base + codeflow.TOKEN_PATH, callback["code"], flow)
        assert r.status_code == 200, r.text
        transcript = requests.get(server.base + "/_codeflow/transcript", timeout=5).json()
        assert server.interrupt() == 0, server.stderr
    assert "WARNING: --password-hashing fast" in server.stdout
    assert any(e["conveniences"] for e in transcript if e["path"] == codeflow.LOGIN_PATH)

