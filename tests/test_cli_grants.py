"""Grants an administrator can see and end (issue "Safe to run on-prem", item 6):
``codeflow grants list``, ``codeflow grants revoke`` and ``codeflow user sessions revoke``.

The administrator runs the ``codeflow`` command in another process, on the SQLite file the
server uses; what it changed is then asked of the server on the wire, in-process.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    CONFIDENTIAL,
    PASSWORD,
    PUBLIC,
    SECRET,
    USERNAME,
    Clock,
    form_fields,
    new_flow,
    query_of,
)
from test_cli_manage import one_line_error
from test_principals import authorize, bearer, cli, ok, redemption, refresh
from wsgi_client import WSGIClient, basic

import codeflow

pytestmark = pytest.mark.http


@pytest.fixture
def clock() -> Clock:
    """Today, to the second: the ``codeflow`` command counts tokens active by the real
    clock, and a consent time printed to the second compares exactly."""
    return Clock(float(int(time.time())))


def utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def rows(result: subprocess.CompletedProcess[str]) -> list[list[str]]:
    """The tab-separated lines a command printed, once it succeeded."""
    return [line.split("\t") for line in ok(result).stdout.splitlines()]


def signed_in_browser(srv: codeflow.Server, username: str, password: str) -> WSGIClient:
    """A browser in which ``username`` has signed in at the login page."""
    browser = WSGIClient(srv.wsgi)
    page = browser.get("/authorize", params=new_flow().params)
    assert 'action="login"' in page.text, page.text
    r = browser.post("/login", {**form_fields(page.text), "username": username,
                                "password": password})  # fmt: skip
    assert r.status == 303, r.text
    return browser


def shows_login_page(browser: WSGIClient) -> bool:
    page = browser.get("/authorize", params=new_flow().params)
    assert page.status == 200, (page.status, page.location)
    return 'action="login"' in page.text


def introspect(app: WSGIClient, token: str) -> dict[str, object]:
    r = app.post("/introspect", {"token": token}, headers=basic(CONFIDENTIAL, SECRET))
    assert r.status == 200, r.text
    body: dict[str, object] = r.json()
    return body


###############################################################################
# codeflow grants list ########################################################
###############################################################################


def test_grants_list_shows_each_users_grant_to_each_client(
    srv: codeflow.Server, db: Path, clock: Clock
) -> None:
    """OIDC Core §3.1.2.4: the server obtains the End-User's consent; `codeflow grants
    list` shows, tab-separated, one line per user and client: the consented scopes, when
    consent was last given (- when the tokens were issued without a consent page, as
    auto-approve and Server.issue_tokens do), and the active access and refresh tokens.
    A client_credentials token is no user's grant."""
    consented_at = clock()
    authorize(WSGIClient(srv.wsgi), WSGIClient(srv.wsgi))
    clock.advance(5)
    srv.add_user("bob", "bob-password")
    srv.issue_tokens("bob", CONFIDENTIAL, "api:read")
    srv.issue_tokens(None, CONFIDENTIAL, "api:read")

    assert rows(cli(db, "grants", "list")) == [
        [USERNAME, CONFIDENTIAL, "offline_access openid profile", utc(consented_at),
         "1 access", "1 refresh"],
        ["bob", CONFIDENTIAL, "-", "-", "1 access", "1 refresh"],
    ]  # fmt: skip
    assert [row[:2] for row in rows(cli(db, "grants", "list", "--user", "bob"))] == [
        ["bob", CONFIDENTIAL]
    ]
    assert rows(cli(db, "grants", "list", "--client", PUBLIC)) == []
    assert len(rows(cli(db, "grants", "list", "--client", CONFIDENTIAL))) == 2


def test_grants_list_says_unknown_for_a_consent_stored_without_its_time(
    srv: codeflow.Server, db: Path
) -> None:
    """A consent stored before codeflow recorded consent times (SQLite schema version 4)
    is listed with its scopes and "unknown" for when."""
    authorize(WSGIClient(srv.wsgi), WSGIClient(srv.wsgi))
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE consents SET consented_at = NULL")
    conn.close()
    [row] = rows(cli(db, "grants", "list", "--user", USERNAME))
    assert row[2:4] == ["offline_access openid profile", "unknown"]


###############################################################################
# codeflow grants revoke: RFC 7009 §2.1 #######################################
###############################################################################


def test_grants_revoke_ends_the_grants_tokens_on_the_wire(srv: codeflow.Server, db: Path) -> None:
    """RFC 7009 §2.1: "the revocation of a particular token may cause the revocation of
    related tokens and the underlying authorization grant"; revoking the grant itself
    (`codeflow grants revoke`) revokes every token of it. The refresh token gets
    invalid_grant (RFC 6749 §5.2: "revoked"), the access token is inactive at
    introspection (RFC 7662 §2.2) and reads no userinfo (RFC 6750 §3.1). Alice's grant to
    another client, and bob's to this one, keep working."""
    app = WSGIClient(srv.wsgi)
    alices = authorize(WSGIClient(srv.wsgi), app)
    other_client = srv.issue_tokens(USERNAME, PUBLIC, "openid profile")
    srv.add_user("bob", "bob-password")
    bobs = srv.issue_tokens("bob", CONFIDENTIAL, "openid offline_access")

    ok(cli(db, "grants", "revoke", "--user", USERNAME, "--client", CONFIDENTIAL))

    r = refresh(app, alices["refresh_token"])
    assert (r.status, r.json()["error"]) == (400, "invalid_grant"), r.text
    assert introspect(app, alices["access_token"]) == {"active": False}
    r = app.get("/userinfo", headers=bearer(alices["access_token"]))
    assert r.status == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    assert introspect(app, other_client["access_token"])["active"] is True
    assert refresh(app, bobs["refresh_token"]).status == 200
    assert [row[:2] for row in rows(cli(db, "grants", "list"))] == [
        [USERNAME, PUBLIC], ["bob", CONFIDENTIAL]
    ]  # fmt: skip


def test_grants_revoke_forgets_the_consent_but_not_the_sign_in(
    srv: codeflow.Server, db: Path
) -> None:
    """OIDC Core §3.1.2.6: consent_required, "The Authorization Server requires End-User
    consent". After `grants revoke` the app has no consent of alice's: prompt=none answers
    consent_required (not login_required: she is still signed in), and a request without
    it shows her the consent page again."""
    browser = WSGIClient(srv.wsgi)
    authorize(browser, WSGIClient(srv.wsgi))
    ok(cli(db, "grants", "revoke", "--user", USERNAME, "--client", CONFIDENTIAL))
    r = browser.get("/authorize", params=new_flow(prompt="none").params)
    assert query_of(r.location)["error"] == "consent_required", r.location
    page = browser.get("/authorize", params=new_flow().params)
    assert 'action="consent"' in page.text, (page.status, page.location)


def test_grants_revoke_burns_a_code_not_yet_redeemed(srv: codeflow.Server, db: Path) -> None:
    """RFC 6749 §4.1.3: the server MUST "verify that the authorization code is valid"; a
    code issued under the grant before it was revoked is not, and gets invalid_grant."""
    browser, app = WSGIClient(srv.wsgi), WSGIClient(srv.wsgi)
    authorize(browser, app)  # signed in and consented: the next request gets a code at once
    flow = new_flow()
    code = query_of(browser.get("/authorize", params=flow.params).location)["code"]
    ok(cli(db, "grants", "revoke", "--user", USERNAME, "--client", CONFIDENTIAL))
    r = app.post("/token", redemption(code, flow.verifier), headers=basic(CONFIDENTIAL, SECRET))
    assert (r.status, r.json()["error"]) == (400, "invalid_grant"), r.text


def test_grants_revoke_without_such_a_grant_is_one_line_exit_2(
    srv: codeflow.Server, db: Path
) -> None:
    """Nothing to revoke is the operator's mistake (a misspelt name, say): one line that
    names the pair, exit status 2; the same once the grant has been revoked."""
    args = ("grants", "revoke", "--user", USERNAME, "--client", CONFIDENTIAL)
    one_line_error(cli(db, *args), "no grant", USERNAME, CONFIDENTIAL)
    srv.issue_tokens(USERNAME, CONFIDENTIAL, "openid")
    ok(cli(db, *args))
    one_line_error(cli(db, *args), "no grant")


###############################################################################
# codeflow user sessions revoke ###############################################
###############################################################################


def test_user_sessions_revoke_signs_the_user_out_of_every_browser(
    srv: codeflow.Server, db: Path
) -> None:
    """OIDC Core §3.1.2.1: with no authenticated End-User the server must authenticate
    one. `codeflow user sessions revoke alice` ends every login session of alice's: each
    browser she signed in with shows the login page again, and prompt=none answers
    login_required. Bob stays signed in; alice's password still signs her in."""
    srv.add_user("bob", "bob-password")
    laptop = signed_in_browser(srv, USERNAME, PASSWORD)
    phone = signed_in_browser(srv, USERNAME, PASSWORD)
    bobs = signed_in_browser(srv, "bob", "bob-password")
    assert not shows_login_page(laptop) and not shows_login_page(phone)

    ok(cli(db, "user", "sessions", "revoke", USERNAME))

    assert shows_login_page(laptop) and shows_login_page(phone)
    r = laptop.get("/authorize", params=new_flow(prompt="none").params)
    assert query_of(r.location)["error"] == "login_required", r.location
    assert not shows_login_page(bobs)
    assert not shows_login_page(signed_in_browser(srv, USERNAME, PASSWORD))


def test_user_sessions_revoke_leaves_the_apps_grants(srv: codeflow.Server, db: Path) -> None:
    """Signing out of the provider is not revoking what apps were granted (RFC 6749 §1.5:
    a refresh token obtains new access tokens without the user; `grants revoke` ends
    those): after `user sessions revoke`, alice's refresh token still works, and once she
    signs in again she is not asked to consent again."""
    app = WSGIClient(srv.wsgi)
    tokens = authorize(WSGIClient(srv.wsgi), app)
    ok(cli(db, "user", "sessions", "revoke", USERNAME))
    assert refresh(app, tokens["refresh_token"]).status == 200
    browser = signed_in_browser(srv, USERNAME, PASSWORD)
    r = browser.get("/authorize", params=new_flow().params)
    assert "code" in query_of(r.location or ""), (r.status, r.text[:200])


def test_user_sessions_revoke_of_an_unknown_user_is_one_line_exit_2(db: Path) -> None:
    one_line_error(cli(db, "user", "sessions", "revoke", "nobody"), "no user", "nobody")
