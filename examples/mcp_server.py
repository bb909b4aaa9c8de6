"""An MCP server on the official Python SDK (``mcp``), protected by codeflow.

With the provider running (``codeflow serve --config examples/codeflow.toml``)::

    python examples/mcp_server.py        # serves http://127.0.0.1:5002/mcp

then point any MCP client with OAuth support at http://127.0.0.1:5002/mcp. Its first
request gets 401 with ``WWW-Authenticate: Bearer resource_metadata="..."``; the client
reads this server's RFC 9728 metadata, which names codeflow as its authorization server,
discovers codeflow (RFC 8414), registers (a Client ID Metadata Document, or RFC 7591),
signs the user in with PKCE and ``resource`` = this server's URL (RFC 8707), and calls
tools with access tokens whose ``aud`` is this server: codeflow_sdk's BearerValidator
refuses a token meant for any other API (RFC 9068 §4).

Tools: ``whoami`` and ``list_notes`` need ``mcp:read``; ``add_note`` needs ``mcp:write``
as well. A client holding only ``mcp:read`` gets 403 ``insufficient_scope`` with the
scope to ask for (RFC 6750 §3.1), and steps up: it asks the user for the larger scope.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import anyio
import uvicorn
from codeflow_sdk import AccessToken, BearerValidator, bearer_token
from codeflow_sdk.errors import (
    InsufficientScopeError,
    InvalidRequestError,
    InvalidTokenError,
    OAuthError,
)
from mcp.server.mcpserver import Context, MCPServer
from starlette.types import ASGIApp, Receive, Scope, Send

READ, WRITE = "mcp:read", "mcp:write"
# The scope each tool needs beyond READ, which every request needs.
TOOL_SCOPES = {"add_note": (WRITE,)}
MAX_BODY = 1024 * 1024  # a JSON-RPC message is small; more is refused, not buffered


def make_mcp() -> MCPServer:
    """The MCP server itself: three tools over a list of notes."""
    mcp = MCPServer("codeflow notes")
    notes: list[dict[str, str]] = [{"text": "Buy milk", "by": "alice"}]

    def caller(ctx: Context) -> AccessToken:
        token: AccessToken = ctx.request_context.request.scope["codeflow.token"]
        return token

    @mcp.tool()
    def whoami(ctx: Context) -> dict[str, Any]:
        """Who is calling: the token's user, client and scopes."""
        token = caller(ctx)
        return {"sub": token.sub, "client_id": token.client_id, "scopes": list(token.scopes)}

    @mcp.tool()
    def list_notes() -> list[dict[str, str]]:
        """All notes."""
        return list(notes)

    @mcp.tool()
    def add_note(text: str, ctx: Context) -> dict[str, str]:
        """Add a note (needs mcp:write)."""
        note = {"text": text, "by": caller(ctx).sub or ""}
        notes.append(note)
        return note

    return mcp


class Protect:
    """ASGI middleware: serve the validator's RFC 9728 metadata, and let a request through
    to ``app`` only with an access token for this resource holding the scope it needs."""

    def __init__(self, app: ASGIApp, validator: BearerValidator) -> None:
        self.app, self.validator = app, validator
        self.metadata = json.dumps(validator.metadata()).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if scope["path"] == self.validator.metadata_path:  # RFC 9728 §3.1
            return await respond(send, 200, self.metadata, [])
        try:
            token = bearer_token(header(scope, b"authorization"))
            if token is None:  # nothing read: an anonymous request costs no buffering
                return await self.refuse(send, None)
            body, receive = await read_body(receive)
            needed = scopes_needed(body)
            access = await anyio.to_thread.run_sync(self.validator.validate, token, needed)
        except (InvalidRequestError, InvalidTokenError, InsufficientScopeError) as err:
            return await self.refuse(send, err)
        except OAuthError:  # codeflow could not be asked: no reason to let the request in
            return await respond(send, 503, b'{"error": "temporarily_unavailable"}', [])
        scope["codeflow.token"] = access
        await self.app(scope, receive, send)

    async def refuse(self, send: Send, err: OAuthError | None) -> None:
        """RFC 6750 §3, with RFC 9728 §5.1's resource_metadata, which leads the client to
        the authorization server. RFC 6750 §3.1: a request without a token gets no error
        code; its scope (as a 403's) says what to ask for."""
        params = {"resource_metadata": str(self.validator.metadata_url), "scope": READ}
        if err is not None:
            params.update(error=err.error, error_description=err.description)
            if isinstance(err, InsufficientScopeError):
                params["scope"] = err.scope
        challenge = "Bearer " + ", ".join(f'{k}="{v}"' for k, v in params.items())
        body = json.dumps({k: v for k, v in params.items() if k.startswith("error")}).encode()
        status = (err.status or 401) if err is not None else 401
        await respond(send, status, body, [(b"www-authenticate", challenge.encode())])


def scopes_needed(body: bytes) -> tuple[str, ...]:
    """The scopes a JSON-RPC message needs: READ, and a tool's own for tools/call."""
    if not body:
        return (READ,)
    try:
        message = json.loads(body)
    except ValueError:
        raise InvalidRequestError("The request body is not JSON.") from None
    needed = [READ]
    for item in message if isinstance(message, list) else [message]:
        if not isinstance(item, dict) or item.get("method") != "tools/call":
            continue
        params = item.get("params")
        if isinstance(params, dict):
            needed += [s for s in TOOL_SCOPES.get(str(params.get("name")), ()) if s not in needed]
    return tuple(needed)


async def read_body(receive: Receive) -> tuple[bytes, Receive]:
    """The request body (at most MAX_BODY), and a receive that hands it to the app again."""
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        more = message.get("more_body", False)
        if size > MAX_BODY:
            raise InvalidRequestError("The request body is too large.")
    body, replayed = b"".join(chunks), False

    async def replay() -> dict[str, Any]:
        nonlocal replayed
        if replayed:
            return dict(await receive())
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return body, replay


def header(scope: Scope, name: bytes) -> str | None:
    values = [v for k, v in scope["headers"] if k.lower() == name]
    return values[0].decode("latin-1") if len(values) == 1 else None


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"content-type", b"application/json"), (b"cache-control", b"no-store"), *headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def make_validator(issuer: str, url: str) -> BearerValidator:
    """RFC 8707 / RFC 9068 §4: a token must name this server, ``url``, in aud."""
    return BearerValidator(issuer, resource=url, scopes_supported=[READ, WRITE],
                           resource_name="codeflow notes (MCP)")  # fmt: skip


def make_app(validator: BearerValidator) -> ASGIApp:
    """The ASGI app: the MCP server (streamable HTTP at /mcp) behind ``Protect``."""
    return Protect(make_mcp().streamable_http_app(json_response=True), validator)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issuer", default="http://127.0.0.1:8000")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5002)
    args = parser.parse_args(argv)
    url = f"http://{args.host}:{args.port}/mcp"
    print(f"mcp: {url} (provider {args.issuer})", flush=True)
    app = make_app(make_validator(args.issuer, url))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
