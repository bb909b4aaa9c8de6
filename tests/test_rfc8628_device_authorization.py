"""The device authorization grant (RFC 8628): the device authorization endpoint (§3.1,
§3.2), the /device page where the user types the code, signs in (with TOTP where enrolled)
and confirms (§3.3, §3.3.1, §5.4), the token endpoint's device_code grant and its
polling errors (§3.4, §3.5), user codes (§6.1) and their guessing throttle (§5.1).

In-process through the WSGI app with a clock the tests move; the browser is
tests/wsgi_client.py, the device a plain form POST.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import jwt
import pyotp
import pytest
from codeflow_storage.sqlite import SQLiteStorage
from conftest import (
    CONFIDENTIAL,
    ISSUER,
    PASSWORD,
    SECRET,
    USERNAME,
    Clock,
    form_fields,
    make_server,
)
from test_cli_manage import cli
from wsgi_client import Response, WSGIClient, basic

import codeflow

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
TV = "tv-app"  # a public client, as a device or CLI is (RFC 8628 §3.1)
ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"


@pytest.fixture
def server(clock: Clock) -> codeflow.Server:
    srv = make_server(clock)
    srv.add_client(TV, name="Living Room TV", grant_types=[DEVICE_GRANT, "refresh_token"],
                   scopes=["openid", "profile", "offline_access"])  # fmt: skip
    srv.update_client(CONFIDENTIAL, grant_types=["authorization_code", "refresh_token",
                                                 DEVICE_GRANT])  # fmt: skip
    return srv


@pytest.fixture
def device(server: codeflow.Server) -> WSGIClient:
    """The device: only back-channel requests, no cookies of a browser."""
    return WSGIClient(server.wsgi, remote_addr="192.0.2.10")


@pytest.fixture
def browser(server: codeflow.Server) -> WSGIClient:
    return WSGIClient(server.wsgi, remote_addr="198.51.100.7")


def start(device: WSGIClient, client_id: str = TV, **params: str) -> dict:
    r = device.post("/device_authorization", data={"client_id": client_id, **params})
    assert r.status == 200, r.text
    return r.json()


def poll(device: WSGIClient, device_code: str, client_id: str = TV) -> Response:
    return device.post("/token", data={"grant_type": DEVICE_GRANT, "device_code": device_code,
                                       "client_id": client_id})  # fmt: skip


def sign_in(browser: WSGIClient, page: Response, username: str = USERNAME,
            password: str = PASSWORD) -> Response:  # fmt: skip
    """Fill in the login page and follow the redirect back to /device."""
    assert 'action="login"' in page.text, page.text
    data = {**form_fields(page.text), "username": username, "password": password}
    r = browser.post("/login", data=data)
    assert r.status == 303, r.text
    assert r.location.startswith(ISSUER + "/device?"), r.location
    return browser.get(r.location)


def decide(browser: WSGIClient, page: Response, decision: str = "approve") -> Response:
    assert 'action="device"' in page.text and 'value="approve"' in page.text, page.text
    return browser.post("/device", data={**form_fields(page.text), "decision": decision})


def approve(browser: WSGIClient, user_code: str, decision: str = "approve") -> Response:
    page = browser.get("/device", params={"user_code": user_code})
    if 'action="login"' in page.text:
        page = sign_in(browser, page)
    return decide(browser, page, decision)


# -- §3.1, §3.2: the device authorization endpoint ------------------------------------


def test_device_authorization_response_has_every_member(device):
    """RFC 8628 §3.2: device_code, user_code, verification_uri (REQUIRED),
    verification_uri_complete, expires_in (REQUIRED), interval; no-store like a token
    response."""
    r = device.post("/device_authorization", data={"client_id": TV, "scope": "openid profile"})
    assert r.status == 200
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert set(body) == {"device_code", "user_code", "verification_uri",
                         "verification_uri_complete", "expires_in", "interval"}  # fmt: skip
    assert body["verification_uri"] == ISSUER + "/device"
    assert body["verification_uri_complete"] == f"{ISSUER}/device?user_code={body['user_code']}"
    assert body["expires_in"] == 600 and body["interval"] == 5
    assert len(body["device_code"]) >= 43


def test_user_codes_use_the_base20_alphabet_in_two_halves(device):
    """RFC 8628 §6.1: "BCDFGHJKLMNPQRSTVWXZ", 8 characters, shown with a dash
    (XXXX-XXXX); different each time."""
    codes = [start(device)["user_code"] for _ in range(20)]
    for code in codes:
        assert re.fullmatch(rf"[{ALPHABET}]{{4}}-[{ALPHABET}]{{4}}", code), code
    assert len(set(codes)) == 20


def test_codes_are_stored_only_as_hashes(server, device):
    """DESIGN.md: "tokens and codes stored only as hashes": neither the device code nor
    the user code is in storage, their SHA-256 is."""
    body = start(device)
    code = body["user_code"].replace("-", "")
    found = server.storage.get_device_authorization(codeflow.token_hash(code))
    assert found is not None
    assert found.device_code_hash == codeflow.token_hash(body["device_code"])
    assert body["device_code"] not in repr(found) and code not in repr(found)


def test_a_confidential_client_authenticates(device):
    """RFC 8628 §3.1: "the client authentication requirements of Section 3.2.1 of
    [RFC6749] apply": a confidential client with a wrong or missing secret is refused
    (401 invalid_client); with its secret it gets codes."""
    r = device.post("/device_authorization", data={"client_id": CONFIDENTIAL})
    assert r.status == 401 and r.json()["error"] == "invalid_client"
    r = device.post("/device_authorization", data={}, headers=basic(CONFIDENTIAL, "wrong"))
    assert r.status == 401 and r.json()["error"] == "invalid_client"
    r = device.post("/device_authorization", data={}, headers=basic(CONFIDENTIAL, SECRET))
    assert r.status == 200 and "device_code" in r.json()


def test_a_client_without_the_grant_type_is_refused(device):
    """RFC 8628 §3.1 with RFC 6749 §5.2 unauthorized_client: a client whose grant_types
    lack the device grant may not start one."""
    r = device.post("/device_authorization", data={"client_id": "public-app"})
    assert r.status == 400 and r.json()["error"] == "unauthorized_client"


def test_a_scope_the_client_may_not_ask_for_is_refused(device):
    """RFC 8628 §3.1 scope, RFC 6749 §5.2 invalid_scope."""
    r = device.post("/device_authorization", data={"client_id": TV, "scope": "openid email"})
    assert r.status == 400 and r.json()["error"] == "invalid_scope"


def test_unknown_client_is_invalid_client(device):
    r = device.post("/device_authorization", data={"client_id": "nobody"})
    assert r.status == 401 and r.json()["error"] == "invalid_client"


# -- §3.3: the user's side -----------------------------------------------------------


def test_the_page_without_a_code_asks_for_it(browser):
    """RFC 8628 §3.3: the verification URI shows where to type the code."""
    r = browser.get("/device")
    assert r.status == 200
    assert '<input id="user_code" name="user_code"' in r.text
    assert '<form method="get" action="device">' in r.text


def test_full_flow_pending_then_tokens_once(server, clock, device, browser):
    """RFC 8628 §3.3-§3.5: authorization_pending until the user signs in and approves on
    the page (which names the client and the scopes and shows the code), then the tokens
    (§3.5: "the authorization server issues an access token ... as described in Section
    5.1 of [RFC6749]"), once."""
    body = start(device, scope="openid profile offline_access")
    r = poll(device, body["device_code"])
    assert r.status == 400 and r.json()["error"] == "authorization_pending"

    page = browser.get("/device", params={"user_code": body["user_code"]})
    assert 'action="login"' in page.text and "Living Room TV" in page.text
    page = sign_in(browser, page)
    assert "Living Room TV" in page.text and body["user_code"] in page.text
    assert "See your name and basic profile" in page.text
    clock.advance(5)
    assert poll(device, body["device_code"]).json()["error"] == "authorization_pending"
    done = decide(browser, page)
    assert done.status == 200 and "Device connected" in done.text

    clock.advance(5)
    r = poll(device, body["device_code"])
    assert r.status == 200, r.text
    tokens = r.json()
    assert tokens["token_type"] == "Bearer" and tokens["scope"] == "openid profile offline_access"
    assert r.headers["cache-control"] == "no-store"
    assert "refresh_token" in tokens
    claims = jwt.decode(tokens["id_token"], options={"verify_signature": False})
    assert claims["sub"] == USERNAME and claims["aud"] == TV and claims["amr"] == ["pwd"]
    assert "nonce" not in claims and "sid" not in claims

    clock.advance(5)
    again = poll(device, body["device_code"])
    assert again.status == 400 and again.json()["error"] == "invalid_grant"


def test_the_tokens_work_at_userinfo_and_refresh(server, clock, device, browser):
    """RFC 8628 §3.5: the tokens are those of RFC 6749 §5.1: userinfo answers the access
    token, and the refresh token refreshes (RFC 6749 §6) as in the code flow."""
    body = start(device, scope="openid profile offline_access")
    approve(browser, body["user_code"])
    tokens = poll(device, body["device_code"]).json()
    r = device.get("/userinfo", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert r.status == 200 and r.json()["sub"] == USERNAME
    r = device.post("/token", data={"grant_type": "refresh_token", "client_id": TV,
                                    "refresh_token": tokens["refresh_token"]})  # fmt: skip
    assert r.status == 200 and r.json()["refresh_token"] != tokens["refresh_token"]


def test_without_offline_access_an_openid_grant_has_no_refresh_token(device, browser):
    """OIDC Core §11 as in the code flow: a refresh token only with offline_access."""
    body = start(device, scope="openid profile")
    approve(browser, body["user_code"])
    tokens = poll(device, body["device_code"]).json()
    assert "refresh_token" not in tokens and "id_token" in tokens


def test_a_nonce_sent_is_echoed_in_the_id_token(device, browser):
    """No OpenID specification defines a nonce for this grant (our choice: a client that
    sends one in the device authorization request finds it in the ID token)."""
    body = start(device, scope="openid", nonce="n-123")
    approve(browser, body["user_code"])
    tokens = poll(device, body["device_code"]).json()
    claims = jwt.decode(tokens["id_token"], options={"verify_signature": False})
    assert claims["nonce"] == "n-123"


def test_deny_answers_access_denied(device, browser):
    """RFC 8628 §3.5 access_denied: "The authorization request was denied"."""
    body = start(device)
    r = approve(browser, body["user_code"], "deny")
    assert r.status == 200 and "Request denied" in r.text
    r = poll(device, body["device_code"])
    assert r.status == 400 and r.json()["error"] == "access_denied"


def test_expired_device_code_answers_expired_token(clock, device, browser):
    """RFC 8628 §3.5 expired_token: "The device_code has expired"; the page no longer takes
    its user code either."""
    body = start(device)
    clock.advance(601)
    r = poll(device, body["device_code"])
    assert r.status == 400 and r.json()["error"] == "expired_token"
    page = browser.get("/device", params={"user_code": body["user_code"]})
    assert "not right, or it has expired" in page.text


def test_polling_too_fast_slows_down_by_five_seconds_each_time(clock, device):
    """RFC 8628 §3.5 slow_down: "the interval MUST be increased by 5 seconds for this and
    all subsequent requests", remembered per device code."""
    body = start(device)
    assert poll(device, body["device_code"]).json()["error"] == "authorization_pending"
    clock.advance(1)
    r = poll(device, body["device_code"])
    assert r.status == 400 and r.json()["error"] == "slow_down"
    clock.advance(6)  # under the new interval of 10 s
    assert poll(device, body["device_code"]).json()["error"] == "slow_down"
    clock.advance(14)  # under 15
    assert poll(device, body["device_code"]).json()["error"] == "slow_down"
    clock.advance(20)
    assert poll(device, body["device_code"]).json()["error"] == "authorization_pending"
    other = start(device)  # another device code has its own interval
    assert poll(device, other["device_code"]).json()["error"] == "authorization_pending"
    clock.advance(5)
    assert poll(device, other["device_code"]).json()["error"] == "authorization_pending"


def test_another_clients_device_code_is_invalid_grant(server, device, browser):
    """RFC 6749 §5.2 invalid_grant, as for a code issued to another client (§4.1.3)."""
    body = start(device)
    approve(browser, body["user_code"])
    data = {"grant_type": DEVICE_GRANT, "device_code": body["device_code"]}
    r = device.post("/token", data=data, headers=basic(CONFIDENTIAL, SECRET))
    assert r.status == 400 and r.json()["error"] == "invalid_grant"
    assert poll(device, body["device_code"]).status == 200  # still the right client's


def test_device_grant_needs_the_grant_type_and_a_device_code(device):
    """RFC 6749 §5.2: a client not registered for the grant is unauthorized_client; a
    request without device_code is invalid_request."""
    r = device.post("/token", data={"grant_type": DEVICE_GRANT, "device_code": "x",
                                    "client_id": "public-app"})  # fmt: skip
    assert r.status == 400 and r.json()["error"] == "unauthorized_client"
    r = device.post("/token", data={"grant_type": DEVICE_GRANT, "client_id": TV})
    assert r.status == 400 and r.json()["error"] == "invalid_request"
    r = poll(device, "not-a-device-code")
    assert r.status == 400 and r.json()["error"] == "invalid_grant"


@pytest.mark.parametrize("typed", ["{}", "{lower}", "{bare}", " {spaced} ", "{lower_bare}"])
def test_user_code_input_is_normalised(device, browser, typed):
    """RFC 8628 §6.1: the code "MAY be case-insensitive" and "dashes and other
    punctuation" ignored: lower case, no dash, spaces all find the request."""
    code = start(device)["user_code"]
    typed = typed.format(code, lower=code.lower(), bare=code.replace("-", ""),
                         spaced=f"{code[:4]} {code[5:]}",
                         lower_bare=code.replace("-", "").lower())  # fmt: skip
    page = browser.get("/device", params={"user_code": typed})
    assert 'action="login"' in page.text and "Living Room TV" in page.text


def test_verification_uri_complete_still_needs_an_explicit_confirmation(device, browser):
    """RFC 8628 §3.3.1: with the code in the URI, "the authorization server ... SHOULD
    display the user code" and the user confirms: a signed-in user following the link
    sees the confirmation page, and nothing is approved until the form is sent."""
    body = start(device)
    approve(browser, start(device)["user_code"])  # signs the browser in
    page = browser.get(body["verification_uri_complete"])
    assert page.status == 200 and 'value="approve"' in page.text and body["user_code"] in page.text
    assert poll(device, body["device_code"]).json()["error"] == "authorization_pending"


def test_a_user_code_is_used_once(device, browser):
    """RFC 8628 §6.1: user codes "SHOULD be single use": once approved, the code is no
    longer accepted, and a second decision on the same form is refused."""
    body = start(device)
    page = browser.get("/device", params={"user_code": body["user_code"]})
    page = sign_in(browser, page)
    first = decide(browser, page)
    assert "Device connected" in first.text
    second = decide(browser, page, "deny")
    assert second.status == 400 and "expired or was used" in second.text
    again = browser.get("/device", params={"user_code": body["user_code"]})
    assert "not right, or it has expired" in again.text
    assert poll(device, body["device_code"]).status == 200


def test_totp_user_gives_the_code_and_the_id_token_says_so(server, clock, device, browser):
    """RFC 6238 on the device page, as at the authorization endpoint's login: a user with a
    second factor is asked for the code; the tokens' ID token carries amr otp and mfa
    (RFC 8176) and the multi-factor acr."""
    secret = pyotp.random_base32()
    server.set_totp(USERNAME, secret)
    body = start(device, scope="openid")
    page = browser.get("/device", params={"user_code": body["user_code"]})
    data = {**form_fields(page.text), "username": USERNAME, "password": PASSWORD}
    otp = browser.post("/login", data=data)
    assert otp.status == 200 and 'name="otp"' in otp.text and "Living Room TV" in otp.text
    code = pyotp.TOTP(secret).at(clock())
    r = browser.post("/login", data={**form_fields(otp.text), "otp": code})
    assert r.status == 303 and r.location.startswith(ISSUER + "/device?")
    decide(browser, browser.get(r.location))
    tokens = poll(device, body["device_code"]).json()
    claims = jwt.decode(tokens["id_token"], options={"verify_signature": False})
    assert claims["amr"] == ["pwd", "otp", "mfa"] and claims["acr"] == codeflow.ACR_MFA


def test_the_decision_form_is_protected_against_csrf(device, browser, server):
    """RFC 9700 §4.4: the decision is a form with a CSRF token bound to the browser; a
    cross-site POST (Sec-Fetch-Site: cross-site) and a form without the token are refused,
    and the request stays pending."""
    body = start(device)
    page = sign_in(browser, browser.get("/device", params={"user_code": body["user_code"]}))
    fields = form_fields(page.text)
    r = browser.post("/device", data={**fields, "decision": "approve"},
                     headers={"Sec-Fetch-Site": "cross-site"})  # fmt: skip
    assert r.status == 403
    r = browser.post("/device", data={"request": fields["request"], "decision": "approve"})
    assert r.status == 400 and "expired" in r.text
    other = WSGIClient(server.wsgi)  # another browser, with the form's fields
    r = other.post("/device", data={**fields, "decision": "approve"})
    assert r.status == 400
    assert poll(device, body["device_code"]).json()["error"] == "authorization_pending"


def test_the_device_form_cannot_be_used_as_a_consent(device, browser):
    """The signed request of a device form is no authorization request: posted to
    /consent it issues no code."""
    body = start(device)
    page = sign_in(browser, browser.get("/device", params={"user_code": body["user_code"]}))
    r = browser.post("/consent", data={**form_fields(page.text), "decision": "approve"})
    assert r.status == 400 and "location" not in r.headers


def test_not_you_signs_in_again(device, browser):
    """OIDC Core §3.1.2.1 prompt=login, as on the consent page: "Not you?" asks for a
    sign-in again before the confirmation."""
    body = start(device)
    page = sign_in(browser, browser.get("/device", params={"user_code": body["user_code"]}))
    link = re.search(r'<a href="([^"]+)">Not you\?', page.text).group(1)
    again = browser.get(html.unescape(link))
    assert 'action="login"' in again.text


# -- §5.1: guessing ------------------------------------------------------------------


def test_wrong_codes_are_throttled_per_address(server, device):
    """RFC 8628 §5.1: "the authorization server SHOULD rate-limit user code attempts":
    after 5 wrong codes from one address, that address waits (429 with Retry-After),
    even with the right code, while another address is not held."""
    body = start(device)
    guesser = WSGIClient(server.wsgi, remote_addr="203.0.113.5")
    for _ in range(5):
        r = guesser.get("/device", params={"user_code": "BBBB-BBBB"})
        assert r.status == 200 and "not right" in r.text
    r = guesser.get("/device", params={"user_code": body["user_code"]})
    assert r.status == 429 and int(r.headers["retry-after"]) > 0
    assert "Too many wrong codes" in r.text
    other = WSGIClient(server.wsgi, remote_addr="198.51.100.99")
    r = other.get("/device", params={"user_code": body["user_code"]})
    assert r.status == 200 and 'action="login"' in r.text


def test_wrong_codes_from_many_addresses_are_throttled_globally(server, device):
    """RFC 8628 §5.1 against guessing from many addresses: past 10 wrong codes from
    anywhere, a new address waits too; a right code does not reset the count (anyone can
    get codes of their own to interleave)."""
    body = start(device)
    for i in range(11):
        guesser = WSGIClient(server.wsgi, remote_addr=f"203.0.113.{i + 1}")
        guesser.get("/device", params={"user_code": "BBBB-BBBB"})
        if i == 5:  # a right code in between
            assert 'action="login"' in guesser.get("/device", params={
                "user_code": start(device)["user_code"]}).text  # fmt: skip
    fresh = WSGIClient(server.wsgi, remote_addr="203.0.113.200")
    r = fresh.get("/device", params={"user_code": body["user_code"]})
    assert r.status == 429 and int(r.headers["retry-after"]) > 0


def test_malformed_codes_get_a_page_not_an_error(browser):
    """DESIGN.md: bad input gets a clear 4xx or page, never a 5xx: characters outside the
    alphabet, too long, unicode."""
    for typed in ["AEIOU-1234", "B" * 200, "ÄÖÜ", "----"]:
        r = browser.get("/device", params={"user_code": typed})
        assert r.status in (200, 400, 429), (typed, r.status)
        assert "Connect a device" in r.text


def test_removing_the_client_ends_its_device_requests(server, device, browser):
    """DESIGN.md: removing a client removes its grants: a pending device code of it is gone."""
    body = start(device)
    server.remove_client(TV)
    server.add_client(TV, grant_types=[DEVICE_GRANT])
    r = poll(device, body["device_code"])
    assert r.status == 400 and r.json()["error"] == "invalid_grant"


def test_cli_registers_a_device_client_as_the_readme_says(tmp_path: Path) -> None:
    """README "Sign in on a device without a browser": `client add my-cli --public
    --grant-type urn:ietf:params:oauth:grant-type:device_code --grant-type refresh_token`
    needs no redirect URI, and the client may then start the grant."""
    db = f"sqlite:///{tmp_path / 'codeflow.db'}"
    added = cli("client", "add", "my-cli", "--public", "--name", "My CLI", "--grant-type",
                DEVICE_GRANT, "--grant-type", "refresh_token", "--storage", db)  # fmt: skip
    assert added.returncode == 0, added.stderr
    with SQLiteStorage(tmp_path / "codeflow.db") as store:
        srv = codeflow.Server(issuer=ISSUER, storage=store)
        r = WSGIClient(srv.wsgi).post("/device_authorization", data={"client_id": "my-cli"})
        assert r.status == 200 and r.json()["user_code"]


def test_the_transcript_redacts_device_and_user_codes(clock) -> None:
    """The fake IdP's transcript (README "The transcript") keeps no secret: the device code
    and the user code (RFC 8628 §3.2) are redacted in requests, answers and redirects."""
    srv = make_server(clock, transcript=True)
    srv.add_client(TV, grant_types=[DEVICE_GRANT], scopes=["openid"])
    device, browser = WSGIClient(srv.wsgi), WSGIClient(srv.wsgi)
    body = start(device)
    approve(browser, body["user_code"])
    assert poll(device, body["device_code"]).status == 200
    started = srv.transcript.find(path="/device_authorization")[0]
    assert started.body["device_code"] == started.body["user_code"] == "[redacted]"
    assert started.body["verification_uri_complete"] == "[redacted]"
    shown = srv.transcript.find(path="/device")[0]
    assert shown.params["user_code"] == "[redacted]"
    token = srv.transcript.find(path="/token")[-1]
    assert token.params["device_code"] == "[redacted]"
    for exchange in srv.transcript:
        assert body["device_code"] not in str(exchange.to_json())


def test_resource_indicators_in_the_device_flow(server, device, browser) -> None:
    """RFC 8707 §2.1 resource in the device authorization request, as in an authorization
    request: the confirmation page names the API, and the access token's audience is that
    resource (RFC 9068 §3 aud), with the resource's scopes; an unknown one is
    invalid_target."""
    api = "https://api.example/v1"
    server.add_resource(api, scopes=["read"], name="Example API")
    r = device.post("/device_authorization", data=[("client_id", TV), ("scope", "openid read"),
                                                   ("resource", api)])  # fmt: skip
    assert r.status == 200, r.text
    body = r.json()
    page = sign_in(browser, browser.get("/device", params={"user_code": body["user_code"]}))
    assert "Example API" in page.text and api in page.text
    decide(browser, page)
    tokens = poll(device, body["device_code"]).json()
    claims = jwt.decode(tokens["access_token"], options={"verify_signature": False})
    assert claims["aud"] == api and "read" in claims["scope"].split()
    unknown = {"client_id": TV, "resource": "https://unknown.example/"}
    r = device.post("/device_authorization", data=unknown)
    assert r.status == 400 and r.json()["error"] == "invalid_target"


def test_a_page_elsewhere_cannot_spend_a_browsers_code_checks(server, device) -> None:
    """RFC 8628 §5.1 with Fetch Metadata: a user code reaches the throttled check only in a
    top-level page load (Sec-Fetch-Dest: document). An image or frame that another site
    points at /device?user_code=... (in its visitors' browsers) is answered with the plain
    entry page, unchecked, so it can neither guess nor spend the throttle's budget."""
    body = start(device)
    visitor = WSGIClient(server.wsgi, remote_addr="198.51.100.50")
    for dest in ("image", "iframe", "script", "empty"):
        headers = {"Sec-Fetch-Dest": dest, "Sec-Fetch-Site": "cross-site"}
        for _ in range(3):
            r = visitor.get("/device", params={"user_code": "BBBB-BBBB"}, headers=headers)
            assert r.status == 200 and "not right" not in r.text and 'name="user_code"' in r.text
    r = visitor.get("/device", params={"user_code": body["user_code"]},
                    headers={"Sec-Fetch-Dest": "iframe"})  # fmt: skip
    assert 'action="login"' not in r.text
    link = {"Sec-Fetch-Dest": "document", "Sec-Fetch-Site": "cross-site"}
    r = visitor.get("/device", params={"user_code": body["user_code"]}, headers=link)
    assert r.status == 200 and 'action="login"' in r.text  # a link from elsewhere works
