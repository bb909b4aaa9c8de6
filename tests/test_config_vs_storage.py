"""The config file and storage together, as an operator restarts `codeflow serve`
(issue "Safe to run on-prem", item 1): the config file *declares* clients and users;
storage keeps everything else. A restart applies a declaration only when it is new or was
edited, so it never rewrites what changed in storage since; the CLI refuses to edit what
the config declares; nothing is replaced or dropped without a line in the log.

Real `codeflow serve` processes on a real SQLite file, stopped with Ctrl-C.
"""

from __future__ import annotations

import collections
import logging
import re
from pathlib import Path

import codeflow_storage.sqlite
import pyotp
import pytest
from test_cli import serving
from test_cli_manage import cli, one_line_error

import codeflow

pytestmark = pytest.mark.http


def config(tmp_path: Path, *users: tuple[str, str]) -> Path:
    path = tmp_path / "codeflow.toml"
    path.write_text("".join(
        f'[[users]]\nusername = "{name}"\npassword = "{password}"\n'
        f'claims = {{ name = "{name.title()}" }}\n'
        for name, password in users
    ))  # fmt: skip
    return path


def restart(db: str, conf: Path) -> str:
    """Start `codeflow serve --config` on the database, stop it; return what it logged."""
    with serving("--config", str(conf), "--storage", db) as server:
        assert server.interrupt() == 0, server.stderr
    return server.stderr


def stored(db: str, username: str) -> codeflow.User:
    with codeflow_storage.sqlite.from_url(db) as storage:
        user = storage.get_user(username)
    assert user is not None
    return user


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'codeflow.db'}"


def test_the_cli_refuses_to_edit_what_the_config_declares(tmp_path: Path, db: str) -> None:
    """Declared, then changed with the CLI: refused (exit 2, one line), so a restart has
    nothing of the CLI's to undo."""
    restart(db, config(tmp_path, ("alice", "one")))
    for args in (["user", "totp", "enable", "alice"], ["user", "passwd", "alice"],
                 ["user", "remove", "alice"], ["user", "update", "alice", "--claim", "a=b"]):
        one_line_error(cli(*args, "--password-stdin", "--storage", db, stdin="two\n")
                       if "passwd" in args else cli(*args, "--storage", db),
                       "declared in the config file")  # fmt: skip
    user = stored(db, "alice")
    assert codeflow.verify_password("one", user.password_hash) and user.totp_secret is None


def test_a_restart_keeps_what_changed_in_storage_since(tmp_path: Path, db: str) -> None:
    """A second factor enrolled in storage since the declaration (as the account pages
    will) survives a restart with the same config file: alice keeps her TOTP, and her
    sessions (credentials_fingerprint) are not ended by the restart."""
    conf = config(tmp_path, ("alice", "one"))
    restart(db, conf)
    with codeflow_storage.sqlite.from_url(db) as storage:
        codeflow.Server(storage=storage).set_totp("alice", pyotp.random_base32())
    before = stored(db, "alice")
    restart(db, conf)
    after = stored(db, "alice")
    assert after.totp_secret == before.totp_secret is not None
    assert codeflow.credentials_fingerprint(after) == codeflow.credentials_fingerprint(before)


def test_an_edited_declaration_is_applied_and_logged(tmp_path: Path, db: str) -> None:
    """The operator changed alice's password in the config file: the restart applies it,
    and says so."""
    restart(db, config(tmp_path, ("alice", "one")))
    log = restart(db, config(tmp_path, ("alice", "two")))
    assert codeflow.verify_password("two", stored(db, "alice").password_hash)
    assert "alice" in log and "changed in the config file" in log


def test_a_cli_user_newly_declared_is_taken_over_with_a_warning(tmp_path: Path, db: str) -> None:
    """Added with the CLI, then declared in the config file: the declaration wins, and the
    log says that it replaced what storage held."""
    assert cli("user", "add", "bob", "--password-stdin", "--storage", db,
               stdin="from-cli\n").returncode == 0  # fmt: skip
    log = restart(db, config(tmp_path, ("bob", "from-config")))
    assert codeflow.verify_password("from-config", stored(db, "bob").password_hash)
    assert "bob" in log and "now declared in the config file" in log


def test_an_entry_taken_out_of_the_config_stays_and_is_the_clis(
    tmp_path: Path, db: str
) -> None:
    """Removed from the config file: alice stays in storage (nobody is deleted by an
    edit of a file), the log says so, and the CLI may now manage her."""
    restart(db, config(tmp_path, ("alice", "one"), ("bob", "b")))
    log = restart(db, config(tmp_path, ("bob", "b")))
    assert codeflow.verify_password("one", stored(db, "alice").password_hash)
    assert "alice" in log and "no longer in the config file" in log
    assert cli("user", "totp", "enable", "alice", "--storage", db).returncode == 0


def table_writes(storage: codeflow_storage.sqlite.SQLiteStorage) -> collections.Counter[str]:
    """The statements that write to each table of ``storage``'s SQLite file from now on, as
    SQLite runs them (its trace callback): what storage receives."""
    writes: collections.Counter[str] = collections.Counter()

    def trace(statement: str) -> None:
        found = re.match(r"\s*(?:INSERT|REPLACE|UPDATE|DELETE)\b.*?\b(?:INTO|UPDATE|FROM)\s+(\w+)",
                         statement, re.IGNORECASE | re.DOTALL)  # fmt: skip
        if found:
            writes[found[1]] += 1

    storage._db.conn.set_trace_callback(trace)  # type: ignore[union-attr]
    return writes


DECLARED = {
    "resources": [{"uri": "https://api.example/", "scopes": ["api:read"]}],
    "clients": [{"client_id": "wiki", "client_secret": "wiki-secret",
                 "redirect_uris": ["https://wiki.example/cb"]}],
    "users": [{"username": "alice", "password": "one", "claims": {"name": "Alice"}}],
}  # fmt: skip


def test_each_new_or_edited_entry_is_written_once_and_an_unchanged_one_not_at_all(
    tmp_path: Path,
) -> None:
    """Loading the config file (load_config, as `serve --config` does at each start) writes
    each new or edited [[resources]], [[clients]] and [[users]] entry to storage in one
    statement, the record with its declaration, and leaves unchanged entries unwritten."""
    with codeflow_storage.sqlite.SQLiteStorage(tmp_path / "codeflow.db") as storage:
        srv = codeflow.Server(storage=storage)
        writes = table_writes(storage)
        codeflow.load_config(srv, DECLARED)
        assert {t: writes[t] for t in ("resources", "clients", "users")} == {
            "resources": 1, "clients": 1, "users": 1,
        }  # fmt: skip
        writes.clear()
        codeflow.load_config(srv, DECLARED)
        assert not {t: n for t, n in writes.items() if t in ("resources", "clients", "users")}
        edited = {
            "resources": [{**DECLARED["resources"][0], "name": "The API"}],
            "clients": [{**DECLARED["clients"][0], "name": "Wiki"}],
            "users": [{**DECLARED["users"][0], "password": "two"}],
        }
        codeflow.load_config(srv, edited)
        assert {t: writes[t] for t in ("resources", "clients", "users")} == {
            "resources": 1, "clients": 1, "users": 1,
        }  # fmt: skip
        assert storage.get_resource("https://api.example/").name == "The API"  # type: ignore[union-attr]
        assert storage.get_client("wiki").name == "Wiki"  # type: ignore[union-attr]
        user = storage.get_user("alice")
        assert user is not None and codeflow.verify_password("two", user.password_hash)
        assert user.declared and user.claims == {"name": "Alice"}


def test_an_edit_of_a_declared_users_claims_alone_ends_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """README "Config file and storage": a restart "never ends sessions for nothing". An
    entry whose claims alone were edited (a new display name) changes no credential, so
    nothing ends that a change of credentials ends (RFC 9700 §4.14.2: a security event
    such as a password change): the user's sessions (credentials_fingerprint) and refresh
    tokens stay, the TOTP she enrolled stays, and the audit event says claims, not
    credentials. A password edited in the file still ends them."""
    with codeflow_storage.sqlite.SQLiteStorage(tmp_path / "codeflow.db") as storage:
        srv = codeflow.Server(storage=storage)
        srv.add_client("wiki", client_secret="wiki-secret", redirect_uris=["https://wiki.example/cb"],
                       scopes=["openid", "offline_access"],
                       grant_types=["authorization_code", "refresh_token"])  # fmt: skip
        codeflow.load_config(srv, {"users": DECLARED["users"]})
        srv.set_totp("alice", pyotp.random_base32())
        before = storage.get_user("alice")
        assert before is not None
        refresh = srv.issue_tokens("alice", "wiki", "openid offline_access")["refresh_token"]
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="codeflow.audit"):
            codeflow.load_config(srv, {"users": [{**DECLARED["users"][0],
                                                  "claims": {"name": "Alice B."}}]})  # fmt: skip
        after = storage.get_user("alice")
        assert after is not None and after.claims == {"name": "Alice B."}
        assert after.totp_secret == before.totp_secret
        assert codeflow.credentials_fingerprint(after) == codeflow.credentials_fingerprint(before)
        assert not storage.get_token(codeflow.token_hash(refresh)).revoked  # type: ignore[union-attr]
        events = [(r.event, r.fields) for r in caplog.records if hasattr(r, "event")]
        assert events == [("user.changed", {"user": "alice", "changed": "claims"})]
        codeflow.load_config(srv, {"users": [{**DECLARED["users"][0], "password": "two"}]})
        assert storage.get_token(codeflow.token_hash(refresh)).revoked  # type: ignore[union-attr]
        assert storage.get_user("alice").totp_secret == before.totp_secret  # type: ignore[union-attr]
