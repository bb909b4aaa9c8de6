"""Interop: oidc-client-ts (npm, pinned in tests/interop/package.json and its lock file), a
single-page app in a real headless Chromium, against a live codeflow on another origin:
log in (code flow with PKCE, public client), userinfo, a refresh, and logout with
revocation, every call a cross-origin fetch that CORS must allow (issue 14 items 1 and 8).

The app is tests/interop/spa/index.html, served with the library's browser build on its
own loopback port, configured as oidc-client-ts's README shows. Chromium reports any
request CORS blocks on the console; none may appear.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sdk_support import free_port, serving
from test_browser import CHROMIUM, Tab, launched_chromium, sync_playwright
from test_interop_node import INTEROP, NODE, npm_packages

import codeflow

pytestmark = [
    pytest.mark.browser,
    pytest.mark.http,
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not importable"),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)"),
    pytest.mark.skipif(NODE is None, reason="node/npm are not installed: npm installs the library"),
]

SPA = INTEROP / "spa" / "index.html"
LIBRARY = INTEROP / "node_modules" / "oidc-client-ts" / "dist" / "browser" / "oidc-client-ts.js"
USERNAME, PASSWORD = "alice", "alice-spa-password"
CLAIMS = {"name": "Alice Liddell", "email": "alice@example.com", "email_verified": True}


def spa_app(settings: dict[str, str]) -> Any:
    """The SPA's origin: its page (at / and at the redirect URI /callback) and the library."""
    page = SPA.read_text().replace("/*SETTINGS*/null", json.dumps(settings)).encode()
    library = Path(LIBRARY).read_bytes()

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        if path in ("/", "/callback"):
            body, ctype = page, "text/html; charset=utf-8"
        elif path == "/oidc-client-ts.js":
            body, ctype = library, "text/javascript"
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        start_response("200 OK", [("Content-Type", ctype), ("Cache-Control", "no-store")])
        return [body]

    return app


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    npm_packages()
    with launched_chromium() as browser:
        yield browser


@pytest.fixture
def spa() -> Iterator[tuple[codeflow.Server, str]]:
    """codeflow and the SPA, each on its own loopback port: (server, SPA URL). The SPA is
    a public client registered with its redirect URI, whose origin CORS then allows; its
    ID tokens are minimal, so the name it shows can only come from userinfo."""
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    srv = codeflow.Server()
    with srv.running() as issuer:
        srv.add_client(
            "spa", name="Single-page app", redirect_uris=[origin + "/callback"],
            post_logout_redirect_uris=[origin + "/"], minimal_id_token=True,
        )  # fmt: skip
        srv.add_user(USERNAME, PASSWORD, claims=CLAIMS)
        settings = {"authority": issuer, "client_id": "spa",
                    "redirect_uri": origin + "/callback",
                    "post_logout_redirect_uri": origin + "/"}  # fmt: skip
        with serving(spa_app(settings), port) as url:
            yield srv, url


def test_oidc_client_ts_signs_in_reads_userinfo_refreshes_and_signs_out(
    chromium: Any, spa: tuple[codeflow.Server, str]
) -> None:
    """OAuth 2.0 for Browser-Based Apps (draft) "Cross-Domain Requests": "authorization
    servers MUST support the necessary CORS headers (defined in [Fetch]) to allow the
    browser to make the request". oidc-client-ts, from the SPA's origin: discovery and JWKS,
    the code exchange (RFC 6749 §4.1.3 with RFC 7636), userinfo (OIDC Core §5.3), a refresh
    (RFC 6749 §6, with the ID token OIDC Core §12.2 allows), revocation on sign-out (RFC
    7009) and RP-Initiated Logout 1.0 §2, which ends the provider's session."""
    srv, url = spa
    tab = Tab(chromium)
    page = tab.page
    try:
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('status').textContent !== 'Loading'")
        assert page.locator("#status").inner_text() == "Signed out"

        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(srv.issuer + "/authorize?**")
        page.get_by_label("Username").fill(USERNAME)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("button", name="Allow").click()
        page.wait_for_url(url + "/")
        page.wait_for_function("document.getElementById('status').textContent !== 'Loading'")
        assert page.locator("#error").inner_text() == ""
        assert page.locator("#status").inner_text() == "Signed in"
        assert page.locator("#sub").inner_text() == USERNAME
        assert page.locator("#name").inner_text() == "Alice Liddell"  # from userinfo
        first_token = page.locator("#token").inner_text()

        page.get_by_role("button", name="Refresh").click()
        page.wait_for_function("['Refreshed', 'Error'].includes("
                               "document.getElementById('status').textContent)")  # fmt: skip
        assert page.locator("#error").inner_text() == ""
        assert page.locator("#sub").inner_text() == USERNAME
        assert page.locator("#token").inner_text() != first_token
        [grant] = srv.list_grants(USERNAME, "spa")
        assert grant.refresh_tokens == 1

        page.get_by_role("button", name="Log out").click()
        page.wait_for_url(url + "/**")
        page.wait_for_function("document.getElementById('status').textContent === 'Signed out'")
        assert [g.refresh_tokens for g in srv.list_grants(USERNAME, "spa")] in ([], [0])

        # The provider's session ended: signing in again asks for the password.
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(srv.issuer + "/authorize?**")
        assert page.locator("h1").inner_text() == "Sign in"
        assert tab.errors == []
    finally:
        tab.close()
