"""An adversarial review of issues 14, 15, 18 and 19 (logout delivery, resources, token
exchange, self-registered clients, device grant, PAR, DPoP, private_key_jwt, the account
area and passkeys): each test here is an attack that worked before its fix, named by the
specification section or the attack it reproduces. In-process through the WSGI app
(wsgiref.validate), with a software WebAuthn authenticator where a passkey is needed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

import pytest
from conftest import (
    CONFIDENTIAL,
    PASSWORD,
    REDIRECT,
    SECRET,
    USERNAME,
    Clock,
    form_fields,
    form_of,
    make_server,
    new_flow,
)
from wsgi_client import Response, WSGIClient, basic

import codeflow


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def signed_in(server: codeflow.Server, username: str = USERNAME,
              password: str = PASSWORD) -> WSGIClient:  # fmt: skip
    """A browser signed in to the account area."""
    browser = WSGIClient(server.wsgi)
    r = browser.get("/account/login")
    fields = {**form_of(r.text, "/account/login"), "username": username, "password": password}
    r = browser.post("/account/login", data=fields)
    assert r.status == 303 and r.location.endswith("/account"), r.text
    return browser


# -- Passkeys: WebAuthn Level 2 --------------------------------------------------------


def registration_credential(server: codeflow.Server, page: str, credential_id: bytes) -> str:
    """What a software authenticator answers to the account page's passkey options: a
    "none" attestation (WebAuthn §8.7) of a fresh P-256 key under ``credential_id``, which
    such an authenticator chooses freely."""
    cbor2 = pytest.importorskip("cbor2")
    from cryptography.hazmat.primitives.asymmetric import ec

    options = json.loads(re.search(r'data-passkey="create"\s+data-options="([^"]*)"', page)
                         .group(1).replace("&quot;", '"'))  # fmt: skip
    numbers = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    cose = cbor2.dumps({1: 2, 3: -7, -1: 1, -2: numbers.x.to_bytes(32, "big"),
                        -3: numbers.y.to_bytes(32, "big")})  # fmt: skip
    rp_hash = hashlib.sha256(codeflow.rp_id(server).encode()).digest()
    auth_data = (rp_hash + bytes([0x45]) + (0).to_bytes(4, "big") + bytes(16)
                 + len(credential_id).to_bytes(2, "big") + credential_id + cose)  # fmt: skip
    client_data = json.dumps({"type": "webauthn.create", "challenge": options["challenge"],
                              "origin": codeflow.web_origin(server.issuer)}).encode()  # fmt: skip
    attestation = cbor2.dumps({"fmt": "none", "attStmt": {}, "authData": auth_data})
    return json.dumps({
        "id": b64url(credential_id), "rawId": b64url(credential_id), "type": "public-key",
        "response": {"clientDataJSON": b64url(client_data),
                     "attestationObject": b64url(attestation), "transports": ["internal"]},
        "clientExtensionResults": {},
    })  # fmt: skip


def add_passkey(server: codeflow.Server, browser: WSGIClient, credential_id: bytes):
    page = browser.get("/account").text
    credential = registration_credential(server, page, credential_id)
    return browser.post("/account/passkeys", data={
        **form_of(page, "/account/passkeys"), "step": "create", "credential": credential,
        "name": "Laptop", "passwordless": "yes"})  # fmt: skip


def test_a_passkey_cannot_take_over_another_users_credential_id() -> None:
    """WebAuthn Level 2 §7.1 step 22: "Check that the credentialId is not yet registered to
    any other user". A software authenticator chooses its credential ids, so a user who
    learnt another's (they are listed in every second-factor sign-in's options) registered
    one of the same id, which replaced the victim's passkey with one of the attacker's key
    under the attacker's name: the victim's passkey no longer signed in."""
    pytest.importorskip("webauthn")
    server = make_server(Clock(), passkeys=True)
    server.add_user("mallory", "mallory's long password")
    victim_id = b"victim-credential-0001"
    r = add_passkey(server, signed_in(server), victim_id)
    assert r.status == 303, r.text
    mine = server.storage.get_passkey(b64url(victim_id))
    assert mine is not None and mine.username == USERNAME

    r = add_passkey(server, signed_in(server, "mallory", "mallory's long password"), victim_id)
    assert r.status == 400 and "already registered" in r.text, r.text
    assert server.storage.get_passkey(b64url(victim_id)) == mine
    assert server.storage.list_passkeys("mallory") == []


@pytest.mark.parametrize("transports", [None, 5, {"usb": True}])
def test_a_registration_with_odd_transports_is_no_5xx(transports: object) -> None:
    """DESIGN "nothing a client sends makes a 5xx": WebAuthn §5.2.1.1 transports is a list
    of strings; a credential whose ``transports`` is null, a number or an object (which
    verify_registration_response lets through) was a 500. It is added without hints."""
    pytest.importorskip("webauthn")
    server = make_server(Clock(), passkeys=True)
    browser = signed_in(server)
    page = browser.get("/account").text
    credential = json.loads(registration_credential(server, page, b"odd-transports"))
    credential["response"]["transports"] = transports
    r = browser.post("/account/passkeys", data={
        **form_of(page, "/account/passkeys"), "step": "create",
        "credential": json.dumps(credential), "name": "Key"})  # fmt: skip
    assert r.status == 303, r.errors
    (passkey,) = server.storage.list_passkeys(USERNAME)
    assert passkey.transports == ()


# -- Self-registered clients: RFC 7591 -------------------------------------------------


def test_a_self_registered_client_cannot_introspect_other_clients_tokens() -> None:
    """RFC 7662 §4: "the authorization server SHOULD require protected resources to be
    specifically authorized to call the introspection endpoint". With open registration
    (RFC 7591), anyone could register a confidential client and then read, for any access
    token they held or found, whose it is (sub, username), its scope and client: every
    confidential client was treated as a resource server the operator trusts. A client
    that registered itself now sees only its own tokens as active."""
    server = make_server(Clock(), registration="open")
    wc = WSGIClient(server.wsgi)
    r = wc.request("POST", "/register", body=json.dumps({
        "redirect_uris": ["https://app.example/cb"]}).encode(),
        headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status == 201, r.text
    mine = r.json()
    auth = basic(mine["client_id"], mine["client_secret"])
    victims = server.issue_tokens(USERNAME, CONFIDENTIAL, "openid profile")["access_token"]
    r = wc.post("/introspect", {"token": victims}, headers=auth)
    assert r.status == 200 and r.json() == {"active": False}, r.text
    own = server.issue_tokens(USERNAME, mine["client_id"], "openid")["access_token"]
    r = wc.post("/introspect", {"token": own}, headers=auth)
    assert r.json()["active"] is True and r.json()["client_id"] == mine["client_id"]
    # The operator's own confidential clients keep introspecting as before.
    r = wc.post("/introspect", {"token": victims}, headers=basic(CONFIDENTIAL, SECRET))
    assert r.json()["active"] is True and r.json()["username"] == USERNAME


# -- Pushed authorization requests: RFC 9126 ----------------------------------------------


def test_a_pushed_request_keeps_no_client_assertion() -> None:
    """RFC 9126 §2.1: the client authenticates the push "as ... for token endpoint
    requests"; its credentials are not part of the authorization request. A
    private_key_jwt client's client_assertion was kept with the pushed parameters (only
    client_secret was dropped): stored, then carried, readable, through the browser in
    the login form and the resume URI, while the assertion is good for up to an hour."""
    from test_rfc7523_private_key_jwt import KEYED, ClientKeys

    clock = Clock()
    server = make_server(clock)
    keys = ClientKeys("ES256")
    server.add_client(KEYED, jwks=keys.jwks, redirect_uris=[REDIRECT])
    flow = new_flow(KEYED)
    wc = WSGIClient(server.wsgi)
    r = wc.post("/par", {**flow.params, "client_assertion_type": codeflow.CLIENT_ASSERTION_TYPE,
                         "client_assertion": keys.sign(now=clock())})  # fmt: skip
    assert r.status == 201, r.text
    request_uri = r.json()["request_uri"]
    r = wc.get("/authorize", params={"client_id": KEYED, "request_uri": request_uri})
    assert r.status == 200 and 'action="login"' in r.text
    signed = form_fields(r.text)["request"]
    shown = json.dumps(server.signer.request_params(signed, "pushed"))
    assert "client_assertion" not in shown and KEYED in shown


# -- Back-Channel Logout 1.0 ----------------------------------------------------------------


def test_a_backchannel_logout_follows_no_redirect() -> None:
    """Back-Channel Logout 1.0 §2.5: the Logout Token is POSTed "to the registered
    back-channel logout URI", and §2.8 the RP answers it (200, or 400). urllib followed a
    3xx: a relying party (or whoever took over its host) could turn the OP's delivery
    into a GET of any address the OP reaches (its own admin page, a cloud metadata
    service: server-side request forgery), and a redirect to a 200 counted as delivered.
    A 3xx is now a failed delivery, logged, and final (like a 4xx)."""
    import queue
    import time

    from sdk_support import serving
    from test_oidc_backchannel_frontchannel_logout import BACK_RP, BACK_SECRET, sign_in
    from test_oidc_backchannel_frontchannel_logout import make_server as logout_server

    paths: queue.Queue[str] = queue.Queue()

    def redirecting(environ, start_response):
        paths.put(environ["PATH_INFO"])
        start_response("302 Found", [("Location", "/internal-admin")])
        return [b""]

    with serving(redirecting) as url:
        srv = logout_server(Clock(), url + "/bc")
        browser = WSGIClient(srv.wsgi)
        tokens = sign_in(browser, BACK_RP, BACK_SECRET)
        assert browser.get("/logout", params={"id_token_hint": tokens["id_token"]}).status == 200
        assert paths.get(timeout=10) == "/bc"
        time.sleep(1.5)  # past the first retry delay
    assert paths.empty(), paths.get()


MACHINE = {"token_endpoint_auth_method": "client_secret_basic",
           "grant_types": ["client_credentials"], "response_types": []}  # fmt: skip


def test_open_registration_gives_no_tokens_without_a_user() -> None:
    """RFC 6749 §4.4 client_credentials: the client acts "on its own behalf", on
    "protected resources under its control" or arranged with the authorization server
    beforehand (§4.4: "previously arranged"). Under open registration (RFC 7591) anyone
    registered a confidential client with client_credentials and then minted, with no
    user and no consent, access tokens whose aud was any registered resource (RFC 8707):
    an API that checked aud (RFC 9068 §4) and no particular scope let them in. Open
    registration now refuses client_credentials; registration with an initial access
    token, which the operator hands out, still allows it."""
    server = make_server(Clock(), registration="open")
    server.add_resource("https://api.example/", scopes=["api:read"])
    wc = WSGIClient(server.wsgi)
    r = wc.request("POST", "/register", body=json.dumps(MACHINE).encode(),
                   headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status == 400 and r.json()["error"] == "invalid_client_metadata", r.text
    assert "client_credentials" in r.json()["error_description"]

    vouched = make_server(Clock(), registration="token", registration_tokens=["operator-t"])
    vouched.add_resource("https://api.example/", scopes=["api:read"])
    wc = WSGIClient(vouched.wsgi)
    r = wc.request("POST", "/register", body=json.dumps(MACHINE).encode(), headers={
        "Content-Type": "application/json", "Authorization": "Bearer operator-t"})  # fmt: skip
    assert r.status == 201, r.text
    auth = basic(r.json()["client_id"], r.json()["client_secret"])
    r = wc.post("/token", {"grant_type": "client_credentials"}, headers=auth)
    assert r.status == 200, r.text


def test_an_update_under_open_registration_cannot_add_client_credentials() -> None:
    """RFC 7592 §2.2: an update is checked as a registration is; a client registered for
    the code flow could add client_credentials to its grant_types afterwards (and so
    mint tokens no user granted), also after the operator turned to the token policy."""
    server = make_server(Clock(), registration="open")
    wc = WSGIClient(server.wsgi)
    web = {"redirect_uris": ["https://app.example/cb"],
           "token_endpoint_auth_method": "client_secret_basic"}  # fmt: skip
    r = wc.request("POST", "/register", body=json.dumps(web).encode(),
                   headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status == 201, r.text
    body = r.json()
    update = {**web, "client_id": body["client_id"],
              "grant_types": ["authorization_code", "client_credentials"]}  # fmt: skip
    headers = {"Content-Type": "application/json",
               "Authorization": "Bearer " + body["registration_access_token"]}  # fmt: skip
    r = wc.request("PUT", f"/register/{body['client_id']}", body=json.dumps(update).encode(),
                   headers=headers)  # fmt: skip
    assert r.status == 400 and r.json()["error"] == "invalid_client_metadata", r.text
    assert server.storage.get_client(body["client_id"]).grant_types == ("authorization_code",)
    # Nor once the operator turned to the token policy: the update is the client's word.
    server.registration = "token"
    r = wc.request("PUT", f"/register/{body['client_id']}", body=json.dumps(update).encode(),
                   headers=headers)  # fmt: skip
    assert r.status == 400 and r.json()["error"] == "invalid_client_metadata", r.text


# -- codeflow_sdk: DPoP-bound tokens at a resource server (RFC 9449) ---------------------


def test_the_sdk_refuses_a_dpop_token_whose_introspection_names_no_key() -> None:
    """RFC 9449 §6.2: introspection of a DPoP-bound token answers token_type "DPoP" and
    cnf.jkt, the key a resource server must see a proof of (§7.1). A provider answering
    "DPoP" without cnf (an older or other provider, or a proxy that drops members) made
    BearerValidator take the token as a plain Bearer token: a stolen bound token passed
    without any proof. Without the key it cannot check, the token is refused."""
    from codeflow_sdk import BearerValidator, InvalidTokenError
    from sdk_support import serving

    def provider(environ, start_response):
        base = f"http://{environ['HTTP_HOST']}"
        if environ["PATH_INFO"].startswith("/.well-known/"):
            body = {"issuer": base, "introspection_endpoint": base + "/introspect",
                    "jwks_uri": base + "/jwks"}  # fmt: skip
        else:
            body = {"active": True, "token_type": "DPoP", "scope": "api:read", "sub": "alice",
                    "client_id": "app", "iss": base, "exp": 4_000_000_000}  # fmt: skip
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]

    with serving(provider) as url:
        validator = BearerValidator(url, introspection_client_id="rs",
                                    introspection_client_secret="rs-secret")  # fmt: skip
        with pytest.raises(InvalidTokenError, match="DPoP"):
            validator.validate("a-stolen-bound-token", "api:read")


# -- Device authorization grant: RFC 8628 ---------------------------------------------------


def test_a_signed_in_guesser_cannot_spread_user_code_guesses_over_addresses() -> None:
    """RFC 8628 §5.1: "the authorization server SHOULD rate-limit user code attempts". A
    signed-in browser passes the throttle's account-wide gates (its sign-in was
    throttled already), so its wrong codes were counted per address only: one account,
    its session cookie sent from ever new addresses, guessed without end (each address
    stayed under the per-address limit). A signed-in browser's wrong codes now count
    against its user, whatever the address: the 6th waits."""
    server = make_server(Clock())
    tv = "tv"
    server.add_client(tv, name="TV", grant_types=["urn:ietf:params:oauth:grant-type:device_code"])
    device = WSGIClient(server.wsgi, remote_addr="192.0.2.10")
    right = device.post("/device_authorization", data={"client_id": tv}).json()["user_code"]
    guesser = signed_in(server)
    statuses = []
    for i in range(6):
        r = guesser.get("/device", params={"user_code": "BBBB-BBBB"},
                        REMOTE_ADDR=f"203.0.113.{i + 1}")  # fmt: skip
        statuses.append(r.status)
    assert statuses == [200] * 5 + [429], statuses
    r = guesser.get("/device", params={"user_code": right}, REMOTE_ADDR="203.0.113.77")
    assert r.status == 429 and int(r.headers["retry-after"]) > 0
    # The user's own typos hold no one else: another browser, signed out, goes on.
    other = WSGIClient(server.wsgi, remote_addr="198.51.100.9")
    assert 'action="login"' in other.get("/device", params={"user_code": right}).text


@pytest.mark.parametrize("uri", [
    "https://attacker.example\\.bank.example/cb",  # WHATWG URL: \\ ends the host
    "https://bank.example%2eattacker.example/cb",  # WHATWG URL: the host is %-decoded
    "https://b\u0430nk.example/cb",  # a Cyrillic a: an IRI, not a URI (RFC 3987 §1.1)
    "https://bank.example/c b",
    "https://bank.example/cb\u200b",
])  # fmt: skip
def test_a_registered_redirect_uri_is_an_ascii_uri_whose_host_shows_as_it_goes(uri: str) -> None:
    """RFC 3986 §2: a URI is ASCII, of its unreserved and reserved characters and
    percent-encodings; RFC 7591 §2 redirect_uris are URIs. The consent page tells the
    user the host the answer goes to (back_to, from urlsplit), but a browser follows the
    WHATWG URL parser: a registered "https://attacker.example\\\\.bank.example/cb" showed
    as going to "attacker.example\\\\.bank.example" and went to attacker.example; a %-encoded
    or homograph host misled the same way. Such redirect URIs are refused at registration
    (invalid_redirect_uri), and in Client ID Metadata Documents."""
    server = make_server(Clock(), registration="open")
    wc = WSGIClient(server.wsgi)
    r = wc.request("POST", "/register", body=json.dumps({"redirect_uris": [uri]}).encode(),
                   headers={"Content-Type": "application/json"})  # fmt: skip
    assert r.status == 400 and r.json()["error"] == "invalid_redirect_uri", r.text


# -- The account area -----------------------------------------------------------------------


@pytest.mark.parametrize("handle", ["é", "\u2603" * 30])
def test_a_non_ascii_session_handle_is_no_5xx(handle: str) -> None:
    """DESIGN "nothing a client sends makes a 5xx": the sessions form's ``session`` handle
    was compared with hmac.compare_digest on str, which raises TypeError for non-ASCII
    text: a 500. It is now a session that is not found."""
    server = make_server(Clock())
    browser = signed_in(server)
    page = browser.get("/account").text
    r = browser.post("/account/sessions", data={**form_of(page, "/account/sessions"),
                                                "session": handle})  # fmt: skip
    assert r.status == 303 and r.location.endswith("done=session"), r.errors
    assert browser.get("/account").status == 200  # still signed in


def test_connected_apps_mark_a_self_registered_app_that_borrows_a_name() -> None:
    """Impersonation (RFC 7591 §5: a client's self-asserted name "cannot be trusted"): a
    client registered by anyone under the name of the operator's app was listed under
    Connected apps exactly as that app, so a user could not tell which one to revoke.
    The consent page marks such clients unverified; the account page now does too."""
    server = make_server(Clock(), registration="open")
    wc = WSGIClient(server.wsgi)
    r = wc.request("POST", "/register", body=json.dumps({
        "client_name": "Confidential App", "redirect_uris": ["https://app.example/cb"]}).encode(),
        headers={"Content-Type": "application/json"})  # fmt: skip
    impostor = r.json()["client_id"]
    server.issue_tokens(USERNAME, impostor, "openid")
    server.issue_tokens(USERNAME, CONFIDENTIAL, "openid")
    page = signed_in(server).get("/account").text
    apps = page.split('id="apps-heading"')[1].split("</section>")[0]
    items = re.findall(r"<li><strong>(.*?)</strong>", apps)
    assert sorted(items) == ["Confidential App", "Confidential App (unverified)"], items


# -- The fake IdP's transcript ----------------------------------------------------------------


def test_the_transcript_keeps_none_of_the_new_secrets() -> None:
    """DESIGN "Test conveniences": the transcript never records a secret (SECRET_NAMES).
    Issues 15, 18 and 19 brought new ones that it recorded in clear: the registration
    access token (RFC 7592 §3), token exchange's subject_token (RFC 8693 §2.1), a
    client_assertion (RFC 7523 §2.2), the account forms' current and new passwords and
    recovery codes, and the pages that show a new TOTP key (RFC 6238) and recovery codes."""
    import pyotp

    server = make_server(Clock(), transcript=True, registration="open")
    server.add_resource("https://api.example/", scopes=["api:read"], client_id="rs")
    server.add_resource("https://down.example/", scopes=["api:read"])
    server.add_client("rs", client_secret="rs-secret", grant_types=[codeflow.TOKEN_EXCHANGE],
                      token_exchange=["https://down.example/"])  # fmt: skip
    wc = WSGIClient(server.wsgi)
    r = wc.request("POST", "/register", body=json.dumps({
        "redirect_uris": ["https://app.example/cb"]}).encode(),
        headers={"Content-Type": "application/json"})  # fmt: skip
    registration = r.json()
    subject = server.issue_tokens(USERNAME, CONFIDENTIAL, "api:read",
                                  resource="https://api.example/")["access_token"]  # fmt: skip
    r = wc.post("/token", {"grant_type": codeflow.TOKEN_EXCHANGE, "subject_token": subject,
                           "subject_token_type": codeflow.ACCESS_TOKEN_TYPE,
                           "resource": "https://down.example/"},
                headers=basic("rs", "rs-secret"))  # fmt: skip
    assert r.status == 200, r.text
    browser = signed_in(server)
    page = browser.get("/account").text
    new_password = "a long and unusual phrase"
    r = browser.post("/account/password", data={**form_of(page, "/account/password"),
                                                 "current_password": PASSWORD,
                                                 "new_password": new_password})  # fmt: skip
    assert r.status == 303, r.text
    page = browser.get("/account").text
    r = browser.post("/account/totp", data={**form_of(page, "/account/totp"), "step": "start"})
    shown = re.search(r'<code id="totp-key">([A-Z2-7 ]+)</code>', r.text).group(1)
    key = shown.replace(" ", "")
    r = browser.post("/account/totp", data={**form_of(r.text, "/account/totp"), "step": "confirm",
                                            "otp": pyotp.TOTP(key).at(server.clock())})  # fmt: skip
    codes = re.findall(r"<li><code>([A-Z2-7]{4}(?:-[A-Z2-7]{4}){3})</code></li>", r.text)
    assert codes, r.text
    dumped = json.dumps(server.transcript.to_json())
    leaked = [name for name, value in [
        ("registration_access_token", registration["registration_access_token"]),
        ("client_secret", registration["client_secret"]), ("subject_token", subject),
        ("new_password", new_password), ("current_password", PASSWORD), ("totp key", shown),
        ("recovery code", codes[0])] if value in dumped]  # fmt: skip
    assert leaked == [], leaked


def test_an_update_that_sends_codes_elsewhere_ends_the_users_grants() -> None:
    """RFC 6819 §5.2.3.5 / RFC 8252 §8.6: a consent given before answers a later request
    without a page only while the redirect URI proves which client asks. RFC 7592 §2.2
    lets whoever holds the registration access token (a leaked one too) add a redirect
    URI and make the client public: consent was then reused silently, and with
    prompt=none each user's code went to the new host, redeemable there with a PKCE pair
    of its own. An update that adds a redirect URI, or drops the client's secret, now ends
    the users' grants (consent and tokens): each user is asked again."""
    server = make_server(Clock(), registration="open")
    wc = WSGIClient(server.wsgi)
    web = {"redirect_uris": ["https://app.example/cb"],
           "grant_types": ["authorization_code", "refresh_token"]}  # fmt: skip
    body = wc.request("POST", "/register", body=json.dumps(web).encode(),
                      headers={"Content-Type": "application/json"}).json()  # fmt: skip
    client_id = body["client_id"]
    headers = {"Content-Type": "application/json",
               "Authorization": "Bearer " + body["registration_access_token"]}  # fmt: skip

    def grant() -> str:
        server.storage.save_consent(USERNAME, client_id, ["openid"], server.clock())
        return server.issue_tokens(USERNAME, client_id, "openid offline_access")["refresh_token"]

    def update(metadata: dict) -> None:
        r = wc.request("PUT", f"/register/{client_id}", headers=headers,
                       body=json.dumps({**metadata, "client_id": client_id}).encode())  # fmt: skip
        assert r.status == 200, r.text

    refresh = grant()
    update({**web, "client_name": "Renamed"})  # nothing about where codes go: kept
    assert server.storage.get_consent(USERNAME, client_id) == frozenset({"openid"})
    update({**web, "redirect_uris": ["https://app.example/cb", "https://elsewhere.example/cb"]})
    assert server.storage.get_consent(USERNAME, client_id) == frozenset()
    assert server.storage.get_token(codeflow.token_hash(refresh)).revoked
    assert server.list_grants(USERNAME, client_id) == []

    grant()
    update({**web, "redirect_uris": ["https://app.example/cb"],
            "token_endpoint_auth_method": "none"})  # fmt: skip
    assert server.list_grants(USERNAME, client_id) == []


# -- RP-Initiated Logout 1.0 ------------------------------------------------------------------


def test_logout_is_no_open_redirector_for_self_registered_clients() -> None:
    """RFC 9700 §4.11.2 (the authorization server as open redirector): the server should
    "only automatically redirect the user agent if it trusts the redirection URI".
    RP-Initiated Logout §3 redirects to a registered post_logout_redirect_uri; under
    open registration anyone registers one, so /logout?client_id=...&
    post_logout_redirect_uri=https://evil.example/ bounced any visitor from the
    provider's own URL to any site (phishing). For a self-registered client, unless an
    ID token of the signed-in user vouches for the request, the signed-out page now only
    links there, naming the host, and goes on by itself nowhere."""
    server = make_server(Clock(), registration="open")
    wc = WSGIClient(server.wsgi)
    r = wc.request("POST", "/register", body=json.dumps({
        "redirect_uris": ["https://evil.example/cb"], "token_endpoint_auth_method": "none",
        "post_logout_redirect_uris": ["https://evil.example/phish"]}).encode(),
        headers={"Content-Type": "application/json"})  # fmt: skip
    params = {"client_id": r.json()["client_id"],
              "post_logout_redirect_uri": "https://evil.example/phish", "state": "s"}  # fmt: skip
    r = WSGIClient(server.wsgi).get("/logout", params=params)
    assert r.status == 200 and "location" not in r.headers, r.headers
    assert 'href="https://evil.example/phish?state=s"' in r.text
    assert "evil.example" in r.text and 'http-equiv="refresh"' not in r.text


@pytest.mark.parametrize("params", [
    {"response_type": "token"},  # RFC 9700 §4.11.2 #1: an erroneous request
    {"prompt": "none"},  # #3: a silent request, the user not signed in
])  # fmt: skip
def test_authorize_errors_do_not_bounce_to_a_self_registered_redirect_uri(params) -> None:
    """RFC 9700 §4.11.2: an attacker "could ... register a client via dynamic client
    registration" and "intentionally send an erroneous authorization request" or a
    silent one (prompt=none), "thus instructing the authorization server to redirect the
    user agent to its phishing site"; "The authorization server SHOULD only automatically
    redirect the user agent if it trusts the redirect URI. If the URI is not trusted, the
    authorization server MAY inform the user and rely on the user". Errors for a client
    that registered itself were redirected at once; they are now a page that says what
    went wrong and links to the client, naming its host. The operator's clients still get
    the RFC 6749 §4.1.2.1 redirect."""
    from conftest import PUBLIC

    server = make_server(Clock(), registration="open")
    wc = WSGIClient(server.wsgi)
    r = wc.request("POST", "/register", body=json.dumps({
        "redirect_uris": ["https://evil.example/cb"],
        "token_endpoint_auth_method": "none"}).encode(),
        headers={"Content-Type": "application/json"})  # fmt: skip
    flow = new_flow(r.json()["client_id"], redirect_uri="https://evil.example/cb", state="s1",
                    **params)  # fmt: skip
    r = WSGIClient(server.wsgi).get("/authorize", params=flow.params)
    assert r.status == 400 and "location" not in r.headers, r.headers
    link = re.search(r'href="(https://evil\.example/cb\?[^"]*)"', r.text)
    assert link and "error=" in link.group(1) and "state=s1" in link.group(1), r.text
    assert "evil.example" in r.text
    r = WSGIClient(server.wsgi).get("/authorize", params=new_flow(PUBLIC, **params).params)
    assert r.status == 302 and "error=" in r.location


# -- RFC 7591: the registration endpoint cannot be filled for good -----------------------


def test_registrations_never_used_expire_so_registration_cannot_be_closed_for_good() -> None:
    """RFC 7591 §3 open registration, RFC 6819 §4.1.1 (resource exhaustion): clients that
    registered themselves and were never used never went, so registrations from many
    addresses filled max_registered_clients and closed registration for good (HTTP 429
    for ever). The purge now removes a self-registered client that nothing uses (no
    consent, token or code under way) a day (UNUSED_REGISTRATION_SECONDS) after it
    registered; one a user consented to stays."""
    clock = Clock()
    server = make_server(clock, registration="open", max_registered_clients=3)
    wc = WSGIClient(server.wsgi)

    def register() -> Response:
        return wc.request("POST", "/register", body=json.dumps({
            "redirect_uris": ["https://app.example/cb"],
            "token_endpoint_auth_method": "none"}).encode(),
            headers={"Content-Type": "application/json"})  # fmt: skip

    ids = [register().json()["client_id"] for _ in range(3)]
    assert register().status == 429
    server.storage.save_consent(USERNAME, ids[0], ["openid"], clock())
    clock.advance(codeflow.UNUSED_REGISTRATION_SECONDS - 60)
    assert server.purge() == 0 and register().status == 429  # not yet a day old
    clock.advance(120)
    assert server.purge() == 2
    assert server.storage.get_client(ids[0]) is not None  # consented to: kept
    assert server.storage.get_client(ids[1]) is None
    r = register()
    assert r.status == 201, r.text
    assert r.json()["client_id"] not in ids
