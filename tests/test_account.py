"""The user's own account area at /account (README "Your account"): its sign-in, password
change (NIST SP 800-63B §5.1.1.2), TOTP enrolment (RFC 6238) with recovery codes (NIST SP
800-63B §5.1.2), connected apps (RFC 7009 §2.1), and sessions; every form's CSRF and
same-origin checks (RFC 6749 §10.12, RFC 9700 §4.4), and re-authentication for changes of
the second factor (as max_age, OIDC Core §3.1.2.1).

In-process through the WSGI app (wsgiref.validate); the revoked app's refresh token is
tried over real HTTP.
"""

from __future__ import annotations

import logging
import re

import pyotp
import pytest
import requests
from conftest import (
    CONFIDENTIAL,
    PASSWORD,
    SECRET,
    USERNAME,
    Clock,
    browser_authorize,
    form_fields,
    form_of,
    make_server,
    new_flow,
    redeem_over_http,
)
from wsgi_client import Response, WSGIClient

import codeflow

NEW_PASSWORD = "a long and unusual phrase"


@pytest.fixture
def server(clock: Clock) -> codeflow.Server:
    return make_server(clock)


def signed_in(server: codeflow.Server, remote_addr: str = "127.0.0.1", **environ: str
              ) -> WSGIClient:  # fmt: skip
    """A browser signed in to the account area (no second factor); ``environ`` goes with
    its sign-in requests (a User-Agent, a proxy's X-Forwarded-For)."""
    browser = WSGIClient(server.wsgi, remote_addr=remote_addr)
    r = browser.get("/account", **environ)
    assert r.status == 302 and r.location.endswith("/account/login"), r.status
    r = browser.get(r.location, **environ)
    r = browser.post("/account/login", data={**form_fields(r.text), "username": USERNAME,
                                             "password": PASSWORD}, **environ)  # fmt: skip
    assert r.status == 303 and r.location.endswith("/account"), r.text
    return browser


def account(browser: WSGIClient) -> Response:
    r = browser.get("/account")
    assert r.status == 200, r.text
    return r


def post(browser: WSGIClient, action: str, page: str | None = None, **fields: str) -> Response:
    page = page if page is not None else account(browser).text
    return browser.post(action, data={**form_of(page, action), **fields})


def enrol_totp(browser: WSGIClient, server: codeflow.Server) -> tuple[str, list[str]]:
    """Set up an authenticator app from the account page; return its secret and the
    recovery codes shown."""
    r = post(browser, "/account/totp", step="start")
    assert r.status == 200, r.text
    secret = re.search(r'<code id="totp-key">([A-Z2-7 ]+)</code>', r.text).group(1).replace(" ", "")
    code = pyotp.TOTP(secret).at(server.clock())
    r = browser.post("/account/totp", data={**form_of(r.text, "/account/totp"),
                                            "otp": code, "step": "confirm"})  # fmt: skip
    assert r.status == 200 and "Save your recovery codes" in r.text, r.text
    codes = re.findall(r"<li><code>([A-Z2-7]{4}(?:-[A-Z2-7]{4}){3})</code></li>", r.text)
    return secret, codes


# -- Signing in to the account ---------------------------------------------------------


def test_account_needs_a_sign_in_of_its_own(server: codeflow.Server) -> None:
    """/account without a login session sends the browser to its own sign-in page; after
    the password, the overview. The session is stored (LoginSession) and lists itself."""
    browser = signed_in(server)
    r = account(browser)
    assert "Your account" in r.text and "Signed in as <strong>alice</strong>" in r.text
    assert "This browser" in r.text
    assert len(server.storage.list_login_sessions(USERNAME, server.clock())) == 1


def test_account_sign_in_refuses_a_wrong_password(server: codeflow.Server) -> None:
    browser = WSGIClient(server.wsgi)
    r = browser.get("/account/login")
    r = browser.post("/account/login", data={**form_fields(r.text), "username": USERNAME,
                                             "password": "wrong"})  # fmt: skip
    assert r.status == 200 and "Wrong username or password" in r.text
    assert browser.get("/account").status == 302


def test_account_sign_in_refuses_a_form_from_another_site(server: codeflow.Server) -> None:
    """RFC 9700 §4.4: a form of ours posted from another site is refused."""
    browser = WSGIClient(server.wsgi)
    r = browser.get("/account/login")
    data = {**form_fields(r.text), "username": USERNAME, "password": PASSWORD}
    r = browser.post("/account/login", data=data, headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status == 403
    r = browser.post("/account/login", data=data, headers={"Origin": "http://evil.example"})
    assert r.status == 403


# -- Password (NIST SP 800-63B §5.1.1.2) -------------------------------------------------


def test_change_password_needs_the_current_one(server: codeflow.Server, caplog) -> None:
    browser = signed_in(server)
    with caplog.at_level(logging.INFO, "codeflow.audit"):
        r = post(browser, "/account/password", current_password="wrong",
                 new_password=NEW_PASSWORD)  # fmt: skip
    assert r.status == 400 and "current password is not right" in r.text
    assert 'id="current_password" name="current_password" type="password"' in r.text
    assert codeflow.verify_password(PASSWORD, server.storage.get_user(USERNAME).password_hash)
    assert "account.password_refused" in [rec.event for rec in caplog.records]


@pytest.mark.parametrize(
    "new, why",
    [
        ("short", "at least 8 characters"),
        ("password123", "most common"),
        ("Qwertyuiop", "most common"),
        ("aaaaaaaaaaaa", "repeats"),
        ("abcdefghijk", "run of keys"),
        ("alice-is-me-2024", "username"),
    ],
)
def test_change_password_refuses_what_nist_800_63b_lists(
    server: codeflow.Server, new: str, why: str
) -> None:
    """NIST SP 800-63B §5.1.1.2: at least 8 characters; not from a list of common,
    repetitive or sequential, or context-specific (the username) passwords."""
    browser = signed_in(server)
    r = post(browser, "/account/password", current_password=PASSWORD, new_password=new)
    assert r.status == 400 and why in r.text and "Nothing was changed" in r.text
    assert codeflow.verify_password(PASSWORD, server.storage.get_user(USERNAME).password_hash)


def test_change_password_ends_other_sessions_and_keeps_this_one(
    server: codeflow.Server, caplog
) -> None:
    """RFC 9700 §4.14.2: a password change ends the other sessions (their cookies' credential
    fingerprint and their stored records) and the refresh tokens issued before; this
    browser gets a new session and stays signed in."""
    other = signed_in(server)
    browser = signed_in(server)
    tokens = server.issue_tokens(USERNAME, CONFIDENTIAL, "openid offline_access")
    with caplog.at_level(logging.INFO, "codeflow.audit"):
        r = post(browser, "/account/password", current_password=PASSWORD,
                 new_password=NEW_PASSWORD)  # fmt: skip
    assert r.status == 303 and r.location.endswith("/account?done=password")
    assert "Your password was changed" in browser.get(r.location).text
    assert other.get("/account").status == 302
    assert len(server.storage.list_login_sessions(USERNAME, server.clock())) == 1
    refresh = server.storage.get_token(codeflow.token_hash(tokens["refresh_token"]))
    assert refresh.revoked
    assert codeflow.verify_password(NEW_PASSWORD, server.storage.get_user(USERNAME).password_hash)
    assert "account.password_changed" in [rec.event for rec in caplog.records]


@pytest.mark.parametrize("action", ["/account/password", "/account/totp", "/account/apps",
                                    "/account/sessions", "/account/recovery-codes"])  # fmt: skip
def test_every_account_form_needs_its_csrf_token(server: codeflow.Server, action: str) -> None:
    """RFC 6749 §10.12: a form without the token of this browser's session is refused,
    and nothing is done."""
    browser = signed_in(server)
    data = {"current_password": PASSWORD, "new_password": NEW_PASSWORD, "step": "start",
            "client_id": CONFIDENTIAL, "all": "others"}  # fmt: skip
    r = browser.post(action, data=data)
    assert r.status == 400 and "This form has expired" in r.text
    # A token from another browser (the attacker's own) is no better.
    attacker = signed_in(server)
    r = browser.post(action, data={**data, **form_fields(account(attacker).text)})
    assert r.status == 400 and "This form has expired" in r.text
    assert codeflow.verify_password(PASSWORD, server.storage.get_user(USERNAME).password_hash)
    assert len(server.storage.list_login_sessions(USERNAME, server.clock())) == 2


@pytest.mark.parametrize("action", ["/account/password", "/account/totp", "/account/apps",
                                    "/account/sessions", "/account/recovery-codes"])  # fmt: skip
def test_every_account_form_refuses_another_origin(server: codeflow.Server, action: str) -> None:
    """RFC 9700 §4.4: the same-origin check of login and consent (Sec-Fetch-Site, or
    Origin from browsers that send no Fetch Metadata)."""
    browser = signed_in(server)
    page = account(browser).text
    fields = {**form_fields(page), "current_password": PASSWORD,
              "new_password": NEW_PASSWORD, "step": "start", "all": "others"}  # fmt: skip
    for headers in ({"Sec-Fetch-Site": "same-site"}, {"Origin": "http://127.0.0.1:9000"}):
        r = browser.post(action, data=fields, headers=headers)
        assert r.status == 403, headers
    assert codeflow.verify_password(PASSWORD, server.storage.get_user(USERNAME).password_hash)


# -- TOTP, recovery codes, re-authentication ------------------------------------------


def test_enrol_totp_shows_a_qr_code_and_the_key_and_needs_a_first_code(
    server: codeflow.Server, caplog
) -> None:
    """RFC 6238: the secret as an inline SVG QR code (no script, no image fetched) and as
    text; the app is on only once its first code is right; recovery codes are shown once
    and stored as hashes (NIST SP 800-63B §5.1.2)."""
    pytest.importorskip("qrcode")
    browser = signed_in(server)
    r = post(browser, "/account/totp", step="start")
    assert r.status == 200
    assert '<figure class="qr" role="img"' in r.text and "<svg" in r.text and "<img" not in r.text
    assert "<script" not in r.text
    wrong = browser.post("/account/totp", data={**form_of(r.text, "/account/totp"),
                                                "otp": "000000", "step": "confirm"})  # fmt: skip
    assert wrong.status == 400 and "not right" in wrong.text
    assert server.storage.get_user(USERNAME).totp_secret is None
    with caplog.at_level(logging.INFO, "codeflow.audit"):
        secret, codes = enrol_totp(browser, server)
    assert server.storage.get_user(USERNAME).totp_secret == secret
    assert len(codes) == 10 and len(set(codes)) == 10
    assert server.storage.recovery_codes_left(USERNAME) == 10
    events = [rec.event for rec in caplog.records]
    assert "account.totp_enrolled" in events and "account.recovery_codes_created" in events
    assert all(code not in rec.getMessage() for rec in caplog.records for code in codes)
    page = account(browser).text  # still signed in, with a new session
    assert "An authenticator app is set up" in page and "<strong>10</strong> unused" in page


def test_enrol_totp_works_without_the_qr_library(
    server: codeflow.Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the optional qrcode library the page gives the key as text only."""
    monkeypatch.setitem(__import__("sys").modules, "qrcode.image.svg", None)
    browser = signed_in(server)
    r = post(browser, "/account/totp", step="start")
    assert r.status == 200 and 'id="totp-key"' in r.text and "<svg" not in r.text
    assert "Type this key" in r.text


def test_changing_the_second_factor_needs_a_recent_sign_in(server: codeflow.Server) -> None:
    """As max_age (OIDC Core §3.1.2.1): past ACCOUNT_REAUTH_AGE the account asks to sign
    in again before the second factor changes; after signing in, it may."""
    browser = signed_in(server)
    server.clock.advance(codeflow.ACCOUNT_REAUTH_AGE + 1)
    r = post(browser, "/account/totp", step="start")
    assert r.status == 303 and r.location.endswith("/account/login?reauth=yes")
    r = browser.get(r.location)
    assert "confirm it is you" in r.text
    r = browser.post("/account/login", data={**form_fields(r.text), "username": USERNAME,
                                             "password": PASSWORD})  # fmt: skip
    assert r.status == 303
    assert post(browser, "/account/totp", step="start").status == 200
    # The re-authentication replaced this browser's session; it did not add one.
    assert len(server.storage.list_login_sessions(USERNAME, server.clock())) == 1


def sign_in_with_second_factor(
    server: codeflow.Server, **second: str
) -> tuple[WSGIClient, Response]:
    browser = WSGIClient(server.wsgi)
    r = browser.get("/account/login")
    r = browser.post("/account/login", data={**form_fields(r.text), "username": USERNAME,
                                             "password": PASSWORD})  # fmt: skip
    assert r.status == 200 and "Enter your code" in r.text
    form = second.pop("form", "otp")
    fields = form_fields(r.text) if form == "otp" else form_of(r.text, "/account/login")
    return browser, browser.post("/account/login", data={**fields, **second})


def test_a_recovery_code_signs_in_once(server: codeflow.Server, caplog) -> None:
    """NIST SP 800-63B §5.1.2.1: a look-up secret is used once; typed with spaces or in
    lower case it is the same code."""
    _, codes = enrol_totp(signed_in(server), server)
    typed = codes[0].lower().replace("-", " ")
    with caplog.at_level(logging.INFO, "codeflow.audit"):
        _, r = sign_in_with_second_factor(server, recovery_code=typed)
    assert r.status == 303 and r.location.endswith("/account"), r.text
    assert "account.recovery_code_used" in [rec.event for rec in caplog.records]
    assert server.storage.recovery_codes_left(USERNAME) == 9
    _, again = sign_in_with_second_factor(server, recovery_code=codes[0])
    assert again.status == 200 and "recovery code is not right" in again.text


def test_a_recovery_code_works_on_the_login_page_of_an_app(server: codeflow.Server) -> None:
    """The TOTP step of the authorization flow's login accepts a recovery code; the ID
    token's amr says otp and mfa (RFC 8176 §2)."""
    _, codes = enrol_totp(signed_in(server), server)
    browser = WSGIClient(server.wsgi)
    r = browser.get("/authorize", params=new_flow().params)
    r = browser.post("/login", data={**form_fields(r.text), "username": USERNAME,
                                     "password": PASSWORD})  # fmt: skip
    assert "Use a recovery code" in r.text
    r = browser.post("/login", data={**form_fields(r.text), "recovery_code": codes[3]})
    assert r.status == 303 and "/authorize" in r.location, r.text
    session = codeflow.read_session(server, browser.cookies["codeflow_session"])
    assert session is not None and session.amr == ("pwd", "otp", "mfa")


def test_remove_totp_deletes_recovery_codes(server: codeflow.Server, caplog) -> None:
    browser = signed_in(server)
    enrol_totp(browser, server)
    with caplog.at_level(logging.INFO, "codeflow.audit"):
        r = post(browser, "/account/totp", step="remove")
    assert r.status == 303 and r.location.endswith("done=totp-removed")
    assert server.storage.get_user(USERNAME).totp_secret is None
    assert server.storage.recovery_codes_left(USERNAME) == 0
    assert "account.totp_removed" in [rec.event for rec in caplog.records]
    assert "Set up an authenticator app" in account(browser).text


def test_new_recovery_codes_replace_the_old_ones(server: codeflow.Server) -> None:
    browser = signed_in(server)
    _, old = enrol_totp(browser, server)
    r = post(browser, "/account/recovery-codes")
    assert r.status == 200 and "only" in r.text
    new = re.findall(r"<li><code>([A-Z2-7-]{19})</code></li>", r.text)
    assert len(new) == 10 and not set(new) & set(old)
    _, r = sign_in_with_second_factor(server, recovery_code=old[1])
    assert r.status == 200 and "not right" in r.text
    _, r = sign_in_with_second_factor(server, recovery_code=new[1])
    assert r.status == 303


# -- Connected apps (RFC 7009 §2.1) -------------------------------------------------------


def test_connected_apps_list_the_consent_and_revoke_it(server: codeflow.Server, caplog) -> None:
    browser = signed_in(server)
    server.storage.save_consent(USERNAME, CONFIDENTIAL, ["openid", "profile"], server.clock())
    tokens = server.issue_tokens(USERNAME, CONFIDENTIAL, "openid offline_access")
    page = account(browser).text
    assert "Confidential App" in page and "See your name and basic profile" in page
    assert 'aria-label="Revoke access for Confidential App"' in page
    with caplog.at_level(logging.INFO, "codeflow.audit"):
        r = post(browser, "/account/apps", page, client_id=CONFIDENTIAL)
    assert r.status == 303 and r.location.endswith("done=app")
    assert server.storage.get_consent(USERNAME, CONFIDENTIAL) == frozenset()
    assert server.storage.get_token(codeflow.token_hash(tokens["refresh_token"])).revoked
    assert server.storage.get_token(codeflow.token_hash(tokens["access_token"])).revoked
    assert "No app has access" in account(browser).text
    assert "account.app_revoked" in [rec.event for rec in caplog.records]


@pytest.mark.http
def test_a_revoked_app_s_refresh_token_fails_over_http(live) -> None:
    """RFC 7009 §2.1 and RFC 6749 §5.2: after the user revokes the app on the account page,
    its refresh token is invalid_grant."""
    _, base = live
    session = requests.Session()
    flow = new_flow(scope="openid offline_access")
    query = browser_authorize(base, flow, session)
    tokens = redeem_over_http(base + "/token", query["code"], flow).json()
    page = session.get(base + "/account").text
    assert "confidential-app" in page
    revoke = {**form_of(page, "/account/apps"), "client_id": CONFIDENTIAL}
    r = session.post(base + "/account/apps", data=revoke, allow_redirects=False)
    assert r.status_code == 303, r.text
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    r = requests.post(base + "/token", auth=(CONFIDENTIAL, SECRET), data=refresh, timeout=10)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


# -- Sessions ---------------------------------------------------------------------------


def test_sessions_are_listed_and_one_can_be_signed_out(server: codeflow.Server, caplog) -> None:
    laptop = signed_in(server)
    phone = signed_in(server, HTTP_USER_AGENT="Mozilla/5.0 (Android 14) Firefox/120.0")
    page = account(laptop).text
    assert "This browser" in page and "Firefox on Android" in page
    sessions = server.storage.list_login_sessions(USERNAME, server.clock())
    other = next(s for s in sessions if "Firefox" in s.user_agent)
    assert other.sid not in page  # the page names sessions by a MAC, never by sid
    handle = codeflow.session_handle(server, other.sid)
    with caplog.at_level(logging.INFO, "codeflow.audit"):
        r = laptop.post("/account/sessions", data={**form_of(page, "/account/sessions"),
                                                   "session": handle})  # fmt: skip
    assert r.status == 303 and r.location.endswith("done=session")
    assert phone.get("/account").status == 302
    assert account(laptop).status == 200
    assert "account.session_ended" in [rec.event for rec in caplog.records]


def test_sign_out_all_other_sessions(server: codeflow.Server) -> None:
    others = [signed_in(server) for _ in range(3)]
    browser = signed_in(server)
    r = post(browser, "/account/sessions", all="others")
    assert r.status == 303 and r.location.endswith("done=sessions")
    assert all(o.get("/account").status == 302 for o in others)
    assert len(server.storage.list_login_sessions(USERNAME, server.clock())) == 1
    assert "All your other sessions were signed out" in browser.get(r.location).text


def test_signing_out_this_session_signs_this_browser_out(server: codeflow.Server) -> None:
    browser = signed_in(server)
    (mine,) = server.storage.list_login_sessions(USERNAME, server.clock())
    r = post(browser, "/account/sessions", session=codeflow.session_handle(server, mine.sid))
    assert r.status == 303 and r.location.endswith("/account/login")
    assert browser.get("/account").status == 302


def test_last_use_is_written_at_most_once_a_minute(server: codeflow.Server) -> None:
    """Reading the session costs no write per request: last_used_at moves only when it is
    LAST_USED_INTERVAL old."""
    browser = signed_in(server)
    (record,) = server.storage.list_login_sessions(USERNAME, server.clock())
    server.clock.advance(30)
    account(browser)
    assert server.storage.get_login_session(record.sid)[0].last_used_at == record.last_used_at
    server.clock.advance(31)
    account(browser)
    assert server.storage.get_login_session(record.sid)[0].last_used_at == server.clock()


def test_session_address_is_resolved_through_trusted_proxies(clock: Clock) -> None:
    """RFC 7239: behind a trusted proxy, the session's address is the forwarded client's;
    from anyone else, X-Forwarded-For is ignored."""
    server = make_server(clock, trusted_proxies=["10.0.0.1"])
    signed_in(server, remote_addr="10.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9")
    signed_in(server, remote_addr="198.51.100.4", HTTP_X_FORWARDED_FOR="203.0.113.66")
    addresses = {s.address for s in server.storage.list_login_sessions(USERNAME, clock())}
    assert addresses == {"203.0.113.9", "198.51.100.4"}


def test_logout_deletes_the_session_record(server: codeflow.Server) -> None:
    """OIDC RP-Initiated Logout §2: the session ends, and leaves the account's list."""
    browser = signed_in(server)
    r = browser.get("/logout")
    browser.post("/logout", data={**form_fields(r.text), "confirm": "yes"})
    assert server.storage.list_login_sessions(USERNAME, server.clock()) == []
    assert browser.get("/account").status == 302


# -- Passkeys: what the server refuses, without a browser (WebAuthn Level 2) --------------


@pytest.fixture
def passkey_server(clock: Clock) -> codeflow.Server:
    pytest.importorskip("webauthn")
    return make_server(clock, passkeys=True)


def test_passkeys_are_offered_only_when_asked(server: codeflow.Server) -> None:
    """Server(passkeys=False), the default: no passkey form, no script, and the form's
    endpoint refuses."""
    browser = signed_in(server)
    page = account(browser)
    assert "Passkeys" not in page.text and "<script" not in page.text
    r = post(browser, "/account/passkeys", page.text.replace(
        'action="/account/password"', 'action="/account/passkeys"'), step="create")  # fmt: skip
    assert r.status == 400 and "does not offer passkeys" in r.text


def test_registering_a_passkey_needs_a_recent_sign_in(passkey_server: codeflow.Server) -> None:
    """As for the TOTP app: past ACCOUNT_REAUTH_AGE, sign in again first."""
    browser = signed_in(passkey_server)
    page = account(browser).text
    assert "Add a passkey" in page and "<script>" in page
    passkey_server.clock.advance(codeflow.ACCOUNT_REAUTH_AGE + 1)
    r = post(browser, "/account/passkeys", page, step="create", credential="{}")
    assert r.status == 303 and r.location.endswith("/account/login?reauth=yes")


@pytest.mark.parametrize("credential", ["{}", "not json", '{"id": "x", "response": 5}'])
def test_a_malformed_registration_is_a_4xx(passkey_server: codeflow.Server, credential: str
                                          ) -> None:  # fmt: skip
    """Bad input gets a clear 4xx, never a 5xx; the challenge is spent all the same."""
    browser = signed_in(passkey_server)
    page = account(browser).text
    r = post(browser, "/account/passkeys", page, step="create", credential=credential)
    assert r.status == 400 and "could not be added" in r.text
    r = post(browser, "/account/passkeys", page, step="create", credential=credential)
    assert r.status == 400 and "This form has expired" in r.text  # WebAuthn §13.4.3
    assert passkey_server.storage.list_passkeys(USERNAME) == []


@pytest.mark.parametrize("credential", ["{}", "[]", "not json", '{"id": 5}'])
def test_a_malformed_assertion_is_refused_on_both_login_pages(
    passkey_server: codeflow.Server, credential: str
) -> None:
    browser = WSGIClient(passkey_server.wsgi)
    r = browser.get("/account/login")
    assert "Sign in with a passkey" in r.text
    r = browser.post("/account/login", data={**form_of(r.text, "/account/login"),
                                             "credential": credential})  # fmt: skip
    assert r.status == 200 and "That passkey cannot sign you in" in r.text
    r = browser.get("/authorize", params=new_flow().params)
    r = browser.post("/login", data={**form_fields(r.text), "credential": credential})
    assert r.status == 200 and "That passkey cannot sign you in" in r.text
    assert browser.get("/account").status == 302


def test_a_passkey_is_removed_from_the_account_page(
    passkey_server: codeflow.Server, caplog
) -> None:
    """Removing a passkey (after a recent sign-in) deletes it; another user's cannot be
    named."""
    store = passkey_server.storage
    browser = signed_in(passkey_server)
    for cid, user in (("mine", USERNAME), ("theirs", "bob")):
        store.save_passkey(codeflow.Passkey(cid, user, "key", 0, "Laptop", passkey_server.clock()))
    page = account(browser).text
    assert 'aria-label="Remove the passkey Laptop"' in page
    # After the password, the passkey is now the second factor.
    other = WSGIClient(passkey_server.wsgi)
    r = other.get("/account/login")
    r = other.post("/account/login", data={**form_of(r.text, "/account/login"),
                                           "username": USERNAME, "password": PASSWORD})  # fmt: skip
    assert r.status == 200 and "Confirm it is you" in r.text and "Use your passkey" in r.text
    with caplog.at_level(logging.INFO, "codeflow.audit"):
        r = post(browser, "/account/passkeys", page, step="remove", credential_id="theirs")
        assert r.status == 303 and store.get_passkey("theirs") is not None
        r = post(browser, "/account/passkeys", page, step="remove", credential_id="mine")
    assert r.status == 303 and r.location.endswith("done=passkey-removed")
    assert store.get_passkey("mine") is None
    assert [rec.event for rec in caplog.records].count("passkey.removed") == 1


def test_an_app_asking_for_mfa_gets_it_from_a_passkey_user(passkey_server: codeflow.Server
                                                           ) -> None:  # fmt: skip
    """OIDC Core §3.1.2.1 acr_values: a user signed in with a password alone whose second
    factor is a passkey (no TOTP app) is asked to sign in again, not told there is none."""
    browser = WSGIClient(passkey_server.wsgi)
    r = browser.get("/authorize", params=new_flow().params)
    r = browser.post("/login", data={**form_fields(r.text), "username": USERNAME,
                                     "password": PASSWORD})  # fmt: skip
    assert r.status == 303
    passkey_server.storage.save_passkey(
        codeflow.Passkey("cred", USERNAME, "key", 0, "Laptop", passkey_server.clock()))
    r = browser.get("/authorize", params=new_flow(acr_values=codeflow.ACR_MFA).params)
    assert r.status == 200 and "asks for your authentication code too" in r.text
