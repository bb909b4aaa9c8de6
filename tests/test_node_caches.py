"""Per-process caches with a stated staleness bound, and key rotation across nodes.

Issue 16 item 3: "per-process caches allowed only with a stated staleness bound (for example
client records for a few seconds, the current signing key until its successor is
published), and a rotated key is published in JWKS before any node signs with it".

Two Servers on one store (a real SQLite file, or one PostgreSQL schema), each with its own
connection and cache, stand for two nodes; one test clock moves them both. A change made
on node A is seen on A at once and on B within codeflow.CACHE_SECONDS (README "Run several
nodes").
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from conftest import CONFIDENTIAL, ISSUER, SECRET, USERNAME, Clock, make_server
from oidc_helpers import jwks_keys, verify_jwt
from postgres_support import fresh_schema
from wsgi_client import WSGIClient

import codeflow

BOUND = codeflow.CACHE_SECONDS
API = "https://api.example.com/"


def sqlite_stores(tmp_path: Path) -> Iterator[tuple[codeflow.Storage, codeflow.Storage]]:
    from codeflow_storage.sqlite import SQLiteStorage

    a, b = SQLiteStorage(tmp_path / "codeflow.db"), SQLiteStorage(tmp_path / "codeflow.db")
    yield a, b
    a.close()
    b.close()


def postgresql_stores(tmp_path: Path) -> Iterator[tuple[codeflow.Storage, codeflow.Storage]]:
    with fresh_schema() as (url, _):
        from codeflow_storage.postgresql import from_url

        with from_url(url) as a, from_url(url) as b:
            yield a, b


@pytest.fixture(params=[sqlite_stores, postgresql_stores], ids=["sqlite", "postgresql"])
def two_stores(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[codeflow.Storage, codeflow.Storage]]:
    """One store, through two connections of its own: nodes A's and B's."""
    yield from request.param(tmp_path)


@pytest.fixture
def nodes(
    two_stores: tuple[codeflow.Storage, codeflow.Storage], clock: Clock
) -> tuple[codeflow.Server, codeflow.Server]:
    """Nodes A and B on one store; A registered the clients and alice."""
    store_a, store_b = two_stores
    return make_server(clock, storage=store_a), codeflow.Server(ISSUER, store_b, clock)


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": "Basic " + raw}


def client_credentials(node: codeflow.Server, secret: str = SECRET) -> int:
    """RFC 6749 §4.4.2: a client credentials token request at ``node``; its status."""
    r = WSGIClient(node.wsgi).post(
        "/token",
        data={"grant_type": "client_credentials", "scope": "api:read"},
        headers=basic(CONFIDENTIAL, secret),
    )
    return r.status


def test_a_removed_client_stops_at_once_on_its_node_and_within_the_bound_on_others(
    nodes: tuple[codeflow.Server, codeflow.Server], clock: Clock
) -> None:
    """RFC 6749 §2.3.1 / §5.2 invalid_client: a client removed on node A is refused on A at
    once and on node B, whose cache read it just before, within CACHE_SECONDS."""
    a, b = nodes
    assert client_credentials(a) == client_credentials(b) == 200
    assert a.remove_client(CONFIDENTIAL)
    assert client_credentials(a) == 401
    clock.advance(BOUND)
    assert client_credentials(b) == 401


def test_a_rotated_secret_stops_within_the_bound_and_the_new_one_works(
    nodes: tuple[codeflow.Server, codeflow.Server], clock: Clock
) -> None:
    """RFC 6749 §2.3.1: the client's password. After rotate_client_secret on node A, the old
    secret is refused on A at once and on B within CACHE_SECONDS, and the new one works on
    both by then."""
    a, b = nodes
    assert client_credentials(b) == 200
    new = a.rotate_client_secret(CONFIDENTIAL)
    assert client_credentials(a) == 401
    assert client_credentials(a, new) == 200
    clock.advance(BOUND)
    assert client_credentials(b) == 401
    assert client_credentials(b, new) == 200


def test_a_client_registered_on_one_node_is_found_on_the_other_at_once(
    nodes: tuple[codeflow.Server, codeflow.Server],
) -> None:
    """RFC 7591 §3.2.1: a client uses its registration at once, wherever the load balancer
    sends it; a miss is never cached."""
    a, b = nodes
    assert b.storage.get_client("new-app") is None
    a.add_client("new-app", client_secret="new-secret", redirect_uris=["https://a.example/cb"])
    found = b.storage.get_client("new-app")
    assert found is not None and found.client_id == "new-app"


def test_resources_change_at_once_on_their_node_and_within_the_bound_on_others(
    nodes: tuple[codeflow.Server, codeflow.Server], clock: Clock
) -> None:
    """RFC 8707 §2: the resources a client may name. Added or removed on node A, a resource
    is there (or gone) on A at once and on B within CACHE_SECONDS."""
    a, b = nodes
    assert b.storage.get_resource(API) is None and a.storage.list_resources() == []
    a.add_resource(API, scopes=["api:read"])
    assert [r.uri for r in a.storage.list_resources()] == [API]
    clock.advance(BOUND)
    assert b.storage.get_resource(API) is not None
    a.remove_resource(API)
    assert a.storage.get_resource(API) is None
    clock.advance(BOUND)
    assert b.storage.list_resources() == []


def test_users_are_never_served_stale(
    nodes: tuple[codeflow.Server, codeflow.Server],
) -> None:
    """OIDC Core §2 / NIST SP 800-63B §5.1.1: a user removed or given a new password on one
    node is so on every node at once: users are not cached."""
    a, b = nodes
    assert b.storage.get_user(USERNAME) is not None
    a.remove_user(USERNAME)
    assert b.storage.get_user(USERNAME) is None


def kid_of(token: str) -> str:
    return jwt.get_unverified_header(token)["kid"]


def test_a_rotated_key_is_in_every_nodes_jwks_before_any_node_signs_with_it(
    nodes: tuple[codeflow.Server, codeflow.Server], clock: Clock
) -> None:
    """OIDC Core §10.1.1: "The verifier knows to go back to the jwks_uri location to
    re-retrieve the keys when it sees an unfamiliar kid value": that works only if the kid
    is there. After node A rotates, both nodes go on signing with the old key, until the
    new one has been in storage for CACHE_SECONDS (every node's cached keys are at most
    that stale); at every moment, each token either node signs verifies with either
    node's JWKS, and the old key stays published until its last token expires."""
    a, b = nodes
    old = kid_of(a.issue_tokens(USERNAME, CONFIDENTIAL, "openid")["id_token"])
    assert jwks_keys(WSGIClient(b.wsgi)).keys() >= {old}  # B's cache holds the old set
    new = {k.alg: k.kid for k in a.rotate_keys()}["RS256"]
    rotated_at = clock()
    for step in (0, BOUND / 2, BOUND / 2 - 0.001, 0.001, BOUND):
        clock.advance(step)
        tokens = {
            node: node.issue_tokens(USERNAME, CONFIDENTIAL, "openid")["id_token"]
            for node in (a, b)
        }
        signing = {kid_of(t) for t in tokens.values()}
        assert signing == ({new} if clock() >= rotated_at + BOUND else {old}), clock() - rotated_at
        for node in (a, b):
            keys = jwks_keys(WSGIClient(node.wsgi))
            for token in tokens.values():
                verify_jwt(token, keys, audience=CONFIDENTIAL, now=clock())
    # The old key signed until rotated_at + BOUND: published for a token's life after.
    lifetime = max(a.id_token_lifetime, a.access_token_lifetime)
    clock.advance(rotated_at + BOUND + lifetime - 1 - clock())
    for node in (a, b):
        node.storage.purge_expired(clock())
        assert old in jwks_keys(WSGIClient(node.wsgi))
    clock.advance(1)
    a.storage.purge_expired(clock())
    assert old not in jwks_keys(WSGIClient(a.wsgi))
    assert old not in jwks_keys(WSGIClient(b.wsgi))


# A brand-new store, and keys no node has cached: OIDC Core §10.1.1 ##########

RP, RP_SECRET = "rp-app", "rp-secret"
LOGGED_OUT = "https://rp.example/logged-out"


@pytest.fixture
def new_nodes(
    two_stores: tuple[codeflow.Storage, codeflow.Storage], clock: Clock
) -> tuple[codeflow.Server, codeflow.Server]:
    """Nodes A and B on one store that has no signing keys yet; A registered RP and alice."""
    store_a, store_b = two_stores
    a = codeflow.Server(ISSUER, store_a, clock)
    a.add_client(RP, client_secret=RP_SECRET, redirect_uris=["https://rp.example/cb"],
                 post_logout_redirect_uris=[LOGGED_OUT])  # fmt: skip
    a.add_user(USERNAME, "alice-password")
    return a, codeflow.Server(ISSUER, store_b, clock)


def logout_with_hint(node: codeflow.Server, hint: str) -> int:
    """RP-Initiated Logout 1.0 §2 at ``node``, with an id_token_hint; the status."""
    r = WSGIClient(node.wsgi).get(
        "/logout", params={"id_token_hint": hint, "post_logout_redirect_uri": LOGGED_OUT}
    )
    assert r.status in (302, 400), r.text
    assert r.status == 400 or r.location == LOGGED_OUT
    return r.status


def made_up_hint(kid: str) -> str:
    """A JWT under a kid no node ever made (an attacker's, say), signed with a key of its own."""
    private = codeflow.private_key(codeflow.new_signing_key("RS256", 0.0))
    claims = {"iss": ISSUER, "sub": "x", "aud": RP, "iat": 0, "exp": 1}
    return jwt.encode(claims, private, algorithm="RS256", headers={"kid": kid})


def test_a_node_verifies_a_token_of_a_key_it_has_not_cached_at_once(
    new_nodes: tuple[codeflow.Server, codeflow.Server], clock: Clock
) -> None:
    """RP-Initiated Logout 1.0 §2: id_token_hint, "ID Token previously issued by the OP".
    On a brand-new store node B's cached keys are the empty set when node A makes the
    store's first keys and signs at once (no other key could); B accepts A's ID token as a
    hint at once, not CACHE_SECONDS later: a kid B has not cached makes it read the keys
    from storage again (OIDC Core §10.1.1: an "unfamiliar kid value" means new keys), as
    long as it has not done so for another kid within the last KEY_MISS_SECONDS."""
    a, b = new_nodes
    assert logout_with_hint(b, made_up_hint("unknown")) == 400  # B has cached no keys
    clock.advance(codeflow.KEY_MISS_SECONDS)
    id_token = a.issue_tokens(USERNAME, RP, "openid")["id_token"]
    assert logout_with_hint(b, id_token) == 302


def test_unknown_kids_make_a_node_read_its_keys_once_a_second_at_most(
    tmp_path: Path, clock: Clock
) -> None:
    """RFC 7515 §4.1.4 kid: chosen by whoever makes the JWT. A stream of hints under made-up
    kids costs storage one read of the keys per KEY_MISS_SECONDS at most, however many
    requests it is, so that it cannot turn into one storage read per request."""
    stores = sqlite_stores(tmp_path)
    store_a, store_b = next(stores)
    a = codeflow.Server(ISSUER, store_a, clock)
    a.add_client(RP, client_secret=RP_SECRET, redirect_uris=["https://rp.example/cb"],
                 post_logout_redirect_uris=[LOGGED_OUT])  # fmt: skip
    b = codeflow.Server(ISSUER, store_b, clock)
    reads: list[str] = []
    store_b._db.conn.set_trace_callback(  # type: ignore[union-attr]
        lambda sql: reads.append(sql) if "FROM signing_keys" in sql else None
    )
    for n in range(20):
        assert logout_with_hint(b, made_up_hint(f"made-up-{n}")) == 400
    assert len(reads) <= 2, reads  # the cache's own read, and one re-read for a miss
    first = len(reads)
    clock.advance(codeflow.KEY_MISS_SECONDS)
    for n in range(20):
        assert logout_with_hint(b, made_up_hint(f"made-up-again-{n}")) == 400
    assert len(reads) - first <= 1, reads
    next(stores, None)
