"""Findings of an adversarial review of the hardening and operator work, each pinned by a
test that reproduced it: a planted cookie making every page a 5xx, empty passwords, a
sign-in that outlives the password change that raced it, config-file credentials that
left old grants alive, log and control-surface edges."""

from __future__ import annotations

import logging
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import pyotp
import pytest
from conftest import (
    CONFIDENTIAL,
    PASSWORD,
    REDIRECT,
    USERNAME,
    form_fields,
    make_server,
    new_flow,
)
from test_cli_manage import cli, one_line_error
from wsgi_client import WSGIClient

import codeflow


@pytest.mark.parametrize("cookie", ['x=a=""', 'a="b', "=;;;", "codeflow_csrf"])
def test_a_malformed_cookie_is_no_5xx(server: codeflow.Server, cookie: str) -> None:
    """DESIGN "nothing a client sends makes a 5xx": one malformed cookie, which any page
    that can set cookies for the host could plant, must not break every page."""
    browser = WSGIClient(server.wsgi)
    for path in ("/authorize", "/logout"):
        r = browser.get(path, params=new_flow().params, HTTP_COOKIE=cookie)
        assert r.status < 500, (path, r.status)


def test_a_session_cookie_planted_beside_the_users_counts_as_none(
    server: codeflow.Server,
) -> None:
    """RFC 9700 §4.4 (login CSRF): with two session cookies (one planted with another
    Path or Domain), the server guesses neither: the browser is asked to sign in."""
    browser = WSGIClient(server.wsgi)
    page = browser.get("/authorize", params=new_flow().params)
    r = browser.post("/login", {**form_fields(page.text), "username": USERNAME,
                                "password": PASSWORD})  # fmt: skip
    ours = browser.cookies[codeflow.SESSION_COOKIE]
    cookie = "; ".join([f"{codeflow.SESSION_COOKIE}=planted", f"{codeflow.SESSION_COOKIE}={ours}",
                        f"{codeflow.CSRF_COOKIE}={browser.cookies[codeflow.CSRF_COOKIE]}"])
    r = browser.get(r.location, HTTP_COOKIE=cookie)
    assert 'action="login"' in r.text


def test_an_empty_password_is_refused(server: codeflow.Server, tmp_path: Path) -> None:
    """A user with an empty password would be signed in by a form without one (RFC 6749
    §3.1: empty parameters are omitted): refused by Server and by the CLI."""
    with pytest.raises(ValueError, match="empty"):
        server.add_user("bob", "")
    with pytest.raises(ValueError, match="empty"):
        server.set_password(USERNAME, "")
    db = f"sqlite:///{tmp_path / 'codeflow.db'}"
    one_line_error(cli("user", "add", "bob", "--password-stdin", "--storage", db, stdin=""),
                   "no password")  # fmt: skip


def test_a_password_change_voids_a_pending_second_factor(server: codeflow.Server) -> None:
    """RFC 9700 §4.14.2: a password change ends what the old password started, the
    sign-in waiting for its TOTP code included: the right code no longer signs it in."""
    secret = pyotp.random_base32()
    server.set_totp(USERNAME, secret)
    browser = WSGIClient(server.wsgi)
    page = browser.get("/authorize", params=new_flow().params)
    otp = browser.post("/login", {**form_fields(page.text), "username": USERNAME,
                                  "password": PASSWORD})  # fmt: skip
    assert 'name="otp"' in otp.text
    server.set_password(USERNAME, "a new password")
    code = pyotp.TOTP(secret).at(server.clock())
    r = browser.post("/login", {**form_fields(otp.text), "otp": code})
    assert r.status == 400 and "expired" in r.text
    assert codeflow.SESSION_COOKIE not in browser.cookies


def test_a_session_from_a_check_that_raced_a_password_change_is_ended(
    server: codeflow.Server,
) -> None:
    """A password checked just before a change must not start a session under the new
    one: the session carries the checked record's fingerprint."""
    checked = server.storage.get_user(USERNAME)
    assert checked is not None
    server.set_password(USERNAME, "a new password")
    client = server.storage.get_client(CONFIDENTIAL)
    assert client is not None
    flow = new_flow()
    areq = codeflow.validate_authorization_request(server, client, REDIRECT, True, flow.params)
    redirect = codeflow.signed_in(server, areq, checked, codeflow.Browser.new(), ("pwd",))
    assert redirect.session is not None
    cookie = server.signer.session_cookie(redirect.session)
    assert codeflow.read_session(server, cookie) is None


def test_a_password_changed_in_the_config_file_revokes_refresh_tokens() -> None:
    """RFC 9700 §4.14.2: new credentials from the config file end the refresh tokens of
    the old ones, as `user passwd` does."""
    srv = make_server()
    srv.remove_user(USERNAME)
    config = {"users": [{"username": USERNAME, "password": "one"}]}
    codeflow.load_config(srv, config)
    tokens = srv.issue_tokens(USERNAME, CONFIDENTIAL, "openid offline_access")
    codeflow.load_config(srv, {"users": [{"username": USERNAME, "password": "two"}]})
    refresh = srv.storage.get_token(codeflow.token_hash(tokens["refresh_token"]))
    assert refresh is not None and refresh.revoked


def test_declaring_a_user_keeps_the_second_factor_storage_holds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A config entry without totp_secret taking over a user who enrolled one does not
    silently switch her second factor off."""
    srv = make_server()
    srv.set_totp(USERNAME, pyotp.random_base32())
    codeflow.load_config(srv, {"users": [{"username": USERNAME, "password": "x-password"}]})
    user = srv.storage.get_user(USERNAME)
    assert user is not None and user.totp_secret
    assert "keeps the second factor" in caplog.text


def test_the_access_log_escapes_the_method(caplog: pytest.LogCaptureFixture) -> None:
    """A request method with control characters cannot write terminal escapes or lines
    of its own into the log (the stdlib server passes any method on)."""
    caplog.set_level(logging.INFO, logger="codeflow")
    srv = make_server()
    environ: dict = {}
    setup_testing_defaults(environ)  # not through wsgiref.validate, which refuses the method
    environ.update(REQUEST_METHOD="\x1b[2KFAKE\n", PATH_INFO="/healthz")
    b"".join(srv.wsgi(environ, lambda status, headers, exc_info=None: None))
    line = next(r for r in caplog.records if r.name == "codeflow.access")
    assert "\x1b" not in line.getMessage() and "\n" not in line.getMessage()


def test_the_control_surface_refuses_another_host_name() -> None:
    """DNS rebinding: a page on the attacker's name resolved to 127.0.0.1 is same-origin
    with itself, and may not read the transcript."""
    srv = codeflow.Server(test_mode=True)
    r = WSGIClient(srv.wsgi, host="rebind.attacker.example:8000").get(
        "/_codeflow/transcript", headers={"Sec-Fetch-Site": "same-origin"}
    )
    assert r.status == 403
    assert WSGIClient(srv.wsgi, host="localhost:8000").get("/_codeflow/transcript").status == 200


@pytest.mark.parametrize("content", ['issuer = 5\n', 'storage = 5\n', b"\xff\xfe = 1\n"])
def test_a_wrongly_typed_config_is_one_line(tmp_path: Path, content: str | bytes) -> None:
    """A config file's issuer or storage of the wrong type, or a file that is not UTF-8:
    a message, exit status 2, no traceback."""
    path = tmp_path / "codeflow.toml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = cli("serve", "--config", str(path), "--port", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_a_wrongly_typed_secret_in_the_config_is_not_echoed(tmp_path: Path) -> None:
    """A secret of the wrong type in the config file is named by its type, not shown."""
    path = tmp_path / "codeflow.toml"
    path.write_text('[[clients]]\nclient_id = "a"\nclient_secret = ["Zm9vYmFy"]\n')
    result = cli("serve", "--config", str(path), "--port", "0")
    assert result.returncode == 2 and "Zm9vYmFy" not in result.stderr
    assert "client_secret" in result.stderr




# -- Throttling: nobody locks the user out (NIST SP 800-63B §5.2.2) ----------------------


def _sign_in(browser: WSGIClient, password: str = PASSWORD, address: str = "192.0.2.1"):
    page = browser.get("/authorize", params=new_flow().params, REMOTE_ADDR=address)
    data = {**form_fields(page.text), "username": USERNAME, "password": password}
    return browser.post("/login", data, REMOTE_ADDR=address)


def _shut_the_account_gates(server: codeflow.Server) -> None:
    """An attacker fails from many addresses until the account-wide gates are shut."""
    for i in range(codeflow.ACCOUNT_FAILURES_BEFORE_DELAY + 2):
        r = _sign_in(WSGIClient(server.wsgi), "wrong-password", f"198.51.100.{i + 1}")
        assert r.status in (200, 429)


def test_a_browser_that_signed_in_before_passes_the_account_gates(
    server: codeflow.Server,
) -> None:
    """NIST SP 800-63B §5.2.2: throttling must not let an attacker keep the subscriber out.
    A browser that completed a sign-in before (its signed device cookie) signs in from a
    new address while the attacker holds the account-wide gates shut; a browser new to
    the account waits."""
    mine = WSGIClient(server.wsgi)
    assert _sign_in(mine, address="192.0.2.1").status == 303
    _shut_the_account_gates(server)
    assert _sign_in(WSGIClient(server.wsgi), address="203.0.113.9").status == 429
    assert _sign_in(mine, address="203.0.113.10").status == 303


def test_a_password_step_without_the_second_factor_evicts_no_known_address(
    server: codeflow.Server,
) -> None:
    """An attacker who has the password but not the TOTP code passes the password step
    from four addresses: the user's own address stays known, so she is not held by the
    account-wide gates the attacker then shuts."""
    secret = pyotp.random_base32()
    server.set_totp(USERNAME, secret)
    home = "192.0.2.1"
    mine = WSGIClient(server.wsgi)
    first = _sign_in(mine, address=home)
    assert 'name="otp"' in first.text
    code = {**form_fields(first.text), "otp": pyotp.TOTP(secret).at(server.clock())}
    assert mine.post("/login", code, REMOTE_ADDR=home).status == 303  # completed there once
    for i in range(4):
        r = _sign_in(WSGIClient(server.wsgi), address=f"198.51.100.{100 + i}")
        assert 'name="otp"' in r.text  # the password step passed, the code never comes
    _shut_the_account_gates(server)
    r = _sign_in(WSGIClient(server.wsgi), address=home)
    assert r.status == 200 and 'name="otp"' in r.text, r.status


def test_fresh_ipv6_64s_of_one_site_count_as_one_address(server: codeflow.Server) -> None:
    """Failures from many /64s of one /56 (what one site gets) share one back-off."""
    for i in range(codeflow.FAILURES_BEFORE_DELAY):
        assert _sign_in(WSGIClient(server.wsgi), "wrong", f"2001:db8:0:{i:x}::1").status == 200
    assert _sign_in(WSGIClient(server.wsgi), "wrong", "2001:db8:0:ff::1").status == 429


def test_memory_hard_hashes_run_a_few_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst of sign-ins (any usernames, any addresses) runs at most SCRYPT_AT_ONCE
    scrypt hashes at once: 16 MiB each, so memory stays bounded whatever the threads."""
    import hashlib
    import threading

    running, most, lock = [0], [0], threading.Lock()
    scrypt = hashlib.scrypt

    def counted(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            return scrypt(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(hashlib, "scrypt", counted)
    encoded = codeflow.hash_password("a password")
    threads = [threading.Thread(target=codeflow.verify_password, args=("guess", encoded))
               for _ in range(16)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert 1 <= most[0] <= codeflow.SCRYPT_AT_ONCE
