"""Users and clients as principals (issue 12, items 6, 10 and 11): the grants of a user or
client end with it; a password or second-factor change ends the user's refresh tokens; a
``sub`` names one principal only; client authentication answers an unknown client_id as it
answers a wrong secret.

The administrator's side runs as users run it: the ``codeflow`` command in another process,
on the SQLite file the server uses. The server's side is asked on the wire, in-process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyotp
import pytest
from conftest import (
    CONFIDENTIAL,
    ISSUER,
    PASSWORD,
    PUBLIC,
    REDIRECT,
    SECRET,
    USERNAME,
    Clock,
    form_fields,
    new_flow,
    query_of,
)
from oidc_helpers import jwks_keys, verify_jwt
from wsgi_client import Response, WSGIClient, basic

import codeflow

CODEFLOW = Path(codeflow.__file__).resolve()
APP_SCOPES = ["openid", "profile", "email", "offline_access", "api:read", "api:write"]


def cli(storage_path: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``python codeflow.py ARGS --storage sqlite:///PATH``, as an administrator runs it."""
    return subprocess.run(  # noqa: S603 -- our own command line
        [sys.executable, str(CODEFLOW), *args, "--storage", f"sqlite:///{storage_path}"],
        input=stdin, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr
    return result


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def sign_in(browser: WSGIClient, flow_params: dict[str, str], password: str = PASSWORD) -> Response:
    """Authorize in ``browser``, signing in as alice if asked: the response that follows
    (the consent page, or the redirect to the client)."""
    page = browser.get("/authorize", params=flow_params)
    if 'action="login"' in page.text:
        fields = {**form_fields(page.text), "username": USERNAME, "password": password}
        r = browser.post("/login", fields)
        assert r.status == 303, r.text
        page = browser.get(r.location)
    return page


def authorize(browser: WSGIClient, app: WSGIClient) -> dict[str, str]:
    """The whole flow: alice signs in and consents in ``browser``; the confidential client
    ``app`` redeems the code. Returns the token response."""
    flow = new_flow()
    page = sign_in(browser, flow.params)
    if 'action="consent"' in page.text:
        page = browser.post("/consent", {**form_fields(page.text), "decision": "approve"})
    r = app.post("/token", redemption(query_of(page.location)["code"], flow.verifier),
                 headers=basic(CONFIDENTIAL, SECRET))  # fmt: skip
    assert r.status == 200, r.text
    return r.json()


def redemption(code: str, verifier: str) -> dict[str, str]:
    return {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "code_verifier": verifier}  # fmt: skip


def refresh(app: WSGIClient, refresh_token: str, auth: dict[str, str] | None = None) -> Response:
    return app.post("/token", {"grant_type": "refresh_token", "refresh_token": refresh_token},
                    headers=auth or basic(CONFIDENTIAL, SECRET))  # fmt: skip


def remove_and_add_alice_again(db: Path) -> None:
    """``codeflow user remove alice``, then ``codeflow user add alice``: another person, who
    happens to choose the same password."""
    ok(cli(db, "user", "remove", USERNAME))
    ok(cli(db, "user", "add", USERNAME, "--password-stdin", stdin=PASSWORD + "\n"))


###############################################################################
# Grants end with their user or client: OIDC Core §2, RFC 9700 §4.14.2 ########
###############################################################################


def test_a_removed_users_refresh_token_does_not_work_for_the_new_user_of_that_name(
    srv: codeflow.Server, db: Path
) -> None:
    """OIDC Core §2: sub is "A locally unique and never reassigned identifier within the
    Issuer for the End-User". A refresh token of a removed alice is no grant of the new
    alice: the token endpoint answers invalid_grant, and the token is gone from storage."""
    app = WSGIClient(srv.wsgi)
    tokens = authorize(WSGIClient(srv.wsgi), app)
    remove_and_add_alice_again(db)
    r = refresh(app, tokens["refresh_token"])
    assert (r.status, r.json()["error"]) == (400, "invalid_grant"), r.text
    assert srv.storage.get_token(codeflow.token_hash(tokens["refresh_token"])) is None
    assert srv.storage.get_token(codeflow.token_hash(tokens["access_token"])) is None


def test_a_removed_users_access_token_does_not_read_the_new_users_userinfo(
    srv: codeflow.Server, db: Path
) -> None:
    """OIDC Core §5.3.3 and RFC 6750 §3.1: an access token that is not valid gets 401
    invalid_token. The token of a removed alice reads nothing of the new alice."""
    app = WSGIClient(srv.wsgi)
    tokens = authorize(WSGIClient(srv.wsgi), app)
    remove_and_add_alice_again(db)
    r = app.get("/userinfo", headers=bearer(tokens["access_token"]))
    assert r.status == 401, r.text
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    r = app.post("/introspect", {"token": tokens["access_token"]},
                 headers=basic(CONFIDENTIAL, SECRET))  # fmt: skip
    assert r.json() == {"active": False}


def test_a_removed_users_consent_does_not_carry_over_to_the_new_user(
    srv: codeflow.Server, db: Path
) -> None:
    """OIDC Core §3.1.2.4: the server obtains the End-User's consent; the new alice has given
    none, so she sees the consent page rather than the old alice's remembered consent."""
    authorize(WSGIClient(srv.wsgi), WSGIClient(srv.wsgi))
    remove_and_add_alice_again(db)
    page = sign_in(WSGIClient(srv.wsgi), new_flow().params)
    assert page.status == 200 and 'action="consent"' in page.text, (page.status, page.location)


def test_a_removed_users_session_cookie_signs_in_nobody(srv: codeflow.Server, db: Path) -> None:
    """OIDC Core §3.1.2.1: with prompt=none and no signed-in End-User the answer is
    login_required. The browser of the removed alice is not signed in as the new alice,
    even though she chose the same password."""
    browser = WSGIClient(srv.wsgi)
    authorize(browser, WSGIClient(srv.wsgi))
    remove_and_add_alice_again(db)
    r = browser.get("/authorize", params=new_flow(prompt="none").params)
    assert query_of(r.location)["error"] == "login_required", r.location


def test_a_user_re_created_with_the_same_password_hash_is_not_signed_in_by_an_old_cookie(
    server: codeflow.Server,
) -> None:
    """OIDC Core §2: a sub is never reassigned, so neither is a login session. A user record
    made anew with the very same password hash (restored from an export, say) is a new
    record: the old browser session is no session for it."""
    browser = WSGIClient(server.wsgi)
    authorize(browser, WSGIClient(server.wsgi))
    old = server.storage.get_user(USERNAME)
    assert old is not None
    server.remove_user(USERNAME)
    server.storage.add_user(codeflow.User(USERNAME, old.password_hash, dict(old.claims)))
    r = browser.get("/authorize", params=new_flow(prompt="none").params)
    assert query_of(r.location)["error"] == "login_required", r.location


def test_a_code_issued_to_a_removed_user_is_refused_to_the_new_user(
    srv: codeflow.Server, db: Path
) -> None:
    """RFC 6749 §4.1.3: the server MUST "verify that the authorization code is valid"; a code
    of the removed alice, redeemed after a new alice was added, gets invalid_grant."""
    browser, app = WSGIClient(srv.wsgi), WSGIClient(srv.wsgi)
    authorize(browser, app)  # signed in, consented: the next authorization is a code at once
    flow = new_flow()
    code = query_of(browser.get("/authorize", params=flow.params).location)["code"]
    remove_and_add_alice_again(db)
    r = app.post("/token", redemption(code, flow.verifier), headers=basic(CONFIDENTIAL, SECRET))
    assert (r.status, r.json()["error"]) == (400, "invalid_grant"), r.text


def test_a_removed_clients_access_token_reads_no_userinfo(srv: codeflow.Server, db: Path) -> None:
    """RFC 6750 §3.1: invalid_token when the access token is "expired, revoked, malformed, or
    invalid for other reasons"; a token of a client removed with ``codeflow client remove``
    is such a token."""
    app = WSGIClient(srv.wsgi)
    tokens = authorize(WSGIClient(srv.wsgi), app)
    ok(cli(db, "client", "remove", CONFIDENTIAL))
    r = app.get("/userinfo", headers=bearer(tokens["access_token"]))
    assert r.status == 401, r.text
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert srv.storage.get_token(codeflow.token_hash(tokens["access_token"])) is None


def test_a_client_registered_again_under_a_removed_clients_id_inherits_no_grant(
    srv: codeflow.Server, db: Path, clock: Clock
) -> None:
    """RFC 6749 §6: the server must "ensure that the refresh token was issued to the
    authenticated client"; a new registration under a removed client's client_id is another
    client. The old refresh token gets
    invalid_grant, and alice's consent to the old client is not the new one's: prompt=none
    answers consent_required (OIDC Core §3.1.2.6)."""
    browser, app = WSGIClient(srv.wsgi), WSGIClient(srv.wsgi)
    tokens = authorize(browser, app)
    ok(cli(db, "client", "remove", CONFIDENTIAL))
    added = ok(cli(db, "client", "add", CONFIDENTIAL, "--redirect-uri", REDIRECT,
                   *(arg for s in APP_SCOPES for arg in ("--scope", s))))  # fmt: skip
    secret = next(
        line.split()[1] for line in added.stdout.splitlines() if line.startswith("client_secret:")
    )
    # The serving process sees another process's change of a client within its cache's
    # bound (README "Run several nodes").
    clock.advance(codeflow.CACHE_SECONDS)
    r = refresh(app, tokens["refresh_token"], basic(CONFIDENTIAL, secret))
    assert (r.status, r.json()["error"]) == (400, "invalid_grant"), r.text
    r = browser.get("/authorize", params=new_flow(prompt="none").params)
    assert query_of(r.location)["error"] == "consent_required", r.location


def test_userinfo_refuses_a_token_whose_client_is_gone(server: codeflow.Server) -> None:
    """RFC 6750 §3.1: invalid_token for a token "invalid for other reasons". A token saved
    while its client was being removed (a token request that raced ``client remove``)
    outlives the removal in storage; userinfo still refuses it."""
    token = "an-access-token-of-a-removed-client"
    server.remove_client(PUBLIC)
    now = server.clock()
    server.storage.save_token(codeflow.Token(
        codeflow.token_hash(token), "access", PUBLIC, USERNAME, ("openid", "profile"),
        issued_at=now, expires_at=now + 3600, family_id="raced-family",
    ))  # fmt: skip
    r = WSGIClient(server.wsgi).get("/userinfo", headers=bearer(token))
    assert r.status == 401, r.text
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


CREDENTIAL_CHANGES = {
    "user passwd": (("user", "passwd", USERNAME, "--password-stdin"), "a new password\n"),
    "user totp enable": (("user", "totp", "enable", USERNAME), ""),
    "user totp disable": (("user", "totp", "disable", USERNAME), ""),
}


@pytest.mark.parametrize("change", CREDENTIAL_CHANGES.values(), ids=CREDENTIAL_CHANGES.keys())
def test_a_credential_change_revokes_the_users_refresh_tokens(
    srv: codeflow.Server, db: Path, change: tuple[tuple[str, ...], str]
) -> None:
    """RFC 9700 §4.14.2: "Authorization servers MAY revoke refresh tokens automatically in
    case of a security event, such as: password change". A new password or second factor
    (``codeflow user passwd``, ``user totp enable/disable``) ends the refresh tokens that
    whoever knew the old one may hold; another user's stay valid."""
    args, stdin = change
    if args[1] == "totp" and args[2] == "disable":
        srv.set_totp(USERNAME, pyotp.random_base32())
    srv.add_user("bob", "bob-password")
    alices = srv.issue_tokens(USERNAME, CONFIDENTIAL, "openid offline_access")
    bobs = srv.issue_tokens("bob", CONFIDENTIAL, "openid offline_access")
    ok(cli(db, *args, stdin=stdin))
    app = WSGIClient(srv.wsgi)
    r = refresh(app, alices["refresh_token"])
    assert (r.status, r.json()["error"]) == (400, "invalid_grant"), r.text
    assert refresh(app, bobs["refresh_token"]).status == 200


###############################################################################
# One sub, one principal: RFC 9700 §4.15, RFC 9068 §5 #########################
###############################################################################


def test_a_client_may_not_be_named_after_a_user(db: Path) -> None:
    """RFC 9700 §4.15.1: "Authorization servers SHOULD NOT allow clients to influence their
    client_id or any claim that could cause confusion with a genuine resource owner if a
    common namespace for client IDs and user identifiers exists". A client_credentials
    token's sub is the client_id (RFC 9068 §2.2), a user's token's the username:
    ``codeflow client add alice`` is refused with a clear message while user alice exists."""
    ok(cli(db, "user", "add", USERNAME, "--password-stdin", stdin=PASSWORD + "\n"))
    r = cli(db, "client", "add", USERNAME, "--grant-type", "client_credentials")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert f"user named {USERNAME!r}" in r.stderr, r.stderr
    assert "client_secret" not in r.stdout
    assert USERNAME not in ok(cli(db, "client", "list")).stdout


def test_a_user_may_not_be_named_after_a_client(db: Path) -> None:
    """RFC 9068 §5: "Authorization servers should prevent scenarios where clients can affect
    the value of the sub claim in ways that could confuse resource servers"; the other way
    round, ``codeflow user add`` refuses a name a client has."""
    ok(cli(db, "client", "add", "reports", "--grant-type", "client_credentials"))
    r = cli(db, "user", "add", "reports", "--password-stdin", stdin="a password\n")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert "client named 'reports'" in r.stderr, r.stderr
    assert "reports" not in ok(cli(db, "user", "list")).stdout


def test_server_add_client_and_add_user_refuse_a_shared_name(server: codeflow.Server) -> None:
    """RFC 9700 §4.15.1, through the embedding API: Server.add_client and Server.add_user
    raise ValueError on a name the other kind of principal has, and store nothing."""
    with pytest.raises(ValueError, match="user named"):
        server.add_client(USERNAME, client_secret="s", grant_types=["client_credentials"])
    assert server.storage.get_client(USERNAME) is None
    with pytest.raises(ValueError, match="client named"):
        server.add_user(CONFIDENTIAL, "a password")
    assert server.storage.get_user(CONFIDENTIAL) is None
    # Registering the same client or user again is no collision.
    server.add_client(PUBLIC, redirect_uris=[REDIRECT])
    server.add_user(USERNAME, PASSWORD)


def test_a_client_may_not_take_a_removed_users_name(db: Path) -> None:
    """RFC 9700 §4.15.1: no client_id "that could cause confusion with a genuine resource
    owner". A removed user's tokens may still sit in a relying party's or resource
    server's records under sub alice: ``codeflow client add alice`` is refused after
    ``user remove alice`` too, while a new user may take the name (with a new sub)."""
    ok(cli(db, "user", "add", USERNAME, "--password-stdin", stdin=PASSWORD + "\n"))
    ok(cli(db, "user", "remove", USERNAME))
    r = cli(db, "client", "add", USERNAME, "--grant-type", "client_credentials")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert f"removed user had the name or sub {USERNAME!r}" in r.stderr, r.stderr
    assert USERNAME not in ok(cli(db, "client", "list")).stdout
    ok(cli(db, "user", "add", USERNAME, "--password-stdin", stdin=PASSWORD + "\n"))


###############################################################################
# A sub is never reassigned: OIDC Core §2, RFC 9700 §4.15.1 ####################
###############################################################################


def subs_on_the_wire(srv: codeflow.Server, tokens: dict[str, str]) -> dict[str, str]:
    """The sub of one grant wherever it is told: in the ID token and the RFC 9068 access
    token (both verified against the JWKS), at userinfo and at introspection."""
    wc = WSGIClient(srv.wsgi)
    keys = jwks_keys(wc)
    now = srv.clock()
    id_token = verify_jwt(tokens["id_token"], keys, audience=CONFIDENTIAL, now=now)[1]
    access = verify_jwt(tokens["access_token"], keys, audience=ISSUER, now=now)[1]
    info = wc.get("/userinfo", headers=bearer(tokens["access_token"]))
    assert info.status == 200, info.text
    introspected = wc.post("/introspect", {"token": tokens["access_token"]},
                           headers=basic(CONFIDENTIAL, SECRET)).json()  # fmt: skip
    assert introspected["active"] is True and introspected["username"] == USERNAME
    return {"id_token": id_token["sub"], "access_token": access["sub"],
            "userinfo": info.json()["sub"], "introspection": introspected["sub"]}  # fmt: skip


def test_a_user_added_again_under_a_removed_users_name_gets_a_new_sub(
    srv: codeflow.Server, db: Path
) -> None:
    """OIDC Core §2: sub is "A locally unique and never reassigned identifier within the
    Issuer for the End-User". The attack (RFC 9700 §4.15.1): alice is removed and another
    person is added as alice; with the old sub, every relying party would sign the new
    person into the old one's account. The new alice's sub differs from the old one's in
    the ID token, the JWT access token, userinfo and introspection, and again after a
    second removal; the administrator's commands run in other processes, so the choice
    is storage's, shared by every process and kept across restarts."""
    srv.update_client(CONFIDENTIAL, access_token_jwt=True)
    app = WSGIClient(srv.wsgi)
    first = subs_on_the_wire(srv, authorize(WSGIClient(srv.wsgi), app))
    assert set(first.values()) == {USERNAME}, first  # a name never used before is its sub

    remove_and_add_alice_again(db)
    second = subs_on_the_wire(srv, authorize(WSGIClient(srv.wsgi), app))
    assert len(set(second.values())) == 1, second
    assert second["id_token"] != USERNAME

    remove_and_add_alice_again(db)
    third = subs_on_the_wire(srv, authorize(WSGIClient(srv.wsgi), app))
    assert len(set(third.values())) == 1, third
    assert third["id_token"] not in (USERNAME, second["id_token"])


def test_a_user_never_removed_keeps_the_username_as_sub(srv: codeflow.Server, db: Path) -> None:
    """OIDC Core §2: sub identifies the End-User; a deployment whose relying parties know
    users by username keeps working: a user whose name no removed user had is known by
    that name, whatever happens to other users."""
    ok(cli(db, "user", "add", "bob", "--password-stdin", stdin="bob-password\n"))
    remove_and_add_alice_again(db)
    tokens = srv.issue_tokens("bob", CONFIDENTIAL, "openid")
    keys = jwks_keys(WSGIClient(srv.wsgi))
    assert verify_jwt(tokens["id_token"], keys, audience=CONFIDENTIAL, now=srv.clock())[1][
        "sub"
    ] == "bob"
    r = WSGIClient(srv.wsgi).get("/userinfo", headers=bearer(tokens["access_token"]))
    assert r.json()["sub"] == "bob", r.text


def test_server_issue_tokens_carries_the_new_sub_and_refuses_a_removed_name(
    server: codeflow.Server,
) -> None:
    """OIDC Core §2, through the embedding API: Server.remove_user and add_user give the
    new alice another ``User.subject``, which Server.issue_tokens puts in sub; minting for
    the removed name while no user has it raises ValueError rather than reissue the old
    sub."""
    assert server.storage.get_user(USERNAME).subject == USERNAME
    assert server.remove_user(USERNAME)
    with pytest.raises(ValueError, match="removed user"):
        server.issue_tokens(USERNAME, CONFIDENTIAL, "openid")
    alice = server.add_user(USERNAME, PASSWORD)
    assert alice.subject != USERNAME and server.storage.get_user(USERNAME) == alice
    tokens = server.issue_tokens(USERNAME, CONFIDENTIAL, "openid")
    keys = jwks_keys(WSGIClient(server.wsgi))
    claims = verify_jwt(tokens["id_token"], keys, audience=CONFIDENTIAL, now=server.clock())[1]
    assert claims["sub"] == alice.subject
    assert server.set_claims(USERNAME, {"name": "Alice"}).subject == alice.subject


###############################################################################
# Unknown client or wrong secret, one answer: RFC 6749 §5.2 ###################
###############################################################################


AUTHENTICATED_ENDPOINTS = {
    "/token": {"grant_type": "client_credentials"},
    "/introspect": {"token": "some-token"},
    "/revoke": {"token": "some-token"},
}


@pytest.mark.parametrize("path", AUTHENTICATED_ENDPOINTS)
@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post", "no secret"])
def test_an_unknown_client_id_is_answered_as_a_wrong_secret(
    server: codeflow.Server, path: str, method: str
) -> None:
    """RFC 6749 §5.2: invalid_client, "Client authentication failed (e.g., unknown client, no
    client authentication included, or unsupported authentication method)". The answer to an
    unknown client_id (status, error, error_description, WWW-Authenticate) is the answer to
    a confidential client's wrong secret, attempt after attempt from one address, so that
    neither tells which client_ids exist."""

    def attempt(wc: WSGIClient, client_id: str) -> tuple:
        data = dict(AUTHENTICATED_ENDPOINTS[path])
        headers = None
        if method == "client_secret_basic":
            headers = basic(client_id, "not-the-secret")
        else:
            data["client_id"] = client_id
            if method == "client_secret_post":
                data["client_secret"] = "not-the-secret"
        r = wc.post(path, data, headers=headers)
        body = r.json()
        return r.status, body.get("error"), body.get("error_description"), \
            r.headers.get("www-authenticate")  # fmt: skip

    known = WSGIClient(server.wsgi, remote_addr="192.0.2.1")
    unknown = WSGIClient(server.wsgi, remote_addr="192.0.2.2")
    answers = [
        (attempt(known, CONFIDENTIAL), attempt(unknown, "no-such-client"))
        for _ in range(codeflow.SECRET_CHECK_BURST + 2)
    ]
    assert answers[0][0][:2] == (401, "invalid_client")
    for wrong_secret, unknown_client in answers:
        assert unknown_client == wrong_secret
