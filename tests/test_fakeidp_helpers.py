"""The fixture-level helpers a test author reaches for (issue 17 item 4): a user and a
client in one call (``add_user_and_client``), and ``codeflow_live.login(app_login_url,
user=...)``, which goes through the app under test (examples/webapp.py, logging in with
codeflow_sdk's Client) to the provider's real forms and back."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import bottle
import pytest
from codeflow_sdk import Client
from codeflow_sdk.pytest_plugin import UserAndClient, add_user_and_client
from codeflow_sdk.testing import HeadlessBrowser, LoginError, app_login
from sdk_support import free_port, serving

import codeflow

pytestmark = pytest.mark.http

ROOT = Path(__file__).resolve().parent.parent


def load_webapp():
    spec = importlib.util.spec_from_file_location("example_webapp", ROOT / "examples/webapp.py")
    assert spec is not None and spec.loader is not None
    webapp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(webapp)
    return webapp


@pytest.fixture
def app_url(codeflow_live) -> Iterator[str]:
    """examples/webapp.py on a free port, registered with one call."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    reg = codeflow_live.add_user_and_client(base + "/callback")
    client = Client(reg.issuer, reg.client_id, reg.client_secret,
                    redirect_uri=reg.redirect_uris[0])  # fmt: skip
    with serving(load_webapp().make_app(client), port) as url:
        yield url


def test_add_user_and_client_registers_both_with_defaults(codeflow_live) -> None:
    """One call: alice / wonderland with a name and an email, and the confidential
    client app / app-secret at the given redirect URI; what it made, it returns."""
    reg = codeflow_live.add_user_and_client("http://127.0.0.1:9/callback")
    assert reg == UserAndClient(
        issuer=codeflow_live.url, client_id="app", client_secret="app-secret",
        redirect_uris=("http://127.0.0.1:9/callback",), username="alice", password="wonderland",
    )  # fmt: skip
    user = codeflow_live.storage.get_user("alice")
    assert user.claims["name"] == "Alice Liddell" and user.claims["email"] == "alice@example.org"
    client = codeflow_live.storage.get_client("app")
    assert not client.public and client.redirect_uris == ("http://127.0.0.1:9/callback",)


def test_add_user_and_client_takes_other_names_and_client_options(codeflow_server) -> None:
    """The same function for an in-process server: other names, a public client (RFC 6749
    §2.1), and add_client's own options passed on."""
    reg = add_user_and_client(
        codeflow_server, ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"], username="bob",
        password="builder", claims={"name": "Bob"}, client_id="spa", client_secret=None,
        access_token_jwt=True,
    )  # fmt: skip
    assert reg.username == "bob" and reg.client_secret is None
    client = codeflow_server.storage.get_client("spa")
    assert client.public and client.access_token_jwt and len(client.redirect_uris) == 2
    assert codeflow_server.storage.get_user("bob").claims == {"name": "Bob"}


def test_login_goes_through_the_app_to_the_provider_and_back(codeflow_live, app_url) -> None:
    """RFC 6749 §4.1 as the user lives it: the app's /login redirects to the provider,
    the user signs in and consents there, and the app's callback lands on its home page."""
    page = codeflow_live.login(app_url + "/login", user="alice")
    assert page.status == 200 and page.url == app_url + "/"
    assert "Hello, Alice Liddell" in page.text
    assert [e.path for e in codeflow_live.transcript.find(method="POST")] == [
        codeflow.LOGIN_PATH, codeflow.CONSENT_PATH, codeflow.TOKEN_PATH,
    ]  # fmt: skip


def test_login_defaults_to_the_last_user_and_remembers_passwords(codeflow_live, app_url) -> None:
    codeflow_live.add_user("bob", "builder", claims={"name": "Bob"})
    assert "Hello, Bob" in codeflow_live.login(app_url + "/login").text
    codeflow_live.set_password("alice", "new password")
    assert "Hello, Alice" in codeflow_live.login(app_url + "/login", user="alice").text


def test_a_browser_passed_in_keeps_the_apps_session(codeflow_live, app_url) -> None:
    browser = HeadlessBrowser()
    codeflow_live.login(app_url + "/login", browser=browser)
    assert "Hello, Alice Liddell" in browser.open(app_url + "/").text
    assert "Log in with codeflow" in HeadlessBrowser().open(app_url + "/").text


def test_a_denied_consent_ends_on_the_apps_error_page(codeflow_live, app_url) -> None:
    """RFC 6749 §4.1.2.1 access_denied reaches the app, which says so."""
    page = codeflow_live.login(app_url + "/login", decision="deny")
    assert page.status == 400 and "access_denied" in page.text


def test_a_wrong_password_raises_login_error(codeflow_live, app_url) -> None:
    with pytest.raises(LoginError, match="sign-in failed: Wrong username or password") as err:
        codeflow_live.login(app_url + "/login", user="alice", password="not it")
    assert 'name="password"' in err.value.page  # the provider's page, for the test to show


def test_an_app_that_does_not_redirect_raises_login_error(codeflow_live) -> None:
    app = bottle.Bottle()
    app.get("/login", callback=lambda: "already signed in?")
    with serving(app) as url, pytest.raises(LoginError, match=r"answered 200 .* instead of"):
        codeflow_live.login(url + "/login")


def test_an_app_that_redirects_to_another_provider_raises_login_error(codeflow_live) -> None:
    app = bottle.Bottle()
    app.get("/login", callback=lambda: bottle.redirect("http://127.0.0.1:9/authorize?x=1"))
    with serving(app) as url, pytest.raises(LoginError, match="not to the provider"):
        codeflow_live.login(url + "/login")


def test_app_login_works_with_any_provider_without_the_fixture(codeflow_live, app_url) -> None:
    """codeflow_sdk.testing.app_login speaks only HTTP: without provider=, the first
    redirect to another origin is the provider."""
    page = app_login(app_url + "/login", "alice", "wonderland")
    assert "Hello, Alice Liddell" in page.text and page.headers["content-type"].startswith(
        "text/html"
    )
