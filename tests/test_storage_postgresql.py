"""PostgreSQLStorage beyond the shared contract (tests/test_storage_contract.py): migrations
that run once when nodes start together, an index for every lookup, a purge several nodes
run at once, one-shot operations atomic across processes, and its URL.

Issue 16 item 2: "The one-shot operations atomic across nodes in single statements ...;
versioned migrations guarded by an advisory lock so nodes that start together migrate once;
an index for every lookup (checked with EXPLAIN in a test); purge in batches that several
nodes can run at once."

Each test runs in a schema of its own on the server of ``CODEFLOW_TEST_POSTGRES_URL``
(tests/postgres_support.py); without one these tests skip (fail under CI).
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from conftest import CONFIDENTIAL, REDIRECT, SECRET, USERNAME, make_server, new_flow
from oidc_helpers import authorize
from postgres_support import fresh_schema, server_url, with_options
from wsgi_client import WSGIClient, basic

import codeflow
from codeflow import AuthorizationCode, Client, LoginSession, SigningKey, Token, User

psycopg = pytest.importorskip("psycopg", reason="PostgreSQL tests need psycopg (the dev extra)")
from codeflow_storage import postgresql  # noqa: E402
from codeflow_storage.postgresql import MIGRATIONS, PostgreSQLStorage, from_url  # noqa: E402

NOW = 1_800_000_000.0
PROCESSES = 4


@pytest.fixture
def schema() -> Iterator[tuple[str, str]]:
    """(storage URL, schema name) of a schema no one has made yet; dropped after."""
    with fresh_schema() as found:
        yield found


@pytest.fixture
def storage(schema: tuple[str, str]) -> Iterator[PostgreSQLStorage]:
    with from_url(schema[0]) as store:
        yield store


def sql(schema: str, query: str, params: Any = ()) -> list[tuple[Any, ...]]:
    """Run SQL in ``schema`` on a connection of our own, closed at once."""
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute("SELECT set_config('search_path', %s, false)", [schema])
        cursor = conn.execute(query, params)
        return cursor.fetchall() if cursor.description else []


def a_code(code_hash: str = "code-1", **fields: Any) -> AuthorizationCode:
    values: dict[str, Any] = {
        "code_hash": code_hash, "client_id": "app", "username": "alice",
        "redirect_uri": "http://127.0.0.1:9000/callback", "redirect_uri_required": True,
        "scope": ("openid",), "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "nonce": None, "auth_time": int(NOW), "expires_at": NOW + 60, **fields,
    }  # fmt: skip
    return AuthorizationCode(**values)


def a_token(
    token_hash: str, kind: str = "access", family_id: str = "family-1", **fields: Any
) -> Token:
    values: dict[str, Any] = {
        "token_hash": token_hash, "kind": kind, "client_id": "app", "username": "alice",
        "scope": ("openid",), "issued_at": NOW, "expires_at": NOW + 3600,
        "family_id": family_id, **fields,
    }  # fmt: skip
    return Token(**values)


# -- Schema: versioned migrations, once, under an advisory lock --------------------------


def test_a_new_schema_is_made_and_migrated(storage: PostgreSQLStorage, schema: tuple) -> None:
    """Issue 16 item 2: versioned migrations; ``?schema=`` names where the tables live."""
    _, name = schema
    assert storage.schema == name
    versions = sql(name, "SELECT version FROM codeflow_migrations ORDER BY version")
    assert versions == [(v,) for v in range(1, len(MIGRATIONS) + 1)]
    tables = {t for (t,) in sql(name, "SELECT tablename FROM pg_tables WHERE schemaname = %s",
                                [name])}  # fmt: skip
    assert {"clients", "users", "codes", "used_codes", "tokens", "signing_keys"} <= tables


def test_a_schema_of_an_older_version_upgrades_itself(schema: tuple) -> None:
    """Versioned migrations: a schema made by an older version opens, is brought to the
    current version, and keeps its records."""
    url, name = schema
    with psycopg.connect(server_url(), autocommit=True) as conn, conn.transaction():
        conn.execute(f"CREATE SCHEMA {name}")
        conn.execute(f"SET LOCAL search_path TO {name}")
        conn.execute("CREATE TABLE codeflow_migrations (version integer PRIMARY KEY, "
                     "applied_at timestamptz NOT NULL DEFAULT now())")  # fmt: skip
        for statement in MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("INSERT INTO codeflow_migrations (version) VALUES (1)")
        conn.execute(
            "INSERT INTO tokens VALUES ('old', 'refresh', 'app', 'alice', '{openid}', %s, %s, "
            "'family-1', false)",
            [NOW, NOW + 3600],
        )
    # Only this schema's indexes: other runs on the same database have theirs.
    assert not sql(name, "SELECT 1 FROM pg_indexes WHERE indexname = 'tokens_by_family' "
                         "AND schemaname = %s", [name])  # fmt: skip

    with from_url(url) as store:
        assert store.get_token("old") == a_token("old", kind="refresh")
        assert store.revoke_family("family-1") is True
        assert store.get_token("old").revoked

    assert sql(name, "SELECT max(version) FROM codeflow_migrations") == [(len(MIGRATIONS),)]
    assert sql(name, "SELECT 1 FROM pg_indexes WHERE indexname = 'tokens_by_family' "
                     "AND schemaname = %s", [name])  # fmt: skip


def test_a_schema_of_a_newer_version_is_refused(schema: tuple) -> None:
    """A schema this code does not know is not touched."""
    url, name = schema
    from_url(url).close()
    sql(name, "INSERT INTO codeflow_migrations (version) VALUES (%s)", [len(MIGRATIONS) + 1])
    with pytest.raises(RuntimeError, match="newer"):
        from_url(url)


def test_a_record_field_without_a_column_is_caught_at_open(schema: tuple) -> None:
    """As for SQLite: a field added to a record in codeflow.py needs a migration adding its
    column; without one the storage refuses to open instead of failing on first use."""
    url, name = schema
    from_url(url).close()
    sql(name, "ALTER TABLE users DROP COLUMN declared")
    with pytest.raises(RuntimeError, match=r"users has no column for User\.declared"):
        from_url(url)


def _open_worker(url: str, i: int, barrier: Any, results: Any) -> None:
    """One node starting: wait for the others, open the storage, agree on a setting."""
    barrier.wait(timeout=30)
    with from_url(url) as store:
        results.put((i, store.get_or_add_setting("secret_key", f"candidate-{i}")))


def test_nodes_starting_together_on_a_new_database_migrate_once(schema: tuple) -> None:
    """Issue 16 item 2: "versioned migrations guarded by an advisory lock so nodes that
    start together migrate once": PROCESSES fresh processes released at once on a schema
    nobody has made all open it (one migrates, the others wait and find it done), each
    migration is recorded once, and they agree on one cookie key."""
    url, name = schema
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_open_worker, args=(url, i, barrier, results))
             for i in range(PROCESSES)]  # fmt: skip
    try:
        for p in procs:
            p.start()
        outcome = dict(results.get(timeout=60) for _ in procs)
        for p in procs:
            p.join(timeout=30)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        results.close()
        results.join_thread()
    assert len(set(outcome.values())) == 1, outcome
    rows = sql(name, "SELECT version FROM codeflow_migrations ORDER BY version")
    assert rows == [(v,) for v in range(1, len(MIGRATIONS) + 1)]


def test_threads_opening_a_new_schema_at_once_all_succeed(schema: tuple) -> None:
    """The same with threads of one process, each with its own storage."""
    url, name = schema
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            from_url(url).close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert sql(name, "SELECT count(*) FROM codeflow_migrations") == [(len(MIGRATIONS),)]


# -- An index for every lookup, checked with EXPLAIN ---------------------------------------

# Statements that read a whole table by design: (a piece of the statement, the table).
WHOLE_TABLE_READS = {
    ("FROM clients ORDER BY client_id", "clients"),
    ("FROM users ORDER BY username", "users"),
    ("FROM signing_keys ORDER BY seq DESC", "signing_keys"),
    ("FROM consents WHERE TRUE UNION ALL", "consents"),  # list_grants of everyone
    ("FROM consents WHERE TRUE UNION ALL", "tokens"),
}


def statements_sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """A list that gets each (statement, parameters) psycopg sends from now on."""
    sent: list[tuple[str, Any]] = []
    execute = psycopg.Cursor.execute

    def spy(self: Any, query: Any, params: Any = None, **kwargs: Any) -> Any:
        sent.append((query, params))
        return execute(self, query, params, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", spy)
    return sent


def every_statement(store: PostgreSQLStorage, monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Call every Storage method, both ways where there are two, and return each
    (statement, parameters) the storage sent."""
    sent = statements_sent(monkeypatch)
    store.add_client(Client("app"))
    store.get_client("app")
    store.list_clients()
    store.add_user(User("alice", "hash"))
    store.get_user("alice")
    store.list_users()
    store.change_credentials(User("alice", "new-hash"))
    store.change_record_id("alice", "new-id")
    store.save_code(a_code())
    store.consume_code("code-1")
    store.save_token(a_token("a1"), a_token("r1", kind="refresh"))
    store.get_token("a1")
    store.get_token_and_user("a1")
    store.rotate_refresh_token("r1", a_token("r2", kind="refresh"), a_token("a2"))
    store.revoke_token("a2")
    store.revoke_family("family-1")
    store.save_consent("alice", "app", ["openid"], NOW)
    store.get_consent("alice", "app")
    for only in ({}, {"username": "alice"}, {"client_id": "app"},
                 {"username": "alice", "client_id": "app"}):  # fmt: skip
        store.list_grants(NOW, **only)
    store.revoke_grant("alice", "app", NOW)
    store.record_totp_step("alice", 1)
    store.count_failure("password:alice", NOW, 100)
    store.hold_failures("password:alice", NOW + 30)
    store.failures("password:alice", NOW, 100)
    store.clear_failures(["password:alice"])
    alice = store.get_user("alice")
    store.remember_address(alice, "192.0.2.1", NOW, 4)
    store.remember_address(alice, "192.0.2.2", NOW + 1, 1)  # forgets 192.0.2.1
    store.known_address("alice", "192.0.2.2")
    store.get_or_add_setting("secret_key", "k")
    store.get_or_add_setting("secret_key", "k2")
    key = SigningKey("kid-1", "RS256", "pem", NOW)
    store.get_or_add_signing_key(key)
    store.get_or_add_signing_key(SigningKey("kid-2", "RS256", "pem", NOW))
    store.signing_keys()
    store.spend_budget("registration:192.0.2.1", NOW, 60, 1)
    store.spend_budget("registration:192.0.2.1", NOW, 60, 1)  # refused: reads the budget
    store.rotate_signing_key(SigningKey("kid-3", "RS256", "pem", NOW), NOW)
    store.save_login_session(LoginSession("sid-1", "alice", NOW, NOW, NOW + 3600))
    store.get_login_session("sid-1")
    store.purge_expired(NOW + 10**6)
    store.remove_user("alice")
    store.remove_client("app")
    monkeypatch.undo()
    return [(str(q), p) for q, p in sent if str(q).lstrip().split()[0].upper()
            in ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH")]  # fmt: skip


def test_a_flow_asks_postgresql_once_for_each_read(
    storage: PostgreSQLStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16 item 2 (round trips per flow): a login session comes with its user
    (``get_login_session``), a code with its user (``consume_code``) and a token with its
    user (``get_token_and_user``). So a signed-in browser's authorization request (RFC
    6749 §4.1.1) reads its session and the consent once each, and redeeming a code
    (§4.1.3), a refresh (§6), userinfo (OIDC Core §5.3) and introspection (RFC 7662 §2)
    each read once and write once at most: one statement each, as a node across a network
    pays a round trip for each."""
    srv = make_server(storage=storage)
    browser = WSGIClient(srv.wsgi)
    auth = basic(CONFIDENTIAL, SECRET)

    def flow() -> dict[str, list[str]]:
        sent = statements_sent(monkeypatch)
        steps: dict[str, list[str]] = {}

        def step(name: str) -> None:
            steps[name] = [str(query).split()[0] for query, _ in sent]
            sent.clear()

        grant = new_flow()
        code = authorize(browser, grant)["code"]
        step("authorize")
        r = browser.post("/token", {"grant_type": "authorization_code", "code": code,
                                    "redirect_uri": REDIRECT, "code_verifier": grant.verifier},
                         headers=auth)  # fmt: skip
        assert r.status == 200, r.text
        step("code")
        tokens = browser.post("/token", {"grant_type": "refresh_token",
                                         "refresh_token": r.json()["refresh_token"]},
                              headers=auth).json()  # fmt: skip
        assert "access_token" in tokens, tokens
        step("refresh")
        r = browser.get("/userinfo", headers={"Authorization": "Bearer " + tokens["access_token"]})
        assert r.json()["sub"] == USERNAME
        step("userinfo")
        r = browser.post("/introspect", {"token": tokens["access_token"]}, headers=auth)
        assert r.json()["active"] is True and r.json()["sub"] == USERNAME, r.text
        step("introspect")
        return steps

    flow()  # signs in and consents; the process caches the client and the keys it read
    steps = flow()
    # SELECT the session LEFT JOIN users; SELECT the consent; INSERT the code
    assert steps["authorize"] == ["SELECT", "SELECT", "INSERT"], steps
    # WITH ... DELETE the code ... LEFT JOIN users; INSERT the tokens
    assert steps["code"] == ["WITH", "INSERT"], steps
    # SELECT the token LEFT JOIN users; WITH ... UPDATE the old one, INSERT the new ones
    assert steps["refresh"] == ["SELECT", "WITH"], steps
    assert steps["userinfo"] == ["SELECT"], steps
    assert steps["introspect"] == ["SELECT"], steps  # RFC 7662 §2.2: the token with its user


def table_scans(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every node of an EXPLAIN (FORMAT JSON) plan that reads a table."""
    if "Relation Name" in plan and plan["Node Type"] != "ModifyTable":
        yield plan
    for child in plan.get("Plans", []):
        yield from table_scans(child)


def test_every_lookup_uses_an_index(
    storage: PostgreSQLStorage, schema: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16 item 2: "an index for every lookup (checked with EXPLAIN in a test)": each
    statement the storage sends, as it sends it, finds its rows through an index condition
    (with sequential scans priced out, a table without a fitting index shows a Seq Scan,
    or an index read whole, with no Index Cond); only listing a whole table may do that."""
    statements = every_statement(storage, monkeypatch)
    assert len(statements) >= 40
    _, name = schema
    checked = 0
    with psycopg.connect(server_url(), autocommit=True) as conn:
        conn.execute("SELECT set_config('search_path', %s, false)", [name])
        conn.execute("SET enable_seqscan = off")
        for query, params in statements:
            (plan,) = conn.execute("EXPLAIN (FORMAT JSON) " + query, params).fetchone()[0]
            for scan in table_scans(plan["Plan"]):
                table = scan["Relation Name"]
                indexed = (
                    "Index Cond" in scan  # an Index Scan or Index Only Scan
                    or scan["Node Type"] == "Bitmap Heap Scan"  # under a Bitmap Index Scan
                    or "TID Cond" in scan  # rows a statement found by index, by address
                )
                whole = any(part in query and table == t for part, t in WHOLE_TABLE_READS)
                assert indexed or whole, (
                    f"{table} read without an index condition:\n{query}\n"
                    + json.dumps(plan, indent=1)
                )
                checked += 1
    assert checked >= 40


# -- Purge in batches, several nodes at once ------------------------------------------------


def test_purges_running_at_once_share_the_work(
    storage: PostgreSQLStorage, schema: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 16 item 2: "purge in batches that several nodes can run at once": four
    purges of 2,000 expired tokens and codes, in batches of 50, started together, each
    skipping the rows another has locked, delete every expired row once between them
    (their counts add up exactly), wait for none and fail none, and keep what is live."""
    url, name = schema
    monkeypatch.setattr(postgresql, "PURGE_BATCH", 50)
    sql(name, "INSERT INTO tokens SELECT 't' || i, 'access', 'app', 'alice', '{}', %s, %s, "
              "'f' || i, false FROM generate_series(1, 1500) AS i", [NOW, NOW - 1])  # fmt: skip
    sql(name, "INSERT INTO codes SELECT 'c' || i, 'app', 'alice', 'http://x', true, '{}', "
              "NULL, NULL, 0, %s FROM generate_series(1, 500) AS i", [NOW - 1])  # fmt: skip
    storage.save_token(a_token("live"))
    nodes = [from_url(url) for _ in range(4)]
    try:
        barrier = threading.Barrier(len(nodes))
        counts: list[int] = []
        errors: list[BaseException] = []

        def purge(node: PostgreSQLStorage) -> None:
            try:
                barrier.wait(timeout=10)
                counts.append(node.purge_expired(NOW))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=purge, args=(node,)) for node in nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        for node in nodes:
            node.close()
    assert not errors, errors
    assert sum(counts) == 2000, counts
    assert sql(name, "SELECT count(*) FROM tokens") == [(1,)]
    assert sql(name, "SELECT count(*) FROM codes") == [(0,)]
    assert storage.get_token("live") == a_token("live")


# -- Atomic across processes -----------------------------------------------------------------


def _race_worker(url: str, operation: str, i: int, barrier: Any, results: Any) -> None:
    """One process of a race: open the store, wait for the others, do ``operation`` once."""
    with from_url(url) as store:
        barrier.wait(timeout=30)
        if operation == "consume":
            result: Any = store.consume_code("code-1") is not None
        elif operation == "rotate":
            result = store.rotate_refresh_token("r1", a_token(f"new-{i}", kind="refresh"))
        else:
            result = store.revoke_grant("alice", "app", NOW)
        results.put((i, result))


def race_processes(url: str, operation: str) -> dict[int, Any]:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(url, operation, i, barrier, results))
             for i in range(PROCESSES)]  # fmt: skip
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


def test_consume_code_across_processes_has_one_winner(storage: PostgreSQLStorage,
                                                      schema: tuple) -> None:  # fmt: skip
    """Storage.consume_code: "of N concurrent callers, at most one gets it", across
    processes, as across nodes; the tombstone was written with the winning DELETE."""
    storage.save_code(a_code())
    outcome = race_processes(schema[0], "consume")
    assert sorted(outcome.values()) == [False] * (PROCESSES - 1) + [True]
    storage.save_token(a_token("a1", family_id="code-1"))
    assert storage.revoke_family("code-1") is True
    assert storage.get_token("a1").revoked


def test_rotate_refresh_token_across_processes_has_one_winner(storage: PostgreSQLStorage,
                                                              schema: tuple) -> None:  # fmt: skip
    """Storage.rotate_refresh_token: "of N concurrent rotations of one token, at most one
    succeeds", across processes; only the winner's new token is stored."""
    storage.save_token(a_token("r1", kind="refresh"))
    outcome = race_processes(schema[0], "rotate")
    winners = [i for i, won in outcome.items() if won]
    assert len(winners) == 1, outcome
    assert [i for i in range(PROCESSES) if storage.get_token(f"new-{i}")] == winners


def test_revoke_grant_across_processes_finds_the_grant_once(storage: PostgreSQLStorage,
                                                            schema: tuple) -> None:  # fmt: skip
    """Storage.revoke_grant: of several revocations at once, in several processes, exactly
    one finds the grant."""
    storage.save_consent("alice", "app", ["openid"], NOW)
    storage.save_token(a_token("r1", kind="refresh"))
    outcome = race_processes(schema[0], "revoke")
    assert sorted(outcome.values()) == [False] * (PROCESSES - 1) + [True]
    assert storage.list_grants(NOW) == []


def _blocked_by(schema: str, pid: int) -> int:
    """The backend that waits for a lock ``pid`` holds, once there is one (10 s at most)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = sql(schema, "SELECT pid FROM pg_stat_activity WHERE %s = ANY "
                           "(pg_blocking_pids(pid))", [pid])  # fmt: skip
        if rows:
            return int(rows[0][0])
        time.sleep(0.01)
    raise AssertionError(f"nothing waits for backend {pid}")


@pytest.mark.parametrize("change", ["change_credentials", "remove_user"])
def test_a_sign_in_remembered_while_the_credentials_change_is_forgotten(
    storage: PostgreSQLStorage, schema: tuple, change: str
) -> None:
    """NIST SP 800-63B §5.2.2 known addresses, RFC 9700 §4.14.2: a remember_address that
    commits while change_credentials (or remove_user) waits for it is forgotten with the
    others, as if it had come first, which it did. Ordered by a third transaction
    holding the address's row until both wait: the remember holds the user's row, the
    change waits for it; on PostgreSQL a statement's snapshot predates that wait, so a
    change that did not see the remembered row would leave the address known (an
    attacker's, after the password was changed because of it)."""
    alice = storage.add_user(User("alice", "old-hash"))
    name = schema[1]
    with psycopg.connect(server_url()) as holder:
        holder.execute("SELECT set_config('search_path', %s, false)", [name])
        holder.execute("INSERT INTO known_addresses VALUES (%s, '192.0.2.7', %s)",
                       [alice.subject, NOW])  # fmt: skip
        remembering = threading.Thread(
            target=storage.remember_address, args=(alice, "192.0.2.7", NOW + 1, 4)
        )
        remembering.start()
        remembers = _blocked_by(name, holder.info.backend_pid)
        if change == "change_credentials":
            call = lambda: storage.change_credentials(replace(alice, password_hash="new"))  # noqa: E731
        else:
            call = lambda: storage.remove_user("alice", NOW + 2)  # noqa: E731
        changing = threading.Thread(target=call)
        changing.start()
        _blocked_by(name, remembers)
        holder.rollback()
    remembering.join(10)
    changing.join(10)
    assert not storage.known_address("alice", "192.0.2.7")
    assert sql(name, "SELECT * FROM known_addresses") == []


def _consume_in_child(store: PostgreSQLStorage, results: Any) -> None:
    try:
        results.put(store.consume_code("code-1") is not None)
    finally:
        store.close()


def test_a_forked_child_uses_a_pool_of_its_own(storage: PostgreSQLStorage) -> None:
    """A pooled connection's socket must not be shared by two processes: a storage inherited
    by a forked worker (a pre-forking server, say) opens its own pool there, and the
    parent's connections go on working."""
    storage.save_code(a_code())
    storage.get_token("warm")  # the parent's pool has a connection in use before the fork
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=_consume_in_child, args=(storage, results))
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() with threads running (the pool's workers); the
        # child touches only the storage, which opens a new pool after fork.
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
    storage.save_token(a_token("a1"))
    assert storage.get_token("a1") == a_token("a1")


def test_closed_storage_refuses_work(schema: tuple) -> None:
    """PostgreSQLStorage.close: after it, calls fail loudly instead of reconnecting."""
    store = from_url(schema[0])
    store.close()
    store.close()  # closing twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        store.get_token("a1")


# -- What is stored, and where ---------------------------------------------------------------


def test_records_survive_reopening(schema: tuple) -> None:
    """What one node wrote, another storage on the same schema reads back equal: every
    record type, with tuples, claims, optional fields and floats exact."""
    url, _ = schema
    client = Client(
        "app", redirect_uris=("http://127.0.0.1:9000/callback",), secret_hash="scrypt$x",
        name="App", scopes=("openid", "api:read"), grant_types=("authorization_code",),
        require_pkce=False, id_token_signed_response_alg="ES256", access_token_jwt=True,
        post_logout_redirect_uris=("http://127.0.0.1:9000/bye",), declared="d",
    )  # fmt: skip
    public = Client("public", redirect_uris=(), scopes=())
    user = User("alice", "scrypt$y", {"name": "Alice", "groups": ["a", "b"], "n": 1.5},
                "JBSWY3DPEHPK3PXP")  # fmt: skip
    key = SigningKey("kid-1", "RS256", "-----BEGIN PRIVATE KEY-----\n...", NOW + 0.123456789)
    machine = a_token("m1", username=None, expires_at=NOW + 0.1)
    with from_url(url) as first:
        first.add_client(client)
        first.add_client(public)
        first.add_user(user)
        first.save_code(a_code())
        first.save_token(machine)
        first.save_consent("alice", "app", ["openid", "profile"], NOW)
        first.get_or_add_signing_key(key)
    with from_url(url) as second:
        assert second.list_clients() == [client, public]
        assert second.get_user("alice") == user
        assert second.get_token("m1") == machine
        assert second.get_consent("alice", "app") == frozenset({"openid", "profile"})
        assert second.signing_keys() == [key]
        assert second.consume_code("code-1") == (a_code(), user)


def test_no_raw_secret_reaches_the_database(storage: PostgreSQLStorage, schema: tuple) -> None:
    """DESIGN "Storage contract": "Secrets reach storage only as hashes" - no token, client
    secret or password appears in any row of any table."""
    srv = codeflow.Server("http://127.0.0.1:8000", storage=storage)
    srv.add_client("app", client_secret="the-client-secret-value",
                   redirect_uris=["http://127.0.0.1:9000/callback"],
                   grant_types=["authorization_code", "refresh_token"])  # fmt: skip
    srv.add_user("alice", "the-password-value")
    body = srv.issue_tokens("alice", "app")
    _, name = schema
    tables = sql(name, "SELECT tablename FROM pg_tables WHERE schemaname = %s", [name])
    # Each row as PostgreSQL's text form; the table names come from the catalog.
    rows = [sql(name, f"SELECT t::text FROM {table} t") for (table,) in tables]  # noqa: S608
    text = " ".join(row for table_rows in rows for (row,) in table_rows)
    assert codeflow.token_hash(body["access_token"]) in text
    for secret in (body["access_token"], body["refresh_token"], "the-client-secret-value",
                   "the-password-value"):  # fmt: skip
        assert secret not in text


def test_schemas_keep_installations_apart(schema: tuple) -> None:
    """Two schemas of one database are two stores: nothing of one is seen in the other."""
    url, _ = schema
    with fresh_schema() as (other_url, _), from_url(url) as one, from_url(other_url) as two:
        one.add_client(Client("app"))
        assert two.get_client("app") is None
        assert two.get_or_add_setting("secret_key", "two") == "two"
        assert one.get_or_add_setting("secret_key", "one") == "one"


def test_without_a_schema_option_the_search_path_decides(schema: tuple) -> None:
    """Without ``?schema=``, the tables go in the connection's current schema: the first
    of its search_path that exists (here set with libpq's ``options``)."""
    _, name = schema
    sql("public", f"CREATE SCHEMA {name}")
    with from_url(with_options(server_url(), options=f"-csearch_path%3D{name}")) as store:
        assert store.schema == name
        store.add_client(Client("app"))
    assert sql(name, "SELECT client_id FROM clients") == [("app",)]


# -- Storage URL ------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_open_storage_finds_the_backend_by_scheme(scheme: str, schema: tuple) -> None:
    """DESIGN "Storage contract": "Backends are found by URL scheme": codeflow's
    open_storage opens ``postgresql://`` and libpq's other spelling ``postgres://``."""
    url, name = schema
    store = codeflow.open_storage(f"{scheme}://" + url.partition("://")[2])
    try:
        assert isinstance(store, PostgreSQLStorage)
        assert store.schema == name
    finally:
        store.close()


def test_pool_sizes_from_the_url(schema: tuple) -> None:
    """``pool_min_size`` connections are open once the storage is."""
    url, _ = schema
    with from_url(with_options(url, pool_min_size="3", pool_max_size="5")) as store:
        stats = store._current_pool().get_stats()
        assert (stats["pool_min"], stats["pool_max"], stats["pool_size"]) == (3, 5, 3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"schema": "Bad-Name"}, "schema 'Bad-Name'"),
        ({"pool_max_size": "many"}, "pool_max_size must be a whole number"),
        ({"pool_min_size": "4", "pool_max_size": "2"}, "pool_min_size <= pool_max_size"),
        ({"pool_timeout": "soon"}, "pool_timeout must be a number of seconds"),
        ({"pool_timeout": "0"}, "pool_timeout must be a number of seconds"),
        ({"pool_timeout": "-1"}, "pool_timeout must be a number of seconds"),
        ({"pool_timeout": "nan"}, "pool_timeout must be a number of seconds"),
        ({"pool_timeout": "inf"}, "pool_timeout must be a number of seconds"),
        ({"sslmdoe": "require"}, "sslmdoe"),  # libpq's own check
    ],
)
def test_a_bad_option_is_refused(options: dict[str, str], message: str) -> None:
    """A typo in the URL is an error naming it, not an option silently ignored."""
    url = with_options(server_url(), **options)
    with pytest.raises(ValueError, match=message):
        from_url(url)


def test_an_option_given_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="given twice"):
        from_url(with_options(server_url(), schema="a") + "&schema=b")


def test_a_refused_login_names_the_problem_not_the_password(schema: tuple) -> None:
    """A wrong password is a one-line ValueError (the CLI's exit 2) that never shows the
    password, nor the right one."""
    url = server_url()
    right = psycopg.conninfo.conninfo_to_dict(url)["password"]
    wrong = url.replace(f":{right}@", ":not-the-password@")
    with pytest.raises(ValueError, match="password authentication failed") as caught:
        from_url(wrong)
    assert "not-the-password" not in str(caught.value) and right not in str(caught.value)
    assert ":***@" in str(caught.value)


@pytest.mark.parametrize("url", ["sqlite:///x.db", "postgresql+psycopg://h/db", "memory"])
def test_what_is_not_a_postgresql_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="expected postgresql://"):
        from_url(url)

