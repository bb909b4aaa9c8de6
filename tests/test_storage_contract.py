"""The Storage contract (DESIGN.md "Storage contract"): one suite every backend runs.

Records in, records out, no policy. The atomic operations (``consume_code``,
``rotate_refresh_token``, ``get_or_add_setting``, ``get_or_add_signing_key``,
``rotate_signing_key``, ``revoke_grant``, ``add_user`` with ``remove_user``) are raced by
16 threads released together.
To add a backend, add one ``pytest.param`` to ``BACKENDS``: a context manager that
yields a fresh, empty store, able to serve ``threads`` threads at once, and cleans up
after it.

PostgreSQL runs against the server of ``CODEFLOW_TEST_POSTGRES_URL``, each test in a schema
of its own (tests/postgres_support.py); without one, its tests skip (fail under CI).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from codeflow_storage.sqlite import SQLiteStorage
from postgres_support import fresh_schema

import codeflow
from codeflow import (
    AuthorizationCode,
    Client,
    DeviceAuthorization,
    Grant,
    LoginSession,
    Passkey,
    PushedRequest,
    RemovedUser,
    Resource,
    SigningKey,
    Token,
    User,
)

THREADS = 16
NOW = 1_800_000_000.0


@contextlib.contextmanager
def memory_storage(tmp_path: Path, threads: int) -> Iterator[codeflow.Storage]:
    yield codeflow.MemoryStorage()


@contextlib.contextmanager
def sqlite_storage(tmp_path: Path, threads: int) -> Iterator[codeflow.Storage]:
    with SQLiteStorage(tmp_path / "codeflow.db") as store:
        yield store


@contextlib.contextmanager
def postgresql_storage(tmp_path: Path, threads: int) -> Iterator[codeflow.Storage]:
    """In a new schema, with a connection open for each thread, so that all run at once."""
    with fresh_schema() as (url, _):
        from codeflow_storage.postgresql import from_url

        with from_url(f"{url}&pool_min_size={threads}&pool_max_size={threads}") as store:
            yield store


BACKENDS = [
    pytest.param(memory_storage, id="memory"),
    pytest.param(sqlite_storage, id="sqlite"),
    pytest.param(postgresql_storage, id="postgresql"),
]


@pytest.fixture(params=BACKENDS)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[codeflow.Storage]:
    """A fresh, empty store of each backend, closed after the test; ready for THREADS
    threads at once in the races (tests named ``..._race_...`` or ``..._racing_...``)."""
    races = "_race_" in request.node.name or "_racing_" in request.node.name
    with request.param(tmp_path, THREADS if races else 1) as store:
        yield store


def a_code(
    code_hash: str = "code-1", expires_at: float = NOW + 60, **fields: Any
) -> AuthorizationCode:
    values: dict[str, Any] = {
        "code_hash": code_hash,
        "client_id": "app",
        "username": "alice",
        "redirect_uri": "http://127.0.0.1:9000/callback",
        "redirect_uri_required": True,
        "scope": ("openid", "profile"),
        "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "nonce": "n-0S6_WzA2Mj",
        "auth_time": int(NOW),
        "expires_at": expires_at,
        **fields,
    }
    return AuthorizationCode(**values)


def a_token(
    token_hash: str,
    family_id: str = "family-1",
    kind: str = "access",
    expires_at: float = NOW + 3600,
    **fields: Any,
) -> Token:
    values: dict[str, Any] = {
        "token_hash": token_hash,
        "kind": kind,
        "client_id": "app",
        "username": "alice",
        "scope": ("openid", "api:read"),
        "issued_at": NOW,
        "expires_at": expires_at,
        "family_id": family_id,
        **fields,
    }
    return Token(**values)


def a_key(kid: str, alg: str = "RS256", created_at: float = NOW, **fields: Any) -> SigningKey:
    """A signing key record; storage keeps the PEM as given and never parses it."""
    pem = f"-----BEGIN PRIVATE KEY-----\n{kid}\n-----END PRIVATE KEY-----\n"
    return SigningKey(kid=kid, alg=alg, private_pem=pem, created_at=created_at, **fields)


def a_device(
    device_code_hash: str = "device-1", user_code_hash: str = "user-1", **fields: Any
) -> DeviceAuthorization:
    values: dict[str, Any] = {
        "device_code_hash": device_code_hash,
        "user_code_hash": user_code_hash,
        "client_id": "tv",
        "scope": ("openid", "profile"),
        "expires_at": NOW + 600,
        **fields,
    }
    return DeviceAuthorization(**values)


def approved(device: DeviceAuthorization, username: str = "alice") -> DeviceAuthorization:
    return replace(device, status="approved", username=username, auth_time=int(NOW),
                   amr=("pwd", "otp", "mfa"), scope=("openid",))  # fmt: skip


def a_pushed(request_uri_hash: str = "uri-1", **fields: Any) -> PushedRequest:
    values: dict[str, Any] = {
        "request_uri_hash": request_uri_hash,
        "client_id": "app",
        "params": {"response_type": "code", "client_id": "app", "scope": "openid",
                   "claims": '{"id_token": {"email": null}}'},
        "expires_at": NOW + 60,
        **fields,
    }  # fmt: skip
    return PushedRequest(**values)


def current_keys(storage: codeflow.Storage, alg: str) -> list[SigningKey]:
    return [k for k in storage.signing_keys() if k.alg == alg and k.expires_at is None]


def revoked(storage: codeflow.Storage, token_hash: str) -> bool:
    token = storage.get_token(token_hash)
    assert token is not None, f"{token_hash} is not stored"
    return token.revoked


def race(call: Callable[[int], Any]) -> list[Any]:
    """Call ``call(i)`` from THREADS threads released at once by a barrier."""
    barrier = threading.Barrier(THREADS)
    results: list[Any] = [None] * THREADS
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=10)
            results[i] = call(i)
        except BaseException as exc:  # re-raised in the test's thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors
    return results


class TestStorageContract:
    """Every Storage backend: records round-trip, one-shot operations happen once."""

    # -- clients and users ----------------------------------------------------

    def test_add_and_get_client(self, storage: codeflow.Storage) -> None:
        """DESIGN.md Storage contract: "Records in, records out"; a secret arrives as a hash."""
        client = Client(
            client_id="app",
            redirect_uris=("http://127.0.0.1:9000/callback", "http://127.0.0.1/cb"),
            secret_hash="scrypt$16384$8$1$c2FsdA$a2V5",
            name="App",
            scopes=("openid", "api:read"),
            grant_types=("authorization_code", "client_credentials"),
            require_pkce=False,
            allowed_origins=("https://app.example", "http://127.0.0.1:5173"),
        )
        public = Client(client_id="public-app", redirect_uris=("http://127.0.0.1/cb",))
        storage.add_client(client)
        storage.add_client(public)
        assert storage.get_client("app") == client
        assert storage.get_client("public-app") == public
        assert storage.get_client("public-app").public
        assert storage.get_client("nobody") is None

    def test_self_registered_client_round_trips(self, storage: codeflow.Storage) -> None:
        """RFC 7591 §3.2.1, RFC 7592 §3: a client that registered itself keeps how it came
        (registration), its registration access token as a hash, and its metadata."""
        client = Client(
            client_id="dcr_abc",
            redirect_uris=("http://127.0.0.1/cb",),
            name="Self-registered",
            registration=codeflow.REGISTERED_DYNAMICALLY,
            registration_token_hash=codeflow.token_hash("registration-access-token"),
            registered_metadata={
                "client_name": "Self-registered", "application_type": "native",
                "contacts": ["ops@example.com"], "client_id_issued_at": 1800000000,
            },
        )  # fmt: skip
        storage.add_client(client)
        assert storage.get_client("dcr_abc") == client
        assert storage.get_client("dcr_abc").unverified
        assert [c.registration for c in storage.list_clients()] == ["dynamic"]

    def test_add_and_get_user(self, storage: codeflow.Storage) -> None:
        """DESIGN.md Storage contract: "Records in, records out", claims included."""
        user = User("alice", "scrypt$16384$8$1$c2FsdA$a2V5", {"name": "Alice", "email": "a@x"})
        storage.add_user(user)
        assert storage.get_user("alice") == user
        assert storage.get_user("bob") is None

    def test_add_client_replaces_the_same_client_id(self, storage: codeflow.Storage) -> None:
        """Storage.add_client: "Add a client, or replace the one with the same client_id"."""
        storage.add_client(Client(client_id="app", name="Old"))
        storage.add_client(Client(client_id="app", name="New", scopes=("openid",)))
        assert storage.get_client("app") == Client(client_id="app", name="New", scopes=("openid",))
        assert [c.client_id for c in storage.list_clients()] == ["app"]

    def test_list_and_remove_clients(self, storage: codeflow.Storage) -> None:
        """Storage.list_clients and remove_client: every stored client; remove says whether
        there was one to remove."""
        assert storage.list_clients() == []
        clients = [Client(client_id=f"app-{i}", name=f"App {i}") for i in (2, 0, 1)]
        for client in clients:
            storage.add_client(client)
        listed = storage.list_clients()
        assert sorted(listed, key=lambda c: c.client_id) == sorted(
            clients, key=lambda c: c.client_id
        )
        assert storage.remove_client("app-0") is True
        assert storage.remove_client("app-0") is False
        assert storage.remove_client("never-added") is False
        assert storage.get_client("app-0") is None
        assert {c.client_id for c in storage.list_clients()} == {"app-1", "app-2"}

    def test_add_user_replaces_the_same_username(self, storage: codeflow.Storage) -> None:
        """Storage.add_user: "Add a user, or replace the one with the same username"."""
        storage.add_user(User("alice", "old-hash"))
        new = User("alice", "new-hash", {"name": "Alice"}, totp_secret="JBSWY3DP")
        storage.add_user(new)
        assert storage.get_user("alice") == new
        assert [u.username for u in storage.list_users()] == ["alice"]

    def test_list_and_remove_users(self, storage: codeflow.Storage) -> None:
        """Storage.list_users and remove_user: every stored user; remove says whether there
        was one to remove."""
        assert storage.list_users() == []
        users = [User(name, f"hash-{name}", {"name": name.title()}) for name in ("carol", "alice")]
        for user in users:
            storage.add_user(user)
        listed = storage.list_users()
        assert sorted(listed, key=lambda u: u.username) == sorted(users, key=lambda u: u.username)
        assert storage.remove_user("alice") is True
        assert storage.remove_user("alice") is False
        assert storage.get_user("alice") is None
        assert [u.username for u in storage.list_users()] == ["carol"]

    # -- removing a principal removes its grants ---------------------------------

    def test_remove_user_deletes_the_users_grants_in_one_step(
        self, storage: codeflow.Storage
    ) -> None:
        """DESIGN.md Storage contract: "Removing a user or client removes its grants in the
        same transaction"; OIDC Core §2: a sub is "never reassigned", so nothing of a removed
        user passes to a user added later under the same name. Other users keep theirs."""
        storage.add_user(User("alice", "hash-a"))
        storage.add_user(User("bob", "hash-b"))
        storage.save_token(a_token("a1"), a_token("r1", kind="refresh"))
        bobs = a_token("b1", family_id="family-2", username="bob")
        storage.save_token(bobs)
        storage.save_code(a_code("code-a"))
        storage.save_code(a_code("code-b", username="bob"))
        storage.save_consent("alice", "app", ["openid"], NOW)
        storage.save_consent("bob", "app", ["openid"], NOW)
        assert storage.record_totp_step("alice", 100)

        assert storage.remove_user("alice") is True

        assert storage.get_user("alice") is None
        assert storage.get_token("a1") is None and storage.get_token("r1") is None
        assert storage.consume_code("code-a") is None
        assert storage.get_consent("alice", "app") == frozenset()
        assert storage.record_totp_step("alice", 1)  # nothing of the old alice is left
        assert storage.get_token("b1") == bobs
        assert storage.consume_code("code-b") is not None
        assert storage.get_consent("bob", "app") == frozenset({"openid"})

    def test_remove_client_deletes_the_clients_grants_in_one_step(
        self, storage: codeflow.Storage
    ) -> None:
        """DESIGN.md Storage contract: "Removing a user or client removes its grants in the
        same transaction": tokens (client_credentials ones too), codes and consents given to
        it, so that a client registered later under its client_id inherits none."""
        storage.add_client(Client(client_id="app"))
        storage.add_client(Client(client_id="other"))
        machine = a_token("m1", family_id="family-3", username=None)
        storage.save_token(a_token("a1"), a_token("r1", kind="refresh"), machine)
        others = a_token("o1", family_id="family-2", client_id="other")
        storage.save_token(others)
        storage.save_code(a_code("code-app"))
        storage.save_code(a_code("code-other", client_id="other"))
        storage.save_consent("alice", "app", ["openid"], NOW)
        storage.save_consent("alice", "other", ["openid"], NOW)

        assert storage.remove_client("app") is True

        assert storage.get_client("app") is None
        assert [storage.get_token(h) for h in ("a1", "r1", "m1")] == [None, None, None]
        assert storage.consume_code("code-app") is None
        assert storage.get_consent("alice", "app") == frozenset()
        assert storage.get_token("o1") == others
        assert storage.consume_code("code-other") is not None
        assert storage.get_consent("alice", "other") == frozenset({"openid"})

    def test_count_clients_counts_one_registration_kind(self, storage: codeflow.Storage) -> None:
        """Storage.count_clients: how many clients have a registration (RFC 7591 clients
        are counted against the server's limit without listing every client)."""
        assert storage.count_clients("dynamic") == 0
        storage.add_client(Client(client_id="operators"))
        for i in range(3):
            storage.add_client(Client(client_id=f"dcr_{i}", registration="dynamic"))
        assert storage.count_clients("dynamic") == 3
        assert storage.count_clients("") == 1
        storage.remove_client("dcr_0")
        assert storage.count_clients("dynamic") == 2

    def test_remove_unused_clients_keeps_every_client_in_use(
        self, storage: codeflow.Storage
    ) -> None:
        """Storage.remove_unused_clients: self-registered clients issued (RFC 7591 §3.2.1
        client_id_issued_at) before the cut-off and referred to by nothing go; one with a
        consent, an unexpired token, code, device authorization or pushed request stays, as
        do newer ones, other kinds, and those whose only token or code has expired."""

        def registered(client_id: str, issued_at: float, kind: str = "dynamic") -> None:
            storage.add_client(Client(client_id=client_id, registration=kind,
                                      registered_metadata={"client_id_issued_at": issued_at}))

        old = NOW - 2 * 86400
        for name in ("unused", "consented", "token", "code", "device", "pushed", "expired"):
            registered(name, old)
        registered("new", NOW - 60)
        registered("operators", old, kind="")
        storage.save_consent("alice", "consented", ["openid"], NOW)
        storage.save_token(a_token("t1", client_id="token"))
        storage.save_code(a_code("c1", client_id="code"))
        storage.save_device_authorization(a_device(client_id="device"))
        storage.save_pushed_request(a_pushed(client_id="pushed"))
        storage.save_token(a_token("t2", family_id="f2", client_id="expired", expires_at=NOW - 1))
        storage.save_code(a_code("c2", client_id="expired", expires_at=NOW - 1))

        gone = storage.remove_unused_clients("dynamic", NOW - 86400, NOW)

        assert gone == ["expired", "unused"]
        assert {c.client_id for c in storage.list_clients()} == {
            "consented", "token", "code", "device", "pushed", "new", "operators"
        }
        assert storage.remove_unused_clients("dynamic", NOW - 86400, NOW) == []

    def test_removing_an_absent_principal_still_deletes_grants_left_behind(
        self, storage: codeflow.Storage
    ) -> None:
        """Storage.remove_user and remove_client: "The grants go even when the user is already
        gone" (a token request that raced the removal may have saved one); the answer is
        still False, there was no one to remove."""
        storage.save_token(a_token("a1"), a_token("a2", family_id="family-2", username="bob"))
        assert storage.remove_user("alice") is False
        assert storage.get_token("a1") is None
        assert storage.remove_client("app") is False
        assert storage.get_token("a2") is None

    def test_change_credentials_revokes_the_users_refresh_tokens(
        self, storage: codeflow.Storage
    ) -> None:
        """RFC 9700 §4.14.2: "Authorization servers MAY revoke refresh tokens automatically in
        case of a security event, such as: password change"; Storage.change_credentials
        replaces the user and, in the same step, revokes every refresh token of the user and
        deletes the user's unredeemed codes. Access tokens and other users' tokens stay."""
        alice = User("alice", "old-hash")
        storage.add_user(alice)
        storage.add_user(User("bob", "hash-b"))
        storage.save_token(a_token("a1"), a_token("r1", kind="refresh"))
        storage.save_token(a_token("r2", family_id="family-2", kind="refresh"))
        storage.save_token(a_token("rb", family_id="family-3", kind="refresh", username="bob"))
        storage.save_code(a_code("code-a"))
        storage.save_code(a_code("code-b", username="bob"))
        changed = replace(alice, password_hash="new-hash", totp_secret="JBSWY3DP")

        assert storage.change_credentials(changed) is True

        assert storage.get_user("alice") == changed
        assert revoked(storage, "r1") and revoked(storage, "r2")
        assert not revoked(storage, "a1")
        assert not revoked(storage, "rb")
        assert storage.consume_code("code-a") is None
        assert storage.consume_code("code-b") is not None

    def test_change_credentials_of_an_unknown_user_changes_nothing(
        self, storage: codeflow.Storage
    ) -> None:
        """Storage.change_credentials: "False, changing nothing, if there is no such user"."""
        storage.save_token(a_token("r1", kind="refresh"))
        assert storage.change_credentials(User("alice", "new-hash")) is False
        assert storage.get_user("alice") is None
        assert not revoked(storage, "r1")

    # -- subjects: never reassigned (OIDC Core §2) ------------------------------

    def test_a_name_never_used_is_its_own_subject(self, storage: codeflow.Storage) -> None:
        """Storage.add_user: a user whose name no user, stored or removed, ever had gets the
        username as its subject, so that sub is the username where it always was."""
        alice = User("alice", "hash-a")
        added = storage.add_user(alice)
        assert added == alice and added.subject == "alice"
        assert storage.get_user("alice") == added
        assert storage.get_user_by_subject("alice") == added
        assert storage.get_user_by_subject("bob") is None
        assert storage.removed_users("alice") == []

    def test_remove_user_leaves_a_tombstone_and_the_name_a_new_subject(
        self, storage: codeflow.Storage
    ) -> None:
        """OIDC Core §2: sub is "never reassigned". Storage.remove_user keeps the removed
        user's username, subject and the time, for ever; a user added later under that name
        gets a subject no user ever had, a new one every time."""
        storage.add_user(User("alice", "hash-a"))
        bob = storage.add_user(User("bob", "hash-b"))
        assert storage.remove_user("alice", NOW) is True
        second = storage.add_user(User("alice", "hash-a"))
        assert second.subject not in ("alice", "bob", "")
        assert storage.get_user("alice") == second
        assert storage.get_user_by_subject(second.subject) == second
        assert storage.get_user_by_subject("alice") is None
        assert storage.remove_user("alice", NOW + 1) is True
        assert storage.remove_user("alice", NOW + 2) is False  # no one: no tombstone
        third = storage.add_user(User("alice", "hash-a"))
        assert third.subject not in ("alice", "bob", "", second.subject)
        assert storage.removed_users("alice") == [
            RemovedUser("alice", "alice", NOW),
            RemovedUser("alice", second.subject, NOW + 1),
        ]
        assert storage.removed_users(second.subject) == [
            RemovedUser("alice", second.subject, NOW + 1)
        ]
        assert storage.get_user("bob") == bob and bob.subject == "bob"  # others keep theirs

    def test_a_subject_once_given_is_never_given_again(self, storage: codeflow.Storage) -> None:
        """OIDC Core §2: "locally unique and never reassigned". Neither a user named after
        another user's subject, alive or removed, nor a record that comes with a subject
        already had, gets that subject; a subject no user had is kept as given (a store
        copied into another keeps its subs)."""
        storage.add_user(User("alice", "hash"))
        storage.remove_user("alice", NOW)
        alive = storage.add_user(User("alice", "hash")).subject
        storage.remove_user("alice", NOW)
        removed = storage.add_user(User("alice", "hash")).subject
        assert storage.add_user(User(alive, "hash")).subject not in (alive, removed)
        storage.remove_user("alice", NOW)
        assert storage.add_user(User(removed, "hash")).subject not in (alive, removed)
        given = storage.add_user(User("erin", "hash", subject="alice")).subject
        assert given not in ("alice", "erin", alive, removed)
        assert storage.add_user(User("frank", "hash", subject="f-1234")).subject == "f-1234"
        subjects = [u.subject for u in storage.list_users()]
        assert len(set(subjects)) == len(subjects) == 4, subjects

    def test_replacing_or_changing_a_user_keeps_its_subject(
        self, storage: codeflow.Storage
    ) -> None:
        """Storage.add_user (replace) and change_credentials: the same user keeps its
        subject, whatever the record passed says; a subject is the user's for good."""
        storage.add_user(User("alice", "hash"))
        storage.remove_user("alice", NOW)
        alice = storage.add_user(User("alice", "hash"))
        replaced = storage.add_user(User("alice", "new-hash", {"name": "Alice"}))
        assert replaced == replace(alice, password_hash="new-hash", claims={"name": "Alice"},
                                   record_id=replaced.record_id)  # fmt: skip
        assert storage.change_credentials(replace(replaced, password_hash="h2", subject="alice"))
        assert storage.get_user("alice") == replace(replaced, password_hash="h2")
        assert storage.get_user_by_subject("alice") is None

    def test_tombstones_are_kept_for_ever(self, storage: codeflow.Storage) -> None:
        """Storage.remove_user: the tombstone is kept for ever: purge_expired, however late,
        leaves it, so the name still gets a new subject."""
        storage.add_user(User("alice", "hash"))
        storage.remove_user("alice", NOW)
        storage.purge_expired(NOW + 10**9)
        assert storage.removed_users("alice") == [RemovedUser("alice", "alice", NOW)]
        assert storage.add_user(User("alice", "hash")).subject != "alice"

    def test_add_and_remove_racing_never_reassign_a_subject(
        self, storage: codeflow.Storage
    ) -> None:
        """Storage.add_user and remove_user are atomic: threads adding and removing alice at
        once leave every subject with one holder, alive or removed, and the name alice
        as a subject at most once."""

        def call(i: int) -> Any:
            for _ in range(5):
                if i % 2:
                    storage.add_user(User("alice", f"hash-{i}"))
                else:
                    storage.remove_user("alice", NOW)

        race(call)
        tombstones = [t.subject for t in storage.removed_users("alice")]
        alive = storage.get_user("alice")
        subjects = tombstones + ([alive.subject] if alive else [])
        assert len(set(subjects)) == len(subjects), subjects
        assert subjects.count("alice") <= 1

    # -- codes ------------------------------------------------------------------

    def test_consume_code_returns_it_once(self, storage: codeflow.Storage) -> None:
        """RFC 6749 §4.1.2: "The client MUST NOT use the authorization code more than once";
        Storage.consume_code: "Atomically take a code"."""
        code = a_code()
        storage.save_code(code)
        assert storage.consume_code("code-1") == (code, None)
        assert storage.consume_code("code-1") is None

    def test_consume_code_reads_its_user_with_it(self, storage: codeflow.Storage) -> None:
        """Storage.consume_code: the code comes with the stored user it was issued for, every
        field of it (OIDC Core §3.1.3.3: the ID token carries the user's claims as stored),
        or None for a user no longer stored; the code is taken either way."""
        alice = storage.add_user(
            User("alice", "hash-a", {"name": "Alice", "email": "a@x"}, totp_secret="JBSW",
                 declared="entry-hash", subject="s-alice")
        )  # fmt: skip
        storage.add_user(User("bob", "hash-b"))
        storage.save_code(a_code("code-1"))
        storage.save_code(a_code("code-2", username="gone"))
        assert storage.consume_code("code-1") == (a_code("code-1"), alice)
        assert storage.consume_code("code-2") == (a_code("code-2", username="gone"), None)
        assert storage.consume_code("code-2") is None

    def test_get_token_and_user(self, storage: codeflow.Storage) -> None:
        """Storage.get_token_and_user: a token with its stored user, every field of it, read
        together (what a refresh, OIDC Core §12.2, and userinfo, §5.3, need); None as the
        user for a client's own token (RFC 6749 §4.4) or a user no longer stored; None for
        no token."""
        alice = storage.add_user(
            User("alice", "hash-a", {"name": "Alice"}, totp_secret="JBSW", subject="s-alice")
        )
        storage.add_user(User("bob", "hash-b"))
        machine = a_token("m1", family_id="family-2", username=None, scope=("api:read",))
        gone = a_token("g1", family_id="family-3", username="gone")
        for token in (a_token("a1"), machine, gone):
            storage.save_token(token)
        assert storage.get_token_and_user("a1") == (a_token("a1"), alice)
        assert storage.get_token_and_user("m1") == (machine, None)
        assert storage.get_token_and_user("g1") == (gone, None)
        assert storage.get_token_and_user("nothing") is None

    def test_consume_unknown_code_is_none(self, storage: codeflow.Storage) -> None:
        """Storage.consume_code: a code that was never saved is not there to take."""
        storage.save_code(a_code("code-1"))
        assert storage.consume_code("code-2") is None
        assert storage.consume_code("code-1") is not None

    def test_consume_code_race_has_one_winner(self, storage: codeflow.Storage) -> None:
        """Storage.consume_code: "Atomically take a code: of N concurrent callers, at most one
        gets it."""
        code = a_code()
        storage.save_code(code)
        results = race(lambda i: storage.consume_code("code-1"))
        assert [r for r in results if r is not None] == [(code, None)]

    # -- resources (RFC 8707) ----------------------------------------------------

    def test_add_get_list_and_remove_resources(self, storage: codeflow.Storage) -> None:
        """RFC 8707 §2: a resource is registered by its URI, "an absolute URI"; Storage
        add_resource/get_resource/list_resources/remove_resource: records in, records out,
        replaced by URI, removal says whether there was one."""
        assert storage.list_resources() == []
        api = Resource(
            uri="https://api.example/v1",
            scopes=("read", "write"),
            name="Example API",
            access_token_jwt=False,
            access_token_lifetime=300,
            introspection=False,
            client_id="api-server",
        )
        mcp = Resource(uri="https://mcp.example/mcp")
        storage.add_resource(api)
        storage.add_resource(mcp)
        assert storage.get_resource("https://api.example/v1") == api
        assert storage.get_resource("https://mcp.example/mcp") == mcp
        assert storage.get_resource("https://api.example/v1/") is None
        assert storage.list_resources() == [api, mcp]
        renamed = Resource(uri="https://mcp.example/mcp", name="MCP", scopes=("tools",))
        storage.add_resource(renamed)
        assert storage.list_resources() == [api, renamed]
        assert storage.remove_resource("https://api.example/v1") is True
        assert storage.remove_resource("https://api.example/v1") is False
        assert storage.list_resources() == [renamed]

    def test_resource_fields_of_clients_codes_and_tokens_round_trip(
        self, storage: codeflow.Storage
    ) -> None:
        """RFC 8707 §2.1-2.2: the resources a code was authorized for and a token's audience
        are kept; RFC 8693 §4.1: an exchanged token's act claim; a client's allowed and
        token-exchange resources."""
        client = Client(
            client_id="svc",
            secret_hash="scrypt$16384$8$1$c2FsdA$a2V5",
            resources=("https://api.example/v1",),
            token_exchange=("https://db.example/", "https://mail.example/"),
        )
        storage.add_client(client)
        assert storage.get_client("svc") == client
        code = a_code(resources=("https://api.example/v1", "https://mcp.example/mcp"))
        storage.save_code(code)
        assert storage.consume_code("code-1") == (code, None)
        token = a_token("x1", audience=("https://db.example/",), actor={"sub": "svc"})
        storage.save_token(token)
        assert storage.get_token("x1") == token

    # -- tokens ----------------------------------------------------------------

    def test_save_and_get_token(self, storage: codeflow.Storage) -> None:
        """DESIGN.md Storage contract: tokens are kept by hash, records in, records out."""
        access = a_token("a1")
        machine = a_token("m1", family_id="family-2", username=None, scope=("api:read",))
        storage.save_token(access)
        storage.save_token(machine)
        assert storage.get_token("a1") == access
        assert storage.get_token("m1") == machine
        assert storage.get_token("nothing") is None

    def test_tokens_for_a_holder_are_saved_only_while_it_is_the_stored_user(
        self, storage: codeflow.Storage
    ) -> None:
        """Storage.save_token(holder=...): the tokens of a grant checked against a user
        record are stored only while the stored user of that name is that record (same
        subject, password hash, TOTP secret). A removal or a change of credentials that
        commits between the check and the save leaves no token (RFC 9700 §4.14.2: it ends
        the grants made under the old credentials; OIDC Core §2: a new user under the
        name is another person); a client's own tokens have no holder."""
        alice = storage.add_user(User("alice", "hash-a", {"name": "Alice"}))
        assert storage.save_token(a_token("a1"), holder=alice) is True
        assert storage.get_token("a1") == a_token("a1")
        storage.add_user(replace(alice, claims={"name": "Alice L."}))  # claims only: same
        assert storage.save_token(a_token("a2"), holder=alice) is True
        storage.change_credentials(User("alice", "hash-b"))
        assert storage.save_token(a_token("a3"), holder=alice) is False
        assert storage.get_token("a3") is None
        changed = storage.get_user("alice")
        assert changed is not None
        storage.remove_user("alice")
        assert storage.save_token(a_token("a4"), holder=changed) is False
        storage.add_user(User("alice", "hash-b"))  # another person, with another subject
        assert storage.save_token(a_token("a5"), holder=changed) is False
        assert storage.get_token("a5") is None
        machine = a_token("m1", family_id="family-2", username=None, scope=("api:read",))
        assert storage.save_token(machine) is True
        assert storage.get_token("m1") == machine

    def test_tokens_saved_racing_a_change_of_credentials_do_not_outlive_it(
        self, storage: codeflow.Storage
    ) -> None:
        """RFC 9700 §4.14.2 (Storage.save_token with a holder, change_credentials): token
        requests checked under the old password that race its change, in any order,
        leave no refresh token active: each is refused, or stored and then revoked."""
        for attempt in range(5):
            alice = storage.add_user(User("alice", f"hash-{attempt}"))

            def call(i: int, attempt: int = attempt, alice: User = alice) -> bool:
                if i == 0:
                    return storage.change_credentials(User("alice", f"new-{attempt}"))
                refresh = a_token(f"r{attempt}-{i}", family_id=f"f{attempt}-{i}", kind="refresh")
                return storage.save_token(refresh, holder=alice)

            saved = race(call)
            assert saved[0] is True
            for i in range(1, THREADS):
                token = storage.get_token(f"r{attempt}-{i}")
                assert (token is None) is (saved[i] is False), (i, saved, token)
                assert token is None or token.revoked, (i, token)

    def test_tokens_saved_racing_a_removal_of_their_user_do_not_outlive_it(
        self, storage: codeflow.Storage
    ) -> None:
        """OIDC Core §2, RFC 9700 §4.14.2 (Storage.save_token with a holder, remove_user):
        token requests checked against a user that race its removal, in any order, leave
        no token of the user: each is refused, or stored and then deleted with the user.
        A token left behind would belong to the next user given the name, as tokens join
        their user by username (get_token_and_user)."""
        for attempt in range(10):
            alice = storage.add_user(User("alice", f"hash-{attempt}"))

            def call(i: int, attempt: int = attempt, alice: User = alice) -> bool:
                if i == THREADS // 2:  # among the savers, so some start before it, some after
                    return storage.remove_user("alice")
                refresh = a_token(f"r{attempt}-{i}", family_id=f"f{attempt}-{i}", kind="refresh")
                access = a_token(f"a{attempt}-{i}", family_id=f"f{attempt}-{i}")
                return storage.save_token(access, refresh, holder=alice)

            saved = race(call)
            assert saved[THREADS // 2] is True
            left = [
                name
                for i in range(THREADS)
                for name in (f"r{attempt}-{i}", f"a{attempt}-{i}")
                if storage.get_token(name) is not None
            ]
            assert left == [], (attempt, saved, left)

    def test_refresh_rotations_racing_a_removal_of_their_user_leave_no_token(
        self, storage: codeflow.Storage
    ) -> None:
        """OIDC Core §2, RFC 9700 §4.14.2 (Storage.rotate_refresh_token, remove_user):
        refresh rotations that race the removal of their user, in any order, leave no
        token of the user: a rotation that commits first has its new tokens deleted with
        the user, one after finds its refresh token gone. (issue_tokens relies on this to
        need no holder check on a refresh.)"""
        for attempt in range(10):
            storage.add_user(User("alice", f"hash-{attempt}"))
            names = [f"{kind}{attempt}-{i}" for i in range(THREADS) for kind in "oar"]
            for i in range(THREADS):
                storage.save_token(a_token(f"o{attempt}-{i}", f"f{attempt}-{i}", "refresh"))

            def call(i: int, attempt: int = attempt) -> bool:
                if i == THREADS // 2:
                    return storage.remove_user("alice")
                family = f"f{attempt}-{i}"
                return storage.rotate_refresh_token(
                    f"o{attempt}-{i}",
                    a_token(f"a{attempt}-{i}", family),
                    a_token(f"r{attempt}-{i}", family, "refresh"),
                )

            rotated = race(call)
            left = [name for name in names if storage.get_token(name) is not None]
            assert left == [], (attempt, rotated, left)

    def test_refresh_rotations_racing_a_change_of_credentials_leave_none_active(
        self, storage: codeflow.Storage
    ) -> None:
        """RFC 9700 §4.14.2 (Storage.rotate_refresh_token, change_credentials): refresh
        rotations that race a change of their user's password, in any order, leave no
        refresh token of the user active: the change revokes the new ones, or the
        rotation finds the old one revoked."""
        for attempt in range(10):
            storage.add_user(User("alice", f"hash-{attempt}"))
            for i in range(THREADS):
                storage.save_token(a_token(f"o{attempt}-{i}", f"f{attempt}-{i}", "refresh"))

            def call(i: int, attempt: int = attempt) -> bool:
                if i == THREADS // 2:
                    return storage.change_credentials(User("alice", f"new-{attempt}"))
                family = f"f{attempt}-{i}"
                return storage.rotate_refresh_token(
                    f"o{attempt}-{i}", a_token(f"r{attempt}-{i}", family, "refresh")
                )

            rotated = race(call)
            active = [
                name
                for i in range(THREADS)
                for name in (f"o{attempt}-{i}", f"r{attempt}-{i}")
                if (token := storage.get_token(name)) is not None and not token.revoked
            ]
            assert active == [], (attempt, rotated, active)
            storage.remove_user("alice")

    def test_rotate_refresh_token_once(self, storage: codeflow.Storage) -> None:
        """RFC 9700 §4.14.2: a rotated refresh token is invalidated; Storage.rotate_refresh_token
        "Atomically revoke the active refresh token old_hash and save new"."""
        storage.save_token(a_token("r1", kind="refresh"))
        r2 = a_token("r2", kind="refresh", issued_at=NOW + 10)
        assert storage.rotate_refresh_token("r1", r2) is True
        assert revoked(storage, "r1")
        assert storage.get_token("r2") == r2
        assert storage.rotate_refresh_token("r1", a_token("r3", kind="refresh")) is False
        assert storage.get_token("r3") is None
        assert storage.rotate_refresh_token("r2", a_token("r3", kind="refresh")) is True

    @pytest.mark.parametrize("old", ["unknown", "revoked"])
    def test_rotate_unknown_or_revoked_saves_nothing(
        self, storage: codeflow.Storage, old: str
    ) -> None:
        """Storage.rotate_refresh_token: "Returns False, saving nothing, when old_hash is
        unknown or already revoked"."""
        storage.save_token(a_token("revoked", kind="refresh", revoked=True))
        new = a_token("new", kind="refresh")
        assert storage.rotate_refresh_token(old, new) is False
        assert storage.get_token("new") is None

    def test_rotate_refresh_token_race_has_one_winner(self, storage: codeflow.Storage) -> None:
        """Storage.rotate_refresh_token: "of N concurrent rotations of one token, at most one
        succeeds."""
        storage.save_token(a_token("r1", kind="refresh"))
        results = race(
            lambda i: storage.rotate_refresh_token("r1", a_token(f"new-{i}", kind="refresh"))
        )
        assert results.count(True) == 1, results
        assert results.count(False) == THREADS - 1, results
        winner = results.index(True)
        saved = [i for i in range(THREADS) if storage.get_token(f"new-{i}") is not None]
        assert saved == [winner]
        assert revoked(storage, "r1")

    def test_revoke_token_revokes_that_token_only(self, storage: codeflow.Storage) -> None:
        """RFC 7009 §2.1: revoking an access token; its grant's other tokens are untouched."""
        storage.save_token(a_token("a1"))
        storage.save_token(a_token("r1", kind="refresh"))
        storage.revoke_token("a1")
        assert revoked(storage, "a1")
        assert not revoked(storage, "r1")
        storage.revoke_token("unknown")  # nothing to revoke, and no error
        assert storage.get_token("unknown") is None

    # -- families --------------------------------------------------------------

    def test_revoke_family_revokes_members_and_later_tokens(
        self, storage: codeflow.Storage
    ) -> None:
        """Storage.revoke_family: "Revoke every token of a grant, including any saved after this
        call"; Storage.save_token: "a token of a revoked family is stored as revoked"."""
        storage.save_token(a_token("a1"))
        storage.save_token(a_token("r1", kind="refresh"))
        storage.save_token(a_token("other", family_id="family-2"))

        storage.revoke_family("family-1")

        assert revoked(storage, "a1") and revoked(storage, "r1")
        assert not revoked(storage, "other")
        storage.save_token(a_token("a2"))
        assert revoked(storage, "a2")
        storage.save_token(a_token("other-2", family_id="family-2"))
        assert not revoked(storage, "other-2")

    def test_revoke_family_of_an_unknown_family_is_not_remembered(
        self, storage: codeflow.Storage
    ) -> None:
        """Storage.revoke_family: only grants that exist are revoked, so requests carrying
        random codes cannot grow the store, nor pre-revoke a family id."""
        storage.revoke_family("never-seen")
        storage.save_token(a_token("a1", family_id="never-seen"))
        assert not revoked(storage, "a1")

    def test_revoke_family_of_a_consumed_code_revokes_tokens_saved_later(
        self, storage: codeflow.Storage
    ) -> None:
        """RFC 6749 §4.1.2: a replayed code SHOULD revoke "all tokens previously issued based on
        that authorization code"; Storage.consume_code: "The store remembers that the code was
        used, so that a replay can revoke the tokens it issued (revoke_family(code_hash))"."""
        storage.save_code(a_code("code-1"))
        assert storage.consume_code("code-1") is not None
        storage.revoke_family("code-1")  # the replay wins the race with the first redemption
        storage.save_token(a_token("a1", family_id="code-1"))
        assert revoked(storage, "a1")

    # -- consents --------------------------------------------------------------

    def test_consents_accumulate_per_user_and_client(self, storage: codeflow.Storage) -> None:
        """DESIGN.md: consent is remembered per user and client; new grants add to old ones."""
        assert storage.get_consent("alice", "app") == frozenset()
        storage.save_consent("alice", "app", ["openid", "profile"], NOW)
        storage.save_consent("alice", "app", ("email", "openid"), NOW + 1)
        assert storage.get_consent("alice", "app") == frozenset({"openid", "profile", "email"})
        assert storage.get_consent("alice", "other-app") == frozenset()
        assert storage.get_consent("bob", "app") == frozenset()

    # -- grants: what a user gave a client, and ending it ----------------------------

    def test_a_consent_is_bound_to_what_the_client_was(self, storage: codeflow.Storage) -> None:
        """Storage.save_consent / get_consent ``bound_to`` (codeflow.consent_binding: a
        metadata document's redirect URIs, RFC 8252 §8.6): a consent answers only under
        the binding it was given under; a consent under another binding replaces it
        rather than adding to it. Without a binding, as before."""
        storage.save_consent("alice", "doc", ["openid"], NOW, "uris-1")
        storage.save_consent("alice", "doc", ["email"], NOW, "uris-1")
        assert storage.get_consent("alice", "doc", "uris-1") == frozenset({"openid", "email"})
        assert storage.get_consent("alice", "doc", "uris-2") == frozenset()
        assert storage.get_consent("alice", "doc") == frozenset()
        storage.save_consent("alice", "doc", ["profile"], NOW + 1, "uris-2")
        assert storage.get_consent("alice", "doc", "uris-2") == frozenset({"profile"})
        assert storage.get_consent("alice", "doc", "uris-1") == frozenset()
        [grant] = storage.list_grants(NOW, "alice", "doc")
        assert grant.scopes == frozenset({"profile"}) and grant.consented_at == NOW + 1
        storage.save_consent("alice", "app", ["openid"], NOW)
        assert storage.get_consent("alice", "app") == frozenset({"openid"})

    def test_list_grants_reports_consent_and_active_tokens_per_user_and_client(
        self, storage: codeflow.Storage
    ) -> None:
        """Storage.list_grants: every pair "with a stored consent or an active token", with
        the consented scopes, when consent was last given, and how many active access and
        refresh tokens it has. Revoked and expired tokens count for nothing, and a
        client_credentials token (no user) is no user's grant."""
        storage.save_consent("alice", "app", ["openid"], NOW - 100)
        storage.save_consent("alice", "app", ["profile"], NOW - 50)
        storage.save_token(a_token("a1"), a_token("r1", kind="refresh"), a_token("a2"))
        storage.save_token(a_token("revoked", revoked=True), a_token("expired", expires_at=NOW))
        storage.save_token(a_token("b1", family_id="family-2", username="bob", client_id="other"))
        storage.save_token(a_token("m1", family_id="family-3", username=None))
        storage.save_token(a_token("d1", family_id="family-4", username="dave", revoked=True))
        storage.save_consent("carol", "other", ["openid"], NOW - 10)  # consent, no token yet

        assert storage.list_grants(NOW) == [
            Grant("alice", "app", frozenset({"openid", "profile"}), NOW - 50, 2, 1),
            Grant("bob", "other", None, None, 1, 0),
            Grant("carol", "other", frozenset({"openid"}), NOW - 10, 0, 0),
        ]

    def test_list_grants_of_one_user_or_one_client(self, storage: codeflow.Storage) -> None:
        """Storage.list_grants: "only username's or client_id's when given"."""
        storage.save_consent("alice", "app", ["openid"], NOW)
        storage.save_consent("alice", "other", ["openid"], NOW)
        storage.save_token(a_token("b1", username="bob"))
        storage.save_token(a_token("b2", family_id="family-2", username="bob", client_id="other"))

        def pairs(**only: str) -> list[tuple[str, str]]:
            return [(g.username, g.client_id) for g in storage.list_grants(NOW, **only)]

        assert pairs(username="alice") == [("alice", "app"), ("alice", "other")]
        assert pairs(client_id="app") == [("alice", "app"), ("bob", "app")]
        assert pairs(username="bob", client_id="other") == [("bob", "other")]
        assert pairs(username="nobody") == []

    def test_revoke_grant_ends_consent_tokens_and_codes_of_that_pair_only(
        self, storage: codeflow.Storage
    ) -> None:
        """RFC 7009 §2.1: "the revocation of a particular token may cause the revocation of
        related tokens and the underlying authorization grant"; Storage.revoke_grant ends the
        grant itself, in one transaction: the consent goes, every token of the user and
        client is revoked (of every sign-in: each is a family of its own) and their
        unredeemed codes are deleted. The user's grants to other clients and other users'
        grants to the client stay."""
        storage.save_consent("alice", "app", ["openid"], NOW)
        storage.save_consent("alice", "other", ["openid"], NOW)
        storage.save_consent("bob", "app", ["openid"], NOW)
        storage.save_token(a_token("a1"), a_token("r1", kind="refresh"))
        storage.save_token(a_token("a2", family_id="family-2"))
        storage.save_token(a_token("o1", family_id="family-3", client_id="other"))
        storage.save_token(a_token("b1", family_id="family-4", username="bob"))
        storage.save_code(a_code("code-a"))
        storage.save_code(a_code("code-o", client_id="other"))

        assert storage.revoke_grant("alice", "app", NOW) is True

        assert storage.get_consent("alice", "app") == frozenset()
        assert all(revoked(storage, h) for h in ("a1", "r1", "a2"))
        assert storage.rotate_refresh_token("r1", a_token("r2", kind="refresh")) is False
        assert storage.consume_code("code-a") is None
        assert not revoked(storage, "o1") and not revoked(storage, "b1")
        assert storage.get_consent("alice", "other") == frozenset({"openid"})
        assert storage.get_consent("bob", "app") == frozenset({"openid"})
        assert storage.consume_code("code-o") is not None
        remaining = [(g.username, g.client_id) for g in storage.list_grants(NOW)]
        assert remaining == [("alice", "other"), ("bob", "app")]

    def test_revoke_grant_without_a_grant_is_false(self, storage: codeflow.Storage) -> None:
        """Storage.revoke_grant: "True if there was a grant to end (a consent or an active
        token)"; nothing, or only tokens already revoked or expired, is no grant."""
        assert storage.revoke_grant("alice", "app", NOW) is False
        storage.save_token(a_token("old", expires_at=NOW))
        storage.save_token(a_token("gone", family_id="family-2", revoked=True))
        assert storage.revoke_grant("alice", "app", NOW) is False
        storage.save_token(a_token("a1", family_id="family-3"))
        assert storage.revoke_grant("alice", "app", NOW) is True
        assert storage.revoke_grant("alice", "app", NOW) is False
        storage.save_consent("alice", "app", ["openid"], NOW)
        assert storage.revoke_grant("alice", "app", NOW) is True
        assert storage.revoke_grant("alice", "app", NOW) is False

    def test_revoke_grant_racing_rotations_leaves_no_active_token(
        self, storage: codeflow.Storage
    ) -> None:
        """Storage.revoke_grant is one transaction: a refresh-token rotation racing it either
        ends before it (and its new tokens are revoked with the rest) or finds the old token
        revoked and saves nothing, so no active token of the grant survives; and of several
        revocations at once, exactly one finds the grant."""
        storage.save_consent("alice", "app", ["openid"], NOW)
        for i in range(0, THREADS, 2):
            storage.save_token(a_token(f"r{i}", family_id=f"family-{i}", kind="refresh"))

        def call(i: int) -> bool:
            if i % 2:
                return storage.revoke_grant("alice", "app", NOW)
            new = (
                a_token(f"r{i}-next", family_id=f"family-{i}", kind="refresh"),
                a_token(f"a{i}-next", family_id=f"family-{i}"),
            )
            return storage.rotate_refresh_token(f"r{i}", *new)

        results = race(call)
        assert [results[i] for i in range(1, THREADS, 2)].count(True) == 1, results
        assert storage.list_grants(NOW) == []

    def test_change_record_id_changes_that_and_nothing_else(
        self, storage: codeflow.Storage
    ) -> None:
        """Storage.change_record_id: "Atomically give the user record_id and change nothing
        else": password, second factor, claims, tokens and consents stay. False, changing
        nothing, for a user who is not there."""
        alice = User("alice", "hash", {"name": "Alice"}, "JBSWY3DP", record_id="old-id")
        storage.add_user(alice)
        storage.save_token(a_token("r1", kind="refresh"))
        storage.save_consent("alice", "app", ["openid"], NOW)

        assert storage.change_record_id("alice", "new-id") is True

        assert storage.get_user("alice") == replace(alice, record_id="new-id")
        assert not revoked(storage, "r1")
        assert storage.get_consent("alice", "app") == frozenset({"openid"})
        assert storage.change_record_id("bob", "other-id") is False
        assert storage.get_user("bob") is None

    # -- settings and signing keys ----------------------------------------------

    def test_get_or_add_setting_keeps_the_first_value(self, storage: codeflow.Storage) -> None:
        """Storage.get_or_add_setting: "return the stored value of name, storing candidate if
        none: processes sharing a store agree on one value"."""
        assert storage.get_or_add_setting("cookie_key", "first") == "first"
        assert storage.get_or_add_setting("cookie_key", "second") == "first"
        assert storage.get_or_add_setting("other", "third") == "third"

    def test_get_or_add_setting_race_agrees_on_one_value(self, storage: codeflow.Storage) -> None:
        """Storage.get_or_add_setting: "Atomically return the stored value of name, storing
        candidate if none"."""
        results = race(lambda i: storage.get_or_add_setting("cookie_key", f"candidate-{i}"))
        assert len(set(results)) == 1, results
        assert results[0] in {f"candidate-{i}" for i in range(THREADS)}
        assert storage.get_or_add_setting("cookie_key", "late") == results[0]

    def test_get_or_add_signing_key_keeps_one_current_key_per_alg(
        self, storage: codeflow.Storage
    ) -> None:
        """Storage.get_or_add_signing_key: "return the current key (expires_at None) of
        candidate.alg, adding candidate if there is none"; signing_keys: "Every stored
        signing key, newest first"."""
        assert storage.signing_keys() == []
        rs = a_key("rs-1", "RS256", NOW)
        assert storage.get_or_add_signing_key(rs) == rs
        assert storage.get_or_add_signing_key(a_key("rs-2", "RS256", NOW + 1)) == rs
        es = a_key("es-1", "ES256", NOW + 2)
        assert storage.get_or_add_signing_key(es) == es
        assert storage.signing_keys() == [es, rs]

    def test_get_or_add_signing_key_race_agrees_on_one_key(self, storage: codeflow.Storage) -> None:
        """Storage.get_or_add_signing_key: "Atomically return the current key ... adding
        candidate if there is none": processes sharing a store share one key."""
        results = race(lambda i: storage.get_or_add_signing_key(a_key(f"rs-{i}")))
        assert len({k.kid for k in results}) == 1, [k.kid for k in results]
        assert storage.signing_keys() == [results[0]]

    def test_rotate_signing_key_retires_the_current_key(self, storage: codeflow.Storage) -> None:
        """Storage.rotate_signing_key: "Atomically add new and give the current key of its alg
        retire_until"; keys of other algs are untouched."""
        old_rs = storage.get_or_add_signing_key(a_key("rs-1", "RS256", NOW))
        es = storage.get_or_add_signing_key(a_key("es-1", "ES256", NOW))
        new_rs = a_key("rs-2", "RS256", NOW + 10)

        storage.rotate_signing_key(new_rs, retire_until=NOW + 3600)

        keys = storage.signing_keys()
        assert keys[0] == new_rs
        assert sorted(keys, key=lambda k: k.kid) == [
            es,
            replace(old_rs, expires_at=NOW + 3600),
            new_rs,
        ]
        assert storage.get_or_add_signing_key(a_key("rs-3", "RS256")) == new_rs
        assert current_keys(storage, "ES256") == [es]

    def test_rotate_signing_key_race_leaves_one_current_key(
        self, storage: codeflow.Storage
    ) -> None:
        """Storage.rotate_signing_key is atomic: after N concurrent rotations every key but the
        last one added is retired, so exactly one key of the alg is current."""
        storage.get_or_add_signing_key(a_key("rs-0"))
        race(lambda i: storage.rotate_signing_key(a_key(f"rs-{i + 1}"), NOW + 3600))
        keys = storage.signing_keys()
        assert len(keys) == THREADS + 1
        current = current_keys(storage, "RS256")
        assert len(current) == 1, current
        assert keys[0] == current[0]

    # -- housekeeping ----------------------------------------------------------

    def test_purge_expired_deletes_expired_records_and_counts_them(
        self, storage: codeflow.Storage
    ) -> None:
        """Storage.purge_expired: "Delete expired codes, tokens and signing keys; return how
        many went."""
        storage.save_code(a_code("old-code", expires_at=NOW))
        storage.save_code(a_code("live-code", expires_at=NOW + 60))
        storage.save_token(a_token("old-access", expires_at=NOW - 1))
        storage.save_token(a_token("old-refresh", kind="refresh", expires_at=NOW))
        storage.save_token(a_token("live-refresh", kind="refresh", expires_at=NOW + 1))

        assert storage.purge_expired(NOW) == 3

        assert storage.get_token("old-access") is None
        assert storage.get_token("old-refresh") is None
        assert storage.get_token("live-refresh") is not None
        assert storage.consume_code("old-code") is None
        assert storage.consume_code("live-code") is not None
        assert storage.purge_expired(NOW) == 0

    def test_purge_expired_drops_retired_signing_keys(self, storage: codeflow.Storage) -> None:
        """Storage.purge_expired: "Delete expired codes, tokens and signing keys"; a current key
        (expires_at None) never expires."""
        storage.get_or_add_signing_key(a_key("rs-1", created_at=NOW - 10))
        storage.rotate_signing_key(a_key("rs-2", created_at=NOW - 5), retire_until=NOW)
        storage.rotate_signing_key(a_key("rs-3", created_at=NOW), retire_until=NOW + 60)

        assert storage.purge_expired(NOW) == 1

        assert [k.kid for k in storage.signing_keys()] == ["rs-3", "rs-2"]
        assert storage.purge_expired(NOW + 60) == 1
        assert [k.kid for k in storage.signing_keys()] == ["rs-3"]
        assert storage.purge_expired(NOW + 10**9) == 0

    def test_purge_keeps_a_revoked_family_revoked(self, storage: codeflow.Storage) -> None:
        """Storage.revoke_family revokes tokens "saved after this call", also after a purge
        removed the family's expired members."""
        storage.save_token(a_token("old-access", expires_at=NOW))
        storage.save_token(a_token("r1", kind="refresh", expires_at=NOW + 3600))
        storage.revoke_family("family-1")
        storage.purge_expired(NOW)
        storage.save_token(a_token("a2"))
        assert revoked(storage, "a2")

    # -- rate budgets (RFC 6585 §4: 429 Too Many Requests) ----------------------------------

    def test_spend_budget_gives_a_burst_then_one_each_interval(
        self, storage: codeflow.Storage
    ) -> None:
        """Storage.spend_budget, a token bucket: ``burst`` spends at once, then one each
        ``interval`` s; a refusal spends nothing and says how long until the next; keys
        spend apart; purge_expired forgets a budget once it is whole again."""
        assert [storage.spend_budget("k", NOW, 60, 3) for _ in range(3)] == [0, 0, 0]
        assert storage.spend_budget("k", NOW, 60, 3) == 60
        assert storage.spend_budget("k", NOW + 45, 60, 3) == 15  # refused: nothing spent
        assert storage.spend_budget("other", NOW, 60, 3) == 0
        assert storage.spend_budget("k", NOW + 60, 60, 3) == 0
        assert storage.spend_budget("k", NOW + 60, 60, 3) == 60
        assert storage.spend_budget("k", NOW + 150, 60, 3) == 0  # 90 s: one back, and half
        assert storage.spend_budget("k", NOW + 150, 60, 3) == 30
        storage.purge_expired(NOW + 300 - 1)
        assert storage.failures("k", NOW, 10**6).until == NOW + 300
        storage.purge_expired(NOW + 300)  # whole again: forgotten
        assert storage.failures("k", NOW, 10**6) == codeflow.FailureCount()
        assert [storage.spend_budget("k", NOW + 400, 60, 3) for _ in range(4)] == [0, 0, 0, 60]

    def test_spend_budget_race_spends_no_more_than_the_budget(
        self, storage: codeflow.Storage
    ) -> None:
        """THREADS spends at once on one key of a budget of THREADS // 2: exactly that many
        succeed, from any thread or process (so nodes sharing a store share the budget)."""
        waits = race(lambda i: storage.spend_budget("address", NOW, 60, THREADS // 2))
        assert waits.count(0) == THREADS // 2, waits
        assert storage.spend_budget("address", NOW, 60, THREADS // 2) == 60

    # -- sign-in throttle counts (NIST SP 800-63B §5.2.2) -----------------------------------

    def test_count_failure_counts_consecutive_failures_within_the_window(
        self, storage: codeflow.Storage
    ) -> None:
        """NIST SP 800-63B §5.2.2 rate limiting: Storage.count_failure returns the consecutive
        failures of a key, each within ``window`` of the next; an older count starts again;
        clear_failures forgets it (a success); keys count apart."""
        assert storage.failures("k", NOW, 100).count == 0
        assert [storage.count_failure("k", NOW + i, 100) for i in range(3)] == [1, 2, 3]
        assert storage.count_failure("other", NOW, 100) == 1
        stored = storage.failures("k", NOW + 50, 100)
        assert (stored.count, stored.last) == (3, NOW + 2)
        assert storage.failures("k", NOW + 102, 100).count == 0  # forgotten, not deleted
        assert storage.count_failure("k", NOW + 102, 100) == 1
        storage.clear_failures(["k", "absent"])
        assert storage.failures("k", NOW + 103, 100) == codeflow.FailureCount()
        assert storage.failures("other", NOW + 1, 100).count == 1

    def test_hold_failures_keeps_the_latest_until(self, storage: codeflow.Storage) -> None:
        """A gate's wait (NIST SP 800-63B §5.2.2) is kept to the latest until given, and a
        count on the same key leaves it."""
        storage.hold_failures("gate", NOW + 60)
        storage.hold_failures("gate", NOW + 30)
        assert storage.count_failure("gate", NOW, 100) == 1
        assert storage.failures("gate", NOW, 100).until == NOW + 60

    def test_purge_expired_forgets_old_failure_counts(self, storage: codeflow.Storage) -> None:
        """Storage.purge_expired: a count goes ``window`` after its last failure, a held
        gate not before its until; neither is counted as a record."""
        storage.count_failure("old", NOW, 100)
        storage.count_failure("held", NOW, 100)
        storage.hold_failures("held", NOW + 500)
        storage.count_failure("recent", NOW + 50, 100)
        assert storage.purge_expired(NOW + 100) == 0
        assert storage.failures("old", NOW, 10**6) == codeflow.FailureCount()
        assert storage.failures("held", NOW, 10**6).until == NOW + 500
        assert storage.failures("recent", NOW + 60, 100).count == 1
        storage.purge_expired(NOW + 500)
        assert storage.failures("held", NOW, 10**6) == codeflow.FailureCount()

    def test_count_failure_race_gives_distinct_counts(self, storage: codeflow.Storage) -> None:
        """THREADS failures counted at once on one key get THREADS distinct counts: no
        failure is lost to a concurrent one (so nodes sharing a store share the budget)."""
        counts = race(lambda i: storage.count_failure("alice", NOW, 100))
        assert sorted(counts) == list(range(1, THREADS + 1))
        assert storage.failures("alice", NOW, 100).count == THREADS

    def test_remember_address_keeps_the_most_recent_addresses_of_a_user(
        self, storage: codeflow.Storage
    ) -> None:
        """NIST SP 800-63B §5.2.2 ("IP addresses from which the subscriber has been
        successfully authenticated before"): Storage.remember_address keeps the ``keep``
        most recent addresses of the user (by when it last signed in from each), this one
        always among them; known_address finds them by the user's name, and no other
        user's."""
        alice = storage.add_user(User("alice", "hash"))
        storage.add_user(User("bob", "hash"))
        assert not storage.known_address("alice", "192.0.2.1")
        for i in range(5):
            storage.remember_address(alice, f"192.0.2.{i}", NOW + i, 4)
        known = [storage.known_address("alice", f"192.0.2.{i}") for i in range(5)]
        assert known == [False, True, True, True, True]
        storage.remember_address(alice, "192.0.2.1", NOW + 10, 4)  # again: the latest
        storage.remember_address(alice, "2001:db8::/56", NOW + 11, 4)
        known = [storage.known_address("alice", f"192.0.2.{i}") for i in range(5)]
        assert known == [False, True, False, True, True]
        assert storage.known_address("alice", "2001:db8::/56")
        assert not storage.known_address("bob", "192.0.2.1")
        assert not storage.known_address("nobody", "192.0.2.1")

    def test_changed_credentials_forget_the_known_addresses(
        self, storage: codeflow.Storage
    ) -> None:
        """Storage.change_credentials ends what the old credentials were trusted for (RFC
        9700 §4.14.2), the addresses a sign-in with them completed from included (NIST SP
        800-63B §5.2.2): after a compromise, the attacker's address passes no account gate.
        The user's own sign-ins afterwards make hers known again."""
        alice = storage.add_user(User("alice", "hash"))
        bob = storage.add_user(User("bob", "hash"))
        storage.remember_address(alice, "192.0.2.1", NOW, 4)
        storage.remember_address(bob, "192.0.2.1", NOW, 4)
        changed = replace(alice, password_hash="new-hash")
        assert storage.change_credentials(changed)
        assert not storage.known_address("alice", "192.0.2.1")
        assert storage.known_address("bob", "192.0.2.1")
        storage.remember_address(changed, "192.0.2.1", NOW + 1, 4)
        assert storage.known_address("alice", "192.0.2.1")

    def test_an_address_is_remembered_only_under_the_credentials_checked(
        self, storage: codeflow.Storage
    ) -> None:
        """Storage.remember_address remembers the address only while the user still has
        the credentials the sign-in checked: a password or second factor changed between
        the check and the remember (RFC 9700 §4.14.2) leaves it unknown (NIST SP 800-63B
        §5.2.2), whichever commits first (change_credentials forgets it otherwise)."""
        checked = storage.add_user(User("alice", "old-hash"))
        assert storage.change_credentials(replace(checked, password_hash="new-hash"))
        storage.remember_address(checked, "192.0.2.1", NOW, 4)
        assert not storage.known_address("alice", "192.0.2.1")
        enrolled = replace(checked, password_hash="new-hash", totp_secret="JBSWY3DP")
        assert storage.change_credentials(enrolled)
        storage.remember_address(replace(checked, password_hash="new-hash"), "192.0.2.2", NOW, 4)
        assert not storage.known_address("alice", "192.0.2.2")
        storage.remember_address(enrolled, "192.0.2.3", NOW, 4)
        assert storage.known_address("alice", "192.0.2.3")

    def test_a_removed_users_addresses_pass_to_no_user_of_its_name(
        self, storage: codeflow.Storage
    ) -> None:
        """OIDC Core §2 (a sub is "never reassigned"): the addresses are the subject's, so a
        user added again under a removed name knows none of them, even one remembered for
        the removed subject after the removal (a sign-in that completed meanwhile)."""
        old = storage.add_user(User("alice", "hash"))
        storage.remember_address(old, "192.0.2.1", NOW, 4)
        assert storage.remove_user("alice")
        assert not storage.known_address("alice", "192.0.2.1")
        storage.remember_address(old, "192.0.2.2", NOW + 1, 4)
        new = storage.add_user(User("alice", "hash"))
        assert new.subject != old.subject
        assert not storage.known_address("alice", "192.0.2.1")
        assert not storage.known_address("alice", "192.0.2.2")
        storage.remember_address(new, "192.0.2.3", NOW + 2, 4)
        assert storage.known_address("alice", "192.0.2.3")

    def test_remember_address_race_keeps_at_most_keep(self, storage: codeflow.Storage) -> None:
        """Storage.remember_address is atomic: THREADS sign-ins of one user completing at
        once from as many addresses (on any nodes) leave exactly ``keep`` of them known."""
        alice = storage.add_user(User("alice", "hash"))
        race(lambda i: storage.remember_address(alice, f"192.0.2.{i}", NOW + i, 4))
        known = [storage.known_address("alice", f"192.0.2.{i}") for i in range(THREADS)]
        assert known.count(True) == 4, known

    def test_record_totp_step_refuses_a_step_used_before(self, storage: codeflow.Storage) -> None:
        """RFC 6238 §5.2: "the verifier MUST NOT accept the second attempt of the OTP after
        the successful validation has been issued for the first OTP"."""
        assert storage.record_totp_step("alice", 100)
        assert not storage.record_totp_step("alice", 100)
        assert not storage.record_totp_step("alice", 99)  # an earlier step is no better
        assert storage.record_totp_step("alice", 101)
        assert storage.record_totp_step("bob", 100)  # per user

    def test_record_totp_step_race_has_one_winner(self, storage: codeflow.Storage) -> None:
        """Storage.record_totp_step: "Atomically remember" the step: of N logins with one
        code at once, exactly one gets in."""
        results = race(lambda i: storage.record_totp_step("alice", 500))
        assert results.count(True) == 1, results

    def test_save_token_stores_several_at_once(self, storage: codeflow.Storage) -> None:
        """Storage.save_token: "Store tokens, in one transaction" (an access token and its
        refresh token are written together)."""
        storage.save_token(a_token("a1"), a_token("r1", kind="refresh"))
        assert storage.get_token("a1") == a_token("a1")
        assert storage.get_token("r1") == a_token("r1", kind="refresh")

    def test_rotate_refresh_token_saves_every_new_token(self, storage: codeflow.Storage) -> None:
        """Storage.rotate_refresh_token: revoke the old refresh token "and save the new
        tokens (its successor and the access token that comes with it)"."""
        storage.save_token(a_token("r1", kind="refresh"))
        assert storage.rotate_refresh_token("r1", a_token("r2", kind="refresh"), a_token("a2"))
        assert revoked(storage, "r1")
        assert storage.get_token("r2") == a_token("r2", kind="refresh")
        assert storage.get_token("a2") == a_token("a2")

    # -- device authorization (RFC 8628) ------------------------------------------

    def test_device_authorization_round_trips_and_is_found_by_user_code(
        self, storage: codeflow.Storage
    ) -> None:
        """RFC 8628 §3.3: the user code finds its request; Storage.save_device_authorization
        keeps the record as given (records in, records out)."""
        device = a_device(nonce="n-1")
        assert storage.save_device_authorization(device)
        assert storage.get_device_authorization("user-1") == device
        assert storage.get_device_authorization("user-2") is None

    def test_a_user_code_names_one_request(self, storage: codeflow.Storage) -> None:
        """RFC 8628 §6.1: a user code identifies one request: saving another with the same
        user code (or device code) saves nothing and says so."""
        assert storage.save_device_authorization(a_device())
        assert not storage.save_device_authorization(a_device("device-2", "user-1"))
        assert not storage.save_device_authorization(a_device("device-1", "user-2"))
        assert storage.get_device_authorization("user-2") is None

    def test_decide_device_authorization_once(self, storage: codeflow.Storage) -> None:
        """RFC 8628 §6.1: user codes "SHOULD be single use": a decision is made once, only
        while pending and unexpired, and keeps who decided and how they signed in."""
        storage.save_device_authorization(a_device())
        storage.save_device_authorization(a_device("device-2", "user-2", expires_at=NOW))
        decided = approved(a_device())
        assert storage.decide_device_authorization(decided, NOW)
        assert storage.get_device_authorization("user-1") == decided
        assert not storage.decide_device_authorization(replace(decided, status="denied"), NOW)
        assert storage.get_device_authorization("user-1") == decided
        # expired: refused
        late = approved(a_device("device-2", "user-2"))
        assert not storage.decide_device_authorization(late, NOW)
        assert storage.get_device_authorization("user-2").status == "pending"

    def test_decide_device_authorization_race_has_one_winner(
        self, storage: codeflow.Storage
    ) -> None:
        """Storage.decide_device_authorization: of N concurrent decisions, at most one is made."""
        storage.save_device_authorization(a_device())
        results = race(lambda i: storage.decide_device_authorization(
            approved(a_device(), f"user{i}"), NOW))  # fmt: skip
        assert results.count(True) == 1
        winner = results.index(True)
        assert storage.get_device_authorization("user-1").username == f"user{winner}"

    def test_polling_too_soon_slows_the_device_code_down(self, storage: codeflow.Storage) -> None:
        """RFC 8628 §3.5 slow_down: "the interval MUST be increased by 5 seconds for this and
        all subsequent requests": a poll sooner than the interval after the previous one
        grows the stored interval; the record comes back as it was before the poll."""
        storage.save_device_authorization(a_device())
        first = storage.poll_device_authorization("device-1", NOW, 5)
        assert first is not None and first.polled_at is None and first.poll_interval == 5
        second = storage.poll_device_authorization("device-1", NOW + 2, 5)
        assert second is not None and second.polled_at == NOW and second.poll_interval == 5
        third = storage.poll_device_authorization("device-1", NOW + 12, 5)
        assert third is not None and third.polled_at == NOW + 2 and third.poll_interval == 10
        fourth = storage.poll_device_authorization("device-1", NOW + 22, 5)
        assert fourth is not None and fourth.poll_interval == 10
        assert storage.poll_device_authorization("device-2", NOW, 5) is None

    def test_redeem_device_authorization_once(self, storage: codeflow.Storage) -> None:
        """Storage.redeem_device_authorization: an approved request gives its tokens once;
        a pending or denied one none."""
        storage.save_device_authorization(a_device())
        assert storage.redeem_device_authorization("device-1") is None  # pending
        decided = approved(a_device())
        storage.decide_device_authorization(decided, NOW)
        assert storage.redeem_device_authorization("device-1") == decided
        assert storage.redeem_device_authorization("device-1") is None
        assert storage.get_device_authorization("user-1").status == "redeemed"

    def test_redeem_device_authorization_race_has_one_winner(
        self, storage: codeflow.Storage
    ) -> None:
        """Storage.redeem_device_authorization: of N concurrent callers, at most one gets it."""
        storage.save_device_authorization(a_device())
        storage.decide_device_authorization(approved(a_device()), NOW)
        results = race(lambda i: storage.redeem_device_authorization("device-1"))
        assert len([r for r in results if r is not None]) == 1

    def test_removing_the_client_or_user_removes_device_authorizations(
        self, storage: codeflow.Storage
    ) -> None:
        """DESIGN.md: "Removing a user or client removes its grants in the same transaction";
        a device authorization, pending or approved, is one."""
        storage.add_client(Client("tv"))
        storage.add_user(User("alice", "x"))
        storage.save_device_authorization(a_device())
        storage.save_device_authorization(a_device("device-2", "user-2"))
        storage.decide_device_authorization(approved(a_device("device-2", "user-2")), NOW)
        storage.remove_user("alice")
        assert storage.get_device_authorization("user-2") is None
        assert storage.get_device_authorization("user-1") is not None
        storage.remove_client("tv")
        assert storage.get_device_authorization("user-1") is None

    def test_revoking_the_grant_or_credentials_drops_approved_device_codes(
        self, storage: codeflow.Storage
    ) -> None:
        """Storage.revoke_grant and change_credentials delete the user's unredeemed device
        authorizations, as they do unredeemed codes (RFC 9700 §4.14.2)."""
        storage.add_user(User("alice", "x"))
        storage.save_device_authorization(a_device())
        storage.save_device_authorization(a_device("device-2", "user-2"))
        storage.decide_device_authorization(approved(a_device()), NOW)
        storage.decide_device_authorization(approved(a_device("device-2", "user-2")), NOW)
        assert storage.revoke_grant("alice", "tv", NOW) is False  # no consent, no token
        assert storage.get_device_authorization("user-1") is None
        storage.save_device_authorization(a_device("device-3", "user-3"))
        storage.decide_device_authorization(approved(a_device("device-3", "user-3")), NOW)
        storage.change_credentials(User("alice", "y"))
        assert storage.get_device_authorization("user-3") is None

    def test_purge_expired_deletes_device_and_pushed_requests(
        self, storage: codeflow.Storage
    ) -> None:
        """Storage.purge_expired: expired device authorization and pushed requests go."""
        storage.save_device_authorization(a_device(expires_at=NOW))
        storage.save_device_authorization(a_device("device-2", "user-2", expires_at=NOW + 1))
        storage.save_pushed_request(a_pushed(expires_at=NOW))
        storage.save_pushed_request(a_pushed("uri-2", expires_at=NOW + 1))
        assert storage.purge_expired(NOW) == 2
        assert storage.get_device_authorization("user-1") is None
        assert storage.get_device_authorization("user-2") is not None
        assert storage.consume_pushed_request("uri-1") is None
        assert storage.consume_pushed_request("uri-2") is not None
        # The user code is free again once its request is purged.
        assert storage.save_device_authorization(a_device("device-3", "user-1"))

    # -- pushed authorization requests (RFC 9126) ----------------------------------

    def test_consume_pushed_request_once(self, storage: codeflow.Storage) -> None:
        """RFC 9126 §4: the request_uri is used once; the parameters come back as pushed."""
        storage.save_pushed_request(a_pushed())
        assert storage.consume_pushed_request("uri-1") == a_pushed()
        assert storage.consume_pushed_request("uri-1") is None
        assert storage.consume_pushed_request("uri-2") is None

    def test_consume_pushed_request_race_has_one_winner(self, storage: codeflow.Storage) -> None:
        """Storage.consume_pushed_request: of N concurrent callers, at most one gets it."""
        storage.save_pushed_request(a_pushed())
        results = race(lambda i: storage.consume_pushed_request("uri-1"))
        assert [r for r in results if r is not None] == [a_pushed()]

    def test_removing_the_client_removes_its_pushed_requests(
        self, storage: codeflow.Storage
    ) -> None:
        """DESIGN.md: removing a client removes what was granted to, or asked by, it."""
        storage.add_client(Client("app"))
        storage.save_pushed_request(a_pushed())
        storage.remove_client("app")
        assert storage.consume_pushed_request("uri-1") is None

def a_login_session(sid: str = "sid-1", username: str = "alice", **fields: Any) -> LoginSession:
    values: dict[str, Any] = {
        "sid": sid,
        "username": username,
        "created_at": NOW,
        "last_used_at": NOW,
        "expires_at": NOW + 8 * 3600,
        "address": "192.0.2.1",
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/120",
    }
    values.update(fields)
    return LoginSession(**values)


class TestAccountStorageContract:
    """The records of the account page (README "Your account"): login sessions kept
    server-side, and recovery codes (NIST SP 800-63B §5.1.2 look-up secrets)."""

    def test_login_sessions_are_saved_listed_newest_first_and_expire(
        self, storage: codeflow.Storage
    ) -> None:
        """Storage.list_login_sessions: "The user's login sessions that have not expired at
        now, newest first"; another user's are not listed."""
        storage.save_login_session(a_login_session("s1"))
        storage.save_login_session(a_login_session("s2", created_at=NOW + 10))
        storage.save_login_session(a_login_session("s3", expires_at=NOW - 1))
        storage.save_login_session(a_login_session("b1", username="bob"))
        assert storage.get_login_session("s1") == (a_login_session("s1"), None)
        assert storage.get_login_session("nope") is None
        assert [s.sid for s in storage.list_login_sessions("alice", NOW)] == ["s2", "s1"]
        assert [s.sid for s in storage.list_login_sessions("bob", NOW)] == ["b1"]

    def test_a_login_session_comes_with_its_user(self, storage: codeflow.Storage) -> None:
        """Storage.get_login_session: the session with its stored user, every field of it,
        read together (each request of a signed-in browser needs both: the user's
        credentials decide whether the session still holds); None as the user once the
        name has no user."""
        alice = storage.add_user(
            User("alice", "hash-a", {"name": "Alice"}, totp_secret="JBSW", subject="s-alice")
        )
        storage.add_user(User("bob", "hash-b"))
        storage.save_login_session(a_login_session("s1"))
        storage.save_login_session(a_login_session("g1", username="gone"))
        assert storage.get_login_session("s1") == (a_login_session("s1"), alice)
        assert storage.get_login_session("g1") == (a_login_session("g1", username="gone"), None)

    def test_touch_login_session_updates_last_use_and_address_only(
        self, storage: codeflow.Storage
    ) -> None:
        storage.save_login_session(a_login_session("s1"))
        storage.touch_login_session("s1", NOW + 120, "198.51.100.7")
        storage.touch_login_session("gone", NOW + 120, "198.51.100.7")  # no error, no row
        assert storage.get_login_session("s1") == (
            a_login_session("s1", last_used_at=NOW + 120, address="198.51.100.7"), None
        )
        assert storage.get_login_session("gone") is None

    def test_delete_login_sessions_one_all_or_all_but_one(
        self, storage: codeflow.Storage
    ) -> None:
        """Storage.delete_login_sessions: the one sid "if it is the user's"; else every one
        but keep."""
        for sid in ("s1", "s2", "s3"):
            storage.save_login_session(a_login_session(sid))
        storage.save_login_session(a_login_session("b1", username="bob"))
        assert storage.delete_login_sessions("alice", "b1") == 0  # not alice's
        assert storage.get_login_session("b1") is not None
        assert storage.delete_login_sessions("alice", "s1") == 1
        assert storage.get_login_session("s1") is None
        assert storage.delete_login_sessions("alice", keep="s2") == 1
        assert [s.sid for s in storage.list_login_sessions("alice", NOW)] == ["s2"]
        assert storage.delete_login_sessions("alice") == 1
        assert storage.list_login_sessions("alice", NOW) == []
        assert [s.sid for s in storage.list_login_sessions("bob", NOW)] == ["b1"]

    def test_credential_changes_and_removal_end_the_users_login_sessions(
        self, storage: codeflow.Storage
    ) -> None:
        """RFC 9700 §4.14.2: a password change (change_credentials), a sign-out everywhere
        (change_record_id) and remove_user end the user's login sessions in their own
        transaction; another user's stay."""
        storage.add_user(User("alice", "hash"))
        storage.save_login_session(a_login_session("b1", username="bob"))
        for change in (
            lambda: storage.change_credentials(User("alice", "new-hash")),
            lambda: storage.change_record_id("alice", "another-record"),
            lambda: storage.remove_user("alice", NOW),
        ):
            storage.save_login_session(a_login_session("s1"))
            assert change()
            assert storage.get_login_session("s1") is None
        assert storage.get_login_session("b1") is not None

    def test_purge_expired_deletes_expired_login_sessions(
        self, storage: codeflow.Storage
    ) -> None:
        storage.save_login_session(a_login_session("s1", expires_at=NOW + 10))
        assert storage.purge_expired(NOW) == 0
        assert storage.purge_expired(NOW + 10) == 1
        assert storage.get_login_session("s1") is None

    def test_recovery_codes_are_replaced_and_each_used_once(
        self, storage: codeflow.Storage
    ) -> None:
        """NIST SP 800-63B §5.1.2.1: a look-up secret is used once; set_recovery_codes
        replaces the whole set."""
        storage.set_recovery_codes("alice", ["h1", "h2", "h3"])
        storage.set_recovery_codes("bob", ["h1"])
        assert storage.recovery_codes_left("alice") == 3
        assert storage.consume_recovery_code("alice", "h2")
        assert not storage.consume_recovery_code("alice", "h2")
        assert not storage.consume_recovery_code("alice", "unknown")
        assert storage.recovery_codes_left("alice") == 2
        storage.set_recovery_codes("alice", ["h9"])
        assert not storage.consume_recovery_code("alice", "h1")
        assert storage.recovery_codes_left("alice") == 1
        storage.set_recovery_codes("alice", [])
        assert storage.recovery_codes_left("alice") == 0
        assert storage.consume_recovery_code("bob", "h1")

    def test_remove_user_deletes_recovery_codes(self, storage: codeflow.Storage) -> None:
        storage.add_user(User("alice", "hash"))
        storage.set_recovery_codes("alice", ["h1"])
        assert storage.remove_user("alice", NOW)
        assert storage.recovery_codes_left("alice") == 0

    def test_consume_recovery_code_race_has_one_winner(self, storage: codeflow.Storage) -> None:
        """16 threads present the same recovery code at once: exactly one gets in."""
        storage.set_recovery_codes("alice", ["h1"])
        results = race(lambda i: storage.consume_recovery_code("alice", "h1"))
        assert results.count(True) == 1, results


def a_passkey(credential_id: str = "cred-1", username: str = "alice", **fields: Any) -> Passkey:
    values: dict[str, Any] = {
        "credential_id": credential_id,
        "username": username,
        "public_key": "pQECAyYgASFYIA",
        "sign_count": 0,
        "name": "Laptop",
        "created_at": NOW,
        "transports": ("internal", "hybrid"),
    }
    values.update(fields)
    return Passkey(**values)


class TestPasskeyStorageContract:
    """Passkeys (WebAuthn Level 2 §6.4.1 credential records) and single-use challenges."""

    def test_passkeys_are_saved_listed_and_deleted_per_user(
        self, storage: codeflow.Storage
    ) -> None:
        storage.save_passkey(a_passkey("c1", passwordless=True, backed_up=True))
        storage.save_passkey(a_passkey("c2", created_at=NOW + 1, last_used_at=NOW + 5))
        storage.save_passkey(a_passkey("b1", username="bob"))
        assert storage.get_passkey("c1") == a_passkey("c1", passwordless=True, backed_up=True)
        assert [p.credential_id for p in storage.list_passkeys("alice")] == ["c1", "c2"]
        assert storage.list_passkeys("alice")[1].last_used_at == NOW + 5
        assert not storage.delete_passkey("alice", "b1")  # not alice's
        assert storage.delete_passkey("alice", "c1")
        assert not storage.delete_passkey("alice", "c1")
        assert storage.get_passkey("c1") is None
        assert storage.get_passkey("b1") is not None

    def test_a_credential_id_is_saved_once_and_never_replaced(
        self, storage: codeflow.Storage
    ) -> None:
        """WebAuthn Level 2 §7.1 step 22: a credential id "not yet registered to any other
        user": saving another passkey under a stored id (another user's, or the same
        user's) changes nothing and says so."""
        assert storage.save_passkey(a_passkey("c1"))
        assert not storage.save_passkey(a_passkey("c1", username="mallory", public_key="k2"))
        assert not storage.save_passkey(a_passkey("c1", name="Again"))
        assert storage.get_passkey("c1") == a_passkey("c1")
        assert storage.list_passkeys("mallory") == []

    def test_record_passkey_use_refuses_a_counter_that_did_not_grow(
        self, storage: codeflow.Storage
    ) -> None:
        """WebAuthn §6.1.1: a signature counter that does not grow (unless both are 0)
        signals a cloned authenticator."""
        storage.save_passkey(a_passkey("zero"))
        assert storage.record_passkey_use("zero", 0, NOW + 1)
        assert storage.get_passkey("zero").last_used_at == NOW + 1
        storage.save_passkey(a_passkey("c1", sign_count=5))
        assert not storage.record_passkey_use("c1", 5, NOW + 2)
        assert not storage.record_passkey_use("c1", 3, NOW + 2)
        assert not storage.record_passkey_use("c1", 0, NOW + 2)
        assert storage.record_passkey_use("c1", 6, NOW + 3)
        assert storage.get_passkey("c1").sign_count == 6
        assert not storage.record_passkey_use("gone", 1, NOW)

    def test_remove_user_deletes_passkeys(self, storage: codeflow.Storage) -> None:
        storage.add_user(User("alice", "hash"))
        storage.save_passkey(a_passkey("c1"))
        assert storage.remove_user("alice", NOW)
        assert storage.list_passkeys("alice") == []

    def test_a_webauthn_challenge_is_used_once_until_purged(
        self, storage: codeflow.Storage
    ) -> None:
        assert storage.use_webauthn_challenge("h1", NOW + 60)
        assert not storage.use_webauthn_challenge("h1", NOW + 60)
        assert storage.use_webauthn_challenge("h2", NOW + 60)
        assert storage.purge_expired(NOW + 60) == 2

    def test_use_webauthn_challenge_race_has_one_winner(self, storage: codeflow.Storage) -> None:
        results = race(lambda i: storage.use_webauthn_challenge("h1", NOW + 60))
        assert results.count(True) == 1, results

    # -- DPoP and private_key_jwt (RFC 9449, RFC 7523) -----------------------------

    def test_client_keys_and_dpop_binding_round_trip(self, storage: codeflow.Storage) -> None:
        """RFC 7523 §2.2 and RFC 9449 §5.2, §6, §10: a client's JWK Set, jwks_uri and
        dpop_bound_access_tokens, a code's dpop_jkt and a token's jkt: records in, records
        out."""
        jwks = {"keys": [{"kty": "EC", "crv": "P-256", "x": "f83O", "y": "x_FE", "kid": "k1"}]}
        keyed = Client(client_id="keyed", jwks=jwks, dpop_bound_access_tokens=True)
        fetched = Client(client_id="fetched", jwks_uri="https://rp.example/jwks.json")
        storage.add_client(keyed)
        storage.add_client(fetched)
        assert storage.get_client("keyed") == keyed
        assert storage.get_client("fetched") == fetched
        assert not keyed.public and not fetched.public  # keys authenticate the client
        code = a_code(dpop_jkt="0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I")
        storage.save_code(code)
        assert storage.consume_code("code-1") == (code, None)
        bound = a_token("a1", jkt="0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I")
        storage.save_token(bound)
        assert storage.get_token("a1") == bound

    def test_remember_jti_refuses_a_replay_until_it_expires(
        self, storage: codeflow.Storage
    ) -> None:
        """RFC 9449 §11.1: the server "can store, in the context of the target URI, the jti
        value of each DPoP proof for the time window in which the respective DPoP proof
        JWT would be accepted" and reject a replay; RFC 7523 §3: a jti "MAY" be
        single-use. Storage.remember_jti: False while remembered, then free again."""
        assert storage.remember_jti("dpop:k1:j1", NOW + 60, NOW)
        assert not storage.remember_jti("dpop:k1:j1", NOW + 120, NOW + 30)
        assert storage.remember_jti("assertion:app:j1", NOW + 60, NOW)  # another use
        assert storage.remember_jti("dpop:k1:j1", NOW + 200, NOW + 60)  # expired: free
        assert not storage.remember_jti("dpop:k1:j1", NOW + 300, NOW + 100)

    def test_purge_deletes_expired_jtis(self, storage: codeflow.Storage) -> None:
        """Storage.purge_expired deletes one-time identifiers once expired (the replay
        cache stays bounded by what is still within its window) and counts them."""
        storage.remember_jti("j-old", NOW + 10, NOW)
        storage.remember_jti("j-new", NOW + 100, NOW)
        assert storage.purge_expired(NOW + 10) == 1
        assert not storage.remember_jti("j-new", NOW + 200, NOW + 50)
        assert storage.purge_expired(NOW + 10**6) == 1

    def test_remember_jti_race_has_one_winner(self, storage: codeflow.Storage) -> None:
        """Storage.remember_jti: "of N concurrent callers with one key, at most one gets
        True": one DPoP proof or client assertion sent N times at once is accepted once."""
        results = race(lambda i: storage.remember_jti("dpop:k1:raced", NOW + 60, NOW))
        assert results.count(True) == 1, results
