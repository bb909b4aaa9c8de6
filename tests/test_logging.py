"""Logs for operators (issue "Safe to run on-prem", item 4): one access-log line per request
and audit events with stable names, through the standard logging module, and never a
secret: not a password, client secret, code, verifier, token, CSRF token or cookie.

A whole flow in-process through the WSGI app (login, consent, code, refresh, reuse,
revocation, a replayed code, a wrong password, a wrong client secret), with every log
record of the "codeflow" loggers captured.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from conftest import (
    CONFIDENTIAL,
    PASSWORD,
    REDIRECT,
    SECRET,
    USERNAME,
    form_fields,
    make_server,
    new_flow,
    query_of,
)
from test_cli import codeflow_command, free_port
from wsgi_client import WSGIClient, basic

import codeflow


def events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.event for r in caplog.records if r.name == "codeflow.audit"]  # type: ignore[attr-defined]


def whole_flow(srv: codeflow.Server) -> list[str]:
    """Run the flow; return every secret it handled, to look for in the logs."""
    browser = WSGIClient(srv.wsgi)
    flow = new_flow(scope="openid profile offline_access")
    page = browser.get("/authorize", params=flow.params)
    fields = form_fields(page.text)
    browser.post("/login", {**fields, "username": USERNAME, "password": "not-" + PASSWORD})
    r = browser.post("/login", {**fields, "username": USERNAME, "password": PASSWORD})
    consent = browser.get(r.location)
    consent_fields = form_fields(consent.text)
    r = browser.post("/consent", {**consent_fields, "decision": "approve"})
    code = query_of(r.location)["code"]
    api = WSGIClient(srv.wsgi)
    grant = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
             "code_verifier": flow.verifier}  # fmt: skip
    tokens = api.post("/token", grant, headers=basic(CONFIDENTIAL, SECRET)).json()
    refresh = {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]}
    rotated = api.post("/token", refresh, headers=basic(CONFIDENTIAL, SECRET)).json()
    api.post("/revoke", {"token": rotated["access_token"]}, headers=basic(CONFIDENTIAL, SECRET))
    api.post("/token", refresh, headers=basic(CONFIDENTIAL, SECRET))  # reuse: family revoked
    api.post("/token", refresh, headers=basic(CONFIDENTIAL, "wrong-secret"))
    assert api.post("/token", grant, headers=basic(CONFIDENTIAL, SECRET)).status == 400
    return [
        PASSWORD, SECRET, code, flow.verifier, tokens["access_token"], tokens["refresh_token"],
        tokens["id_token"], rotated["access_token"], rotated["refresh_token"],
        fields["csrf_token"], fields["request"], consent_fields["csrf_token"],
        *browser.cookies.values(),
    ]


def test_audit_events_of_a_whole_flow(caplog: pytest.LogCaptureFixture) -> None:
    """Each security-relevant step of the flow is one audit event, with a stable name."""
    caplog.set_level(logging.DEBUG, logger="codeflow")
    srv = make_server()
    whole_flow(srv)
    seen = events(caplog)
    for event in ("user.added", "client.added", "login.failed", "login.succeeded",
                  "consent.granted", "code.issued", "code.redeemed", "code.replayed",
                  "refresh.rotated", "refresh.reuse_detected", "client_auth.failed",
                  "token.revoked"):  # fmt: skip
        assert event in seen, (event, seen)
    assert set(seen) <= set(codeflow.AUDIT_EVENTS)
    login = next(r for r in caplog.records if getattr(r, "event", "") == "login.succeeded")
    assert login.fields["user"] == USERNAME and login.fields["client"] == CONFIDENTIAL  # type: ignore[attr-defined]


def test_one_access_log_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    """An access-log line per request: method, path without its query, status, duration
    and the client address."""
    caplog.set_level(logging.INFO, logger="codeflow")
    srv = make_server()
    browser = WSGIClient(srv.wsgi)
    flow = new_flow()
    browser.get("/authorize", params=flow.params, REMOTE_ADDR="192.0.2.7")
    browser.get("/nowhere", REMOTE_ADDR="192.0.2.7")
    lines = [r for r in caplog.records if r.name == "codeflow.access"]
    assert [(r.method, r.path, r.status) for r in lines] == [  # type: ignore[attr-defined]
        ("GET", "/authorize", 200), ("GET", "/nowhere", 404)
    ]
    assert all(r.address == "192.0.2.7" and r.duration_ms >= 0 for r in lines)  # type: ignore[attr-defined]
    assert flow.params["code_challenge"] not in caplog.text


def test_no_secret_reaches_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Not a password, secret, code, verifier, token, CSRF token or cookie in any log
    record of a whole flow, in text or in the JSON format."""
    caplog.set_level(logging.DEBUG, logger="codeflow")
    srv = make_server()
    secrets_seen = whole_flow(srv)
    formatter = codeflow.JsonLogFormatter()
    text = caplog.text + "\n".join(formatter.format(r) for r in caplog.records)
    for secret in secrets_seen:
        assert secret and secret not in text, f"a secret is in the logs: {secret[:12]}..."


def test_json_log_lines_are_json_with_the_event_fields(caplog: pytest.LogCaptureFixture) -> None:
    """--log-format json: one JSON object per line, with the event's name and fields."""
    caplog.set_level(logging.INFO, logger="codeflow")
    make_server()
    record = next(r for r in caplog.records if getattr(r, "event", "") == "user.added")
    line = json.loads(codeflow.JsonLogFormatter().format(record))
    assert line["event"] == "user.added" and line["user"] == USERNAME
    assert line["level"] == "INFO" and "time" in line


def test_a_log_writer_keeps_every_line_whole_and_in_order() -> None:
    """`serve`'s LogWriter: lines logged by many threads at once reach the stream whole,
    each thread's in the order logged, none lost; within LOG_INTERVAL without a flush, and
    past LOG_BACKLOG queued lines the logging thread writes them itself."""
    stream = io.StringIO()
    writer = codeflow.LogWriter(stream)
    writer.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("codeflow.test-log-writer")
    logger.addHandler(writer)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        def lines(thread: int) -> None:
            for n in range(2000):
                logger.info("thread %d line %d %s", thread, n, "x" * 50)

        threads = [threading.Thread(target=lines, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        deadline = time.monotonic() + 10 * codeflow.LOG_INTERVAL + 5
        while stream.getvalue().count("\n") < 8 * 2000 and time.monotonic() < deadline:
            time.sleep(0.01)
        written = stream.getvalue().splitlines()
        assert len(written) == 8 * 2000
        for t in range(8):
            mine = [line for line in written if line.startswith(f"thread {t} ")]
            assert mine == [f"thread {t} line {n} {'x' * 50}" for n in range(2000)]
    finally:
        logger.removeHandler(writer)


def test_serve_logs_in_the_background_only_once_serving(tmp_path: Path) -> None:
    """`codeflow serve` writes a line logged before it serves at once, in order with what
    it prints on stderr; once serving, its access lines come within LOG_INTERVAL and the
    last ones before Ctrl-C are written before it exits."""
    port = free_port()
    log = tmp_path / "stderr.log"
    with log.open("wb") as err:
        process = subprocess.Popen(  # noqa: S603 -- our own command line
            codeflow_command("serve", "--port", str(port), "--auto-approve", USERNAME),
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(base + "/healthz", timeout=1)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        assert "auto-approve is on" in log.read_text()  # logged before serving
        for _ in range(5):
            requests.get(base + "/jwks", timeout=5)
        time.sleep(codeflow.LOG_INTERVAL * 5)
        assert log.read_text().count("GET /jwks 200") == 5
        requests.get(base + "/.well-known/openid-configuration", timeout=5)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "GET /.well-known/openid-configuration 200" in log.read_text()
