"""Interop: the official MCP TypeScript SDK (``@modelcontextprotocol/sdk``, pinned in
tests/interop/mcp/package.json and its lock file, installed by ``npm ci`` on first use)
completes the MCP authorization flow against a live codeflow protecting
examples/mcp_server.py.

The driver, tests/interop/mcp/mcp_client_flow.mjs, is an MCP client app: the SDK's
``StreamableHTTPClientTransport`` with an ``OAuthClientProvider`` does discovery,
registration, PKCE, ``resource``, refresh and step-up; the app plays the user on codeflow's
pages and checks the callback's state and iss. These tests check what codeflow saw on the
wire and what the MCP server let through.

Without ``node`` on PATH the tests skip, saying so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from codeflow_sdk import BearerValidator
from codeflow_sdk.testing import Clock, DocumentHost
from mcp_support import (
    PASSWORD,
    READ,
    REDIRECT,
    USERNAME,
    WRITE,
    Site,
    check_authorizations,
    mcp_site,
    registration_path,
    serve_mcp,
)
from test_interop_node import npm_ci

import codeflow

INTEROP = Path(__file__).parent / "interop" / "mcp"
NODE = shutil.which("node")
PRE_REGISTERED = "mcp-ts"

pytestmark = [
    pytest.mark.http,
    pytest.mark.skipif(
        NODE is None,
        reason="node is not on PATH: the MCP TypeScript SDK interop tests need Node.js 20+ "
        "(CI installs it; locally: apt-get install nodejs npm)",
    ),
]

def npm_packages() -> None:
    """The MCP TypeScript SDK of tests/interop/mcp's lock file, on first use."""
    npm_ci(INTEROP, ["@modelcontextprotocol/sdk"])


@pytest.fixture
def open_site(codeflow_factory: Any, codeflow_clock: Clock) -> Iterator[Site]:
    """Issue 15 item 9, the pytest plugin's one line for MCP client authors: a live
    codeflow where clients register themselves, by RFC 7591 or by a Client ID Metadata
    Document on ``codeflow_documents``; the example MCP server in front of it."""
    npm_packages()
    idp = codeflow_factory(live=True, self_registration=True, clock=codeflow_clock)
    with serve_mcp(idp.server, idp.url, codeflow_clock) as running:
        yield running


@pytest.fixture
def site() -> Iterator[Site]:
    npm_packages()
    with mcp_site() as running:
        yield running


def run_driver(site: Site, **config: Any) -> dict[str, Any]:
    """Run the driver; expire the access token when it pauses; its last JSON line."""
    assert NODE is not None
    config = {"url": site.url, "issuer": site.issuer, "redirect_uri": REDIRECT,
              "username": USERNAME, "password": PASSWORD, **config}  # fmt: skip
    with subprocess.Popen(  # noqa: S603 -- our own script, with node from PATH
        [NODE, "mcp_client_flow.mjs"], cwd=INTEROP, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    ) as proc:  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(json.dumps(config) + "\n")
        proc.stdin.flush()
        result: dict[str, Any] = {}
        for line in proc.stdout:
            message = json.loads(line)
            if message.get("pause") == "expire":
                site.clock.advance(codeflow.ACCESS_TOKEN_LIFETIME + 60)
                proc.stdin.write("go\n")
                proc.stdin.flush()
            else:
                result = message
        stderr = proc.stderr.read()
        proc.wait(timeout=30)
    assert result, f"the driver printed nothing (exit {proc.returncode}); stderr:\n{stderr}"
    assert (proc.returncode == 0) == (result.get("ok") is True), (proc.returncode, result)
    return result


def explain(result: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in result.items() if k != "stack"}, indent=2) + (
        "\n" + result.get("stack", "")
    )


def check_every_step(site: Site, result: dict[str, Any]) -> str:
    """What every registration path shares; returns the client_id the SDK used."""
    assert result["ok"] is True, f"the TypeScript SDK stopped:\n{explain(result)}"
    assert result["library"] == "@modelcontextprotocol/sdk@1.32.2"
    # RFC 9728 §5.1 -> §3 -> RFC 8414 §3: from the 401 to codeflow's metadata.
    assert site.exchanges("/.well-known/oauth-authorization-server", "GET")

    client_id = check_authorizations(site, result["authorizations"])
    # RFC 9207 §2: the authorization responses named codeflow (the app checked state too).
    assert result["callbacks"] == [{"state_ok": True, "iss": site.issuer}] * 2

    # RFC 8707 §2.2 and RFC 6749 §6: the code and refresh requests named the resource.
    # The SDK answers the 403 by refreshing first (a refresh cannot widen the scope) and
    # gives up; the app then starts the step-up with the SDK's auth() (see the driver).
    assert "403 after trying upscoping" in result["sdk_step_up_gave_up"]
    token_requests = [e.params for e in site.exchanges("/token", "POST")]
    grants = [p.get("grant_type") for p in token_requests]
    expected = ["authorization_code", "refresh_token", "refresh_token", "authorization_code"]
    assert grants == expected, grants
    assert all(p.get("resource") == site.url for p in token_requests), token_requests

    assert result["first"]["sub"] == "alice" and result["first"]["client_id"] == client_id
    assert WRITE not in result["first"]["scopes"]
    assert result["refreshed"]["sub"] == "alice"
    assert result["note"] == {"text": "from the TypeScript SDK", "by": "alice"}
    assert WRITE in result["stepped_up"]["scopes"]

    # RFC 9068 §4: the SDK's token is for the MCP server.
    token = BearerValidator(site.issuer, audience=site.url).validate(result["access_token"])
    assert token.claims["aud"] in (site.url, [site.url])
    return client_id


def test_typescript_sdk_every_step_with_a_pre_registered_client(site: Site) -> None:
    """MCP authorization through the TypeScript SDK with a client registered beforehand:
    discovery (RFC 9728 §5.1, RFC 8414 §3), PKCE (RFC 7636 §4.3), resource (RFC 8707
    §2.1, §2.2), a tool call, refresh on 401 (RFC 6749 §6), step-up on 403
    insufficient_scope (RFC 6750 §3.1)."""
    site.srv.add_client(
        PRE_REGISTERED, redirect_uris=[REDIRECT], scopes=[READ, WRITE],
        grant_types=["authorization_code", "refresh_token"],
    )  # fmt: skip
    result = run_driver(site, client_id=PRE_REGISTERED)
    assert check_every_step(site, result) == PRE_REGISTERED



def test_typescript_sdk_every_step_registering_by_rfc7591(open_site: Site) -> None:
    """MCP "Client Registration" without pre-registration: the SDK finds codeflow's
    registration_endpoint (RFC 8414 §2), registers (RFC 7591 §3.1) a public client with a
    loopback redirect (RFC 8252 §7.3), and completes every step with the client_id it got."""
    result = run_driver(open_site)
    client_id = check_every_step(open_site, result)
    registrations = open_site.exchanges(registration_path(open_site), "POST")
    assert [e.status for e in registrations] == [201]
    assert registrations[0].body["client_id"] == client_id
    stored = open_site.srv.storage.get_client(client_id)
    assert stored is not None and list(stored.redirect_uris) == [REDIRECT]


def test_typescript_sdk_every_step_with_a_client_id_metadata_document(
    open_site: Site, codeflow_documents: DocumentHost
) -> None:
    """MCP "Client Registration" by Client ID Metadata Document: codeflow advertises
    client_id_metadata_document_supported; the SDK uses its https metadata URL as the
    client_id, codeflow fetches and checks the document, and every step completes."""
    url = codeflow_documents.publish_client(
        "/clients/typescript.json", [REDIRECT], client_name="MCP interop (TypeScript SDK)"
    )
    result = run_driver(open_site, client_metadata_url=url)
    assert check_every_step(open_site, result) == url
    assert codeflow_documents.hits["/clients/typescript.json"] >= 1
    assert not open_site.exchanges(registration_path(open_site), "POST")
