"""Load for the HTTP rows, from a process of its own so that the client's threads do not
share the server's GIL:

    python bench_http_client.py URL THREADS SECONDS MAX_FLOWS [hello | no-refresh-id-token]

runs the checked flow (bench_flow.run_flow; with ``no-refresh-id-token`` the server
must answer a refresh without an ID token, as the Authlib peer by default), or with
``hello`` four GET / answered "Hello, world!" (the floor: as many requests as a flow, no
OAuth), from THREADS threads, each on its own keep-alive connection, until MAX_FLOWS in
all or SECONDS, after one warm-up flow per thread; prints JSON: the seconds of each
timed flow, the wall time, and the CPU seconds this process spent in load() (warm-up
included). The connections are bench_flow.HTTPCaller's plain sockets, not http.client,
whose header parsing cost about as much CPU as the rest of this client: the client's
CPU per flow is printed in the nodes table, since it shares the cores with the server.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from bench_flow import STEPS, Caller, HTTPCaller, Target, run_flow


def hello(call: Caller, target: Target) -> None:
    """As many requests as a flow has, to a hello-world app: the floor of the HTTP rows."""
    for _ in STEPS:
        r = call("GET", "/")
        assert r.status == 200 and r.body == b"Hello, world!", r


def load(
    url: str, threads: int, seconds: float, max_flows: int,
    flow: Callable[[Caller, Target], None] = run_flow, refresh_id_token: bool = True,
) -> tuple[list[float], float]:  # fmt: skip
    """Flows from ``threads`` threads; (seconds of each flow, wall seconds)."""
    target = Target(url, refresh_id_token)
    quota = max(1, max_flows // threads)
    calls = [HTTPCaller(url) for _ in range(threads)]
    try:
        for call in calls:
            flow(call, target)  # warm-up: connect, first request
        deadline = time.perf_counter() + seconds

        def client(call: HTTPCaller) -> list[float]:
            times: list[float] = []
            while len(times) < quota and time.perf_counter() < deadline:
                start = time.perf_counter()
                flow(call, target)
                times.append(time.perf_counter() - start)
            return times

        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            per_thread = list(pool.map(client, calls))
        wall = time.perf_counter() - started
    finally:
        for call in calls:
            call.close()
    return [t for times in per_thread for t in times], wall


if __name__ == "__main__":
    url, threads, seconds, max_flows = sys.argv[1:5]
    mode = sys.argv[5] if len(sys.argv) > 5 else ""
    assert mode in ("", "hello", "no-refresh-id-token"), mode
    flow = hello if mode == "hello" else run_flow
    cpu = time.process_time()
    times, wall = load(url, int(threads), float(seconds), int(max_flows), flow,
                       refresh_id_token=mode != "no-refresh-id-token")  # fmt: skip
    cpu = time.process_time() - cpu
    json.dump({"times": times, "wall": wall, "cpu": cpu}, sys.stdout)
