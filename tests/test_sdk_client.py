"""The SDK's Client against a live codeflow over a socket: discovery, the authorization
request and response, the code exchange, ID token validation, keys, and the other calls.

One provider runs per module (auto-approve as alice); each test gets a fresh Client, a
reset provider clock, and the Wire, which counts requests per path and can rewrite a
response to play a provider that misbehaves.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import time
import urllib.parse

import jwt
import pytest
import requests
from codeflow_sdk import (
    AuthorizationError,
    Client,
    DiscoveryError,
    IDTokenError,
    InsufficientScopeError,
    InvalidTokenError,
    IssuerMismatch,
    LoginState,
    OAuthError,
    StateMismatch,
    TokenError,
    UserinfoError,
)
from sdk_support import (
    CONFIDENTIAL,
    DISCOVERY,
    ES_CLIENT,
    ES_SECRET,
    PUBLIC,
    REDIRECT,
    SECRET,
    IdP,
    follow,
    free_port,
    rogue_key,
)

pytestmark = pytest.mark.http

TOKEN, JWKS = "/token", "/jwks"


@pytest.fixture
def client(idp: IdP) -> Client:
    return Client(idp.url, CONFIDENTIAL, SECRET, redirect_uri=REDIRECT)


def login(client: Client, **extra: str) -> tuple[str, LoginState]:
    """Start a login and be the browser; return the callback URL and the record."""
    url, record = client.start_login(**extra)
    return follow(url), record


def with_params(url: str, **changes: str | None) -> str:
    """The URL with query parameters replaced (None removes one)."""
    parts = urllib.parse.urlsplit(url)
    params = dict(urllib.parse.parse_qsl(parts.query))
    params.update(changes)
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    return urllib.parse.urlunsplit(parts._replace(query=query))


def id_claims(idp: IdP, **changes: object) -> dict:
    """Valid ID token claims for CONFIDENTIAL with nonce "n"; None removes a claim."""
    now = int(time.time())
    claims = {"iss": idp.url, "sub": "alice", "aud": CONFIDENTIAL, "exp": now + 600,
              "iat": now, "nonce": "n"}  # fmt: skip
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


# -- Discovery ---------------------------------------------------------------------


def test_discovery_is_fetched_once_per_client(idp: IdP, client: Client) -> None:
    """OIDC Discovery 1.0 §4: the metadata comes from /.well-known/openid-configuration;
    the Client caches it, so two logins make one discovery request."""
    for _ in range(2):
        client.finish_login(*login(client))
    assert idp.wire.hits[DISCOVERY] == 1
    assert client.metadata["token_endpoint"] == idp.url + "/token"


def test_discovery_issuer_must_match_the_configured_one_exactly(idp: IdP) -> None:
    """OIDC Discovery 1.0 §4.3: "The issuer value returned MUST be identical to the Issuer
    URL that was used as the prefix to /.well-known/openid-configuration"."""
    with pytest.raises(IssuerMismatch):
        Client(idp.url + "/", CONFIDENTIAL, SECRET, REDIRECT).start_login()
    idp.wire.rewrite[DISCOVERY] = lambda doc: {**doc, "issuer": "https://evil.example"}
    with pytest.raises(IssuerMismatch) as caught:
        Client(idp.url, CONFIDENTIAL, SECRET, REDIRECT).start_login()
    assert caught.value.error == "invalid_issuer"


def test_discovery_failures_raise_discovery_error(idp: IdP) -> None:
    """OIDC Discovery 1.0 §4: a provider whose metadata cannot be fetched, or is not a
    JSON object, or lacks an endpoint, is unusable: DiscoveryError, not a crash."""
    with pytest.raises(DiscoveryError) as caught:
        Client(idp.url + "/nowhere", CONFIDENTIAL).start_login(redirect_uri=REDIRECT)
    assert caught.value.status == 404
    with pytest.raises(DiscoveryError) as caught:
        _ = Client(f"http://127.0.0.1:{free_port()}", CONFIDENTIAL, redirect_uri=REDIRECT).metadata
    assert caught.value.error == "temporarily_unavailable"
    idp.wire.rewrite[DISCOVERY] = lambda doc: [doc]  # type: ignore[assignment,return-value]
    with pytest.raises(DiscoveryError, match="not a JSON object"):
        _ = Client(idp.url, CONFIDENTIAL, redirect_uri=REDIRECT).metadata
    idp.wire.rewrite[DISCOVERY] = lambda doc: {**doc, "authorization_endpoint": None}
    with pytest.raises(DiscoveryError, match="authorization_endpoint"):
        Client(idp.url, CONFIDENTIAL, redirect_uri=REDIRECT).start_login()


# -- The authorization request ----------------------------------------------------------


def test_start_login_builds_an_s256_pkce_request(client: Client) -> None:
    """RFC 7636 §4.1-§4.3: a fresh high-entropy code_verifier per login and
    code_challenge = BASE64URL(SHA256(code_verifier)) with method S256; RFC 6749 §4.1.1:
    response_type=code, client_id, redirect_uri, scope, state; OIDC Core §3.1.2.1 nonce."""
    url, record = client.start_login()
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    digest = hashlib.sha256(record.code_verifier.encode()).digest()
    assert params == {
        "response_type": "code",
        "client_id": CONFIDENTIAL,
        "redirect_uri": REDIRECT,
        "scope": "openid profile email",
        "state": record.state,
        "nonce": record.nonce,
        "code_challenge": base64.urlsafe_b64encode(digest).rstrip(b"=").decode(),
        "code_challenge_method": "S256",
    }
    assert 43 <= len(record.code_verifier) <= 128
    _, other = client.start_login()
    assert {other.state, other.nonce, other.code_verifier}.isdisjoint(
        {record.state, record.nonce, record.code_verifier}
    )


def test_start_login_adds_extras_and_refuses_to_override_its_own(client: Client) -> None:
    """OIDC Core §3.1.2.1: prompt, login_hint and max_age are the caller's to add; the
    parameters that carry the SDK's checks (state, nonce, PKCE) are not."""
    url, record = client.start_login("openid", prompt="login", login_hint="bob", max_age=60,
                                      ui_locales=None)  # fmt: skip
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))
    assert (params["prompt"], params["login_hint"], params["max_age"]) == ("login", "bob", "60")
    assert "ui_locales" not in params and record.max_age == 60
    for name in ("state", "nonce", "code_challenge", "response_type"):
        with pytest.raises(ValueError, match=name):
            client.start_login(**{name: "mine"})
    with pytest.raises(ValueError, match="redirect_uri"):
        Client(client.issuer, CONFIDENTIAL).start_login()


def test_start_login_keeps_the_endpoint_query(idp: IdP) -> None:
    """RFC 6749 §3.1: the endpoint URI's query component "MUST be retained when adding
    additional query parameters"."""
    idp.wire.rewrite[DISCOVERY] = lambda doc: {
        **doc, "authorization_endpoint": doc["authorization_endpoint"] + "?tenant=t1"
    }
    url, _ = Client(idp.url, CONFIDENTIAL, SECRET, REDIRECT).start_login()
    assert url.startswith(idp.url + "/authorize?tenant=t1&response_type=code&")


def test_login_state_round_trips_through_json(client: Client) -> None:
    """RFC 6749 §4.1 / RFC 7636 §4.5: the state, nonce and code_verifier must survive from
    the request to the response in the app's session: to_dict() is plain JSON and
    from_dict() reads it back, refusing anything else."""
    _, record = client.start_login(max_age=30)
    assert LoginState.from_dict(json.loads(json.dumps(record.to_dict()))) == record
    _, no_openid = client.start_login("profile")
    assert no_openid.nonce is None
    assert LoginState.from_dict(no_openid.to_dict()) == no_openid
    with pytest.raises(ValueError, match="state"):
        LoginState.from_dict({**record.to_dict(), "state": None})
    with pytest.raises(ValueError, match="max_age"):
        LoginState.from_dict({**record.to_dict(), "max_age": "30"})


# -- A successful login -------------------------------------------------------------------


def test_login_returns_validated_tokens(idp: IdP, client: Client) -> None:
    """OIDC Core §3.1.3.7: finish_login redeems the code (RFC 6749 §4.1.3, client_secret_basic)
    and returns the tokens with the validated ID token's claims; OIDC Core §5.3 userinfo
    answers for the same sub."""
    callback, record = login(client, scope="openid profile email offline_access")
    before = time.time()
    tokens = client.finish_login(callback, record)
    claims = tokens.id_token_claims
    assert (tokens.sub, claims["iss"], claims["aud"], claims["nonce"]) == (
        "alice", idp.url, CONFIDENTIAL, record.nonce,
    )  # fmt: skip
    assert tokens.scope == ("openid", "profile", "email", "offline_access")
    assert tokens.refresh_token and tokens.token_type == "Bearer"
    assert tokens.expires_at is not None and before + 3500 < tokens.expires_at < before + 3700
    assert tokens.access_token not in repr(tokens)
    info = client.userinfo(tokens.access_token, expected_sub=tokens.sub)
    assert info == {"sub": "alice", "name": "Alice Liddell", "email": "alice@example.org",
                    "email_verified": True}  # fmt: skip


def test_public_client_logs_in_with_pkce_only(idp: IdP) -> None:
    """RFC 6749 §3.2.1 and RFC 7636: a public client sends client_id in the body and the
    code_verifier; no secret."""
    client = Client(idp.url, PUBLIC, redirect_uri=REDIRECT)
    tokens = client.finish_login(*login(client))
    assert tokens.sub == "alice" and tokens.id_token_claims["aud"] == PUBLIC


def test_es256_id_token_verifies_with_the_ec_key(idp: IdP) -> None:
    """RFC 7518 §3.4: an ES256 ID token verifies with the provider's P-256 JWK."""
    client = Client(idp.url, ES_CLIENT, ES_SECRET, REDIRECT)
    tokens = client.finish_login(*login(client))
    assert jwt.get_unverified_header(tokens.id_token)["alg"] == "ES256"
    assert tokens.sub == "alice"


def test_login_without_openid_has_no_id_token(client: Client) -> None:
    """OIDC Core §3.1.2.1: without the openid scope the request is plain OAuth; no nonce is
    sent and no ID token is required."""
    tokens = client.finish_login(*login(client, scope="profile"))
    assert tokens.id_token is None and tokens.id_token_claims == {} and tokens.sub is None


# -- The authorization response: state, iss, errors ---------------------------------------


@pytest.mark.parametrize("state", [None, "", "forged-state", "another-login"])
def test_bad_state_is_rejected_before_the_code_is_used(
    idp: IdP, client: Client, state: str | None
) -> None:
    """RFC 6749 §10.12: the client "MUST implement CSRF protection for its redirection URI"
    with a state bound to the user-agent: a missing or different state is refused and
    the code is never redeemed."""
    callback, record = login(client)
    if state == "another-login":
        state = client.start_login()[1].state
    with pytest.raises(StateMismatch) as caught:
        client.finish_login(with_params(callback, state=state), record)
    assert isinstance(caught.value, AuthorizationError) and caught.value.error == "invalid_state"
    assert idp.wire.hits[TOKEN] == 0


def test_wrong_iss_is_rejected(idp: IdP, client: Client) -> None:
    """RFC 9207 §2.4: if iss "does not match the expected issuer identifier, clients MUST
    reject the authorization response and MUST NOT proceed with the authorization grant"."""
    callback, record = login(client)
    for iss in ("https://attacker.example", idp.url + "/"):
        with pytest.raises(IssuerMismatch):
            client.finish_login(with_params(callback, iss=iss), record)
    assert idp.wire.hits[TOKEN] == 0
    client.finish_login(callback, record)  # the untouched response still works


def test_missing_iss_is_rejected_when_the_provider_sends_it(idp: IdP, client: Client) -> None:
    """RFC 9207 §2.4: "Clients MUST reject authorization responses without the iss
    parameter from authorization servers that do support the iss parameter" (metadata
    authorization_response_iss_parameter_supported, §3)."""
    callback, record = login(client)
    with pytest.raises(IssuerMismatch, match="no iss"):
        client.finish_login(with_params(callback, iss=None), record)


def test_missing_iss_is_accepted_from_a_provider_that_does_not_send_it(idp: IdP) -> None:
    """RFC 9207 §2.4: without the metadata flag, a response without iss is not an error."""
    idp.wire.rewrite[DISCOVERY] = lambda doc: {
        k: v for k, v in doc.items() if k != "authorization_response_iss_parameter_supported"
    }
    client = Client(idp.url, CONFIDENTIAL, SECRET, REDIRECT)
    callback, record = login(client)
    assert client.finish_login(with_params(callback, iss=None), record).sub == "alice"


def test_error_response_raises_authorization_error(idp: IdP, client: Client) -> None:
    """RFC 6749 §4.1.2.1: an error response carries error (access_denied here) and
    error_description; the client raises them, after checking state and iss."""
    _, record = client.start_login()
    callback = REDIRECT + "?" + urllib.parse.urlencode({
        "error": "access_denied", "error_description": "The user said no.",
        "state": record.state, "iss": idp.url,
    })  # fmt: skip
    with pytest.raises(AuthorizationError) as caught:
        client.finish_login(callback, record)
    assert (caught.value.error, caught.value.description) == ("access_denied", "The user said no.")
    assert not isinstance(caught.value, StateMismatch)
    with pytest.raises(StateMismatch):  # an error response with another state is forged
        client.finish_login(with_params(callback, state="x"), record)


@pytest.mark.parametrize(
    ("extra", "error"),
    [({"prompt": "none"}, "login_required"), ({"scope": "openid admin"}, "invalid_scope")],
)
def test_provider_error_responses_over_the_wire(
    idp: IdP, client: Client, extra: dict[str, str], error: str
) -> None:
    """OIDC Core §3.1.2.6 and RFC 6749 §4.1.2.1: the provider's own error redirects
    (login_required for prompt=none without a session, invalid_scope) become
    AuthorizationError with the provider's code."""
    idp.srv.auto_approve = None
    callback, record = login(client, **extra)
    with pytest.raises(AuthorizationError) as caught:
        client.finish_login(callback, record)
    assert caught.value.error == error and caught.value.description


def test_malformed_responses_are_rejected(idp: IdP, client: Client) -> None:
    """RFC 6749 §3.1: parameters "MUST NOT be included more than once"; RFC 6749 §4.1.2:
    a success response has a code."""
    callback, record = login(client)
    with pytest.raises(AuthorizationError, match="repeats the code"):
        client.finish_login(callback + "&code=other", record)
    with pytest.raises(AuthorizationError, match="neither a code"):
        client.finish_login(with_params(callback, code=None), record)
    query = urllib.parse.urlsplit(callback).query
    assert client.finish_login(query, record).sub == "alice"  # a bare query string works


# -- The token endpoint -------------------------------------------------------------------


def test_replayed_code_raises_token_error(client: Client) -> None:
    """RFC 6749 §4.1.2: "If an authorization code is used more than once, the authorization
    server MUST deny the request": TokenError with the provider's invalid_grant."""
    callback, record = login(client)
    client.finish_login(callback, record)
    with pytest.raises(TokenError) as caught:
        client.finish_login(callback, record)
    assert (caught.value.error, caught.value.status) == ("invalid_grant", 400)


def test_expired_code_raises_token_error(idp: IdP, client: Client) -> None:
    """RFC 6749 §4.1.2: the code "MUST expire shortly after it is issued" (codeflow: 60 s,
    on its controllable clock)."""
    callback, record = login(client)
    idp.clock.advance(61)
    with pytest.raises(TokenError) as caught:
        client.finish_login(callback, record)
    assert caught.value.error == "invalid_grant"


def test_wrong_client_secret_raises_token_error(idp: IdP) -> None:
    """RFC 6749 §5.2: invalid_client, HTTP 401, when client authentication fails."""
    client = Client(idp.url, CONFIDENTIAL, "wrong-secret", REDIRECT)
    with pytest.raises(TokenError) as caught:
        client.finish_login(*login(client))
    assert (caught.value.error, caught.value.status) == ("invalid_client", 401)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"token_type": "mac"}, TokenError),
        ({"token_type": None}, TokenError),
        ({"access_token": None}, TokenError),
        ({"id_token": None}, IDTokenError),
    ],
    ids=["token_type-mac", "no-token_type", "no-access_token", "no-id_token"],
)
def test_unusable_token_responses_are_rejected(
    idp: IdP, client: Client, change: dict[str, str | None], error: type[OAuthError]
) -> None:
    """RFC 6749 §5.1: access_token and token_type are REQUIRED; §7.1: "The client MUST NOT
    use an access token if it does not understand the token type"; OIDC Core §3.1.3.3:
    an openid request's token response contains an id_token."""
    idp.wire.rewrite[TOKEN] = lambda body: {
        k: v for k, v in {**body, **change}.items() if v is not None
    }
    with pytest.raises(error):
        client.finish_login(*login(client))


# -- The ID token ---------------------------------------------------------------------------


@pytest.mark.parametrize(("skew", "ok"), [(-3600 - 30, True), (-3600 - 120, False)])
def test_expired_id_token(idp: IdP, client: Client, skew: int, ok: bool) -> None:
    """OIDC Core §3.1.3.7 (9): "The current time MUST be before the time represented by the
    exp Claim", allowing for a small clock skew (60 s): a provider whose clock is an hour
    and 30 s behind still passes, one two minutes further behind does not."""
    idp.clock.advance(skew)  # the ID token (1 h lifetime) is minted already expired
    callback, record = login(client)
    if ok:
        assert client.finish_login(callback, record).sub == "alice"
    else:
        with pytest.raises(IDTokenError, match="expired"):
            client.finish_login(callback, record)


def test_id_token_from_the_future_is_rejected(idp: IdP, client: Client) -> None:
    """OIDC Core §3.1.3.7 (10): iat "can be used to reject tokens that were issued too far
    away from the current time"; beyond the 60 s leeway it is rejected."""
    idp.clock.advance(300)
    with pytest.raises(IDTokenError, match="future"):
        client.finish_login(*login(client))


def test_clock_seam_controls_expiry(idp: IdP) -> None:
    """OIDC Core §3.1.3.7 (9), with the SDK's clock seam: the client's own clock decides."""
    late = Client(idp.url, CONFIDENTIAL, SECRET, REDIRECT, clock=lambda: time.time() + 3661)
    with pytest.raises(IDTokenError, match="expired"):
        late.finish_login(*login(late))


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "bob"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def _resigned(token: str) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    header = jwt.get_unverified_header(token)
    return jwt.encode(claims, rogue_key(), algorithm="RS256", headers={"kid": header["kid"]})


def _alg_none(token: str) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    header = jwt.get_unverified_header(token)
    return jwt.encode(claims, None, algorithm="none", headers={"kid": header["kid"]})


def _hs256(token: str) -> str:
    claims = jwt.decode(token, options={"verify_signature": False})
    header = jwt.get_unverified_header(token)
    secret = "a-shared-secret-long-enough-for-hs256!"
    return jwt.encode(claims, secret, algorithm="HS256", headers={"kid": header["kid"]})


@pytest.mark.parametrize(
    "forge", [_tampered, _resigned, _alg_none, _hs256, lambda t: t.rsplit(".", 1)[0] + "."],
    ids=["tampered-payload", "resigned-other-key", "alg-none", "alg-hs256", "no-signature"],
)
def test_forged_id_token_is_rejected(idp: IdP, client: Client, forge) -> None:
    """OIDC Core §3.1.3.7 (6): the client "MUST validate the signature of all other ID
    Tokens according to JWS using the algorithm specified in the JWT alg Header
    Parameter"; (7): alg is the one expected, never none or an HMAC alg here."""
    idp.wire.rewrite[TOKEN] = lambda body: {**body, "id_token": forge(body["id_token"])}
    with pytest.raises(IDTokenError):
        client.finish_login(*login(client))


def test_nonce_must_be_the_one_sent(client: Client) -> None:
    """OIDC Core §3.1.3.7 (11): "a nonce Claim MUST be present and its value checked to
    verify that it is the same value as the one that was sent"."""
    callback, record = login(client)
    with pytest.raises(IDTokenError, match="nonce"):
        client.finish_login(callback, dataclasses.replace(record, nonce="not-the-nonce"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"iss": "https://other.example"}, "iss"),
        ({"aud": "another-client"}, "another client"),
        ({"aud": [CONFIDENTIAL, "another-client"]}, "no azp"),
        ({"azp": "another-client"}, "azp"),
        ({"aud": None}, "aud"),
        ({"sub": None}, "sub"),
        ({"sub": 42}, "sub"),
        ({"exp": None}, "exp"),
        ({"exp": "tomorrow"}, "exp"),
        ({"iat": None}, "iat"),
        ({"nonce": None}, "nonce"),
        ({"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"}, "at_hash"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_id_token_claims_are_checked(
    idp: IdP, client: Client, changes: dict, message: str
) -> None:
    """OIDC Core §3.1.3.7 (2)-(5), (9)-(11) and §3.2.2.9: iss exactly the issuer; aud
    contains the client_id; azp present with several audiences and then the client;
    sub, exp and iat present; nonce the one sent; at_hash that of the access token. The
    tokens here are signed with the provider's real key, so only the claim checks can
    catch them."""
    token = idp.sign(id_claims(idp, **changes))
    with pytest.raises(IDTokenError, match=message):
        client.validate_id_token(token, nonce="n", access_token="the-access-token")


def test_several_audiences_with_azp_are_accepted(idp: IdP, client: Client) -> None:
    """OIDC Core §3.1.3.7 (4)-(5): several audiences are fine when azp names this client."""
    token = idp.sign(id_claims(idp, aud=[CONFIDENTIAL, "api"], azp=CONFIDENTIAL))
    assert client.validate_id_token(token, nonce="n")["azp"] == CONFIDENTIAL


def test_alg_must_be_one_the_provider_advertises(idp: IdP) -> None:
    """OIDC Core §3.1.3.7 (7): "The alg value SHOULD be the default of RS256 or the algorithm
    sent by the Client in the id_token_signed_response_alg parameter"; we accept only
    the provider's id_token_signing_alg_values_supported (OIDC Discovery 1.0 §3)."""
    idp.wire.rewrite[DISCOVERY] = lambda doc: {
        **doc, "id_token_signing_alg_values_supported": ["ES256", "none", "HS256"]
    }
    client = Client(idp.url, CONFIDENTIAL, SECRET, REDIRECT)
    with pytest.raises(IDTokenError, match="RS256"):
        client.finish_login(*login(client))


@pytest.mark.parametrize(("max_age", "ok"), [(300, False), (3600, True)])
def test_max_age_checks_auth_time(idp: IdP, max_age: int, ok: bool) -> None:
    """OIDC Core §3.1.3.7 (13): with max_age, "the Client SHOULD check the auth_time Claim
    value and request re-authentication if it determines too much time has elapsed"."""
    client = Client(idp.url, CONFIDENTIAL, SECRET, REDIRECT, clock=lambda: time.time() + 600)
    callback, record = login(client, max_age=max_age)
    if ok:
        assert client.finish_login(callback, record).id_token_claims["auth_time"]
    else:
        with pytest.raises(IDTokenError, match="max_age"):
            client.finish_login(callback, record)


# -- Keys: RFC 7517, OIDC Core §10.1.1 ---------------------------------------------------------


def test_key_rotation_refetches_the_jwks_once(idp: IdP, client: Client) -> None:
    """OIDC Core §10.1.1: "The RP would then ... retrieve the keys again" when a kid is
    unknown: after the provider rotates its keys, the next login refetches the JWKS once
    and succeeds; ID tokens signed with the old key still verify while it is published."""
    first = client.finish_login(*login(client))
    assert idp.wire.hits[JWKS] == 1
    idp.srv.rotate_keys()
    second = client.finish_login(*login(client))
    assert idp.wire.hits[JWKS] == 2
    assert jwt.get_unverified_header(first.id_token)["kid"] != jwt.get_unverified_header(
        second.id_token
    )["kid"]
    client.finish_login(*login(client))
    client.validate_id_token(first.id_token, nonce=first.id_token_claims["nonce"])
    assert idp.wire.hits[JWKS] == 2


def test_unpublished_key_fails_after_one_refetch(idp: IdP) -> None:
    """RFC 7515 §4.1.4 / OIDC Core §10.1.1: a token whose kid the provider never published
    is rejected after exactly one refetch; more such tokens do not refetch again until
    the refetch interval has passed (the provider's jwks_uri is not a free amplifier)."""
    clock = [time.time()]
    client = Client(idp.url, CONFIDENTIAL, SECRET, REDIRECT, clock=lambda: clock[0])
    client.finish_login(*login(client))
    assert idp.wire.hits[JWKS] == 1
    forged = jwt.encode(id_claims(idp), rogue_key(), algorithm="RS256", headers={"kid": "rogue"})
    for expected_hits in (2, 2, 2):
        with pytest.raises(IDTokenError, match="'rogue'"):
            client.validate_id_token(forged, nonce="n")
        assert idp.wire.hits[JWKS] == expected_hits
    clock[0] += 11
    with pytest.raises(IDTokenError, match="'rogue'"):
        client.validate_id_token(forged, nonce="n")
    assert idp.wire.hits[JWKS] == 3


def test_jwks_cache_expires(idp: IdP) -> None:
    """RFC 7517 §5: the key set is cached for jwks_cache_seconds, then fetched again."""
    clock = [time.time()]
    client = Client(idp.url, CONFIDENTIAL, SECRET, REDIRECT, clock=lambda: clock[0] + 0,
                    jwks_cache_seconds=100)  # fmt: skip
    tokens = client.finish_login(*login(client))
    client.validate_id_token(tokens.id_token)
    assert idp.wire.hits[JWKS] == 1
    clock[0] += 101
    client.validate_id_token(tokens.id_token)
    assert idp.wire.hits[JWKS] == 2


# -- Refresh, revocation, userinfo, client credentials, logout ------------------------------


def test_refresh_rotates_and_a_reused_refresh_token_fails(client: Client) -> None:
    """RFC 6749 §6: a refresh token gets new tokens; RFC 9700 §4.14.2: the provider rotates
    refresh tokens, and the old one, used again, is refused (TokenError invalid_grant)."""
    tokens = client.finish_login(*login(client, scope="openid offline_access"))
    assert tokens.refresh_token
    refreshed = client.refresh(tokens.refresh_token, expected_sub=tokens.sub)
    assert refreshed.refresh_token not in (None, tokens.refresh_token)
    assert refreshed.access_token != tokens.access_token
    with pytest.raises(TokenError) as caught:
        client.refresh(tokens.refresh_token)
    assert caught.value.error == "invalid_grant"


def test_refresh_keeps_the_refresh_token_when_none_is_issued(idp: IdP, client: Client) -> None:
    """RFC 6749 §6: the server "MAY issue a new refresh token"; when it does not, the one
    the client holds stays in use."""
    tokens = client.finish_login(*login(client, scope="openid offline_access"))
    idp.wire.rewrite[TOKEN] = lambda body: {k: v for k, v in body.items() if k != "refresh_token"}
    refreshed = client.refresh(tokens.refresh_token or "", scope="openid")
    assert refreshed.refresh_token == tokens.refresh_token and refreshed.scope == ("openid",)


def test_revoke(client: Client) -> None:
    """RFC 7009 §2.1: a revoked access token no longer works (userinfo answers invalid_token,
    RFC 6750 §3.1); revoking the refresh token ends the grant; an unknown token is not an
    error (§2.2)."""
    tokens = client.finish_login(*login(client, scope="openid offline_access"))
    client.revoke(tokens.access_token, "access_token")
    with pytest.raises(InvalidTokenError) as caught:
        client.userinfo(tokens.access_token)
    assert (caught.value.error, caught.value.status) == ("invalid_token", 401)
    client.revoke(tokens.refresh_token or "")
    with pytest.raises(TokenError):
        client.refresh(tokens.refresh_token or "")
    client.revoke("never-issued")


def test_revocation_errors_raise_token_error(idp: IdP) -> None:
    """RFC 7009 §2.2.1: errors are RFC 6749 §5.2 responses, e.g. invalid_client."""
    with pytest.raises(TokenError) as caught:
        Client(idp.url, CONFIDENTIAL, "wrong", REDIRECT).revoke("some-token")
    assert caught.value.error == "invalid_client"


def test_userinfo_about_another_user_is_rejected(client: Client) -> None:
    """OIDC Core §5.3.4: "The sub Claim in the UserInfo Response MUST be verified to exactly
    match the sub Claim in the ID Token; if they do not match, the UserInfo Response
    values MUST NOT be used."""
    tokens = client.finish_login(*login(client))
    with pytest.raises(UserinfoError) as caught:
        client.userinfo(tokens.access_token, expected_sub="bob")
    assert caught.value.error == "invalid_sub"


def test_userinfo_without_openid_scope_is_insufficient_scope(client: Client) -> None:
    """RFC 6750 §3.1: insufficient_scope (403) is raised as InsufficientScopeError."""
    tokens = client.client_credentials("api:read")
    with pytest.raises(InsufficientScopeError) as caught:
        client.userinfo(tokens.access_token)
    assert caught.value.status == 403


def test_client_credentials(idp: IdP, client: Client) -> None:
    """RFC 6749 §4.4: a confidential client gets a token for itself (no refresh token,
    §4.4.3); a scope it may not have is invalid_scope; a public client may not use it."""
    tokens = client.client_credentials("api:read api:write")
    assert tokens.scope == ("api:read", "api:write") and tokens.refresh_token is None
    with pytest.raises(TokenError) as caught:
        client.client_credentials("admin")
    assert caught.value.error == "invalid_scope"
    with pytest.raises(TokenError) as caught:
        Client(idp.url, PUBLIC).client_credentials()
    assert caught.value.error in ("unauthorized_client", "invalid_client")


def test_client_authentication_encodes_the_credentials(idp: IdP) -> None:
    """RFC 6749 §2.3.1: for HTTP Basic, the client id and secret are form-urlencoded first
    (so ':' and non-ASCII survive); a provider that lists only client_secret_post
    (RFC 8414 §2 token_endpoint_auth_methods_supported) gets them in the body."""
    odd_id, odd_secret = "odd id:ü", "s3:cr+t %/ü"
    if idp.srv.storage.get_client(odd_id) is None:
        idp.srv.add_client(odd_id, client_secret=odd_secret, scopes=["api:read"],
                           grant_types=["client_credentials"])  # fmt: skip
    assert Client(idp.url, odd_id, odd_secret).client_credentials().scope == ("api:read",)
    assert (idp.wire.authorization[TOKEN] or "").startswith("Basic ")
    idp.wire.rewrite[DISCOVERY] = lambda doc: {
        **doc, "token_endpoint_auth_methods_supported": ["client_secret_post"]
    }
    assert Client(idp.url, odd_id, odd_secret).client_credentials("api:read").access_token
    assert idp.wire.authorization[TOKEN] is None


def test_logout_url_ends_the_session_and_returns(idp: IdP, client: Client) -> None:
    """OpenID Connect RP-Initiated Logout 1.0 §2-§3: the end_session_endpoint with
    id_token_hint and a registered post_logout_redirect_uri sends the browser back there,
    with the state."""
    tokens = client.finish_login(*login(client))
    url = client.logout_url(tokens.id_token, "http://127.0.0.1:9000/", state="s1")
    assert url.startswith(idp.url + "/logout?")
    with requests.get(url, allow_redirects=False, timeout=10) as r:
        assert r.status_code == 302
        assert r.headers["Location"] == "http://127.0.0.1:9000/?state=s1"


def test_every_error_is_an_oauth_error() -> None:
    """RFC 6749 §5.2: every SDK failure is an OAuthError carrying error and description
    (the fields of an OAuth error response), one hierarchy with one base."""
    for cls in (
        AuthorizationError, DiscoveryError, IDTokenError, InsufficientScopeError,
        InvalidTokenError, IssuerMismatch, StateMismatch, TokenError, UserinfoError,
    ):  # fmt: skip
        err = cls("why")
        assert isinstance(err, OAuthError) and err.error and err.description == "why"
