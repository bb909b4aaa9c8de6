"""Real HTTP(S) servers on 127.0.0.1 that serve documents for codeflow to fetch: well
behaved ones, and hostile ones (a redirect loop, 10 MB, a slow drip, the wrong type), so
that the outbound-fetch defences are tested against sockets, not mocks."""

from __future__ import annotations

import http.server
import json
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codeflow_sdk.testing import _loopback_tls

Handler = Callable[[http.server.BaseHTTPRequestHandler], None]


def json_body(value: Any, *, status: int = 200, headers: dict[str, str] | None = None,
              ctype: str = "application/json") -> Handler:  # fmt: skip
    """A handler answering ``value`` as JSON (or the given content type)."""
    body = json.dumps(value).encode() if not isinstance(value, bytes) else value

    def handle(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for name, val in (headers or {}).items():
            h.send_header(name, val)
        h.end_headers()
        h.wfile.write(body)

    return handle


def delayed(value: Any, delay: float) -> Handler:
    """``value`` as JSON, after ``delay`` seconds of silence."""
    answer = json_body(value)

    def handle(h: http.server.BaseHTTPRequestHandler) -> None:
        time.sleep(delay)
        answer(h)

    return handle


def redirect_to(location: str) -> Handler:
    def handle(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return handle


def huge(size: int, *, declare_length: bool) -> Handler:
    """``size`` bytes of a JSON string, with Content-Length or streamed without it."""

    def handle(h: http.server.BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        if declare_length:
            h.send_header("Content-Length", str(size))
        else:
            h.send_header("Connection", "close")
        h.end_headers()
        chunk = b" " * 65536
        sent = 0
        try:
            while sent < size:
                h.wfile.write(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the fetcher hung up, as it should

    return handle


def drip(*, in_headers: bool, interval: float = 0.2, total: float = 30.0) -> Handler:
    """A slow-loris host: one byte every ``interval`` seconds, in the headers or the body."""

    def handle(h: http.server.BaseHTTPRequestHandler) -> None:
        payload = b'{"client_id": "' + b"x" * 1000 + b'"}'
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n")  # fmt: skip
        data = head + payload
        start = 0
        if not in_headers:
            h.wfile.write(head)
            h.wfile.flush()
            start = len(head)
        deadline = time.monotonic() + total
        try:
            for i in range(start, len(data)):
                if time.monotonic() > deadline:
                    return
                h.wfile.write(data[i : i + 1])
                h.wfile.flush()
                time.sleep(interval)
        except OSError:
            pass

    return handle


@dataclass
class DocumentHost:
    """A running host: ``routes`` maps a path to its handler; ``hits`` counts requests
    by path; ``url(path)`` is the URL of a path under ``host`` (an IP or a name)."""

    port: int
    scheme: str
    routes: dict[str, Handler] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)
    host_headers: list[str] = field(default_factory=list)
    address: str = "127.0.0.1"

    def url(self, path: str, host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.address}:{self.port}{path}"


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextmanager
def document_host(
    tls: ssl.SSLContext | None = None, address: str = "127.0.0.1"
) -> Iterator[DocumentHost]:
    """Serve on a free port of ``address`` (127.0.0.1; any of 127.0.0.0/8 on Linux) (over
    TLS with ``tls``) until the block ends."""
    state: DocumentHost

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = self.path
            state.hits[path] = state.hits.get(path, 0) + 1
            state.host_headers.append(self.headers.get("Host", ""))
            handler = state.routes.get(path)
            if handler is None:
                json_body({"error": "not found"}, status=404)(self)
            else:
                handler(self)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = _Server((address, 0), Handler)
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    state = DocumentHost(httpd.server_address[1], "https" if tls else "http", address=address)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def make_pki(
    directory: Path, names: tuple[str, ...] = ("localhost",)
) -> tuple[str, ssl.SSLContext]:
    """A CA of the test's own and a server certificate it signed for ``names`` (DNS names,
    or IP addresses): the CA file to trust, and a server-side TLS context. The plugin's
    DocumentHost makes its own the same way."""
    context = _loopback_tls(directory, names)
    return str(directory / "ca.pem"), context
