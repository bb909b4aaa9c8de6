"""The management commands as an on-prem operator runs them (DESIGN "CLI `codeflow`";
issue "Safe to run on-prem"): ``python codeflow.py client|user|keys|purge ...`` on a real
SQLite file, in a subprocess. Nothing is replaced silently, every error is one line with
exit status 2 and no traceback, and storage URLs mean what they look like.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import codeflow_storage.sqlite
import pyotp
import pytest
from test_cli import codeflow_command

import codeflow

pytestmark = pytest.mark.http


def cli(
    *args: str, stdin: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 -- our own command line
        codeflow_command(*args), capture_output=True, text=True, timeout=30, check=False,
        input=stdin, cwd=cwd,
    )  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit status 2, one line on stderr that says what went wrong, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'codeflow.db'}"


def add_alice(db: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli("user", "add", "alice", "--password-stdin", "--storage", db, *extra,
               stdin="wonderland\n")  # fmt: skip


# -- Adding what exists ------------------------------------------------------------------


def test_user_add_refuses_an_existing_user(db: str) -> None:
    """Adding a user that exists would wipe her claims and second factor: refused."""
    assert add_alice(db, "--claim", "name=Alice", "--totp").returncode == 0
    one_line_error(add_alice(db), "already exists", "user update")
    user = storage_of(db).get_user("alice")
    assert user is not None and user.totp_secret and user.claims == {"name": "Alice"}


def test_client_add_refuses_an_existing_client(db: str) -> None:
    """A second `client add` would print a new secret and break the live app: refused,
    and the first secret still works."""
    first = cli("client", "add", "app", "--redirect-uri", "https://app.example/cb", "--storage", db)
    assert first.returncode == 0
    one_line_error(
        cli("client", "add", "app", "--redirect-uri", "https://app.example/cb", "--storage", db),
        "already exists", "client update",
    )
    secret = first.stdout.split("client_secret: ")[1].split()[0]
    client = storage_of(db).get_client("app")
    assert client is not None and client.secret_hash is not None
    assert codeflow_storage.sqlite  # the backend the URL names
    from codeflow import verify_password

    assert verify_password(secret, client.secret_hash)


def test_totp_enable_refuses_a_user_who_has_one(db: str) -> None:
    """RFC 6238: re-enrolling silently would break the user's authenticator: refused
    without --replace, and with --replace a new secret is printed."""
    assert add_alice(db, "--totp").returncode == 0
    before = storage_of(db).get_user("alice")
    one_line_error(cli("user", "totp", "enable", "alice", "--storage", db), "already", "--replace")
    assert storage_of(db).get_user("alice") == before
    replaced = cli("user", "totp", "enable", "alice", "--replace", "--storage", db)
    assert replaced.returncode == 0 and "otpauth://" in replaced.stdout


def test_user_update_changes_claims_only(db: str) -> None:
    """`user update` changes what it is told and keeps the rest (password, TOTP)."""
    assert add_alice(db, "--claim", "name=Alice", "--claim", "email=a@example.org",
                     "--totp").returncode == 0  # fmt: skip
    before = storage_of(db).get_user("alice")
    result = cli("user", "update", "alice", "--claim", "name=Alice Liddell",
                 "--unset-claim", "email", "--storage", db)  # fmt: skip
    assert result.returncode == 0, result.stderr
    after = storage_of(db).get_user("alice")
    assert after is not None and before is not None
    assert after.claims == {"name": "Alice Liddell"}
    assert (after.password_hash, after.totp_secret) == (before.password_hash, before.totp_secret)


def test_client_update_and_rotate_secret(db: str) -> None:
    """`client update` changes the settings named; `client rotate-secret` prints a new
    secret once and the old one stops working."""
    first = cli("client", "add", "app", "--redirect-uri", "https://app.example/cb", "--storage", db)
    old = first.stdout.split("client_secret: ")[1].split()[0]
    result = cli("client", "update", "app", "--redirect-uri", "https://app.example/new",
                 "--post-logout-redirect-uri", "https://app.example/", "--name", "App",
                 "--jwt-access-tokens", "--storage", db)  # fmt: skip
    assert result.returncode == 0, result.stderr
    client = storage_of(db).get_client("app")
    assert client is not None
    assert client.redirect_uris == ("https://app.example/new",)
    assert client.post_logout_redirect_uris == ("https://app.example/",)
    assert client.name == "App" and client.access_token_jwt
    rotated = cli("client", "rotate-secret", "app", "--storage", db)
    assert rotated.returncode == 0
    new = rotated.stdout.split("client_secret: ")[1].split()[0]
    from codeflow import verify_password

    client = storage_of(db).get_client("app")
    assert client is not None and client.secret_hash is not None
    assert verify_password(new, client.secret_hash) and not verify_password(old, client.secret_hash)


def test_client_logout_uris_from_the_command_line(db: str) -> None:
    """OIDC Back-Channel Logout §2.2 and Front-Channel Logout §2: `client add` and `client
    update` set a client's backchannel_logout_uri and frontchannel_logout_uri (and whether
    it needs the session); update with '' removes one; a non-https URI is refused."""
    added = cli("client", "add", "app", "--redirect-uri", "https://app.example/cb",
                "--backchannel-logout-uri", "https://app.example/bc",
                "--backchannel-logout-session-required",
                "--frontchannel-logout-uri", "https://app.example/fc", "--storage", db)  # fmt: skip
    assert added.returncode == 0, added.stderr
    client = storage_of(db).get_client("app")
    assert client is not None
    assert client.backchannel_logout_uri == "https://app.example/bc"
    assert client.backchannel_logout_session_required
    assert client.frontchannel_logout_uri == "https://app.example/fc"
    assert not client.frontchannel_logout_session_required
    updated = cli("client", "update", "app", "--backchannel-logout-uri", "",
                  "--frontchannel-logout-uri", "http://127.0.0.1:8080/fc",
                  "--frontchannel-logout-session-required", "--storage", db)  # fmt: skip
    assert updated.returncode == 0, updated.stderr
    client = storage_of(db).get_client("app")
    assert client is not None
    assert client.backchannel_logout_uri is None
    assert client.frontchannel_logout_uri == "http://127.0.0.1:8080/fc"
    assert client.frontchannel_logout_session_required
    one_line_error(cli("client", "update", "app", "--backchannel-logout-uri",
                       "http://app.example/bc", "--storage", db),
                   "backchannel_logout_uri")  # fmt: skip


# -- Errors: one line, exit 2 ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["client", "add", "app", "--redirect-uri", "not-a-url"], ["redirect_uri", "absolute"]),
        (["client", "add", "app"], ["--redirect-uri"]),
        (["user", "add", "bob", "--claim", "badclaim"], ["NAME=VALUE"]),
        (["user", "passwd", "nobody", "--password-stdin"], ["no user"]),
        (["user", "remove", "nobody"], ["no user"]),
        (["client", "remove", "nobody"], ["no client"]),
        (["client", "update", "nobody", "--name", "x"], ["no client"]),
        (["client", "rotate-secret", "nobody"], ["no client"]),
        (["user", "update", "nobody", "--claim", "a=b"], ["no user"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0] in ("client", "user") else "",
)
def test_bad_input_is_one_line_and_exit_2(db: str, args: list[str], words: list[str]) -> None:
    one_line_error(cli(*args, "--storage", db, stdin="pw\n"), *words)


def test_user_add_without_a_terminal_says_to_use_password_stdin(db: str) -> None:
    """No terminal to ask a password on (a script, CI): a one-line error that names
    --password-stdin, not an EOFError traceback."""
    result = subprocess.run(  # noqa: S603
        codeflow_command("user", "add", "bob", "--storage", db), capture_output=True,
        text=True, timeout=30, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    one_line_error(result, "--password-stdin")


def test_totp_label_names_the_issuer(db: str) -> None:
    """Google Authenticator Key URI Format: the issuer label names the real server when
    the management command is given --issuer."""
    result = add_alice(db, "--totp", "--issuer", "https://id.example.org")
    assert result.returncode == 0
    uri = result.stdout.split("\n")[1]
    assert pyotp.parse_uri(uri).issuer == "codeflow id.example.org"


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("codeflow ")


def test_every_option_has_help() -> None:
    """Every option of every command says what it is for in --help."""
    import argparse

    import codeflow

    def walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
        missing = [f"{path} {a.option_strings}" for a in parser._actions
                   if a.option_strings and not a.help]  # fmt: skip
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    missing += walk(sub, f"{path} {name}")
        return missing

    assert walk(codeflow._parser(), "codeflow") == []


# -- Storage URLs ------------------------------------------------------------------------


def test_four_slashes_is_an_absolute_path_and_its_folder_is_made(tmp_path: Path) -> None:
    """As in SQLAlchemy: sqlite:////abs/path is the absolute /abs/path; a missing last
    folder is created, readable by its owner only."""
    target = tmp_path / "lib" / "codeflow" / "codeflow.db"
    (tmp_path / "lib").mkdir()
    url = f"sqlite:///{target}"  # tmp_path is absolute: this has four slashes
    assert url.startswith("sqlite:////")
    assert add_alice(url).returncode == 0
    assert target.exists()
    assert stat.S_IMODE(os.stat(target.parent).st_mode) == 0o700


def test_a_plain_path_is_a_sqlite_file(tmp_path: Path) -> None:
    """--storage /path/to/codeflow.db is the SQLite file there, the same as its URL."""
    target = tmp_path / "codeflow.db"
    assert add_alice(str(target)).returncode == 0
    listed = cli("user", "list", "--storage", f"sqlite:///{target}")
    assert listed.stdout.split() == ["alice"]


def test_three_slashes_is_relative_to_the_working_folder(tmp_path: Path) -> None:
    """sqlite:///rel/path is relative to where the command runs (SQLAlchemy's rule)."""
    (tmp_path / "data").mkdir()
    result = cli("user", "add", "alice", "--password-stdin", "--storage",
                 "sqlite:///data/codeflow.db", stdin="pw\n", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "data" / "codeflow.db").exists()


def test_a_path_whose_folders_are_missing_is_one_line(tmp_path: Path) -> None:
    """A path under folders that do not exist: a one-line error naming it, no traceback
    (the README's old example, sqlite:///var/lib/..., read as a relative path)."""
    result = cli("user", "list", "--storage", "sqlite:///var/lib/codeflow/codeflow.db",
                 cwd=tmp_path)  # fmt: skip
    one_line_error(result, "var/lib/codeflow")


@pytest.mark.parametrize("url", ["sqlite://", "nosuch://x", "sqlite:///x.db?synchronous=often"])
def test_bad_storage_urls_are_one_line(tmp_path: Path, url: str) -> None:
    one_line_error(cli("user", "list", "--storage", url, cwd=tmp_path))


def storage_of(url: str) -> codeflow_storage.sqlite.SQLiteStorage:
    return codeflow_storage.sqlite.from_url(url)




# -- Health ------------------------------------------------------------------------------


def test_healthz_is_200_while_storage_answers_and_503_after(tmp_path: Path) -> None:
    """DESIGN "health": `/healthz` answers 200 when storage answers, else 503 (for load
    balancers and monitoring)."""
    from wsgi_client import WSGIClient

    import codeflow

    storage = codeflow_storage.sqlite.SQLiteStorage(tmp_path / "codeflow.db")
    srv = codeflow.Server("http://127.0.0.1:8000", storage)
    client = WSGIClient(srv.wsgi)
    r = client.get("/healthz")
    assert r.status == 200 and r.json() == {"status": "ok"}
    assert r.headers["cache-control"] == "no-store"
    storage.close()
    r = client.get("/healthz")
    assert r.status == 503 and r.json() == {"status": "unavailable"}


# -- Keys and backups --------------------------------------------------------------------


def test_keys_list_shows_current_and_retiring_keys(db: str) -> None:
    """RFC 7517: the signing keys an operator can see (kid, alg, and until when a retired
    key stays published); never the private key."""
    assert cli("keys", "rotate", "--storage", db).returncode == 0
    assert cli("keys", "rotate", "--storage", db).returncode == 0
    listed = cli("keys", "list", "--storage", db)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.strip().splitlines()]
    keys = storage_of(db).signing_keys()
    assert [row[0] for row in rows] == [k.kid for k in keys]
    assert {row[1] for row in rows} == {"RS256", "ES256"}
    assert sum("signing" in row[3] for row in rows) == 2  # one current key per alg
    assert "PRIVATE" not in listed.stdout


def test_keys_rotate_publishes_new_keys_before_they_sign(db: str) -> None:
    """OIDC Core §10.1.1: the verifier re-retrieves the keys "when it sees an unfamiliar
    kid value", so a key must be in every node's JWKS before any token names it. `keys
    rotate` says so: each new key is published now and signs CACHE_SECONDS after it was
    stored, when every node's cached keys have it (README "Run several nodes")."""
    assert cli("keys", "rotate", "--storage", db).returncode == 0
    rotated = cli("keys", "rotate", "--storage", db)
    assert rotated.returncode == 0, rotated.stderr
    stored = {k.kid: k for k in storage_of(db).signing_keys()}
    lines = rotated.stdout.strip().splitlines()
    assert len(lines) == 2
    for line in lines:
        head, _, signs_from = line.partition(", published now, signs from ")
        kid = head.rsplit("kid ", 1)[1]
        key = stored[kid]
        assert key.expires_at is None and head.startswith(f"new {key.alg} signing key")
        when = key.created_at + codeflow.CACHE_SECONDS
        assert signs_from == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    retired = [k for k in stored.values() if k.expires_at is not None]
    assert len(retired) == 2  # the keys of the first rotation, published until they expire


def test_backup_then_restore_keeps_everything(db: str, tmp_path: Path) -> None:
    """`codeflow backup FILE` copies a live database with SQLite's online backup API; the
    copy, put in place, is the same server: users, clients and signing keys."""
    assert add_alice(db, "--totp", "--claim", "name=Alice").returncode == 0
    assert cli("client", "add", "app", "--redirect-uri", "https://a.example/cb",
               "--storage", db).returncode == 0  # fmt: skip
    assert cli("keys", "rotate", "--storage", db).returncode == 0
    copy = tmp_path / "backup" / "codeflow-backup.db"
    copy.parent.mkdir()
    result = cli("backup", str(copy), "--storage", db)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(os.stat(copy).st_mode) == 0o600
    original, restored = storage_of(db), storage_of(f"sqlite:///{copy}")
    assert restored.get_user("alice") == original.get_user("alice")
    assert restored.get_client("app") == original.get_client("app")
    assert restored.signing_keys() == original.signing_keys()
    assert restored.get_or_add_setting("secret_key", "x") == original.get_or_add_setting(
        "secret_key", "y"
    )
    one_line_error(cli("backup", str(copy), "--storage", db), "exists")


def test_client_allowed_origins_on_the_command_line(db: str) -> None:
    """Issue 14 item 1: `--allowed-origin` sets the client's CORS origins (repeatable;
    update replaces the list); a value that is not a serialized origin is one line, exit 2."""
    added = cli("client", "add", "portal", "--redirect-uri", "https://portal.example/cb",
                "--allowed-origin", "https://portal.example", "--storage", db)  # fmt: skip
    assert added.returncode == 0, added.stderr
    client = storage_of(db).get_client("portal")
    assert client is not None and client.allowed_origins == ("https://portal.example",)
    updated = cli("client", "update", "portal", "--allowed-origin", "https://a.example",
                  "--allowed-origin", "http://127.0.0.1:5173", "--storage", db)  # fmt: skip
    assert updated.returncode == 0, updated.stderr
    client = storage_of(db).get_client("portal")
    assert client is not None
    assert client.allowed_origins == ("https://a.example", "http://127.0.0.1:5173")
    one_line_error(
        cli("client", "update", "portal", "--allowed-origin", "https://a.example/", "--storage",
            db),
        "allowed_origins", "not an origin",
    )  # fmt: skip
