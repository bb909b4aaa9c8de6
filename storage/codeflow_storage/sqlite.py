"""SQLite storage for codeflow, on sqlite-utils: one file that survives restarts and
crashes, shared by every thread and process that opens it.

- Schema: a list of migrations applied in order when the file is opened;
  ``PRAGMA user_version`` counts those that have run, so a database made by an older
  version upgrades itself, and one made by a newer version is refused.
- Concurrency: WAL, so readers never wait for the writer; a busy timeout, so a writer
  waits for another's lock instead of failing (a lock held longer than that is
  ``codeflow.StorageUnavailable``, which the server answers with 503); and every
  read-then-write in one ``BEGIN IMMEDIATE`` transaction, which takes the database's write
  lock up front. That lock, not a Python one, is what makes ``consume_code`` and
  ``rotate_refresh_token`` atomic across processes. Within a process, one connection
  serves every thread, one thread at a time.
- Secrets: codes and tokens arrive as hashes (``codeflow.token_hash``) and only those are
  kept. Tuples (scopes, redirect URIs, grant types) and claims are JSON text.

Use: ``SQLiteStorage("/var/lib/codeflow/codeflow.db")``, or the storage URL
``sqlite:///var/lib/codeflow/codeflow.db`` in the config file or ``codeflow serve --storage``,
which codeflow turns into a storage through this module's ``from_url``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import threading
import time
import typing
import urllib.parse
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import fields, replace
from typing import Any, Generic, TypeVar

import sqlite_utils

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

__all__ = ["MIGRATIONS", "SQLiteStorage", "from_url"]

URL_PREFIX = "sqlite:///"
SYNCHRONOUS = ("normal", "full", "extra")  # the values of PRAGMA synchronous we accept
BUSY_TIMEOUT = 5.0  # seconds a connection waits for another's lock before "database is locked"
MIN_SQLITE = (3, 35, 0)  # DELETE ... RETURNING makes consume_code one statement


###############################################################################
# Schema migrations ############################################################
###############################################################################

# Each migration takes the database from version N to N + 1, inside the transaction
# that sets ``PRAGMA user_version``. Append new ones; never edit one that has shipped.


def _v1_tables(db: sqlite_utils.Database) -> None:
    """One table per record of codeflow.py; primary keys index the lookups by hash or name."""
    db.table("clients").create(
        {
            "client_id": str,
            "redirect_uris": str,
            "secret_hash": str,
            "name": str,
            "scopes": str,
            "grant_types": str,
            "require_pkce": int,
            "id_token_signed_response_alg": str,
            "access_token_jwt": int,
            "post_logout_redirect_uris": str,
        },
        pk="client_id",
        not_null=[
            "redirect_uris",
            "name",
            "scopes",
            "grant_types",
            "require_pkce",
            "id_token_signed_response_alg",
            "access_token_jwt",
            "post_logout_redirect_uris",
        ],
    )
    db.table("users").create(
        {"username": str, "password_hash": str, "claims": str, "totp_secret": str},
        pk="username",
        not_null=["password_hash", "claims"],
    )
    db.table("codes").create(
        {
            "code_hash": str,
            "client_id": str,
            "username": str,
            "redirect_uri": str,
            "redirect_uri_required": int,
            "scope": str,
            "code_challenge": str,
            "nonce": str,
            "auth_time": int,
            "expires_at": float,
        },
        pk="code_hash",
        not_null=[
            "client_id",
            "username",
            "redirect_uri",
            "redirect_uri_required",
            "scope",
            "auth_time",
            "expires_at",
        ],
    )
    # A consumed code leaves a tombstone until it would have expired, so that a replay
    # can revoke what it issued (RFC 6749 §4.1.2).
    db.table("used_codes").create(
        {"code_hash": str, "expires_at": float}, pk="code_hash", not_null=["expires_at"]
    )
    db.table("tokens").create(
        {
            "token_hash": str,
            "kind": str,
            "client_id": str,
            "username": str,
            "scope": str,
            "issued_at": float,
            "expires_at": float,
            "family_id": str,
            "revoked": int,
        },
        pk="token_hash",
        not_null=[
            "kind",
            "client_id",
            "scope",
            "issued_at",
            "expires_at",
            "family_id",
            "revoked",
        ],
    )
    db.table("revoked_families").create({"family_id": str}, pk="family_id")
    db.table("consents").create(
        {"username": str, "client_id": str, "scopes": str},
        pk=("username", "client_id"),
        not_null=["scopes"],
    )
    db.table("settings").create({"name": str, "value": str}, pk="name", not_null=["value"])
    # seq (an alias of the rowid, stable under VACUUM) orders keys newest first.
    db.table("signing_keys").create(
        {
            "seq": int,
            "kid": str,
            "alg": str,
            "private_pem": str,
            "created_at": float,
            "expires_at": float,
        },
        pk="seq",
        not_null=["kid", "alg", "private_pem", "created_at"],
    )
    db.table("signing_keys").create_index(["kid"], index_name="signing_keys_by_kid", unique=True)


def _v2_indexes(db: sqlite_utils.Database) -> None:
    """Indexes for the lookups that are not by primary key: the tokens of a grant
    (revoke_family), the current key of an alg, and expiry (purge_expired)."""
    db.table("tokens").create_index(["family_id"], index_name="tokens_by_family")
    db.table("tokens").create_index(["expires_at"], index_name="tokens_by_expiry")
    db.table("codes").create_index(["expires_at"], index_name="codes_by_expiry")
    db.table("used_codes").create_index(["expires_at"], index_name="used_codes_by_expiry")
    db.table("signing_keys").create_index(["alg", "expires_at"], index_name="signing_keys_by_alg")


def _v3_sessions_and_totp(db: sqlite_utils.Database) -> None:
    """Ended login sessions (logout) and the last TOTP time step each user signed in with."""
    db.table("ended_sessions").create({"sid": str, "until": float}, pk="sid", not_null=["until"])
    db.table("ended_sessions").create_index(["until"], index_name="ended_sessions_by_expiry")
    db.table("totp_steps").create({"username": str, "step": int}, pk="username", not_null=["step"])


def _v4_principals(db: sqlite_utils.Database) -> None:
    """``User.record_id`` (users already stored get "", and a new random one when added
    again), and indexes for deleting a user's or client's grants with it and for revoking a
    user's refresh tokens (remove_user, remove_client, change_credentials)."""
    db.table("users").add_column("record_id", str, not_null_default="")
    db.table("tokens").create_index(["username"], index_name="tokens_by_username")
    db.table("tokens").create_index(["client_id"], index_name="tokens_by_client")
    db.table("codes").create_index(["username"], index_name="codes_by_username")
    db.table("codes").create_index(["client_id"], index_name="codes_by_client")
    db.table("consents").create_index(["client_id"], index_name="consents_by_client")


def _v5_declared(db: sqlite_utils.Database) -> None:
    """``Client.declared`` and ``User.declared``: the config file's entry that made the
    record, hashed ("" for records made otherwise, as every older one was)."""
    db.table("clients").add_column("declared", str, not_null_default="")
    db.table("users").add_column("declared", str, not_null_default="")


def _v6_consent_times(db: sqlite_utils.Database) -> None:
    """When each consent was last given (``Grant.consented_at``); consents already stored
    get NULL: their time is not known. The lookups of a grant (list_grants, revoke_grant)
    use the indexes of v1 and v4 (by user, by client, by both)."""
    db.table("consents").add_column("consented_at", float)


def _v7_allowed_origins(db: sqlite_utils.Database) -> None:
    """``Client.allowed_origins``: the web origins that may call the token, userinfo and
    revocation endpoints (CORS); clients already stored get none ("[]")."""
    db.table("clients").add_column("allowed_origins", str, not_null_default="[]")


def _v8_id_token_claims(db: sqlite_utils.Database) -> None:
    """``Client.minimal_id_token`` (clients already stored get ID tokens with the user's
    claims, the new default) and ``Token.auth_time`` (NULL for tokens already stored: the
    ID token of their refresh has no auth_time)."""
    db.table("clients").add_column("minimal_id_token", int, not_null_default=0)
    db.table("tokens").add_column("auth_time", int)


def _v9_authentication_context(db: sqlite_utils.Database) -> None:
    """How the user signed in, on codes and tokens (``amr`` and ``acr``, OIDC Core §2,
    RFC 8176), for the ID token of the code and of each refresh; rows already stored get
    none ("[]", NULL), and their ID tokens say nothing of it."""
    for table in ("codes", "tokens"):
        db.table(table).add_column("amr", str, not_null_default="[]")
        db.table(table).add_column("acr", str)


def _v10_claims_request(db: sqlite_utils.Database) -> None:
    """The claims request parameter (OIDC Core §5.5) a code or token was granted with, as
    JSON; rows already stored get none ("{}")."""
    for table in ("codes", "tokens"):
        db.table(table).add_column("claims_request", str, not_null_default="{}")


def _v11_subjects(db: sqlite_utils.Database) -> None:
    """``User.subject`` (OIDC Core §2: sub is "never reassigned"): users already stored
    keep their username, the sub their tokens carried; unique, so that no two users ever
    share one. ``removed_users``: the tombstones ``remove_user`` leaves, kept for ever,
    found by subject (the key) and by username. Users removed before this migration left
    none: the database no longer knows their names."""
    db.table("users").add_column("subject", str, not_null_default="")
    db.execute("UPDATE users SET subject = username")
    db.table("users").create_index(["subject"], index_name="users_by_subject", unique=True)
    db.table("removed_users").create(
        {"username": str, "subject": str, "removed_at": float},
        pk="subject",
        not_null=["username", "removed_at"],
    )
    db.table("removed_users").create_index(["username"], index_name="removed_users_by_username")


def _v12_logout(db: sqlite_utils.Database) -> None:
    """OIDC Back-Channel and Front-Channel Logout 1.0: a client's logout URIs and whether
    they need the session (clients already stored get none), and the login session
    (``sid``) on codes and tokens, for the sid of their ID tokens (NULL for rows already
    stored: their ID tokens name no session)."""
    clients = db.table("clients")
    clients.add_column("backchannel_logout_uri", str)
    clients.add_column("backchannel_logout_session_required", int, not_null_default=0)
    clients.add_column("frontchannel_logout_uri", str)
    clients.add_column("frontchannel_logout_session_required", int, not_null_default=0)
    for table in ("codes", "tokens"):
        db.table(table).add_column("sid", str)


def _v13_resources(db: sqlite_utils.Database) -> None:
    """RFC 8707 resources: a table of their registrations; the resources a client may ask
    for and exchange tokens to (RFC 8693); the resources a code was authorized for and a
    token's audience, and an exchanged token's act claim. Rows already stored get none
    ("[]", "{}"): their tokens keep the server's default audience."""
    db.table("resources").create(
        {
            "uri": str,
            "scopes": str,
            "name": str,
            "access_token_jwt": int,
            "access_token_lifetime": int,
            "introspection": int,
            "client_id": str,
            "declared": str,
        },
        pk="uri",
        not_null=["scopes", "name", "access_token_jwt", "introspection", "declared"],
    )
    db.table("clients").add_column("resources", str, not_null_default="[]")
    db.table("clients").add_column("token_exchange", str, not_null_default="[]")
    db.table("codes").add_column("resources", str, not_null_default="[]")
    db.table("tokens").add_column("audience", str, not_null_default="[]")
    db.table("tokens").add_column("actor", str, not_null_default="{}")


def _v14_self_registration(db: sqlite_utils.Database) -> None:
    """RFC 7591 / RFC 7592: how a client came to be ("" the operator's, "dynamic" it
    registered itself), its registration access token's hash, and the metadata it
    registered (JSON). Clients already stored are the operator's."""
    clients = db.table("clients")
    clients.add_column("registration", str, not_null_default="")
    clients.add_column("registration_token_hash", str)
    clients.add_column("registered_metadata", str, not_null_default="{}")


def _v15_account(db: sqlite_utils.Database) -> None:
    """The account page (README "Your account"): login sessions kept server-side, so that a
    user can list and end them (found by user, purged by expiry); and each user's recovery
    codes, by hash, one row each so that using one is a single DELETE."""
    db.table("login_sessions").create(
        {"sid": str, "username": str, "created_at": float, "last_used_at": float,
         "expires_at": float, "address": str, "user_agent": str},
        pk="sid",
        not_null=["username", "created_at", "last_used_at", "expires_at", "address",
                  "user_agent"],
    )  # fmt: skip
    db.table("login_sessions").create_index(["username"], index_name="login_sessions_by_user")
    db.table("login_sessions").create_index(
        ["expires_at"], index_name="login_sessions_by_expiry"
    )
    db.table("recovery_codes").create({"username": str, "code_hash": str},
                                      pk=("username", "code_hash"))  # fmt: skip


def _v16_passkeys(db: sqlite_utils.Database) -> None:
    """Passkeys (WebAuthn Level 2 credential records, found by credential id and by user),
    and the WebAuthn challenges used, remembered until they expire (single-use)."""
    db.table("passkeys").create(
        {"credential_id": str, "username": str, "public_key": str, "sign_count": int,
         "name": str, "created_at": float, "last_used_at": float, "passwordless": int,
         "backed_up": int, "transports": str},
        pk="credential_id",
        not_null=["username", "public_key", "sign_count", "name", "created_at",
                  "passwordless", "backed_up", "transports"],
    )  # fmt: skip
    db.table("passkeys").create_index(["username"], index_name="passkeys_by_user")
    db.table("used_challenges").create({"challenge_hash": str, "until": float},
                                       pk="challenge_hash", not_null=["until"])  # fmt: skip
    db.table("used_challenges").create_index(["until"], index_name="used_challenges_by_expiry")


def _v17_device_and_pushed_requests(db: sqlite_utils.Database) -> None:
    """RFC 8628 device authorization requests, found by device code (the key) and by user
    code (unique: one user code names one request); RFC 9126 pushed authorization
    requests, by request_uri; both by expiry for purge_expired. A device request keeps the
    resources it asks for (RFC 8707), as codes do. ``Client.require_pushed_
    authorization_requests`` (clients already stored get false)."""
    db.table("device_authorizations").create(
        {
            "device_code_hash": str, "user_code_hash": str, "client_id": str, "scope": str,
            "expires_at": float, "poll_interval": int, "status": str, "polled_at": float,
            "username": str, "auth_time": int, "amr": str, "nonce": str, "resources": str,
        },
        pk="device_code_hash",
        not_null=["user_code_hash", "client_id", "scope", "expires_at", "poll_interval", "status",
                  "amr", "resources"],
    )  # fmt: skip
    devices = db.table("device_authorizations")
    devices.create_index(["user_code_hash"], index_name="devices_by_user_code", unique=True)
    devices.create_index(["expires_at"], index_name="devices_by_expiry")
    devices.create_index(["client_id"], index_name="devices_by_client")
    devices.create_index(["username"], index_name="devices_by_username")
    db.table("pushed_requests").create(
        {"request_uri_hash": str, "client_id": str, "params": str, "expires_at": float},
        pk="request_uri_hash",
        not_null=["client_id", "params", "expires_at"],
    )
    db.table("pushed_requests").create_index(["expires_at"], index_name="pushed_by_expiry")
    db.table("clients").add_column(
        "require_pushed_authorization_requests", int, not_null_default=0
    )


def _v18_dpop_and_client_keys(db: sqlite_utils.Database) -> None:
    """DPoP (RFC 9449) and private_key_jwt (RFC 7523): a client's keys (``jwks``, JSON;
    ``jwks_uri``) and ``dpop_bound_access_tokens``, the DPoP key a code is bound to
    (``dpop_jkt``, §10) and a token's (``jkt``, §6); rows already stored get none. And
    ``used_jtis``: the one-time identifiers seen (DPoP proofs, client assertions) until
    they expire, with an index for deleting the expired ones."""
    clients = db.table("clients")
    clients.add_column("jwks", str, not_null_default="{}")
    clients.add_column("jwks_uri", str)
    clients.add_column("dpop_bound_access_tokens", int, not_null_default=0)
    db.table("codes").add_column("dpop_jkt", str)
    db.table("tokens").add_column("jkt", str)
    db.table("used_jtis").create(
        {"key": str, "expires_at": float}, pk="key", not_null=["expires_at"]
    )
    db.table("used_jtis").create_index(["expires_at"], index_name="used_jtis_by_expiry")


def _v19_consent_binding(db: sqlite_utils.Database) -> None:
    """``consents.bound_to``: what the client was when the user consented (codeflow's
    consent_binding; consents already stored were given under "")."""
    db.table("consents").add_column("bound_to", str, not_null_default="")


def _v20_failure_counts(db: sqlite_utils.Database) -> None:
    """The sign-in throttle's counts (``Storage.count_failure``), shared by every process
    on the file, with an index for purge_expired."""
    db.execute(
        "CREATE TABLE failure_counts (key TEXT PRIMARY KEY, count INTEGER NOT NULL, "
        "last REAL NOT NULL, until REAL NOT NULL, expires_at REAL NOT NULL)"
    )
    db.execute("CREATE INDEX failure_counts_by_expiry ON failure_counts (expires_at)")


def _v21_known_addresses(db: sqlite_utils.Database) -> None:
    """The addresses each user completed a sign-in from (``Storage.remember_address``), by
    subject, shared by every process on the file; the key is also the index of the look-up
    (``known_address``) and of trimming a user's to the most recent."""
    db.execute(
        "CREATE TABLE known_addresses (subject TEXT NOT NULL, address TEXT NOT NULL, "
        "seen_at REAL NOT NULL, PRIMARY KEY (subject, address))"
    )


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _v1_tables,
    _v2_indexes,
    _v3_sessions_and_totp,
    _v4_principals,
    _v5_declared,
    _v6_consent_times,
    _v7_allowed_origins,
    _v8_id_token_claims,
    _v9_authentication_context,
    _v10_claims_request,
    _v11_subjects,
    _v12_logout,
    _v13_resources,
    _v14_self_registration,
    _v15_account,
    _v16_passkeys,
    _v17_device_and_pushed_requests,
    _v18_dpop_and_client_keys,
    _v19_consent_binding,
    _v20_failure_counts,
    _v21_known_addresses,
]


###############################################################################
# Records as rows ##############################################################
###############################################################################


R = TypeVar("R", bound="DataclassInstance")  # a record dataclass of codeflow.py


class _Rows(Generic[R]):
    """How one record type maps to a row: one column per dataclass field, same name and
    order; tuples and dicts as JSON text, bools as 0/1.

    A field added to a record in codeflow.py needs a migration adding its column;
    ``missing_columns`` finds the ones that lack it when the file is opened.
    """

    def __init__(self, cls: type[R], table: str) -> None:
        self.cls = cls
        self.table = table
        self.names = tuple(f.name for f in fields(cls))
        self.columns = ", ".join(self.names)
        # Only field and table names are spliced into SQL; values are always bound.
        self.select = f"SELECT {self.columns} FROM {table}"  # noqa: S608
        self.insert = (
            f"INSERT OR REPLACE INTO {table} ({self.columns}) "  # noqa: S608
            f"VALUES ({', '.join('?' * len(self.names))})"
        )
        hints = typing.get_type_hints(cls)
        kinds = [typing.get_origin(hints[name]) or hints[name] for name in self.names]
        self._json = [i for i, kind in enumerate(kinds) if kind in (tuple, list, dict)]
        self._bool = [i for i, kind in enumerate(kinds) if kind is bool]

    def columns_of(self, alias: str) -> str:
        """The columns, each named through ``alias``: for a join, where both tables have
        a ``username``."""
        return ", ".join(f"{alias}.{name}" for name in self.names)

    def missing_columns(self, db: sqlite_utils.Database) -> list[str]:
        columns = {column.name for column in db[self.table].columns}
        return [name for name in self.names if name not in columns]

    def encode(self, record: R) -> list[Any]:
        values = [getattr(record, name) for name in self.names]
        for i in self._json:
            values[i] = json.dumps(values[i], separators=(",", ":"), ensure_ascii=False)
        for i in self._bool:
            values[i] = int(values[i])
        return values

    def decode(self, row: Iterable[Any]) -> R:
        values = list(row)
        for i in self._json:
            value = json.loads(values[i])
            values[i] = tuple(value) if isinstance(value, list) else value
        for i in self._bool:
            values[i] = bool(values[i])
        return self.cls(*values)


_CLIENTS = _Rows(Client, "clients")
_USERS = _Rows(User, "users")
_CODES = _Rows(AuthorizationCode, "codes")
_TOKENS = _Rows(Token, "tokens")
_KEYS = _Rows(SigningKey, "signing_keys")
_REMOVED_USERS = _Rows(RemovedUser, "removed_users")
_RESOURCES = _Rows(Resource, "resources")
_LOGIN_SESSIONS = _Rows(LoginSession, "login_sessions")
_PASSKEYS = _Rows(Passkey, "passkeys")
_DEVICES = _Rows(DeviceAuthorization, "device_authorizations")
_PUSHED = _Rows(PushedRequest, "pushed_requests")


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
        f"WHERE r.{key} = ?"
    )


# The stored user whose credentials are those a sign-in or a grant checked: its subject,
# password hash and TOTP secret, bound in that order (_credentials).
_SAME_CREDENTIALS = "subject = ? AND password_hash IS ? AND totp_secret IS ?"


def _credentials(user: User) -> list[Any]:
    return [user.subject, user.password_hash, user.totp_secret]

# Add or replace a user; a user replaced keeps its subject (the column is not updated), and
# a clash on the unique subject fails instead of deleting the other row as REPLACE would.
_USER_CHANGES = ", ".join(
    f"{name} = excluded.{name}" for name in _USERS.names if name not in ("username", "subject")
)
_SAVE_USER = (
    f"INSERT INTO users ({_USERS.columns}) VALUES ({', '.join('?' * len(_USERS.names))}) "  # noqa: S608
    f"ON CONFLICT(username) DO UPDATE SET {_USER_CHANGES}"
)
# Of a user's known addresses, all but :address and the :others most recent other ones.
_FORGET_OLDER_ADDRESSES = (
    "DELETE FROM known_addresses WHERE subject = :subject AND address <> :address "
    "AND address NOT IN (SELECT address FROM known_addresses WHERE subject = :subject "
    "AND address <> :address ORDER BY seen_at DESC, address DESC LIMIT :others)"
)
# Whether a user, stored or removed, has or had :name as its username or subject.
_SUBJECT_TAKEN = (
    "SELECT EXISTS (SELECT 1 FROM users WHERE username = :name) "
    "OR EXISTS (SELECT 1 FROM users WHERE subject = :name) "
    "OR EXISTS (SELECT 1 FROM removed_users WHERE subject = :name) "
    "OR EXISTS (SELECT 1 FROM removed_users WHERE username = :name)"
)

# A token joins its family revoked if the family was revoked first (revoke_family): the
# check and the write are one statement, so no revocation can slip in between.
_SAVE_TOKEN = "INSERT OR REPLACE INTO tokens ({}) VALUES ({})".format(  # noqa: S608
    _TOKENS.columns,
    ", ".join(
        "(:revoked OR EXISTS (SELECT 1 FROM revoked_families WHERE family_id = :family_id))"
        if name == "revoked"
        else f":{name}"
        for name in _TOKENS.names
    ),
)


def _token_params(token: Token) -> dict[str, Any]:
    return dict(zip(_TOKENS.names, _TOKENS.encode(token), strict=True))


###############################################################################
# The storage ##################################################################
###############################################################################


class SQLiteStorage:
    """A ``codeflow.Storage`` in one SQLite file, safe to share between threads and
    processes (each process opens its own ``SQLiteStorage`` on the same path).

    The file is created if missing and migrated to the current schema. ``close()`` it
    when done (or use it as a context manager).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "normal",
        busy_timeout: float = BUSY_TIMEOUT,
    ) -> None:
        """``synchronous`` (https://sqlite.org/pragma.html#pragma_synchronous): "normal",
        the default, loses nothing when the process crashes or is killed; an OS crash or
        power cut may roll back the last commits, never corrupting the file (WAL).
        "full" keeps those too, at one fsync per commit (~15x slower token issuance).
        ``busy_timeout``: seconds a call waits for another connection's lock before it
        raises ``codeflow.StorageUnavailable``."""
        if synchronous.lower() not in SYNCHRONOUS:
            raise ValueError("synchronous must be normal, full or extra")
        self._synchronous = synchronous.upper()
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise RuntimeError(
                f"codeflow_storage.sqlite needs SQLite >= 3.35 (DELETE ... RETURNING); "
                f"this Python has {sqlite3.sqlite_version}"
            )
        self.path = os.fspath(path)
        self._busy_timeout = busy_timeout
        if self.path != ":memory:":
            _make_folder(self.path)
        self._lock = threading.Lock()
        self._db: sqlite_utils.Database | None = self._open()
        # sqlite.org/howtocorrupt.html §2.6: a connection must not be used, or closed, in
        # a child process after fork(). A forked child opens its own connection and keeps
        # the inherited one alive so that it is never closed there.
        self._inherited: list[sqlite_utils.Database] = []
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _after_fork(ref))

    # -- Connection, transactions, migrations --------------------------------

    def _open(self) -> sqlite_utils.Database:
        # isolation_level=None: the sqlite3 module opens no transactions of its own;
        # a statement outside ``_write`` commits by itself.
        if self.path != ":memory:":
            _owner_only(self.path)
        conn = sqlite3.connect(
            self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            db = sqlite_utils.Database(conn, execute_plugins=False)
            self._enable_wal(db)
            if db.journal_mode != "wal":
                raise RuntimeError(f"{self.path}: SQLite could not switch to WAL journal mode")
            if self.path != ":memory:":
                # The -wal and -shm exist now: check their mode rather than rely on the
                # VFS copying the database's to the ones it creates.
                _owner_only_journals(self.path)
            db.execute(f"PRAGMA synchronous = {self._synchronous}")
            self._migrate(db)
            for rows in (_CLIENTS, _USERS, _CODES, _TOKENS, _KEYS, _REMOVED_USERS,
                         _RESOURCES, _LOGIN_SESSIONS, _PASSKEYS, _DEVICES, _PUSHED):  # fmt: skip
                missing = rows.missing_columns(db)
                if missing:
                    raise RuntimeError(
                        f"{self.path}: table {rows.table} has no column for "
                        f"{rows.cls.__name__}.{', '.join(missing)}: this codeflow_storage "
                        "lacks a migration for this version of codeflow"
                    )
        except BaseException:
            conn.close()
            raise
        return db

    @staticmethod
    def _enable_wal(db: sqlite_utils.Database) -> None:
        # Switching a new file to WAL needs an exclusive lock. While another connection is
        # writing (say, a process migrating the same new file), SQLite answers "database is
        # locked" at once instead of calling the busy handler, so retry within the timeout.
        deadline = time.monotonic() + BUSY_TIMEOUT
        while True:
            try:
                db.enable_wal()
                return
            except sqlite3.OperationalError as err:
                busy = err.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
                if not busy or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @staticmethod
    def _migrate(db: sqlite_utils.Database) -> None:
        def version() -> int:
            user_version: int = db.execute("PRAGMA user_version").fetchone()[0]
            return user_version

        if version() == len(MIGRATIONS):
            return
        # IMMEDIATE: of several processes opening an old file at once, one migrates and
        # the others wait, then find nothing left to do.
        db.execute("BEGIN IMMEDIATE")
        try:
            current = version()
            if current > len(MIGRATIONS):
                raise RuntimeError(
                    f"database schema version {current} is newer than this codeflow_storage "
                    f"understands ({len(MIGRATIONS)}): upgrade codeflow"
                )
            for migration in MIGRATIONS[current:]:
                migration(db)
            db.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
        except BaseException:
            db.rollback()
            raise
        db.execute("COMMIT")

    def _database(self) -> sqlite_utils.Database:
        if self._db is None:
            raise RuntimeError("this SQLiteStorage is closed")
        return self._db

    @contextlib.contextmanager
    def _locked(self) -> Iterator[sqlite_utils.Database]:
        """The connection, for this thread alone. SQLITE_BUSY, another connection's lock
        held past the busy timeout ("database is locked"), is StorageUnavailable: the call
        changed nothing, and the same call may succeed once that lock is gone."""
        with self._lock:
            try:
                yield self._database()
            except sqlite3.OperationalError as err:
                if err.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise
                raise StorageUnavailable(f"SQLite {self.path}: {err}") from err

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._locked() as db:
            return db.execute(sql, list(params)).fetchall()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite_utils.Database]:
        """One ``BEGIN IMMEDIATE`` transaction: the write lock is held from the first read
        to COMMIT, so nothing read inside can change meanwhile, in any thread or process."""
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                db.rollback()
                raise

    def close(self) -> None:
        """Close the connection; the last one to close checkpoints the WAL into the file."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def backup(self, target: str | os.PathLike[str]) -> None:
        """Copy the whole database, consistent, into a new file at ``target`` with SQLite's
        online backup API (https://sqlite.org/backup.html): other threads and processes
        go on writing meanwhile. The copy is owner-only, as the database is; restore by
        putting it in place of the file while no codeflow has it open."""
        path = os.fspath(target)
        if os.path.exists(path):
            raise ValueError(f"{path} exists: a backup never overwrites a file")
        _owner_only(path)
        with self._lock, contextlib.closing(sqlite3.connect(path)) as copy:
            self._database().conn.backup(copy)

    def __enter__(self) -> SQLiteStorage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- Clients and users -----------------------------------------------------

    def add_client(self, client: Client) -> None:
        with self._locked() as db:
            db.execute(_CLIENTS.insert, _CLIENTS.encode(client))

    def get_client(self, client_id: str) -> Client | None:
        rows = self._read(_CLIENTS.select + " WHERE client_id = ?", [client_id])
        return _CLIENTS.decode(rows[0]) if rows else None

    def list_clients(self) -> list[Client]:
        rows = self._read(_CLIENTS.select + " ORDER BY client_id")
        return [_CLIENTS.decode(row) for row in rows]

    def count_clients(self, registration: str) -> int:
        rows = self._read("SELECT count(*) FROM clients WHERE registration = ?", [registration])
        return int(rows[0][0])

    def remove_unused_clients(
        self, registration: str, issued_before: float, now: float
    ) -> list[str]:
        unused = "".join(
            f"AND NOT EXISTS (SELECT 1 FROM {table} t WHERE t.client_id = clients.client_id "  # noqa: S608
            "AND t.expires_at > :now) "
            for table in ("tokens", "codes", "device_authorizations", "pushed_requests")
        )
        with self._write() as db:
            rows = db.execute(
                "DELETE FROM clients WHERE registration = :registration "  # noqa: S608
                "AND json_extract(registered_metadata, '$.client_id_issued_at') < :before "
                "AND NOT EXISTS (SELECT 1 FROM consents c WHERE c.client_id = clients.client_id) "
                + unused + "RETURNING client_id",
                {"registration": registration, "before": issued_before, "now": now},
            ).fetchall()
            return sorted(row[0] for row in rows)

    def remove_client(self, client_id: str) -> bool:
        with self._write() as db:
            for table in ("tokens", "codes", "consents", "device_authorizations",
                          "pushed_requests"):  # fmt: skip
                db.execute(f"DELETE FROM {table} WHERE client_id = ?", [client_id])  # noqa: S608
            cursor = db.execute("DELETE FROM clients WHERE client_id = ?", [client_id])
            return cursor.rowcount > 0

    def add_resource(self, resource: Resource) -> None:
        with self._locked() as db:
            db.execute(_RESOURCES.insert, _RESOURCES.encode(resource))

    def get_resource(self, uri: str) -> Resource | None:
        rows = self._read(_RESOURCES.select + " WHERE uri = ?", [uri])
        return _RESOURCES.decode(rows[0]) if rows else None

    def list_resources(self) -> list[Resource]:
        return [_RESOURCES.decode(row) for row in self._read(_RESOURCES.select + " ORDER BY uri")]

    def remove_resource(self, uri: str) -> bool:
        with self._locked() as db:
            return db.execute("DELETE FROM resources WHERE uri = ?", [uri]).rowcount > 0

    def add_user(self, user: User) -> User:
        """One ``BEGIN IMMEDIATE`` transaction: the subject is checked and written under
        the write lock, so no other process gives it meanwhile."""
        with self._write() as db:
            row = db.execute(
                "SELECT subject FROM users WHERE username = ?", [user.username]
            ).fetchone()
            if row is not None:
                subject = row[0]
            else:
                subject = user.subject
                while db.execute(_SUBJECT_TAKEN, {"name": subject}).fetchone()[0]:
                    subject = new_subject()
            user = replace(user, subject=subject)
            db.execute(_SAVE_USER, _USERS.encode(user))
            return user

    def get_user(self, username: str) -> User | None:
        rows = self._read(_USERS.select + " WHERE username = ?", [username])
        return _USERS.decode(rows[0]) if rows else None

    def list_users(self) -> list[User]:
        rows = self._read(_USERS.select + " ORDER BY username")
        return [_USERS.decode(row) for row in rows]

    def get_user_by_subject(self, subject: str) -> User | None:
        rows = self._read(_USERS.select + " WHERE subject = ?", [subject])
        return _USERS.decode(rows[0]) if rows else None

    def remove_user(self, username: str, removed_at: float | None = None) -> bool:
        when = time.time() if removed_at is None else removed_at
        with self._write() as db:
            for table in ("tokens", "codes", "consents", "totp_steps", "recovery_codes",
                          "login_sessions", "passkeys", "device_authorizations"):  # fmt: skip
                db.execute(f"DELETE FROM {table} WHERE username = ?", [username])  # noqa: S608
            db.execute(
                "DELETE FROM known_addresses WHERE subject IN "
                "(SELECT subject FROM users WHERE username = ?)",
                [username],
            )
            # The tombstone and the removal, in one statement each of one transaction.
            db.execute(
                "INSERT INTO removed_users (username, subject, removed_at) "
                "SELECT username, subject, ? FROM users WHERE username = ?",
                [when, username],
            )
            cursor = db.execute("DELETE FROM users WHERE username = ?", [username])
            return cursor.rowcount > 0

    def removed_users(self, name: str) -> list[RemovedUser]:
        rows = self._read(
            _REMOVED_USERS.select + " WHERE username = ? "
            "UNION " + _REMOVED_USERS.select + " WHERE subject = ? ORDER BY removed_at",
            [name, name],
        )
        return [_REMOVED_USERS.decode(row) for row in rows]

    def change_credentials(self, user: User) -> bool:
        with self._write() as db:
            known = db.execute("SELECT subject FROM users WHERE username = ?", [user.username])
            row = known.fetchone()
            if row is None:
                return False
            db.execute(_SAVE_USER, _USERS.encode(replace(user, subject=row[0])))
            db.execute(
                "UPDATE tokens SET revoked = 1 "
                "WHERE username = ? AND kind = 'refresh' AND revoked = 0",
                [user.username],
            )
            db.execute("DELETE FROM codes WHERE username = ?", [user.username])
            db.execute("DELETE FROM login_sessions WHERE username = ?", [user.username])
            db.execute("DELETE FROM device_authorizations WHERE username = ?", [user.username])
            db.execute("DELETE FROM known_addresses WHERE subject = ?", [row[0]])
            return True

    # -- Codes -------------------------------------------------------------------

    def save_code(self, code: AuthorizationCode) -> None:
        with self._locked() as db:
            db.execute(_CODES.insert, _CODES.encode(code))

    def consume_code(self, code_hash: str) -> tuple[AuthorizationCode, User | None] | None:
        """Take a code in one statement; of N concurrent callers in any processes, the
        one whose DELETE finds the row gets it. The tombstone is written, and the user
        read, in the same transaction, so a replay is recognised from the moment the code
        is gone."""
        with self._write() as db:
            rows = db.execute(
                "DELETE FROM codes WHERE code_hash = ? RETURNING " + _CODES.columns,  # noqa: S608
                [code_hash],
            ).fetchall()
            if not rows:
                return None
            code = _CODES.decode(rows[0])
            db.execute(
                "INSERT OR REPLACE INTO used_codes (code_hash, expires_at) VALUES (?, ?)",
                [code_hash, code.expires_at],
            )
            users = db.execute(_USERS.select + " WHERE username = ?", [code.username])
            return code, next((_USERS.decode(row) for row in users), None)

    # -- Device authorization (RFC 8628) and pushed requests (RFC 9126) --------------

    def save_device_authorization(self, device: DeviceAuthorization) -> bool:
        with self._locked() as db:
            cursor = db.execute(
                _DEVICES.insert.replace("INSERT OR REPLACE", "INSERT OR IGNORE"),
                _DEVICES.encode(device),
            )
            return cursor.rowcount == 1

    def get_device_authorization(self, user_code_hash: str) -> DeviceAuthorization | None:
        rows = self._read(_DEVICES.select + " WHERE user_code_hash = ?", [user_code_hash])
        return _DEVICES.decode(rows[0]) if rows else None

    def decide_device_authorization(self, decided: DeviceAuthorization, now: float) -> bool:
        """One UPDATE that finds the row only while it is pending and unexpired."""
        values = dict(zip(_DEVICES.names, _DEVICES.encode(decided), strict=True))
        with self._locked() as db:
            cursor = db.execute(
                "UPDATE device_authorizations SET status = :status, scope = :scope, "
                "username = :username, auth_time = :auth_time, amr = :amr "
                "WHERE user_code_hash = :user_code_hash AND status = 'pending' "
                "AND expires_at > :now",
                {**values, "now": now},
            )
            return cursor.rowcount == 1

    def poll_device_authorization(
        self, device_code_hash: str, now: float, slow_down: int
    ) -> DeviceAuthorization | None:
        """One statement: the row as it was (SQLite's RETURNING gives the new values, so
        the old ones are read first in the same IMMEDIATE transaction)."""
        with self._write() as db:
            row = db.execute(
                _DEVICES.select + " WHERE device_code_hash = ?", [device_code_hash]
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE device_authorizations SET polled_at = :now, poll_interval = poll_interval "
                "+ CASE WHEN polled_at IS NOT NULL AND :now - polled_at < poll_interval "
                "THEN :slow_down ELSE 0 END WHERE device_code_hash = :hash",
                {"now": now, "slow_down": slow_down, "hash": device_code_hash},
            )
            return _DEVICES.decode(row)

    def redeem_device_authorization(self, device_code_hash: str) -> DeviceAuthorization | None:
        with self._write() as db:
            cursor = db.execute(
                "UPDATE device_authorizations SET status = 'redeemed' "
                "WHERE device_code_hash = ? AND status = 'approved'",
                [device_code_hash],
            )
            if cursor.rowcount != 1:
                return None
            row = db.execute(
                _DEVICES.select + " WHERE device_code_hash = ?", [device_code_hash]
            ).fetchone()
            return replace(_DEVICES.decode(row), status="approved")

    def save_pushed_request(self, pushed: PushedRequest) -> None:
        with self._locked() as db:
            db.execute(_PUSHED.insert, _PUSHED.encode(pushed))

    def consume_pushed_request(self, request_uri_hash: str) -> PushedRequest | None:
        with self._write() as db:
            rows = db.execute(
                f"DELETE FROM pushed_requests WHERE request_uri_hash = ? "  # noqa: S608
                f"RETURNING {_PUSHED.columns}",
                [request_uri_hash],
            ).fetchall()
            return _PUSHED.decode(rows[0]) if rows else None

    # -- Tokens --------------------------------------------------------------------

    def save_token(self, *tokens: Token, holder: User | None = None) -> bool:
        # One write transaction: a removal or change of the holder's credentials in any
        # process commits wholly before the check or after the tokens (and then ends them).
        with self._write() as db:
            if holder is not None and not db.execute(
                f"SELECT 1 FROM users WHERE username = ? AND {_SAME_CREDENTIALS}",  # noqa: S608
                [holder.username, *_credentials(holder)],
            ).fetchall():
                return False
            for token in tokens:
                db.execute(_SAVE_TOKEN, _token_params(token))
            return True

    def get_token(self, token_hash: str) -> Token | None:
        rows = self._read(_TOKENS.select + " WHERE token_hash = ?", [token_hash])
        return _TOKENS.decode(rows[0]) if rows else None

    def get_token_and_user(self, token_hash: str) -> tuple[Token, User | None] | None:
        rows = self._read(_select_with_user(_TOKENS, "token_hash"), [token_hash])
        return _with_user(rows, _TOKENS)

    def rotate_refresh_token(self, old_hash: str, *new: Token) -> bool:
        """Revoke ``old_hash`` only if it is an active refresh token, and save ``new`` in
        the same transaction: of N concurrent rotations one UPDATE changes a row."""
        with self._write() as db:
            cursor = db.execute(
                "UPDATE tokens SET revoked = 1 "
                "WHERE token_hash = ? AND revoked = 0 AND kind = 'refresh'",
                [old_hash],
            )
            if cursor.rowcount != 1:
                return False
            for token in new:
                db.execute(_SAVE_TOKEN, _token_params(token))
            return True

    def revoke_token(self, token_hash: str) -> None:
        with self._locked() as db:
            db.execute(
                "UPDATE tokens SET revoked = 1 WHERE token_hash = ?", [token_hash]
            )

    def revoke_family(self, family_id: str) -> bool:
        with self._write() as db:
            # Only families that exist are remembered, so random codes cannot grow the table.
            (known,) = db.execute(
                "SELECT EXISTS (SELECT 1 FROM tokens WHERE family_id = ?) "
                "OR EXISTS (SELECT 1 FROM used_codes WHERE code_hash = ?)",
                [family_id, family_id],
            ).fetchone()
            if not known:
                return False
            db.execute("INSERT OR IGNORE INTO revoked_families (family_id) VALUES (?)", [family_id])
            db.execute(
                "UPDATE tokens SET revoked = 1 WHERE family_id = ? AND revoked = 0", [family_id]
            )
            return True

    # -- Consent ---------------------------------------------------------------------

    def save_consent(
        self, username: str, client_id: str, scopes: Iterable[str], consented_at: float,
        bound_to: str = "",
    ) -> None:  # fmt: skip
        with self._write() as db:
            row = db.execute(
                "SELECT scopes FROM consents WHERE username = ? AND client_id = ? "
                "AND bound_to = ?",
                [username, client_id, bound_to],
            ).fetchone()
            granted = set(json.loads(row[0])) if row else set()
            granted.update(scopes)
            db.execute(
                "INSERT OR REPLACE INTO consents (username, client_id, scopes, consented_at, "
                "bound_to) VALUES (?, ?, ?, ?, ?)",
                [
                    username,
                    client_id,
                    json.dumps(sorted(granted), separators=(",", ":")),
                    consented_at,
                    bound_to,
                ],
            )

    def get_consent(self, username: str, client_id: str, bound_to: str = "") -> frozenset[str]:
        rows = self._read(
            "SELECT scopes FROM consents WHERE username = ? AND client_id = ? AND bound_to = ?",
            [username, client_id, bound_to],
        )
        return frozenset(json.loads(rows[0][0])) if rows else frozenset()

    def list_grants(
        self, now: float, username: str | None = None, client_id: str | None = None
    ) -> list[Grant]:
        """One statement, so one snapshot: the consents, then the active tokens counted per
        user and client, merged here. Each filter is spliced in only when given (a
        ``? IS NULL OR`` test would keep SQLite from using the index)."""
        filters = {"username": username, "client_id": client_id}
        given = {column: value for column, value in filters.items() if value is not None}
        only = "".join(f" AND {column} = ?" for column in given)
        values = list(given.values())
        # Only column names are spliced into the SQL; values are bound.
        sql = (
            "SELECT username, client_id, scopes, consented_at, 0, 0 "  # noqa: S608
            f"FROM consents WHERE 1{only} "
            "UNION ALL SELECT username, client_id, NULL, NULL, "
            "sum(kind = 'access'), sum(kind = 'refresh') FROM tokens "
            f"WHERE username IS NOT NULL AND revoked = 0 AND expires_at > ?{only} "
            "GROUP BY username, client_id"
        )
        rows = self._read(sql, [*values, now, *values])
        grants: dict[tuple[str, str], Grant] = {}
        for user, client, scopes, consented_at, access, refresh in rows:
            key = (user, client)
            grant = grants.get(key) or Grant(user, client, None, None, 0, 0)
            if scopes is not None:
                grant = replace(grant, scopes=frozenset(json.loads(scopes)),
                                consented_at=consented_at)  # fmt: skip
            grants[key] = replace(grant, access_tokens=grant.access_tokens + access,
                                  refresh_tokens=grant.refresh_tokens + refresh)  # fmt: skip
        return [grants[key] for key in sorted(grants)]

    def revoke_grant(self, username: str, client_id: str, now: float) -> bool:
        """One ``BEGIN IMMEDIATE`` transaction: a rotation of one of the pair's refresh
        tokens either committed before (its new tokens are revoked here) or finds the old
        one revoked after."""
        pair = [username, client_id]
        with self._write() as db:
            (found,) = db.execute(
                "SELECT EXISTS (SELECT 1 FROM consents WHERE username = ? AND client_id = ?) "
                "OR EXISTS (SELECT 1 FROM tokens WHERE username = ? AND client_id = ? "
                "AND revoked = 0 AND expires_at > ?)",
                [*pair, *pair, now],
            ).fetchone()
            db.execute("DELETE FROM consents WHERE username = ? AND client_id = ?", pair)
            db.execute(
                "UPDATE tokens SET revoked = 1 WHERE username = ? AND client_id = ? "
                "AND revoked = 0",
                pair,
            )
            db.execute("DELETE FROM codes WHERE username = ? AND client_id = ?", pair)
            db.execute(
                "DELETE FROM device_authorizations WHERE username = ? AND client_id = ?", pair
            )
            return bool(found)

    def change_record_id(self, username: str, record_id: str) -> bool:
        with self._write() as db:
            cursor = db.execute(
                "UPDATE users SET record_id = ? WHERE username = ?", [record_id, username]
            )
            if cursor.rowcount != 1:
                return False
            db.execute("DELETE FROM login_sessions WHERE username = ?", [username])
            return True

    # -- Login sessions and TOTP --------------------------------------------------------

    def record_totp_step(self, username: str, step: int) -> bool:
        with self._write() as db:
            # One statement: insert, or raise the step only if this one is later.
            cursor = db.execute(
                "INSERT INTO totp_steps (username, step) VALUES (?, ?) "
                "ON CONFLICT(username) DO UPDATE SET step = excluded.step "
                "WHERE excluded.step > totp_steps.step",
                [username, step],
            )
            return cursor.rowcount == 1

    def remember_jti(self, key: str, expires_at: float, now: float) -> bool:
        with self._write() as db:
            # One statement: insert, or take over an entry that has expired.
            cursor = db.execute(
                "INSERT INTO used_jtis (key, expires_at) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET expires_at = excluded.expires_at "
                "WHERE used_jtis.expires_at <= ?",
                [key, expires_at, now],
            )
            return cursor.rowcount == 1

    def spend_budget(self, key: str, now: float, interval: float, burst: int) -> float:
        with self._write() as db:
            # One statement: insert, or spend if the budget, whole again at ``until``, has
            # one left; the refusal is read in the same transaction.
            row = db.execute(
                "INSERT INTO failure_counts (key, count, last, until, expires_at) "
                "VALUES (:key, 1, :now, :now + :interval, :now + :interval) "
                "ON CONFLICT(key) DO UPDATE SET "
                "count = CASE WHEN failure_counts.until > excluded.last "
                "THEN failure_counts.count + 1 ELSE 1 END, last = excluded.last, "
                "until = MAX(failure_counts.until, excluded.last) + :interval, "
                "expires_at = MAX(failure_counts.until, excluded.last) + :interval "
                "WHERE MAX(failure_counts.until, excluded.last) + :interval "
                "<= excluded.last + :budget RETURNING until",
                {"key": key, "now": now, "interval": interval, "budget": burst * interval},
            ).fetchone()
            if row is not None:
                return 0.0
            (until,) = db.execute(
                "SELECT until FROM failure_counts WHERE key = ?", [key]
            ).fetchone()
            return float(max(until, now) + interval - now - burst * interval)

    def count_failure(self, key: str, now: float, window: float) -> int:
        with self._write() as db:
            # One statement: insert, or count on from a failure within the window.
            row = db.execute(
                "INSERT INTO failure_counts (key, count, last, until, expires_at) "
                "VALUES (?, 1, ?, 0, ?) ON CONFLICT(key) DO UPDATE SET "
                "count = CASE WHEN failure_counts.last > ? THEN failure_counts.count + 1 "
                "ELSE 1 END, last = excluded.last, "
                "expires_at = MAX(failure_counts.until, excluded.expires_at) RETURNING count",
                [key, now, now + window, now - window],
            ).fetchone()
            return int(row[0])

    def hold_failures(self, key: str, until: float) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO failure_counts (key, count, last, until, expires_at) "
                "VALUES (?, 0, 0, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                "until = MAX(failure_counts.until, excluded.until), "
                "expires_at = MAX(failure_counts.expires_at, excluded.until)",
                [key, until, until],
            )

    def failures(self, key: str, now: float, window: float) -> FailureCount:
        rows = self._read(
            "SELECT count, last, until, expires_at FROM failure_counts WHERE key = ?", [key]
        )
        if not rows:
            return FailureCount()
        count, last, until, expires_at = rows[0]
        return FailureCount(count if last > now - window else 0, last, until, expires_at)

    def clear_failures(self, keys: Sequence[str]) -> None:
        with self._write() as db:
            marks = ", ".join("?" * len(keys))
            db.execute(f"DELETE FROM failure_counts WHERE key IN ({marks})", list(keys))  # noqa: S608

    def remember_address(self, user: User, address: str, now: float, keep: int) -> None:
        # One write transaction: every process's remembers and credential changes of a user
        # take turns, and a user whose credentials changed since the sign-in gets nothing.
        with self._write() as db:
            noted = db.execute(
                "INSERT INTO known_addresses (subject, address, seen_at) "  # noqa: S608
                f"SELECT subject, ?, ? FROM users WHERE {_SAME_CREDENTIALS} "
                "ON CONFLICT (subject, address) DO UPDATE SET seen_at = excluded.seen_at",
                [address, now, *_credentials(user)],
            ).rowcount
            if noted:
                others = {"subject": user.subject, "address": address,
                          "others": max(keep - 1, 0)}  # fmt: skip
                db.execute(_FORGET_OLDER_ADDRESSES, others)

    def known_address(self, username: str, address: str) -> bool:
        return bool(
            self._read(
                "SELECT 1 FROM users JOIN known_addresses USING (subject) "
                "WHERE users.username = ? AND known_addresses.address = ?",
                [username, address],
            )
        )

    def save_login_session(self, session: LoginSession) -> None:
        with self._locked() as db:
            db.execute(_LOGIN_SESSIONS.insert, _LOGIN_SESSIONS.encode(session))

    def get_login_session(self, sid: str) -> tuple[LoginSession, User | None] | None:
        rows = self._read(_select_with_user(_LOGIN_SESSIONS, "sid"), [sid])
        return _with_user(rows, _LOGIN_SESSIONS)

    def touch_login_session(self, sid: str, last_used_at: float, address: str) -> None:
        with self._locked() as db:
            db.execute(
                "UPDATE login_sessions SET last_used_at = ?, address = ? WHERE sid = ?",
                [last_used_at, address, sid],
            )

    def list_login_sessions(self, username: str, now: float) -> list[LoginSession]:
        rows = self._read(
            _LOGIN_SESSIONS.select + " WHERE username = ? AND expires_at > ? "
            "ORDER BY created_at DESC, sid DESC",
            [username, now],
        )
        return [_LOGIN_SESSIONS.decode(row) for row in rows]

    def delete_login_sessions(
        self, username: str, sid: str | None = None, *, keep: str | None = None
    ) -> int:
        with self._locked() as db:
            only = "sid = ?" if sid is not None else "sid IS NOT ?"  # all but keep
            count: int = db.execute(
                f"DELETE FROM login_sessions WHERE username = ? AND {only}",  # noqa: S608
                [username, sid if sid is not None else keep],
            ).rowcount
            return count

    def set_recovery_codes(self, username: str, code_hashes: Iterable[str]) -> None:
        with self._write() as db:
            db.execute("DELETE FROM recovery_codes WHERE username = ?", [username])
            for code_hash in code_hashes:
                db.execute(
                    "INSERT OR IGNORE INTO recovery_codes (username, code_hash) VALUES (?, ?)",
                    [username, code_hash],
                )

    def consume_recovery_code(self, username: str, code_hash: str) -> bool:
        with self._locked() as db:
            cursor = db.execute(
                "DELETE FROM recovery_codes WHERE username = ? AND code_hash = ?",
                [username, code_hash],
            )
            return cursor.rowcount == 1

    def recovery_codes_left(self, username: str) -> int:
        rows = self._read("SELECT count(*) FROM recovery_codes WHERE username = ?", [username])
        count: int = rows[0][0]
        return count

    def save_passkey(self, passkey: Passkey) -> bool:
        # A credential id is one user's for good (WebAuthn §7.1 step 22): never replaced.
        statement = _PASSKEYS.insert.replace("INSERT OR REPLACE", "INSERT OR IGNORE", 1)
        with self._locked() as db:
            return db.execute(statement, _PASSKEYS.encode(passkey)).rowcount == 1

    def get_passkey(self, credential_id: str) -> Passkey | None:
        rows = self._read(_PASSKEYS.select + " WHERE credential_id = ?", [credential_id])
        return _PASSKEYS.decode(rows[0]) if rows else None

    def list_passkeys(self, username: str) -> list[Passkey]:
        rows = self._read(
            _PASSKEYS.select + " WHERE username = ? ORDER BY created_at, credential_id",
            [username],
        )
        return [_PASSKEYS.decode(row) for row in rows]

    def delete_passkey(self, username: str, credential_id: str) -> bool:
        with self._locked() as db:
            cursor = db.execute(
                "DELETE FROM passkeys WHERE username = ? AND credential_id = ?",
                [username, credential_id],
            )
            return cursor.rowcount == 1

    def record_passkey_use(self, credential_id: str, sign_count: int, used_at: float) -> bool:
        with self._locked() as db:
            # One statement: the counter checked and written together (WebAuthn §6.1.1).
            cursor = db.execute(
                "UPDATE passkeys SET sign_count = :count, last_used_at = :at "
                "WHERE credential_id = :id AND ((:count = 0 AND sign_count = 0) "
                "OR :count > sign_count)",
                {"count": sign_count, "at": used_at, "id": credential_id},
            )
            return cursor.rowcount == 1

    def use_webauthn_challenge(self, challenge_hash: str, expires_at: float) -> bool:
        with self._locked() as db:
            cursor = db.execute(
                "INSERT OR IGNORE INTO used_challenges (challenge_hash, until) VALUES (?, ?)",
                [challenge_hash, expires_at],
            )
            return cursor.rowcount == 1

    # -- Settings and signing keys -----------------------------------------------------

    def get_or_add_setting(self, name: str, candidate: str) -> str:
        rows = self._read("SELECT value FROM settings WHERE name = ?", [name])
        if rows:
            value: str = rows[0][0]
            return value
        with self._write() as db:
            db.execute(
                "INSERT OR IGNORE INTO settings (name, value) VALUES (?, ?)", [name, candidate]
            )
            value = db.execute("SELECT value FROM settings WHERE name = ?", [name]).fetchone()[0]
            return value

    def signing_keys(self) -> list[SigningKey]:
        rows = self._read(_KEYS.select + " ORDER BY seq DESC")
        return [_KEYS.decode(row) for row in rows]

    def get_or_add_signing_key(self, candidate: SigningKey) -> SigningKey:
        current = _KEYS.select + " WHERE alg = ? AND expires_at IS NULL ORDER BY seq DESC LIMIT 1"
        with self._write() as db:
            row = db.execute(current, [candidate.alg]).fetchone()
            if row is not None:
                return _KEYS.decode(row)
            db.execute(_KEYS.insert, _KEYS.encode(candidate))
            return candidate

    def rotate_signing_key(self, new: SigningKey, retire_until: float) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE signing_keys SET expires_at = ? WHERE alg = ? AND expires_at IS NULL",
                [retire_until, new.alg],
            )
            db.execute(_KEYS.insert, _KEYS.encode(new))

    # -- Expiry ---------------------------------------------------------------------------

    def purge_expired(self, now: float) -> int:
        with self._write() as db:
            gone = 0
            for sql in (
                "DELETE FROM signing_keys WHERE expires_at IS NOT NULL AND expires_at <= ?",
                "DELETE FROM codes WHERE expires_at <= ?",
                "DELETE FROM used_codes WHERE expires_at <= ?",
                "DELETE FROM tokens WHERE expires_at <= ?",
                # Written by versions before login sessions (migration 15); what they left
                # ages out here, and the table stays (migrations only add).
                "DELETE FROM ended_sessions WHERE until <= ?",
                "DELETE FROM login_sessions WHERE expires_at <= ?",
                "DELETE FROM used_challenges WHERE until <= ?",
                "DELETE FROM device_authorizations WHERE expires_at <= ?",
                "DELETE FROM pushed_requests WHERE expires_at <= ?",
                "DELETE FROM used_jtis WHERE expires_at <= ?",
            ):
                gone += db.execute(sql, [now]).rowcount
            db.execute("DELETE FROM failure_counts WHERE expires_at <= ?", [now])  # a note
            # A revoked family is remembered while it has tokens or a used code.
            db.execute(
                "DELETE FROM revoked_families WHERE NOT EXISTS "
                "(SELECT 1 FROM tokens WHERE tokens.family_id = revoked_families.family_id) "
                "AND NOT EXISTS "
                "(SELECT 1 FROM used_codes WHERE used_codes.code_hash = revoked_families.family_id)"
            )
            return gone

    # -- Fork -----------------------------------------------------------------------------

    def _reopen_in_child(self) -> None:
        self._lock = threading.Lock()  # the parent's may have been held at fork()
        if self._db is not None:
            self._inherited.append(self._db)
            self._db = self._open()


def _owner_only(path: str) -> None:
    """Create the database file 0600 if missing (an explicit mode, whatever the umask),
    and take group and other permissions off an existing one and its -wal and -shm.

    The file holds what cannot be hashed: the private signing keys, the cookie-signing
    key and TOTP secrets, so only its owner may read it. A file made by hand, or by an
    older version under umask 022, was 0644; tightening it on open, before anything is
    written, keeps those secrets from other local users. SQLite gives the -wal and -shm
    it creates the database's permissions, so those follow once the file is 0600.
    """
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            os.fchmod(fd, mode & 0o700)
    finally:
        os.close(fd)
    _owner_only_journals(path)


def _owner_only_journals(path: str) -> None:
    """Take group and other permissions off the -wal and -shm files that exist: ones a
    previous run left behind keep the mode they were made with (see ``_owner_only``)."""
    for journal in (f"{path}-wal", f"{path}-shm"):
        try:
            mode = stat.S_IMODE(os.stat(journal).st_mode)
            if mode & 0o077:
                os.chmod(journal, mode & 0o700)
        except FileNotFoundError:
            continue  # not made yet, or checkpointed away by another process's close


def _after_fork(ref: weakref.ReferenceType[SQLiteStorage]) -> None:
    storage = ref()
    if storage is not None:
        storage._reopen_in_child()


###############################################################################
# Storage URL ##################################################################
###############################################################################


def _make_folder(path: str) -> None:
    """Create the database's folder if it is missing (owner-only: it will hold the file's
    secrets) but not a whole tree: a missing parent too usually means a mistaken path,
    such as ``sqlite:///var/lib/...``, which is relative (``sqlite:////var/lib/...`` is
    absolute, as in SQLAlchemy)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(folder):
        return
    if not os.path.isdir(os.path.dirname(folder)):
        raise ValueError(
            f"no folder {folder} for the database {path!r}; an absolute path is "
            "sqlite:////path (four slashes)"
        )
    try:
        os.mkdir(folder, 0o700)
    except OSError as err:
        raise ValueError(f"cannot create the folder {folder}: {err.strerror}") from None


def from_url(url: str) -> SQLiteStorage:
    """The storage of a ``sqlite:///path[?synchronous=full]`` URL, as codeflow's
    ``open_storage`` asks each backend module (``codeflow_storage.<scheme>``) for one.

    The path is everything between ``sqlite:///`` and ``?``, taken as it is (no
    percent-decoding); options come from the query. ``synchronous`` is "normal" unless
    given (see ``SQLiteStorage``). An unknown, repeated or empty option raises
    ``ValueError`` rather than being ignored: a typo must not silently weaken durability.
    """
    if not url.startswith(URL_PREFIX):
        raise ValueError(f"storage URL {url!r}: expected {URL_PREFIX}path[?synchronous=full]")
    path, _, query = url.removeprefix(URL_PREFIX).partition("?")
    if not path:
        raise ValueError(f"storage URL {url!r}: no database path after {URL_PREFIX}")
    options: dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if name != "synchronous":
            raise ValueError(f"storage URL {url!r}: unknown option {name!r} (known: synchronous)")
        if name in options:
            raise ValueError(f"storage URL {url!r}: option {name!r} given twice")
        if value.lower() not in SYNCHRONOUS:
            raise ValueError(
                f"storage URL {url!r}: synchronous={value!r}: use one of {', '.join(SYNCHRONOUS)}"
            )
        options[name] = value
    return SQLiteStorage(path, synchronous=options.get("synchronous", "normal"))
