"""Benchmark (issue 17 "Goal"): what a third party's full login test costs, setup and
teardown included, with nothing but the pytest plugin's own fixtures.

The suite is written to a temporary folder and run by a fresh ``python -m pytest``, as a
test author's suite would run: no conftest of ours (so no lowered scrypt cost), the
plugin loaded as the installed entry point loads it. Each of its SUITE tests takes a
fresh ``codeflow_live``, adds a user with a password and a confidential client with a
secret, signs in with ``headless_login`` (authorize, login form, consent form) and
exchanges the code at the token endpoint with its PKCE verifier (RFC 7636 §4.5) and
HTTP Basic client authentication (RFC 6749 §2.3.1), checking the answer. A hook in the
suite's conftest records each test's setup + call + teardown time; the row is their
median (the first test also pays the session's RSA key, which the median leaves out).

Printed whatever the capture setting; nothing is asserted about time.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUITE = 25  # tests in the suite, as issue 17 measures it
RUNS = 3  # suites run one after another; the row shows each run's median and theirs

CONFTEST = '''
import json, os

TIMES = {}

def pytest_runtest_logreport(report):
    TIMES[report.nodeid] = TIMES.get(report.nodeid, 0.0) + report.duration

def pytest_sessionfinish(session):
    with open(os.environ["CODEFLOW_BENCH_OUT"], "w") as f:
        json.dump(TIMES, f)
'''

LOGIN_TEST = '''
import base64, hashlib, json, secrets, urllib.parse, urllib.request

import pytest
from codeflow_sdk.testing import headless_login

REDIRECT = "http://127.0.0.1:9/callback"  # never fetched: headless_login stops there


@pytest.mark.parametrize("n", range(%(suite)d))
def test_login(codeflow_live, n):
    codeflow_live.add_user("alice", "wonderland", claims={"name": "Alice"})
    codeflow_live.add_client("app", client_secret="app-secret", redirect_uris=[REDIRECT])
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    authorize = codeflow_live.url + "/authorize?" + urllib.parse.urlencode({
        "response_type": "code", "client_id": "app", "redirect_uri": REDIRECT,
        "scope": "openid profile", "state": "s", "nonce": "n",
        "code_challenge": challenge.rstrip(b"=").decode(), "code_challenge_method": "S256",
    })
    callback = headless_login(authorize, "alice", "wonderland")
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(callback).query)["code"][0]
    basic = base64.b64encode(b"app:app-secret").decode()
    request = urllib.request.Request(
        codeflow_live.url + "/token",
        data=urllib.parse.urlencode({
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "code_verifier": verifier,
        }).encode(),
        headers={"Authorization": "Basic " + basic},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200 and "id_token" in json.load(response)
'''


def run_suite(folder: Path) -> list[float]:
    """Run the suite once in a new interpreter; each test's milliseconds."""
    out = folder / "times.json"
    plugin = ["-p", "codeflow_sdk.pytest_plugin"] if not _entry_point_installed() else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["CODEFLOW_BENCH_OUT"] = str(out)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "storage"), str(ROOT / "sdk")])
    result = subprocess.run(  # noqa: S603 -- our own interpreter and arguments
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin, str(folder)],
        capture_output=True, text=True, timeout=600, cwd=folder, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{SUITE} passed" in result.stdout, result.stdout
    return [seconds * 1000 for seconds in json.loads(out.read_text()).values()]


def _entry_point_installed() -> bool:
    from importlib.metadata import entry_points

    return any(ep.value == "codeflow_sdk.pytest_plugin" for ep in entry_points(group="pytest11"))


def test_full_login_test_cost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Row: the median milliseconds of one full login test in a suite of SUITE."""
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_login_suite.py").write_text(LOGIN_TEST % {"suite": SUITE})
    medians = []
    for _ in range(RUNS):
        times = run_suite(tmp_path)
        assert len(times) == SUITE
        medians.append(statistics.median(times))
    with capsys.disabled():
        print(f"\n\nA full login test with the plugin's fixtures, suite of {SUITE} (issue 17)")
        print(f"{'case':<44} {'median ms':>10} {'runs':>22}")
        runs = " ".join(f"{m:.1f}" for m in medians)
        print(f"{'fresh codeflow_live + user + client + login':<44} "
              f"{statistics.median(medians):>10.1f} {runs:>22}")  # fmt: skip
