"""Helpers for the MCP interop tests: a live codeflow, examples/mcp_server.py on its own
port in front of it, and the official Python MCP SDK's client as an app uses it.

The MCP server runs on uvicorn in a thread of the test process, so that one Clock moves
codeflow, the MCP server's BearerValidator and the Python client together
(``Clock.patch_time``): an access token expires for all three at once.
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import anyio
import httpx2
import requests
import uvicorn
from codeflow_sdk.testing import Clock, HeadlessBrowser, LoginError
from mcp.client.auth import OAuthClientProvider
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)
from sdk_support import free_port

import codeflow

ROOT = Path(__file__).resolve().parents[1]
USERNAME, PASSWORD = "alice", "wonderland"
# A native client's loopback redirect (RFC 8252 §7.3): nothing listens, the user's browser
# stops at the redirect and the client reads the code from its URL.
REDIRECT = "http://127.0.0.1:9/callback"
READ, WRITE = "mcp:read", "mcp:write"
T = TypeVar("T")


def load_example(name: str) -> ModuleType:
    path = ROOT / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


mcp_example = load_example("mcp_server")


@contextlib.contextmanager
def serve_asgi(app: Any, port: int) -> Iterator[None]:
    """Run an ASGI app with uvicorn on 127.0.0.1:port in a thread until the block ends."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass
class Site:
    """codeflow at ``issuer``, and the example MCP server at ``url`` (its resource URI)."""

    srv: codeflow.Server
    issuer: str
    url: str
    clock: Clock

    @property
    def metadata_url(self) -> str:
        """RFC 9728 §3.1: the MCP server's protected-resource metadata."""
        origin, _, path = self.url.rpartition("/mcp")
        return f"{origin}/.well-known/oauth-protected-resource/mcp{path}"

    def exchanges(self, path: str, method: str | None = None) -> list[codeflow.Exchange]:
        return self.srv.transcript.find(path, method)

    def consent_pages(self) -> list[str]:
        """The consent pages codeflow showed, oldest first."""
        return [e.body for e in self.exchanges("/authorize", "GET")
                if e.status == 200 and 'name="decision"' in str(e.body)]  # fmt: skip


@contextlib.contextmanager
def serve_mcp(srv: codeflow.Server, issuer: str, clock: Clock) -> Iterator[Site]:
    """The example MCP server in front of ``srv`` (running at ``issuer``, on ``clock``),
    registered there as a resource; alice as the user. ``clock`` moves the whole process
    while it runs (``Clock.patch_time``)."""
    clock.patch_time()
    try:
        srv.add_user(USERNAME, PASSWORD)
        port = free_port()
        url = f"http://127.0.0.1:{port}/mcp"
        # RFC 8707: the MCP server is a resource of its own, with its scopes.
        srv.add_resource(url, scopes=[READ, WRITE], name="codeflow notes (MCP)")
        validator = mcp_example.make_validator(issuer, url)
        with serve_asgi(mcp_example.make_app(validator), port):
            yield Site(srv, issuer, url, clock)
    finally:
        clock.restore_time()


@contextlib.contextmanager
def mcp_site(**options: Any) -> Iterator[Site]:
    """A live codeflow (transcript on, ``options`` for the Server) behind the example."""
    clock = Clock()
    srv = codeflow.Server(clock=clock, transcript=True, password_hashing="fast", **options)
    with srv.running() as issuer, serve_mcp(srv, issuer, clock) as site:
        yield site


def registration_path(site: Site) -> str:
    """The path of codeflow's RFC 7591 registration endpoint, from its RFC 8414 metadata."""
    with requests.get(site.issuer + "/.well-known/oauth-authorization-server", timeout=10) as r:
        return urllib.parse.urlsplit(r.json()["registration_endpoint"]).path


class MemoryTokenStorage:
    """mcp.client.auth.TokenStorage in memory: what the app would keep on disk."""

    def __init__(self, client_info: OAuthClientInformationFull | None = None) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info = client_info

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


@dataclass
class PythonClient:
    """The official Python SDK as an MCP client app uses it: ``OAuthClientProvider`` as the
    httpx2 auth of a streamable-HTTP ``ClientSession``. The user signs in and consents on
    codeflow's own pages (HeadlessBrowser, one browser: single sign-on holds)."""

    site: Site
    client_info: OAuthClientInformationFull | None = None
    client_metadata_url: str | None = None
    authorize_urls: list[str] = field(default_factory=list)
    callbacks: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    browser: HeadlessBrowser = field(default_factory=HeadlessBrowser)

    def __post_init__(self) -> None:
        self.storage = MemoryTokenStorage(self.client_info)
        metadata = OAuthClientMetadata(
            redirect_uris=[REDIRECT],  # type: ignore[list-item]
            client_name="MCP interop (Python SDK)",
            token_endpoint_auth_method="none",
            grant_types=["authorization_code", "refresh_token"],
        )
        self.provider = OAuthClientProvider(
            self.site.url, metadata, self.storage, self._redirect, self._callback,
            client_metadata_url=self.client_metadata_url,
        )  # fmt: skip

    async def _redirect(self, authorize_url: str) -> None:
        self.authorize_urls.append(authorize_url)
        try:
            callback = await anyio.to_thread.run_sync(
                self.browser.login, authorize_url, USERNAME, PASSWORD
            )
        except LoginError as err:  # the provider's page stopped the user: what it said
            self.refusals.append(str(err))
            raise
        self.callbacks.append(callback)

    async def _callback(self) -> AuthorizationCodeResult:
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.callbacks[-1]).query))
        if "code" not in query:
            raise AssertionError(f"the authorization failed: {self.callbacks[-1]}")
        return AuthorizationCodeResult(code=query["code"], state=query.get("state"),
                                       iss=query.get("iss"))  # fmt: skip

    def run(self, steps: Callable[[ClientSession], Awaitable[T]]) -> T:
        """Connect (the SDK authorizes on the first 401), run ``steps``, disconnect."""

        async def main() -> T:
            async with (
                httpx2.AsyncClient(auth=self.provider) as http,
                streamable_http_client(self.site.url, http_client=http) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                return await steps(session)

        return anyio.run(main)

    @property
    def access_token(self) -> str:
        assert self.storage.tokens is not None
        return self.storage.tokens.access_token


def check_step_up_consent(site: Site) -> None:
    """The consent pages name the MCP server and its scopes (RFC 8707, issue 15 item 2):
    the first mcp:read only, the step-up's mcp:write too. An MCP client is a public native
    client with a loopback redirect, which any process on the device could answer (RFC
    8252 §8.6): its consent is neither stored nor reused, so the step-up asks for the whole
    scope again rather than for the added scope only (issue 15 item 5 applies to clients
    whose redirect proves who they are)."""
    first, step_up = site.consent_pages()
    assert site.url in first and site.url in step_up
    assert f"<code>{READ}</code>" in first and f"<code>{WRITE}</code>" not in first
    assert f"<code>{READ}</code>" in step_up and f"<code>{WRITE}</code>" in step_up
    assert "already allowed" not in step_up


def authorize_params(url: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def check_authorizations(site: Site, urls: list[str]) -> str:
    """The two authorization requests an MCP client sent, the first for mcp:read, the
    step-up for mcp:write as well, and their consent pages; returns the client_id."""
    assert len(urls) == 2, urls
    first, step_up = (authorize_params(u) for u in urls)
    client_id = first["client_id"]
    for params in (first, step_up):
        # RFC 7636 §4.3, RFC 8707 §2.1: PKCE S256 and the MCP server as the resource.
        assert params["code_challenge_method"] == "S256" and params["code_challenge"]
        assert params["resource"] == site.url
        assert params["client_id"] == client_id
    assert READ in first["scope"].split() and WRITE not in first["scope"].split()
    assert {READ, WRITE} <= set(step_up["scope"].split())
    check_step_up_consent(site)
    return client_id
