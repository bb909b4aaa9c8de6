"""README "Use codeflow as a fake IdP in your tests" stays true (issue 17 item 5; STYLE
"docs are tested"): its example suites run as written, and it names every fixture,
every ``Server`` option, every testing helper, every field of a transcript's exchange,
every fault, and the errors the helpers raise; what it says of ``issue_tokens``'s
refresh token is what the server does."""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from codeflow_sdk import pytest_plugin, testing

import codeflow

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SECTION = README.split("## Use codeflow as a fake IdP in your tests", 1)[1].split("\n## ", 1)[0]

# The README's `myapp`: examples/webapp.py, which logs users in with codeflow_sdk's Client.
MYAPP = f"""
import sys
sys.path.insert(0, {str(ROOT / "examples")!r})
import webapp
from codeflow_sdk import Client

def create_app(issuer, client_id, client_secret, redirect_uri):
    return webapp.make_app(Client(issuer, client_id, client_secret, redirect_uri=redirect_uri))
"""


def documented(name: str, text: str = SECTION) -> bool:
    """``name`` appears as code: in a code block, or in a `span`, not only in prose."""
    code = " ".join(re.findall(r"```.*?```|`[^`]*`", text, re.S))
    return re.search(rf"\b{re.escape(name)}\b", code) is not None


def example_files() -> dict[str, str]:
    """The section's Python blocks that start with ``# test_....py``: file name -> code."""
    blocks = re.findall(r"```python\n# (test_\w+\.py)\n(.*?)```", SECTION, re.S)
    return dict(blocks)


def test_the_readme_suites_run_as_written(tmp_path: Path) -> None:
    """The example suites (the app fixture, login, a wrong password, a fault; Authlib's
    refresh after advance(3600)) pass in a fresh pytest, with the plugin as installed."""
    files = example_files()
    assert set(files) == {"test_login.py", "test_refresh.py"}
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    (tmp_path / "myapp.py").write_text(MYAPP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT), str(ROOT / "storage"),
                                         str(ROOT / "sdk")])  # fmt: skip
    plugin = [] if _entry_point_installed() else ["-p", "codeflow_sdk.pytest_plugin"]
    result = subprocess.run(  # noqa: S603 -- our own interpreter and arguments
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout, result.stdout


def _entry_point_installed() -> bool:
    from importlib.metadata import entry_points

    return any(ep.value == "codeflow_sdk.pytest_plugin" for ep in entry_points(group="pytest11"))


FIXTURES = sorted(name for name in vars(pytest_plugin) if name.startswith("codeflow_"))
SERVER_OPTIONS = [p for p in inspect.signature(codeflow.Server.__init__).parameters if p != "self"]


def test_the_plugin_has_the_fixtures_this_test_knows() -> None:
    assert len(FIXTURES) >= 7 and "codeflow_live" in FIXTURES


@pytest.mark.parametrize("name", FIXTURES)
def test_every_fixture_is_documented(name: str) -> None:
    assert documented(name), f"the fixture {name} is not in the README's fake-IdP section"


@pytest.mark.parametrize("name", SERVER_OPTIONS)
def test_every_server_option_is_documented(name: str) -> None:
    options = SECTION.split("### Server options", 1)[1].split("\n### ", 1)[0]
    assert documented(name, options), f"Server({name}=...) is not under 'Server options'"


def public(cls: type) -> list[str]:
    return [n for n, v in vars(cls).items() if not n.startswith("_") and callable(v)]


HELPERS = sorted({
    *testing.__all__,
    *public(testing.HeadlessBrowser),
    *public(testing.Clock),
    *(f.name for f in dataclasses.fields(testing.Response)),
    *public(pytest_plugin.LiveServer),
    "add_user_and_client", "UserAndClient",
    *(f.name for f in dataclasses.fields(pytest_plugin.UserAndClient)),
    *(p for p in inspect.signature(pytest_plugin.add_user_and_client).parameters
      if p not in ("server", "client_options")),
})  # fmt: skip


@pytest.mark.parametrize("name", HELPERS)
def test_every_testing_helper_is_documented(name: str) -> None:
    assert documented(name), f"{name} is not in the README's fake-IdP section"


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(codeflow.Exchange)])
def test_every_field_of_an_exchange_is_documented(name: str) -> None:
    transcript = SECTION.split("### The transcript", 1)[1].split("\n### ", 1)[0]
    assert re.search(rf"^- .*`{name}`", transcript, re.M), f"Exchange.{name} is not listed"


@pytest.mark.parametrize("name", [*codeflow.FAULT_KINDS, *codeflow.FAULT_ENDPOINTS])
def test_every_fault_kind_and_endpoint_is_documented(name: str) -> None:
    faults = SECTION.split("### A fault plan", 1)[1].split("\n### ", 1)[0]
    assert documented(name, faults)


@pytest.mark.parametrize("error", ["LoginError", "RuntimeError", "ValueError"])
def test_the_errors_raised_are_documented(error: str) -> None:
    errors = SECTION.split("**Errors.**", 1)[1].split("\n\n", 1)[0]
    assert documented(error, errors)


@pytest.mark.parametrize(
    ("scope", "refresh"),
    [("openid", False), ("openid offline_access", True), ("api:read", True), ("", True)],
    ids=["openid", "openid-offline_access", "plain-oauth", "client-default"],
)
def test_issue_tokens_gives_a_refresh_token_as_documented(
    codeflow_server, scope: str, refresh: bool
) -> None:
    """README "issue_tokens ... a refresh token only when the scope has offline_access
    (OIDC Core §11), or is a plain OAuth scope without openid ... Without a scope it uses
    the client's registered scopes, which by default include both."""
    codeflow_server.add_client(
        "app", client_secret="s", scopes=[*codeflow.DEFAULT_SCOPES, "api:read"]
    )
    codeflow_server.add_user("alice")
    tokens = codeflow_server.issue_tokens("alice", "app", scope)
    assert ("refresh_token" in tokens) is refresh
    assert ("id_token" in tokens) is ("openid" in (scope or "openid"))
    assert documented("offline_access") and "issue_tokens(user, client, scope, claims)" in SECTION
