"""SQLiteStorage beyond the shared contract (tests/test_storage_contract.py): a real file
that migrates, survives reopening, keeps only hashes, and stays atomic across processes.

DESIGN "Storage contract": "Operations that must be atomic across threads and processes
say so in their name and docstring: consuming a code exactly once, rotating a refresh
token exactly once. Secrets reach storage only as hashes."
"""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils
from codeflow_storage.sqlite import MIGRATIONS, SQLiteStorage, from_url

import codeflow
from codeflow import AuthorizationCode, Client, RemovedUser, SigningKey, Token, User

NOW = 1_800_000_000.0
PROCESSES = 4


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "codeflow.db"


@pytest.fixture
def storage(path: Path) -> Iterator[SQLiteStorage]:
    with SQLiteStorage(path) as store:
        yield store


def a_code(code_hash: str = "code-1") -> AuthorizationCode:
    return AuthorizationCode(
        code_hash=code_hash,
        client_id="app",
        username="alice",
        redirect_uri="http://127.0.0.1:9000/callback",
        redirect_uri_required=True,
        scope=("openid", "profile"),
        code_challenge="E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        nonce=None,
        auth_time=int(NOW),
        expires_at=NOW + 60,
    )


def a_token(token_hash: str, kind: str = "access", family_id: str = "family-1") -> Token:
    return Token(token_hash, kind, "app", "alice", ("openid",), NOW, NOW + 3600, family_id)


def query(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Run SQL on the file through a connection of our own, closed at once."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


# -- Schema: migrations, WAL, busy timeout, indexes ------------------------------


def test_database_of_an_older_version_upgrades_itself(path: Path) -> None:
    """DESIGN "Storage contract" / issue 4: "Versioned schema migrations (a database made
    by an older version opens and upgrades itself)"."""
    with sqlite_utils.Database(path) as db:  # what version 1 of the schema made
        MIGRATIONS[0](db)
        db.execute("PRAGMA user_version = 1")
        db.execute(
            "INSERT INTO tokens (token_hash, kind, client_id, username, scope, issued_at,"
            " expires_at, family_id, revoked) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ["old", "refresh", "app", "alice", '["openid"]', NOW, NOW + 3600, "family-1", 0],
        )
    assert "tokens_by_family" not in {
        name for (name,) in query(path, "SELECT name FROM sqlite_master")
    }

    with SQLiteStorage(path) as store:
        assert store.get_token("old") == a_token("old", kind="refresh")
        store.revoke_family("family-1")
        assert store.get_token("old").revoked

    assert query(path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    names = {name for (name,) in query(path, "SELECT name FROM sqlite_master")}
    assert {"tokens_by_family", "tokens_by_expiry", "codes_by_expiry"} <= names


def test_users_of_a_version_3_database_get_a_record_id(path: Path) -> None:
    """Migration 4 adds ``User.record_id``: a user stored by version 3 opens with "" (every
    new record gets a random one), and a removed user's grants can be found by index."""
    with sqlite_utils.Database(path) as db:
        for migration in MIGRATIONS[:3]:
            migration(db)
        db.execute("PRAGMA user_version = 3")
        db.execute(
            "INSERT INTO users (username, password_hash, claims) VALUES ('alice', 'h', '{}')"
        )
    with SQLiteStorage(path) as store:
        assert store.get_user("alice") == User("alice", "h", {}, None, record_id="")
    names = {name for (name,) in query(path, "SELECT name FROM sqlite_master")}
    assert {"tokens_by_username", "tokens_by_client", "consents_by_client"} <= names


def test_consents_of_a_version_4_database_have_no_consent_time(path: Path) -> None:
    """Migration 5 adds when a consent was given: one stored by version 4 opens with that
    unknown (``Grant.consented_at`` None) and its scopes intact; a consent given after it
    has its time."""
    with sqlite_utils.Database(path) as db:
        for migration in MIGRATIONS[:4]:
            migration(db)
        db.execute("PRAGMA user_version = 4")
        db.execute(
            "INSERT INTO consents (username, client_id, scopes) VALUES ('alice', 'app', ?)",
            ['["openid"]'],
        )
    with SQLiteStorage(path) as store:
        assert store.list_grants(NOW) == [
            codeflow.Grant("alice", "app", frozenset({"openid"}), None, 0, 0)
        ]
        store.save_consent("alice", "app", ["profile"], NOW)
        assert store.list_grants(NOW) == [
            codeflow.Grant("alice", "app", frozenset({"openid", "profile"}), NOW, 0, 0)
        ]


def test_clients_of_a_version_6_database_allow_no_extra_origin(path: Path) -> None:
    """Migration 7 adds ``Client.allowed_origins`` (issue 14 item 1, CORS): a client stored
    by version 6 opens with none, and keeps the ones it is given after."""
    with sqlite_utils.Database(path) as db:
        for migration in MIGRATIONS[:6]:
            migration(db)
        db.execute("PRAGMA user_version = 6")
        db["clients"].insert(
            {"client_id": "app", "redirect_uris": "[]", "name": "", "scopes": '["openid"]',
             "grant_types": '["authorization_code"]', "require_pkce": 1,
             "id_token_signed_response_alg": "RS256", "access_token_jwt": 0,
             "post_logout_redirect_uris": "[]"}
        )  # fmt: skip
    with SQLiteStorage(path) as store:
        client = store.get_client("app")
        assert client == Client(
            "app", scopes=("openid",), grant_types=("authorization_code",)
        )
        store.add_client(replace(client, allowed_origins=("https://app.example",)))
        assert store.get_client("app").allowed_origins == ("https://app.example",)


def test_tokens_of_a_version_7_database_have_no_auth_time(path: Path) -> None:
    """Migration 8 adds ``Token.auth_time`` (OIDC Core §12.2: the refreshed ID token's
    auth_time is the original sign-in's) and ``Client.minimal_id_token``: a token stored by
    version 7 opens with auth_time None, a client with the new default, claims included."""
    with sqlite_utils.Database(path) as db:
        for migration in MIGRATIONS[:7]:
            migration(db)
        db.execute("PRAGMA user_version = 7")
        db.execute(
            "INSERT INTO tokens (token_hash, kind, client_id, username, scope, issued_at,"
            " expires_at, family_id, revoked) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ["old", "refresh", "app", "alice", '["openid"]', NOW, NOW + 3600, "family-1", 0],
        )
        db["clients"].insert(
            {"client_id": "app", "redirect_uris": "[]", "name": "", "scopes": '["openid"]',
             "grant_types": '["authorization_code"]', "require_pkce": 1,
             "id_token_signed_response_alg": "RS256", "access_token_jwt": 0,
             "post_logout_redirect_uris": "[]"}
        )  # fmt: skip
    with SQLiteStorage(path) as store:
        assert store.get_token("old") == a_token("old", kind="refresh")
        assert store.get_token("old").auth_time is None
        assert store.get_client("app").minimal_id_token is False
        store.save_token(replace(a_token("new", kind="refresh"), auth_time=int(NOW)))
        assert store.get_token("new").auth_time == int(NOW)


def test_codes_and_tokens_of_a_version_8_database_have_no_authentication_context(
    path: Path,
) -> None:
    """Migration 9 adds ``amr`` and ``acr`` (OIDC Core §2, RFC 8176) to codes and tokens:
    rows stored by version 8 open with none, and new ones keep theirs."""
    with sqlite_utils.Database(path) as db:
        for migration in MIGRATIONS[:8]:
            migration(db)
        db.execute("PRAGMA user_version = 8")
        db.execute(
            "INSERT INTO tokens (token_hash, kind, client_id, username, scope, issued_at,"
            " expires_at, family_id, revoked) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ["old", "refresh", "app", "alice", '["openid"]', NOW, NOW + 3600, "family-1", 0],
        )
    with SQLiteStorage(path) as store:
        old = store.get_token("old")
        assert (old.amr, old.acr) == ((), None)
        mfa = ("pwd", "otp", "mfa")
        store.save_token(replace(a_token("new"), amr=mfa, acr="urn:example:mfa"))
        assert store.get_token("new").amr == mfa
        store.save_code(replace(a_code(), amr=("pwd",), acr="urn:example:pwd"))
        code, _ = store.consume_code("code-1") or (None, None)
        assert code is not None and (code.amr, code.acr) == (("pwd",), "urn:example:pwd")


def test_codes_and_tokens_of_a_version_9_database_have_no_claims_request(path: Path) -> None:
    """Migration 10 adds the claims request (OIDC Core §5.5) to codes and tokens: rows
    stored by version 9 open with none, and new ones keep theirs, JSON and all."""
    with sqlite_utils.Database(path) as db:
        for migration in MIGRATIONS[:9]:
            migration(db)
        db.execute("PRAGMA user_version = 9")
        db.execute(
            "INSERT INTO tokens (token_hash, kind, client_id, username, scope, issued_at,"
            " expires_at, family_id, revoked) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            ["old", "refresh", "app", "alice", '["openid"]', NOW, NOW + 3600, "family-1", 0],
        )
    request = {"id_token": {"email": None, "acr": {"essential": True, "values": ["x"]}}}
    with SQLiteStorage(path) as store:
        assert store.get_token("old").claims_request == {}
        store.save_token(replace(a_token("new"), claims_request=request))
        assert store.get_token("new").claims_request == request
        store.save_code(replace(a_code(), claims_request=request))
        code, _ = store.consume_code("code-1") or (None, None)
        assert code is not None and code.claims_request == request


def test_users_of_a_version_10_database_keep_their_username_as_subject(path: Path) -> None:
    """Migration 11 adds ``User.subject`` and the tombstones of removed users (OIDC Core §2:
    sub is "never reassigned"): a user stored by version 10 keeps the username as its sub,
    which its tokens carried; once removed, its name gets a new subject, also when the file
    is opened again."""
    with sqlite_utils.Database(path) as db:
        for migration in MIGRATIONS[:10]:
            migration(db)
        db.execute("PRAGMA user_version = 10")
        db.execute(
            "INSERT INTO users (username, password_hash, claims) VALUES ('alice', 'h', '{}')"
        )
    with SQLiteStorage(path) as store:
        assert store.get_user("alice") == User("alice", "h", {}, None, record_id="")
        assert store.get_user("alice").subject == "alice"
        assert store.remove_user("alice", NOW)
    with SQLiteStorage(path) as store:
        assert store.removed_users("alice") == [RemovedUser("alice", "alice", NOW)]
        assert store.add_user(User("alice", "h")).subject != "alice"


def test_database_of_a_newer_version_is_refused(path: Path) -> None:
    """Issue 4, versioned migrations: a schema this code does not know is not touched."""
    SQLiteStorage(path).close()
    query(path, f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(RuntimeError, match="newer"):
        SQLiteStorage(path)
    assert query(path, "PRAGMA user_version") == [(len(MIGRATIONS) + 1,)]


def test_wal_journal_mode(storage: SQLiteStorage, path: Path) -> None:
    """Issue 4: "WAL" - readers never wait for a writer; the mode is kept in the file."""
    assert query(path, "PRAGMA journal_mode") == [("wal",)]


def test_busy_timeout_waits_for_another_writer(storage: SQLiteStorage, path: Path) -> None:
    """Issue 4: "a busy timeout" - a write waits for another connection's write lock
    instead of failing with "database is locked"."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        threading.Timer(0.3, other.execute, ["COMMIT"]).start()
        started = time.monotonic()
        storage.save_token(a_token("a1"))
        assert time.monotonic() - started >= 0.25
    finally:
        time.sleep(0.1)  # let the timer's COMMIT finish before closing
        other.close()
    assert storage.get_token("a1") == a_token("a1")


# Every lookup the storage makes, as it makes it: each must SEARCH an index, not SCAN.
LOOKUPS = {
    "token by hash": "SELECT * FROM tokens WHERE token_hash = 'h'",
    "tokens of a family": "UPDATE tokens SET revoked = 1 WHERE family_id = 'f' AND revoked = 0",
    "expired tokens": "DELETE FROM tokens WHERE expires_at <= 1",
    "code by hash": "DELETE FROM codes WHERE code_hash = 'h' RETURNING *",
    "expired codes": "DELETE FROM codes WHERE expires_at <= 1",
    "used code": "SELECT 1 FROM used_codes WHERE code_hash = 'h'",
    "expired used codes": "DELETE FROM used_codes WHERE expires_at <= 1",
    "revoked family": "SELECT 1 FROM revoked_families WHERE family_id = 'f'",
    "consent": "SELECT scopes FROM consents WHERE username = 'u' AND client_id = 'c'",
    "client": "SELECT * FROM clients WHERE client_id = 'c'",
    "user": "SELECT * FROM users WHERE username = 'u'",
    "setting": "SELECT value FROM settings WHERE name = 'n'",
    "current key": "SELECT * FROM signing_keys WHERE alg = 'RS256' AND expires_at IS NULL",
    "tokens of a user": "DELETE FROM tokens WHERE username = 'u'",
    "tokens of a client": "DELETE FROM tokens WHERE client_id = 'c'",
    "codes of a user": "DELETE FROM codes WHERE username = 'u'",
    "codes of a client": "DELETE FROM codes WHERE client_id = 'c'",
    "consents of a user": "DELETE FROM consents WHERE username = 'u'",
    "consents of a client": "DELETE FROM consents WHERE client_id = 'c'",
    "refresh tokens of a user": (
        "UPDATE tokens SET revoked = 1 WHERE username = 'u' AND kind = 'refresh' AND revoked = 0"
    ),
    "consents of a user, listed": (
        "SELECT username, client_id, scopes, consented_at FROM consents WHERE username = 'u'"
    ),
    "consents to a client, listed": (
        "SELECT username, client_id, scopes, consented_at FROM consents WHERE client_id = 'c'"
    ),
    "active tokens of a user, by client": (
        "SELECT username, client_id, sum(kind = 'access'), sum(kind = 'refresh') FROM tokens "
        "WHERE username IS NOT NULL AND revoked = 0 AND expires_at > 1 AND username = 'u' "
        "GROUP BY username, client_id"
    ),
    "active tokens of a client, by user": (
        "SELECT username, client_id, sum(kind = 'access'), sum(kind = 'refresh') FROM tokens "
        "WHERE username IS NOT NULL AND revoked = 0 AND expires_at > 1 AND client_id = 'c' "
        "GROUP BY username, client_id"
    ),
    "active token of a grant": (
        "SELECT 1 FROM tokens WHERE username = 'u' AND client_id = 'c' AND revoked = 0 "
        "AND expires_at > 1"
    ),
    "tokens of a grant": (
        "UPDATE tokens SET revoked = 1 WHERE username = 'u' AND client_id = 'c' AND revoked = 0"
    ),
    "codes of a grant": "DELETE FROM codes WHERE username = 'u' AND client_id = 'c'",
    "consent of a grant": "DELETE FROM consents WHERE username = 'u' AND client_id = 'c'",
    "record id of a user": "UPDATE users SET record_id = 'r' WHERE username = 'u'",
    "user of a subject": "SELECT username FROM users WHERE subject = 's'",
    "tombstones of a username": "SELECT subject FROM removed_users WHERE username = 'u'",
    "tombstone of a subject": "SELECT username FROM removed_users WHERE subject = 's'",
}


@pytest.mark.parametrize("sql", LOOKUPS.values(), ids=LOOKUPS.keys())
def test_every_lookup_uses_an_index(storage: SQLiteStorage, path: Path, sql: str) -> None:
    """Issue 4: "an index for every lookup" (tokens by hash and by family, codes by hash,
    consents by user and client, and expiry for the purge)."""
    plan = " ".join(row[-1] for row in query(path, "EXPLAIN QUERY PLAN " + sql))
    assert plan.startswith("SEARCH") and ("INDEX" in plan or "PRIMARY KEY" in plan), plan


def test_named_indexes_exist(storage: SQLiteStorage, path: Path) -> None:
    """Issue 4: "an index for every lookup": the ones beyond the primary keys."""
    indexes = dict(query(path, "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index'"))
    assert indexes["tokens_by_family"] == "tokens"
    assert indexes["tokens_by_expiry"] == "tokens"
    assert indexes["codes_by_expiry"] == "codes"
    assert indexes["signing_keys_by_alg"] == "signing_keys"


# -- Durability and what is stored -----------------------------------------------------


def test_records_survive_reopening(path: Path) -> None:
    """DESIGN "Who uses it": the internal-tools team needs "SQLite that survives restarts":
    what one SQLiteStorage wrote, a new one on the same file reads back equal."""
    client = Client(
        "app",
        redirect_uris=("http://127.0.0.1:9000/callback",),
        secret_hash="scrypt$16384$8$1$c2FsdA$a2V5",
        name="App",
        scopes=("openid", "api:read"),
        grant_types=("authorization_code", "client_credentials"),
        require_pkce=False,
        id_token_signed_response_alg="ES256",
        access_token_jwt=True,
        post_logout_redirect_uris=("http://127.0.0.1:9000/bye",),
    )
    user = User("alice", "scrypt$x", {"name": "Alice", "groups": ["a", "b"]}, "JBSWY3DPEHPK3PXP")
    key = SigningKey("kid-1", "RS256", "-----BEGIN PRIVATE KEY-----\n...", NOW)
    with SQLiteStorage(path) as first:
        first.add_client(client)
        first.add_user(user)
        first.save_code(a_code())
        first.save_token(a_token("a1"))
        first.save_consent("alice", "app", ["openid"], NOW)
        secret_key = first.get_or_add_setting("secret_key", "first")
        first.get_or_add_signing_key(key)

    with SQLiteStorage(path) as second:
        assert second.get_client("app") == client
        assert second.list_users() == [user]
        assert second.get_token("a1") == a_token("a1")
        assert second.get_consent("alice", "app") == frozenset({"openid"})
        assert second.get_or_add_setting("secret_key", "second") == secret_key == "first"
        assert second.signing_keys() == [key]
        assert second.consume_code("code-1") == (a_code(), user)


def test_no_raw_secret_reaches_the_file(path: Path) -> None:
    """DESIGN "Storage contract": "Secrets reach storage only as hashes" - no token,
    client secret or password appears anywhere in the database or its WAL."""
    storage = SQLiteStorage(path)
    srv = codeflow.Server("http://127.0.0.1:8000", storage=storage)
    srv.add_client(
        "app",
        client_secret="the-client-secret-value",
        redirect_uris=["http://127.0.0.1:9000/callback"],
        grant_types=["authorization_code", "refresh_token"],
    )
    srv.add_user("alice", "the-password-value")
    body = srv.issue_tokens("alice", "app")
    secrets = [
        body["access_token"],
        body["refresh_token"],
        "the-client-secret-value",
        "the-password-value",
    ]

    def stored_bytes() -> bytes:
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        return b"".join(f.read_bytes() for f in files if f.exists())

    try:
        data = stored_bytes()
        # the hashes are there, so these are the bytes that hold the tokens
        assert codeflow.token_hash(body["access_token"]).encode() in data
        for secret in secrets:
            assert secret.encode() not in data
    finally:
        storage.close()
    data = stored_bytes()  # after the last close has checkpointed the WAL into the file
    assert codeflow.token_hash(body["refresh_token"]).encode() in data
    for secret in secrets:
        assert secret.encode() not in data


# -- Atomic across processes ---------------------------------------------------------


def _race_worker(
    path: str, operation: str, i: int, barrier: Any, results: multiprocessing.Queue
) -> None:
    """One process of a race: open the store, wait for the others, do ``operation`` once."""
    if operation == "open":  # everyone opens a file nobody has created yet
        barrier.wait(timeout=30)
    storage = SQLiteStorage(path)
    try:
        if operation != "open":
            barrier.wait(timeout=30)
        if operation == "consume":
            result: Any = storage.consume_code("code-1") is not None
        elif operation == "rotate":
            result = storage.rotate_refresh_token("r1", a_token(f"new-{i}", kind="refresh"))
        else:
            result = storage.get_or_add_setting("secret_key", f"candidate-{i}")
        results.put((i, result))
    finally:
        storage.close()


def race_processes(path: Path, operation: str) -> dict[int, Any]:
    """Run ``operation`` in PROCESSES fresh (spawned) processes released by one barrier."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_race_worker, args=(str(path), operation, i, barrier, results))
        for i in range(PROCESSES)
    ]
    try:
        for p in procs:
            p.start()
        outcome = dict(results.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(timeout=30)
            assert p.exitcode == 0
        return outcome
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        results.close()
        results.join_thread()


def test_consume_code_across_processes_has_one_winner(storage: SQLiteStorage, path: Path) -> None:
    """Storage.consume_code: "of N concurrent callers, at most one gets it", and the Storage
    docstring: atomic "across every thread and process sharing the store"."""
    storage.save_code(a_code())
    outcome = race_processes(path, "consume")
    assert sorted(outcome.values()) == [False] * (PROCESSES - 1) + [True]
    assert storage.consume_code("code-1") is None
    storage.save_token(a_token("a1", family_id="code-1"))
    storage.revoke_family("code-1")  # the tombstone was written with the winning DELETE
    assert storage.get_token("a1").revoked


def test_rotate_refresh_token_across_processes_has_one_winner(
    storage: SQLiteStorage, path: Path
) -> None:
    """Storage.rotate_refresh_token: "of N concurrent rotations of one token, at most one
    succeeds", across processes."""
    storage.save_token(a_token("r1", kind="refresh"))
    outcome = race_processes(path, "rotate")
    winners = [i for i, won in outcome.items() if won]
    assert len(winners) == 1, outcome
    saved = [i for i in range(PROCESSES) if storage.get_token(f"new-{i}") is not None]
    assert saved == winners
    assert storage.get_token("r1").revoked


def test_processes_opening_a_new_file_agree_on_settings(path: Path) -> None:
    """Storage.get_or_add_setting: "processes sharing a store agree on one value"; and
    processes that create and migrate the same new file at once all succeed."""
    outcome = race_processes(path, "open")
    assert len(set(outcome.values())) == 1, outcome
    assert query(path, "PRAGMA user_version") == [(len(MIGRATIONS),)]


def _consume_in_child(storage: SQLiteStorage, results: multiprocessing.Queue) -> None:
    try:
        results.put(storage.consume_code("code-1") is not None)
    finally:
        storage.close()


def test_a_forked_child_uses_its_own_connection(storage: SQLiteStorage) -> None:
    """sqlite.org/howtocorrupt.html §2.6: a connection must not cross fork(); a storage
    inherited by a forked worker (a pre-forking server, say) reconnects on its own."""
    storage.save_code(a_code())
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=_consume_in_child, args=(storage, results))
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads; the child only
        # touches the storage, which reopens its connection after fork.
        warnings.simplefilter("ignore", DeprecationWarning)
        child.start()
    try:
        assert results.get(timeout=30) is True
        child.join(timeout=30)
        assert child.exitcode == 0
    finally:
        if child.is_alive():
            child.kill()
            child.join()
        results.close()
        results.join_thread()
    assert storage.consume_code("code-1") is None
    storage.save_token(a_token("a1"))  # the parent's connection still works
    assert storage.get_token("a1") == a_token("a1")


def test_closed_storage_refuses_work(path: Path) -> None:
    """SQLiteStorage.close: after it, calls fail loudly instead of reopening silently."""
    storage = SQLiteStorage(path)
    storage.close()
    storage.close()  # closing twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        storage.get_token("a1")


# A run that wrote in WAL mode and died without closing: its -wal and -shm stay behind.
_CRASHED_RUN = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode = wal")
conn.execute("CREATE TABLE leftover (x)")
conn.execute("INSERT INTO leftover VALUES (1)")
os._exit(0)
"""


def test_a_world_readable_database_is_made_owner_only(tmp_path: Path) -> None:
    """The file holds the cookie-signing key, private signing keys and TOTP secrets: a
    database file (and the -wal and -shm a previous run left) created 0644 by hand or by
    an older version is tightened to 0600 when opened, before anything is written."""
    path = tmp_path / "shared.db"
    subprocess.run([sys.executable, "-c", _CRASHED_RUN, str(path)], check=True)  # noqa: S603
    files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
    for file in files:
        assert file.exists(), file
        file.chmod(0o644)

    with SQLiteStorage(path) as storage:
        storage.get_or_add_setting("secret_key", "k")
        assert query(path, "SELECT x FROM leftover") == [(1,)]  # the previous run's write
        for file in files:
            assert stat.S_IMODE(file.stat().st_mode) == 0o600, (file, oct(file.stat().st_mode))


def test_a_new_database_is_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    """Under umask 0, a new database and its -wal and -shm are still 0600."""
    path = tmp_path / "new.db"
    previous = os.umask(0)
    try:
        with SQLiteStorage(path) as storage:
            storage.get_or_add_setting("secret_key", "k")
            for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                assert stat.S_IMODE(file.stat().st_mode) == 0o600, (file, oct(file.stat().st_mode))
    finally:
        os.umask(previous)


def test_the_database_file_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """DESIGN "Secrets reach storage only as hashes" cannot hold for the cookie-signing key,
    the private signing keys and TOTP secrets: the file and its WAL are mode 0600."""
    path = tmp_path / "private.db"
    with SQLiteStorage(path) as storage:
        storage.get_or_add_setting("secret_key", "k")
        for file in (path, Path(f"{path}-wal")):
            assert file.exists()
            assert file.stat().st_mode & 0o077 == 0, oct(file.stat().st_mode)


# -- Storage URL -----------------------------------------------------------------------


def test_from_url_opens_the_file_after_the_scheme(path: Path) -> None:
    """DESIGN "Storage contract": "Backends are found by URL scheme
    (`codeflow_storage.<scheme>`)": ``sqlite:///path`` opens the file at path."""
    assert path.is_absolute()
    with from_url(f"sqlite:///{path}") as storage:
        storage.get_or_add_setting("secret_key", "k")
        assert storage.path == str(path)
        # a per-connection setting: asked on the storage's own connection
        assert storage._read("PRAGMA synchronous") == [(1,)]  # NORMAL, the default
    assert query(path, "SELECT value FROM settings WHERE name = 'secret_key'") == [("k",)]


@pytest.mark.parametrize(
    ("value", "level"), [("normal", 1), ("full", 2), ("FULL", 2), ("extra", 3)]
)
def test_from_url_synchronous_option(path: Path, value: str, level: int) -> None:
    """``?synchronous=`` sets PRAGMA synchronous on the storage's own connection
    (https://sqlite.org/pragma.html#pragma_synchronous: 1 NORMAL, 2 FULL, 3 EXTRA)."""
    with from_url(f"sqlite:///{path}?synchronous={value}") as storage:
        assert storage._read("PRAGMA synchronous") == [(level,)]


@pytest.mark.parametrize(
    ("query_string", "message"),
    [
        ("synchronus=full", "unknown option 'synchronus'"),
        ("synchronous=off", "synchronous='off'"),
        ("synchronous=", "synchronous=''"),
        ("synchronous=full&synchronous=normal", "given twice"),
    ],
)
def test_from_url_refuses_a_bad_option(path: Path, query_string: str, message: str) -> None:
    """A typo in the URL is an error, not a silently weaker durability."""
    with pytest.raises(ValueError, match=message):
        from_url(f"sqlite:///{path}?{query_string}")
    assert not path.exists()


@pytest.mark.parametrize("url", ["sqlite:///", "sqlite://host/db", "postgresql://db", "memory"])
def test_from_url_refuses_what_is_not_a_sqlite_url(url: str) -> None:
    with pytest.raises(ValueError, match="storage URL"):
        from_url(url)
