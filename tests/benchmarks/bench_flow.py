"""What the flow benchmarks share: two callers (a bare in-process WSGI caller and a
keep-alive HTTP/1.1 caller on a plain socket), the authorization code flow as a client
runs it with every answer checked (an ID token at the refresh too where the target
sends one, OIDC Core §12.2), and a timer bounded by count and time.

The in-process caller builds a PEP 3333 environ and nothing else: no ``wsgiref.validate``
(tests/wsgi_client.py checks the protocol; here it would add its own cost to every
request) and no cookie jar (auto-approve sets no cookie the flow needs).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import secrets
import socket
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

REDIRECT = "http://127.0.0.1:9000/callback"
CLIENT_ID, CLIENT_SECRET = "bench-app", "bench-secret"
USERNAME = "alice"
SCOPE = "openid profile offline_access"
BASIC = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
FORM_HEADERS = {"Authorization": BASIC, "Content-Type": "application/x-www-form-urlencoded"}
STEPS = ("authorize", "token", "refresh", "introspect")


@dataclass(slots=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:  # what a failed assert shows
        return f"Reply({self.status}, {self.headers!r}, {self.body[:500]!r})"


class Caller(Protocol):
    def __call__(
        self, method: str, path: str, query: str = "", body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> Reply: ...  # fmt: skip


class WSGICaller:
    """Calls a WSGI app in this thread, as a server would, with the least work."""

    def __init__(self, app: Callable, host: str = "127.0.0.1:8000", scheme: str = "http"):
        self.app = app
        name, _, port = host.partition(":")
        self.base = {
            "SCRIPT_NAME": "",
            "SERVER_NAME": name,
            "SERVER_PORT": port or ("443" if scheme == "https" else "80"),
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": host,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scheme,
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }

    def __call__(
        self, method: str, path: str, query: str = "", body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> Reply:  # fmt: skip
        env = dict(self.base)
        env["REQUEST_METHOD"] = method
        env["PATH_INFO"] = path
        env["QUERY_STRING"] = query
        env["CONTENT_LENGTH"] = str(len(body))
        env["wsgi.input"] = io.BytesIO(body)
        env["wsgi.errors"] = errors = io.StringIO()
        for name, value in (headers or {}).items():
            key = name.upper().replace("-", "_")
            env[key if key == "CONTENT_TYPE" else "HTTP_" + key] = value
        answer: list = []

        def start_response(status: str, response_headers: list, exc_info: Any = None) -> Any:
            answer[:] = [status, response_headers]
            return None

        result = self.app(env, start_response)
        try:
            data = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status = int(answer[0][:3])
        assert status < 500, errors.getvalue() or data  # a traceback behind a 500
        return Reply(status, {k.lower(): v for k, v in answer[1]}, data)


class HTTPCaller:
    """One keep-alive HTTP/1.1 connection on a plain socket, with the least work per
    request: the load client shares the machine's cores with the server it measures, so
    its CPU caps the HTTP rows (with http.client, whose header parsing goes through
    email.parser, the client spent about twice the CPU per flow). Enough HTTP for
    these servers and no more: the request in one sendall; the status line and headers
    split on CRLF, names lower-cased; a Content-Length body. Anything else (a closed
    connection, no Content-Length, bytes beyond the response, ``Connection: close``)
    fails loudly: a load run never reconnects, so a server cannot hide an error in one."""

    def __init__(self, base_url: str) -> None:
        parts = urllib.parse.urlsplit(base_url)
        assert parts.scheme == "http" and parts.hostname and parts.port, base_url
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        # Each request is one write and the client waits for its answer: no Nagle delay.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.host = f"Host: {parts.netloc}\r\n"

    def __call__(
        self, method: str, path: str, query: str = "", body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> Reply:  # fmt: skip
        head = f"{method} {path}{'?' + query if query else ''} HTTP/1.1\r\n{self.host}"
        if body or method != "GET":
            head += f"Content-Length: {len(body)}\r\n"
        for name, value in (headers or {}).items():
            head += f"{name}: {value}\r\n"
        self.sock.sendall(head.encode("latin-1") + b"\r\n" + body)
        buffer = self._recv(b"")
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            buffer = self._recv(buffer)
        status_line, *lines = buffer[:end].decode("latin-1").split("\r\n")
        assert status_line.startswith("HTTP/1.1 "), status_line
        found = {}
        for line in lines:
            name, _, value = line.partition(":")
            found[name.lower()] = value.strip()
        assert found.get("connection", "").lower() != "close", (status_line, found)
        # Both servers (waitress under bottle or Flask) send every body with its length;
        # a chunked one would be new: say so rather than parse it.
        assert "content-length" in found, ("no Content-Length (chunked?)", status_line, found)
        size, data = int(found["content-length"]), buffer[end + 4 :]
        while len(data) < size:
            data = self._recv(data)
        assert len(data) == size, ("bytes beyond the response", data[size:][:200])
        return Reply(int(status_line[9:12]), found, data)

    def _recv(self, buffer: bytes) -> bytes:
        more = self.sock.recv(65536)
        if not more:
            raise ConnectionError("the server closed the connection")  # never reconnect
        return buffer + more

    def close(self) -> None:
        self.sock.close()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unverified_jwt(token: str) -> tuple[dict, dict]:
    """Header and claims of a JWS, signature not checked (the caller checks it once,
    outside the timed loop)."""
    header, payload, signature = token.split(".")
    assert signature
    return (
        json.loads(base64.urlsafe_b64decode(header + "==")),
        json.loads(base64.urlsafe_b64decode(payload + "==")),
    )


@dataclass(frozen=True)
class Target:
    """A server under test, as a client configured for it knows it."""

    issuer: str
    # OIDC Core §12.2: whether it answers a refresh with an ID token (codeflow does; the
    # peer does with bench_peer's refresh_id_token); run_flow requires exactly this.
    refresh_id_token: bool = True
    authorize: str = "/authorize"
    token: str = "/token"
    introspect: str = "/introspect"


@dataclass
class FlowResult:
    """The last flow's tokens, for the checks that are done once, untimed."""

    id_token: str = ""
    refresh_id_token: str = ""  # the refresh's, if the target sends one
    access_token: str = ""
    refresh_token: str = ""
    steps: list[tuple[float, ...]] = field(default_factory=list)  # per flow, in STEPS order


def run_flow(call: Caller, target: Target, result: FlowResult | None = None) -> None:
    """The authorization code flow of a confidential client, every answer checked:
    authorize (PKCE S256, nonce; auto-approved) -> token (RS256 ID token) -> refresh
    (rotated) -> introspect the new access token."""
    clock = time.perf_counter
    verifier = secrets.token_urlsafe(48)
    state, nonce = secrets.token_urlsafe(8), secrets.token_urlsafe(8)
    query = urllib.parse.urlencode({
        "response_type": "code", "client_id": CLIENT_ID, "redirect_uri": REDIRECT,
        "scope": SCOPE, "state": state, "nonce": nonce,
        "code_challenge": b64url(hashlib.sha256(verifier.encode()).digest()),
        "code_challenge_method": "S256",
    })  # fmt: skip

    t0 = clock()
    r = call("GET", target.authorize, query)
    t1 = clock()
    location = r.headers.get("location", "")
    assert r.status == 302 and location.startswith(REDIRECT + "?"), r
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    assert params["state"] == state and params.get("iss") == target.issuer, params
    assert "error" not in params, params

    form = {"grant_type": "authorization_code", "code": params["code"],
            "redirect_uri": REDIRECT, "code_verifier": verifier}  # fmt: skip
    t2 = clock()
    r = call("POST", target.token, body=urllib.parse.urlencode(form).encode(), headers=FORM_HEADERS)
    t3 = clock()
    assert r.status == 200 and "no-store" in r.headers.get("cache-control", ""), r
    tokens = r.json()
    assert tokens["token_type"].lower() == "bearer" and tokens["expires_in"] > 0, tokens
    assert set(tokens["scope"].split()) == set(SCOPE.split()), tokens
    access, refresh = tokens["access_token"], tokens["refresh_token"]
    header, claims = unverified_jwt(tokens["id_token"])
    assert header["alg"] == "RS256" and header["kid"], header
    aud = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    assert claims["iss"] == target.issuer and aud == [CLIENT_ID], claims
    assert claims["sub"] and claims["nonce"] == nonce and claims["exp"] > time.time(), claims
    assert claims["at_hash"] == b64url(hashlib.sha256(access.encode()).digest()[:16]), claims

    form = {"grant_type": "refresh_token", "refresh_token": refresh}
    t4 = clock()
    r = call("POST", target.token, body=urllib.parse.urlencode(form).encode(), headers=FORM_HEADERS)
    t5 = clock()
    assert r.status == 200, r
    renewed = r.json()
    assert renewed["access_token"] != access and renewed["refresh_token"] != refresh, renewed
    # OIDC Core §12.2: a refresh "might not contain an id_token": codeflow's does (a
    # second signature per flow), the peer's only when told to (target.refresh_id_token).
    assert ("id_token" in renewed) == target.refresh_id_token, renewed
    if target.refresh_id_token:
        header, again = unverified_jwt(renewed["id_token"])
        assert header["alg"] == "RS256" and header["kid"], header
        # §12.2: the same iss, sub and aud as the first; at_hash of the new access token.
        assert (again["iss"], again["sub"], again["aud"]) == (
            claims["iss"], claims["sub"], claims["aud"]), again  # fmt: skip
        assert again["exp"] > time.time(), again
        half = hashlib.sha256(renewed["access_token"].encode()).digest()[:16]
        assert again["at_hash"] == b64url(half), again

    t6 = clock()
    r = call(
        "POST", target.introspect, body=urllib.parse.urlencode(
            {"token": renewed["access_token"]}).encode(), headers=FORM_HEADERS,
    )  # fmt: skip
    t7 = clock()
    assert r.status == 200, r
    info = r.json()
    assert info["active"] is True and info["client_id"] == CLIENT_ID, info
    assert info["sub"] == claims["sub"] and "openid" in info["scope"].split(), info

    if result is not None:
        result.id_token, result.access_token = tokens["id_token"], renewed["access_token"]
        result.refresh_id_token = renewed.get("id_token", "")
        result.refresh_token = renewed["refresh_token"]
        result.steps.append((t1 - t0, t3 - t2, t5 - t4, t7 - t6))


def timed(
    fn: Callable[[], Any], *, max_n: int, max_s: float, warmup: int = 0
) -> list[float]:
    """Run fn until max_n calls or max_s seconds, whichever comes first; the seconds of
    each call."""
    for _ in range(warmup):
        fn()
    clock = time.perf_counter
    times: list[float] = []
    deadline = clock() + max_s
    while len(times) < max_n:
        start = clock()
        fn()
        end = clock()
        times.append(end - start)
        if end > deadline:
            break
    return times


def interleaved(
    subjects: dict[str, Callable[[], Any]], *, rounds: int, max_n: int, max_s: float
) -> dict[str, list[float]]:
    """Time several subjects in turns (rounds of max_n/rounds calls or max_s/rounds
    seconds each), so that a slow spell of the machine falls on all of them."""
    times: dict[str, list[float]] = {name: [] for name in subjects}
    for _ in range(rounds):
        for name, fn in subjects.items():
            times[name] += timed(fn, max_n=max_n // rounds, max_s=max_s / rounds)
    return times


def percentile(values: Iterable[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]
