"""RFC 7517 (JWK, JWK Set) at /jwks, and signing-key rotation: keys made on first use and
kept in storage, Server.rotate_keys(), retired keys published until every token they
signed has expired, then purged; processes sharing a store share keys.

In-process with the test clock; PyJWKClient fetches the set over real HTTP.
`codeflow keys rotate` needs persistent storage and is covered with the SQLite backend.
"""

from __future__ import annotations

import threading

import jwt
import pytest
from conftest import CONFIDENTIAL, ISSUER, REDIRECT, USERNAME, Clock
from cryptography.hazmat.primitives import serialization
from oidc_helpers import PRIVATE_MEMBERS, jwks_keys, verify_jwt
from wsgi_client import WSGIClient

import codeflow

ES_APP = "es-app"


@pytest.fixture
def server(clock: Clock) -> codeflow.Server:
    """A server with an RS256 client (the default) and an ES256 one, and alice."""
    srv = codeflow.Server(issuer=ISSUER, clock=clock)
    _register(srv)
    return srv


def _register(srv: codeflow.Server) -> None:
    srv.add_client(CONFIDENTIAL, client_secret="s", redirect_uris=[REDIRECT])
    srv.add_client(
        ES_APP, client_secret="s", redirect_uris=[REDIRECT], id_token_signed_response_alg="ES256"
    )
    if srv.storage.get_user(USERNAME) is None:
        srv.add_user(USERNAME, "pw")


def id_token(srv: codeflow.Server, client_id: str = CONFIDENTIAL) -> str:
    return srv.issue_tokens(USERNAME, client_id, "openid")["id_token"]


def kid_of(token: str) -> str:
    return jwt.get_unverified_header(token)["kid"]


def published(srv: codeflow.Server) -> list[dict]:
    r = WSGIClient(srv.wsgi).get("/jwks")
    assert r.status == 200, r.text
    return r.json()["keys"]


def published_kids(srv: codeflow.Server) -> set[str]:
    return {k["kid"] for k in published(srv)}


###############################################################################
# The key set: RFC 7517 §4, §5 ################################################
###############################################################################


def test_jwks_is_a_json_key_set(server):
    """RFC 7517 §5: "A JWK Set is a JSON object that represents a set of JWKs. The JSON
    object MUST have a "keys" member, with its value being an array of JWKs"; §8.5.1
    registers the media type application/jwk-set+json.
    """
    id_token(server)
    r = WSGIClient(server.wsgi).get("/jwks")
    assert r.status == 200
    assert r.headers["content-type"] in ("application/jwk-set+json", "application/json")
    assert isinstance(r.json()["keys"], list)
    assert r.json()["keys"]


def test_every_key_has_kid_kty_alg_and_use_sig(server):
    """RFC 7517 §4.1 "The kty (key type) parameter ... MUST be present in a JWK"; §4.2
    use "sig" (signature); §4.4 alg; §4.5 kid "used to match a specific key"; OIDC Core
    §10.1.1: "a kid value MUST be provided" when the set holds several keys.
    """
    id_token(server)
    id_token(server, ES_APP)
    server.rotate_keys()
    keys = published(server)
    assert len(keys) == 4  # RS256 and ES256, current and retired
    for key in keys:
        assert key["kid"]
        assert key["use"] == "sig"
        assert (key["kty"], key["alg"]) in {("RSA", "RS256"), ("EC", "ES256")}
        if key["kty"] == "EC":
            assert key["crv"] == "P-256"
    assert len({k["kid"] for k in keys}) == len(keys)


def test_no_private_key_material_is_published(server):
    """RFC 7517 §9.1: "private keys ... MUST be protected"; RFC 7518 §6.3.2 (d, p, q, dp,
    dq, qi, oth for RSA) and §6.2.2 (d for EC) are the private members a public JWK must
    not carry.
    """
    id_token(server)
    id_token(server, ES_APP)
    server.rotate_keys()
    for key in published(server):
        leaked = [m for m in PRIVATE_MEMBERS if m in key]
        assert not leaked, (key["kid"], leaked)


def test_published_key_is_the_public_half_of_the_stored_key(server):
    """RFC 7517 §4: a JWK "represents a cryptographic key"; the one published under a kid
    is the public half of the stored private key that signs with that kid.
    """
    id_token(server)
    id_token(server, ES_APP)
    stored = {k.kid: k for k in server.storage.signing_keys()}
    for jwk in published(server):
        private = serialization.load_pem_private_key(
            stored[jwk["kid"]].private_pem.encode(), password=None
        )
        public = jwt.PyJWK(jwk).key
        assert public.public_numbers() == private.public_key().public_numbers()


def test_keys_are_made_on_first_use_and_kept_in_storage(server, clock):
    """RFC 7517 §4.5 kid: "used to match a specific key"; the key that signs is made once
    and kept in storage, so later tokens carry the same kid and verify the same way.
    """
    assert server.storage.signing_keys() == []
    first = id_token(server)
    stored = server.storage.signing_keys()
    assert [(k.kid, k.alg, k.expires_at) for k in stored] == [(kid_of(first), "RS256", None)]
    clock.advance(60)
    second = id_token(server)
    assert kid_of(second) == kid_of(first)
    assert len(server.storage.signing_keys()) == 1
    es = id_token(server, ES_APP)  # an ES256 key is made when an ES256 client needs one
    assert {k.alg for k in server.storage.signing_keys()} == {"RS256", "ES256"}
    keys = jwks_keys(WSGIClient(server.wsgi))
    for token, aud in [(first, CONFIDENTIAL), (second, CONFIDENTIAL), (es, ES_APP)]:
        verify_jwt(token, keys, audience=aud, now=clock())


def test_concurrent_first_use_makes_one_key(clock):
    """RFC 7517 §4.5: a kid names one key; servers racing to make the first key on a shared
    store must agree on it, or half their tokens would carry a kid the others never publish.
    """
    storage = codeflow.MemoryStorage()
    servers = [codeflow.Server(ISSUER, storage, clock) for _ in range(4)]
    barrier = threading.Barrier(8)
    kids: list[str] = []

    def sign(srv: codeflow.Server) -> None:
        barrier.wait()
        kids.append(codeflow.signing_key(srv, "RS256").kid)

    threads = [threading.Thread(target=sign, args=(servers[i % 4],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(kids) == 8
    assert len(set(kids)) == 1
    assert [k.kid for k in storage.signing_keys()] == kids[:1]


###############################################################################
# Rotation ####################################################################
###############################################################################


def test_new_key_signs_at_once_after_rotation(server, clock):
    """RFC 7517 §4.5: "When used with JWS ... the kid value is used to match a specific
    key"; after Server.rotate_keys() new tokens name the new key, which is published.
    """
    before = id_token(server)
    es_before = id_token(server, ES_APP)
    new = {k.alg: k.kid for k in server.rotate_keys()}
    assert set(new) == {"RS256", "ES256"}
    after, es_after = id_token(server), id_token(server, ES_APP)
    assert kid_of(after) == new["RS256"] != kid_of(before)
    assert kid_of(es_after) == new["ES256"] != kid_of(es_before)
    assert {kid_of(before), kid_of(es_before), *new.values()} <= published_kids(server)


def test_tokens_signed_before_rotation_still_verify(server, clock):
    """OIDC Core §10.1.1: "the signer can begin using a new key at its discretion and
    signals the change to the verifier using the kid value ... The verifier knows to go
    back to the jwks_uri location to re-retrieve the keys"; the old key is still there.
    """
    old = id_token(server)
    old_es = id_token(server, ES_APP)
    server.rotate_keys()
    clock.advance(codeflow.ID_TOKEN_LIFETIME - 1)
    keys = jwks_keys(WSGIClient(server.wsgi))
    verify_jwt(old, keys, audience=CONFIDENTIAL, now=clock())
    verify_jwt(old_es, keys, audience=ES_APP, now=clock())
    verify_jwt(id_token(server), keys, audience=CONFIDENTIAL, now=clock())


@pytest.mark.parametrize(
    ("id_lifetime", "access_lifetime"),
    [(3600, 3600), (600, 5000), (7200, 60)],
    ids=["equal", "access longer", "id longer"],
)
def test_retired_key_is_published_until_its_last_token_expires_then_purged(
    clock, id_lifetime, access_lifetime
):
    """OIDC Core §10.1.1: keys are rotated by publishing the new key, while the old one
    remains for tokens it signed; it stays until max(ID token lifetime, access token
    lifetime) after the rotation, then purge_expired drops it from storage and the set.
    """
    srv = codeflow.Server(
        ISSUER, clock=clock, id_token_lifetime=id_lifetime, access_token_lifetime=access_lifetime
    )
    _register(srv)
    old_kid = kid_of(id_token(srv))
    srv.rotate_keys()
    rotated_at = clock()
    keep = max(id_lifetime, access_lifetime)
    retired = next(k for k in srv.storage.signing_keys() if k.kid == old_kid)
    assert retired.expires_at == rotated_at + keep

    clock.advance(keep - 1)
    srv.storage.purge_expired(clock())
    assert old_kid in published_kids(srv)
    assert old_kid in {k.kid for k in srv.storage.signing_keys()}

    clock.advance(1)
    assert old_kid not in published_kids(srv)
    srv.storage.purge_expired(clock())
    assert old_kid not in {k.kid for k in srv.storage.signing_keys()}
    assert old_kid not in published_kids(srv)
    # The current keys are never retired by time alone.
    assert {k.alg for k in srv.storage.signing_keys() if k.expires_at is None} == {
        "RS256",
        "ES256",
    }


def test_current_keys_survive_any_purge(server, clock):
    """RFC 7517 §5: the set holds the keys in use; a key that still signs is never
    purged, however old it is.
    """
    kid = kid_of(id_token(server))
    clock.advance(365 * 24 * 3600)
    server.storage.purge_expired(clock())
    assert published_kids(server) == {kid}
    assert kid_of(id_token(server)) == kid


def test_two_rotations_keep_both_retired_keys_until_their_own_expiry(server, clock):
    """OIDC Core §10.1.1: each retired key stays as long as tokens it signed may be live;
    a second rotation does not cut the first retired key's time short, nor extend it.
    """
    first = kid_of(id_token(server))
    server.rotate_keys()
    clock.advance(1000)
    second = kid_of(id_token(server))
    server.rotate_keys()
    third = kid_of(id_token(server))
    assert len({first, second, third}) == 3
    assert {first, second, third} <= published_kids(server)
    clock.advance(codeflow.ID_TOKEN_LIFETIME - 1000)  # the first key's time is up
    server.storage.purge_expired(clock())
    assert first not in published_kids(server)
    assert {second, third} <= published_kids(server)
    clock.advance(1000)
    server.storage.purge_expired(clock())
    assert published_kids(server) & {first, second, third} == {third}


def test_servers_sharing_a_store_share_keys(clock):
    """RFC 7517 §4.5 kid: processes sharing one store sign with one key and publish the
    same set, so an ID token from one verifies with the other's JWKS, before and after a
    rotation made by either.
    """
    storage = codeflow.MemoryStorage()
    a = codeflow.Server(ISSUER, storage, clock)
    b = codeflow.Server(ISSUER, storage, clock)
    _register(a)
    token_a = id_token(a)
    keys_b = jwks_keys(WSGIClient(b.wsgi))
    verify_jwt(token_a, keys_b, audience=CONFIDENTIAL, now=clock())
    assert kid_of(id_token(b)) == kid_of(token_a)

    new = {k.alg: k.kid for k in a.rotate_keys()}
    token_b = id_token(b)
    assert kid_of(token_b) == new["RS256"]  # b signs with the key a just made
    keys_a = jwks_keys(WSGIClient(a.wsgi))
    verify_jwt(token_b, keys_a, audience=CONFIDENTIAL, now=clock())
    verify_jwt(token_a, keys_a, audience=CONFIDENTIAL, now=clock())
    assert published_kids(a) == published_kids(b)


def test_pyjwkclient_follows_a_rotation_over_http(live):
    """OIDC Core §10.1.1: "The verifier knows to go back to the jwks_uri location to
    re-retrieve the keys when it sees an unfamiliar kid value." A real JWKS client, fetching
    the set over HTTP, verifies the tokens signed on both sides of the rotation.
    """
    srv, url = live
    # No cache: PyJWKClient (>= 2.10) waits out a 30 s cooldown before refetching for an
    # unknown kid, and this test does not wait.
    client = jwt.PyJWKClient(url + "/jwks", cache_jwk_set=False)
    before = id_token(srv)
    key = client.get_signing_key_from_jwt(before)
    jwt.decode(before, key.key, algorithms=["RS256"], audience=CONFIDENTIAL, issuer=url)
    srv.rotate_keys()
    after = id_token(srv)
    assert kid_of(after) != kid_of(before)
    for token in (after, before):
        key = client.get_signing_key_from_jwt(token)
        claims = jwt.decode(token, key.key, algorithms=["RS256"], audience=CONFIDENTIAL,
                            issuer=url)  # fmt: skip
        assert claims["sub"] == USERNAME
