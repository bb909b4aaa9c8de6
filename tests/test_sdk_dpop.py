"""The SDK and DPoP (RFC 9449), both ends, over real sockets.

``Client(dpop_key=...)`` against a live codeflow: bound tokens from the code flow,
refresh and client credentials (§5), dpop_jkt (§10), userinfo with the DPoP scheme
(§7.1), nonce retries (§8, §9). ``BearerValidator`` in front of an API on 127.0.0.1,
with proofs made independently by tests/dpop_helpers.py (PyJWT, not the SDK): §7.1's
checks, §7.2's refusal of a bound token sent as Bearer, replay (§11.1), htu behind a
proxy (base_url).
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator

import pytest
import requests
from codeflow_sdk import (
    BearerValidator,
    Client,
    DPoPKey,
    InvalidTokenError,
    TokenError,
    require_bearer,
)
from dpop_helpers import DPoPKey as ProofKey
from sdk_support import (
    CONFIDENTIAL,
    INTROSPECTOR,
    INTROSPECTOR_SECRET,
    JWT_CLIENT,
    JWT_SECRET,
    PUBLIC,
    REDIRECT,
    SECRET,
    IdP,
    follow,
    serving,
)

pytestmark = pytest.mark.http


def login(client: Client, scope: str = "openid profile offline_access"):
    url, record = client.start_login(scope)
    return client.finish_login(follow(url), record), url


def introspect(idp: IdP, token: str) -> dict:
    r = requests.post(idp.url + "/introspect", data={"token": token},
                      auth=(INTROSPECTOR, INTROSPECTOR_SECRET), timeout=10)  # fmt: skip
    assert r.status_code == 200, r.text
    return r.json()


###############################################################################
# The client: RFC 9449 §5, §7, §8, §10 ########################################
###############################################################################


def test_client_with_a_key_gets_tokens_bound_to_it(idp: IdP) -> None:
    """RFC 9449 §5: the SDK sends a proof with the token request, the provider answers
    token_type DPoP and binds the token to the key's thumbprint (§6.2, introspection);
    §10: the authorization request carried dpop_jkt."""
    key = DPoPKey.generate()
    client = Client(idp.url, PUBLIC, redirect_uri=REDIRECT, dpop_key=key)
    tokens, url = login(client)
    assert dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))["dpop_jkt"] == (
        key.thumbprint
    )
    assert tokens.token_type == "DPoP"
    assert introspect(idp, tokens.access_token)["cnf"] == {"jkt": key.thumbprint}
    assert client.userinfo(tokens, expected_sub=tokens.sub)["sub"] == "alice"


def test_refresh_needs_the_same_key(idp: IdP) -> None:
    """RFC 9449 §5: a public client's refresh token is bound to its key: the SDK with the
    key refreshes; another client instance with another key cannot."""
    client = Client(idp.url, PUBLIC, redirect_uri=REDIRECT, dpop_key=DPoPKey.generate())
    tokens, _ = login(client)
    refreshed = client.refresh(tokens.refresh_token or "", expected_sub=tokens.sub)
    assert refreshed.token_type == "DPoP"
    thief = Client(idp.url, PUBLIC, redirect_uri=REDIRECT, dpop_key=DPoPKey.generate())
    with pytest.raises(TokenError) as err:
        thief.refresh(refreshed.refresh_token or "")
    assert err.value.error == "invalid_dpop_proof"
    plain = Client(idp.url, PUBLIC, redirect_uri=REDIRECT)
    with pytest.raises(TokenError):
        plain.refresh(refreshed.refresh_token or "")


def test_client_credentials_with_a_key(idp: IdP) -> None:
    """RFC 9449 §5: a confidential client's client_credentials token is bound too."""
    key = DPoPKey.generate("EdDSA")
    client = Client(idp.url, CONFIDENTIAL, SECRET, dpop_key=key)
    tokens = client.client_credentials("api:read")
    assert tokens.token_type == "DPoP"
    assert introspect(idp, tokens.access_token)["cnf"] == {"jkt": key.thumbprint}


def test_a_bound_token_is_refused_without_the_key(idp: IdP) -> None:
    """RFC 9449 §7.2: userinfo refuses a bound token sent as Bearer (by a client without
    the key); the SDK will not send a TokenSet bound to a key it does not hold."""
    tokens, _ = login(Client(idp.url, PUBLIC, redirect_uri=REDIRECT,
                             dpop_key=DPoPKey.generate()))  # fmt: skip
    plain = Client(idp.url, PUBLIC, redirect_uri=REDIRECT)
    with pytest.raises(InvalidTokenError):
        plain.userinfo(tokens.access_token)
    with pytest.raises(ValueError, match="dpop_key"):
        plain.userinfo(tokens)


@pytest.fixture
def nonces(idp: IdP) -> Iterator[IdP]:
    idp.srv.dpop_nonces = True
    try:
        yield idp
    finally:
        idp.srv.dpop_nonces = False


def test_the_client_retries_with_the_servers_nonce(nonces: IdP) -> None:
    """RFC 9449 §8: the token endpoint answers use_dpop_nonce with a DPoP-Nonce, and the
    client sends the request once more with it; §8.2: the nonce of each answer is kept,
    so userinfo (§9) succeeds at once; when it has gone stale, userinfo asks again (401
    use_dpop_nonce) and the client retries once."""
    idp = nonces
    client = Client(idp.url, CONFIDENTIAL, SECRET, dpop_key=DPoPKey.generate())
    tokens = client.client_credentials("openid api:read")
    assert tokens.token_type == "DPoP"
    assert idp.wire.hits["/token"] == 2
    client = Client(idp.url, PUBLIC, redirect_uri=REDIRECT, dpop_key=DPoPKey.generate())
    idp.wire.hits.clear()
    tokens, _ = login(client)
    assert idp.wire.hits["/token"] == 2
    assert client.userinfo(tokens)["sub"] == "alice"
    assert idp.wire.hits["/userinfo"] == 1
    idp.clock.advance(6 * 60)
    client.clock = idp.clock  # the proofs' iat on the moved clock
    assert client.userinfo(tokens)["sub"] == "alice"
    assert idp.wire.hits["/userinfo"] == 3


###############################################################################
# The resource server: RFC 9449 §7 ############################################
###############################################################################


def notes_app(environ: dict, start_response) -> list[bytes]:
    token = environ["codeflow.token"]
    body = json.dumps({"sub": token.sub, "jkt": token.jkt}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


@pytest.fixture
def api(idp: IdP) -> Iterator[str]:
    """An API on 127.0.0.1 behind require_bearer: JWT access tokens checked locally,
    opaque ones introspected."""
    validator = BearerValidator(idp.url, audience=idp.url, introspection_client_id=INTROSPECTOR,
                                introspection_client_secret=INTROSPECTOR_SECRET)  # fmt: skip
    with serving(require_bearer(notes_app, validator)) as url:
        yield url + "/notes"


def bound_token(idp: IdP, key: ProofKey, client_id: str, secret: str) -> str:
    """A client_credentials token bound to ``key``, asked for over raw HTTP."""
    r = requests.post(idp.url + "/token", data={"grant_type": "client_credentials"},
                      auth=(client_id, secret), timeout=10,
                      headers={"DPoP": key.proof("POST", idp.url + "/token", time.time())})
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "DPoP"
    return r.json()["access_token"]


@pytest.fixture(params=["jwt", "opaque"])
def issued(request: pytest.FixtureRequest, idp: IdP) -> tuple[ProofKey, str]:
    key = ProofKey()
    if request.param == "jwt":
        return key, bound_token(idp, key, JWT_CLIENT, JWT_SECRET)
    return key, bound_token(idp, key, CONFIDENTIAL, SECRET)


def call(url: str, token: str, scheme: str = "DPoP", proof: str | None = None,
         method: str = "GET") -> requests.Response:  # fmt: skip
    headers = {"Authorization": f"{scheme} {token}"}
    if proof is not None:
        headers["DPoP"] = proof
    return requests.request(method, url, headers=headers, timeout=10)


def test_validator_accepts_a_bound_token_with_its_proof(
    api: str, issued: tuple[ProofKey, str]
) -> None:
    """RFC 9449 §7.1: "Authorization: DPoP <token>" and a proof with ath, htm, htu,
    signed by the key of the token's cnf.jkt (a JWT's claim, or introspection's)."""
    key, token = issued
    r = call(api, token, proof=key.proof("GET", api, time.time(), access_token=token))
    assert r.status_code == 200, r.text
    assert r.json()["jkt"] == key.jkt


def dpop_challenge(r: requests.Response, error: str) -> None:
    assert r.status_code == 401, r.text
    challenge = r.headers["WWW-Authenticate"]
    assert challenge.startswith("DPoP "), challenge
    assert f'error="{error}"' in challenge and "algs=" in challenge, challenge


def test_validator_refuses_a_bound_token_as_bearer(api: str, issued: tuple[ProofKey, str]) -> None:
    """RFC 9449 §7.2: the token is DPoP-bound, so as a Bearer token it does not pass;
    the challenge is DPoP's."""
    _, token = issued
    dpop_challenge(call(api, token, "Bearer"), "invalid_token")


@pytest.mark.parametrize(
    "case",
    ["no proof", "no ath", "ath of another token", "htm POST", "htu elsewhere", "stale",
     "another key", "replayed"],
)  # fmt: skip
def test_validator_refuses_a_bad_proof(api: str, issued: tuple[ProofKey, str], case: str) -> None:
    """RFC 9449 §7.1 with §4.3's checks: 401 "WWW-Authenticate: DPoP
    error="invalid_dpop_proof"" for each; §11.1: a proof is good once."""
    key, token = issued
    now = time.time()
    proofs = {
        "no proof": None,
        "no ath": key.proof("GET", api, now),
        "ath of another token": key.proof("GET", api, now, access_token=token + "x"),
        "htm POST": key.proof("POST", api, now, access_token=token),
        "htu elsewhere": key.proof("GET", api + "/other", now, access_token=token),
        "stale": key.proof("GET", api, now - 300, access_token=token),
        "another key": ProofKey().proof("GET", api, now, access_token=token),
    }
    if case == "replayed":
        proof = key.proof("GET", api, now, access_token=token)
        assert call(api, token, proof=proof).status_code == 200
        dpop_challenge(call(api, token, proof=proof), "invalid_dpop_proof")
        return
    dpop_challenge(call(api, token, proof=proofs[case]), "invalid_dpop_proof")


def test_validator_refuses_a_bearer_token_sent_as_dpop(idp: IdP, api: str) -> None:
    """RFC 9449 §7.1: the DPoP scheme is for tokens bound to a key; a Bearer token comes
    as Bearer."""
    token = requests.post(idp.url + "/token", data={"grant_type": "client_credentials"},
                          auth=(CONFIDENTIAL, SECRET), timeout=10).json()["access_token"]
    key = ProofKey()
    dpop_challenge(call(api, token, proof=key.proof("GET", api, time.time(), access_token=token)),
                   "invalid_token")  # fmt: skip
    assert call(api, token, "Bearer").status_code == 200


def test_htu_behind_a_proxy_is_the_base_url(idp: IdP) -> None:
    """RFC 9449 §4.3 #9: behind a proxy the client signs the public URL; require_bearer's
    base_url says what it is, and a proof of the internal address fails."""
    validator = BearerValidator(idp.url, introspection_client_id=INTROSPECTOR,
                                introspection_client_secret=INTROSPECTOR_SECRET)  # fmt: skip
    app = require_bearer(notes_app, validator, base_url="https://api.example")
    key = ProofKey()
    token = bound_token(idp, key, CONFIDENTIAL, SECRET)
    with serving(app) as url:
        public = key.proof("GET", "https://api.example/notes", time.time(), access_token=token)
        assert call(url + "/notes", token, proof=public).status_code == 200
        internal = key.proof("GET", url + "/notes", time.time(), access_token=token)
        dpop_challenge(call(url + "/notes", token, proof=internal), "invalid_dpop_proof")


def test_sdk_client_calls_an_sdk_protected_api(idp: IdP, api: str) -> None:
    """Both ends of the SDK together: Client.request presents a bound token with a proof
    (RFC 9449 §7.1), BearerValidator checks it."""
    key = DPoPKey.generate("PS256")
    client = Client(idp.url, CONFIDENTIAL, SECRET, dpop_key=key)
    tokens = client.client_credentials("api:read")
    r = client.request("GET", api, tokens)
    assert r.status == 200, r.body
    assert json.loads(r.body)["jkt"] == key.thumbprint


def test_bottle_plugin_checks_dpop_too(idp: IdP) -> None:
    """RFC 9449 §7.1, §7.2 through BottleBearer: the same checks as require_bearer, and
    the callback gets the AccessToken with its jkt."""
    import bottle
    from codeflow_sdk import BottleBearer

    validator = BearerValidator(idp.url, introspection_client_id=INTROSPECTOR,
                                introspection_client_secret=INTROSPECTOR_SECRET)  # fmt: skip
    app = bottle.Bottle()
    app.install(BottleBearer(validator))

    @app.get("/notes")
    def notes(token) -> dict:  # type: ignore[no-untyped-def]
        return {"jkt": token.jkt}

    key = ProofKey()
    token = bound_token(idp, key, CONFIDENTIAL, SECRET)
    with serving(app) as url:
        proof = key.proof("GET", url + "/notes", time.time(), access_token=token)
        r = call(url + "/notes", token, proof=proof)
        assert r.status_code == 200 and r.json() == {"jkt": key.jkt}, r.text
        dpop_challenge(call(url + "/notes", token, "Bearer"), "invalid_token")
