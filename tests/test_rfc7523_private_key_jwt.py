"""private_key_jwt: RFC 7523 §2.2 (client authentication with a JWT), §3 (its claims) and
OpenID Connect Core §9, at the token, introspection and revocation endpoints; clients
registered with a JWK Set (inline: Server.add_client, the config file, the CLI; or at a
jwks_uri, fetched by the one hardened outbound fetch);
discovery (RFC 8414 §2 token_endpoint_auth_methods_supported and the signing algs).

Assertions are signed here with PyJWT and keys from cryptography, never by codeflow.
In-process through wsgiref.validate with the test clock.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from conftest import (
    CONFIDENTIAL,
    ISSUER,
    REDIRECT,
    SECRET,
    USERNAME,
    Clock,
    make_server,
    new_flow,
    query_of,
)
from document_hosts import DocumentHost, document_host, json_body
from dpop_helpers import DPoPKey
from wsgi_client import Response, WSGIClient, basic

import codeflow

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
KEYED = "keyed-app"
TOKEN_URL = ISSUER + "/token"


class ClientKeys:
    """A client's key pairs (one per alg it signs with), and its public JWK Set."""

    def __init__(self, *algs: str) -> None:
        self.keys = {alg: DPoPKey(alg) for alg in algs}
        self.jwks = {"keys": [{**k.jwk, "kid": f"k-{alg}", "use": "sig"}
                              for alg, k in self.keys.items()]}  # fmt: skip

    def sign(
        self, alg: str = "ES256", *, client_id: str = KEYED, header: dict | None = None,
        now: float, **claims: Any,
    ) -> str:  # fmt: skip
        """RFC 7523 §3: iss, sub, aud, exp, jti (and iat); ``claims`` override (None: omit)."""
        body: dict[str, Any] = {"iss": client_id, "sub": client_id, "aud": ISSUER,
                                "exp": int(now) + 60, "iat": int(now),
                                "jti": secrets.token_urlsafe(12)}  # fmt: skip
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        headers = {"kid": f"k-{alg}", **(header or {})}
        return jwt.encode(body, self.keys[alg].private, algorithm=alg, headers=headers)


ALGS = list(codeflow.CLIENT_KEY_ALGS)


@pytest.fixture(scope="module")
def keys() -> ClientKeys:
    return ClientKeys(*ALGS)


@pytest.fixture
def srv(clock: Clock, keys: ClientKeys) -> codeflow.Server:
    srv = make_server(clock, auto_approve=USERNAME)
    srv.add_client(KEYED, jwks=keys.jwks, redirect_uris=[REDIRECT],
                   grant_types=["authorization_code", "refresh_token", "client_credentials"],
                   scopes=["openid", "offline_access", "api:read"])  # fmt: skip
    return srv


@pytest.fixture
def wc(srv: codeflow.Server) -> WSGIClient:
    return WSGIClient(srv.wsgi)


def authenticated(assertion: str, **fields: str) -> dict[str, str]:
    return {"client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion, **fields}


def client_credentials(wc: WSGIClient, assertion: str, **fields: str) -> Response:
    data = {"grant_type": "client_credentials", **authenticated(assertion, **fields)}
    return wc.post("/token", data)


def error_of(r: Response) -> tuple[int, str]:
    return r.status, r.json()["error"]


###############################################################################
# RFC 7523 §2.2: authenticating with an assertion ############################
###############################################################################


@pytest.mark.parametrize("alg", ALGS)
def test_each_advertised_alg_authenticates(
    wc: WSGIClient, keys: ClientKeys, clock: Clock, alg: str
) -> None:
    """RFC 7523 §2.2: client_assertion_type and client_assertion authenticate the client;
    RFC 8414 §2 token_endpoint_auth_signing_alg_values_supported lists the algs "supported
    by the token endpoint for the signature on the JWT": each one works."""
    metadata = wc.get("/.well-known/oauth-authorization-server").json()
    assert "private_key_jwt" in metadata["token_endpoint_auth_methods_supported"]
    assert alg in metadata["token_endpoint_auth_signing_alg_values_supported"]
    r = client_credentials(wc, keys.sign(alg, now=clock.now))
    assert r.status == 200, r.text
    assert r.json()["token_type"] == "Bearer"


def test_code_flow_with_private_key_jwt(wc: WSGIClient, keys: ClientKeys, clock: Clock) -> None:
    """RFC 7523 §2.2 with RFC 6749 §4.1.3: the code is redeemed with an assertion instead
    of a secret; the refresh too (§6). A client with keys is confidential: it gets a
    refresh token and may use client_credentials."""
    flow = new_flow(KEYED, scope="openid offline_access")
    code = query_of(wc.get("/authorize", params=flow.params).location or "")["code"]
    r = wc.post("/token", {"grant_type": "authorization_code", "code": code,
                           "redirect_uri": REDIRECT, "code_verifier": flow.verifier,
                           **authenticated(keys.sign(now=clock.now))})  # fmt: skip
    assert r.status == 200, r.text
    body = r.json()
    assert {"access_token", "refresh_token", "id_token"} <= body.keys()
    r = wc.post("/token", {"grant_type": "refresh_token", "refresh_token": body["refresh_token"],
                           **authenticated(keys.sign("PS256", now=clock.now),
                                           client_id=KEYED)})  # fmt: skip
    assert r.status == 200, r.text


def test_introspection_and_revocation_take_private_key_jwt(
    srv: codeflow.Server, wc: WSGIClient, keys: ClientKeys, clock: Clock
) -> None:
    """RFC 7662 §2.1 and RFC 7009 §2.1 authenticate the client as the token endpoint
    does; discovery lists private_key_jwt for both (RFC 8414 §2)."""
    metadata = wc.get("/.well-known/oauth-authorization-server").json()
    assert "private_key_jwt" in metadata["introspection_endpoint_auth_methods_supported"]
    assert "private_key_jwt" in metadata["revocation_endpoint_auth_methods_supported"]
    token = client_credentials(wc, keys.sign(now=clock.now)).json()["access_token"]
    r = wc.post("/introspect", {"token": token, **authenticated(keys.sign(now=clock.now))})
    assert r.status == 200 and r.json()["active"] is True, r.text
    assert r.json()["client_id"] == KEYED
    r = wc.post("/revoke", {"token": token, **authenticated(keys.sign("EdDSA", now=clock.now))})
    assert r.status == 200, r.text
    r = wc.post("/introspect", {"token": token}, headers=basic(CONFIDENTIAL, SECRET))
    assert r.json() == {"active": False}


def test_an_assertion_is_good_once(wc: WSGIClient, keys: ClientKeys, clock: Clock) -> None:
    """RFC 7523 §3 #7 (jti) and OIDC Core §9: "The JWT ID ... MUST only be used once";
    codeflow remembers it in storage until exp, then it has expired anyway."""
    assertion = keys.sign(now=clock.now)
    assert client_credentials(wc, assertion).status == 200
    assert error_of(client_credentials(wc, assertion)) == (401, "invalid_client")
    clock.advance(61)
    assert error_of(client_credentials(wc, assertion)) == (401, "invalid_client")


def test_jti_of_an_assertion_and_of_a_dpop_proof_do_not_collide(
    wc: WSGIClient, keys: ClientKeys, clock: Clock
) -> None:
    """RFC 7523 §3 and RFC 9449 §11.1 each keep used jti values; one store holds both,
    each under its own key, so the same jti in a proof and an assertion is no replay."""
    proof = DPoPKey().proof("POST", TOKEN_URL, clock.now, claims={"jti": "shared-jti"})
    r = wc.post("/token", {"grant_type": "client_credentials",
                           **authenticated(keys.sign(now=clock.now, jti="shared-jti"))},
                headers={"DPoP": proof})  # fmt: skip
    assert r.status == 200 and r.json()["token_type"] == "DPoP", r.text


def rsa_key_of_other() -> DPoPKey:
    return DPoPKey("RS256")


BAD_ASSERTIONS = {
    "wrong type": lambda k, c: {"client_assertion_type": "urn:x",
                                "client_assertion": k.sign(now=c.now)},
    "no assertion": lambda k, c: {"client_assertion_type": ASSERTION_TYPE},
    "not a JWT": lambda k, c: authenticated("not.a.jwt"),
    # RFC 7523 §3 #1, #2: iss and sub are the client_id
    "iss another": lambda k, c: authenticated(k.sign(now=c.now, iss="other")),
    "sub another client": lambda k, c: authenticated(k.sign(now=c.now, client_id=CONFIDENTIAL)),
    "no sub": lambda k, c: authenticated(k.sign(now=c.now, sub=None)),
    "client_id differs": lambda k, c: authenticated(k.sign(now=c.now), client_id=CONFIDENTIAL),
    "unknown client": lambda k, c: authenticated(k.sign(now=c.now, client_id="nobody")),
    # RFC 7523 §3 #3: aud is the server; here, the issuer alone
    "aud token endpoint": lambda k, c: authenticated(k.sign(now=c.now, aud=TOKEN_URL)),
    "aud another server": lambda k, c: authenticated(k.sign(now=c.now, aud="https://evil.example")),
    "aud issuer and more": lambda k, c: authenticated(k.sign(now=c.now, aud=[ISSUER, TOKEN_URL])),
    "no aud": lambda k, c: authenticated(k.sign(now=c.now, aud=None)),
    # RFC 7523 §3 #4: exp required, in the future, bounded
    "no exp": lambda k, c: authenticated(k.sign(now=c.now, exp=None)),
    "expired": lambda k, c: authenticated(k.sign(now=c.now, exp=int(c.now) - 1)),
    "exp in a day": lambda k, c: authenticated(k.sign(now=c.now, exp=int(c.now) + 86400)),
    "exp a string": lambda k, c: authenticated(k.sign(now=c.now, exp="soon")),
    # RFC 7523 §3 #5, #6: not before now
    "nbf in an hour": lambda k, c: authenticated(k.sign(now=c.now, nbf=int(c.now) + 3600)),
    "iat in an hour": lambda k, c: authenticated(k.sign(now=c.now, iat=int(c.now) + 3600)),
    # RFC 7523 §3 #7; OIDC Core §9: jti REQUIRED
    "no jti": lambda k, c: authenticated(k.sign(now=c.now, jti=None)),
    # RFC 7523 §3 #9: signed, by the client's key, with an asymmetric alg
    "alg HS256": lambda k, c: authenticated(jwt.encode(
        {"iss": KEYED, "sub": KEYED, "aud": ISSUER, "exp": int(c.now) + 60, "jti": "j"},
        "s" * 32, algorithm="HS256")),
    "alg none": lambda k, c: authenticated(jwt.encode(
        {"iss": KEYED, "sub": KEYED, "aud": ISSUER, "exp": int(c.now) + 60, "jti": "j"},
        None, algorithm="none")),
    "unregistered key": lambda k, c: authenticated(jwt.encode(
        {"iss": KEYED, "sub": KEYED, "aud": ISSUER, "exp": int(c.now) + 60, "jti": "j"},
        rsa_key_of_other().private, algorithm="RS256", headers={"kid": "k-RS256"})),
    "unknown kid": lambda k, c: authenticated(k.sign(now=c.now, header={"kid": "k-none"})),
    "kid of another alg": lambda k, c: authenticated(k.sign(now=c.now, header={"kid": "k-ES384"})),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_ASSERTIONS))
def test_a_bad_assertion_is_invalid_client(
    wc: WSGIClient, keys: ClientKeys, clock: Clock, case: str
) -> None:
    """RFC 7523 §3.2 and RFC 6749 §5.2: a client assertion that fails a check of §3 is
    answered 401 invalid_client (never a 5xx), at the token endpoint and at introspection."""
    fields = BAD_ASSERTIONS[case](keys, clock)
    r = wc.post("/token", {"grant_type": "client_credentials", **fields})
    assert error_of(r) == (401, "invalid_client"), r.text
    r = wc.post("/introspect", {"token": "x", **BAD_ASSERTIONS[case](keys, clock)})
    assert error_of(r) == (401, "invalid_client"), r.text


def test_one_method_at_a_time(wc: WSGIClient, keys: ClientKeys, clock: Clock) -> None:
    """RFC 6749 §2.3: "The client MUST NOT use more than one authentication method in each
    request": an assertion with HTTP Basic or with client_secret is invalid_request."""
    r = wc.post("/token", {"grant_type": "client_credentials",
                           **authenticated(keys.sign(now=clock.now))},
                headers=basic(KEYED, "x"))  # fmt: skip
    assert error_of(r) == (400, "invalid_request"), r.text
    r = client_credentials(wc, keys.sign(now=clock.now), client_secret="x")
    assert error_of(r) == (400, "invalid_request"), r.text


def test_a_client_with_keys_has_no_other_method(wc: WSGIClient) -> None:
    """RFC 7591 §2 token_endpoint_auth_method is one method per client: a client with keys
    cannot authenticate as a public client (client_id alone) or with a secret."""
    r = wc.post("/token", {"grant_type": "client_credentials", "client_id": KEYED})
    assert error_of(r) == (401, "invalid_client"), r.text
    r = wc.post("/token", {"grant_type": "client_credentials"}, headers=basic(KEYED, "guess"))
    assert error_of(r) == (401, "invalid_client"), r.text


def test_a_secret_client_cannot_use_an_assertion(
    srv: codeflow.Server, wc: WSGIClient, keys: ClientKeys, clock: Clock
) -> None:
    """RFC 7523 §2.2: the assertion is verified with keys the client registered; a client
    registered with a secret has none, whatever the assertion says."""
    r = client_credentials(wc, keys.sign(now=clock.now, client_id=CONFIDENTIAL))
    assert error_of(r) == (401, "invalid_client"), r.text


def test_rotating_the_keys(srv: codeflow.Server, wc: WSGIClient, clock: Clock) -> None:
    """RFC 7517 §5: a client replaces its JWK Set (update_client(jwks=...)); assertions of
    the old key stop working at once."""
    old, new = ClientKeys("ES256"), ClientKeys("ES256")
    srv.update_client(KEYED, jwks=old.jwks)
    assert client_credentials(wc, old.sign(now=clock.now)).status == 200
    srv.update_client(KEYED, jwks=new.jwks)
    assert error_of(client_credentials(wc, old.sign(now=clock.now))) == (401, "invalid_client")
    assert client_credentials(wc, new.sign(now=clock.now)).status == 200


###############################################################################
# Registration: RFC 7591 §2 jwks ############################################
###############################################################################


@pytest.mark.parametrize(
    ("jwks", "message"),
    [
        ({"keys": []}, "JWK Set"),
        ({"kty": "EC"}, "JWK Set"),
        ({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, "not an RSA, EC"),
        ({"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}, "does not fit"),
        ({"keys": [{**DPoPKey().private_jwk}]}, "private"),
        ({"keys": [{**DPoPKey().jwk, "alg": "HS256"}]}, "alg"),
        ({"keys": [DPoPKey("RS256").jwk | {"n": "AQAB"}]}, "does not fit"),
    ],
)
def test_registration_refuses_what_is_not_a_public_key_set(
    srv: codeflow.Server, jwks: dict, message: str
) -> None:
    """RFC 7591 §2 jwks: "Client's JSON Web Key Set [RFC7517] document value, which
    contains the client's public keys"; RFC 7517 §5 "keys" member. A private or
    symmetric key, or one that does not parse, is refused with a ValueError that says so."""
    with pytest.raises(ValueError, match=message):
        srv.add_client("bad-keys", jwks=jwks, grant_types=["client_credentials"])


def test_keys_and_a_secret_are_exclusive(srv: codeflow.Server, keys: ClientKeys) -> None:
    """RFC 7591 §2 token_endpoint_auth_method: one method; a client has keys or a secret."""
    with pytest.raises(ValueError, match="not both"):
        srv.add_client("both", client_secret="s", jwks=keys.jwks)
    with pytest.raises(ValueError, match="not both"):
        srv.update_client(CONFIDENTIAL, jwks=keys.jwks)


@pytest.mark.parametrize(
    "uri", ["ftp://rp.example/jwks", "https://user:pw@rp.example/jwks", "https://rp.example/#k",
            "jwks.json"],
)  # fmt: skip
def test_a_jwks_uri_that_cannot_be_fetched_is_refused(srv: codeflow.Server, uri: str) -> None:
    """RFC 7591 §2 jwks_uri: a URL; one the hardened fetch would never fetch (not
    http(s), userinfo, a fragment, relative) is refused at registration."""
    with pytest.raises(ValueError, match="jwks_uri"):
        srv.add_client("fetched", jwks_uri=uri)
    with pytest.raises(ValueError, match="both"):
        srv.add_client("fetched", jwks_uri="https://rp.example/jwks", jwks={"keys": []})


@pytest.fixture
def jwks_host() -> Iterator[DocumentHost]:
    with document_host() as host:
        yield host


def test_keys_from_jwks_uri_through_the_hardened_fetch(
    clock: Clock, keys: ClientKeys, jwks_host: DocumentHost
) -> None:
    """RFC 7591 §2 jwks_uri: "URL string referencing the client's JSON Web Key (JWK) Set
    document, which contains the client's public keys"; fetched with the outbound-fetch
    defences (here a loopback host the operator allowed), cached, and fetched again past
    the cache when an assertion names a key the cached set lacks (rotation), at most once
    a minute per client."""
    old, new = ClientKeys("ES256"), ClientKeys("ES256")
    new.jwks["keys"][0]["kid"] = "k-new"
    jwks_host.routes["/jwks"] = json_body(old.jwks)
    srv = make_server(clock, fetch_allowed_networks=["127.0.0.0/8"])
    srv.add_client("fetched", jwks_uri=jwks_host.url("/jwks"), grant_types=["client_credentials"])
    wc = WSGIClient(srv.wsgi)
    for _ in range(2):
        assert client_credentials(wc, old.sign(now=clock.now, client_id="fetched")).status == 200
    assert jwks_host.hits["/jwks"] == 1  # cached
    jwks_host.routes["/jwks"] = json_body(new.jwks)
    rotated = new.sign(now=clock.now, client_id="fetched", header={"kid": "k-new"})
    assert client_credentials(wc, rotated).status == 200
    assert jwks_host.hits["/jwks"] == 2
    stranger = ClientKeys("ES256").sign(now=clock.now, client_id="fetched",
                                        header={"kid": "k-other"})  # fmt: skip
    for _ in range(3):
        assert error_of(client_credentials(wc, stranger)) == (401, "invalid_client")
    assert jwks_host.hits["/jwks"] == 2  # refetched at most once a minute


def test_jwks_uri_on_an_internal_address_is_not_fetched(
    clock: Clock, keys: ClientKeys, jwks_host: DocumentHost
) -> None:
    """SSRF (README "Outbound fetches"): a jwks_uri on a loopback or private address is
    never fetched unless the operator allowed it; the client gets invalid_client, and
    nothing reaches the host."""
    jwks_host.routes["/jwks"] = json_body(keys.jwks)
    srv = make_server(clock)
    srv.add_client("fetched", jwks_uri=jwks_host.url("/jwks"), grant_types=["client_credentials"])
    r = client_credentials(WSGIClient(srv.wsgi), keys.sign(now=clock.now, client_id="fetched"))
    assert error_of(r) == (401, "invalid_client"), r.text
    assert "could not be fetched" in r.json()["error_description"]
    assert jwks_host.hits == {}


def test_config_file_declares_a_client_with_keys(clock: Clock, keys: ClientKeys) -> None:
    """The config file's ``[[clients]]`` entry takes ``jwks`` (a table, as TOML writes
    JSON objects): the client authenticates with private_key_jwt."""
    srv = codeflow.Server(issuer=ISSUER, clock=clock)
    codeflow.load_config(srv, {"clients": [{"client_id": KEYED, "jwks": keys.jwks,
                                            "grant_types": ["client_credentials"]}]})  # fmt: skip
    r = client_credentials(WSGIClient(srv.wsgi), keys.sign(now=clock.now))
    assert r.status == 200, r.text


def test_cli_client_add_with_a_jwks_file(tmp_path, keys: ClientKeys, capsys) -> None:
    """``codeflow client add --jwks FILE`` registers a private_key_jwt client: no secret
    is made or printed."""
    from codeflow_storage.sqlite import SQLiteStorage

    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(keys.jwks))
    db = str(tmp_path / "cli.db")
    assert codeflow.main(["client", "add", "cli-keyed", "--storage", db, "--grant-type",
                          "client_credentials", "--jwks", str(path)]) == 0  # fmt: skip
    assert "client_secret" not in capsys.readouterr().out
    with SQLiteStorage(db) as store:
        client = store.get_client("cli-keyed")
        assert client.jwks == keys.jwks and client.secret_hash is None and not client.public


def test_pushed_authorization_requests_take_private_key_jwt(
    wc: WSGIClient, keys: ClientKeys, clock: Clock
) -> None:
    """RFC 9126 §2: "the client authenticates ... using the same method(s) as for the
    token endpoint": a private_key_jwt assertion at /par gets a request_uri (201); a bad
    one, 401 invalid_client."""
    flow = new_flow(KEYED, scope="openid")
    fields = {k: v for k, v in flow.params.items() if k != "client_id"}
    r = wc.post("/par", {**fields, **authenticated(keys.sign(now=clock.now))})
    assert r.status == 201, r.text
    assert r.json()["request_uri"].startswith("urn:ietf:params:oauth:request_uri:")
    bad = wc.post("/par", {**fields, **authenticated(keys.sign(now=clock.now, aud=TOKEN_URL))})
    assert error_of(bad) == (401, "invalid_client"), bad.text
