"""Benchmark (issue 16 item 9): codeflow on one and two worker processes, on memory,
SQLite and PostgreSQL, against the Authlib + SQLAlchemy peer on the same PostgreSQL,
measured in one run.

- HTTP rows: ``codeflow serve`` run as an operator runs it (the console script, a TOML
  config file declaring the client and the user, ``--auto-approve``, the default log
  level, its log to a file) with ``--workers 1`` and ``--workers 2``; and the peer
  (bench_peer.py run as a script) under waitress with the same 8 threads, on dicts and on
  PostgreSQL, and on dicts answering a refresh with an ID token as codeflow does (OIDC
  Core §12.2; the original peer does not, so codeflow signs twice per flow and it
  once): the like-for-like row. The load comes from bench_http_client in a process of
  its own: THREADS threads, each on its own keep-alive connection (a plain socket with
  the least parsing, bench_flow.HTTPCaller: the client's CPU shares the cores and caps
  what the server can show), running the checked flow (bench_flow.run_flow: authorize
  -> token with an RS256 ID token -> refresh -> introspect), bounded by count and by
  time, in ROUNDS turns over all servers so that a busy spell of the machine falls on
  all of them. Before the load, one flow from this process has the signature of each
  of its ID tokens checked against the server's /jwks, untimed.
- Server CPU per flow: utime + stime of the server process and its worker children, read
  from /proc before and after each load, over the flows served (each client thread's
  warm-up flow included). On PostgreSQL, also the CPU of the database backends serving
  that server (found by the ``application_name`` its connections carry), and for every
  row the load client's own CPU, since all of them share the machine's cores; and
  "others": the cores the machine's other processes kept busy meanwhile (/proc/stat
  less all of the above; other tenants of a shared machine, and PostgreSQL's background
  writers), which the row could not use: the "less others' CPU" ceilings leave them out.
- In-process rows: codeflow on PostgreSQL and the peer on the same PostgreSQL (each in a
  schema of its own), and codeflow on memory and the peer on dicts, interleaved.
- Statements and round trips per flow on PostgreSQL, counted on the wire: libpq's trace
  of every connection both servers open, over COUNTED_FLOWS flows run after the timed
  ones (one ReadyForQuery ends each round trip, one CommandComplete each statement).
- The goals of issue 16 as ratios of this run. Nothing is asserted about time.

Run with ``tox -e bench -- -k nodes`` (or ``pytest tests/benchmarks/test_bench_nodes.py
-s``); PostgreSQL rows need CODEFLOW_TEST_POSTGRES_URL (see tests/postgres_support.py)
and say "skipped: ..." without it. CODEFLOW_BENCH_SECONDS (default 3) is each row's load.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import bench_http_client
import bench_peer
import jwt
import pytest
from bench_flow import (
    CLIENT_ID,
    CLIENT_SECRET,
    REDIRECT,
    USERNAME,
    FlowResult,
    HTTPCaller,
    Target,
    WSGICaller,
    interleaved,
    run_flow,
)
from joserfc.jwk import RSAKey
from postgres_support import fresh_schema, server_url, with_options
from test_bench_flow import ISSUER, Table, codeflow_server, ratio, verify_id_token
from test_cli import free_port

import codeflow

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

SECONDS = float(os.environ.get("CODEFLOW_BENCH_SECONDS", "3"))
MAX_FLOWS = 5000  # per row; SECONDS usually ends a row first
THREADS = 6  # load client threads: enough connections that both workers get some
ROUNDS = 3  # turns over all HTTP servers, SECONDS / ROUNDS each
COUNTED_FLOWS = 20  # flows whose statements and round trips are counted
STARTUP = 60.0  # seconds a server may take to answer (a PostgreSQL schema to migrate)
CODEFLOW = Path(sys.executable).with_name("codeflow")  # the console script pip installed
TICK = os.sysconf("SC_CLK_TCK")
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
# The floor of the HTTP rows: a bottle hello-world app served by codeflow.serve, as
# `codeflow serve` serves (waitress, its threads and limits), loaded with as many
# requests per "flow" as a flow has (bench_http_client's hello mode).
FLOOR_SERVER = (
    "import sys, bottle, codeflow; app = bottle.Bottle(); "
    "app.route('/')(lambda: 'Hello, world!'); "
    "codeflow.serve(app, '127.0.0.1', int(sys.argv[1]))"
)
GOALS = {  # issue 16, as ratios in one run
    "postgres_vs_memory": 0.6,  # PostgreSQL at one worker over memory, flows/s over HTTP
    "two_workers": 1.6,  # two workers over one, flows/s over HTTP, SQLite and PostgreSQL
    "cpu_vs_peer": 0.5,  # server CPU per flow over HTTP, codeflow over the peer, at most
    "in_process": 2.5,  # codeflow flows/s over the peer's, in-process, memory and dicts
}


@pytest.fixture(scope="module")
def node_key() -> codeflow.SigningKey:
    return codeflow.new_signing_key("RS256", 0.0)


def postgres() -> tuple[str | None, str]:
    """(the test server's URL, "") or (None, why the PostgreSQL rows are skipped)."""
    try:
        return server_url(), ""
    except pytest.skip.Exception as skip:
        return None, "skipped: " + skip.msg.split(" (")[0]  # the reason, not the how-to


###############################################################################
# Processes and their CPU ######################################################
###############################################################################


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat's fields from the third (state) on: the name may hold spaces."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (a server's workers)."""
    found = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if int(_stat(int(entry))[1]) == pid:
                    found.append(int(entry))
    return found


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime + stime of each live process of ``pids`` (fields 14 and 15 of its stat)."""
    found = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = _stat(pid)
            found[pid] = (int(fields[11]) + int(fields[12])) / TICK
    return found


def backends(url: str | None, application_name: str) -> list[int]:
    """The PostgreSQL backend processes of the connections named ``application_name``
    (the server runs on this machine; its processes' CPU is in /proc)."""
    if url is None or not application_name:
        return []
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s", [application_name]
        ).fetchall()
    return [pid for (pid,) in rows]


@dataclass
class Node:
    """A server under HTTP load, and what the load measured on it."""

    label: str
    process: subprocess.Popen[bytes] | None = None
    url: str = ""
    application_name: str = ""  # its PostgreSQL connections', if any
    hello: bool = False  # the floor: hello-world requests instead of flows
    refresh_id_token: bool = True  # answers a refresh with an ID token (OIDC Core §12.2)
    note: str = ""  # why it has no numbers
    times: list[float] = field(default_factory=list)
    wall: float = 0.0
    flows: int = 0  # served, warm-up flows included
    server_cpu: Counter[int] = field(default_factory=Counter)  # by process
    db_cpu: float = 0.0
    client_cpu: float = 0.0
    others_cpu: float = 0.0  # the machine's CPU outside this row's processes, seconds
    window: float = 0.0  # seconds over which others_cpu was taken

    @property
    def rate(self) -> float | None:
        return len(self.times) / self.wall if self.times else None

    def per_flow(self, seconds: float) -> float | None:
        return seconds / self.flows if self.flows else None


def start(node: Node, command: list[str], log: Path, stack: contextlib.ExitStack) -> None:
    """Run ``command`` (a server on node.url) until the stack closes; wait until it
    answers HTTP."""
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 -- our own command line
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    stack.callback(stop, process)
    deadline = time.monotonic() + STARTUP
    host, port = node.url.split("://")[1].split(":")
    while True:
        assert process.poll() is None, f"{command} exited: {log.read_text()[-3000:]}"
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        try:
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            break
        except OSError:
            assert time.monotonic() < deadline, f"{command} did not answer: {log.read_text()}"
            time.sleep(0.05)
        finally:
            conn.close()
    node.process = process


def stop(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, as an operator stops it (codeflow stops its workers); then SIGKILL."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


def codeflow_config(path: Path) -> Path:
    """The config file declaring the benchmark's client and user (JSON strings are TOML
    basic strings)."""
    scopes = ["openid", "profile", "email", "offline_access"]
    path.write_text(
        "[[clients]]\n"
        f"client_id = {json.dumps(CLIENT_ID)}\n"
        f"client_secret = {json.dumps(CLIENT_SECRET)}\n"
        f"redirect_uris = {json.dumps([REDIRECT])}\n"
        f"scopes = {json.dumps(scopes)}\n"
        'grant_types = ["authorization_code", "refresh_token"]\n\n'
        "[[users]]\n"
        f"username = {json.dumps(USERNAME)}\n"
        'claims = { name = "Alice" }\n'
    )
    return path


def refused_note() -> str:
    """What the CLI says to ``serve --workers 2`` on memory, which it refuses (each
    worker's memory would be its own): there is no such row to measure."""
    out = subprocess.run(  # noqa: S603 -- our own command line
        [str(CODEFLOW), "serve", "--workers", "2", "--port", str(free_port())],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 2, out  # it must not serve
    return f"none: the CLI refuses it (exit {out.returncode}): memory is per process"


def machine_cpu() -> float:
    """CPU seconds all processes have spent, from /proc/stat's first line (user, nice,
    system, irq, softirq and steal; not idle nor iowait)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return sum(int(fields[i]) for i in (1, 2, 3, 6, 7, 8)) / TICK


def children_cpu() -> float:
    """CPU seconds of this process's waited-for children: the load clients, start-up
    included."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load(node: Node, seconds: float, max_flows: int, pg_url: str | None) -> None:
    """One turn of load on ``node`` from bench_http_client in a process of its own; adds
    its flows, times and CPU to the node's, and what other processes of the machine
    (other tenants) spent meanwhile: the cores they took were not the row's to use."""
    assert node.process is not None
    pids = process_tree(node.process.pid)
    before = cpu_seconds(pids)
    db_before = cpu_seconds(backends(pg_url, node.application_name))
    all_before, client_before = machine_cpu(), children_cpu()
    started = time.monotonic()
    out = subprocess.run(  # noqa: S603 -- this interpreter, our script
        [sys.executable, bench_http_client.__file__, node.url, str(THREADS), str(seconds),
         str(max_flows), *(["hello"] if node.hello else []),
         *([] if node.hello or node.refresh_id_token else ["no-refresh-id-token"])],
        capture_output=True, text=True, timeout=seconds + 120, check=False,
    )  # fmt: skip
    window = time.monotonic() - started
    all_after, client_after = machine_cpu(), children_cpu()
    after = cpu_seconds(pids)
    db_after = cpu_seconds(backends(pg_url, node.application_name))
    assert out.returncode == 0, out.stderr[-3000:]  # a failed check in the client, say
    result = json.loads(out.stdout)
    node.times += result["times"]
    node.wall += result["wall"]
    node.flows += len(result["times"]) + THREADS  # and one warm-up flow per thread
    node.client_cpu += result["cpu"]
    for pid, cpu in after.items():
        node.server_cpu[pid] += cpu - before.get(pid, 0.0)
    db = sum(cpu - db_before.get(pid, 0.0) for pid, cpu in db_after.items())
    node.db_cpu += db
    ours = sum(after.values()) - sum(before.values()) + db + client_after - client_before
    node.others_cpu += max(0.0, all_after - all_before - ours)
    node.window += window


def check_signatures(node: Node) -> None:
    """One flow from this process, untimed, and the signature of each of its ID tokens
    (the code exchange's, and the refresh's where the node sends one) checked against
    the node's /jwks; the timed flows check every claim but no signature."""
    call = HTTPCaller(node.url)
    try:
        result = FlowResult()
        run_flow(call, Target(node.url, node.refresh_id_token), result)
        keys = call("GET", "/jwks").json()["keys"]
    finally:
        call.close()
    for token in filter(None, (result.id_token, result.refresh_id_token)):
        kid = jwt.get_unverified_header(token)["kid"]
        verify_id_token(token, jwt.PyJWK(next(k for k in keys if k["kid"] == kid)).key, node.url)


def measure_http(tmp_path: Path, pg_url: str | None, pg_note: str) -> dict[str, Node]:
    """All HTTP rows: every server started first, then loaded in turns."""
    config = codeflow_config(tmp_path / "codeflow.toml")
    nodes: dict[str, Node] = {}
    with contextlib.ExitStack() as stack:

        def serve(name: str, label: str, storage: str | None, workers: int, *extra: str) -> None:
            node = nodes[name] = Node(label, url=f"http://127.0.0.1:{free_port()}")
            if storage is None:
                node.note = pg_note
                return
            if storage.startswith("postgresql"):
                node.application_name = f"codeflow-bench-{secrets.token_hex(4)}"
                schema_url, _ = stack.enter_context(fresh_schema())
                storage = with_options(schema_url, application_name=node.application_name)
            command = [str(CODEFLOW), "serve", "--port", node.url.rsplit(":", 1)[1],
                       "--config", str(config), "--auto-approve", USERNAME,
                       "--workers", str(workers), "--storage", storage, *extra]  # fmt: skip
            start(node, command, tmp_path / f"{name.replace('/', '-')}.log", stack)

        def serve_peer(name: str, label: str, on_postgres: bool, at_refresh: bool = False) -> None:
            node = nodes[name] = Node(label, refresh_id_token=at_refresh)
            port = free_port()
            node.url = f"http://127.0.0.1:{port}"
            command = [sys.executable, bench_peer.__file__, str(port)]
            if at_refresh:
                command.append("--refresh-id-token")
            if on_postgres:
                if pg_url is None:
                    node.note = pg_note
                    return
                node.application_name = f"authlib-bench-{secrets.token_hex(4)}"
                _, schema = stack.enter_context(fresh_schema())
                command += [with_options(pg_url, application_name=node.application_name), schema]
            start(node, command, tmp_path / f"{name.replace('/', '-')}.log", stack)

        sqlite = f"sqlite:///{tmp_path / 'codeflow.db'}"
        serve("memory/1", "codeflow serve, memory, --workers 1", "memory", 1)
        nodes["memory/2"] = Node("codeflow serve, memory, --workers 2", note=refused_note())
        serve("sqlite/1", "codeflow serve, SQLite, --workers 1", sqlite, 1)
        serve("sqlite/2", "codeflow serve, SQLite, --workers 2",
              f"sqlite:///{tmp_path / 'codeflow-2.db'}", 2)  # fmt: skip
        serve("postgresql/1", "codeflow serve, PostgreSQL, --workers 1",
              pg_url and "postgresql", 1)  # fmt: skip
        serve("postgresql/2", "codeflow serve, PostgreSQL, --workers 2",
              pg_url and "postgresql", 2)  # fmt: skip
        serve_peer("peer/memory", "Authlib + Flask peer, dicts", False)
        serve_peer("peer/postgresql", "Authlib + SQLAlchemy peer, PostgreSQL", True)
        serve_peer("peer/memory-refresh", "Authlib peer, dicts, ID token at refresh", False, True)
        floor = nodes["floor"] = Node("floor: 4 x bottle hello, codeflow's waitress",
                                      url=f"http://127.0.0.1:{free_port()}", hello=True)
        start(floor, [sys.executable, "-c", FLOOR_SERVER, floor.url.rsplit(":", 1)[1]],
              tmp_path / "floor.log", stack)  # fmt: skip
        serve("what-if/quiet", "what if: memory, --log-level warning", "memory", 1,
              "--log-level", "warning")  # fmt: skip
        running = [node for node in nodes.values() if node.process is not None]
        for node in running:
            if not node.hello:
                check_signatures(node)
        for node in running:  # warm-up: first connections, each worker's secret check
            warm = Node(node.label, node.process, node.url, hello=node.hello,
                        refresh_id_token=node.refresh_id_token)  # fmt: skip
            load(warm, min(0.5, SECONDS), 200, None)
        for _ in range(ROUNDS):
            for node in running:
                load(node, SECONDS / ROUNDS, MAX_FLOWS // ROUNDS, pg_url)
    return nodes


###############################################################################
# In-process, and PostgreSQL on the wire ########################################
###############################################################################


class WireCount:
    """Counts what psycopg connections say to PostgreSQL, from libpq's trace of each
    connection opened while it is installed (codeflow's pool and SQLAlchemy's alike):
    while ``counting()``, every message is traced to a file per connection."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.connections: weakref.WeakSet[Any] = weakref.WeakSet()
        self.files: list[BinaryIO] = []
        self.tracing = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[WireCount]:
        import psycopg

        original = psycopg.Connection.connect
        wire = self

        def connect(cls: type[psycopg.Connection[Any]], *args: Any, **kwargs: Any) -> Any:
            conn = original.__func__(cls, *args, **kwargs)  # type: ignore[attr-defined]
            wire.connections.add(conn)
            if wire.tracing:
                wire.trace(conn)
            return conn

        psycopg.Connection.connect = classmethod(connect)  # type: ignore[assignment]
        psycopg.connect = psycopg.Connection.connect  # the alias SQLAlchemy calls
        try:
            yield self
        finally:
            psycopg.Connection.connect = original  # type: ignore[method-assign]
            psycopg.connect = original

    def trace(self, conn: Any) -> None:
        import psycopg

        out = tempfile.TemporaryFile(dir=self.directory)
        self.files.append(out)
        conn.pgconn.trace(out.fileno())
        conn.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)

    @contextlib.contextmanager
    def counting(self) -> Iterator[Counter[str]]:
        """Trace every connection in the block; the counts, filled in when it ends:
        round trips (ReadyForQuery), statements (CommandComplete) by command, errors."""
        counts: Counter[str] = Counter()
        self.files.clear()
        self.tracing = True
        for conn in list(self.connections):
            if not conn.closed:
                self.trace(conn)
        try:
            yield counts
        finally:
            self.tracing = False
            for conn in list(self.connections):
                if not conn.closed:
                    conn.pgconn.untrace()  # flushes the trace
            for out in self.files:
                out.seek(0)
                for line in out.read().decode(errors="replace").splitlines():
                    fields = line.split("\t")
                    if len(fields) < 3 or fields[0] != "B":
                        continue
                    if fields[2] == "ReadyForQuery":
                        counts["round trips"] += 1
                    elif fields[2] == "CommandComplete":
                        counts[fields[3].strip(' "').split()[0]] += 1
                    elif fields[2] == "ErrorResponse":
                        counts["errors"] += 1
                out.close()


TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "SET")


def measure_in_process(
    key: codeflow.SigningKey, tmp_path: Path, pg_url: str | None
) -> dict[str, Any]:
    """In-process flows, interleaved: codeflow and the peer on memory / dicts and on one
    PostgreSQL; then the statements and round trips of COUNTED_FLOWS flows on it."""
    subjects: dict[str, Callable[[], None]] = {}
    counts: dict[str, Counter[str]] = {}
    peer_key = RSAKey.import_key(key.private_pem)
    public = jwt.PyJWK(peer_key.as_dict(private=False)).key
    peer_target = Target(bench_peer.ISSUER, refresh_id_token=False)
    peer_host = bench_peer.ISSUER.split("://")[1]
    wire = WireCount(tmp_path)
    with contextlib.ExitStack() as stack:

        def add(name: str, call: WSGICaller, target: Target, public_key: Any) -> None:
            result = FlowResult()
            run_flow(call, target, result)  # warm-up, then the full ID token checks, untimed
            for token in filter(None, (result.id_token, result.refresh_id_token)):
                verify_id_token(token, public_key, target.issuer)
            subjects[name] = lambda: run_flow(call, target)

        def codeflow_on(name: str, storage: Any) -> None:
            srv = codeflow_server(key, storage)
            call = WSGICaller(srv.wsgi)
            jwks = call("GET", "/jwks").json()
            public_key = jwt.PyJWK(next(k for k in jwks["keys"] if k["kid"] == key.kid)).key
            add(name, call, Target(ISSUER), public_key)

        def peer_on(name: str, store: bench_peer.DictStore | bench_peer.SQLStore) -> None:
            stack.callback(store.close)
            app = bench_peer.create_app(store, peer_key, key.kid)
            add(name, WSGICaller(app, host=peer_host, scheme="https"), peer_target, public)

        codeflow_on("codeflow/memory", None)
        peer_on("peer/memory", bench_peer.DictStore())
        if pg_url is not None:
            stack.enter_context(wire.installed())
            schema_url, _ = stack.enter_context(fresh_schema())
            storage = codeflow.open_storage(schema_url)
            stack.callback(storage.close)
            codeflow_on("codeflow/postgresql", storage)
            _, schema = stack.enter_context(fresh_schema())
            peer_on("peer/postgresql", bench_peer.SQLStore(url=pg_url, schema=schema))
        times = interleaved(subjects, rounds=6, max_n=MAX_FLOWS, max_s=SECONDS)
        for name in ("codeflow/postgresql", "peer/postgresql"):
            if name in subjects:
                with wire.counting() as counts[name]:
                    for _ in range(COUNTED_FLOWS):
                        subjects[name]()
    return {"times": times, "counts": counts}


###############################################################################
# The table ###################################################################
###############################################################################


def count_row(table: Table, name: str, value: float | None, note: str = "") -> None:
    """A count per flow, in the p50 column."""
    shown = "-" if value is None else f"{value:.1f}"
    table.lines.append(f"  {name:<44} {shown:>8} {'':>8} {'':>8} {'':>6}  {note}")


def test_node_benchmarks(
    node_key: codeflow.SigningKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 16 item 9: one table; codeflow on workers and storages, and the peer, in
    one run."""
    pg_url, pg_note = postgres()
    load_before = os.getloadavg()
    nodes = measure_http(tmp_path, pg_url, pg_note)
    in_process = measure_in_process(node_key, tmp_path, pg_url)
    load_after = os.getloadavg()
    times, counts = in_process["times"], in_process["counts"]

    table = Table()
    table.section(
        f"HTTP on 127.0.0.1, load from another process: {THREADS} client threads, keep-alive; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after"
    )
    for node in nodes.values():
        table.row(node.label, node.times or None, node.note or "per s: all threads together",
                  rate=node.rate)  # fmt: skip
    table.section(
        "server CPU per flow over HTTP, ms (and the database's, the client's; others: "
        "cores busy outside the row)"
    )
    for node in nodes.values():
        server = node.per_flow(sum(node.server_cpu.values()))
        if server is None:
            table.value(node.label, None, node.note)
            continue
        parts = []
        if node.application_name:
            parts.append(f"database {1000 * (node.per_flow(node.db_cpu) or 0):.3f}")
        parts.append(f"client {1000 * (node.per_flow(node.client_cpu) or 0):.3f}")
        workers = sorted(
            (cpu for pid, cpu in node.server_cpu.items() if pid != node.process.pid),  # type: ignore[union-attr]
            reverse=True,
        )
        if len(workers) > 1:
            total = sum(workers) or 1
            parts.append("workers " + "/".join(f"{100 * w / total:.0f}%" for w in workers))
        cores = (node.rate or 0) * server
        parts.append(f"server busy {cores:.2f} cores")
        parts.append(f"others {node.others_cpu / (node.window or 1):.2f}")
        table.value(node.label, server, ", ".join(parts))

    floor = nodes["floor"].per_flow(sum(nodes["floor"].server_cpu.values()))
    for name, label in (
        ("memory/1", "codeflow, memory"),
        ("peer/memory", "Authlib peer, dicts"),
        ("peer/memory-refresh", "peer, refresh ID token"),
    ):
        node = nodes[name]
        server = node.per_flow(sum(node.server_cpu.values()))
        table.value(f"above the floor: {label}", server - floor if server and floor else None,
                    "server CPU per flow - the floor's")  # fmt: skip

    table.section("in-process flow, every answer checked")
    for name, label in (
        ("codeflow/postgresql", "codeflow, PostgreSQLStorage"),
        ("peer/postgresql", "Authlib + SQLAlchemy peer, PostgreSQL"),
        ("codeflow/memory", "codeflow, MemoryStorage"),
        ("peer/memory", "Authlib + Flask peer, dicts"),
    ):
        table.row(label, times.get(name), "" if name in times else pg_note)

    table.section(f"PostgreSQL per flow, on the wire (libpq trace of {COUNTED_FLOWS} flows)")
    for name, label in (
        ("codeflow/postgresql", "codeflow"),
        ("peer/postgresql", "Authlib + SQLAlchemy peer"),
    ):
        found = counts.get(name)
        if found is None:
            count_row(table, f"{label}: statements", None, pg_note)
            continue
        control = sum(found[c] for c in TRANSACTION_CONTROL)
        statements = sum(v for k, v in found.items() if k not in ("round trips", "errors"))
        by_kind = ", ".join(
            f"{k} {v / COUNTED_FLOWS:g}" for k, v in found.most_common()
            if k not in ("round trips", "errors")
        )  # fmt: skip
        count_row(table, f"{label}: statements", statements / COUNTED_FLOWS, by_kind)
        count_row(table, f"{label}: round trips", found["round trips"] / COUNTED_FLOWS,
                  f"transaction control {control / COUNTED_FLOWS:g}, "
                  f"errors {found['errors'] / COUNTED_FLOWS:g}")  # fmt: skip

    def rate(name: str) -> float | None:
        return nodes[name].rate

    def cpu(name: str, with_db: bool = False) -> float | None:
        node = nodes[name]
        return node.per_flow(sum(node.server_cpu.values()) + (node.db_cpu if with_db else 0))

    def ceiling(name: str, others_of: str = "") -> float | None:
        """At most: the cores (less what other processes took during row ``others_of``)
        over the CPU a flow costs at row ``name``, over that row's flows/s."""
        node, other = nodes[name], nodes[others_of] if others_of else None
        every = node.per_flow(sum(node.server_cpu.values()) + node.db_cpu + node.client_cpu)
        taken = other.others_cpu / other.window if other and other.window else 0.0
        return ratio((CORES - taken) / every if every else None, node.rate)

    def in_rate(name: str) -> float | None:
        return 1 / statistics.median(times[name]) if times.get(name) else None

    table.section("goals (issue 16), ratios in this run")
    goal_rows = [
        ("PostgreSQL / memory flows/s, HTTP, 1 worker",
         ratio(rate("postgresql/1"), rate("memory/1")),
         f">= {GOALS['postgres_vs_memory']}", lambda v: v >= GOALS["postgres_vs_memory"]),
        ("2 / 1 workers flows/s, HTTP, SQLite", ratio(rate("sqlite/2"), rate("sqlite/1")),
         f">= {GOALS['two_workers']}", lambda v: v >= GOALS["two_workers"]),
        ("2 / 1 workers flows/s, HTTP, PostgreSQL",
         ratio(rate("postgresql/2"), rate("postgresql/1")),
         f">= {GOALS['two_workers']}", lambda v: v >= GOALS["two_workers"]),
        # The most two workers could give here: all the machine's cores busy with the CPU
        # a flow costs at one worker (the server's, the database's and the load client's,
        # which share the cores), over the flows/s one worker served.
        ("  at most on this machine, SQLite", ceiling("sqlite/1"),
         f"none (info): {CORES} cores / CPU per flow", None),
        ("  at most on this machine, PostgreSQL", ceiling("postgresql/1"),
         f"none (info): {CORES} cores / CPU per flow", None),
        # The same less the cores other processes of the machine (other tenants) took
        # during the two-worker row, the "others" of the CPU section.
        ("  at most, less others' CPU, SQLite", ceiling("sqlite/1", "sqlite/2"),
         "none (info): cores left / CPU per flow", None),
        ("  at most, less others' CPU, PostgreSQL", ceiling("postgresql/1", "postgresql/2"),
         "none (info): cores left / CPU per flow", None),
        # What a second worker costs per flow (locks, a second pool): on two cores of
        # its own, two workers could serve at most 2 / this as many flows/s as one.
        ("  server CPU/flow, 2 / 1 workers, SQLite",
         ratio(cpu("sqlite/2"), cpu("sqlite/1")), "none (info)", None),
        ("  server CPU/flow, 2 / 1 workers, PostgreSQL",
         ratio(cpu("postgresql/2"), cpu("postgresql/1")), "none (info)", None),
        ("server CPU/flow, codeflow/peer, memory", ratio(cpu("memory/1"), cpu("peer/memory")),
         f"<= {GOALS['cpu_vs_peer']}", lambda v: v <= GOALS["cpu_vs_peer"]),
        ("  the same, above the floor",
         ratio(cpu("memory/1") - floor if cpu("memory/1") and floor else None,
               cpu("peer/memory") - floor if cpu("peer/memory") and floor else None),
         "none (info)", None),
        # Like for like (OIDC Core §12.2): the peer signing an ID token at the refresh too,
        # two RS256 signatures per flow each; the goal row above weighs two against one.
        ("  the same, peer signing at refresh too",
         ratio(cpu("memory/1"), cpu("peer/memory-refresh")), "none (info)", None),
        ("    and above the floor",
         ratio(cpu("memory/1") - floor if cpu("memory/1") and floor else None,
               cpu("peer/memory-refresh") - floor if cpu("peer/memory-refresh") and floor
               else None), "none (info)", None),
        ("server CPU/flow, codeflow/peer, PostgreSQL",
         ratio(cpu("postgresql/1"), cpu("peer/postgresql")), "none (info)", None),
        ("  the same, database CPU included",
         ratio(cpu("postgresql/1", True), cpu("peer/postgresql", True)), "none (info)", None),
        ("codeflow/peer flows/s, in-process, memory",
         ratio(in_rate("codeflow/memory"), in_rate("peer/memory")),
         f">= {GOALS['in_process']}", lambda v: v >= GOALS["in_process"]),
        ("codeflow/peer in-process flows/s, PostgreSQL",
         ratio(in_rate("codeflow/postgresql"), in_rate("peer/postgresql")), "none (info)", None),
        ("codeflow/peer flows/s, HTTP, PostgreSQL",
         ratio(rate("postgresql/1"), rate("peer/postgresql")), "none (info)", None),
    ]  # fmt: skip
    for name, value, goal, test in goal_rows:
        met = None if value is None or test is None else test(value)
        table.ratio(name, value, goal, met)
    with capsys.disabled():
        print(table.render())
