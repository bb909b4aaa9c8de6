"""OAuth 2.0 Form Post Response Mode (OpenID Foundation, 2015) §2, §5 and OAuth 2.0 Multiple
Response Type Encoding Practices §2.1 (response_mode): the authorization response, success
or error, as a form the browser POSTs to the redirect URI; a response_mode we do not
support is refused (issue 14 item 4).

In-process through wsgiref.validate; in a real headless Chromium, with and without
JavaScript, in tests/test_browser.py.
"""

from __future__ import annotations

import base64
import hashlib
import html
import re

import pytest
from conftest import (
    CONFIDENTIAL,
    ISSUER,
    REDIRECT,
    USERNAME,
    Clock,
    form_fields,
    make_server,
    new_flow,
    query_of,
)
from oidc_helpers import approve, redeem, submit_login
from wsgi_client import Response, WSGIClient

import codeflow


@pytest.fixture
def auto(clock: Clock) -> codeflow.Server:
    return make_server(clock, auto_approve=USERNAME)


def form_post(r: Response) -> tuple[str, dict[str, str]]:
    """The one form of a form_post answer: (its action, its fields); and it is POSTed."""
    assert r.status == 200, (r.status, r.text)
    assert r.headers["content-type"].startswith("text/html")
    assert "location" not in r.headers
    forms = re.findall(r'<form method="post" action="([^"]*)"', r.text)
    assert len(forms) == 1, r.text
    return html.unescape(forms[0]), form_fields(r.text)


def test_a_code_is_posted_to_the_redirect_uri(auto: codeflow.Server) -> None:
    """Form Post Response Mode §2: "the Authorization Response parameters are encoded as HTML
    form values that are auto-submitted in the User Agent, and thus are transmitted via the
    HTTP POST method to the Client ... The action attribute of the form MUST be the
    Client's Redirection URI. The method of the form attribute MUST be POST." RFC 9207 §2:
    iss in it too; the code it carries redeems as any other."""
    browser = WSGIClient(auto.wsgi)
    flow = new_flow(response_mode="form_post")
    r = browser.get("/authorize", params=flow.params)
    action, fields = form_post(r)
    assert action == REDIRECT
    assert set(fields) == {"code", "state", "iss"}
    assert fields["state"] == flow.params["state"] and fields["iss"] == ISSUER
    assert redeem(browser, flow, fields["code"])["access_token"]


def test_the_answer_is_not_stored(auto: codeflow.Server) -> None:
    """Form Post Response Mode §2: "Because the Authorization Response is intended to be used
    only once, the Authorization Server MUST instruct the User Agent (and any
    intermediaries) not to store or reuse the content of the response"."""
    r = WSGIClient(auto.wsgi).get("/authorize", params=new_flow(response_mode="form_post").params)
    assert r.status == 200
    assert "no-store" in r.headers["cache-control"]


def test_the_form_submits_itself_and_its_script_is_the_only_one_allowed(
    auto: codeflow.Server,
) -> None:
    """Form Post Response Mode §2: the form is "auto-submitted in the User Agent"; §5 (Security
    Considerations) leaves the page to us: its Content-Security-Policy (CSP Level 3 §2.3.1,
    'sha256-' hash sources) allows exactly its own inline script, nothing else, and without
    JavaScript a button submits the form."""
    r = WSGIClient(auto.wsgi).get("/authorize", params=new_flow(response_mode="form_post").params)
    scripts = re.findall(r"<script>(.*?)</script>", r.text, re.S)
    assert len(scripts) == 1 and "submit()" in scripts[0]
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    directives = r.headers["content-security-policy"].split(";")
    policy = dict(d.strip().partition(" ")[::2] for d in directives)
    assert policy["script-src"] == f"'sha256-{digest}'"
    assert policy["default-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    assert "unsafe-inline" not in r.headers["content-security-policy"]
    form = r.text.split('<form method="post"', 1)[1].split("</form>", 1)[0]
    assert re.search(r'<button type="submit"[^>]*>', form)


def test_errors_are_posted_with_their_description(auto: codeflow.Server) -> None:
    """Form Post Response Mode §2: the mode applies to "Authorization Response parameters",
    and RFC 6749 §4.1.2.1's error response is one: error, error_description, state (and
    RFC 9207 iss) reach the client by POST, not on a query string it does not read."""
    flow = new_flow(response_mode="form_post", scope="openid not-a-scope")
    action, fields = form_post(WSGIClient(auto.wsgi).get("/authorize", params=flow.params))
    assert action == REDIRECT
    assert fields["error"] == "invalid_scope"
    assert "not-a-scope" in fields["error_description"]
    assert fields["state"] == flow.params["state"] and fields["iss"] == ISSUER
    assert "code" not in fields


def test_prompt_none_and_a_denial_are_posted_too(server: codeflow.Server) -> None:
    """OIDC Core §3.1.2.6 (login_required) and RFC 6749 §4.1.2.1 (access_denied), each in
    the response mode the request asked for."""
    browser = WSGIClient(server.wsgi)
    silent = new_flow(response_mode="form_post", prompt="none")
    _, fields = form_post(browser.get("/authorize", params=silent.params))
    assert fields["error"] == "login_required"
    assert fields["state"] == silent.params["state"]

    flow = new_flow(response_mode="form_post")
    consent = submit_login(browser, browser.get("/authorize", params=flow.params))
    action, fields = form_post(approve(browser, consent, "deny"))
    assert action == REDIRECT and fields["error"] == "access_denied"
    assert fields["state"] == flow.params["state"]

    flow = new_flow(response_mode="form_post")
    consent = browser.get("/authorize", params=flow.params)
    _, fields = form_post(approve(browser, consent))
    assert redeem(browser, flow, fields["code"])["access_token"]


@pytest.mark.parametrize("mode", ["fragment", "query.jwt", "form_post.jwt", "jwt", "web_message",
                                  "FORM_POST"])  # fmt: skip
def test_an_unsupported_response_mode_is_refused(auto: codeflow.Server, mode: str) -> None:
    """OAuth 2.0 Multiple Response Type Encoding Practices §2.1: response_mode "Informs the
    Authorization Server of the mechanism to be used for returning Authorization Response
    parameters"; one we cannot honour is an invalid_request (RFC 6749 §4.1.2.1: "includes an
    invalid parameter value"), answered on the query (the default for code, §2.1), with no
    code."""
    flow = new_flow(response_mode=mode)
    r = WSGIClient(auto.wsgi).get("/authorize", params=flow.params)
    assert r.status == 302, r.text
    query = query_of(r.location or "")
    assert query["error"] == "invalid_request"
    assert "response_mode" in query["error_description"]
    assert query["state"] == flow.params["state"]
    assert "code" not in query


def test_the_transcript_keeps_no_posted_code(clock: Clock) -> None:
    """The fake IdP's transcript never holds a secret of the flow ("A fake IdP for test
    suites"): the code in a form_post page is redacted as on a query string."""
    srv = make_server(clock, auto_approve=USERNAME, transcript=True)
    r = WSGIClient(srv.wsgi).get("/authorize", params=new_flow(response_mode="form_post").params)
    code = form_post(r)[1]["code"]
    recorded = str(srv.transcript.to_json())
    assert code not in recorded
    assert CONFIDENTIAL in recorded
