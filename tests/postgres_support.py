"""The PostgreSQL server the tests use, and a fresh schema for each test.

The server is the one ``CODEFLOW_TEST_POSTGRES_URL`` names (``.ci/postgres`` starts one and
prints its URL). Without the variable, or when the server does not answer, the PostgreSQL
tests skip with the reason, except under CI (``CI`` set), where they fail: CI starts the
server, so a missing one is a broken run, not a reason to skip.

Each test gets a schema of its own (``?schema=test_...`` in the storage URL, made by the
storage when it opens and dropped after the test), so tests are independent of each other
and of any run going on at the same time on the same database.

A test that stops and starts the server (``throwaway_cluster``) must not do it to the shared
one: it makes a cluster of its own from the installed server binaries (Debian's
``/usr/lib/postgresql/VERSION/bin``, as ``.ci/postgres`` installs them), on a free port of
127.0.0.1, and removes it after; without the binaries it skips (fails under CI).
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

ENV = "CODEFLOW_TEST_POSTGRES_URL"


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so PostgreSQL tests fail rather than skip)")
    pytest.skip(reason)


@functools.cache
def _reachable(url: str) -> str | None:
    """None if a connection to ``url`` works, else why not (asked once per run)."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as err:
        return str(err).strip()
    return None


def server_url() -> str:
    """The test server's URL; skips (fails under CI) when there is none that answers."""
    url = os.environ.get(ENV)
    if not url:
        _unavailable(
            f"PostgreSQL tests need {ENV}=postgresql://user:password@host:port/dbname "
            "(bash .ci/postgres starts a local server and prints one)"
        )
    pytest.importorskip("psycopg", reason="PostgreSQL tests need psycopg (the dev extra)")
    problem = _reachable(url)
    if problem:
        _unavailable(f"PostgreSQL at {ENV} does not answer: {problem}")
    return url


def with_options(url: str, **options: str) -> str:
    return url + ("&" if "?" in url else "?") + "&".join(f"{k}={v}" for k, v in options.items())


def drop_schema(url: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextlib.contextmanager
def fresh_schema() -> Iterator[tuple[str, str]]:
    """(storage URL with ``?schema=`` a new name, that name); the schema is dropped after."""
    url = server_url()
    schema = f"test_{secrets.token_hex(6)}"
    try:
        yield with_options(url, schema=schema), schema
    finally:
        drop_schema(url, schema)


@pytest.fixture
def postgres_schema() -> Iterator[tuple[str, str]]:
    """A fixture form of ``fresh_schema``: (storage URL, schema name)."""
    with fresh_schema() as found:
        yield found


# -- A cluster of one's own, to stop and start ----------------------------------------

SERVER_BINARIES = Path("/usr/lib/postgresql")  # Debian's: VERSION/bin/{initdb,pg_ctl}
CLUSTER_TIMEOUT = 30  # seconds initdb, a start or a stop may take before the test fails


class Cluster:
    """A PostgreSQL cluster made for one test: ``url`` reaches it (password
    authentication, 127.0.0.1 only); ``stop()`` and ``start()`` restart it as an operator
    would (``pg_ctl stop -m fast``: connections are terminated, 57P01)."""

    def __init__(self, bin_dir: Path, root: Path, owner: list[str]) -> None:
        self.bin_dir, self.root, self.owner = bin_dir, root, owner
        self.data = root / "data"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.password = secrets.token_hex(16)
        self.url = f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/postgres"
        self.running = False

    def _run(self, *args: str) -> None:
        done = subprocess.run(  # noqa: S603 -- our own fixed command line
            [*self.owner, *args], capture_output=True, text=True, timeout=CLUSTER_TIMEOUT,
            check=False,
        )  # fmt: skip
        if done.returncode:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise AssertionError(f"{args[0]} failed: {done.stdout}{done.stderr}{tail}")

    def init(self) -> None:
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n", encoding="utf-8")
        self._chown(pwfile)
        self._run(str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "--auth=scram-sha-256", f"--pwfile={pwfile}", "--no-sync",
                  "--encoding=UTF8", "--locale=C")  # fmt: skip
        pwfile.unlink()

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c max_connections=60")  # fmt: skip
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-o", options,
                  "-l", str(self.root / "server.log"), "-w", "-t", str(CLUSTER_TIMEOUT),
                  "start")  # fmt: skip
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
                  "-t", str(CLUSTER_TIMEOUT), "stop")  # fmt: skip
        self.running = False

    def _chown(self, path: Path) -> None:
        if self.owner:
            entry = pwd.getpwnam("postgres")
            os.chown(path, entry.pw_uid, entry.pw_gid)


def _server_binaries() -> Path:
    """The bin directory of the newest installed server; skips (fails under CI) if none."""
    found = sorted(
        (p for p in SERVER_BINARIES.glob("*/bin") if (p / "initdb").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not found:
        _unavailable(
            f"this test starts a PostgreSQL cluster of its own and needs the server binaries "
            f"(initdb, pg_ctl) in {SERVER_BINARIES}/VERSION/bin: apt-get install postgresql"
        )
    return found[-1]


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """A new cluster, started; stopped (immediate) and removed after, even on failure.

    initdb refuses to run as root: as root (CI's containers) the cluster is the
    ``postgres`` OS user's, in a directory it owns."""
    pytest.importorskip("psycopg", reason="PostgreSQL tests need psycopg (the dev extra)")
    bin_dir = _server_binaries()
    owner: list[str] = []
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            runuser = None
        if runuser is None:
            _unavailable("running as root, this test needs runuser and the postgres OS user")
        owner = [runuser, "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="codeflow-pg-"))
    cluster = Cluster(bin_dir, root, owner)
    try:
        cluster._chown(root)
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        if cluster.running or (cluster.data / "postmaster.pid").exists():
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
