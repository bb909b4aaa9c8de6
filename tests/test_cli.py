"""DESIGN "CLI `codeflow`": the command as a user runs it (``python codeflow.py serve ...``),
in a subprocess on a free 127.0.0.1 port: the demo in a browser, a TOML config file,
``--auto-approve``, bad configuration, ``--help``, and Ctrl-C.
"""

from __future__ import annotations

import html
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from conftest import REDIRECT, browser_authorize, form_fields, new_flow, query_of

import codeflow

pytestmark = pytest.mark.http

CODEFLOW = Path(codeflow.__file__).resolve()
TIMEOUT = 10
STARTUP = 10.0  # seconds a server may take to answer its first request
SHUTDOWN = 5.0  # seconds it may take to stop after Ctrl-C


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _default_sigint() -> None:
    # A test runner started in the background may ignore SIGINT, and the child would
    # inherit that; Python turns SIGINT into KeyboardInterrupt only when it is not ignored.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def codeflow_command(*args: str) -> list[str]:
    """``python codeflow.py ARGS``, exactly as the README has users run it."""
    return [sys.executable, str(CODEFLOW), *args]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """A command that exits on its own."""
    return subprocess.run(  # noqa: S603 -- our own command line
        codeflow_command(*args), capture_output=True, text=True, timeout=30, check=False
    )


@dataclass
class Running:
    process: subprocess.Popen[str]
    base: str
    stdout: str = ""
    stderr: str = ""

    def interrupt(self) -> int:
        """Press Ctrl-C; return the exit code (the server must stop within SHUTDOWN)."""
        self.process.send_signal(signal.SIGINT)
        self.stdout, self.stderr = self.process.communicate(timeout=SHUTDOWN)
        return self.process.returncode


@contextmanager
def serving(*args: str, port: int | None = None) -> Iterator[Running]:
    """``codeflow serve --port P ARGS`` until it answers; killed afterwards if still up."""
    port = port or free_port()
    process = subprocess.Popen(  # noqa: S603 -- our own command line
        codeflow_command("serve", "--port", str(port), *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )
    running = Running(process, f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + STARTUP
        while True:
            if process.poll() is not None:
                out, err = process.communicate()
                pytest.fail(f"codeflow serve exited with {process.returncode}:\n{out}\n{err}")
            try:
                requests.get(running.base + codeflow.OAUTH_METADATA_PATH, timeout=1)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail(f"codeflow serve did not answer within {STARTUP} s")
                time.sleep(0.05)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            running.stdout, running.stderr = process.communicate(timeout=SHUTDOWN)


def test_serve_demo_runs_the_whole_flow_in_a_browser_and_stops_on_ctrl_c() -> None:
    """DESIGN "CLI `codeflow`: serve ... --demo": the server says where the demo is and how
    to sign in; a browser that follows the demo page's link, signs in and allows access
    lands on the demo callback showing an access token and a refresh token; Ctrl-C stops
    the server cleanly (exit code 0)."""
    with serving("--demo") as server, requests.Session() as browser:
        base = server.base
        r = browser.get(base + codeflow.DEMO_PATH, timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        link = re.search(r'<a [^>]*href="([^"]+)"[^>]*>\s*Start the flow', r.text)
        assert link, r.text
        start = html.unescape(link.group(1))
        assert start.startswith(base + codeflow.AUTHORIZE_PATH + "?")

        r = browser.get(start, allow_redirects=False, timeout=TIMEOUT)
        assert r.status_code == 200 and 'action="login"' in r.text, r.text
        form = {**form_fields(r.text), "username": "alice", "password": "wonderland"}
        r = browser.post(
            base + codeflow.LOGIN_PATH, data=form, allow_redirects=False, timeout=TIMEOUT
        )
        assert r.status_code == 303, r.text
        r = browser.get(r.headers["Location"], allow_redirects=False, timeout=TIMEOUT)
        assert r.status_code == 200 and 'action="consent"' in r.text, r.text
        form = {**form_fields(r.text), "decision": "approve"}
        r = browser.post(
            base + codeflow.CONSENT_PATH, data=form, allow_redirects=False, timeout=TIMEOUT
        )
        assert r.status_code == 303, r.text
        callback = r.headers["Location"]
        assert callback.startswith(base + codeflow.DEMO_CALLBACK_PATH + "?")

        r = browser.get(callback, allow_redirects=False, timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        page = html.unescape(r.text)
        assert re.search(r'"access_token": "[^"]{20,}"', page), page
        assert re.search(r'"refresh_token": "[^"]{20,}"', page), page
        assert '"error"' not in page

        assert server.interrupt() == 0, server.stderr
    assert base + codeflow.DEMO_PATH in server.stdout
    assert "alice / wonderland" in server.stdout
    assert "stopped" in server.stdout


TOML_CONFIG = """
issuer = "{issuer}"

[[clients]]
client_id = "billing"
client_secret = "billing-secret"
name = "Billing"
redirect_uris = ["{redirect}"]
scopes = ["openid", "profile", "invoices:read"]
grant_types = ["authorization_code", "refresh_token", "client_credentials"]

[[clients]]
client_id = "cli-tool"
redirect_uris = ["{redirect}"]

[[users]]
username = "bob"
password = "bob-password"
claims = {{ name = "Bob" }}
"""


def test_serve_config_registers_clients_and_users(tmp_path: Path) -> None:
    """DESIGN "Config file (TOML): issuer, [[clients]], [[users]]": the configured issuer is
    the one in the metadata, a configured confidential client gets a client_credentials
    token (RFC 6749 §4.4) with its secret, and a configured user can sign in."""
    port = free_port()
    issuer = f"http://127.0.0.1:{port}"
    config = tmp_path / "codeflow.toml"
    config.write_text(TOML_CONFIG.format(issuer=issuer, redirect=REDIRECT))
    with serving("--config", str(config), port=port) as server:
        meta = requests.get(server.base + codeflow.OAUTH_METADATA_PATH, timeout=TIMEOUT).json()
        assert meta["issuer"] == issuer

        token_request = {"grant_type": "client_credentials", "scope": "invoices:read"}
        r = requests.post(
            meta["token_endpoint"],
            data=token_request,
            auth=("billing", "billing-secret"),
            timeout=TIMEOUT,
        )
        assert r.status_code == 200, r.text
        assert r.json()["scope"] == "invoices:read"
        assert "refresh_token" not in r.json()  # RFC 6749 §4.4.3
        r = requests.post(
            meta["token_endpoint"], data=token_request, auth=("billing", "wrong"), timeout=TIMEOUT
        )
        assert r.status_code == 401

        with requests.Session() as browser:
            callback = browser_authorize(
                server.base,
                new_flow("cli-tool"),
                session=browser,
                username="bob",
                password="bob-password",
            )
        assert callback["code"] and callback["iss"] == issuer
        assert server.interrupt() == 0, server.stderr


def sign_in_from(base: str, password: str, address: str) -> int:
    """Bob's sign-in, sent as if a proxy forwarded it from ``address``: the status."""
    forwarded = {"X-Forwarded-For": address}
    with requests.Session() as browser:
        r = browser.get(
            base + codeflow.AUTHORIZE_PATH, params=new_flow("cli-tool").params,
            headers=forwarded, timeout=TIMEOUT,
        )  # fmt: skip
        data = {**form_fields(r.text), "username": "bob", "password": password}
        r = browser.post(
            base + codeflow.LOGIN_PATH, data=data, headers=forwarded, allow_redirects=False,
            timeout=TIMEOUT,
        )  # fmt: skip
        return r.status_code


@pytest.mark.parametrize("where", ["option", "config", "nowhere"])
def test_serve_trusted_proxy_counts_failures_at_the_forwarded_address(
    tmp_path: Path, where: str
) -> None:
    """RFC 7239 §5.2, NIST SP 800-63B §5.2.2: with `serve --trusted-proxy CIDR` (or the
    config key trusted_proxies) naming the proxy, failed sign-ins count against the address
    it forwards, so the attacker's wait is not the user's; from a proxy nobody named,
    X-Forwarded-For is ignored and both are one address."""
    port = free_port()
    config = tmp_path / "codeflow.toml"
    text = TOML_CONFIG.format(issuer=f"http://127.0.0.1:{port}", redirect=REDIRECT)
    trusted = '\ntrusted_proxies = ["127.0.0.0/8"]\n' if where == "config" else ""
    config.write_text(trusted + text)
    option = ["--trusted-proxy", "127.0.0.1/32"] if where == "option" else []
    with serving("--config", str(config), *option, port=port) as server:
        for _ in range(codeflow.FAILURES_BEFORE_DELAY):
            assert sign_in_from(server.base, "guess", "192.0.2.66") == 200
        assert sign_in_from(server.base, "bob-password", "192.0.2.66") == 429
        status = sign_in_from(server.base, "bob-password", "198.51.100.7")
        assert status == (429 if where == "nowhere" else 303)
        assert server.interrupt() == 0, server.stderr


def test_serve_auto_approve_warns_and_answers_authorize_with_a_code(tmp_path: Path) -> None:
    """DESIGN "Auto-approve: CLI --auto-approve alice ... announce themselves": the server
    prints a WARNING, and /authorize answers at once with a redirect carrying a code
    (RFC 6749 §4.1.2) that the client can exchange, with no login or consent page."""
    config = tmp_path / "codeflow.toml"
    config.write_text(
        f'[[clients]]\nclient_id = "cli-tool"\nredirect_uris = ["{REDIRECT}"]\n'
        '[[users]]\nusername = "alice"\n'
    )
    with serving("--config", str(config), "--auto-approve", "alice") as server:
        flow = new_flow("cli-tool")
        r = requests.get(
            server.base + codeflow.AUTHORIZE_PATH,
            params=flow.params,
            allow_redirects=False,
            timeout=TIMEOUT,
        )
        assert r.status_code == 302, r.text
        assert r.headers["Location"].startswith(REDIRECT + "?")
        callback = query_of(r.headers["Location"])
        assert callback["state"] == flow.params["state"]
        r = requests.post(
            server.base + codeflow.TOKEN_PATH,
            data={
                "grant_type": "authorization_code",
                "code": callback["code"],
                "redirect_uri": REDIRECT,
                "client_id": "cli-tool",
                "code_verifier": flow.verifier,
            },
            timeout=TIMEOUT,
        )
        assert r.status_code == 200, r.text
        assert server.interrupt() == 0, server.stderr
    assert "WARNING" in server.stdout
    assert "auto-approve" in server.stdout
    assert "'alice'" in server.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("this is [ not toml", "Expected"),
        ('[[clients]]\nredirect_uris = ["http://127.0.0.1/cb"]\n', "client_id"),
        ('[[clients]]\nclient_id = "a"\ngrant_types = ["password"]\n', "password"),
        ('[[clients]]\nclient_id = "a"\nredirect_uris = ["/relative"]\n', "redirect_uri"),
        ('[[users]]\npassword = "x"\n', "username"),
        ('trusted_proxies = ["proxy.example"]\n', "trusted_proxies"),
        ('trusted_proxies = "10.0.0.0/8"\n', "trusted_proxies"),
    ],
    ids=["not-toml", "no-client-id", "unknown-grant", "relative-redirect", "no-username",
         "proxy-not-a-network", "proxies-not-a-list"],
)
def test_serve_with_a_bad_config_exits_with_a_clear_message(
    tmp_path: Path, content: str, message: str
) -> None:
    """DESIGN "Config file (TOML)": a config file that is not TOML, or whose clients or
    users are wrong, stops `serve` before it listens, with a non-zero exit code and a
    message naming the problem."""
    config = tmp_path / "codeflow.toml"
    config.write_text(content)
    result = run("serve", "--config", str(config), "--port", str(free_port()))
    assert result.returncode != 0
    assert "serving" not in result.stdout
    assert "error" in result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_a_missing_config_file_exits_with_a_clear_message(tmp_path: Path) -> None:
    """DESIGN "serve [--config FILE]": a config file that does not exist is named in the
    error, and `serve` exits non-zero."""
    missing = tmp_path / "nowhere.toml"
    result = run("serve", "--config", str(missing), "--port", str(free_port()))
    assert result.returncode != 0
    assert str(missing) in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_on_a_port_in_use_exits_with_a_clear_message() -> None:
    """DESIGN "CLI `codeflow`": a port that is already taken is reported, with exit code 1
    and no traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--port", str(port))
    assert result.returncode == 1
    assert f"cannot serve on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_lists_the_commands_and_the_serve_options() -> None:
    """DESIGN "CLI `codeflow`: serve [--config FILE] [--host] [--port] [--issuer] [--storage]
    [--demo] [--auto-approve USER]": --help works and names each of them."""
    result = run("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: codeflow")
    assert "serve" in result.stdout
    result = run("serve", "--help")
    assert result.returncode == 0, result.stderr
    for option in ("--config", "--host", "--port", "--issuer", "--storage", "--demo"):
        assert option in result.stdout
    assert "--auto-approve USER" in result.stdout
    assert "--trusted-proxy CIDR" in result.stdout


def test_python_dash_m_codeflow_is_the_same_command() -> None:
    """DESIGN "`python codeflow.py ...` does the same": so does ``python -m codeflow``."""
    result = subprocess.run(
        [sys.executable, "-m", "codeflow", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd=CODEFLOW.parent,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == run("--help").stdout


def test_the_codeflow_console_script_shows_help() -> None:
    """DESIGN "CLI `codeflow`": the console script of pyproject's [project.scripts] runs
    main(). Where it is not installed, its entry point runs as pip's script would run it."""
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["codeflow"] == "codeflow:main"
    script = shutil.which("codeflow", path=str(Path(sys.executable).parent))
    if script is not None:
        command = [script, "--help"]
    else:
        launcher = "import sys; from codeflow import main; sys.exit(main())"
        command = [sys.executable, "-c", launcher, "--help"]
    result = subprocess.run(  # noqa: S603 -- our own command line
        command, capture_output=True, text=True, timeout=30, check=False, cwd=CODEFLOW.parent
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == run("--help").stdout
