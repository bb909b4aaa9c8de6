"""The sign-in throttle's budget is one for all the nodes sharing a store.

Issue 16 item 3: "Every piece of state that must be shared across nodes lives in storage
(throttling counters, ...)". NIST SP 800-63B §5.2.2 bounds the consecutive failed
attempts on an account; were the counts per process, N nodes (or ``serve --workers N``)
would allow N times the guesses. Two Servers on one store (a real SQLite file, or one
PostgreSQL schema) stand for two nodes, one test clock moves them both, and every guess
goes to the other node than the one before.
"""

from __future__ import annotations

import threading
import time

import test_node_caches
from conftest import PASSWORD, USERNAME, Clock, make_server
from postgres_support import fresh_schema, server_url
from test_nist_800_63b_throttling import retry_after, sign_in
from wsgi_client import WSGIClient

import codeflow

# Fixtures: one store through two connections, and nodes A and B on it (A registered alice).
two_stores, nodes = test_node_caches.two_stores, test_node_caches.nodes

ATTACKER = "192.0.2.7"


def test_failures_from_one_address_spread_across_nodes_count_as_on_one_node(
    nodes: tuple[codeflow.Server, codeflow.Server], clock: Clock
) -> None:
    """NIST SP 800-63B §5.2.2, per (account, address): FAILURES_BEFORE_DELAY wrong
    passwords sent to two nodes in turn make the address wait on both, FIRST_DELAY and
    then twice that after one more failure, wherever it was checked."""
    browsers = [WSGIClient(node.wsgi, remote_addr=ATTACKER) for node in nodes]
    for i in range(codeflow.FAILURES_BEFORE_DELAY):
        assert sign_in(browsers[i % 2], password="guess").status == 200
    waits = [retry_after(sign_in(browser, password="guess")) for browser in browsers]
    assert waits == [codeflow.FIRST_DELAY] * 2
    clock.advance(codeflow.FIRST_DELAY)
    assert sign_in(browsers[1], password="guess").status == 200
    assert retry_after(sign_in(browsers[0], password="guess")) == 2 * codeflow.FIRST_DELAY


def test_failures_from_many_addresses_across_nodes_shut_the_account_gate_on_both(
    nodes: tuple[codeflow.Server, codeflow.Server], clock: Clock
) -> None:
    """NIST SP 800-63B §5.2.2, per account: ACCOUNT_FAILURES_BEFORE_DELAY failures from as
    many addresses, spread over two nodes, keep a new address waiting on either node; a
    success on one node starts the count again on the other."""
    a, b = nodes
    for i in range(codeflow.ACCOUNT_FAILURES_BEFORE_DELAY):
        browser = WSGIClient(nodes[i % 2].wsgi, remote_addr=f"198.51.100.{i + 1}")
        assert sign_in(browser, password="guess").status == 200
    for node in nodes:
        new = WSGIClient(node.wsgi, remote_addr="203.0.113.9")
        assert retry_after(sign_in(new, password="guess")) == codeflow.FIRST_DELAY
    clock.advance(codeflow.FIRST_DELAY)
    assert sign_in(WSGIClient(a.wsgi, remote_addr="203.0.113.9")).status == 303
    for i in range(codeflow.ACCOUNT_FAILURES_BEFORE_DELAY - 1):
        browser = WSGIClient(b.wsgi, remote_addr=f"198.51.100.{i + 100}")
        assert sign_in(browser, password="guess").status == 200
    assert sign_in(WSGIClient(b.wsgi, remote_addr="203.0.113.10"), password="guess").status == 200


HOME = "198.51.100.200"  # alice's own address


def shut_the_account_gates(nodes: tuple[codeflow.Server, codeflow.Server]) -> None:
    """An attacker fails from many addresses, on both nodes in turn, until the account-wide
    gates are shut (see test_review_findings's _shut_the_account_gates)."""
    for i in range(codeflow.ACCOUNT_FAILURES_BEFORE_DELAY + 2):
        browser = WSGIClient(nodes[i % 2].wsgi, remote_addr=f"192.0.2.{i + 1}")
        assert sign_in(browser, password="guess").status in (200, 429)


def test_an_address_the_user_signed_in_from_on_one_node_passes_the_gates_on_the_other(
    nodes: tuple[codeflow.Server, codeflow.Server],
) -> None:
    """NIST SP 800-63B §5.2.2: "accepting only authentication requests that come from a
    white list of IP addresses from which the subscriber has been successfully
    authenticated before", on every node: alice completes a sign-in from home on node A;
    an attacker shuts the account gates; from home, in a browser new to the account (no
    device cookie), she signs in on node B at once, while a new address waits there."""
    a, b = nodes
    assert sign_in(WSGIClient(a.wsgi, remote_addr=HOME)).status == 303
    shut_the_account_gates(nodes)
    assert retry_after(sign_in(WSGIClient(b.wsgi, remote_addr="203.0.113.9"))) > 0
    assert sign_in(WSGIClient(b.wsgi, remote_addr=HOME)).status == 303
    assert sign_in(WSGIClient(a.wsgi, remote_addr=HOME)).status == 303


def test_a_user_added_again_under_a_removed_name_inherits_no_known_address(
    nodes: tuple[codeflow.Server, codeflow.Server],
) -> None:
    """NIST SP 800-63B §5.2.2 with OIDC Core §2 (a sub is "never reassigned"): the
    addresses the removed alice signed in from are not the new alice's, so they wait at
    her shut gates like any new address, on either node; her own sign-in makes one known."""
    a, b = nodes
    assert sign_in(WSGIClient(a.wsgi, remote_addr=HOME)).status == 303
    assert b.remove_user(USERNAME)
    b.add_user(USERNAME, PASSWORD)
    shut_the_account_gates(nodes)
    for node in nodes:
        assert retry_after(sign_in(WSGIClient(node.wsgi, remote_addr=HOME))) > 0


def test_a_sign_in_does_not_wait_for_another_accounts_storage(clock: Clock) -> None:
    """NIST SP 800-63B §5.2.2 throttling, without making one node's sign-ins take turns:
    while the write of a failure on bob's account waits in PostgreSQL (another
    transaction, as another node's might, holds the row of its count), alice signs in on
    the same node at once; bob's attempt completes, counted, when the row is free."""
    with fresh_schema() as (url, schema):
        import psycopg
        from codeflow_storage.postgresql import from_url
        from psycopg import sql

        with from_url(url) as store:
            node = make_server(clock, storage=store)
            bob = WSGIClient(node.wsgi, remote_addr=ATTACKER)
            assert sign_in(bob, "bob", "guess").status == 200  # the row of the count is there
            key = codeflow.failure_key(codeflow.throttle_key("password:bob"), ATTACKER)
            answers: dict[str, int] = {}

            def signs_in(name: str, browser: WSGIClient, *credentials: str) -> threading.Thread:
                def run() -> None:
                    answers[name] = sign_in(browser, *credentials).status

                thread = threading.Thread(target=run, daemon=True)
                thread.start()
                return thread

            with psycopg.connect(server_url()) as other:
                table = sql.Identifier(schema, "failure_counts")
                query = sql.SQL("SELECT 1 FROM {} WHERE key = %s FOR UPDATE").format(table)
                assert other.execute(query, [key]).fetchone()
                (holder,) = other.execute("SELECT pg_backend_pid()").fetchone() or (0,)
                bobs = signs_in("bob", bob, "bob", "guess")
                with psycopg.connect(server_url(), autocommit=True) as watch:
                    blocked = ("SELECT count(*) FROM pg_stat_activity "
                               "WHERE %s = ANY (pg_blocking_pids(pid))")  # fmt: skip
                    deadline = time.monotonic() + 10
                    while watch.execute(blocked, [holder]).fetchone() == (0,):
                        assert time.monotonic() < deadline, "bob's failure never reached the row"
                        time.sleep(0.01)
                alices = signs_in("alice", WSGIClient(node.wsgi, remote_addr=HOME))
                alices.join(timeout=10)
                assert answers.get("alice") == 303, "alice waited for bob's storage"
                assert "bob" not in answers  # still held
                other.rollback()
            bobs.join(timeout=10)
            assert answers["bob"] == 200
            assert store.failures(key, clock(), codeflow.FORGET_FAILURES).count == 2
