"""PostgreSQL storage for codeflow, on psycopg 3 and psycopg_pool: one database shared by
every codeflow node (processes on one machine or many) behind one issuer.

- Schema: a list of versioned migrations applied in order when the storage opens, inside
  one READ COMMITTED transaction that first takes ``pg_advisory_xact_lock``: of several
  nodes starting together on a new database, one migrates and the others wait for it,
  then find nothing left to do. The table ``codeflow_migrations`` has a row per version
  applied; a database migrated by a newer codeflow is refused, and a record field with no
  column (a migration missing from this module) is caught at open.
- Namespace: every table lives in one schema, ``?schema=NAME`` in the URL (created if
  missing) or else the connection's ``current_schema()`` (usually ``public``). Each pooled
  connection's ``search_path`` is pinned to it, so several codeflow installations, or
  test runs, can share one database, each in a schema of its own.
- Isolation: every pooled connection runs its statements as SERIALIZABLE transactions
  (``default_transaction_isolation``), each call to this storage one transaction, and
  nearly all of them one statement (data-modifying CTEs: ``DELETE ... RETURNING``,
  conditional ``UPDATE ... RETURNING``, ``INSERT ... ON CONFLICT``). SERIALIZABLE makes
  the races between calls come out as if the calls had run one at a time, in every node:
  a token saved into a family while it is revoked, a refresh rotation racing a grant's
  revocation or a password change. PostgreSQL answers the loser of such a race with a
  serialization failure (SQLSTATE 40001) and rolls it back, and the call is run again,
  on a fresh snapshot, a bounded number of times. Two kinds of call run READ COMMITTED
  instead, where it is enough and SERIALIZABLE would only turn nodes away to retry:
  adding a setting or signing key only if there is none (the INSERT waits for a rival's
  and the next statement sees it), and the purge, in batches that skip rows another
  node is deleting (``FOR UPDATE SKIP LOCKED``).
- Pool: ``pool_min_size`` (default 1) to ``pool_max_size`` (default 10) connections per
  process: one for each of waitress's 8 request threads, one for the purge thread and one
  spare. A call waits ``pool_timeout`` seconds (POOL_TIMEOUT) at most for a connection of
  a busy pool, then answers ``StorageUnavailable`` (503 with Retry-After). A forked child
  (a pre-forking server) opens a pool of its own.
- Outages (``PostgreSQLStorage._run``): a call answers ``StorageUnavailable`` (503) when the
  server cannot be reached, at once while it is known down; one probe at a time, in the
  background, at most every PROBE_INTERVAL seconds, reconnects; connections the server
  hung up on while idle (a restart) are found before use and replaced, so the first call
  after a restart works.
- Secrets: codes and tokens arrive as hashes (``codeflow.token_hash``) and only those are
  kept. Tuples (scopes, redirect URIs) are ``text[]``, claims ``jsonb``.

Use: the storage URL ``postgresql://user:password@host:5432/dbname?schema=codeflow`` (also
``postgres://``) in the config file or ``codeflow serve --storage``; every libpq connection
parameter (``sslmode``, ``connect_timeout``, ``application_name``, ...) may be given in
the query too. Install with ``pip install 'codeflow[postgres]'``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import random
import re
import select
import threading
import time
import types
import typing
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields, replace
from typing import Any, Generic, TypeVar

import psycopg
import psycopg_pool
from psycopg import errors, sql
from psycopg.abc import Params
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.types.json import Jsonb

from codeflow import (
    AuthorizationCode,
    Client,
    DeviceAuthorization,
    FailureCount,
    Grant,
    LoginSession,
    Passkey,
    PushedRequest,
    RemovedUser,
    Resource,
    SigningKey,
    StorageUnavailable,
    Token,
    User,
    new_subject,
)

if typing.TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["MIGRATIONS", "PostgreSQLStorage", "from_url"]

SCHEMES = ("postgresql://", "postgres://")  # libpq's two URI prefixes
POOL_MIN_SIZE = 1
POOL_MAX_SIZE = 10  # codeflow's 8 waitress threads, the purge thread, one spare
# Seconds a call waits for a connection of a busy pool before it answers 503 with
# Retry-After: a connection is held for a few milliseconds a call, so a pool busy for
# longer is overloaded, and a client told to retry is better off than one left waiting
# until it gives up (openid-client 5 gives up after 3.5 s by default).
POOL_TIMEOUT = 2.0
BUSY_RETRY_AFTER = 1  # seconds: a busy pool frees a connection within moments
OPEN_TIMEOUT = 10.0  # seconds opening the storage waits for the pool's first connections
CONNECT_TIMEOUT = 10  # seconds libpq waits for a server, unless the URL says otherwise
PROBE_CONNECT_TIMEOUT = 2  # seconds a reconnection probe waits for a server (libpq's least)
PROBE_INTERVAL = 0.5  # seconds between reconnection probes of one process while it is down
RETRIES = 12  # runs of a call that keeps losing serialization races, before giving up
RETRY_PAUSE = 0.001  # seconds; the pause before retry n is random up to this * 2**n
PURGE_BATCH = 1000  # rows one purge transaction deletes, so that locks are held briefly
USERS_LOCK = 0x636F6465666C6F77  # pg_advisory_xact_lock key of user records ("codeflow")
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")  # an unquoted PostgreSQL identifier

Conn = psycopg.Connection[tuple[Any, ...]]
Pool = psycopg_pool.ConnectionPool[Conn]
T = TypeVar("T")
log = logging.getLogger("codeflow")


###############################################################################
# Schema migrations ############################################################
###############################################################################

# Each migration is the statements that take the schema from version N to N + 1, run in
# the transaction that records version N + 1. Append new ones; never edit one that has
# shipped. Times are seconds since the epoch as double precision, as the records hold them.

_V1_TABLES = [
    """CREATE TABLE clients (
        client_id text PRIMARY KEY,
        redirect_uris text[] NOT NULL,
        secret_hash text,
        name text NOT NULL,
        scopes text[] NOT NULL,
        grant_types text[] NOT NULL,
        require_pkce boolean NOT NULL,
        id_token_signed_response_alg text NOT NULL,
        access_token_jwt boolean NOT NULL,
        post_logout_redirect_uris text[] NOT NULL,
        declared text NOT NULL DEFAULT ''
    )""",
    """CREATE TABLE users (
        username text PRIMARY KEY,
        password_hash text NOT NULL,
        claims jsonb NOT NULL,
        totp_secret text,
        record_id text NOT NULL,
        declared text NOT NULL DEFAULT ''
    )""",
    """CREATE TABLE codes (
        code_hash text PRIMARY KEY,
        client_id text NOT NULL,
        username text NOT NULL,
        redirect_uri text NOT NULL,
        redirect_uri_required boolean NOT NULL,
        scope text[] NOT NULL,
        code_challenge text,
        nonce text,
        auth_time bigint NOT NULL,
        expires_at double precision NOT NULL
    )""",
    # A consumed code leaves a tombstone until it would have expired, so that a replay
    # can revoke what it issued (RFC 6749 §4.1.2).
    """CREATE TABLE used_codes (
        code_hash text PRIMARY KEY,
        expires_at double precision NOT NULL
    )""",
    """CREATE TABLE tokens (
        token_hash text PRIMARY KEY,
        kind text NOT NULL CHECK (kind IN ('access', 'refresh')),
        client_id text NOT NULL,
        username text,
        scope text[] NOT NULL,
        issued_at double precision NOT NULL,
        expires_at double precision NOT NULL,
        family_id text NOT NULL,
        revoked boolean NOT NULL
    )""",
    # A revoked family is remembered until its last token or code would have expired; no
    # token can join it after that (its codes are expired, its refresh tokens revoked).
    """CREATE TABLE revoked_families (
        family_id text PRIMARY KEY,
        until double precision NOT NULL
    )""",
    """CREATE TABLE consents (
        username text NOT NULL,
        client_id text NOT NULL,
        scopes text[] NOT NULL,
        consented_at double precision,
        PRIMARY KEY (username, client_id)
    )""",
    "CREATE TABLE settings (name text PRIMARY KEY, value text NOT NULL)",
    """CREATE TABLE ended_sessions (
        sid text PRIMARY KEY,
        until double precision NOT NULL
    )""",
    "CREATE TABLE totp_steps (username text PRIMARY KEY, step bigint NOT NULL)",
    # seq orders keys newest first. One current key (expires_at NULL) per alg is a rule
    # the database keeps: get_or_add_signing_key upserts against it.
    """CREATE TABLE signing_keys (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        kid text NOT NULL UNIQUE,
        alg text NOT NULL,
        private_pem text NOT NULL,
        created_at double precision NOT NULL,
        expires_at double precision
    )""",
    "CREATE UNIQUE INDEX signing_keys_current ON signing_keys (alg) WHERE expires_at IS NULL",
]

_V2_INDEXES = [
    # The lookups that are not by primary key: a family's tokens (revoke_family); a user's,
    # a client's and a grant's tokens, codes and consents (remove_user, remove_client,
    # change_credentials, list_grants, revoke_grant; (username, client_id) serves lookups by
    # username alone too); and expiry, for the purge.
    "CREATE INDEX tokens_by_family ON tokens (family_id)",
    "CREATE INDEX tokens_by_grant ON tokens (username, client_id)",
    "CREATE INDEX tokens_by_client ON tokens (client_id)",
    "CREATE INDEX tokens_by_expiry ON tokens (expires_at)",
    "CREATE INDEX codes_by_grant ON codes (username, client_id)",
    "CREATE INDEX codes_by_client ON codes (client_id)",
    "CREATE INDEX codes_by_expiry ON codes (expires_at)",
    "CREATE INDEX used_codes_by_expiry ON used_codes (expires_at)",
    "CREATE INDEX consents_by_client ON consents (client_id)",
    "CREATE INDEX ended_sessions_by_expiry ON ended_sessions (until)",
    "CREATE INDEX revoked_families_by_expiry ON revoked_families (until)",
    "CREATE INDEX signing_keys_by_expiry ON signing_keys (expires_at)",
]

_V3_RELYING_PARTIES = [
    # Client.allowed_origins (CORS) and minimal_id_token; how a user signed in (amr, acr)
    # and the claims request parameter (OIDC Core §5.5) on codes and tokens, and a token's
    # auth_time for the ID token of its refresh (OIDC Core §12.2). Rows already stored get
    # none of them, as in codeflow_storage.sqlite's migrations 7 to 10.
    "ALTER TABLE clients ADD COLUMN allowed_origins text[] NOT NULL DEFAULT '{}'",
    "ALTER TABLE clients ADD COLUMN minimal_id_token boolean NOT NULL DEFAULT false",
    "ALTER TABLE tokens ADD COLUMN auth_time bigint",
    "ALTER TABLE codes ADD COLUMN amr text[] NOT NULL DEFAULT '{}'",
    "ALTER TABLE codes ADD COLUMN acr text",
    "ALTER TABLE codes ADD COLUMN claims_request jsonb NOT NULL DEFAULT '{}'",
    "ALTER TABLE tokens ADD COLUMN amr text[] NOT NULL DEFAULT '{}'",
    "ALTER TABLE tokens ADD COLUMN acr text",
    "ALTER TABLE tokens ADD COLUMN claims_request jsonb NOT NULL DEFAULT '{}'",
]

_V4_SUBJECTS = [
    # User.subject (OIDC Core §2: sub is "never reassigned"): users already stored keep
    # their username, the sub their tokens carried; unique, so no two users share one.
    # removed_users: the tombstones remove_user leaves, kept for ever, found by subject
    # (the key) and by username, as in codeflow_storage.sqlite's migration 11.
    "ALTER TABLE users ADD COLUMN subject text NOT NULL DEFAULT ''",
    "UPDATE users SET subject = username",
    "CREATE UNIQUE INDEX users_by_subject ON users (subject)",
    """CREATE TABLE removed_users (
        subject text PRIMARY KEY,
        username text NOT NULL,
        removed_at double precision NOT NULL
    )""",
    "CREATE INDEX removed_users_by_username ON removed_users (username)",
]

_V5_LOGOUT = [
    # OIDC Back-Channel and Front-Channel Logout 1.0: a client's logout URIs and whether
    # they need the session; the login session (sid) on codes and tokens, for the sid of
    # their ID tokens. Rows already stored get none, as in codeflow_storage.sqlite's
    # migration 12.
    "ALTER TABLE clients ADD COLUMN backchannel_logout_uri text",
    "ALTER TABLE clients ADD COLUMN backchannel_logout_session_required boolean NOT NULL"
    " DEFAULT false",
    "ALTER TABLE clients ADD COLUMN frontchannel_logout_uri text",
    "ALTER TABLE clients ADD COLUMN frontchannel_logout_session_required boolean NOT NULL"
    " DEFAULT false",
    "ALTER TABLE codes ADD COLUMN sid text",
    "ALTER TABLE tokens ADD COLUMN sid text",
]

_V6_RESOURCES = [
    # RFC 8707 resources, the resources a client may ask for and exchange tokens to (RFC
    # 8693), a code's resources, a token's audience and act claim, as in
    # codeflow_storage.sqlite's migration 13; rows already stored get none.
    """CREATE TABLE resources (
        uri text PRIMARY KEY,
        scopes text[] NOT NULL,
        name text NOT NULL,
        access_token_jwt boolean NOT NULL,
        access_token_lifetime bigint,
        introspection boolean NOT NULL,
        client_id text,
        declared text NOT NULL DEFAULT ''
    )""",
    "ALTER TABLE clients ADD COLUMN resources text[] NOT NULL DEFAULT '{}'",
    "ALTER TABLE clients ADD COLUMN token_exchange text[] NOT NULL DEFAULT '{}'",
    "ALTER TABLE codes ADD COLUMN resources text[] NOT NULL DEFAULT '{}'",
    "ALTER TABLE tokens ADD COLUMN audience text[] NOT NULL DEFAULT '{}'",
    "ALTER TABLE tokens ADD COLUMN actor jsonb NOT NULL DEFAULT '{}'",
]

_V7_SELF_REGISTRATION = [
    # RFC 7591 / RFC 7592: how a client came to be (empty: the operator's; "dynamic": it
    # registered itself), its registration access token's hash, and the metadata it
    # registered. Clients already stored are the operator's.
    "ALTER TABLE clients ADD COLUMN registration text NOT NULL DEFAULT ''",
    "ALTER TABLE clients ADD COLUMN registration_token_hash text",
    "ALTER TABLE clients ADD COLUMN registered_metadata jsonb NOT NULL DEFAULT '{}'",
]

_V8_ACCOUNT = [
    # The account page (README "Your account"): login sessions kept server-side, so that a
    # user can list and end them (found by user, purged by expiry); and each user's
    # recovery codes, by hash, one row each so that using one is a single DELETE. As in
    # codeflow_storage.sqlite's migration 15.
    """CREATE TABLE login_sessions (
        sid text PRIMARY KEY,
        username text NOT NULL,
        created_at double precision NOT NULL,
        last_used_at double precision NOT NULL,
        expires_at double precision NOT NULL,
        address text NOT NULL,
        user_agent text NOT NULL
    )""",
    "CREATE INDEX login_sessions_by_user ON login_sessions (username)",
    "CREATE INDEX login_sessions_by_expiry ON login_sessions (expires_at)",
    """CREATE TABLE recovery_codes (
        username text NOT NULL,
        code_hash text NOT NULL,
        PRIMARY KEY (username, code_hash)
    )""",
]

_V9_PASSKEYS = [
    # Passkeys (WebAuthn Level 2 credential records, found by credential id and by user),
    # and the WebAuthn challenges used, remembered until they expire (single-use). As in
    # codeflow_storage.sqlite's migration 16.
    """CREATE TABLE passkeys (
        credential_id text PRIMARY KEY,
        username text NOT NULL,
        public_key text NOT NULL,
        sign_count bigint NOT NULL,
        name text NOT NULL,
        created_at double precision NOT NULL,
        last_used_at double precision,
        passwordless boolean NOT NULL,
        backed_up boolean NOT NULL,
        transports text[] NOT NULL
    )""",
    "CREATE INDEX passkeys_by_user ON passkeys (username)",
    """CREATE TABLE used_challenges (
        challenge_hash text PRIMARY KEY,
        until double precision NOT NULL
    )""",
    "CREATE INDEX used_challenges_by_expiry ON used_challenges (until)",
]

_V10_DEVICE_AND_PUSHED_REQUESTS = [
    # RFC 8628 device authorization requests, by device code (the key) and by user code
    # (unique: one user code names one request); RFC 9126 pushed authorization requests, by
    # request_uri; both by expiry for purge_expired. Client.require_pushed_authorization_
    # requests (clients already stored get false). As in codeflow_storage.sqlite's
    # migration 17. A device request keeps the resources it asks for (RFC 8707).
    """CREATE TABLE device_authorizations (
        device_code_hash text PRIMARY KEY,
        user_code_hash text NOT NULL UNIQUE,
        client_id text NOT NULL,
        scope text[] NOT NULL,
        expires_at double precision NOT NULL,
        poll_interval bigint NOT NULL,
        status text NOT NULL,
        polled_at double precision,
        username text,
        auth_time bigint,
        amr text[] NOT NULL DEFAULT '{}',
        nonce text,
        resources text[] NOT NULL DEFAULT '{}'
    )""",
    "CREATE INDEX device_authorizations_by_expiry ON device_authorizations (expires_at)",
    "CREATE INDEX device_authorizations_by_client ON device_authorizations (client_id)",
    "CREATE INDEX device_authorizations_by_username ON device_authorizations (username)",
    """CREATE TABLE pushed_requests (
        request_uri_hash text PRIMARY KEY,
        client_id text NOT NULL,
        params jsonb NOT NULL,
        expires_at double precision NOT NULL
    )""",
    "CREATE INDEX pushed_requests_by_expiry ON pushed_requests (expires_at)",
    "CREATE INDEX pushed_requests_by_client ON pushed_requests (client_id)",
    "ALTER TABLE clients ADD COLUMN require_pushed_authorization_requests boolean NOT NULL"
    " DEFAULT false",
]

_V11_DPOP_AND_CLIENT_KEYS = [
    # DPoP (RFC 9449) and private_key_jwt (RFC 7523): a client's keys and whether its
    # tokens must be DPoP-bound, the DPoP key a code (§10) and a token (§6) are bound to;
    # rows already stored get none. used_jtis: the one-time identifiers seen (DPoP proofs,
    # client assertions) until they expire, as in codeflow_storage.sqlite's migration 18.
    "ALTER TABLE clients ADD COLUMN jwks jsonb NOT NULL DEFAULT '{}'",
    "ALTER TABLE clients ADD COLUMN jwks_uri text",
    "ALTER TABLE clients ADD COLUMN dpop_bound_access_tokens boolean NOT NULL DEFAULT false",
    "ALTER TABLE codes ADD COLUMN dpop_jkt text",
    "ALTER TABLE tokens ADD COLUMN jkt text",
    """CREATE TABLE used_jtis (
        key text PRIMARY KEY,
        expires_at double precision NOT NULL
    )""",
    "CREATE INDEX used_jtis_by_expiry ON used_jtis (expires_at)",
]

_V12_CONSENT_BINDING = [
    # consents.bound_to: what the client was when the user consented (codeflow's
    # consent_binding); consents already stored were given under "". As in
    # codeflow_storage.sqlite's migration 19.
    "ALTER TABLE consents ADD COLUMN bound_to text NOT NULL DEFAULT ''",
]

_V13_FAILURE_COUNTS = [
    # The sign-in throttle's counts (Storage.count_failure), shared by every node, with
    # an index for purge_expired. As in codeflow_storage.sqlite's migration 20.
    "CREATE TABLE failure_counts (key text PRIMARY KEY, count bigint NOT NULL, "
    "last double precision NOT NULL, until double precision NOT NULL, "
    "expires_at double precision NOT NULL)",
    "CREATE INDEX failure_counts_by_expiry ON failure_counts (expires_at)",
]

_V14_KNOWN_ADDRESSES = [
    # The addresses each user completed a sign-in from (Storage.remember_address), by
    # subject, shared by every node; the key is also the index of the look-up
    # (known_address) and of trimming a user's to the most recent. As in
    # codeflow_storage.sqlite's migration 21.
    "CREATE TABLE known_addresses (subject text NOT NULL, address text NOT NULL, "
    "seen_at double precision NOT NULL, PRIMARY KEY (subject, address))",
]

MIGRATIONS: list[list[str]] = [
    _V1_TABLES, _V2_INDEXES, _V3_RELYING_PARTIES, _V4_SUBJECTS, _V5_LOGOUT, _V6_RESOURCES,
    _V7_SELF_REGISTRATION, _V8_ACCOUNT, _V9_PASSKEYS, _V10_DEVICE_AND_PUSHED_REQUESTS,
    _V11_DPOP_AND_CLIENT_KEYS, _V12_CONSENT_BINDING, _V13_FAILURE_COUNTS,
    _V14_KNOWN_ADDRESSES,
]  # fmt: skip


###############################################################################
# Records as rows ##############################################################
###############################################################################


R = TypeVar("R", bound="DataclassInstance")  # a record dataclass of codeflow.py


_SQL_TYPES: dict[Any, str] = {
    str: "text", typing.Literal: "text", bool: "boolean", int: "bigint",
    float: "double precision", tuple: "text[]", dict: "jsonb",
}  # fmt: skip


def _column_type(hint: Any) -> str:
    """The SQL type of a record field's values (of ``X | None``, X's)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return _SQL_TYPES[typing.get_origin(hint) or hint]


class _Rows(Generic[R]):
    """How one record type maps to a row: one column per dataclass field, same name and
    order; tuples as ``text[]`` (back as tuples), dicts as ``jsonb``.

    A field added to a record in codeflow.py needs a migration adding its column;
    ``missing_columns`` finds the ones that lack it when the storage opens.
    """

    def __init__(self, cls: type[R], table: str, key: str) -> None:
        self.cls = cls
        self.table = table
        self.names = tuple(f.name for f in fields(cls))
        hints = typing.get_type_hints(cls)
        self.types = tuple(_column_type(hints[name]) for name in self.names)
        self.columns = ", ".join(self.names)
        # Each value is cast to its column's type, so that a VALUES list of several rows,
        # an empty list or a NULL has a type the server need not guess.
        self.values = "(" + ", ".join(f"%s::{t}" for t in self.types) + ")"
        # Only field and table names are spliced into SQL; values are always bound.
        self.select = f"SELECT {self.columns} FROM {table}"  # noqa: S608
        self.upsert = (
            f"INSERT INTO {table} ({self.columns}) VALUES {self.values} "  # noqa: S608
            f"ON CONFLICT ({key}) DO UPDATE SET "
            + ", ".join(f"{name} = excluded.{name}" for name in self.names if name != key)
        )
        self._tuples = [i for i, t in enumerate(self.types) if t == "text[]"]
        self._json = [i for i, t in enumerate(self.types) if t == "jsonb"]

    def columns_of(self, alias: str) -> str:
        """The columns, each named through ``alias``: for a join, where both tables have
        a ``username``."""
        return ", ".join(f"{alias}.{name}" for name in self.names)

    def missing_columns(self, present: set[tuple[str, str]]) -> list[str]:
        return [name for name in self.names if (self.table, name) not in present]

    def encode(self, record: R) -> list[Any]:
        values = [getattr(record, name) for name in self.names]
        for i in self._tuples:
            values[i] = list(values[i])
        for i in self._json:
            values[i] = Jsonb(values[i])
        return values

    def decode(self, row: Sequence[Any]) -> R:
        values = list(row)
        for i in self._tuples:
            values[i] = tuple(values[i])
        return self.cls(*values)


_CLIENTS = _Rows(Client, "clients", "client_id")
_USERS = _Rows(User, "users", "username")
_CODES = _Rows(AuthorizationCode, "codes", "code_hash")
_TOKENS = _Rows(Token, "tokens", "token_hash")
_KEYS = _Rows(SigningKey, "signing_keys", "kid")
_REMOVED_USERS = _Rows(RemovedUser, "removed_users", "subject")
_RESOURCES = _Rows(Resource, "resources", "uri")
_LOGIN_SESSIONS = _Rows(LoginSession, "login_sessions", "sid")
_PASSKEYS = _Rows(Passkey, "passkeys", "credential_id")
_DEVICES = _Rows(DeviceAuthorization, "device_authorizations", "device_code_hash")
_PUSHED = _Rows(PushedRequest, "pushed_requests", "request_uri_hash")


def _with_user(rows: Sequence[Sequence[Any]], records: _Rows[R]) -> tuple[R, User | None] | None:
    """The record and the user of a row of ``records``' columns followed by the users'
    (a LEFT JOIN: NULLs, hence None, where no user matched), or None for no row."""
    if not rows:
        return None
    row, n = rows[0], len(records.names)
    return records.decode(row[:n]), None if row[n] is None else _USERS.decode(row[n:])


def _select_with_user(records: _Rows[R], key: str) -> str:
    """A SELECT of the record whose ``key`` is the one parameter, with the stored user its
    ``username`` names: a LEFT JOIN, whose row _with_user reads."""
    return (
        f"SELECT {records.columns_of('r')}, {_USERS.columns_of('u')} "  # noqa: S608
        f"FROM {records.table} r LEFT JOIN users u ON u.username = r.username "
        f"WHERE r.{key} = %s"
    )


# The stored user whose credentials are those a sign-in or a grant checked: its subject,
# password hash and TOTP secret, bound in that order (_credentials).
_SAME_CREDENTIALS = (
    "subject = %s AND password_hash IS NOT DISTINCT FROM %s "
    "AND totp_secret IS NOT DISTINCT FROM %s"
)


# The holder of a grant's tokens, still stored as the grant checked it, its row locked
# against removal until they are committed (save_token says why), bound as
# [username, *_credentials(holder)].
_HOLDER_LOCKED = (
    f"EXISTS (SELECT 1 FROM users WHERE username = %s AND {_SAME_CREDENTIALS} "  # noqa: S608
    "FOR KEY SHARE)"
)


def _credentials(user: User) -> list[Any]:
    return [user.subject, user.password_hash, user.totp_secret]

# Add or replace a user; a user replaced keeps its subject (the column is not updated).
_SAVE_USER = (
    f"INSERT INTO users ({_USERS.columns}) VALUES {_USERS.values} "  # noqa: S608
    "ON CONFLICT (username) DO UPDATE SET "
    + ", ".join(f"{n} = excluded.{n}" for n in _USERS.names if n not in ("username", "subject"))
)
# Of a user's known addresses, all but %(address)s and the %(others)s most recent others.
_FORGET_OLDER_ADDRESSES = (
    "DELETE FROM known_addresses WHERE subject = %(subject)s AND address <> %(address)s "
    "AND address NOT IN (SELECT address FROM known_addresses WHERE subject = %(subject)s "
    "AND address <> %(address)s ORDER BY seen_at DESC, address DESC LIMIT %(others)s)"
)
# Whether a user, stored or removed, has or had %(name)s as its username or subject.
_SUBJECT_TAKEN = (
    "SELECT EXISTS (SELECT 1 FROM users WHERE username = %(name)s) "
    "OR EXISTS (SELECT 1 FROM users WHERE subject = %(name)s) "
    "OR EXISTS (SELECT 1 FROM removed_users WHERE subject = %(name)s) "
    "OR EXISTS (SELECT 1 FROM removed_users WHERE username = %(name)s)"
)


def _insert_tokens(count: int, only_if: str = "TRUE") -> str:
    """An INSERT of ``count`` tokens (their values bound in ``_TOKENS.values`` order), each
    stored revoked if its family is (revoke_family: "including any saved after this
    call"), all only if the SQL condition ``only_if`` holds. Under SERIALIZABLE the
    check of revoked_families and the write cannot be split by a revocation."""
    rows = ", ".join([_TOKENS.values] * count)
    chosen = ", ".join(
        "v.revoked OR EXISTS (SELECT 1 FROM revoked_families r WHERE r.family_id = v.family_id)"
        if name == "revoked"
        else f"v.{name}"
        for name in _TOKENS.names
    )
    # Only column names and the caller's fixed condition are spliced in; values are bound.
    return (
        f"INSERT INTO tokens ({_TOKENS.columns}) "  # noqa: S608
        f"SELECT {chosen} FROM (VALUES {rows}) AS v ({_TOKENS.columns}) WHERE {only_if} "
        "ON CONFLICT (token_hash) DO UPDATE SET "
        + ", ".join(f"{name} = excluded.{name}" for name in _TOKENS.names if name != "token_hash")
    )


def _token_values(tokens: Iterable[Token]) -> list[Any]:
    return [value for token in tokens for value in _TOKENS.encode(token)]


@contextlib.contextmanager
def read_committed(conn: Conn) -> typing.Iterator[None]:
    """One transaction at READ COMMITTED rather than the store's SERIALIZABLE: for the
    single-statement upserts and the lock-then-read steps whose comments say why, where a
    racing writer must be waited for and counted on from, not failed with a
    serialization error."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        yield


# What purge_expired deletes, table by table: (table, expiry column).
_EXPIRING = [
    ("codes", "expires_at"),
    ("used_codes", "expires_at"),
    ("tokens", "expires_at"),
    ("ended_sessions", "until"),  # no longer written (login_sessions): what is left ages out
    ("login_sessions", "expires_at"),
    ("used_challenges", "until"),
    ("revoked_families", "until"),
    ("device_authorizations", "expires_at"),
    ("pushed_requests", "expires_at"),
    ("used_jtis", "expires_at"),
    ("failure_counts", "expires_at"),
]


###############################################################################
# The storage ##################################################################
###############################################################################


class PostgreSQLStorage:
    """A ``codeflow.Storage`` in a PostgreSQL database, safe to share between threads,
    processes and machines (each process opens its own ``PostgreSQLStorage`` on the same
    database and schema).

    ``conninfo`` is a libpq connection string or URL; ``schema`` the schema to keep the
    tables in (created if missing; default the connection's current schema). The schema
    is migrated to the current version when the storage opens. ``close()`` it when done
    (or use it as a context manager).
    """

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str | None = None,
        pool_min_size: int = POOL_MIN_SIZE,
        pool_max_size: int = POOL_MAX_SIZE,
        pool_timeout: float | None = None,
    ) -> None:
        if schema is not None and not SCHEMA_NAME.fullmatch(schema):
            raise ValueError(
                f"schema {schema!r}: use lower-case letters, digits and _ (not first a digit)"
            )
        if not 1 <= pool_min_size <= pool_max_size:
            raise ValueError("the pool needs 1 <= pool_min_size <= pool_max_size")
        if pool_timeout is not None and not 0 < pool_timeout < math.inf:
            raise ValueError("pool_timeout must be a number of seconds > 0")
        params = conninfo_to_dict(conninfo)
        params.setdefault("connect_timeout", CONNECT_TIMEOUT)
        params.setdefault("application_name", "codeflow")
        self._conninfo = make_conninfo("", **params)
        self._pool_sizes = (pool_min_size, pool_max_size)
        self._pool_timeout = POOL_TIMEOUT if pool_timeout is None else pool_timeout
        with psycopg.connect(self._conninfo, autocommit=True) as conn:
            self.schema = self._migrate(conn, schema)
            self._search_path = sql.Identifier(self.schema).as_string(conn)
        self._lock = threading.Lock()
        self._closed = False
        self._pool: Pool | None = self._new_pool()
        # A pooled connection must not be used in a child process after fork() (its socket
        # is the parent's): a forked child opens a pool of its own and keeps the inherited
        # one, unused, so that nothing of it is closed there.
        self._inherited: list[Pool] = []
        # The server's state as this process last saw it (see _run): since when it has
        # been unreachable (None: it answers), when a probe last tried it, and the lock the
        # one probe at a time holds.
        self._down_since: float | None = None
        self._probed_at = 0.0
        self._probing = threading.Lock()
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(ref))

    # -- Connections, transactions, migrations ---------------------------------

    @staticmethod
    def _migrate(conn: Conn, schema: str | None) -> str:
        """Create or upgrade the schema (see the module docstring); return its name."""
        # READ COMMITTED: each statement sees what committed before it, so the version is
        # read after the lock is held (a SERIALIZABLE snapshot would predate the wait).
        with read_committed(conn):
            if schema is None:
                (schema,) = conn.execute("SELECT current_schema()").fetchone() or (None,)
                if schema is None:
                    raise ValueError(
                        "no schema to keep codeflow's tables in: the search_path names none "
                        "that exists; add ?schema=NAME to the storage URL"
                    )
            lock = int.from_bytes(
                hashlib.sha256(f"codeflow migrations {schema}".encode()).digest()[:8],
                "big",
                signed=True,
            )
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [lock])
            name = sql.Identifier(schema)
            exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema])
            if exists.fetchone() is None:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(name))
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(name))
            conn.execute(
                "CREATE TABLE IF NOT EXISTS codeflow_migrations ("
                "version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            row = conn.execute("SELECT coalesce(max(version), 0) FROM codeflow_migrations")
            (current,) = row.fetchone() or (0,)
            if current > len(MIGRATIONS):
                raise RuntimeError(
                    f"schema {schema}: version {current} is newer than this codeflow_storage "
                    f"understands ({len(MIGRATIONS)}): upgrade codeflow"
                )
            for version, migration in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in migration:
                    conn.execute(statement)
                conn.execute("INSERT INTO codeflow_migrations (version) VALUES (%s)", [version])
            present = conn.execute(
                "SELECT table_name, column_name FROM information_schema.columns "
                "WHERE table_schema = %s",
                [schema],
            ).fetchall()
        for rows in (_CLIENTS, _USERS, _CODES, _TOKENS, _KEYS, _REMOVED_USERS, _RESOURCES,
                     _LOGIN_SESSIONS, _PASSKEYS, _DEVICES, _PUSHED):  # fmt: skip
            missing = rows.missing_columns({(table, column) for table, column in present})
            if missing:
                raise RuntimeError(
                    f"schema {schema}: table {rows.table} has no column for "
                    f"{rows.cls.__name__}.{', '.join(missing)}: this codeflow_storage "
                    "lacks a migration for this version of codeflow"
                )
        return schema

    def _configure(self, conn: Conn) -> None:
        """Each new pooled connection: our schema only, and SERIALIZABLE by default."""
        conn.execute(
            "SELECT set_config('search_path', %s, false), "
            "set_config('default_transaction_isolation', 'serializable', false)",
            [self._search_path],
        )

    def _new_pool(self, timeout: float = OPEN_TIMEOUT) -> Pool:
        """A pool with min_size connections open and ready (PoolTimeout if they are not
        within ``timeout`` seconds)."""
        min_size, max_size = self._pool_sizes
        pool = psycopg_pool.ConnectionPool(
            self._conninfo,
            kwargs={"autocommit": True},
            min_size=min_size,
            max_size=max_size,
            configure=self._configure,
            timeout=self._pool_timeout,
            name="codeflow",
            open=False,
        )
        try:
            pool.open(wait=True, timeout=timeout)
        except psycopg_pool.PoolTimeout:
            pool.close(timeout=0)
            raise
        return pool

    def _current_pool(self) -> Pool:
        with self._lock:
            if self._closed:
                raise RuntimeError("this PostgreSQLStorage is closed")
            if self._pool is None:  # the first call in a forked child
                try:
                    self._pool = self._new_pool()
                except psycopg_pool.PoolTimeout as err:
                    raise StorageUnavailable(f"PostgreSQL: cannot connect: {err}") from err
            return self._pool

    def _run(self, work: Callable[[Conn], T]) -> T:
        """Run ``work`` on a pooled connection, as one transaction; again, on a fresh
        snapshot, if PostgreSQL rolled it back as the loser of a serialization race or a
        deadlock (nothing of it was kept).

        The server going away (down, restarting, a connection it terminated) is
        StorageUnavailable, answered 503, and handled so that an outage costs as few 503s
        and as little waiting as it can:

        - A pooled connection the server hung up on while it sat idle in the pool (a
          restart terminates every connection) is found before anything is sent on it
          (``_hung_up``): nothing of the call can have reached the server, so it is safe
          to reconnect (``_reconnect``) and run the call, which then succeeds if the
          server is back: after a restart the first request does not fail.
        - A connection lost while the call was on it is not retried here: a statement
          whose answer was lost may have committed, and only the client, told 503, can
          tell whether to send its request again. The call probes the server before it
          answers, so that the next calls find either a checked pool or the server
          known down.
        - While the server is down, calls answer StorageUnavailable at once, without
          waiting pool_timeout for a connection that cannot come; at most every
          PROBE_INTERVAL seconds one probe, in the background, tries the server (a new
          connection, PROBE_CONNECT_TIMEOUT) and, when it answers, replaces the pool
          with a fresh one (the old pool's connections are dead and its own
          reconnection attempts back off to many seconds apart).
        - No pooled connection free within pool_timeout (every one busy) is
          StorageUnavailable too, with a shorter Retry-After (BUSY_RETRY_AFTER); the
          server is not marked down for it."""
        for attempt in range(RETRIES):
            pool = self._pool_for_call()
            lost = False
            try:
                with pool.connection() as conn:
                    if _hung_up(conn):
                        conn.close()  # the pool drops it when it comes back
                        self._reconnect(pool)
                        continue  # nothing was sent: run the call again, reconnected
                    try:
                        return work(conn)
                    except psycopg.OperationalError:
                        lost = conn.broken
                        raise
            except (errors.SerializationFailure, errors.DeadlockDetected):
                if attempt == RETRIES - 1:
                    raise
            except psycopg_pool.PoolTimeout as err:
                raise StorageUnavailable(
                    f"PostgreSQL: no pooled connection: {err}", BUSY_RETRY_AFTER
                ) from err
            except psycopg_pool.PoolClosed:
                # Closed while this call waited for one of its connections: replaced after
                # an outage, or closed as the outage began. Nothing was sent: ask again.
                continue
            except psycopg.OperationalError as err:  # connection-level (SQLSTATE 08, 57P)
                if lost:  # the server is gone, or only this connection: find out which
                    with contextlib.suppress(StorageUnavailable):
                        self._reconnect(pool)
                raise StorageUnavailable(f"PostgreSQL: {_first_line(err)}") from err
            # Random, growing pauses, so that the losers of one race do not meet again.
            time.sleep(random.uniform(0, RETRY_PAUSE * 2**attempt))  # noqa: S311 -- not a secret
        raise StorageUnavailable(f"PostgreSQL: no live connection in {RETRIES} tries")

    def _pool_for_call(self) -> Pool:
        """The pool to run a call on; while the server is down, StorageUnavailable at once,
        and, if PROBE_INTERVAL has passed since the last probe, a probe started in the
        background (a connection attempt can take PROBE_CONNECT_TIMEOUT: a server
        shutting down may leave connections unanswered; no request waits for it)."""
        pool = self._current_pool()
        if self._down_since is None:
            return pool
        if time.monotonic() - self._probed_at >= PROBE_INTERVAL and not self._probing.locked():
            threading.Thread(target=self._probe, args=(pool,), daemon=True).start()
        raise self._unavailable()

    def _probe(self, pool: Pool) -> None:
        with contextlib.suppress(StorageUnavailable, RuntimeError):  # down, or closed
            self._reconnect(pool)

    def _unavailable(self) -> StorageUnavailable:
        down = time.time() - (self._down_since or time.time())
        return StorageUnavailable(f"PostgreSQL unreachable for {down:.1f} s")

    def _reconnect(self, seen: Pool) -> Pool:
        """Probe the server (a new connection) and, if it answers, make ``seen`` (the pool
        a call found a dead connection in) usable again; return the pool to use.

        After an outage (the server known down), ``seen`` is replaced by a fresh pool: its
        own attempts to reconnect back off to many seconds apart. Otherwise (a restart
        that no call saw, or one idle connection cut by a proxy or idle_session_timeout)
        ``seen`` is kept, its idle connections checked, and the dead ones replaced at
        once (``ConnectionPool.check``). One probe at a time: a call arriving while the
        server is known down answers StorageUnavailable at once; one arriving while it
        is not (right after a restart, when several calls find dead connections
        together) waits for the probe's verdict."""
        asked = time.monotonic()
        if self._down_since is not None:
            probing = self._probing.acquire(blocking=False)
        else:  # at most a probe's connection and a new pool's, each PROBE_CONNECT_TIMEOUT
            probing = self._probing.acquire(timeout=2 * PROBE_CONNECT_TIMEOUT + 1)
        if not probing:
            raise self._unavailable()
        try:
            with self._lock:
                current = self._pool
            if current is not seen and current is not None:
                return current  # another call reconnected meanwhile
            if self._probed_at >= asked:  # a probe ran while this call waited: its verdict
                if self._down_since is not None:
                    raise self._unavailable()
                return seen  # the server is up and the pool checked
            if self._down_since is not None and time.monotonic() - self._probed_at < (
                PROBE_INTERVAL
            ):
                raise self._unavailable()  # a probe just failed: no second one yet
            self._probed_at = time.monotonic()
            down = self._down_since
            try:
                probe = psycopg.connect(self._conninfo, connect_timeout=PROBE_CONNECT_TIMEOUT)
                probe.close()
                if down is None:
                    seen.check()
                    return seen
                fresh = self._new_pool(timeout=PROBE_CONNECT_TIMEOUT)
            except (psycopg.OperationalError, psycopg_pool.PoolTimeout) as err:
                with self._lock:
                    went_down = self._down_since is None
                    if went_down:
                        self._down_since = time.time()
                if went_down:
                    log.warning("codeflow: PostgreSQL unreachable: %s", _first_line(err))
                    # Calls waiting for a connection of ``seen`` would wait pool_timeout
                    # for one its backing-off reconnections cannot bring: closing it sends
                    # them back to _run, to answer 503 at once. No call takes a connection
                    # from it again: a probe that reaches the server makes a new pool.
                    threading.Thread(target=seen.close, daemon=True).start()
                raise self._unavailable() from err
            with self._lock:
                if self._closed:
                    fresh.close()
                    raise RuntimeError("this PostgreSQLStorage is closed")
                old, self._pool, self._down_since = self._pool, fresh, None
            log.warning("codeflow: PostgreSQL reachable again after %.1f s", time.time() - down)
            if old is not None:
                # Its connections are dead; calls still on them fail (503) and return them
                # to a closed pool, which closes them. Closing waits for its workers, which
                # may be inside a connection attempt: not in this request.
                threading.Thread(target=old.close, daemon=True).start()
            return fresh
        finally:
            self._probing.release()

    def _rows(self, query: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """The rows of one statement, run as its own transaction."""
        return self._run(lambda conn: conn.execute(query, params).fetchall())

    def _count(self, query: str, params: Params = ()) -> int:
        """How many rows one statement, run as its own transaction, changed."""
        return self._run(lambda conn: conn.execute(query, params).rowcount)

    def _read_committed(self, query: str, params: Params) -> tuple[int, list[tuple[Any, ...]]]:
        """How many rows one statement, run as its own READ COMMITTED transaction (for the
        upserts whose racers must wait for each other, see read_committed), changed, and
        the rows it returned."""

        def run(conn: Conn) -> tuple[int, list[tuple[Any, ...]]]:
            with read_committed(conn):
                cursor = conn.execute(query, params)
                return cursor.rowcount, cursor.fetchall() if cursor.description else []

        return self._run(run)

    def close(self) -> None:
        """Close the pool's connections; calls after this raise RuntimeError."""
        with self._lock:
            pool, self._pool, self._closed = self._pool, None, True
        if pool is not None:
            pool.close()

    def __enter__(self) -> PostgreSQLStorage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # the parent's may have been held at fork()
        self._probing = threading.Lock()
        if self._pool is not None:
            self._inherited.append(self._pool)
            self._pool = None

    # -- Clients and users -----------------------------------------------------

    def add_client(self, client: Client) -> None:
        self._count(_CLIENTS.upsert, _CLIENTS.encode(client))

    def get_client(self, client_id: str) -> Client | None:
        rows = self._rows(_CLIENTS.select + " WHERE client_id = %s", [client_id])
        return _CLIENTS.decode(rows[0]) if rows else None

    def list_clients(self) -> list[Client]:
        return [_CLIENTS.decode(row) for row in self._rows(_CLIENTS.select + " ORDER BY client_id")]

    def count_clients(self, registration: str) -> int:
        rows = self._rows("SELECT count(*) FROM clients WHERE registration = %s", [registration])
        return int(rows[0][0])

    def remove_unused_clients(
        self, registration: str, issued_before: float, now: float
    ) -> list[str]:
        """One statement: a code or token saved for one of them after it started is for a
        client already gone, as after remove_client."""
        unused = "".join(
            f"AND NOT EXISTS (SELECT 1 FROM {table} t WHERE t.client_id = clients.client_id "  # noqa: S608
            "AND t.expires_at > %(now)s) "
            for table in ("tokens", "codes", "device_authorizations", "pushed_requests")
        )
        rows = self._rows(
            "DELETE FROM clients WHERE registration = %(registration)s "  # noqa: S608
            "AND (registered_metadata->>'client_id_issued_at')::double precision < %(before)s "
            "AND NOT EXISTS (SELECT 1 FROM consents c WHERE c.client_id = clients.client_id) "
            + unused + "RETURNING client_id",
            {"registration": registration, "before": issued_before, "now": now},
        )
        return sorted(row[0] for row in rows)

    def remove_client(self, client_id: str) -> bool:
        """One statement: the client's tokens, codes and consents go with it."""
        return (
            self._count(
                "WITH tokens_gone AS (DELETE FROM tokens WHERE client_id = %(id)s), "
                "codes_gone AS (DELETE FROM codes WHERE client_id = %(id)s), "
                "consents_gone AS (DELETE FROM consents WHERE client_id = %(id)s), "
                "devices_gone AS (DELETE FROM device_authorizations WHERE client_id = %(id)s), "
                "pushed_gone AS (DELETE FROM pushed_requests WHERE client_id = %(id)s) "
                "DELETE FROM clients WHERE client_id = %(id)s",
                {"id": client_id},
            )
            > 0
        )

    def add_resource(self, resource: Resource) -> None:
        self._count(_RESOURCES.upsert, _RESOURCES.encode(resource))

    def get_resource(self, uri: str) -> Resource | None:
        rows = self._rows(_RESOURCES.select + " WHERE uri = %s", [uri])
        return _RESOURCES.decode(rows[0]) if rows else None

    def list_resources(self) -> list[Resource]:
        return [_RESOURCES.decode(row) for row in self._rows(_RESOURCES.select + " ORDER BY uri")]

    def remove_resource(self, uri: str) -> bool:
        return self._count("DELETE FROM resources WHERE uri = %s", [uri]) > 0

    def _users_locked(self, conn: Conn) -> None:
        """Begin a READ COMMITTED transaction holding the lock of user records: adding,
        removing and changing users take turns across every node, and each statement then
        sees what the one before committed (a subject checked free is still free when
        written; a tombstone is written once)."""
        conn.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [USERS_LOCK])

    def add_user(self, user: User) -> User:
        """One transaction under the user lock: the subject is checked and written with no
        other node giving it meanwhile."""

        def work(conn: Conn) -> User:
            with conn.transaction():
                self._users_locked(conn)
                row = conn.execute(
                    "SELECT subject FROM users WHERE username = %s", [user.username]
                ).fetchone()
                if row is not None:
                    subject = row[0]
                else:
                    subject = user.subject
                    while conn.execute(_SUBJECT_TAKEN, {"name": subject}).fetchone()[0]:  # type: ignore[index]
                        subject = new_subject()
                stored = replace(user, subject=subject)
                conn.execute(_SAVE_USER, _USERS.encode(stored))
                return stored

        return self._run(work)

    def get_user_by_subject(self, subject: str) -> User | None:
        rows = self._rows(_USERS.select + " WHERE subject = %s", [subject])
        return _USERS.decode(rows[0]) if rows else None

    def removed_users(self, name: str) -> list[RemovedUser]:
        rows = self._rows(
            _REMOVED_USERS.select + " WHERE username = %s "
            "UNION " + _REMOVED_USERS.select + " WHERE subject = %s ORDER BY removed_at",
            [name, name],
        )
        return [_REMOVED_USERS.decode(row) for row in rows]

    def get_user(self, username: str) -> User | None:
        rows = self._rows(_USERS.select + " WHERE username = %s", [username])
        return _USERS.decode(rows[0]) if rows else None

    def list_users(self) -> list[User]:
        return [_USERS.decode(row) for row in self._rows(_USERS.select + " ORDER BY username")]

    def remove_user(self, username: str, removed_at: float | None = None) -> bool:
        """One statement, once the user's row is locked: the user's tokens, codes,
        consents, TOTP step and known addresses go with it, and the tombstone of its name
        and subject is written."""
        when = time.time() if removed_at is None else removed_at

        def work(conn: Conn) -> int:
            with conn.transaction():
                self._users_locked(conn)
                # The user's row first, in a statement of its own: a remember_address
                # holding it commits before the statement below takes its snapshot, which
                # then has that address to delete.
                conn.execute("SELECT 1 FROM users WHERE username = %s FOR UPDATE", [username])
                return conn.execute(
                    "WITH tokens_gone AS (DELETE FROM tokens WHERE username = %(name)s), "
                    "codes_gone AS (DELETE FROM codes WHERE username = %(name)s), "
                    "consents_gone AS (DELETE FROM consents WHERE username = %(name)s), "
                    "steps_gone AS (DELETE FROM totp_steps WHERE username = %(name)s), "
                    "recovery_gone AS (DELETE FROM recovery_codes WHERE username = %(name)s), "
                    "sessions_gone AS (DELETE FROM login_sessions WHERE username = %(name)s), "
                    "passkeys_gone AS (DELETE FROM passkeys WHERE username = %(name)s), "
                    "devices_gone AS (DELETE FROM device_authorizations "
                    "WHERE username = %(name)s), "
                    "addresses_gone AS (DELETE FROM known_addresses WHERE subject IN "
                    "(SELECT subject FROM users WHERE username = %(name)s)), "
                    "gone AS (DELETE FROM users WHERE username = %(name)s "
                    "RETURNING username, subject) "
                    "INSERT INTO removed_users (username, subject, removed_at) "
                    "SELECT username, subject, %(when)s FROM gone",
                    {"name": username, "when": when},
                ).rowcount

        return self._run(work) > 0

    def change_credentials(self, user: User) -> bool:
        """One statement: replace the user only if there is one, and then revoke the user's
        refresh tokens and delete the user's codes, sessions, devices and known addresses."""
        changed = [i for i, name in enumerate(_USERS.names) if name not in ("username", "subject")]
        columns = ", ".join(f"{_USERS.names[i]} = %s::{_USERS.types[i]}" for i in changed)
        values = _USERS.encode(user)
        rows = self._rows(
            f"WITH changed AS (UPDATE users SET {columns} WHERE username = %s "  # noqa: S608
            "RETURNING subject), "
            "addresses_gone AS (DELETE FROM known_addresses "
            "WHERE subject IN (SELECT subject FROM changed)), "
            "refresh_revoked AS (UPDATE tokens SET revoked = TRUE WHERE username = %s "
            "AND kind = 'refresh' AND NOT revoked AND EXISTS (SELECT 1 FROM changed)), "
            "codes_gone AS (DELETE FROM codes WHERE username = %s "
            "AND EXISTS (SELECT 1 FROM changed)), "
            "sessions_gone AS (DELETE FROM login_sessions WHERE username = %s "
            "AND EXISTS (SELECT 1 FROM changed)), "
            "devices_gone AS (DELETE FROM device_authorizations WHERE username = %s "
            "AND EXISTS (SELECT 1 FROM changed)) "
            "SELECT count(*) FROM changed",
            [*(values[i] for i in changed), *[user.username] * 5],
        )
        return bool(rows[0][0])

    # -- Codes -------------------------------------------------------------------

    def save_code(self, code: AuthorizationCode) -> None:
        self._count(_CODES.upsert, _CODES.encode(code))

    def consume_code(self, code_hash: str) -> tuple[AuthorizationCode, User | None] | None:
        """Take a code in one statement that also writes its tombstone and reads its user:
        of N concurrent callers in any nodes, the one whose DELETE finds the row gets it,
        and a replay is recognised from the moment the code is gone."""
        rows = self._rows(
            f"WITH taken AS (DELETE FROM codes WHERE code_hash = %s "  # noqa: S608
            f"RETURNING {_CODES.columns}), "
            "tombstone AS (INSERT INTO used_codes (code_hash, expires_at) "
            "SELECT code_hash, expires_at FROM taken "
            "ON CONFLICT (code_hash) DO UPDATE SET expires_at = excluded.expires_at) "
            f"SELECT {_CODES.columns_of('c')}, {_USERS.columns_of('u')} FROM taken c "
            "LEFT JOIN users u ON u.username = c.username",
            [code_hash],
        )
        return _with_user(rows, _CODES)

    # -- Device authorization (RFC 8628) and pushed requests (RFC 9126) --------------

    def save_device_authorization(self, device: DeviceAuthorization) -> bool:
        count = self._count(
            f"INSERT INTO device_authorizations ({_DEVICES.columns}) "  # noqa: S608
            f"VALUES {_DEVICES.values} ON CONFLICT DO NOTHING",
            _DEVICES.encode(device),
        )
        return count == 1

    def get_device_authorization(self, user_code_hash: str) -> DeviceAuthorization | None:
        rows = self._rows(_DEVICES.select + " WHERE user_code_hash = %s", [user_code_hash])
        return _DEVICES.decode(rows[0]) if rows else None

    def decide_device_authorization(self, decided: DeviceAuthorization, now: float) -> bool:
        """One UPDATE that finds the row only while it is pending and unexpired."""
        count = self._count(
            "UPDATE device_authorizations SET status = %(status)s, scope = %(scope)s::text[], "
            "username = %(username)s, auth_time = %(auth_time)s::bigint, "
            "amr = %(amr)s::text[] "
            "WHERE user_code_hash = %(hash)s AND status = 'pending' AND expires_at > %(now)s",
            {"status": decided.status, "scope": list(decided.scope),
             "username": decided.username, "auth_time": decided.auth_time,
             "amr": list(decided.amr), "hash": decided.user_code_hash,
             "now": now},
        )  # fmt: skip
        return count == 1

    def poll_device_authorization(
        self, device_code_hash: str, now: float, slow_down: int
    ) -> DeviceAuthorization | None:
        """One statement: the UPDATE's FROM names the row as it was before it."""
        old = ", ".join(f"old.{name}" for name in _DEVICES.names)
        rows = self._rows(
            f"UPDATE device_authorizations AS d SET polled_at = %(now)s, "  # noqa: S608
            "poll_interval = d.poll_interval + CASE WHEN d.polled_at IS NOT NULL "
            "AND %(now)s - d.polled_at < d.poll_interval THEN %(slow)s ELSE 0 END "
            "FROM device_authorizations AS old WHERE d.device_code_hash = %(hash)s "
            f"AND old.device_code_hash = d.device_code_hash RETURNING {old}",
            {"now": now, "slow": slow_down, "hash": device_code_hash},
        )
        return _DEVICES.decode(rows[0]) if rows else None

    def redeem_device_authorization(self, device_code_hash: str) -> DeviceAuthorization | None:
        rows = self._rows(
            "UPDATE device_authorizations SET status = 'redeemed' "  # noqa: S608
            "WHERE device_code_hash = %s AND status = 'approved' "
            f"RETURNING {_DEVICES.columns}",
            [device_code_hash],
        )
        return replace(_DEVICES.decode(rows[0]), status="approved") if rows else None

    def save_pushed_request(self, pushed: PushedRequest) -> None:
        self._count(_PUSHED.upsert, _PUSHED.encode(pushed))

    def consume_pushed_request(self, request_uri_hash: str) -> PushedRequest | None:
        rows = self._rows(
            f"DELETE FROM pushed_requests WHERE request_uri_hash = %s "  # noqa: S608
            f"RETURNING {_PUSHED.columns}",
            [request_uri_hash],
        )
        return _PUSHED.decode(rows[0]) if rows else None

    # -- Tokens --------------------------------------------------------------------

    def save_token(self, *tokens: Token, holder: User | None = None) -> bool:
        """One statement, SERIALIZABLE: a removal or change of the holder's credentials
        that commits first leaves its check false; one that commits after it revokes or
        deletes what it saved.

        The check locks the holder's row against deletion (FOR KEY SHARE, the lock a
        foreign key takes: changes of other columns, such as remember_address's, go on)
        until the tokens are committed. change_credentials is SERIALIZABLE too, and
        PostgreSQL rolls back one of the two if they overlap (each reads what the other
        writes). remove_user is not: it runs READ COMMITTED under the users lock
        (``_users_locked``), out of the reach of serialization checks, and would delete
        the tokens its statement's snapshot has, not these, if they were committing
        meanwhile (OIDC Core §2: the next user of the name would get them). Its ``FOR
        UPDATE`` waits for this lock, and its delete then sees these tokens; a removal
        that holds the row first makes this wait and then fail to serialize, and run
        again, finding no user."""
        if holder is None:
            only_if, params = "TRUE", []
        else:
            only_if = _HOLDER_LOCKED
            params = [holder.username, *_credentials(holder)]
        if not tokens:
            return holder is None or bool(self._rows(f"SELECT {only_if}", params)[0][0])
        saved = self._count(_insert_tokens(len(tokens), only_if), [*_token_values(tokens), *params])
        return saved == len(tokens)

    def get_token(self, token_hash: str) -> Token | None:
        rows = self._rows(_TOKENS.select + " WHERE token_hash = %s", [token_hash])
        return _TOKENS.decode(rows[0]) if rows else None

    def get_token_and_user(self, token_hash: str) -> tuple[Token, User | None] | None:
        rows = self._rows(_select_with_user(_TOKENS, "token_hash"), [token_hash])
        return _with_user(rows, _TOKENS)

    def rotate_refresh_token(self, old_hash: str, *new: Token) -> bool:
        """One statement: revoke ``old_hash`` only if it is an active refresh token, and
        save ``new`` only if it was. Of N concurrent rotations one UPDATE changes the row;
        the others are rolled back by PostgreSQL, run again, and find it revoked.

        First, before the token's row, it locks its user's row (FOR KEY SHARE, as
        save_token does, and why): remove_user, READ COMMITTED, would otherwise delete the old token
        once this committed and miss the new ones, left to the next user of the name (OIDC
        Core §2). Its FOR UPDATE waits for this instead; a removal holding the row first
        makes this fail to serialize and run again, finding the old token gone."""
        query = (
            "WITH holder AS (SELECT 1 FROM users WHERE username = "
            "(SELECT username FROM tokens WHERE token_hash = %s) FOR KEY SHARE), "
            # Evaluated once, before the scan: the lock is taken whether or not a user has
            # the name (a made-up user's token, Server.issue_tokens, rotates as before).
            "rotated AS (UPDATE tokens SET revoked = TRUE WHERE token_hash = %s "
            "AND NOT revoked AND kind = 'refresh' AND (SELECT count(*) FROM holder) >= 0 "
            "RETURNING 1)"
        )
        if new:
            saved = _insert_tokens(len(new), only_if="EXISTS (SELECT 1 FROM rotated)")
            query += f", saved AS ({saved})"
        query += " SELECT count(*) FROM rotated"
        rows = self._rows(query, [old_hash, old_hash, *_token_values(new)])
        return bool(rows[0][0])

    def revoke_token(self, token_hash: str) -> None:
        self._count("UPDATE tokens SET revoked = TRUE WHERE token_hash = %s", [token_hash])

    def revoke_family(self, family_id: str) -> bool:
        """One statement. Only families that exist (a token, or a used code of that hash)
        are remembered, so random codes cannot grow the table; each until the last of its
        tokens and code would have expired."""
        rows = self._rows(
            "WITH known AS (SELECT greatest("
            "(SELECT max(expires_at) FROM tokens WHERE family_id = %(id)s), "
            "(SELECT expires_at FROM used_codes WHERE code_hash = %(id)s)) AS until), "
            "remembered AS (INSERT INTO revoked_families (family_id, until) "
            "SELECT %(id)s, until FROM known WHERE until IS NOT NULL "
            "ON CONFLICT (family_id) DO UPDATE "
            "SET until = greatest(revoked_families.until, excluded.until)), "
            "revoked AS (UPDATE tokens SET revoked = TRUE "
            "WHERE family_id = %(id)s AND NOT revoked) "
            "SELECT until IS NOT NULL FROM known",
            {"id": family_id},
        )
        return bool(rows[0][0])

    # -- Consent ---------------------------------------------------------------------

    def save_consent(
        self, username: str, client_id: str, scopes: Iterable[str], consented_at: float,
        bound_to: str = "",
    ) -> None:  # fmt: skip
        """One upsert that adds to what is stored (under the same ``bound_to``; else
        replaces it), so that consents given at two nodes at once both count."""
        self._count(
            "INSERT INTO consents (username, client_id, scopes, consented_at, bound_to) "
            "VALUES (%s, %s, %s::text[], %s, %s) ON CONFLICT (username, client_id) DO UPDATE "
            "SET scopes = CASE WHEN consents.bound_to = excluded.bound_to THEN ARRAY(SELECT "
            "DISTINCT s FROM unnest(consents.scopes || excluded.scopes) AS s ORDER BY s) "
            "ELSE excluded.scopes END, consented_at = excluded.consented_at, "
            "bound_to = excluded.bound_to",
            [username, client_id, sorted(set(scopes)), consented_at, bound_to],
        )

    def get_consent(self, username: str, client_id: str, bound_to: str = "") -> frozenset[str]:
        rows = self._rows(
            "SELECT scopes FROM consents WHERE username = %s AND client_id = %s "
            "AND bound_to = %s",
            [username, client_id, bound_to],
        )
        return frozenset(rows[0][0]) if rows else frozenset()

    def list_grants(
        self, now: float, username: str | None = None, client_id: str | None = None
    ) -> list[Grant]:
        """One statement, so one snapshot: the consents, and the active tokens counted per
        user and client. Each filter is spliced in only when given, so that the plan is
        the one for the index it can use."""
        filters = {"username": username, "client_id": client_id}
        given = {column: value for column, value in filters.items() if value is not None}
        only = "".join(f" AND {column} = %s" for column in given)
        values = list(given.values())
        # Only column names are spliced into the SQL; values are bound.
        query = (
            "SELECT username, client_id, scopes, consented_at, 0::bigint, 0::bigint "  # noqa: S608
            f"FROM consents WHERE TRUE{only} "
            "UNION ALL SELECT username, client_id, NULL::text[], NULL::double precision, "
            "count(*) FILTER (WHERE kind = 'access'), count(*) FILTER (WHERE kind = 'refresh') "
            f"FROM tokens WHERE username IS NOT NULL AND NOT revoked AND expires_at > %s{only} "
            "GROUP BY username, client_id"
        )
        grants: dict[tuple[str, str], Grant] = {}
        for user, client, scopes, consented_at, access, refresh in self._rows(
            query, [*values, now, *values]
        ):
            key = (user, client)
            grant = grants.get(key) or Grant(user, client, None, None, 0, 0)
            if scopes is not None:
                grant = replace(grant, scopes=frozenset(scopes), consented_at=consented_at)
            grants[key] = replace(grant, access_tokens=grant.access_tokens + access,
                                  refresh_tokens=grant.refresh_tokens + refresh)  # fmt: skip
        return [grants[key] for key in sorted(grants)]

    def revoke_grant(self, username: str, client_id: str, now: float) -> bool:
        """One statement: whether there was a grant, as its snapshot saw it, and the end of
        it. A refresh rotation racing it is serialized before it (its new tokens are
        revoked here) or after it (it finds the old token revoked)."""
        rows = self._rows(
            "WITH found AS (SELECT EXISTS (SELECT 1 FROM consents "
            "WHERE username = %(user)s AND client_id = %(client)s) "
            "OR EXISTS (SELECT 1 FROM tokens WHERE username = %(user)s "
            "AND client_id = %(client)s AND NOT revoked AND expires_at > %(now)s) AS yes), "
            "consent_gone AS (DELETE FROM consents "
            "WHERE username = %(user)s AND client_id = %(client)s), "
            "tokens_revoked AS (UPDATE tokens SET revoked = TRUE "
            "WHERE username = %(user)s AND client_id = %(client)s AND NOT revoked), "
            "codes_gone AS (DELETE FROM codes "
            "WHERE username = %(user)s AND client_id = %(client)s), "
            "devices_gone AS (DELETE FROM device_authorizations "
            "WHERE username = %(user)s AND client_id = %(client)s) "
            "SELECT yes FROM found",
            {"user": username, "client": client_id, "now": now},
        )
        return bool(rows[0][0])

    def change_record_id(self, username: str, record_id: str) -> bool:
        """One statement: the new record_id, and the user's login sessions gone with it."""
        rows = self._rows(
            "WITH changed AS (UPDATE users SET record_id = %s WHERE username = %s "
            "RETURNING 1), sessions_gone AS (DELETE FROM login_sessions WHERE username = %s "
            "AND EXISTS (SELECT 1 FROM changed)) SELECT count(*) FROM changed",
            [record_id, username, username],
        )
        return bool(rows[0][0] == 1)

    # -- Login sessions and TOTP --------------------------------------------------------

    def record_totp_step(self, username: str, step: int) -> bool:
        # One statement: insert, or raise the step only if this one is later.
        count = self._count(
            "INSERT INTO totp_steps (username, step) VALUES (%s, %s) "
            "ON CONFLICT (username) DO UPDATE SET step = excluded.step "
            "WHERE excluded.step > totp_steps.step",
            [username, step],
        )
        return count == 1

    def remember_jti(self, key: str, expires_at: float, now: float) -> bool:
        # One statement: insert, or take over an entry that has expired. READ COMMITTED:
        # a racing insert of the same key makes this one wait for it and then see its row,
        # so exactly one of them counts a row, and no caller gets a serialization failure.
        changed, _ = self._read_committed(
            "INSERT INTO used_jtis (key, expires_at) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at "
            "WHERE used_jtis.expires_at <= %s",
            [key, expires_at, now],
        )
        return changed == 1

    def spend_budget(self, key: str, now: float, interval: float, burst: int) -> float:
        # One statement: insert, or spend if the budget, whole again at ``until``, has one
        # left. READ COMMITTED: a racing upsert of the same key waits for the other's row
        # and its WHERE sees that row, so no more spend than the budget holds.
        def spend(conn: Conn) -> float:
            with read_committed(conn):
                spent = conn.execute(
                    "INSERT INTO failure_counts (key, count, last, until, expires_at) "
                    "VALUES (%(key)s, 1, %(now)s, %(now)s + %(interval)s, "
                    "%(now)s + %(interval)s) ON CONFLICT (key) DO UPDATE SET "
                    "count = CASE WHEN failure_counts.until > excluded.last "
                    "THEN failure_counts.count + 1 ELSE 1 END, last = excluded.last, "
                    "until = GREATEST(failure_counts.until, excluded.last) + %(interval)s, "
                    "expires_at = GREATEST(failure_counts.until, excluded.last) + %(interval)s "
                    "WHERE GREATEST(failure_counts.until, excluded.last) + %(interval)s "
                    "<= excluded.last + %(budget)s RETURNING until",
                    {"key": key, "now": now, "interval": interval, "budget": burst * interval},
                ).fetchone()
                if spent is not None:
                    return 0.0
                row = conn.execute(
                    "SELECT until FROM failure_counts WHERE key = %s", [key]
                ).fetchone()
                until = row[0] if row else now
                return float(max(until, now) + interval - now - burst * interval)

        return self._run(spend)

    def count_failure(self, key: str, now: float, window: float) -> int:
        # One statement: insert, or count on from a failure within the window. READ
        # COMMITTED: a racing upsert of the same key waits for the other's row and counts
        # on from it, so concurrent calls get distinct counts and no serialization failure.
        _, rows = self._read_committed(
            "INSERT INTO failure_counts (key, count, last, until, expires_at) "
            "VALUES (%s, 1, %s, 0, %s) ON CONFLICT (key) DO UPDATE SET "
            "count = CASE WHEN failure_counts.last > %s "
            "THEN failure_counts.count + 1 ELSE 1 END, last = excluded.last, "
            "expires_at = GREATEST(failure_counts.until, excluded.expires_at) "
            "RETURNING count",
            [key, now, now + window, now - window],
        )
        return int(rows[0][0]) if rows else 0  # an upsert returns its row

    def hold_failures(self, key: str, until: float) -> None:
        self._read_committed(
            "INSERT INTO failure_counts (key, count, last, until, expires_at) "
            "VALUES (%s, 0, 0, %s, %s) ON CONFLICT (key) DO UPDATE SET "
            "until = GREATEST(failure_counts.until, excluded.until), "
            "expires_at = GREATEST(failure_counts.expires_at, excluded.until)",
            [key, until, until],
        )

    def failures(self, key: str, now: float, window: float) -> FailureCount:
        rows = self._rows(
            "SELECT count, last, until, expires_at FROM failure_counts WHERE key = %s", [key]
        )
        if not rows:
            return FailureCount()
        count, last, until, expires_at = rows[0]
        return FailureCount(count if last > now - window else 0, last, until, expires_at)

    def clear_failures(self, keys: Sequence[str]) -> None:
        self._count("DELETE FROM failure_counts WHERE key = ANY (%s)", [list(keys)])

    def remember_address(self, user: User, address: str, now: float, keep: int) -> None:
        """Two statements of one READ COMMITTED transaction. The first locks the user's row
        (a removal, a change of credentials, or another remember of the user, waits for
        this transaction) and notes the address; the second, on a snapshot taken once the
        lock was held, sees what every remember before it committed and trims them, so
        that concurrent calls on any nodes leave at most ``keep``. An address already known
        (the usual sign-in: from home again) adds no row, so it needs no trim.

        The lock is a write of the row (its subject, unchanged), not a row lock only: a
        change_credentials waiting for it, SERIALIZABLE, has a snapshot from before this
        commits, which a lock alone leaves it to go on from, deleting the known addresses
        it sees, not this one (RFC 9700 §4.14.2: an address a sign-in under the old
        credentials completed from is trusted no longer); a concurrent write of the row
        makes it fail to serialize and run again, on a snapshot with this address in it."""
        others = {"subject": user.subject, "address": address, "others": max(keep - 1, 0)}

        def remember(conn: Conn) -> None:
            with read_committed(conn):
                # xmax = 0: the row is new (an update marks the new version with its xid).
                # The credentials are checked on the row as it stands once locked: READ
                # COMMITTED re-reads it after a change_credentials that committed first.
                added = conn.execute(
                    "WITH owner AS (UPDATE users SET subject = subject "  # noqa: S608
                    f"WHERE {_SAME_CREDENTIALS} RETURNING subject) "
                    "INSERT INTO known_addresses (subject, address, seen_at) "
                    "SELECT subject, %s, %s FROM owner "
                    "ON CONFLICT (subject, address) DO UPDATE SET seen_at = excluded.seen_at "
                    "RETURNING xmax = 0",
                    [*_credentials(user), address, now],
                ).fetchone()
                if added and added[0]:
                    conn.execute(_FORGET_OLDER_ADDRESSES, others)

        self._run(remember)

    def known_address(self, username: str, address: str) -> bool:
        return bool(
            self._rows(
                "SELECT 1 FROM users JOIN known_addresses USING (subject) "
                "WHERE users.username = %s AND known_addresses.address = %s",
                [username, address],
            )
        )

    def save_login_session(self, session: LoginSession) -> None:
        self._count(_LOGIN_SESSIONS.upsert, _LOGIN_SESSIONS.encode(session))

    def get_login_session(self, sid: str) -> tuple[LoginSession, User | None] | None:
        rows = self._rows(_select_with_user(_LOGIN_SESSIONS, "sid"), [sid])
        return _with_user(rows, _LOGIN_SESSIONS)

    def touch_login_session(self, sid: str, last_used_at: float, address: str) -> None:
        self._count(
            "UPDATE login_sessions SET last_used_at = %s, address = %s WHERE sid = %s",
            [last_used_at, address, sid],
        )

    def list_login_sessions(self, username: str, now: float) -> list[LoginSession]:
        rows = self._rows(
            _LOGIN_SESSIONS.select + " WHERE username = %s AND expires_at > %s "
            "ORDER BY created_at DESC, sid DESC",
            [username, now],
        )
        return [_LOGIN_SESSIONS.decode(row) for row in rows]

    def delete_login_sessions(
        self, username: str, sid: str | None = None, *, keep: str | None = None
    ) -> int:
        if sid is not None:
            return self._count(
                "DELETE FROM login_sessions WHERE username = %s AND sid = %s", [username, sid]
            )
        return self._count(
            "DELETE FROM login_sessions WHERE username = %s AND sid IS DISTINCT FROM %s",
            [username, keep],
        )

    def set_recovery_codes(self, username: str, code_hashes: Iterable[str]) -> None:
        hashes = list(code_hashes)

        def work(conn: Conn) -> None:
            with conn.transaction():
                conn.execute("DELETE FROM recovery_codes WHERE username = %s", [username])
                conn.execute(
                    "INSERT INTO recovery_codes (username, code_hash) "
                    "SELECT %s, unnest(%s::text[]) ON CONFLICT DO NOTHING",
                    [username, hashes],
                )

        self._run(work)

    def consume_recovery_code(self, username: str, code_hash: str) -> bool:
        count = self._count(
            "DELETE FROM recovery_codes WHERE username = %s AND code_hash = %s",
            [username, code_hash],
        )
        return count == 1

    def recovery_codes_left(self, username: str) -> int:
        rows = self._rows("SELECT count(*) FROM recovery_codes WHERE username = %s", [username])
        count: int = rows[0][0]
        return count

    def save_passkey(self, passkey: Passkey) -> bool:
        # A credential id is one user's for good (WebAuthn §7.1 step 22): never replaced.
        statement = (
            f"INSERT INTO passkeys ({_PASSKEYS.columns}) VALUES {_PASSKEYS.values} "  # noqa: S608
            "ON CONFLICT (credential_id) DO NOTHING"
        )
        return self._count(statement, _PASSKEYS.encode(passkey)) == 1

    def get_passkey(self, credential_id: str) -> Passkey | None:
        rows = self._rows(_PASSKEYS.select + " WHERE credential_id = %s", [credential_id])
        return _PASSKEYS.decode(rows[0]) if rows else None

    def list_passkeys(self, username: str) -> list[Passkey]:
        rows = self._rows(
            _PASSKEYS.select + " WHERE username = %s ORDER BY created_at, credential_id",
            [username],
        )
        return [_PASSKEYS.decode(row) for row in rows]

    def delete_passkey(self, username: str, credential_id: str) -> bool:
        count = self._count(
            "DELETE FROM passkeys WHERE username = %s AND credential_id = %s",
            [username, credential_id],
        )
        return count == 1

    def record_passkey_use(self, credential_id: str, sign_count: int, used_at: float) -> bool:
        # One statement: the counter checked and written together (WebAuthn §6.1.1).
        count = self._count(
            "UPDATE passkeys SET sign_count = %(count)s::bigint, last_used_at = %(at)s "
            "WHERE credential_id = %(id)s AND ((%(count)s::bigint = 0 AND sign_count = 0) "
            "OR %(count)s::bigint > sign_count)",
            {"count": sign_count, "at": used_at, "id": credential_id},
        )
        return count == 1

    def use_webauthn_challenge(self, challenge_hash: str, expires_at: float) -> bool:
        count = self._count(
            "INSERT INTO used_challenges (challenge_hash, until) VALUES (%s, %s) "
            "ON CONFLICT (challenge_hash) DO NOTHING",
            [challenge_hash, expires_at],
        )
        return count == 1

    # -- Settings and signing keys -----------------------------------------------------

    def get_or_add_setting(self, name: str, candidate: str) -> str:
        select = "SELECT value FROM settings WHERE name = %s"
        rows = self._rows(select, [name])
        if not rows:
            rows = self._run(
                lambda conn: self._get_or_insert(
                    conn, select, [name],
                    "INSERT INTO settings (name, value) VALUES (%s, %s) "
                    "ON CONFLICT (name) DO NOTHING RETURNING value",
                    [name, candidate],
                )
            )  # fmt: skip
        value: str = rows[0][0]
        return value

    def signing_keys(self) -> list[SigningKey]:
        return [_KEYS.decode(row) for row in self._rows(_KEYS.select + " ORDER BY seq DESC")]

    def get_or_add_signing_key(self, candidate: SigningKey) -> SigningKey:
        select = _KEYS.select + " WHERE alg = %s AND expires_at IS NULL"
        rows = self._rows(select, [candidate.alg])
        if not rows:
            # signing_keys_current allows one current key per alg.
            rows = self._run(
                lambda conn: self._get_or_insert(
                    conn, select, [candidate.alg],
                    f"INSERT INTO signing_keys ({_KEYS.columns}) "  # noqa: S608
                    f"VALUES {_KEYS.values} ON CONFLICT (alg) WHERE expires_at IS NULL "
                    f"DO NOTHING RETURNING {_KEYS.columns}",
                    _KEYS.encode(candidate),
                )
            )  # fmt: skip
        return _KEYS.decode(rows[0])

    @staticmethod
    def _get_or_insert(
        conn: Conn, select: str, key: Params, insert: str, values: Params
    ) -> list[tuple[Any, ...]]:
        """The row ``insert`` adds, else (another node added one first) the one ``select``
        finds. READ COMMITTED: the INSERT waits for a conflicting row's transaction to end,
        and the SELECT, a statement of its own, sees that row, so no node is turned away
        with a serialization failure to try again."""
        with read_committed(conn):
            return conn.execute(insert, values).fetchall() or conn.execute(select, key).fetchall()

    def rotate_signing_key(self, new: SigningKey, retire_until: float) -> None:
        def rotate(conn: Conn) -> None:
            with conn.transaction():  # SERIALIZABLE, the connection's default
                conn.execute(
                    "UPDATE signing_keys SET expires_at = %s "
                    "WHERE alg = %s AND expires_at IS NULL",
                    [retire_until, new.alg],
                )
                conn.execute(
                    f"INSERT INTO signing_keys ({_KEYS.columns}) "  # noqa: S608
                    f"VALUES {_KEYS.values}",
                    _KEYS.encode(new),
                )

        self._run(rotate)

    # -- Expiry ---------------------------------------------------------------------------

    def purge_expired(self, now: float) -> int:
        """Delete what expired in batches of PURGE_BATCH rows, each its own READ COMMITTED
        transaction that skips rows another node's purge has locked: purges running at
        once on several nodes share the work instead of waiting for, or failing on, each
        other, and no lock is held for long. Counts what this call deleted."""
        gone = self._count(
            "DELETE FROM signing_keys WHERE expires_at IS NOT NULL AND expires_at <= %s", [now]
        )
        # Rows are deleted by their ctid (physical address), locked in the same statement:
        # ``= ANY (ARRAY(...))`` makes that a TID scan however large the table.
        for table, column in _EXPIRING:
            purged = self._purge(
                f"DELETE FROM {table} WHERE ctid = ANY (ARRAY(SELECT ctid FROM {table} "  # noqa: S608
                f"WHERE {column} <= %s LIMIT %s FOR UPDATE SKIP LOCKED))",
                [now, PURGE_BATCH],
            )
            gone += purged if table not in ("revoked_families", "failure_counts") else 0
        return gone

    def _purge(self, query: str, params: Params) -> int:
        def batch(conn: Conn) -> int:
            with read_committed(conn):
                return conn.execute(query, params).rowcount

        gone = 0
        while True:
            deleted = self._run(batch)
            gone += deleted
            if deleted < PURGE_BATCH:
                return gone


def _hung_up(conn: Conn) -> bool:
    """Whether the server closed ``conn`` while it sat idle in the pool. An idle
    connection is sent nothing unasked (no LISTEN here), so a socket with something to
    read has the server's goodbye on it (SQLSTATE 57P01 "terminating connection due to
    administrator command", as a restart sends each connection) or its end; finding that
    out costs a poll of the socket, not a round trip to the server."""
    if conn.closed:
        return True
    try:
        fd = conn.fileno()
        if hasattr(select, "poll"):  # no FD_SETSIZE limit, unlike select() (not Windows)
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(0))
        readable, _, _ = select.select([fd], [], [], 0)
    except (OSError, psycopg.OperationalError):
        return True
    return bool(readable)


def _first_line(err: Exception) -> str:
    """The first line of a driver error, for a log line (libpq's never hold a password)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _after_fork(ref: weakref.ReferenceType[PostgreSQLStorage]) -> None:
    storage = ref()
    if storage is not None:
        storage._after_fork_in_child()


###############################################################################
# Storage URL ##################################################################
###############################################################################

_OPTIONS = ("schema", "pool_min_size", "pool_max_size", "pool_timeout")  # ours; libpq's the rest


def _redacted(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urllib.parse.urlsplit(url)
    netloc = re.sub(r":[^:@/]*@", ":***@", parts.netloc)
    query = re.sub(r"(?i)\bpassword=[^&]*", "password=***", parts.query)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def from_url(url: str) -> PostgreSQLStorage:
    """The storage of a ``postgresql://user:password@host:port/dbname[?options]`` URL (or
    ``postgres://``), as codeflow's ``open_storage`` asks each backend module for one.

    Options of ours, taken out of the query: ``schema`` (default: the connection's current
    schema), ``pool_min_size``, ``pool_max_size`` and ``pool_timeout`` (seconds, default
    POOL_TIMEOUT). Every other option is libpq's
    (https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-PARAMKEYWORDS) and is
    checked by libpq. ``ValueError`` names what is wrong: a malformed URL, an unknown or
    repeated option, or a server that cannot be reached or refuses the login (the password
    is never shown).
    """
    shown = _redacted(url)
    if not url.startswith(SCHEMES):
        raise ValueError(f"storage URL {shown!r}: expected postgresql://user:pass@host/dbname")
    parts = urllib.parse.urlsplit(url)
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if name not in _OPTIONS:
            theirs.append((name, value))
            continue
        if name in ours:
            raise ValueError(f"storage URL {shown!r}: option {name!r} given twice")
        ours[name] = value
    sizes: dict[str, int] = {}
    for name in ("pool_min_size", "pool_max_size"):
        if name in ours:
            if not ours[name].isdigit():
                raise ValueError(f"storage URL {shown!r}: {name} must be a whole number")
            sizes[name] = int(ours[name])
    timeout = None
    if "pool_timeout" in ours:
        try:
            timeout = float(ours["pool_timeout"])
        except ValueError:
            raise ValueError(
                f"storage URL {shown!r}: pool_timeout must be a number of seconds > 0"
            ) from None
    conninfo = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(theirs)))
    try:
        conninfo_to_dict(conninfo)
    except psycopg.ProgrammingError as err:  # libpq cannot parse it, or an unknown option
        raise ValueError(f"storage URL {shown!r}: {err}") from None
    try:
        return PostgreSQLStorage(conninfo, schema=ours.get("schema"), **sizes, pool_timeout=timeout)
    except ValueError as err:
        raise ValueError(f"storage URL {shown!r}: {err}") from None
    except psycopg.Error as err:  # no server there, the login refused, no privilege, ...
        raise ValueError(f"cannot open PostgreSQL storage {shown!r}: {err}") from None
