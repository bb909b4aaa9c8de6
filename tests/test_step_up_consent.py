"""Step-up authorization in a real headless Chromium: an API answers 403
``insufficient_scope`` with the scope it needs (RFC 6750 §3.1), the app asks again for the
larger scope (RFC 6749 §3.3, RFC 8707 §2.1 for the same resource), and the consent page
asks only for what is added, listing what the user already allowed as such.

codeflow, the API (``require_bearer`` with ``BearerValidator(resource=...)``) and the app's
callback each run on their own socket on 127.0.0.1; the SDK's ``Client`` plays the app.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import requests
from codeflow_sdk import BearerValidator, Client, require_bearer
from conftest import CONFIDENTIAL, make_server, new_flow
from oidc_helpers import approve, is_consent_page, submit_login
from sdk_support import free_port, serving
from test_browser import CHROMIUM, launched_chromium, sync_playwright
from wsgi_client import WSGIClient

import codeflow

try:
    from playwright.sync_api import Browser, Page
except ImportError:  # pragma: no cover - the dev extra installs it
    pass


def in_chromium(test: Callable[..., None]) -> Callable[..., None]:
    """The marks of a test in the real browser: skipped where there is none."""
    for mark in (
        pytest.mark.browser,
        pytest.mark.http,
        pytest.mark.skipif(sync_playwright is None, reason="playwright is not importable"),
        pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary"),
    ):
        test = mark(test)
    return test


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    with launched_chromium() as browser:
        yield browser


def landing(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"back at the app"]


def notes(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "application/json")])
    return [json.dumps({"written": True}).encode()]


def authorize_in(page: Page, url: str, callback: str) -> str:
    """Open the authorization URL; sign in if asked; return the consent page's text."""
    page.goto(url)
    if page.locator("input[name=password]").count():
        page.fill("input[name=username]", "alice")
        page.fill("input[name=password]", "alice-password")
        page.click("button[type=submit]")
    page.wait_for_selector("button[value=approve]")
    return page.inner_text("main")


def approve_in(page: Page, callback: str) -> str:
    page.click("button[value=approve]")
    page.wait_for_url(re.compile("^" + re.escape(callback)))
    return page.url


@in_chromium
def test_step_up_asks_consent_for_the_added_scope_only(chromium: Browser) -> None:
    """RFC 6750 §3.1: "insufficient_scope ... The resource server SHOULD respond with the
    HTTP 403 (Forbidden) status code and MAY include the scope attribute with the scope
    necessary to access the protected resource." The app asks for it; consent shows the
    added scope to allow and the granted one as already allowed, in the real pages."""
    srv = codeflow.Server()
    app_port, api_port = free_port(), free_port()
    callback = f"http://127.0.0.1:{app_port}/callback"
    resource = f"http://127.0.0.1:{api_port}/notes"
    with srv.running() as issuer, serving(landing, app_port):
        srv.add_resource(resource, scopes=["notes:read", "notes:write"], name="Notes")
        srv.add_client("notes-app", client_secret="notes-secret", redirect_uris=[callback],
                       name="Notes App", scopes=["openid"])  # fmt: skip
        srv.add_user("alice", "alice-password")
        validator = BearerValidator(issuer, resource=resource)
        with serving(require_bearer(notes, validator, "notes:write"), api_port):
            client = Client.for_resource(resource, "notes-app", "notes-secret", callback)
            context = chromium.new_context()
            page = context.new_page()
            try:
                url, record = client.start_login("notes:read")
                first = authorize_in(page, url, callback)
                assert "Notes" in first and resource in first and "notes:read" in first
                assert "already allowed" not in first
                tokens = client.finish_login(approve_in(page, callback), record)

                r = requests.get(resource, timeout=10,
                                 headers={"Authorization": f"Bearer {tokens.access_token}"})
                assert r.status_code == 403
                needed = re.search(r'scope="([^"]*)"', r.headers["WWW-Authenticate"])
                assert needed is not None and needed.group(1) == "notes:write"

                wider = " ".join(dict.fromkeys(("notes:read", *needed.group(1).split())))
                url, record = client.start_login(wider)
                second = authorize_in(page, url, callback)
                asked, _, before = second.partition("You already allowed it to:")
                assert "also asks to" in asked and "notes:write" in asked
                assert "notes:read" not in asked, "already granted: not asked again"
                assert "notes:read" in before and "notes:write" not in before
                tokens = client.finish_login(approve_in(page, callback), record)
                assert set(tokens.scope) == {"notes:read", "notes:write"}
                r = requests.get(resource, timeout=10,
                                 headers={"Authorization": f"Bearer {tokens.access_token}"})
                assert r.status_code == 200, r.text

                # Everything granted now: the same request is answered without a page.
                url, record = client.start_login(wider)
                page.goto(url)
                page.wait_for_url(re.compile("^" + re.escape(callback)))
            finally:
                context.close()


def test_step_up_without_resources_asks_for_the_added_scopes_only() -> None:
    """The same for a client's own scopes (RFC 6749 §3.3): having allowed openid profile,
    a request adding email asks for email alone and lists the rest as already allowed.
    In-process through wsgiref.validate, the pages as the server renders them."""
    srv = make_server()
    browser = WSGIClient(srv.wsgi)
    first = new_flow(CONFIDENTIAL, scope="openid profile")
    page = submit_login(browser, browser.get("/authorize", params=first.params))
    assert is_consent_page(page) and "already allowed" not in page.text
    assert approve(browser, page).status == 303
    wider = new_flow(CONFIDENTIAL, scope="openid profile email")
    page = browser.get("/authorize", params=wider.params)
    assert is_consent_page(page), page.text
    asked, _, before = page.text.partition("You already allowed it to:")
    assert "<code>email</code>" in asked and "<code>profile</code>" not in asked
    assert "<code>profile</code>" in before and "<code>openid</code>" in before
