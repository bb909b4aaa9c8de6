"""RFC 6749 §4.1: the whole authorization code flow on the wire, as raw HTTP (requests, no
SDK) against real servers on 127.0.0.1: the stdlib threaded server (``Server.running``) and
waitress. The same flow in-process through the WSGI app must look the same, step by step.

discovery (RFC 8414) → authorize (§4.1.1) → login → consent → callback (§4.1.2, RFC 9207)
→ token (§4.1.3, §5.1) → introspect (RFC 7662) → refresh (§6) → revoke (RFC 7009).
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import pytest
import requests
import waitress
from conftest import (
    CONFIDENTIAL,
    ISSUER,
    NATIVE_REDIRECT,
    PASSWORD,
    PUBLIC,
    REDIRECT,
    SECRET,
    USERNAME,
    browser_authorize,
    form_fields,
    new_flow,
    query_of,
    redeem_over_http,
    share_session_keys,
)
from wsgi_client import WSGIClient

import codeflow

TIMEOUT = 10


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    text: str

    def json(self) -> dict:
        return json.loads(self.text)


class Wire(Protocol):
    """One party on the wire (a browser, or a client app's back end)."""

    def get(self, url: str, params: dict[str, str] | None = None) -> Reply: ...

    def post(
        self, url: str, data: dict[str, str], auth: tuple[str, str] | None = None
    ) -> Reply: ...


class OverHTTP:
    """A party on a real socket: requests with its own cookie jar, redirects not followed."""

    def __init__(self) -> None:
        self.session = requests.Session()

    def get(self, url: str, params: dict[str, str] | None = None) -> Reply:
        r = self.session.get(url, params=params, allow_redirects=False, timeout=TIMEOUT)
        return Reply(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.text)

    def post(self, url: str, data: dict[str, str], auth: tuple[str, str] | None = None) -> Reply:
        r = self.session.post(url, data=data, auth=auth, allow_redirects=False, timeout=TIMEOUT)
        return Reply(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.text)

    def close(self) -> None:
        self.session.close()


class InProcess:
    """The same party, calling the WSGI app in-process (through wsgiref.validate)."""

    def __init__(self, app) -> None:
        self.client = WSGIClient(app)

    def get(self, url: str, params: dict[str, str] | None = None) -> Reply:
        return self._reply(self.client.get(url, params=params))

    def post(self, url: str, data: dict[str, str], auth: tuple[str, str] | None = None) -> Reply:
        headers = None
        if auth is not None:
            credentials = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers = {"Authorization": f"Basic {credentials}"}
        return self._reply(self.client.post(url, data=data, headers=headers))

    @staticmethod
    def _reply(r) -> Reply:
        headers = dict(r.headers)
        if r.cookies_set:  # as requests shows several Set-Cookie headers
            headers["set-cookie"] = ", ".join(r.cookies_set)
        return Reply(r.status, headers, r.text)


def authorization_code_flow(browser: Wire, app: Wire, base: str) -> list[tuple]:
    """Run the flow with a confidential client and check each step; return what each step
    looked like on the wire (statuses, parameter names), without the values that differ
    from run to run (tokens, codes, the issuer's port)."""
    auth = (CONFIDENTIAL, SECRET)
    seen: list[tuple] = []

    # RFC 8414 §3: the client finds every endpoint in the metadata.
    r = app.get(base + codeflow.OAUTH_METADATA_PATH)
    assert r.status == 200, r.text
    assert r.headers["content-type"] == "application/json"
    meta = r.json()
    assert meta["issuer"] == base  # RFC 8414 §3.3: identical to the issuer it was fetched for
    seen.append(("discovery", r.status, sorted(meta)))

    # RFC 6749 §4.1.1: the client sends the browser to the authorization endpoint.
    flow = new_flow(scope="openid profile offline_access")
    r = browser.get(meta["authorization_endpoint"], params=flow.params)
    assert r.status == 200 and 'action="login"' in r.text, r.text
    assert r.headers["x-frame-options"] == "DENY"  # RFC 9700 §4.16: no framing
    assert r.headers["cache-control"] == "no-store"
    seen.append(("authorize", r.status, "login page"))

    # The user signs in; the form posts back to the page's own directory.
    login = urllib.parse.urljoin(meta["authorization_endpoint"], "login")
    r = browser.post(login, {**form_fields(r.text), "username": USERNAME, "password": PASSWORD})
    assert r.status == 303, r.text  # RFC 9700 §4.12: 303 after a form POST
    assert r.headers["location"].startswith(meta["authorization_endpoint"] + "?")
    assert "httponly" in r.headers["set-cookie"].lower()
    seen.append(("login", r.status, urllib.parse.urlsplit(r.headers["location"]).path))

    r = browser.get(r.headers["location"])
    assert r.status == 200 and 'action="consent"' in r.text, r.text
    seen.append(("authorize again", r.status, "consent page"))

    consent = urllib.parse.urljoin(meta["authorization_endpoint"], "consent")
    r = browser.post(consent, {**form_fields(r.text), "decision": "approve"})
    assert r.status == 303, r.text
    location = r.headers["location"]
    # RFC 6749 §4.1.2: back to the redirect_uri with code and the unchanged state;
    # RFC 9207 §2: and with iss, which the client compares with the issuer it expects.
    assert location.startswith(REDIRECT + "?")
    callback = query_of(location)
    assert callback["state"] == flow.params["state"]
    assert callback["iss"] == meta["issuer"]
    seen.append(("callback", r.status, sorted(callback)))

    # RFC 6749 §4.1.3: the client's back end exchanges the code.
    exchange = {
        "grant_type": "authorization_code",
        "code": callback["code"],
        "redirect_uri": REDIRECT,
        "code_verifier": flow.verifier,
    }
    r = app.post(meta["token_endpoint"], exchange, auth=auth)
    assert r.status == 200, r.text
    # RFC 6749 §5.1: "Cache-Control: no-store" and "Pragma: no-cache".
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["pragma"] == "no-cache"
    assert r.headers["content-type"] == "application/json"
    tokens = r.json()
    assert tokens["token_type"] == "Bearer"
    assert isinstance(tokens["expires_in"], int) and tokens["expires_in"] > 0
    assert tokens["scope"].split() == ["openid", "profile", "offline_access"]
    assert tokens["refresh_token"] != tokens["access_token"]
    seen.append(("token", r.status, sorted(tokens)))

    def introspect(token: str) -> dict:
        r = app.post(meta["introspection_endpoint"], {"token": token}, auth=auth)
        assert r.status == 200, r.text
        return r.json()

    # RFC 7662 §2.2: the access token is active, for this client and user.
    info = introspect(tokens["access_token"])
    assert info["active"] is True
    assert (info["client_id"], info["sub"], info["iss"]) == (CONFIDENTIAL, USERNAME, base)
    assert info["scope"] == tokens["scope"]
    seen.append(("introspect", 200, sorted(info)))

    # RFC 6749 §6: the refresh token buys a new access token and, rotated, a new refresh token.
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    r = app.post(meta["token_endpoint"], refresh, auth=auth)
    assert r.status == 200, r.text
    refreshed = r.json()
    assert refreshed["access_token"] != tokens["access_token"]
    assert refreshed["refresh_token"] != tokens["refresh_token"]
    assert introspect(refreshed["access_token"])["active"] is True
    assert introspect(tokens["refresh_token"]) == {"active": False}  # rotated out
    seen.append(("refresh", r.status, sorted(refreshed)))

    # RFC 7009 §2.2: 200 on revocation; §2.1: revoking the refresh token ends the grant.
    revocation = {"token": refreshed["refresh_token"], "token_type_hint": "refresh_token"}
    r = app.post(meta["revocation_endpoint"], revocation, auth=auth)
    assert r.status == 200, r.text
    for token in (refreshed["refresh_token"], refreshed["access_token"], tokens["access_token"]):
        assert introspect(token) == {"active": False}
    seen.append(("revoke", r.status, r.json()))

    # RFC 6749 §4.1.2: the code was single use.
    r = app.post(meta["token_endpoint"], exchange, auth=auth)
    assert r.status == 400
    seen.append(("code replay", r.status, r.json()["error"]))
    return seen


def register(srv: codeflow.Server) -> codeflow.Server:
    """The clients and user of conftest's ``live`` server."""
    srv.add_client(
        CONFIDENTIAL,
        client_secret=SECRET,
        redirect_uris=[REDIRECT],
        grant_types=["authorization_code", "refresh_token", "client_credentials"],
        scopes=["openid", "profile", "email", "offline_access", "api:read"],
    )
    srv.add_client(PUBLIC, redirect_uris=[REDIRECT, NATIVE_REDIRECT])
    srv.add_user(USERNAME, PASSWORD)
    return srv


@pytest.fixture
def waitress_live() -> Iterator[tuple[codeflow.Server, str]]:
    """A Server behind waitress on a free 127.0.0.1 port; yields (server, base URL).

    The port is known only once waitress has bound it, and the issuer must be that URL,
    so waitress starts with a stand-in app that calls the Server made right after."""
    apps: list = []
    sockets: dict = {}  # waitress's socket map: the listening socket and each connection
    httpd = waitress.create_server(
        lambda environ, start_response: apps[0](environ, start_response),
        map=sockets,
        host="127.0.0.1",
        port=0,
        threads=4,
    )
    url = f"http://127.0.0.1:{httpd.effective_port}"
    srv = register(share_session_keys(codeflow.Server(issuer=url)))
    apps.append(srv.wsgi)
    thread = threading.Thread(target=httpd.run, daemon=True)
    thread.start()

    def close_everything() -> None:
        httpd.close()
        for connection in list(sockets.values()):
            connection.handle_close()

    try:
        yield srv, url
    finally:
        # First let the worker threads finish: one still writing an answer pulls the
        # trigger to wake the loop, which must not be closed under it (EBADF). Then close
        # the sockets in waitress's own thread: closing them from here would pull them
        # from under its select(). With no socket left, its loop returns.
        httpd.task_dispatcher.shutdown()
        httpd.trigger.pull_trigger(close_everything)
        thread.join(timeout=5)
        assert not thread.is_alive(), "waitress did not stop"


@pytest.fixture(params=["stdlib", "waitress"])
def http_server(request: pytest.FixtureRequest) -> tuple[codeflow.Server, str]:
    """Each real HTTP server codeflow runs on: the stdlib threaded one and waitress."""
    return request.getfixturevalue("live" if request.param == "stdlib" else "waitress_live")


@pytest.mark.http
def test_the_whole_flow_over_http(http_server: tuple[codeflow.Server, str]) -> None:
    """RFC 6749 §4.1: discovery, authorization, login, consent, callback, token exchange,
    introspection, refresh and revocation all work over a real socket."""
    _, base = http_server
    browser, app = OverHTTP(), OverHTTP()
    try:
        steps = authorization_code_flow(browser, app, base)
    finally:
        browser.close()
        app.close()
    assert [step[0] for step in steps] == [
        "discovery",
        "authorize",
        "login",
        "authorize again",
        "callback",
        "token",
        "introspect",
        "refresh",
        "revoke",
        "code replay",
    ]


@pytest.mark.http
def test_http_and_in_process_flows_agree(
    http_server: tuple[codeflow.Server, str], server: codeflow.Server
) -> None:
    """RFC 6749 §4.1: the flow looks the same step by step (statuses, parameter names)
    over a real HTTP server as through the WSGI app in-process."""
    _, base = http_server
    browser, app = OverHTTP(), OverHTTP()
    try:
        over_http = authorization_code_flow(browser, app, base)
    finally:
        browser.close()
        app.close()
    in_process = authorization_code_flow(InProcess(server.wsgi), InProcess(server.wsgi), ISSUER)
    assert over_http == in_process


@pytest.mark.http
def test_public_client_flow_over_http(http_server: tuple[codeflow.Server, str]) -> None:
    """RFC 6749 §2.3 and RFC 7636 §4.5: a public client authenticates with nothing but its
    client_id and the PKCE code_verifier, refreshes, and revokes its own token."""
    _, base = http_server
    # RFC 8252 §7.3: a native client's loopback redirect may name any port.
    flow = new_flow(
        PUBLIC,
        redirect_uri=NATIVE_REDIRECT.replace("/native", ":53111/native"),
        scope="openid profile offline_access",  # OIDC Core §11: offline_access for a refresh token
    )
    with requests.Session() as browser, requests.Session() as http:
        callback = browser_authorize(base, flow, session=browser)
        assert callback["iss"] == base
        token_url = base + codeflow.TOKEN_PATH
        r = http.post(
            token_url,
            data={
                "grant_type": "authorization_code",
                "code": callback["code"],
                "redirect_uri": flow.params["redirect_uri"],
                "client_id": PUBLIC,
                "code_verifier": flow.verifier,
            },
            timeout=TIMEOUT,
        )
        assert r.status_code == 200, r.text
        tokens = r.json()
        r = http.post(
            token_url,
            data={
                "grant_type": "refresh_token",
                "refresh_token": tokens["refresh_token"],
                "client_id": PUBLIC,
            },
            timeout=TIMEOUT,
        )
        assert r.status_code == 200, r.text
        refreshed = r.json()
        r = http.post(
            base + codeflow.REVOKE_PATH,
            data={"token": refreshed["refresh_token"], "client_id": PUBLIC},
            timeout=TIMEOUT,
        )
        assert r.status_code == 200, r.text
        # RFC 9700 §4.14.2: once revoked, the refresh token buys nothing.
        r = http.post(
            token_url,
            data={
                "grant_type": "refresh_token",
                "refresh_token": refreshed["refresh_token"],
                "client_id": PUBLIC,
            },
            timeout=TIMEOUT,
        )
        assert r.status_code == 400
        assert r.json()["error"] == "invalid_grant"


@pytest.mark.http
def test_concurrent_flows_over_http(http_server: tuple[codeflow.Server, str]) -> None:
    """RFC 6749 §4.1: browsers running the flow at the same time each get their own code,
    and each code buys tokens once."""
    _, base = http_server

    def one_flow(_: int) -> str:
        flow = new_flow()
        with requests.Session() as browser:
            callback = browser_authorize(base, flow, session=browser)
        assert callback["state"] == flow.params["state"]
        r = redeem_over_http(base + codeflow.TOKEN_PATH, callback["code"], flow, timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        return r.json()["access_token"]

    with ThreadPoolExecutor(max_workers=4) as pool:
        tokens = list(pool.map(one_flow, range(8)))
    assert len(set(tokens)) == 8
