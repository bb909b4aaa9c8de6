"""Interop: a server-side web app on Authlib's Flask client, written as Authlib's docs show
("Flask OAuth Client": ``oauth.register`` with ``server_metadata_url``, then
``authorize_redirect`` and ``authorize_access_token``, the user being
``token["userinfo"]``, which Authlib parses from the ID token), driven through codeflow's
pages in a real headless Chromium: the app greets the user by the name in the ID token,
and logging out (RP-Initiated Logout 1.0) ends the provider's session (issue 14 items 2
and 8). The settings are README's "Connect your app".
"""

from __future__ import annotations

import html
import secrets
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
from sdk_support import free_port, serving
from test_browser import CHROMIUM, Tab, launched_chromium, sync_playwright

import codeflow

flask = pytest.importorskip("flask")
flask_client = pytest.importorskip("authlib.integrations.flask_client")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.http,
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not importable"),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)"),
]

USERNAME, PASSWORD = "alice", "alice-flask-password"
CLIENT_ID, CLIENT_SECRET = "flask-app", "flask-app-secret"


def make_app(issuer: str) -> Any:
    """The web app of Authlib's "Flask OAuth Client" docs, with README's settings."""
    app = flask.Flask(__name__)
    app.secret_key = secrets.token_hex(16)
    oauth = flask_client.OAuth(app)
    oauth.register(
        "codeflow",
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        server_metadata_url=issuer + "/.well-known/openid-configuration",
        client_kwargs={"scope": "openid profile email", "code_challenge_method": "S256"},
    )

    @app.route("/")
    def home() -> str:
        user = flask.session.get("user")
        if user:
            return f'<h1>Hello, {html.escape(user["name"])}</h1><a href="/logout">Log out</a>'
        return '<h1>Signed out</h1><a href="/login">Log in</a>'

    @app.route("/login")
    def login() -> Any:
        return oauth.codeflow.authorize_redirect(flask.url_for("auth", _external=True))

    @app.route("/auth")
    def auth() -> Any:
        token = oauth.codeflow.authorize_access_token()
        flask.session["user"] = token["userinfo"]
        flask.session["id_token"] = token["id_token"]
        return flask.redirect("/")

    @app.route("/logout")
    def logout() -> Any:
        id_token = flask.session.pop("id_token", "")
        flask.session.pop("user", None)
        end_session = oauth.codeflow.load_server_metadata()["end_session_endpoint"]
        query = {"id_token_hint": id_token,
                 "post_logout_redirect_uri": flask.url_for("home", _external=True)}  # fmt: skip
        return flask.redirect(f"{end_session}?{urllib.parse.urlencode(query)}")

    return app


@pytest.fixture(scope="module")
def chromium_browser() -> Iterator[Any]:
    with launched_chromium() as browser:
        yield browser


@pytest.fixture
def web_app() -> Iterator[tuple[codeflow.Server, str]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    srv = codeflow.Server()
    with srv.running() as issuer:
        srv.add_client(CLIENT_ID, client_secret=CLIENT_SECRET, name="Flask app",
                       redirect_uris=[base + "/auth"],
                       post_logout_redirect_uris=[base + "/"])  # fmt: skip
        srv.add_user(USERNAME, PASSWORD, claims={"name": "Alice Liddell",
                                                 "email": "alice@example.com"})  # fmt: skip
        with serving(make_app(issuer), port) as url:
            yield srv, url


def test_authlib_flask_app_greets_the_user_from_the_id_token_and_logs_out(
    chromium_browser: Any, web_app: tuple[codeflow.Server, str]
) -> None:
    """OIDC Core §5.4 and §2: with profile granted, the ID token carries the user's name,
    which an app that reads the user from the ID token shows ("Hello, Alice Liddell", not
    "Hello, alice"). RP-Initiated Logout 1.0 §2: the logout request with the ID token as
    id_token_hint ends the user's session at the provider, and §3 sends the browser back
    to the registered post_logout_redirect_uri; the next login asks for the password."""
    srv, url = web_app
    tab = Tab(chromium_browser)
    page = tab.page
    try:
        page.goto(url + "/")
        page.get_by_role("link", name="Log in").click()
        page.wait_for_url(srv.issuer + "/authorize?**")
        page.get_by_label("Username").fill(USERNAME)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("button", name="Allow").click()
        page.wait_for_url(url + "/")
        assert page.locator("h1").inner_text() == "Hello, Alice Liddell"

        page.get_by_role("link", name="Log out").click()
        page.wait_for_url(url + "/")
        assert page.locator("h1").inner_text() == "Signed out"
        page.get_by_role("link", name="Log in").click()
        page.wait_for_url(srv.issuer + "/authorize?**")
        assert page.locator("h1").inner_text() == "Sign in"
    finally:
        tab.close()
