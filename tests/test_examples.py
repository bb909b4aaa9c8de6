"""Every example against a live codeflow: examples/webapp.py (log in, show claims, log
out), examples/api.py (a JSON API that requires a scope), examples/device_login.py (the
device authorization grant from a command line), examples/mcp_server.py (an MCP server;
its flows with the MCP SDKs are in tests/test_mcp_interop.py) and the third-party test
suite examples/test_thirdparty_login.py.

The provider is configured from examples/codeflow.toml, the file the README tells users
to serve, with its example ports replaced by free ones. The apps run in-process for the
flows, and once each exactly as documented (``python examples/...``) in a subprocess.
"""

from __future__ import annotations

import contextlib
import html
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests
from codeflow_sdk import BearerValidator, Client
from codeflow_sdk.testing import Clock
from mcp.client.session import ClientSession
from mcp_support import PythonClient, Site
from sdk_support import free_port, serving, wait_for_port

import codeflow

pytestmark = pytest.mark.http

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


webapp = load_example("webapp")
api = load_example("api")


@contextlib.contextmanager
def example_idp(
    webapp_port: int, api_port: int, mcp_port: int | None = None, **options: object
) -> Iterator[tuple[codeflow.Server, str]]:
    """codeflow with examples/codeflow.toml's clients, resources and users, the example
    apps' ports replaced by the given ones and the issuer by the running server's URL."""
    text = (EXAMPLES / "codeflow.toml").read_text()
    text = text.replace("127.0.0.1:5000", f"127.0.0.1:{webapp_port}")
    text = text.replace("127.0.0.1:5001", f"127.0.0.1:{api_port}")
    text = text.replace("127.0.0.1:5002", f"127.0.0.1:{mcp_port or free_port()}")
    config = tomllib.loads(text)
    assert config["issuer"] == "http://127.0.0.1:8000"  # what the examples default to
    options = {"registration": config["registration"], **options}  # as serve reads it
    srv = codeflow.Server(**options)  # type: ignore[arg-type]
    with srv.running() as url:
        codeflow.load_config(srv, config)
        yield srv, url


def hidden_fields(page: str) -> dict[str, str]:
    return {
        name: html.unescape(value)
        for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page)
    }


def provider_login(
    browser: requests.Session, page: requests.Response, decision: str
) -> requests.Response:
    """Fill in the provider's login form as alice, then answer its consent form."""
    assert "Sign in" in page.text, page.text
    base = page.url.split("/authorize")[0]
    form = {**hidden_fields(page.text), "username": "alice", "password": "wonderland"}
    page = browser.post(base + "/login", data=form)
    assert "Allow access?" in page.text, page.text
    return browser.post(base + "/consent", data={**hidden_fields(page.text), "decision": decision})


# -- examples/webapp.py ---------------------------------------------------------------------


@pytest.fixture
def webapp_site() -> Iterator[tuple[codeflow.Server, str]]:
    """The web app in-process on a free port, logging in at an example codeflow."""
    port = free_port()
    with example_idp(port, free_port()) as (srv, issuer):
        base = f"http://127.0.0.1:{port}"
        client = Client(issuer, "webapp", "webapp-secret", redirect_uri=f"{base}/callback")
        app = webapp.make_app(client, post_logout_redirect_uri=f"{base}/")
        with serving(app, port) as url:
            yield srv, url


def test_webapp_login_shows_claims_and_logout_ends_the_provider_session(
    webapp_site: tuple[codeflow.Server, str],
) -> None:
    """OIDC Core §3.1 through the web app: the user signs in on the provider's real forms,
    the app shows the ID token's and userinfo's claims; RP-Initiated Logout 1.0 §2: logging
    out ends the provider's session too, so the next login asks for the password again."""
    _, url = webapp_site
    with requests.Session() as browser:
        page = browser.get(url + "/")
        assert "Log in with codeflow" in page.text
        page = provider_login(browser, browser.get(url + "/login"), "approve")
        assert page.url == url + "/"
        assert "Hello, Alice Liddell" in page.text and "alice@example.org" in page.text
        assert "<th>iss</th>" in page.text and "<th>nonce</th>" in page.text
        page = browser.get(url + "/login")  # the provider remembers alice: straight back
        assert "Hello, Alice Liddell" in page.text
        page = browser.post(url + "/logout")
        assert page.url == url + "/" and "Log in with codeflow" in page.text
        assert "Sign in" in browser.get(url + "/login").text


def test_webapp_shows_a_denied_login(webapp_site: tuple[codeflow.Server, str]) -> None:
    """RFC 6749 §4.1.2.1: the user denies consent; the app shows the provider's
    access_denied and stays logged out."""
    _, url = webapp_site
    with requests.Session() as browser:
        page = provider_login(browser, browser.get(url + "/login"), "deny")
        assert page.status_code == 400 and "access_denied" in page.text
        assert "Log in with codeflow" in browser.get(url + "/").text


def test_webapp_refuses_a_callback_it_did_not_start(
    webapp_site: tuple[codeflow.Server, str],
) -> None:
    """RFC 6749 §10.12: a callback without a login in progress in this browser is refused."""
    _, url = webapp_site
    with requests.get(url + "/callback?code=stolen&state=x", timeout=10) as r:
        assert r.status_code == 400 and "No login in progress" in r.text


# -- examples/api.py -------------------------------------------------------------------------


def token(issuer: str, client_id: str, secret: str, scope: str) -> str:
    return Client(issuer, client_id, secret).client_credentials(scope).access_token


def test_api_requires_a_token_with_the_scope() -> None:
    """RFC 6750 §3.1 through the example API: no token 401 (no error code), a token without
    notes:write 403 insufficient_scope; JWT tokens (RFC 9068) and opaque ones (RFC 7662)
    both work."""
    with example_idp(free_port(), free_port()) as (_, issuer):
        validator = BearerValidator(issuer, audience=issuer, introspection_client_id="notes-api",
                                    introspection_client_secret="notes-api-secret")  # fmt: skip
        with serving(api.make_app(validator)) as url:
            reader = token(issuer, "notes-cli", "notes-cli-secret", "notes:read")
            writer = token(issuer, "notes-cli", "notes-cli-secret", "notes:write")
            opaque = token(issuer, "notes-cli-opaque", "notes-cli-opaque-secret", "notes:read")
            with requests.Session() as http:
                assert http.get(url + "/health").json() == {"ok": True}
                r = http.get(url + "/notes")
                assert r.status_code == 401
                assert r.headers["WWW-Authenticate"] == 'Bearer realm="notes"'
                for bearer in (reader, opaque):
                    r = http.get(url + "/notes", headers={"Authorization": f"Bearer {bearer}"})
                    assert r.status_code == 200 and r.json()["notes"][0]["text"] == "Buy milk"
                r = http.post(url + "/notes", json={"text": "Hi"},
                              headers={"Authorization": f"Bearer {reader}"})  # fmt: skip
                assert r.status_code == 403
                assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
                r = http.post(url + "/notes", json={"text": "Hi"},
                              headers={"Authorization": f"Bearer {writer}"})  # fmt: skip
                assert (r.status_code, r.json()) == (201, {"text": "Hi", "by": "notes-cli"})
                r = http.get(url + "/notes", headers={"Authorization": "Bearer not-a-token"})
                assert r.status_code == 401 and "invalid_token" in r.headers["WWW-Authenticate"]


# -- Each example as documented: one command -------------------------------------------------------


def child_env() -> dict[str, str]:
    """The child sees the modules this test process sees (source tree or installed)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


@contextlib.contextmanager
def run(args: list[str], port: int) -> Iterator[None]:
    """Run ``python <args>`` until the test is done with the port it serves."""
    with tempfile.TemporaryFile() as log, subprocess.Popen(  # noqa: S603 -- our own examples
        [sys.executable, *args], cwd=ROOT, env=child_env(), stdout=log, stderr=log
    ) as proc:
        try:
            wait_for_port(port)
            yield
        except BaseException:
            log.seek(0)
            print(log.read().decode(errors="replace"))
            raise
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_webapp_runs_as_documented() -> None:
    """README: ``python examples/webapp.py`` logs users in at the provider (auto-approve
    here stands in for the login form)."""
    port = free_port()
    with example_idp(port, free_port(), auto_approve="alice") as (_, issuer):
        with run(["examples/webapp.py", "--issuer", issuer, "--port", str(port)], port):
            with requests.Session() as browser:
                page = browser.get(f"http://127.0.0.1:{port}/login", timeout=10)
                assert "Hello, Alice Liddell" in page.text


def test_api_runs_as_documented() -> None:
    """README: ``python examples/api.py`` serves /notes to a caller with notes:read."""
    port = free_port()
    with example_idp(free_port(), port) as (_, issuer):
        with run(["examples/api.py", "--issuer", issuer, "--port", str(port)], port):
            bearer = token(issuer, "notes-cli", "notes-cli-secret", "notes:read")
            url = f"http://127.0.0.1:{port}/notes"
            with requests.get(url, headers={"Authorization": f"Bearer {bearer}"}, timeout=10) as r:
                assert r.status_code == 200 and r.json()["caller"] == "notes-cli"
            with requests.get(url, timeout=10) as r:
                assert r.status_code == 401


def test_device_login_runs_as_documented() -> None:
    """README: ``python examples/device_login.py`` prints a code and where to type it (RFC
    8628 §3.3); a browser types it on /device, signs in as alice and allows; the command
    then says who signed in (§3.4, §3.5: it polled meanwhile)."""
    with example_idp(free_port(), free_port()) as (_, issuer):
        with tempfile.TemporaryFile() as log, subprocess.Popen(  # noqa: S603 -- our example
            [sys.executable, "examples/device_login.py", "--issuer", issuer], cwd=ROOT,
            env=child_env(), stdout=subprocess.PIPE, stderr=log, text=True,
        ) as proc:  # fmt: skip
            try:
                assert proc.stdout is not None
                first = proc.stdout.readline()
                match = re.search(r"open (\S+) and enter the code (\S+)", first)
                assert match, first
                assert match.group(1) == issuer + "/device"
                with requests.Session() as browser:
                    page = browser.get(match.group(1), params={"user_code": match.group(2)},
                                       timeout=10)  # fmt: skip
                    assert "Example CLI" in page.text and "Sign in" in page.text
                    form = {**hidden_fields(page.text), "username": "alice",
                            "password": "wonderland"}  # fmt: skip
                    page = browser.post(issuer + "/login", data=form, timeout=10)
                    assert "Allow a device?" in page.text, page.text
                    form = {**hidden_fields(page.text), "decision": "approve"}
                    done = browser.post(issuer + "/device", data=form, timeout=10)
                    assert "Device connected" in done.text
                out, _ = proc.communicate(timeout=60)
                assert proc.returncode == 0, out
                assert "Signed in as Alice Liddell" in out
                assert '"refresh_token": true' in out
            except BaseException:
                proc.kill()
                log.seek(0)
                print(log.read().decode(errors="replace"))
                raise


def test_mcp_server_runs_as_documented() -> None:
    """README "Protect an MCP server": with the provider serving examples/codeflow.toml
    and registration open, ``python examples/mcp_server.py`` serves its RFC 9728 metadata,
    which names the provider (§3.2), answers a request without a token with 401 naming that
    metadata (§5.1), and the official MCP Python SDK, registered by nobody beforehand,
    registers (RFC 7591), signs alice in and calls a tool. The whole flow with both MCP
    SDKs is in tests/test_mcp_interop.py and tests/test_mcp_interop_node.py."""
    port = free_port()
    with example_idp(free_port(), free_port(), port) as (srv, issuer):
        with run(["examples/mcp_server.py", "--issuer", issuer, "--port", str(port)], port):
            url = f"http://127.0.0.1:{port}/mcp"
            metadata = f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp"
            with requests.get(metadata, timeout=10) as r:
                assert r.status_code == 200
                assert r.json()["resource"] == url
                assert r.json()["authorization_servers"] == [issuer]
            with requests.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                               timeout=10) as r:  # fmt: skip
                assert r.status_code == 401
                assert f'resource_metadata="{metadata}"' in r.headers["WWW-Authenticate"]
            client = PythonClient(Site(srv, issuer, url, Clock()))

            async def whoami(session: ClientSession) -> Any:
                return (await session.call_tool("whoami", {})).structured_content

            me = client.run(whoami)
            assert me["sub"] == "alice" and "mcp:read" in me["scopes"]
            assert srv.storage.get_client(me["client_id"]) is not None  # it registered


def test_thirdparty_suite_passes() -> None:
    """README: ``python -m pytest examples/test_thirdparty_login.py`` passes."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "examples/test_thirdparty_login.py"],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b5 passed\b", result.stdout), result.stdout
