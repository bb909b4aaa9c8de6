"""Consent for public clients whose redirect URI cannot prove who they are (RFC 8252 §8.6,
RFC 6819 §4.2.3, issue 12 item 4): a native app's loopback redirect URI accepts any port
(RFC 8252 §7.3), so any process on the device can ask in its name. Its consent is never
remembered: prompt=none answers consent_required and the consent page is shown each time.

In-process through the WSGI app (wsgiref.validate).
"""

from __future__ import annotations

import pytest
from conftest import (
    CONFIDENTIAL,
    ISSUER,
    PASSWORD,
    PUBLIC,
    REDIRECT,
    USERNAME,
    form_fields,
    new_flow,
    query_of,
)
from wsgi_client import Response, WSGIClient

import codeflow

NATIVE = "native-app"
# Registered without a port (RFC 8252 §7.3: any port at request time), IPv4 and IPv6,
# with a fixed port, and a private-use URI scheme (RFC 8252 §7.1).
ANY_PORT, ANY_PORT_V6 = "http://127.0.0.1/callback", "http://[::1]/callback"
FIXED_PORT, PRIVATE_USE = "http://127.0.0.1:7000/callback", "com.example.app://callback"
SPA = "https-spa"
SPA_REDIRECT = "https://spa.example.com/callback"


@pytest.fixture
def server(server: codeflow.Server) -> codeflow.Server:
    server.add_client(NATIVE, redirect_uris=[ANY_PORT, ANY_PORT_V6, FIXED_PORT, PRIVATE_USE])
    server.add_client(SPA, redirect_uris=[SPA_REDIRECT])
    return server


def approve(browser: WSGIClient, r: Response) -> dict[str, str]:
    """Sign in if asked, approve the consent page: the callback's query."""
    if 'action="login"' in r.text:
        data = {**form_fields(r.text), "username": USERNAME, "password": PASSWORD}
        r = browser.post("/login", data=data)
        assert r.status == 303, r.text
        r = browser.get(r.location)
    assert r.status == 200 and 'action="consent"' in r.text, r.text
    r = browser.post("/consent", data={**form_fields(r.text), "decision": "approve"})
    assert r.status == 303, r.text
    return query_of(r.location)


def test_a_local_process_cannot_reuse_a_native_apps_consent_with_prompt_none(server) -> None:
    """RFC 8252 §8.6: "Authorization servers SHOULD NOT process authorization requests
    automatically without user consent or interaction, except when the identity of the
    client can be assured. This includes the case where the user has previously approved
    an authorization request for a given client id"; OIDC Core §3.1.2.6 consent_required.

    The attack: after alice approved the native app once, another process on her machine
    asks in the app's name on a port of its own, with its own PKCE pair and prompt=none
    and offline_access. It gets consent_required, not a code (and so no refresh token)."""
    browser = WSGIClient(server.wsgi)
    legit = new_flow(NATIVE, redirect_uri="http://127.0.0.1:51000/callback")
    assert "code" in approve(browser, browser.get("/authorize", params=legit.params))

    attacker_uri = "http://127.0.0.1:51999/callback"
    attack = new_flow(NATIVE, redirect_uri=attacker_uri, prompt="none")
    r = browser.get("/authorize", params=attack.params)
    assert r.status == 302, r.text
    assert r.location.startswith(attacker_uri + "?")
    q = query_of(r.location)
    assert q["error"] == "consent_required", q
    assert q["state"] == attack.params["state"] and q["iss"] == ISSUER
    assert "code" not in q


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("http://127.0.0.1:51000/callback", "http://127.0.0.1:51999/callback"),
        ("http://[::1]:51000/callback", "http://[::1]:51999/callback"),
        (FIXED_PORT, FIXED_PORT),
        (PRIVATE_USE, PRIVATE_USE),
        (FIXED_PORT, "http://127.0.0.1:51999/callback"),
    ],
    ids=["any-port", "any-port-ipv6", "fixed-port", "private-use-scheme", "across-uris"],
)
def test_a_native_app_gets_the_consent_page_every_time(server, first, second) -> None:
    """RFC 8252 §8.6: unless the identity of the client can be proven, "the request SHOULD
    be processed as if no previous request had been approved"; RFC 6819 §5.2.3.5: repeat
    authorizations of a public client are processed automatically only when "the client
    is validated using a pre-registered redirect URI". No loopback or private-use redirect
    URI can validate a public client: any process may listen or register there."""
    browser = WSGIClient(server.wsgi)
    approve(browser, browser.get("/authorize", params=new_flow(NATIVE, redirect_uri=first).params))
    flow = new_flow(NATIVE, redirect_uri=second)
    r = browser.get("/authorize", params=flow.params)
    assert r.status == 200 and 'action="consent"' in r.text, r.text
    assert "code" in approve(browser, r)


def test_the_test_clients_loopback_uri_with_a_port_is_not_remembered_either(server) -> None:
    """RFC 8252 §8.6 for a public client registered with both a fixed-port loopback URI
    and a native one (the suite's PUBLIC client): neither assures its identity."""
    browser = WSGIClient(server.wsgi)
    approve(browser, browser.get("/authorize", params=new_flow(PUBLIC).params))
    r = browser.get("/authorize", params=new_flow(PUBLIC, prompt="none").params)
    assert query_of(r.location)["error"] == "consent_required"


@pytest.mark.parametrize(
    ("client_id", "redirect_uri"),
    [(CONFIDENTIAL, REDIRECT), (SPA, SPA_REDIRECT)],
    ids=["confidential", "public-https"],
)
def test_consent_is_remembered_where_the_client_is_identified(
    server, client_id, redirect_uri
) -> None:
    """RFC 6819 §5.2.3.5: "Authorization servers should not automatically process repeat
    authorizations to public clients unless the client is validated using a pre-registered
    redirect URI": an https redirect URI is one (only its host receives the code), and a
    confidential client authenticates when it redeems the code (RFC 6749 §4.1.3). Both
    get a code at once for scopes approved before, prompt=none included."""
    browser = WSGIClient(server.wsgi)
    flow = new_flow(client_id, redirect_uri=redirect_uri)
    approve(browser, browser.get("/authorize", params=flow.params))
    again = new_flow(client_id, redirect_uri=redirect_uri, prompt="none")
    r = browser.get("/authorize", params=again.params)
    assert r.status == 302 and "code" in query_of(r.location), r.text
