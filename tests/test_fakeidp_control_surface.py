"""The test-mode surface (issue 12 item 8): the control endpoints refuse what a web page
can send (a CORS "simple" text/plain POST needs no preflight, so any page a developer
opens could plan a 300 s delay on every token call), the transcript and the fault plan
are bounded, and the demo's pages are recorded without the secrets they show.
"""

from __future__ import annotations

import html
import json
import re

import pytest
import requests
from conftest import ISSUER, Clock, form_fields, query_of, share_session_keys
from test_cli import TIMEOUT
from wsgi_client import WSGIClient

import codeflow

FAULT = json.dumps({"endpoint": "token", "kind": "delay", "delay": 300}).encode()
JSON = "application/json"


@pytest.fixture
def control(codeflow_server) -> WSGIClient:
    """A client of the test-mode server, as a script (not a browser) would be."""
    return WSGIClient(codeflow_server.wsgi)


###############################################################################
# Requests a web page can make are refused ####################################
###############################################################################


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
    ids=["text-plain", "form", "multipart", "none"],
)
def test_a_fault_that_is_not_json_is_415(codeflow_server, control, content_type) -> None:
    """RFC 9110 §15.5.16: "The 415 (Unsupported Media Type) status code indicates that the
    origin server is refusing to service the request because the content is in a format
    not supported". Fetch's CORS-safelisted content types (text/plain, forms) are the
    ones a page may POST to another origin without a preflight: none of them plans a
    fault."""
    r = control.post("/_codeflow/faults", body=FAULT, content_type=content_type)
    assert r.status == 415, r.text
    assert r.json()["error"] == "invalid_request"
    assert codeflow_server.faults.pending == []


def test_a_json_fault_is_planned(codeflow_server, control) -> None:
    """Issue 6 "set from Python and over HTTP": a JSON fault (with or without a charset
    parameter) is planned, 201."""
    r = control.post("/_codeflow/faults", body=FAULT, content_type=JSON + "; charset=utf-8")
    assert r.status == 201, r.text
    assert [f.kind for f in codeflow_server.faults.pending] == ["delay"]


CROSS_SITE = {
    "other-origin": {"Origin": "http://evil.example"},
    "other-port": {"Origin": "http://127.0.0.1:1"},
    "opaque-origin": {"Origin": "null"},
    "fetch-cross-site": {"Sec-Fetch-Site": "cross-site"},
    "fetch-same-site": {"Sec-Fetch-Site": "same-site"},
}


@pytest.mark.parametrize("headers", CROSS_SITE.values(), ids=CROSS_SITE.keys())
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "faults"), ("GET", "faults"), ("DELETE", "faults"), ("GET", "transcript")],
)
def test_cross_site_control_requests_are_403(codeflow_server, headers, method, path) -> None:
    """RFC 6454 §7.2: "the user agent MUST send the value "null" in the Origin header
    field" from a privacy-sensitive context, and otherwise names the page's origin (Fetch
    sends it with every POST and cross-origin request, and Sec-Fetch-Site with it). A
    control request from any page but the server's own origin (another port on the same
    host is same-site, not same-origin) is refused, so a page can neither plan faults nor
    clear them, nor read the transcript."""
    codeflow_server.faults.add(endpoint="jwks", kind="http_500")
    r = WSGIClient(codeflow_server.wsgi).request(
        method, f"/_codeflow/{path}", headers=headers,
        body=FAULT if method == "POST" else b"", content_type=JSON if method == "POST" else None,
    )  # fmt: skip
    assert r.status == 403, r.text
    assert [f.endpoint for f in codeflow_server.faults.pending] == ["jwks"]


@pytest.mark.parametrize(
    "headers",
    [{"Origin": ISSUER}, {"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}, {}],
    ids=["own-origin", "fetch-same-origin", "fetch-none", "no-headers"],
)
def test_same_origin_and_non_browser_control_requests_are_served(clock, headers) -> None:
    """RFC 6454 §5: "Two origins are "the same" if, and only if, they are identical." The
    server's own origin (its issuer's), a request the user typed (Sec-Fetch-Site: none),
    and clients that are not browsers (no Origin) are served."""
    srv = share_session_keys(codeflow.Server(issuer=ISSUER, clock=clock, test_mode=True))
    r = WSGIClient(srv.wsgi).post(
        "/_codeflow/faults", body=FAULT, content_type=JSON, headers=headers
    )
    assert r.status == 201, r.text


def test_over_http_a_text_plain_fault_is_refused(codeflow_live) -> None:
    """Fetch "CORS-safelisted request-header": a page may send text/plain to any origin
    without a preflight, as a <form enctype="text/plain"> or fetch(mode: "no-cors") does.
    On the wire, such a fault is refused (403 for its Origin, 415 for its type) and none is
    planned."""
    control = codeflow_live.url + "/_codeflow/faults"
    r = requests.post(control, data=FAULT, headers={"Content-Type": "text/plain",
                      "Origin": "http://evil.example"}, timeout=TIMEOUT)  # fmt: skip
    assert r.status_code in (403, 415)
    r = requests.post(control, data=FAULT, headers={"Content-Type": "text/plain"},
                      timeout=TIMEOUT)  # fmt: skip
    assert r.status_code == 415
    assert requests.get(control, timeout=TIMEOUT).json() == []


###############################################################################
# Bounded transcript and fault plan ############################################
###############################################################################


def test_the_transcript_keeps_the_latest_exchanges(clock) -> None:
    """Issue 12 item 8: "bounded transcript (ring buffer, size configurable)": the last
    ``transcript_limit`` exchanges, in order; ``dropped`` counts the older ones."""
    srv = share_session_keys(
        codeflow.Server(issuer=ISSUER, clock=clock, transcript=True, transcript_limit=3)
    )
    client = WSGIClient(srv.wsgi)
    paths = [f"/nowhere/{i}" for i in range(5)]
    for path in paths:
        client.get(path)
    assert [e.path for e in srv.transcript] == paths[-3:]
    assert srv.transcript[-1].path == paths[-1] and len(srv.transcript) == 3
    assert [e["path"] for e in srv.transcript.to_json()] == paths[-3:]
    assert srv.transcript.dropped == 2
    srv.transcript.clear()
    assert len(srv.transcript) == 0 and srv.transcript.dropped == 0


def test_the_transcript_is_bounded_by_default(clock) -> None:
    """Issue 12 item 8: "the transcript and fault plan are unbounded" no more: without
    transcript_limit, a test-mode server keeps TRANSCRIPT_LIMIT exchanges."""
    srv = share_session_keys(codeflow.Server(issuer=ISSUER, clock=clock, test_mode=True))
    client = WSGIClient(srv.wsgi)
    for _ in range(codeflow.TRANSCRIPT_LIMIT + 10):
        client.get("/nowhere")
    assert len(srv.transcript) == codeflow.TRANSCRIPT_LIMIT
    assert srv.transcript.dropped == 10


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "10"])
def test_a_transcript_limit_must_be_a_positive_integer(limit) -> None:
    """Issue 12 item 8 "size configurable": a limit that is no positive integer is refused
    when the server is made."""
    with pytest.raises(ValueError, match="transcript_limit"):
        codeflow.Server(issuer=ISSUER, transcript=True, transcript_limit=limit)


def test_the_fault_plan_is_bounded(codeflow_server, control) -> None:
    """Issue 12 item 8 "a bounded fault plan": at most MAX_PENDING_FAULTS faults wait at
    once; one more is refused with a clear error (a 400 over HTTP), and clearing the plan
    makes room again."""
    for _ in range(codeflow.MAX_PENDING_FAULTS):
        codeflow_server.faults.add(endpoint="jwks", kind="http_500")
    with pytest.raises(ValueError, match=f"at most {codeflow.MAX_PENDING_FAULTS}"):
        codeflow_server.faults.add(endpoint="jwks", kind="http_500")
    r = control.post("/_codeflow/faults", body=FAULT, content_type=JSON)
    assert r.status == 400 and "at most" in r.json()["error_description"]
    assert len(codeflow_server.faults.pending) == codeflow.MAX_PENDING_FAULTS
    assert control.request("DELETE", "/_codeflow/faults").status == 200
    assert control.post("/_codeflow/faults", body=FAULT, content_type=JSON).status == 201


###############################################################################
# The demo's pages in the transcript ##########################################
###############################################################################


def test_the_demo_pages_are_recorded_without_their_secrets() -> None:
    """Issue 12 item 8: "the demo's pages redacted like every other exchange". The transcript
    redacts every secret (passwords, codes, verifiers, tokens); the demo's pages show them
    as text (its PKCE verifier, and on the callback the code, the token
    request and the tokens), so their bodies are recorded as "[redacted]"."""
    srv = share_session_keys(
        codeflow.Server(issuer=ISSUER, clock=Clock(), demo=True, transcript=True)
    )
    browser = WSGIClient(srv.wsgi)
    demo = browser.get(codeflow.DEMO_PATH)
    verifier = re.search(r"stays with the app .*?<code>([^<]+)</code>", demo.text, re.S).group(1)
    start = html.unescape(re.search(r'href="([^"]+)">Start the flow', demo.text).group(1))
    r = browser.get(start)
    login = {**form_fields(r.text), "username": "alice", "password": "wonderland"}
    r = browser.get(browser.post(codeflow.LOGIN_PATH, data=login).location)
    r = browser.post(codeflow.CONSENT_PATH, data={**form_fields(r.text), "decision": "approve"})
    code = query_of(r.location)["code"]
    page = html.unescape(browser.get(r.location).text)
    secrets = {"verifier": verifier, "code": code, "password": "wonderland"}
    for name in ("access_token", "refresh_token"):
        secrets[name] = re.search(rf'"{name}": "([^"]+)"', page).group(1)
    secrets["id_token"] = re.search(r"<pre>(eyJ[^<]+)</pre>", page).group(1)
    assert all(len(value) >= 10 for value in secrets.values())

    recorded = json.dumps(srv.transcript.to_json())
    leaked = [name for name, value in secrets.items() if value in recorded]
    assert leaked == []
    demo_pages = srv.transcript.find(codeflow.DEMO_PATH) + srv.transcript.find(
        codeflow.DEMO_CALLBACK_PATH
    )
    assert len(demo_pages) == 2
    assert all(e.body == codeflow.REDACTED and e.status == 200 for e in demo_pages)
