"""How a third party tests its own login: the app (webapp.py) against codeflow run inside
the test suite as a fake identity provider. No browser, no network beyond 127.0.0.1.

    python -m pytest examples/test_thirdparty_login.py

codeflow's auto-approve answers every login at once as the chosen user, so a plain HTTP
session (requests) plays the browser through the whole redirect dance; one test drives
the real login and consent forms instead.
"""

# ruff: noqa: S101, S106 -- pytest checks with assert; the test IdP has fake secrets

from __future__ import annotations

import html
import re
import socketserver
import threading
from collections.abc import Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import requests
import webapp  # the app under test: examples/webapp.py
from codeflow_sdk import Client

import codeflow


class ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def idp() -> Iterator[tuple[codeflow.Server, str]]:
    """A fake identity provider that logs everyone in as alice without asking."""
    srv = codeflow.Server(auto_approve="alice")
    with srv.running() as url:
        srv.add_user("alice", "wonderland", claims={"name": "Alice Liddell",
                                                    "email": "alice@example.org"})  # fmt: skip
        srv.add_user("bob", "builder", claims={"name": "Bob"})
        yield srv, url


@pytest.fixture
def app_url(idp: tuple[codeflow.Server, str]) -> Iterator[str]:
    """The web app on a free port, registered with the provider as a client."""
    srv, issuer = idp
    httpd = make_server("127.0.0.1", 0, lambda e, s: [], ThreadingServer, Quiet)
    base = f"http://127.0.0.1:{httpd.server_port}"
    srv.add_client("webapp", client_secret="webapp-secret", redirect_uris=[f"{base}/callback"],
                   post_logout_redirect_uris=[f"{base}/"])  # fmt: skip
    client = Client(issuer, "webapp", "webapp-secret", redirect_uri=f"{base}/callback")
    httpd.set_app(webapp.make_app(client, post_logout_redirect_uri=f"{base}/"))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield base
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_login_shows_the_users_claims(app_url: str) -> None:
    """OIDC Core §3.1: logging in lands on the home page with the user's claims."""
    with requests.Session() as browser:
        r = browser.get(f"{app_url}/login")
        assert r.status_code == 200 and r.url == f"{app_url}/"
        assert "Hello, Alice Liddell" in r.text and "alice@example.org" in r.text


def test_login_as_another_user(idp: tuple[codeflow.Server, str], app_url: str) -> None:
    """OIDC Core §5.3: the page shows whoever the provider says signed in."""
    idp[0].auto_approve = "bob"
    with requests.Session() as browser:
        assert "Hello, Bob" in browser.get(f"{app_url}/login").text


def test_logout_forgets_the_user(app_url: str) -> None:
    """OpenID Connect RP-Initiated Logout 1.0 §2: logging out comes back logged out."""
    with requests.Session() as browser:
        browser.get(f"{app_url}/login")
        r = browser.post(f"{app_url}/logout")
        assert r.url.startswith(f"{app_url}/") and "Log in with codeflow" in r.text
        assert "Log in with codeflow" in browser.get(f"{app_url}/").text


def test_a_forged_callback_is_refused(app_url: str) -> None:
    """RFC 6749 §10.12: a callback whose state this browser did not start is refused."""
    with requests.Session() as browser:
        r = browser.get(f"{app_url}/login", allow_redirects=False)
        r = browser.get(r.headers["Location"], allow_redirects=False)  # the provider answers
        forged = re.sub(r"state=[^&]+", "state=forged", r.headers["Location"])
        r = browser.get(forged)
        assert r.status_code == 400 and "invalid_state" in r.text


def test_the_real_login_form(idp: tuple[codeflow.Server, str], app_url: str) -> None:
    """OIDC Core §3.1.2.3: the user signs in and consents on the provider's own forms."""
    idp[0].auto_approve = None
    with requests.Session() as browser:
        r = browser.get(f"{app_url}/login")
        assert "Sign in" in r.text
        r = browser.post(r.url.split("/authorize")[0] + "/login",
                         data={**hidden_fields(r.text), "username": "alice",
                               "password": "wonderland"})  # fmt: skip
        assert "Allow access?" in r.text
        r = browser.post(r.url.split("/authorize")[0] + "/consent",
                         data={**hidden_fields(r.text), "decision": "approve"})  # fmt: skip
        assert r.url == f"{app_url}/" and "Hello, Alice Liddell" in r.text


def hidden_fields(page: str) -> dict[str, str]:
    return {
        name: html.unescape(value)
        for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page)
    }
