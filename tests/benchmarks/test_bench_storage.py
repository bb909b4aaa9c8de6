"""Benchmark: the introspection path's token lookup and the cost of keeping tokens, with
many tokens stored - MemoryStorage against SQLiteStorage, measured in the same run.

Issue 4: "with 1,000,000 stored tokens, introspection latency p50/p99 and bytes per
token, memory vs sqlite."

- latency: ``storage.get_token(hash)`` (what RFC 7662 introspection, userinfo and
  revocation look up) for LOOKUPS random known hashes, timed one by one;
- bytes per token: MemoryStorage, the traced allocation growth (tracemalloc) divided by N;
  SQLiteStorage, the file size after a WAL checkpoint divided by N (tables and indexes).

Run with ``tox -e bench`` or ``pytest tests/benchmarks``; the table is printed whatever
the capture setting. N is CODEFLOW_BENCH_TOKENS (default 1,000,000), LOOKUPS is
CODEFLOW_BENCH_LOOKUPS (default 20,000). Nothing is asserted about time.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import random
import secrets
import sqlite3
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from codeflow_storage.sqlite import SQLiteStorage

import codeflow
from codeflow import Token

N = int(os.environ.get("CODEFLOW_BENCH_TOKENS", "1000000"))
LOOKUPS = int(os.environ.get("CODEFLOW_BENCH_LOOKUPS", "20000"))
NOW = time.time()
SCOPE = ("openid", "profile", "offline_access")  # one tuple, as a client's scopes are shared


def tokens(n: int) -> Iterator[Token]:
    """n tokens shaped like the server's: SHA-256 hex hashes, an access and a refresh
    token per grant, 43-character family ids."""
    family = ""
    for i in range(n):
        if i % 2 == 0:
            family = secrets.token_urlsafe(32)
        yield Token(
            token_hash=hashlib.sha256(i.to_bytes(8, "big")).hexdigest(),
            kind="access" if i % 2 == 0 else "refresh",
            client_id=f"app-{i % 20}",
            username=f"user-{i % 5000}",
            scope=SCOPE,
            issued_at=NOW,
            expires_at=NOW + 3600,
            family_id=family,
        )


def sample_hashes() -> list[str]:
    rng = random.Random(4)  # sampling, not security
    return [hashlib.sha256(rng.randrange(N).to_bytes(8, "big")).hexdigest() for _ in range(LOOKUPS)]


def latencies_us(storage: codeflow.Storage, hashes: list[str]) -> tuple[float, float]:
    """p50 and p99 of get_token, in microseconds."""
    for h in hashes[:1000]:  # warm-up
        storage.get_token(h)
    timings = []
    clock = time.perf_counter_ns
    for h in hashes:
        start = clock()
        token = storage.get_token(h)
        timings.append(clock() - start)
        assert token is not None
    timings.sort()
    return timings[len(timings) // 2] / 1000, timings[int(len(timings) * 0.99)] / 1000


def measure_memory(hashes: list[str]) -> dict[str, float]:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        started = time.perf_counter()
        storage = codeflow.MemoryStorage()
        for token in tokens(N):
            storage.save_token(token)
        load = time.perf_counter() - started
        gc.collect()
        size = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    p50, p99 = latencies_us(storage, hashes)
    return {"load_s": load, "bytes": size / N, "p50": p50, "p99": p99}


def bulk_load(path: Path) -> float:
    """Insert N tokens in one transaction, encoded as SQLiteStorage encodes them."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA cache_size = -262144")  # 256 MiB for the index builds
        started = time.perf_counter()
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO tokens (token_hash, kind, client_id, username, scope, issued_at,"
            " expires_at, family_id, revoked) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
            (
                (
                    t.token_hash,
                    t.kind,
                    t.client_id,
                    t.username,
                    json.dumps(t.scope, separators=(",", ":")),
                    t.issued_at,
                    t.expires_at,
                    t.family_id,
                )
                for t in tokens(N)
            ),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return time.perf_counter() - started
    finally:
        conn.close()


def measure_sqlite(path: Path, hashes: list[str]) -> dict[str, float]:
    SQLiteStorage(path).close()  # create the schema
    load = bulk_load(path)
    size = path.stat().st_size
    with SQLiteStorage(path) as storage:
        p50, p99 = latencies_us(storage, hashes)
    return {"load_s": load, "bytes": size / N, "p50": p50, "p99": p99}


def test_token_lookup_latency_and_bytes_per_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 4: introspection latency p50/p99 and bytes per token, memory vs sqlite."""
    hashes = sample_hashes()
    results = {
        "memory": measure_memory(hashes),
        "sqlite": measure_sqlite(tmp_path / "bench.db", hashes),
    }
    with capsys.disabled():
        print(f"\n\nStorage with {N:,} tokens; get_token latency over {LOOKUPS:,} random lookups")
        print(f"{'backend':<8} {'p50 µs':>8} {'p99 µs':>8} {'bytes/token':>12} {'load s':>8}")
        for name, r in results.items():
            print(
                f"{name:<8} {r['p50']:>8.1f} {r['p99']:>8.1f} {r['bytes']:>12.0f} "
                f"{r['load_s']:>8.1f}"
            )
