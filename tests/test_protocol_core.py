"""The protocol core without HTTP: the authorization and token endpoints are plain
functions of a Server, the request's parameters and an explicit Browser value (STYLE
"Protocol logic is plain functions over parameters and records that return or raise").

No WSGI app, no socket, no thread-local: each test calls codeflow.authorize and
codeflow.token_endpoint directly, as a reader of the module or an embedder would.
"""

from __future__ import annotations

import html
import importlib
import sys
import types
from pathlib import Path

import pytest
from conftest import CONFIDENTIAL, PUBLIC, SECRET, USERNAME, Clock, make_server, new_flow, query_of

import codeflow


@pytest.fixture
def srv(clock: Clock) -> codeflow.Server:
    return make_server(clock)


def signed_in(srv: codeflow.Server) -> codeflow.Browser:
    """A browser whose session is alice's (as the session cookie would say)."""
    return codeflow.Browser.new(codeflow.Session(USERNAME, int(srv.clock()), "sid-1"))


def test_authorize_without_a_session_answers_the_login_page(srv: codeflow.Server) -> None:
    """RFC 6749 §4.1.1: "the authorization server authenticates the resource owner": with
    no session in the Browser, authorize answers the login page, whose form is bound to
    that browser's CSRF cookie (RFC 6749 §10.12)."""
    browser = codeflow.Browser.new()
    page = codeflow.authorize(srv, list(new_flow().params.items()), browser)
    assert isinstance(page, codeflow.Page)
    assert page.title == "Sign in" and 'name="csrf_token"' in page.body
    token = html.unescape(page.body.split('name="csrf_token" value="')[1].split('"')[0])
    assert srv.signer.check_csrf(token, browser)
    assert not srv.signer.check_csrf(token, codeflow.Browser.new())


def test_code_and_token_without_http(srv: codeflow.Server) -> None:
    """RFC 6749 §4.1.2 and §4.1.3: a signed-in, consenting user gets a code on the
    redirect URI; the token endpoint exchanges it (with the PKCE verifier, RFC 7636 §4.5)
    for tokens, and a second exchange of the same code fails with invalid_grant."""
    flow = new_flow()
    srv.storage.save_consent(
        USERNAME, CONFIDENTIAL, ["openid", "profile", "offline_access"], srv.clock()
    )
    answer = codeflow.authorize(srv, list(flow.params.items()), signed_in(srv))
    assert isinstance(answer, codeflow.Redirect)
    callback = query_of(answer.location)
    assert callback["state"] == flow.params["state"] and callback["iss"] == srv.issuer
    params = {
        "grant_type": "authorization_code",
        "code": callback["code"],
        "redirect_uri": flow.params["redirect_uri"],
        "code_verifier": flow.verifier,
        "client_id": CONFIDENTIAL,
        "client_secret": SECRET,
    }
    tokens = codeflow.token_endpoint(srv, params, None)
    assert tokens["token_type"] == "Bearer" and tokens["access_token"] and tokens["id_token"]
    assert "refresh_token" in tokens  # offline_access was granted (OIDC Core §11)
    with pytest.raises(codeflow.OAuthError) as replay:
        codeflow.token_endpoint(srv, params, None)
    assert replay.value.error == "invalid_grant"


def test_authorize_errors_after_a_trusted_redirect_are_redirects(srv: codeflow.Server) -> None:
    """RFC 6749 §4.1.2.1: once client and redirect_uri are trusted, an error (here
    unsupported_response_type) goes back to the client as a Redirect with the state."""
    flow = new_flow(PUBLIC, response_type="token")
    answer = codeflow.authorize(srv, list(flow.params.items()), codeflow.Browser.new())
    assert isinstance(answer, codeflow.Redirect)
    assert query_of(answer.location)["error"] == "unsupported_response_type"


def test_an_untrusted_redirect_uri_raises_instead_of_redirecting(srv: codeflow.Server) -> None:
    """RFC 6749 §4.1.2.1: with a redirect URI that is not registered the server "MUST NOT
    automatically redirect": authorize raises, and the web layer shows a page."""
    flow = new_flow(redirect_uri="https://attacker.example/cb")
    with pytest.raises(codeflow.OAuthError) as caught:
        codeflow.authorize(srv, list(flow.params.items()), codeflow.Browser.new())
    assert caught.value.error == "invalid_request"


# -- Storage found by URL scheme (DESIGN "Storage contract") ------------------------------


def test_open_storage_finds_a_backend_by_its_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    """DESIGN: "Backends are found by URL scheme (`codeflow_storage.<scheme>`); codeflow.py
    imports none of them": a module codeflow_storage.<scheme> with from_url(url) is all a
    new backend needs."""
    opened: list[str] = []

    def from_url(url: str) -> codeflow.Storage:
        opened.append(url)
        return codeflow.MemoryStorage()

    backend = types.ModuleType("codeflow_storage.kept")
    backend.from_url = from_url  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "codeflow_storage.kept", backend)
    storage = codeflow.open_storage("kept://somewhere?option=1")
    assert isinstance(storage, codeflow.MemoryStorage)
    assert opened == ["kept://somewhere?option=1"]


def test_open_storage_sqlite_url_is_the_sqlite_backend(tmp_path: Path) -> None:
    """DESIGN "Config file (TOML)": storage `sqlite:///path` opens codeflow_storage.sqlite."""
    sqlite = importlib.import_module("codeflow_storage.sqlite")
    storage = codeflow.open_storage(f"sqlite:///{tmp_path / 'a.db'}")
    assert isinstance(storage, sqlite.SQLiteStorage)
    storage.get_or_add_setting("k", "v")
    assert (tmp_path / "a.db").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [("nosuch://x", "no storage backend for nosuch://"), ("Not A://url", "unknown storage URL"),
     ("sqlite:///x.db?synchronous=sometimes", "synchronous")],
)  # fmt: skip
def test_open_storage_refuses_what_it_cannot_open(url: str, message: str) -> None:
    """A storage URL no backend serves, or with a bad option, is a ValueError with a clear
    message (which the CLI prints on one line)."""
    with pytest.raises(ValueError) as caught:
        codeflow.open_storage(url)
    assert message in str(caught.value)


def test_codeflow_imports_no_storage_backend() -> None:
    """DESIGN "Storage contract": "codeflow.py imports none of them" (no import cycle with
    codeflow_storage, whose backends import codeflow's records)."""
    import ast

    tree = ast.parse(Path(codeflow.__file__).read_text(encoding="utf-8"))
    imported = [
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
        for alias in node.names
    ] + [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    assert not [name for name in imported if name.startswith("codeflow_storage")]
