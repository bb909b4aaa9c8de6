"""Interop: the official MCP Python SDK (``mcp``, pinned in pyproject) completes the MCP
authorization flow against a live codeflow protecting examples/mcp_server.py.

The MCP authorization specification (revision 2026-07-28) asks of the client: read the
resource server's RFC 9728 metadata from the 401's ``resource_metadata``, discover the
authorization server it names (RFC 8414 / OIDC Discovery), get a client_id (a Client ID
Metadata Document, RFC 7591 registration, or one registered before), authorize with PKCE
S256 and ``resource`` = the MCP server (RFC 8707 §2.1), redeem the code with the same
``resource`` (§2.2), refresh, and on 403 ``insufficient_scope`` ask again for more
(RFC 6750 §3.1). Here the SDK's own ``OAuthClientProvider`` does each step and the user
signs in on codeflow's real pages; the tests check what codeflow saw on the wire (its
transcript) and what the MCP server let through.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from codeflow_sdk import BearerValidator
from codeflow_sdk.testing import Clock, DocumentHost
from document_hosts import document_host, drip, huge, make_pki, redirect_to
from mcp.client.session import ClientSession
from mcp.shared.auth import OAuthClientInformationFull
from mcp_support import (
    READ,
    REDIRECT,
    WRITE,
    PythonClient,
    Site,
    authorize_params,
    check_authorizations,
    mcp_example,
    mcp_site,
    registration_path,
    serve_mcp,
)

import codeflow

pytestmark = pytest.mark.http

PRE_REGISTERED = "mcp-cli"
# Until the RFC 8707 work (issue 15 items 1, 2) is merged, codeflow ignores `resource` and
# every token's aud is the issuer: a correct MCP server refuses them all.





@pytest.fixture
def open_site(codeflow_factory: Any, codeflow_clock: Clock) -> Iterator[Site]:
    """Issue 15 item 9, the pytest plugin's one line for MCP client authors: a live
    codeflow where clients register themselves, by RFC 7591 or by a Client ID Metadata
    Document on ``codeflow_documents``; the example MCP server in front of it."""
    idp = codeflow_factory(live=True, self_registration=True, clock=codeflow_clock)
    with serve_mcp(idp.server, idp.url, codeflow_clock) as running:
        yield running


@pytest.fixture
def site() -> Iterator[Site]:
    with mcp_site() as running:
        yield running


async def every_step(site: Site, session: ClientSession) -> dict[str, Any]:
    """What an MCP app does once connected: call a tool; call it again after the access
    token expired (the SDK refreshes); call the tool that needs mcp:write (the SDK steps
    up); call the first one again with the new token."""
    first = (await session.call_tool("whoami", {})).structured_content
    site.clock.advance(codeflow.ACCESS_TOKEN_LIFETIME + 60)
    refreshed = (await session.call_tool("whoami", {})).structured_content
    note = await session.call_tool("add_note", {"text": "from the Python SDK"})
    stepped_up = (await session.call_tool("whoami", {})).structured_content
    return {"first": first, "refreshed": refreshed, "note": note.structured_content,
            "stepped_up": stepped_up}  # fmt: skip


def check_every_step(site: Site, client: PythonClient, result: dict[str, Any]) -> str:
    """The assertions every registration path shares; returns the client_id used."""
    # RFC 9728 §5.1 -> §3: the SDK followed the 401's resource_metadata to the MCP
    # server's metadata and from there to codeflow's RFC 8414 metadata.
    assert site.exchanges("/.well-known/oauth-authorization-server", "GET")

    client_id = check_authorizations(site, client.authorize_urls)

    # RFC 9207 §2: each authorization response named codeflow; the SDK checked it.
    for callback in client.callbacks:
        assert authorize_params(callback)["iss"] == site.issuer

    # RFC 8707 §2.2: every token request named the resource, the refresh too (RFC 6749 §6).
    token_requests = [e.params for e in site.exchanges("/token", "POST")]
    grants = [p.get("grant_type") for p in token_requests]
    assert grants == ["authorization_code", "refresh_token", "authorization_code"], grants
    assert all(p.get("resource") == site.url for p in token_requests), token_requests

    assert result["first"]["sub"] == "alice" and result["first"]["client_id"] == client_id
    assert READ in result["first"]["scopes"] and WRITE not in result["first"]["scopes"]
    assert result["refreshed"]["sub"] == "alice"
    assert result["note"] == {"text": "from the Python SDK", "by": "alice"}
    assert WRITE in result["stepped_up"]["scopes"]

    # RFC 9068 §4 / RFC 8707: the token the SDK holds is for the MCP server, and only it.
    token = BearerValidator(site.issuer, audience=site.url).validate(client.access_token)
    assert token.claims["aud"] in (site.url, [site.url])
    return client_id


def test_python_sdk_every_step_with_a_pre_registered_client(site: Site) -> None:
    """MCP authorization with a client registered beforehand (RFC 6749 §2): discovery
    (RFC 9728 §5.1, RFC 8414 §3), PKCE (RFC 7636 §4.3), resource (RFC 8707 §2.1, §2.2),
    a tool call, refresh (RFC 6749 §6), step-up on 403 insufficient_scope (RFC 6750 §3.1)."""
    site.srv.add_client(
        PRE_REGISTERED, redirect_uris=[REDIRECT], scopes=[READ, WRITE, "offline_access"],
        grant_types=["authorization_code", "refresh_token"],
    )  # fmt: skip
    info = OAuthClientInformationFull(
        client_id=PRE_REGISTERED, redirect_uris=[REDIRECT],  # type: ignore[list-item]
        token_endpoint_auth_method="none",
    )  # fmt: skip
    client = PythonClient(site, client_info=info)
    result = client.run(lambda session: every_step(site, session))
    assert check_every_step(site, client, result) == PRE_REGISTERED



def test_python_sdk_every_step_registering_by_rfc7591(open_site: Site) -> None:
    """MCP "Client Registration" without pre-registration: codeflow's metadata has a
    registration_endpoint (RFC 8414 §2), the SDK registers there (RFC 7591 §3.1) as a
    public native client with a loopback redirect (RFC 8252 §7.3), gets a client_id
    (§3.2.1), and completes every step with it."""
    client = PythonClient(open_site)
    result = client.run(lambda session: every_step(open_site, session))
    client_id = check_every_step(open_site, client, result)
    registrations = open_site.exchanges(registration_path(open_site), "POST")
    assert [e.status for e in registrations] == [201]
    assert registrations[0].body["client_id"] == client_id
    assert client.storage.client_info is not None
    assert client.storage.client_info.client_id == client_id
    stored = open_site.srv.storage.get_client(client_id)
    assert stored is not None and list(stored.redirect_uris) == [REDIRECT]


def test_python_sdk_every_step_with_a_client_id_metadata_document(
    open_site: Site, codeflow_documents: DocumentHost
) -> None:
    """MCP "Client Registration" by Client ID Metadata Document: codeflow advertises
    client_id_metadata_document_supported, the SDK uses its https metadata URL as the
    client_id without registering, codeflow fetches and checks the document (its
    client_id equals the URL, the redirect_uri is listed) and every step completes."""
    url = codeflow_documents.publish_client(
        "/clients/python.json", [REDIRECT], client_name="MCP interop (Python SDK)"
    )
    client = PythonClient(open_site, client_metadata_url=url)
    result = client.run(lambda session: every_step(open_site, session))
    assert check_every_step(open_site, client, result) == url
    assert codeflow_documents.hits["/clients/python.json"] >= 1
    assert not open_site.exchanges(registration_path(open_site), "POST")


HOSTILE_HOSTS = {
    # a document host that redirects to itself, forever: asked once
    "redirect loop": (lambda host: redirect_to(host.url("/doc.json")),
                      "redirects are not followed"),
    # 10 MB, streamed without a length
    "oversize": (lambda host: huge(10 * 1024 * 1024, declare_length=False),
                 f"larger than {codeflow.CLIENT_METADATA_MAX_BYTES} bytes"),
    # a byte at a time: cut off at the deadline (1 s here)
    "slow": (lambda host: drip(in_headers=False), "did not answer within 1"),
}  # fmt: skip


@pytest.mark.parametrize("kind", [*HOSTILE_HOSTS, "private address"])
def test_python_sdk_with_a_hostile_metadata_document_host_stops_at_a_clear_error(
    codeflow_factory: Any, codeflow_clock: Clock, tmp_path: Path, kind: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """draft-ietf-oauth-client-id-metadata-document, security considerations (SSRF, and a
    document host that misbehaves): the SDK names a client_id whose host redirects in a
    loop, answers 10 MB, drips, or is on a private address; codeflow refuses it on the
    authorization page, which says why and never redirects to the client (RFC 6749
    §4.1.2.1), and the SDK's flow stops there with no token."""
    monkeypatch.setattr(codeflow, "FETCH_TIMEOUT", 1.0)
    ca_file, tls = make_pki(tmp_path, ("127.0.0.1",))
    with document_host(tls) as host:
        if kind == "private address":
            client_id, words = "https://10.255.255.1/doc.json", "is not public"
        else:
            handler, words = HOSTILE_HOSTS[kind]
            host.routes["/doc.json"] = handler(host)
            client_id = host.url("/doc.json")
        idp = codeflow_factory(live=True, self_registration=True, clock=codeflow_clock,
                               fetch_ca_file=ca_file)  # fmt: skip
        with serve_mcp(idp.server, idp.url, codeflow_clock) as site:
            client = PythonClient(site, client_metadata_url=client_id)
            with pytest.raises(BaseException):  # noqa: B017 -- the SDK's own, in a group
                client.run(lambda session: session.list_tools())
            assert len(client.refusals) == 1 and words in client.refusals[0], client.refusals
            assert "the provider answered 400" in client.refusals[0]
            assert client.callbacks == [] and client.storage.tokens is None
            assert not site.exchanges("/token", "POST")
        assert host.hits.get("/doc.json", 0) <= 1


def test_example_serves_rfc9728_metadata_and_bearer_challenges(site: Site) -> None:
    """RFC 9728 §3.2: the metadata names the resource and its authorization server;
    §5.1: a 401 names the metadata in ``resource_metadata``; RFC 6750 §3.1: "If the
    request lacks any authentication information ... SHOULD NOT include an error code",
    a bad token gets invalid_token."""
    with requests.get(site.metadata_url, timeout=10) as r:
        assert r.status_code == 200
        assert r.json()["resource"] == site.url  # §3.3: MUST be the resource identifier
        assert r.json()["authorization_servers"] == [site.issuer]
        assert set(r.json()["scopes_supported"]) == {READ, WRITE}
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    with requests.post(site.url, json=ping, timeout=10) as r:
        assert r.status_code == 401
        challenge = r.headers["WWW-Authenticate"]
        assert challenge.startswith("Bearer ") and "error=" not in challenge
        assert f'resource_metadata="{site.metadata_url}"' in challenge
        assert f'scope="{READ}"' in challenge
    with requests.post(site.url, json=ping, headers={"Authorization": "Bearer not-a-token"},
                       timeout=10) as r:  # fmt: skip
        assert r.status_code == 401
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
        assert f'resource_metadata="{site.metadata_url}"' in r.headers["WWW-Authenticate"]
    # RFC 6750 §3.1 invalid_request: a body that is not JSON, or too large to buffer.
    for body in (b"{", b" " * (mcp_example.MAX_BODY + 1)):
        with requests.post(site.url, data=body, headers={"Authorization": "Bearer x"},
                           timeout=10) as r:  # fmt: skip
            assert r.status_code == 400
            assert 'error="invalid_request"' in r.headers["WWW-Authenticate"]


def test_token_for_another_resource_is_refused(site: Site) -> None:
    """RFC 8707 §2: a token requested for one resource carries it as aud (RFC 9068 §3);
    RFC 9068 §4: the MCP server "MUST" reject a token whose aud does not name it, so a
    token for another API never reaches a tool, while one for the MCP server does."""
    other = site.url.replace("/mcp", "/other-api")
    site.srv.add_resource(other, scopes=["other:read"], name="Another API")
    site.srv.add_client("svc", client_secret="svc-secret", scopes=[READ, "other:read"],
                        grant_types=["client_credentials"])  # fmt: skip

    def token_for(resource: str, scope: str) -> str:
        form = {"grant_type": "client_credentials", "scope": scope, "resource": resource}
        with requests.post(site.issuer + "/token", data=form, auth=("svc", "svc-secret"),
                           timeout=10) as r:  # fmt: skip
            assert r.status_code == 200, r.text
            return str(r.json()["access_token"])

    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
    headers = {"Accept": "application/json, text/event-stream"}
    wrong = token_for(other, "other:read")
    with requests.post(site.url, json=initialize, timeout=10,
                       headers={**headers, "Authorization": f"Bearer {wrong}"}) as r:  # fmt: skip
        assert r.status_code == 401
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
        assert "another audience" in json.loads(r.text)["error_description"]
    right = token_for(site.url, READ)
    with requests.post(site.url, json=initialize, timeout=10,
                       headers={**headers, "Authorization": f"Bearer {right}"}) as r:  # fmt: skip
        assert r.status_code == 200, r.text
