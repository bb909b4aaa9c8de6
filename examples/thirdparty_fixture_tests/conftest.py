"""The app under test (examples/webapp.py) on a free port, registered with the fake IdP
that codeflow's pytest plugin provides (the ``codeflow_live`` fixture)."""

# ruff: noqa: S106 -- the test IdP has fake secrets

from __future__ import annotations

import socketserver
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # where webapp.py lives

import webapp
from codeflow_sdk import Client


def pytest_configure(config: pytest.Config) -> None:
    # An installed codeflow registers its plugin by entry point; this line is only for
    # running the example from a source checkout.
    if not config.pluginmanager.has_plugin("codeflow"):
        from codeflow_sdk import pytest_plugin

        config.pluginmanager.register(pytest_plugin, "codeflow")


class _Threading(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def idp(codeflow_live):
    """The fake IdP with the people of these tests."""
    alice = {"name": "Alice Liddell", "email": "alice@example.org"}
    codeflow_live.add_user("alice", "wonderland", claims=alice)
    codeflow_live.add_user("bob", "builder", claims={"name": "Bob"})
    return codeflow_live


@pytest.fixture
def app_url(idp) -> Iterator[str]:
    """webapp.py on a free port, registered with the IdP as a confidential client."""
    httpd = make_server("127.0.0.1", 0, lambda e, s: [], _Threading, _Quiet)
    base = f"http://127.0.0.1:{httpd.server_port}"
    idp.add_client("webapp", client_secret="webapp-secret", redirect_uris=[f"{base}/callback"],
                   post_logout_redirect_uris=[f"{base}/"])  # fmt: skip
    client = Client(idp.url, "webapp", "webapp-secret", redirect_uri=f"{base}/callback")
    httpd.set_app(webapp.make_app(client, post_logout_redirect_uri=f"{base}/"))
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield base
    httpd.shutdown()
    httpd.server_close()
    thread.join()
