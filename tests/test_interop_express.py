"""Interop: a server-side web app on express-openid-connect (npm, pinned in
tests/interop/package.json and its lock file), configured as its README shows, in a real
headless Chromium against a live codeflow (issue 14 item 8):

- the app greets the user by the name in the ID token (OIDC Core §5.4);
- a logout at the provider reaches the app by Back-Channel Logout 1.0, and the library
  then ends the app's own session;
- a logout from the app (RP-Initiated Logout 1.0) frames another app's front-channel
  logout page (Front-Channel Logout 1.0 §3), which Chromium loads, and then returns to
  the app.

The app is tests/interop/express_app.mjs, run with node on its own loopback port.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from sdk_support import free_port, serving
from test_browser import CHROMIUM, Tab, launched_chromium, pkce_request, sync_playwright
from test_interop_node import INTEROP, NODE, npm_packages

import codeflow

pytestmark = [
    pytest.mark.browser,
    pytest.mark.http,
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not importable"),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)"),
    pytest.mark.skipif(NODE is None, reason="node/npm are not installed: npm installs the library"),
]

USERNAME, PASSWORD = "alice", "alice-express-password"
CLAIMS = {"name": "Alice Liddell", "email": "alice@example.com", "email_verified": True}
SECRET = "express-app-client-secret"


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    npm_packages()
    with launched_chromium() as browser:
        yield browser


class Receiver:
    """Another relying party's front-channel logout page: records each request it gets."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        query = dict(urllib.parse.parse_qsl(environ.get("QUERY_STRING", "")))
        with self.lock:
            self.requests.append((environ["PATH_INFO"], query))
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [b"<!doctype html><title>other app</title><p>signed out</p>"]


@pytest.fixture
def express_app() -> Iterator[tuple[codeflow.Server, str]]:
    """codeflow, and the express app registered with it (a confidential client with its
    back-channel logout URI, the library's default route): (server, app URL)."""
    port = free_port()
    app = f"http://127.0.0.1:{port}"
    srv = codeflow.Server()
    with srv.running() as issuer:
        srv.add_client(
            "express-app", client_secret=SECRET, name="Express app",
            redirect_uris=[app + "/callback"], post_logout_redirect_uris=[app],
            backchannel_logout_uri=app + "/backchannel-logout",
            backchannel_logout_session_required=True,
        )  # fmt: skip
        srv.add_user(USERNAME, PASSWORD, claims=CLAIMS)
        node = subprocess.Popen(  # noqa: S603 -- node from PATH, our own script
            [str(NODE), "express_app.mjs", str(port), issuer, "express-app", SECRET],
            cwd=INTEROP, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert node.stdout is not None
            line = node.stdout.readline()
            assert line.strip() == "listening", line + (node.stderr.read() if node.stderr else "")
            yield srv, app
        finally:
            node.terminate()
            node.communicate(timeout=10)  # and close its pipes


def sign_in_at_the_app(page: Any, srv: codeflow.Server, app: str) -> None:
    page.goto(app + "/login")
    page.wait_for_url(srv.issuer + "/authorize?**")
    page.get_by_label("Username").fill(USERNAME)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Allow").click()
    page.wait_for_url(app + "/")


def test_the_app_greets_the_user_and_a_backchannel_logout_ends_its_session(
    chromium: Any, express_app: tuple[codeflow.Server, str]
) -> None:
    """OIDC Core §5.4: the profile scope's claims in the ID token, from which
    express-openid-connect reads `req.oidc.user`. Back-Channel Logout 1.0 §2.5-§2.7: the
    user signs out at the provider itself; the provider POSTs a Logout Token to the app,
    which validates it and ends the app's session on its next request."""
    srv, app = express_app
    tab = Tab(chromium)
    page = tab.page
    try:
        sign_in_at_the_app(page, srv, app)
        assert page.locator("#who").inner_text() == "Hello, Alice Liddell"

        page.goto(srv.issuer + "/logout")
        page.get_by_role("button", name="Sign out").click()
        assert page.locator("h1").inner_text() == "You are signed out"

        # The Logout Token is sent from another thread (§2.8: it never holds up the user).
        deadline = time.monotonic() + 10
        while True:
            page.goto(app + "/")
            if page.locator("#who").inner_text() == "Signed out" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert page.locator("#who").inner_text() == "Signed out"

        # The provider's session ended too: signing in again asks for the password.
        page.goto(app + "/login")
        page.wait_for_url(srv.issuer + "/authorize?**")
        assert page.locator("h1").inner_text() == "Sign in"
        assert tab.errors == []
    finally:
        tab.close()


def test_logout_from_the_app_frames_another_apps_frontchannel_page_and_returns(
    chromium: Any, express_app: tuple[codeflow.Server, str]
) -> None:
    """RP-Initiated Logout 1.0 §2-§3: the app's /logout sends the browser to the provider's
    end_session_endpoint with its id_token_hint and post_logout_redirect_uri. Front-Channel
    Logout 1.0 §3: the provider's page renders the other app's frontchannel_logout_uri in
    an iframe with iss and sid, which Chromium loads (the page's CSP allows that frame);
    then, with no JavaScript, the page returns to the app once it has loaded."""
    srv, app = express_app
    receiver = Receiver()
    with serving(receiver) as other:
        srv.add_client(
            "other-app", client_secret="other-app-secret", name="Other app",
            redirect_uris=[other + "/callback"],
            frontchannel_logout_uri=other + "/frontchannel-logout",
        )  # fmt: skip
        tab = Tab(chromium)
        page = tab.page
        try:
            sign_in_at_the_app(page, srv, app)
            # The user also signed in to the other app (one SSO session, a second grant: a
            # confidential client's consent is remembered).
            query = urllib.parse.urlencode(pkce_request("other-app", other + "/callback"))
            page.goto(srv.issuer + "/authorize?" + query)
            page.get_by_role("button", name="Allow").click()
            page.wait_for_url(other + "/callback?**")

            page.goto(app + "/logout")
            page.wait_for_url(app + "/", timeout=15_000)
            assert page.locator("#who").inner_text() == "Signed out"

            frames = [q for path, q in receiver.requests if path == "/frontchannel-logout"]
            assert len(frames) == 1, json.dumps(receiver.requests)
            assert frames[0]["iss"] == srv.issuer
            assert frames[0]["sid"]
            assert tab.errors == []
        finally:
            tab.close()
