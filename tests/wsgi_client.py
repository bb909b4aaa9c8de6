"""A small in-process browser for WSGI apps: builds PEP 3333 environs, keeps cookies.

Every call goes through ``wsgiref.validate.validator`` so that the app under test
is also checked against PEP 3333.

    client = WSGIClient(server.wsgi)
    r = client.get("/authorize", params={...})
    r.status, r.headers["location"], r.location, r.text, r.json(), r.cookies_set
"""

from __future__ import annotations

import base64
import io
import json
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

FORM = "application/x-www-form-urlencoded"

Params = Mapping[str, str] | Iterable[tuple[str, str]] | None


def basic(client_id: str, secret: str) -> dict[str, str]:
    """RFC 6749 §2.3.1: id and secret are form-urlencoded, then joined for HTTP Basic."""
    raw = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(secret)}"
    return {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}


@dataclass
class Response:
    """One answer: status code, headers (lower-case keys), body."""

    status: int
    reason: str
    headers: dict[str, str]
    header_list: list[tuple[str, str]]
    cookies_set: list[str]
    body: bytes = b""
    errors: str = ""  # what the app wrote to wsgi.errors (a traceback behind a 500, say)
    _text: str | None = field(default=None, repr=False)

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = self.body.decode("utf-8", "replace")
        return self._text

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def location(self) -> str | None:
        return self.headers.get("location")

    def header_values(self, name: str) -> list[str]:
        """Every value of a header that may be repeated."""
        return [v for k, v in self.header_list if k.lower() == name.lower()]


def _encode(params: Params) -> str:
    if params is None:
        return ""
    items = params.items() if isinstance(params, Mapping) else params
    return urllib.parse.urlencode(list(items))


class WSGIClient:
    """Calls a WSGI app in-process and handles cookies like a browser (one host, no expiry)."""

    def __init__(
        self,
        app: Callable,
        remote_addr: str = "127.0.0.1",
        host: str = "127.0.0.1:8000",
        scheme: str = "http",
    ) -> None:
        self.app = validator(app)
        self.remote_addr = remote_addr
        self.host = host
        self.scheme = scheme
        self.cookies: dict[str, str] = {}

    # -- requests ---------------------------------------------------------
    def get(
        self,
        path: str,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
        **environ: Any,
    ) -> Response:
        return self.request("GET", path, params=params, headers=headers, **environ)

    def post(
        self,
        path: str,
        data: Params = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        content_type: str | None = FORM,
        params: Params = None,
        **environ: Any,
    ) -> Response:
        if body is None:
            body = _encode(data).encode("ascii")
        return self.request(
            "POST",
            path,
            params=params,
            headers=headers,
            body=body,
            content_type=content_type,
            **environ,
        )

    def request(
        self,
        method: str,
        path: str,
        params: Params = None,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        **environ: Any,
    ) -> Response:
        if "://" in path:  # an absolute URL, such as a Location header: keep path and query
            parts = urllib.parse.urlsplit(path)
            path = parts.path + ("?" + parts.query if parts.query else "")
        path, _, query = path.partition("?")
        extra = _encode(params)
        query = "&".join(q for q in (query, extra) if q)
        env: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": urllib.parse.unquote(path, "latin-1"),
            "QUERY_STRING": query,
            "REMOTE_ADDR": self.remote_addr,
            "HTTP_HOST": self.host,
            "wsgi.url_scheme": self.scheme,
            "wsgi.input": io.BytesIO(body),
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.errors": io.StringIO(),
        }
        if body or content_type:
            env["CONTENT_TYPE"] = content_type or ""
        if self.cookies:
            env["HTTP_COOKIE"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        for name, value in (headers or {}).items():
            key = name.upper().replace("-", "_")
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                env[key] = value
            else:
                env["HTTP_" + key] = value
        env.update(environ)
        setup_testing_defaults(env)
        return self._call(env)

    # -- internals --------------------------------------------------------
    def _call(self, env: dict[str, Any]) -> Response:
        captured: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info=None):
            captured["status"] = status
            captured["headers"] = headers
            return lambda data: None

        result = self.app(env, start_response)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        code, _, reason = captured["status"].partition(" ")
        header_list = list(captured["headers"])
        headers: dict[str, str] = {}
        cookies_set: list[str] = []
        for name, value in header_list:
            if name.lower() == "set-cookie":
                cookies_set.append(value)
            else:
                headers[name.lower()] = value
        for raw in cookies_set:
            self._store_cookie(raw)
        errors = env["wsgi.errors"]
        text = errors.getvalue() if isinstance(errors, io.StringIO) else ""
        return Response(int(code), reason, headers, header_list, cookies_set, body, errors=text)

    def _store_cookie(self, raw: str) -> None:
        jar: SimpleCookie = SimpleCookie()
        jar.load(raw)
        for name, morsel in jar.items():
            max_age = str(morsel["max-age"]).strip()
            if morsel.value == "" or (max_age.lstrip("-").isdigit() and int(max_age) <= 0):
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = morsel.value
