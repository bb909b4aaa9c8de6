"""Test helpers that speak only HTTP: a controllable clock and a headless browser.

Nothing here imports codeflow: ``HeadlessBrowser`` completes an authorization request
against any provider whose login and consent forms use codeflow's stable field names
(DESIGN "login, consent": ``username``, ``password``, ``otp``, ``decision``; hidden
``csrf_token``, ``request``, ``pending``), with a cookie jar and no JavaScript; and
``app_login`` plays the whole round trip through the app under test: the app's login
URL, its redirect to the provider, the provider's forms, and the way back.
``DocumentHost`` serves JSON documents over https on 127.0.0.1 with a CA of its own: the
Client ID Metadata Documents of clients under test, whose client_id must be an https URL.
"""

from __future__ import annotations

import datetime
import html
import http.cookiejar
import http.server
import ipaddress
import json
import re
import shutil
import socketserver
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Clock",
    "DocumentHost",
    "HeadlessBrowser",
    "LoginError",
    "Response",
    "app_login",
    "headless_login",
]


# The clock underneath, for a time.time that a test patched with a Clock itself. Bound at
# import, and still what the time-freezing libraries move: time-machine patches the
# function itself, freezegun the module attributes that hold it.
_wall_clock = time.time
_reading = threading.local()  # the Clocks this thread is reading: see Clock.__call__


class Clock:
    """A clock for ``codeflow.Server(clock=...)`` (or the SDK's ``clock=``) that a test moves.

    ``Clock()`` follows ``time.time()`` plus an offset, so a live server stays in step with
    real clients, and with the test's own time-machine or freezegun travel; ``Clock(start)``
    stands still at ``start`` until moved. ``advance`` jumps ahead (past a token's expiry,
    say) in both cases; it moves what reads this clock, the provider, and nothing else.

    For the app under test to see the same time, either call ``patch_time()``, after which
    ``time.time()``, ``datetime.now()`` and the rest follow this clock in the whole
    process (with time-machine) until ``restore_time()``; or patch ``time.time`` with the
    clock yourself (``monkeypatch.setattr(time, "time", clock)``): it reads the clock
    underneath then, so neither recursion nor a double move comes of it.
    """

    def __init__(self, start: float | None = None) -> None:
        self._frozen = start
        self._offset = 0.0
        self._travel: Any = None  # patch_time's time_machine.travel, while it runs
        self._shift: Callable[[float], None] | None = None

    def __call__(self) -> float:
        reading: set[int] = _reading.__dict__.setdefault("clocks", set())
        if id(self) in reading:
            # time.time is this clock: the call that got here adds the offset, once.
            return _wall_clock()
        if self._frozen is not None:
            return self._frozen + self._offset
        reading.add(id(self))
        try:
            base = time.time()
        finally:
            reading.discard(id(self))
        return base + self._offset

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` ahead (or back, if negative); after ``patch_time()``,
        the whole process's time with it."""
        if self._shift is not None:
            self._shift(seconds)
        else:
            self._offset += seconds

    def set(self, now: float) -> None:
        """Jump to ``now`` (and stay there if the clock is frozen)."""
        self.advance(now - self())

    def patch_time(self) -> None:
        """Make the whole process read this clock, so that the app under test and its OIDC
        client (their ``time.time()``, ``datetime.now()``, ...) share the provider's time:
        from now on ``advance`` moves everything, once. Uses time-machine (``pip install
        time-machine``); the ``codeflow_clock`` fixture undoes it after the test, elsewhere
        call ``restore_time()``. A frozen clock keeps the process's time still too."""
        if self._travel is not None:
            return
        try:
            import time_machine
        except ImportError:
            raise RuntimeError("Clock.patch_time() needs time-machine: pip install "
                               "time-machine") from None  # fmt: skip
        travel = time_machine.travel(self(), tick=self._frozen is None)
        self._shift = travel.start().shift
        self._travel = travel
        # The process's time is this clock now: read it as it is, with nothing added.
        self._frozen, self._offset = None, 0.0

    def restore_time(self) -> None:
        """Undo ``patch_time()`` (if it was called): the process's time is real again, and
        this clock goes on from where it was, as an offset (or frozen, if it was)."""
        if self._travel is None:
            return
        now, frozen = self(), not self._travel.tick
        self._travel.stop()
        self._travel = self._shift = None
        if frozen:
            self._frozen, self._offset = now, 0.0
        else:
            self._offset = now - time.time()


class LoginError(Exception):
    """The provider did not send the browser back to the client: ``page`` is its answer."""

    def __init__(self, message: str, page: str = "") -> None:
        super().__init__(message)
        self.page = page


@dataclass(frozen=True)
class Response:
    """What the headless browser ended on: the page's ``url`` (after every redirect),
    ``status``, ``headers`` (names lower-cased) and ``text``."""

    url: str
    status: int
    headers: dict[str, str]
    text: str


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')
_ACTION = re.compile(r'<form method="post" action="([^"]*)"')
_ALERT = re.compile(r'class="error"[^>]*>(.*?)</p>', re.S)
MAX_STEPS = 10  # authorize, login, (TOTP), authorize again, consent: never more than this
REDIRECTS = (301, 302, 303, 307, 308)


class HeadlessBrowser:
    """A cookie-keeping HTTP client that plays the user on the provider's pages.

    One instance is one browser: its provider session survives between logins, as
    single sign-on does in a real browser.
    """

    def __init__(self, timeout: float = 10.0) -> None:
        self.cookies = http.cookiejar.CookieJar()
        self._opener = urllib.request.build_opener(
            _NoRedirects, urllib.request.HTTPCookieProcessor(self.cookies)
        )
        self.timeout = timeout

    def _fetch(self, url: str, form: dict[str, str] | None = None) -> tuple[int, str, str]:
        answer = self._request(url, form)
        return answer.status, answer.headers.get("location", ""), answer.text

    def _request(self, url: str, form: dict[str, str] | None = None) -> Response:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(url, data=data)  # noqa: S310 -- http(s) from the test
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return _response(url, response.status, response)
        except urllib.error.HTTPError as err:
            with err:
                return _response(url, err.code, err)

    def open(self, url: str) -> Response:
        """GET ``url`` with this browser's cookies, following redirects wherever they
        lead (at most MAX_STEPS), as a browser would: the page it ends on."""
        for _ in range(MAX_STEPS):
            answer = self._request(url)
            if answer.status not in REDIRECTS or "location" not in answer.headers:
                return answer
            url = urllib.parse.urljoin(url, answer.headers["location"])
        raise LoginError(f"more than {MAX_STEPS} redirects, the last to {url}")

    def app_login(
        self,
        app_login_url: str,
        username: str = "",
        password: str = "",
        *,
        provider: str | None = None,
        totp_secret: str | None = None,
        otp: str | None = None,
        decision: str = "approve",
        clock: Callable[[], float] = time.time,
    ) -> Response:
        """Sign in through the app under test: GET ``app_login_url``, follow the app's
        redirects to the provider (at ``provider``, a base URL, if given: the first
        redirect there; else the first to another origin), play the user there as
        ``login`` does, then follow the provider's redirect back to the app and the app's
        own redirects. Returns the page the app ends on (its home page, say, or its error
        page); the app's cookies stay in this browser. Raises LoginError when the app
        sends the browser nowhere, or elsewhere than ``provider``, or the provider's
        forms refuse the user."""
        authorize_url = self._to_provider(app_login_url, provider)
        callback = self.login(
            authorize_url, username, password, totp_secret=totp_secret, otp=otp,
            decision=decision, clock=clock,
        )  # fmt: skip
        return self.open(callback)

    def _to_provider(self, url: str, provider: str | None) -> str:
        """Follow the app's redirects until one leaves for the provider; its URL."""
        app, idp = _origin(url), _origin(provider) if provider else None
        for _ in range(MAX_STEPS):
            answer = self._request(url)
            if answer.status not in REDIRECTS or "location" not in answer.headers:
                raise LoginError(
                    f"the app answered {answer.status} at {answer.url} instead of sending "
                    "the browser to the provider", answer.text,
                )  # fmt: skip
            url = urllib.parse.urljoin(url, answer.headers["location"])
            if _origin(url) == idp or (idp is None and _origin(url) != app):
                return url
            if _origin(url) != app:
                raise LoginError(f"the app sent the browser to {url}, not to the provider "
                                 f"at {provider}")  # fmt: skip
        raise LoginError(f"the app did not send the browser to the provider in {MAX_STEPS} steps")

    def login(
        self,
        authorize_url: str,
        username: str = "",
        password: str = "",
        *,
        totp_secret: str | None = None,
        otp: str | None = None,
        decision: str = "approve",
        clock: Callable[[], float] = time.time,
    ) -> str:
        """Open ``authorize_url``, sign in (with a TOTP code from ``totp_secret``, or
        ``otp``, if asked), answer the consent page with ``decision``, and return the
        URL the provider redirects to: the client's callback with code or error
        (RFC 6749 §4.1.2), not yet fetched. Raises LoginError when it stays on a page.
        """
        origin = _origin(authorize_url)
        url, form = authorize_url, None
        for _ in range(MAX_STEPS):
            status, location, page = self._fetch(url, form)
            if status in REDIRECTS:
                target = urllib.parse.urljoin(url, location)
                if _origin(target) != origin:
                    return target  # the redirect back to the client
                url, form = target, None
                continue
            fields = {
                name: html.unescape(value) for name, value in _HIDDEN.findall(page)
            }  # fmt: skip
            action = _ACTION.search(page)
            if status != 200 or action is None:
                summary = _alert(page) or _summary(page)
                raise LoginError(f"the provider answered {status}: {summary}", page)
            if form is not None and form.get("username") and _alert(page):
                raise LoginError(f"sign-in failed: {_alert(page)}", page)
            url = urllib.parse.urljoin(url, html.unescape(action.group(1)))
            if "pending" in fields:  # RFC 6238: the second factor
                if form is not None and "otp" in form:
                    raise LoginError(f"the TOTP code was refused: {_alert(page)}", page)
                form = {**fields, "otp": otp or _totp(totp_secret, clock)}
            elif 'name="password"' in page:
                if form is not None and "password" in form:
                    raise LoginError(f"sign-in failed: {_alert(page)}", page)
                form = {**fields, "username": username, "password": password}
            elif 'name="decision"' in page:
                form = {**fields, "decision": decision}
            else:
                raise LoginError("a form this helper does not know", page)
        raise LoginError(f"no redirect to the client after {MAX_STEPS} steps")


def headless_login(
    authorize_url: str,
    username: str = "",
    password: str = "",
    *,
    totp_secret: str | None = None,
    otp: str | None = None,
    decision: str = "approve",
    clock: Callable[[], float] = time.time,
) -> str:
    """``HeadlessBrowser().login(...)`` in a fresh browser: the client's callback URL."""
    return HeadlessBrowser().login(
        authorize_url, username, password, totp_secret=totp_secret, otp=otp,
        decision=decision, clock=clock,
    )  # fmt: skip


def app_login(
    app_login_url: str,
    username: str = "",
    password: str = "",
    *,
    provider: str | None = None,
    totp_secret: str | None = None,
    otp: str | None = None,
    decision: str = "approve",
    clock: Callable[[], float] = time.time,
) -> Response:
    """``HeadlessBrowser().app_login(...)`` in a fresh browser: the app's page after it."""
    return HeadlessBrowser().app_login(
        app_login_url, username, password, provider=provider, totp_secret=totp_secret,
        otp=otp, decision=decision, clock=clock,
    )  # fmt: skip


def _response(url: str, status: int, response: Any) -> Response:
    headers = {name.lower(): value for name, value in response.headers.items()}
    return Response(url, status, headers, _text(response))


def _text(response: Any) -> str:
    body: bytes = response.read(1024 * 1024)
    return body.decode("utf-8", "replace")


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.netloc


def _alert(page: str) -> str:
    """The page's error message, if it shows one."""
    found = _ALERT.search(page)
    return html.unescape(" ".join(found.group(1).split())) if found else ""


def _summary(page: str) -> str:
    main = page.split("<main>", 1)[-1]
    return html.unescape(" ".join(re.sub(r"<[^>]+>", " ", main).split()))[:300]


def _totp(secret: str | None, clock: Callable[[], float]) -> str:
    if secret is None:
        raise LoginError("the provider asks for a TOTP code: pass totp_secret= or otp=")
    import pyotp  # RFC 6238; only needed for users with a second factor

    return pyotp.TOTP(secret).at(clock())


class DocumentHost:
    """JSON documents over https on 127.0.0.1, under a certificate from a CA of its own.

    For Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document): a
    client's ``client_id`` is the https URL of its metadata, which the authorization server
    fetches. A codeflow server reaches this host when told to trust its CA and its loopback
    address (``fetch_ca_file=host.ca_file``, ``fetch_allowed_networks=["127.0.0.1/32"]``,
    which the pytest plugin's ``codeflow_factory(..., registration="open")`` passes); no
    production server would. ``publish(path, document)`` serves a document and returns its
    URL; ``publish_client(path, redirect_uris, ...)`` publishes a client's metadata with
    ``client_id`` set to that URL; ``hits`` counts GETs by path. Use it as a context
    manager, or ``start()`` and ``close()``.
    """

    def __init__(self) -> None:
        self.documents: dict[str, tuple[bytes, dict[str, str]]] = {}
        self.hits: dict[str, int] = {}
        self._dir = Path(tempfile.mkdtemp(prefix="codeflow-documents-"))
        self.ca_file = str(self._dir / "ca.pem")
        self._httpd: socketserver.TCPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def __enter__(self) -> DocumentHost:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def publish(
        self, path: str, document: Any, *, headers: dict[str, str] | None = None
    ) -> str:
        """Serve ``document`` (JSON) at ``path`` with ``headers`` (Cache-Control, say);
        returns its URL."""
        if not path.startswith("/"):
            raise ValueError("path must start with /")
        self.documents[path] = (json.dumps(document).encode(), dict(headers or {}))
        return self.url(path)

    def publish_client(
        self, path: str, redirect_uris: list[str], *, client_name: str = "Test client",
        **metadata: Any,
    ) -> str:  # fmt: skip
        """A public native client's metadata document at ``path``; its client_id (the URL)."""
        url = self.url(path)
        document = {"client_id": url, "client_name": client_name,
                    "redirect_uris": list(redirect_uris),
                    "grant_types": ["authorization_code", "refresh_token"],
                    "response_types": ["code"], "token_endpoint_auth_method": "none",
                    **metadata}  # fmt: skip
        return self.publish(path, document)

    def start(self) -> None:
        if self._httpd is not None:
            return
        tls = _loopback_tls(self._dir)
        host = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path = self.path.partition("?")[0]
                host.hits[path] = host.hits.get(path, 0) + 1
                body, headers = host.documents.get(path, (b'{"error": "not found"}', {}))
                self.send_response(200 if path in host.documents else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        httpd = Server(("127.0.0.1", 0), Handler)
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
        self._httpd, self.port = httpd, int(httpd.server_address[1])
        self._thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        shutil.rmtree(self._dir, ignore_errors=True)


def _loopback_tls(
    directory: Path, names: tuple[str, ...] = ("127.0.0.1", "localhost")
) -> ssl.SSLContext:
    """A CA (written to ``directory``/ca.pem for the server to trust) and a certificate it
    signs for ``names`` (IP addresses or DNS names); the server-side TLS context with that
    certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "codeflow DocumentHost CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(valid[0]).not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0]).not_valid_after(valid[1])
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    (directory / "cert.pem").write_bytes(cert.public_bytes(pem))
    (directory / "key.pem").write_bytes(key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(directory / "cert.pem", directory / "key.pem")
    return tls
