"""The demo's ID-token step (issue 17 item 6) verifies the signature against the JWKS,
as OIDC Core §3.1.3.7 (6) requires of a client, and shows the check: passed for the
token the demo received, failed for one whose signature or key is wrong."""

from __future__ import annotations

import html
import re

from conftest import ISSUER, Clock, form_fields, share_session_keys
from wsgi_client import WSGIClient

import codeflow


def demo_server() -> codeflow.Server:
    return share_session_keys(codeflow.Server(issuer=ISSUER, clock=Clock(), demo=True))


def run_demo(srv: codeflow.Server) -> str:
    """The demo's flow in-process: /demo, its button, login, consent; the callback page."""
    browser = WSGIClient(srv.wsgi)
    demo = browser.get(codeflow.DEMO_PATH)
    start = html.unescape(re.search(r'href="([^"]+)">Start the flow', demo.text).group(1))
    r = browser.get(start)
    login = {**form_fields(r.text), "username": "alice", "password": "wonderland"}
    r = browser.get(browser.post(codeflow.LOGIN_PATH, data=login).location)
    r = browser.post(codeflow.CONSENT_PATH, data={**form_fields(r.text), "decision": "approve"})
    page = browser.get(r.location)
    assert page.status == 200
    return page.text


def id_token_step(page: str) -> str:
    return page.split('id="id-token"', 1)[1].split("</section>", 1)[0]


def test_the_id_token_step_shows_the_signature_verified_against_the_jwks() -> None:
    """OIDC Core §3.1.3.7 (6): "The Client MUST use the keys provided by the Issuer"."""
    srv = demo_server()
    step = id_token_step(run_demo(srv))
    kid = codeflow.signing_key(srv, "RS256").kid
    assert re.search(rf"✓ passed</span>: the signature, with the key <code>{kid}</code>", step)
    assert f'href="{ISSUER}{codeflow.JWKS_PATH}"' in step
    assert "✗" not in step and "skips" not in step


def test_a_wrong_signature_or_an_unknown_key_is_shown_failed() -> None:
    """The same check, given tokens wrong in one way each (the fault plan's alterations),
    fails just for them: the other checks still pass."""
    srv = demo_server()
    srv.add_client("app", redirect_uris=["http://127.0.0.1:9/cb"])
    token = srv.issue_tokens("alice", "app", "openid")["id_token"]
    for kind in ("bad_signature", "unknown_kid"):
        wrong = codeflow.alter_id_token(srv, token, kind)
        step = codeflow._id_token_step(srv, wrong, "demo-id")
        assert re.search(r"✗ failed</span>: the signature", step), kind
    assert "✗ failed</span>: the signature" not in codeflow._id_token_step(srv, token, "demo-id")
