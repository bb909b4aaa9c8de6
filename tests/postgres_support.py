"""The PostgreSQL server the tests use, and a fresh schema for each test.

The server is the one ``CODEFLOW_TEST_POSTGRES_URL`` names (``.ci/postgres`` starts one and
prints its URL). Without the variable, or when the server does not answer, the PostgreSQL
tests skip with the reason, except under CI (``CI`` set), where they fail: CI starts the
server, so a missing one is a broken run, not a reason to skip.

Each test gets a schema of its own (``?schema=test_...`` in the storage URL, made by the
storage when it opens and dropped after the test), so tests are independent of each other
and of any run going on at the same time on the same database.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
from collections.abc import Iterator
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
