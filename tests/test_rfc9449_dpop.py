"""RFC 9449 (DPoP): proofs checked at the token endpoint (§4.3, §5), tokens bound to the
key (§5, §6: token_type DPoP, cnf.jkt in JWT access tokens and introspection), refresh
tokens of public clients bound too (§5), per-client dpop_bound_access_tokens (§5.2),
server nonces (§8), the authorization code bound with dpop_jkt (§10), userinfo as a
DPoP-protected resource (§7), replay across processes sharing storage (§11.1) and
discovery (§5.1).

Proofs are made by tests/dpop_helpers.py with PyJWT and cryptography, never by codeflow.
In-process through wsgiref.validate with the test clock, except where noted.
"""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from conftest import (
    CONFIDENTIAL,
    ISSUER,
    PUBLIC,
    REDIRECT,
    SECRET,
    USERNAME,
    Clock,
    make_server,
    new_flow,
    query_of,
)
from dpop_helpers import DPoPKey, b64url, thumbprint
from wsgi_client import Response, WSGIClient, basic

import codeflow

TOKEN_URL = ISSUER + "/token"
USERINFO_URL = ISSUER + "/userinfo"
BOUND = "bound-app"  # a confidential client with dpop_bound_access_tokens


@pytest.fixture
def srv(clock: Clock) -> codeflow.Server:
    srv = make_server(clock, auto_approve=USERNAME)
    srv.add_client(BOUND, client_secret=SECRET, redirect_uris=[REDIRECT],
                   grant_types=["authorization_code", "refresh_token", "client_credentials"],
                   dpop_bound_access_tokens=True)  # fmt: skip
    return srv


@pytest.fixture
def wc(srv: codeflow.Server) -> WSGIClient:
    return WSGIClient(srv.wsgi)


@pytest.fixture
def key() -> DPoPKey:
    return DPoPKey()


def code_request(
    wc: WSGIClient, client_id: str = PUBLIC, **authorize: str
) -> tuple[dict[str, str], dict[str, str] | None]:
    """An authorization code for ``client_id`` (auto-approved) and its token request:
    (form, headers)."""
    flow = new_flow(client_id, scope="openid offline_access", **authorize)
    r = wc.get("/authorize", params=flow.params)
    assert r.status == 302, r.text
    data = {"grant_type": "authorization_code", "code": query_of(r.location or "")["code"],
            "redirect_uri": REDIRECT, "code_verifier": flow.verifier}  # fmt: skip
    if client_id == PUBLIC:
        return {**data, "client_id": PUBLIC}, None
    return data, basic(client_id, SECRET)


def token(
    wc: WSGIClient, data: dict[str, str], headers: dict[str, str] | None, proof: str | None
) -> Response:
    extra = {"DPoP": proof} if proof else {}
    return wc.post("/token", data, headers={**(headers or {}), **extra})


def dpop_tokens(wc: WSGIClient, key: DPoPKey, clock: Clock, client_id: str = PUBLIC) -> dict:
    data, headers = code_request(wc, client_id)
    r = token(wc, data, headers, key.proof("POST", TOKEN_URL, clock.now))
    assert r.status == 200, r.text
    return r.json()


def introspect(wc: WSGIClient, value: str) -> dict[str, Any]:
    r = wc.post("/introspect", {"token": value}, headers=basic(CONFIDENTIAL, SECRET))
    assert r.status == 200, r.text
    return r.json()


def refresh(
    wc: WSGIClient, refresh_token: str, proof: str | None, client_id: str = PUBLIC
) -> Response:
    data = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if client_id == PUBLIC:
        return token(wc, {**data, "client_id": PUBLIC}, None, proof)
    return token(wc, data, basic(client_id, SECRET), proof)


def error_of(r: Response) -> tuple[int, str]:
    return r.status, r.json()["error"]


###############################################################################
# RFC 7638 §3.1: the thumbprint ##############################################
###############################################################################


def test_rfc7638_thumbprint_of_the_rfc_example_key() -> None:
    """RFC 7638 §3.1: the example RSA key's thumbprint is
    NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs."""
    n = ("0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tS"
         "oc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65Y"
         "GjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdk"
         "t-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqD"
         "Kgw")  # fmt: skip
    jwk = {"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert codeflow.jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    assert thumbprint(jwk) == codeflow.jwk_thumbprint(jwk)


###############################################################################
# RFC 9449 §5, §6: tokens bound at the token endpoint #########################
###############################################################################


def test_code_grant_with_a_proof_binds_the_access_token(
    wc: WSGIClient, key: DPoPKey, clock: Clock
) -> None:
    """RFC 9449 §5: "the authorization server ... binds the issued access token to the
    public key" and answers token_type DPoP; §6.2: introspection returns "token_type":
    "DPoP" and cnf with the key's jkt (RFC 7638 thumbprint)."""
    body = dpop_tokens(wc, key, clock)
    assert body["token_type"] == "DPoP"
    info = introspect(wc, body["access_token"])
    assert info["active"] is True
    assert (info["token_type"], info["cnf"]) == ("DPoP", {"jkt": key.jkt})


def test_without_a_proof_tokens_stay_bearer(wc: WSGIClient) -> None:
    """RFC 9449 §5: DPoP is the client's choice unless required; a request without a
    proof gets a Bearer token, and introspection shows no cnf."""
    data, headers = code_request(wc)
    r = token(wc, data, headers, None)
    assert r.status == 200, r.text
    assert r.json()["token_type"] == "Bearer"
    assert "cnf" not in introspect(wc, r.json()["access_token"])


def test_jwt_access_token_carries_cnf_jkt(
    srv: codeflow.Server, wc: WSGIClient, key: DPoPKey, clock: Clock
) -> None:
    """RFC 9449 §6.1: a JWT access token bound to a key has "cnf" with "jkt", the
    base64url SHA-256 thumbprint of the key (RFC 7638)."""
    srv.update_client(CONFIDENTIAL, access_token_jwt=True)
    body = dpop_tokens(wc, key, clock, CONFIDENTIAL)
    keys = {k["kid"]: jwt.PyJWK(k) for k in wc.get("/jwks").json()["keys"]}
    kid = jwt.get_unverified_header(body["access_token"])["kid"]
    claims = jwt.decode(body["access_token"], keys[kid].key, algorithms=["RS256"],
                        audience=srv.access_token_audience,
                        options={"verify_exp": False, "verify_iat": False})  # fmt: skip
    assert claims["cnf"] == {"jkt": key.jkt}
    assert body["token_type"] == "DPoP"


def test_server_issue_tokens_can_bind_to_a_key(
    srv: codeflow.Server, wc: WSGIClient, key: DPoPKey, clock: Clock
) -> None:
    """RFC 9449 §5, §6 for tests that mint tokens without a browser:
    Server.issue_tokens(dpop_jkt=...) gives what a token request with a proof would."""
    body = srv.issue_tokens(USERNAME, PUBLIC, "openid offline_access", dpop_jkt=key.jkt)
    assert body["token_type"] == "DPoP"
    assert introspect(wc, body["access_token"])["cnf"] == {"jkt": key.jkt}
    at = body["access_token"]
    ok = wc.get("/userinfo", headers={"Authorization": f"DPoP {at}", "DPoP": key.proof(
        "GET", USERINFO_URL, clock.now, access_token=at)})  # fmt: skip
    assert ok.status == 200, ok.text
    assert refresh(wc, body["refresh_token"], None).status == 400  # bound, as §5 says


def test_client_credentials_with_a_proof_is_bound(
    wc: WSGIClient, key: DPoPKey, clock: Clock
) -> None:
    """RFC 9449 §5: every grant of the token endpoint binds its access token to the
    proof's key; client_credentials too."""
    r = token(wc, {"grant_type": "client_credentials"}, basic(CONFIDENTIAL, SECRET),
              key.proof("POST", TOKEN_URL, clock.now))  # fmt: skip
    assert r.status == 200, r.text
    assert r.json()["token_type"] == "DPoP"
    assert introspect(wc, r.json()["access_token"])["cnf"] == {"jkt": key.jkt}


def test_public_clients_refresh_token_is_bound_to_the_key(
    wc: WSGIClient, key: DPoPKey, clock: Clock
) -> None:
    """RFC 9449 §5: "Refresh tokens issued to public clients ... MUST be bound to the
    DPoP public key"; the refresh request needs a proof of the same key; the new access
    token is bound again."""
    body = dpop_tokens(wc, key, clock)
    stolen = refresh(wc, body["refresh_token"], None)
    assert error_of(stolen) == (400, "invalid_dpop_proof"), stolen.text
    other = refresh(wc, body["refresh_token"], DPoPKey().proof("POST", TOKEN_URL, clock.now))
    assert error_of(other) == (400, "invalid_dpop_proof"), other.text
    r = refresh(wc, body["refresh_token"], key.proof("POST", TOKEN_URL, clock.now))
    assert r.status == 200, r.text
    assert r.json()["token_type"] == "DPoP"
    assert introspect(wc, r.json()["access_token"])["cnf"] == {"jkt": key.jkt}
    again = refresh(wc, r.json()["refresh_token"], key.proof("POST", TOKEN_URL, clock.now))
    assert again.status == 200, again.text


def test_confidential_clients_refresh_token_is_not_bound(
    wc: WSGIClient, key: DPoPKey, clock: Clock
) -> None:
    """RFC 9449 §5: "Refresh tokens issued to confidential clients ... are not bound to
    the DPoP proof's public key because they are already sender-constrained"; a refresh
    with a new key binds the new access token to it."""
    body = dpop_tokens(wc, key, clock, CONFIDENTIAL)
    other = DPoPKey()
    r = refresh(wc, body["refresh_token"], other.proof("POST", TOKEN_URL, clock.now), CONFIDENTIAL)
    assert r.status == 200, r.text
    assert introspect(wc, r.json()["access_token"])["cnf"] == {"jkt": other.jkt}


def test_dpop_bound_access_tokens_client_must_send_a_proof(
    wc: WSGIClient, key: DPoPKey, clock: Clock
) -> None:
    """RFC 9449 §5.2 dpop_bound_access_tokens: "If true, the authorization server MUST
    reject token requests from this client that do not contain the DPoP header"."""
    r = token(wc, {"grant_type": "client_credentials"}, basic(BOUND, SECRET), None)
    assert error_of(r) == (400, "invalid_dpop_proof"), r.text
    data, headers = code_request(wc, BOUND)
    assert error_of(token(wc, data, headers, None)) == (400, "invalid_dpop_proof")
    r = token(wc, {"grant_type": "client_credentials"}, basic(BOUND, SECRET),
              key.proof("POST", TOKEN_URL, clock.now))  # fmt: skip
    assert r.status == 200 and r.json()["token_type"] == "DPoP", r.text


def test_a_bad_proof_does_not_burn_the_code(wc: WSGIClient, key: DPoPKey, clock: Clock) -> None:
    """RFC 9449 §5: the proof is checked before the grant: a request with a bad proof is
    refused, and the code is still good for the client's next, correct request."""
    data, headers = code_request(wc)
    bad = token(wc, data, headers, key.proof("GET", TOKEN_URL, clock.now))
    assert error_of(bad) == (400, "invalid_dpop_proof"), bad.text
    assert token(wc, data, headers, key.proof("POST", TOKEN_URL, clock.now)).status == 200


###############################################################################
# RFC 9449 §4.3: checking a proof ############################################
###############################################################################


def forged_signature(proof: str) -> str:
    head, body, _ = proof.split(".")
    return f"{head}.{body}.{b64url(b'x' * 64)}"


def none_alg(key: DPoPKey, clock: Clock) -> str:
    head = {"typ": "dpop+jwt", "alg": "none", "jwk": key.jwk}
    body = {"jti": "j", "htm": "POST", "htu": TOKEN_URL, "iat": int(clock.now)}
    import json

    part = [b64url(json.dumps(x).encode()) for x in (head, body)]
    return f"{part[0]}.{part[1]}."


def unsigned(header: dict[str, Any], payload: Any) -> str:
    """A JWS with any header and payload, and a signature that verifies nothing."""
    import json

    return ".".join(b64url(json.dumps(x).encode()) for x in (header, payload)) + ".AAAA"


def x25519_jwk() -> dict[str, Any]:
    """RFC 8037 §2: an OKP key for key agreement (X25519), which signs nothing."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import x25519

    raw = x25519.X25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)  # fmt: skip
    return {"kty": "OKP", "crv": "X25519", "x": b64url(raw)}


BAD_PROOFS = {
    # §4.3 #2: a well-formed JWT
    "not a JWT": lambda k, c: "not-a-jwt",
    # §4.3 #1: "not more than one DPoP HTTP request header field" (joined by commas)
    "two proofs": lambda k, c: k.proof("POST", TOKEN_URL, c.now) + ","
    + k.proof("POST", TOKEN_URL, c.now),
    # §4.3 #4: typ dpop+jwt
    "typ JWT": lambda k, c: k.proof("POST", TOKEN_URL, c.now, header={"typ": "JWT"}),
    # §4.3 #5: "not none or an identifier for a symmetric algorithm"
    "alg none": none_alg,
    "alg HS256": lambda k, c: jwt.encode(
        {"jti": "j", "htm": "POST", "htu": TOKEN_URL, "iat": int(c.now)}, "k" * 32,
        algorithm="HS256", headers={"typ": "dpop+jwt", "jwk": k.jwk}),
    # §4.3 #6: the signature verifies with the jwk
    "bad signature": lambda k, c: forged_signature(k.proof("POST", TOKEN_URL, c.now)),
    "another key's jwk": lambda k, c: k.proof("POST", TOKEN_URL, c.now,
                                              header={"jwk": DPoPKey().jwk}),
    # §4.3 #7: the jwk does not contain a private key
    "private jwk": lambda k, c: k.proof("POST", TOKEN_URL, c.now, header={"jwk": k.private_jwk}),
    "no jwk": lambda k, c: k.proof("POST", TOKEN_URL, c.now, header={"jwk": None}),
    "X25519 jwk": lambda k, c: unsigned({"typ": "dpop+jwt", "alg": "EdDSA", "jwk": x25519_jwk()},
                                        {"jti": "j", "htm": "POST", "htu": TOKEN_URL}),
    "jwk off the curve": lambda k, c: unsigned(
        {"typ": "dpop+jwt", "alg": "ES256", "jwk": {**k.jwk, "x": "AAAA"}}, {"jti": "j"}),
    "jwk of another curve": lambda k, c: unsigned(
        {"typ": "dpop+jwt", "alg": "ES256", "jwk": {**k.jwk, "crv": "P-384"}}, {"jti": "j"}),
    "payload not an object": lambda k, c: unsigned(
        {"typ": "dpop+jwt", "alg": "ES256", "jwk": k.jwk}, [1, 2]),
    "alg a list": lambda k, c: unsigned({"typ": "dpop+jwt", "alg": ["ES256"], "jwk": k.jwk}, {}),
    # §4.3 #3: all required claims
    "no jti": lambda k, c: k.proof("POST", TOKEN_URL, c.now, claims={"jti": None}),
    "no iat": lambda k, c: k.proof("POST", TOKEN_URL, c.now, claims={"iat": None}),
    "no htu": lambda k, c: k.proof("POST", TOKEN_URL, c.now, claims={"htu": None}),
    # §4.3 #8: htm is the method
    "htm GET": lambda k, c: k.proof("GET", TOKEN_URL, c.now),
    "htm post": lambda k, c: k.proof("post", TOKEN_URL, c.now),
    # §4.3 #9: htu is the target URI
    "htu userinfo": lambda k, c: k.proof("POST", USERINFO_URL, c.now),
    "htu other host": lambda k, c: k.proof("POST", "http://127.0.0.2:8000/token", c.now),
    "htu https": lambda k, c: k.proof("POST", "https://127.0.0.1:8000/token", c.now),
    "htu not a URL": lambda k, c: k.proof("POST", "token", c.now),
    "htu a number": lambda k, c: k.proof("POST", TOKEN_URL, c.now, claims={"htu": 1}),
    # §4.3 #11: iat within the window
    "iat 2 min ago": lambda k, c: k.proof("POST", TOKEN_URL, c.now - 120),
    "iat 2 min ahead": lambda k, c: k.proof("POST", TOKEN_URL, c.now + 120),
    "iat a string": lambda k, c: k.proof("POST", TOKEN_URL, c.now, claims={"iat": "now"}),
}


@pytest.mark.parametrize("case", list(BAD_PROOFS))
def test_a_bad_proof_is_invalid_dpop_proof(
    wc: WSGIClient, key: DPoPKey, clock: Clock, case: str
) -> None:
    """RFC 9449 §4.3: each check of a proof, and §5: "If the DPoP proof is invalid, the
    authorization server issues an error response per Section 5.2 of [RFC6749] with
    invalid_dpop_proof as the value of the error parameter"; never a 5xx."""
    r = token(wc, {"grant_type": "client_credentials"}, basic(CONFIDENTIAL, SECRET),
              BAD_PROOFS[case](key, clock))  # fmt: skip
    assert error_of(r) == (400, "invalid_dpop_proof"), r.text


@pytest.mark.parametrize(
    "htu",
    [
        TOKEN_URL + "?x=1",  # §4.3 #9: "ignoring any query and fragment parts"
        TOKEN_URL + "#f",
        "HTTP://127.0.0.1:8000/token",  # RFC 3986 §6.2.2.1: scheme and host are case-insensitive
        "http://127.0.0.1:8000/%74oken",  # §6.2.2.2: percent-encoded unreserved characters
    ],
)
def test_htu_is_compared_normalized(wc: WSGIClient, key: DPoPKey, clock: Clock, htu: str) -> None:
    """RFC 9449 §4.3 #9: "the htu claim matches the HTTP URI value for the HTTP request in
    which the JWT was received, ignoring any query and fragment parts"; §4.3: "To reduce
    the likelihood of false negatives, servers SHOULD employ syntax-based normalization
    (Section 6.2.2 of [RFC3986]) and scheme-based normalization (Section 6.2.3)"."""
    r = token(wc, {"grant_type": "client_credentials"}, basic(CONFIDENTIAL, SECRET),
              key.proof("POST", htu, clock.now))  # fmt: skip
    assert r.status == 200, r.text


def test_default_port_is_normalized(clock: Clock, key: DPoPKey) -> None:
    """RFC 3986 §6.2.3: "http://example.com:80/" is "http://example.com/"; RFC 9449 §4.3
    asks for scheme-based normalization."""
    srv = make_server(clock)
    srv.issuer = "https://idp.example"
    wc = WSGIClient(srv.wsgi, host="idp.example", scheme="https")
    for htu in ("https://idp.example/token", "https://IDP.example:443/token"):
        r = token(wc, {"grant_type": "client_credentials"}, basic(CONFIDENTIAL, SECRET),
                  key.proof("POST", htu, clock.now))  # fmt: skip
        assert r.status == 200, (htu, r.text)


@pytest.mark.parametrize("alg", list(codeflow.CLIENT_KEY_ALGS))
def test_every_advertised_alg_is_accepted(
    wc: WSGIClient, clock: Clock, alg: str
) -> None:
    """RFC 9449 §5.1 dpop_signing_alg_values_supported: "A JSON array containing a list
    of the JWS alg values ... supported by the authorization server for DPoP proof JWTs";
    each one listed works."""
    metadata = wc.get("/.well-known/oauth-authorization-server").json()
    assert alg in metadata["dpop_signing_alg_values_supported"]
    key = DPoPKey(alg)
    r = token(wc, {"grant_type": "client_credentials"}, basic(CONFIDENTIAL, SECRET),
              key.proof("POST", TOKEN_URL, clock.now))  # fmt: skip
    assert r.status == 200, r.text
    assert introspect(wc, r.json()["access_token"])["cnf"] == {"jkt": key.jkt}


def test_discovery_lists_exactly_the_asymmetric_algs(wc: WSGIClient) -> None:
    """RFC 9449 §5.1: dpop_signing_alg_values_supported; §4.3 #5: no none, no symmetric
    algorithm."""
    for path in ("/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"):
        listed = wc.get(path).json()["dpop_signing_alg_values_supported"]
        assert listed == list(codeflow.CLIENT_KEY_ALGS)
        assert not {"none", "HS256", "HS384", "HS512"} & set(listed)


def test_a_proof_is_good_once(wc: WSGIClient, key: DPoPKey, clock: Clock) -> None:
    """RFC 9449 §11.1: "the server MUST ensure that ... the same proof ... is not
    accepted twice" within its window (jti kept as long as the proof would be accepted)."""
    proof = key.proof("POST", TOKEN_URL, clock.now)
    data = {"grant_type": "client_credentials"}
    assert token(wc, data, basic(CONFIDENTIAL, SECRET), proof).status == 200
    replay = token(wc, data, basic(CONFIDENTIAL, SECRET), proof)
    assert error_of(replay) == (400, "invalid_dpop_proof"), replay.text
    clock.advance(30)
    assert token(wc, data, basic(CONFIDENTIAL, SECRET), proof).status == 400


def test_replay_is_refused_by_another_process_sharing_the_store(
    tmp_path, key: DPoPKey, clock: Clock
) -> None:
    """RFC 9449 §11.1 and DESIGN "Storage contract": the used DPoP proofs live in storage,
    so a proof accepted by one server is refused by another one on the same SQLite file."""
    from codeflow_storage.sqlite import SQLiteStorage

    path = tmp_path / "shared.db"
    with SQLiteStorage(path) as one, SQLiteStorage(path) as two:
        first = make_server(clock, storage=one)
        second = codeflow.Server(issuer=ISSUER, clock=clock, storage=two)
        proof = key.proof("POST", TOKEN_URL, clock.now)
        data = {"grant_type": "client_credentials"}
        r = token(WSGIClient(first.wsgi), data, basic(CONFIDENTIAL, SECRET), proof)
        assert r.status == 200, r.text
        replay = token(WSGIClient(second.wsgi), data, basic(CONFIDENTIAL, SECRET), proof)
        assert error_of(replay) == (400, "invalid_dpop_proof"), replay.text


def test_a_wrong_client_reaches_no_proof_check(wc: WSGIClient, key: DPoPKey, clock: Clock) -> None:
    """RFC 6749 §5.2: client authentication comes first; a request that fails it is
    invalid_client, and its proof is not spent (the client may send it again, right)."""
    proof = key.proof("POST", TOKEN_URL, clock.now)
    data = {"grant_type": "client_credentials"}
    wrong = token(wc, data, basic(CONFIDENTIAL, "wrong"), proof)
    assert error_of(wrong) == (401, "invalid_client")
    assert token(wc, data, basic(CONFIDENTIAL, SECRET), proof).status == 200


###############################################################################
# RFC 9449 §8: nonces #########################################################
###############################################################################


def test_nonces_are_off_by_default(wc: WSGIClient, key: DPoPKey, clock: Clock) -> None:
    """RFC 9449 §8: a server "MAY" ask for nonces; codeflow does not unless configured
    (see README "Sender-constrained tokens"), and says none in its answers."""
    r = token(wc, {"grant_type": "client_credentials"}, basic(CONFIDENTIAL, SECRET),
              key.proof("POST", TOKEN_URL, clock.now))  # fmt: skip
    assert r.status == 200, r.text
    assert "dpop-nonce" not in r.headers


def test_server_nonce_flow(clock: Clock, key: DPoPKey) -> None:
    """RFC 9449 §8: a proof without the server's nonce gets 400 use_dpop_nonce with
    DPoP-Nonce; the client retries with it; §8.2: answers carry a fresh nonce; an old
    nonce (past its lifetime) is refused the same way, with a new one."""
    srv = make_server(clock, dpop_nonces=True)
    wc = WSGIClient(srv.wsgi)
    data, auth = {"grant_type": "client_credentials"}, basic(CONFIDENTIAL, SECRET)
    first = token(wc, data, auth, key.proof("POST", TOKEN_URL, clock.now))
    assert error_of(first) == (400, "use_dpop_nonce"), first.text
    nonce = first.headers["dpop-nonce"]
    assert all(0x21 <= ord(c) <= 0x7E and c not in '"\\' for c in nonce)  # §8.1 NQCHAR
    r = token(wc, data, auth, key.proof("POST", TOKEN_URL, clock.now, nonce=nonce))
    assert r.status == 200, r.text
    assert r.headers["dpop-nonce"]
    forged = token(wc, data, auth, key.proof("POST", TOKEN_URL, clock.now, nonce="made-up"))
    assert error_of(forged) == (400, "use_dpop_nonce")
    clock.advance(codeflow.DPOP_NONCE_LIFETIME + 1)
    stale = token(wc, data, auth, key.proof("POST", TOKEN_URL, clock.now, nonce=nonce))
    assert error_of(stale) == (400, "use_dpop_nonce"), stale.text
    assert stale.headers["dpop-nonce"] != nonce


###############################################################################
# RFC 9449 §10: the code bound to a key at the authorization endpoint ########
###############################################################################


def test_dpop_jkt_binds_the_code_to_the_key(wc: WSGIClient, key: DPoPKey, clock: Clock) -> None:
    """RFC 9449 §10: with dpop_jkt in the authorization request, "the authorization server
    MUST ensure that the JWK thumbprint of the proof-of-possession public key used when
    redeeming the authorization code matches the dpop_jkt value"."""
    data, headers = code_request(wc, dpop_jkt=key.jkt)
    other = token(wc, data, headers, DPoPKey().proof("POST", TOKEN_URL, clock.now))
    assert error_of(other) == (400, "invalid_dpop_proof"), other.text
    data, headers = code_request(wc, dpop_jkt=key.jkt)
    assert error_of(token(wc, data, headers, None)) == (400, "invalid_dpop_proof")
    data, headers = code_request(wc, dpop_jkt=key.jkt)
    r = token(wc, data, headers, key.proof("POST", TOKEN_URL, clock.now))
    assert r.status == 200 and r.json()["token_type"] == "DPoP", r.text


@pytest.mark.parametrize("value", ["short", "x" * 44, "a+b/c=" + "x" * 37])
def test_a_malformed_dpop_jkt_is_refused(wc: WSGIClient, value: str) -> None:
    """RFC 9449 §10: dpop_jkt is "the JWK SHA-256 Thumbprint", 43 base64url characters;
    anything else is refused (invalid_request back to the client)."""
    r = wc.get("/authorize", params=new_flow(PUBLIC, dpop_jkt=value).params)
    assert r.status == 302, r.text
    assert query_of(r.location or "")["error"] == "invalid_request"


###############################################################################
# RFC 9449 §7: userinfo, a DPoP-protected resource ###########################
###############################################################################


def userinfo(wc: WSGIClient, access_token: str, scheme: str, proof: str | None) -> Response:
    headers = {"Authorization": f"{scheme} {access_token}"}
    if proof is not None:
        headers["DPoP"] = proof
    return wc.get("/userinfo", headers=headers)


def test_userinfo_takes_a_bound_token_with_a_proof(
    wc: WSGIClient, key: DPoPKey, clock: Clock
) -> None:
    """RFC 9449 §7.1: the token in "Authorization: DPoP", a proof with htm, htu and
    "ath" (the hash of the token), signed by the key the token is bound to."""
    at = dpop_tokens(wc, key, clock)["access_token"]
    r = userinfo(wc, at, "DPoP", key.proof("GET", USERINFO_URL, clock.now, access_token=at))
    assert r.status == 200, r.text
    assert r.json()["sub"] == USERNAME


def dpop_challenge(r: Response) -> str:
    assert r.status == 401, r.text
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("DPoP "), challenge
    assert "algs=" in challenge
    return challenge


def test_userinfo_refuses_a_bound_token_as_bearer(
    wc: WSGIClient, key: DPoPKey, clock: Clock
) -> None:
    """RFC 9449 §7.2: a protected resource "MUST NOT grant access" for a DPoP-bound token
    presented as a Bearer token; the answer is a DPoP challenge (§7.1)."""
    at = dpop_tokens(wc, key, clock)["access_token"]
    assert 'error="invalid_token"' in dpop_challenge(userinfo(wc, at, "Bearer", None))
    with_proof = userinfo(wc, at, "Bearer", key.proof("GET", USERINFO_URL, clock.now,
                                                      access_token=at))  # fmt: skip
    assert 'error="invalid_token"' in dpop_challenge(with_proof)


PROOF_PROBLEMS = {
    "no proof": lambda k, c, at: None,
    "no ath": lambda k, c, at: k.proof("GET", USERINFO_URL, c.now),
    "ath of another token": lambda k, c, at: k.proof("GET", USERINFO_URL, c.now,
                                                     access_token=at + "x"),
    "htm POST": lambda k, c, at: k.proof("POST", USERINFO_URL, c.now, access_token=at),
    "htu token endpoint": lambda k, c, at: k.proof("GET", TOKEN_URL, c.now, access_token=at),
    "stale": lambda k, c, at: k.proof("GET", USERINFO_URL, c.now - 600, access_token=at),
}


@pytest.mark.parametrize("case", list(PROOF_PROBLEMS))
def test_userinfo_refuses_a_bad_proof(
    wc: WSGIClient, key: DPoPKey, clock: Clock, case: str
) -> None:
    """RFC 9449 §7.1: the resource server checks the proof as §4.3 says, ath included
    (§4.3 #12); a failure is 401 with "WWW-Authenticate: DPoP error="invalid_dpop_proof""."""
    at = dpop_tokens(wc, key, clock)["access_token"]
    r = userinfo(wc, at, "DPoP", PROOF_PROBLEMS[case](key, clock, at))
    assert 'error="invalid_dpop_proof"' in dpop_challenge(r)


def test_userinfo_refuses_another_keys_proof(wc: WSGIClient, key: DPoPKey, clock: Clock) -> None:
    """RFC 9449 §7.1, §4.3 #12: "the public key ... matches the public key to which the
    access token is bound": a thief's own key does not do."""
    at = dpop_tokens(wc, key, clock)["access_token"]
    thief = DPoPKey()
    r = userinfo(wc, at, "DPoP", thief.proof("GET", USERINFO_URL, clock.now, access_token=at))
    assert 'error="invalid_token"' in dpop_challenge(r)


def test_userinfo_refuses_a_bearer_token_sent_as_dpop(
    wc: WSGIClient, key: DPoPKey, clock: Clock
) -> None:
    """RFC 9449 §7.1: a DPoP proof proves possession of the key the token is bound to; a
    token bound to none cannot be presented with the DPoP scheme."""
    data, headers = code_request(wc)
    at = token(wc, data, headers, None).json()["access_token"]
    r = userinfo(wc, at, "DPoP", key.proof("GET", USERINFO_URL, clock.now, access_token=at))
    assert 'error="invalid_token"' in dpop_challenge(r)
    assert userinfo(wc, at, "Bearer", None).status == 200


def test_userinfo_asks_for_a_nonce_when_the_server_does(clock: Clock, key: DPoPKey) -> None:
    """RFC 9449 §9: a resource server asks for a nonce with 401, "WWW-Authenticate: DPoP
    error="use_dpop_nonce"" and DPoP-Nonce; the retry with it succeeds."""
    srv = make_server(clock, dpop_nonces=True, auto_approve=USERNAME)
    wc = WSGIClient(srv.wsgi)
    data, headers = code_request(wc)
    first = token(wc, data, headers, key.proof("POST", TOKEN_URL, clock.now))
    nonce = first.headers["dpop-nonce"]
    r = token(wc, data, headers, key.proof("POST", TOKEN_URL, clock.now, nonce=nonce))
    at, nonce = r.json()["access_token"], r.headers["dpop-nonce"]
    asked = userinfo(wc, at, "DPoP", key.proof("GET", USERINFO_URL, clock.now, access_token=at))
    assert 'error="use_dpop_nonce"' in dpop_challenge(asked)
    nonce = asked.headers["dpop-nonce"]
    r = userinfo(wc, at, "DPoP", key.proof("GET", USERINFO_URL, clock.now, access_token=at,
                                           nonce=nonce))  # fmt: skip
    assert r.status == 200, r.text


###############################################################################
# htu behind proxies and on the internal URL #################################
###############################################################################


def test_htu_behind_a_trusted_proxy_is_the_public_url(clock: Clock, key: DPoPKey) -> None:
    """RFC 9449 §4.3 #9: htu is the URI the client sent the request to: behind a reverse
    proxy, the public one the issuer (and discovery's token_endpoint) names, not the
    address the proxy forwards to."""
    srv = make_server(clock, trusted_proxies=["10.0.0.0/8"])
    srv.issuer = "https://idp.example"
    wc = WSGIClient(srv.wsgi, remote_addr="10.0.0.2", host="backend:8000")
    forwarded = {"X-Forwarded-For": "192.0.2.7", "X-Forwarded-Proto": "https"}
    data = {"grant_type": "client_credentials"}
    for htu, status in (("https://idp.example/token", 200), ("http://backend:8000/token", 400)):
        proof = {"DPoP": key.proof("POST", htu, clock.now)}
        r = wc.post("/token", data, headers={**basic(CONFIDENTIAL, SECRET), **forwarded, **proof})
        assert r.status == status, (htu, r.text)


def test_htu_on_the_internal_url(clock: Clock, key: DPoPKey) -> None:
    """RFC 9449 §4.3 #9 with ``internal_url``: a back-channel client reaching the token
    endpoint there (as discovery fetched there lists it) signs that URL."""
    srv = make_server(clock, internal_url="http://idp.internal:8000")
    srv.issuer = "https://idp.example"
    wc = WSGIClient(srv.wsgi, host="idp.internal:8000")
    token_endpoint = wc.get("/.well-known/openid-configuration").json()["token_endpoint"]
    assert token_endpoint == "http://idp.internal:8000/token"
    r = token(wc, {"grant_type": "client_credentials"}, basic(CONFIDENTIAL, SECRET),
              key.proof("POST", token_endpoint, clock.now))  # fmt: skip
    assert r.status == 200, r.text


###############################################################################
# Over real HTTP ##############################################################
###############################################################################


def test_dpop_over_http_with_cors(live: tuple[codeflow.Server, str]) -> None:
    """RFC 9449 over a real socket (waitress or the stdlib server on 127.0.0.1), and
    Fetch §3.2: a browser app may send the DPoP header (preflight) and read DPoP-Nonce."""
    import time

    import requests

    srv, url = live
    srv.update_client(CONFIDENTIAL, allowed_origins=["http://127.0.0.1:5173"])
    pre = requests.options(url + "/token", headers={
        "Origin": "http://127.0.0.1:5173", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "dpop"}, timeout=10)  # fmt: skip
    assert "dpop" in pre.headers["access-control-allow-headers"].lower()
    key = DPoPKey()
    r = requests.post(url + "/token", data={"grant_type": "client_credentials"},
                      auth=(CONFIDENTIAL, SECRET),
                      headers={"DPoP": key.proof("POST", url + "/token", time.time()),
                               "Origin": "http://127.0.0.1:5173"}, timeout=10)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["token_type"] == "DPoP"
    assert r.headers["access-control-allow-origin"] == "http://127.0.0.1:5173"
    assert "dpop-nonce" in r.headers["access-control-expose-headers"].lower()


###############################################################################
# Configuration: the config file and the CLI ##################################
###############################################################################


def test_config_file_declares_dpop_bound_clients(tmp_path, clock: Clock, key: DPoPKey) -> None:
    """RFC 9449 §5.2 dpop_bound_access_tokens from a ``[[clients]]`` entry of the config
    file: the declared client's token requests need a proof."""
    srv = codeflow.Server(issuer=ISSUER, clock=clock)
    codeflow.load_config(srv, {"clients": [{
        "client_id": "declared", "client_secret": SECRET, "grant_types": ["client_credentials"],
        "dpop_bound_access_tokens": True}]})  # fmt: skip
    wc = WSGIClient(srv.wsgi)
    auth = basic("declared", SECRET)
    r = token(wc, {"grant_type": "client_credentials"}, auth, None)
    assert error_of(r) == (400, "invalid_dpop_proof"), r.text
    r = token(wc, {"grant_type": "client_credentials"}, auth, key.proof("POST", TOKEN_URL,
                                                                          clock.now))  # fmt: skip
    assert r.status == 200, r.text
    with pytest.raises(ValueError, match="dpop_bound_access_tokens must be true or false"):
        codeflow.load_config(srv, {"clients": [{"client_id": "x",
                                                "dpop_bound_access_tokens": "yes"}]})  # fmt: skip


def test_cli_client_add_dpop_bound(tmp_path) -> None:
    """``codeflow client add --dpop-bound-access-tokens`` stores RFC 9449 §5.2's setting;
    ``client update --no-dpop-bound-access-tokens`` clears it."""
    from codeflow_storage.sqlite import SQLiteStorage

    db = str(tmp_path / "cli.db")
    assert codeflow.main(["client", "add", "machine", "--storage", db, "--grant-type",
                          "client_credentials", "--dpop-bound-access-tokens"]) == 0  # fmt: skip
    with SQLiteStorage(db) as store:
        assert store.get_client("machine").dpop_bound_access_tokens is True
    codeflow.main(["client", "update", "machine", "--storage", db,
                   "--no-dpop-bound-access-tokens"])  # fmt: skip
    with SQLiteStorage(db) as store:
        assert store.get_client("machine").dpop_bound_access_tokens is False


###############################################################################
# Other grants: device authorization (RFC 8628), token exchange (RFC 8693) ###
###############################################################################


def test_device_code_grant_with_a_proof_is_bound(
    srv: codeflow.Server, wc: WSGIClient, key: DPoPKey, clock: Clock
) -> None:
    """RFC 9449 §5 for RFC 8628 §3.4: the device's token request carries a proof, and the
    tokens are bound to its key (a public client's refresh token too)."""
    srv.add_client("tv", grant_types=[codeflow.DEVICE_CODE_GRANT, "refresh_token"],
                   scopes=["openid", "offline_access"])  # fmt: skip
    r = wc.post("/device_authorization", {"client_id": "tv", "scope": "openid offline_access"})
    assert r.status == 200, r.text
    data = {"grant_type": codeflow.DEVICE_CODE_GRANT, "device_code": r.json()["device_code"],
            "client_id": "tv"}  # fmt: skip
    r = token(wc, data, None, key.proof("POST", TOKEN_URL, clock.now))
    assert r.status == 200 and r.json()["token_type"] == "DPoP", r.text
    assert introspect(wc, r.json()["access_token"])["cnf"] == {"jkt": key.jkt}
    stolen = token(wc, {"grant_type": "refresh_token", "refresh_token": r.json()["refresh_token"],
                        "client_id": "tv"}, None, None)  # fmt: skip
    assert error_of(stolen) == (400, "invalid_dpop_proof")


def test_a_proof_at_the_par_endpoint_binds_the_code(
    wc: WSGIClient, key: DPoPKey, clock: Clock
) -> None:
    """RFC 9449 §10.1: a DPoP proof sent with the pushed authorization request (RFC 9126)
    binds the code to its key, as dpop_jkt would: redeemed with another key it is
    refused; a dpop_jkt that is not the proof's key is invalid_dpop_proof at once."""
    par_url = ISSUER + "/par"

    def pushed_code(proof: str, **extra: str) -> dict[str, str]:
        flow = new_flow(PUBLIC, scope="openid", **extra)
        r = wc.post("/par", flow.params, headers={"DPoP": proof})
        assert r.status == 201, r.text
        auth = wc.get("/authorize", params={"client_id": PUBLIC,
                                            "request_uri": r.json()["request_uri"]})  # fmt: skip
        code = query_of(auth.location or "")["code"]
        return {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
                "code_verifier": flow.verifier, "client_id": PUBLIC}  # fmt: skip

    data = pushed_code(key.proof("POST", par_url, clock.now))
    other = token(wc, data, None, DPoPKey().proof("POST", TOKEN_URL, clock.now))
    assert error_of(other) == (400, "invalid_dpop_proof"), other.text
    data = pushed_code(key.proof("POST", par_url, clock.now))
    r = token(wc, data, None, key.proof("POST", TOKEN_URL, clock.now))
    assert r.status == 200 and r.json()["token_type"] == "DPoP", r.text
    flow = new_flow(PUBLIC, dpop_jkt=DPoPKey().jkt)
    mismatch = wc.post("/par", flow.params, headers={"DPoP": key.proof("POST", par_url, clock.now)})
    assert error_of(mismatch) == (400, "invalid_dpop_proof"), mismatch.text
    wrong_htu = wc.post("/par", new_flow(PUBLIC).params,
                        headers={"DPoP": key.proof("POST", TOKEN_URL, clock.now)})  # fmt: skip
    assert error_of(wrong_htu) == (400, "invalid_dpop_proof"), wrong_htu.text
