"""DESIGN "nothing a client sends makes a 5xx", extended to what a config file, the Python
API and the test-mode control surface accept (issue 12 item 7): claims that JSON cannot
carry, fault plan entries of the wrong types and config values of the wrong types are
refused when they are given, with a message naming them; the demo callback shows a flow
without openid instead of failing.
"""

from __future__ import annotations

import datetime
import html
import math
import re
from pathlib import Path

import pytest
import requests
from conftest import ISSUER, Clock, form_fields, make_server, query_of, share_session_keys
from test_cli import TIMEOUT, free_port, run
from wsgi_client import WSGIClient

import codeflow

###############################################################################
# The demo callback: a token response without an ID token #####################
###############################################################################


def test_the_demo_callback_shows_a_flow_without_openid() -> None:
    """OIDC Core §3.1.2.1: "If the openid scope value is not present, the behavior is
    entirely unspecified" by OpenID Connect: it is plain OAuth (RFC 6749 §4.1), whose
    token response has no ID token. A user who edits the demo's request to drop openid
    gets the demo's page with the access token and the userinfo error, not a 500."""
    srv = share_session_keys(codeflow.Server(issuer=ISSUER, clock=Clock(), demo=True))
    browser = WSGIClient(srv.wsgi)
    demo = browser.get(codeflow.DEMO_PATH)
    start = html.unescape(re.search(r'href="([^"]+)">Start the flow', demo.text).group(1))
    params = query_of(start)
    assert "openid" in params["scope"].split()
    params["scope"] = "profile offline_access"
    r = browser.get(codeflow.AUTHORIZE_PATH, params=params)
    login = {**form_fields(r.text), "username": "alice", "password": "wonderland"}
    r = browser.get(browser.post(codeflow.LOGIN_PATH, data=login).location)
    r = browser.post(codeflow.CONSENT_PATH, data={**form_fields(r.text), "decision": "approve"})
    assert r.location.startswith(ISSUER + codeflow.DEMO_CALLBACK_PATH)

    page = browser.get(r.location)
    assert page.status == 200, page.errors
    text = html.unescape(page.text)
    assert re.search(r'"access_token": "[^"]{20,}"', text)
    assert "no ID token" in text
    assert "insufficient_scope" in text  # OIDC Core §5.3: userinfo needs an openid token


###############################################################################
# Claims must be JSON values ###################################################
###############################################################################

NOT_JSON = {
    "date": datetime.date(2000, 1, 31),
    "datetime": datetime.datetime(2000, 1, 31, 12, 0, tzinfo=datetime.UTC),
    "time": datetime.time(12, 0),
    "nan": math.nan,
    "infinity": math.inf,
    "nested": {"address": {"since": datetime.date(2000, 1, 31)}},
    "bytes": b"\x00",
}


@pytest.mark.parametrize("value", NOT_JSON.values(), ids=NOT_JSON.keys())
def test_a_claim_that_is_not_json_is_refused_when_added(value) -> None:
    """OIDC Core §5.3.2: "The UserInfo Claims MUST be returned as the members of a JSON
    object" (RFC 8259: no dates, no NaN or infinity). A claim JSON cannot carry is refused
    by add_user and set_claims, naming it, instead of making every userinfo call a 500."""
    srv = codeflow.Server(issuer=ISSUER)
    with pytest.raises(ValueError, match="'birthdate'"):
        srv.add_user("carol", claims={"birthdate": value})
    assert srv.storage.get_user("carol") is None
    srv.add_user("carol", claims={"name": "Carol"})
    with pytest.raises(ValueError, match="'birthdate'"):
        srv.set_claims("carol", {"birthdate": value})
    assert srv.storage.get_user("carol").claims == {"name": "Carol"}
    with pytest.raises(ValueError, match="'birthdate'"):
        srv.next_claims({"birthdate": value})


def test_claims_must_be_a_mapping_of_names() -> None:
    """OIDC Core §5.1: claims are members of a JSON object, named by strings."""
    srv = codeflow.Server(issuer=ISSUER)
    with pytest.raises(ValueError, match="claims"):
        srv.add_user("carol", claims=["name", "Carol"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="claims"):
        srv.add_user("carol", claims={1: "one"})


def test_json_claims_reach_userinfo() -> None:
    """OIDC Core §5.1: a date is a string (birthdate "YYYY-MM-DD"), and JSON's other types
    are claims as they are."""
    srv = make_server(Clock())
    claims = {"birthdate": "2000-01-31", "email_verified": True, "address": {"country": "NZ"},
              "updated_at": 1_700_000_000}  # fmt: skip
    srv.add_user("carol", claims=claims)
    tokens = srv.issue_tokens("carol", "confidential-app", "openid profile email address")
    r = WSGIClient(srv.wsgi).get(
        "/userinfo", headers={"Authorization": "Bearer " + tokens["access_token"]}
    )
    assert r.status == 200, r.errors
    assert r.json() == {**claims, "sub": "carol"}


###############################################################################
# The config file ##############################################################
###############################################################################


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('[[users]]\nusername = "carol"\nclaims = { birthdate = 2000-01-31 }\n', "birthdate"),
        ('[[users]]\nusername = "carol"\nclaims = { seen = 2000-01-31T12:00:00Z }\n', "seen"),
        ('[[users]]\nusername = "carol"\nclaims = { score = nan }\n', "score"),
        ('[[users]]\nusername = "carol"\nclaims = "name=Carol"\n', "claims"),
        ('[[users]]\nusername = "carol"\npassword = 1234\n', "password"),
        ('[[clients]]\nclient_id = "a"\nname = 5\n', "name"),
        ('[[clients]]\nclient_id = "a"\nclient_secret = 5\n', "client_secret"),
        ('[[clients]]\nclient_id = "a"\nscopes = "openid profile"\n', "scopes"),
        ('[[clients]]\nclient_id = "a"\nredirect_uris = [5]\n', "redirect_uris"),
        ('[[clients]]\nclient_id = 7\n', "client_id"),
        ('[clients]\nclient_id = "a"\n', "[[clients]]"),
    ],
    ids=["date", "datetime", "nan", "claims-string", "password-int", "name-int",
         "secret-int", "scopes-string", "redirect-int", "client-id-int", "clients-table"],
)  # fmt: skip
def test_serve_refuses_config_values_it_cannot_use(
    tmp_path: Path, content: str, message: str
) -> None:
    """DESIGN "Config file (TOML)": a value of the wrong type (TOML has dates, numbers
    and NaN where strings belong) stops `serve` before it listens, with a non-zero exit
    code and a message naming the key, rather than a traceback or a 500 later."""
    config = tmp_path / "codeflow.toml"
    config.write_text(content)
    result = run("serve", "--config", str(config), "--port", str(free_port()))
    assert result.returncode != 0
    assert "serving" not in result.stdout
    assert "bad config" in result.stderr and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


###############################################################################
# The fault plan ###############################################################
###############################################################################

BAD_FAULTS = {
    "description-int": {"description": 5},
    "description-list": {"description": ["a"]},
    "status-float": {"status": 400.0},
    "status-bool": {"status": True},
    "status-string": {"status": "400"},
    "error-int": {"error": 5},
    "times-bool": {"times": True},
    "delay-bool": {"kind": "delay", "delay": True},
}


@pytest.mark.parametrize("spec", BAD_FAULTS.values(), ids=BAD_FAULTS.keys())
def test_a_fault_of_the_wrong_types_is_refused_when_added(codeflow_server, spec) -> None:
    """Issue 12 item 7: "a test-mode fault with a non-string description or a float status
    is accepted and then answers 500 when it fires". A fault plan entry is checked when it
    is made, types included: a ValueError naming the field."""
    fields = {"endpoint": "token", "kind": "oauth_error", **spec}
    name = next(iter(spec.keys() - {"kind"}))
    with pytest.raises(ValueError, match=name):
        codeflow_server.faults.add(**fields)
    assert codeflow_server.faults.pending == []


@pytest.mark.parametrize("spec", BAD_FAULTS.values(), ids=BAD_FAULTS.keys())
def test_a_fault_of_the_wrong_types_over_http_is_a_400(codeflow_live, spec) -> None:
    """Over the test-mode control surface too: 400 invalid_request, nothing planned, and
    the token endpoint keeps answering as it should (RFC 6749 §5.2, never a 500)."""
    control = codeflow_live.url + "/_codeflow/faults"
    r = requests.post(control, json={"endpoint": "token", "kind": "oauth_error", **spec},
                      timeout=TIMEOUT)  # fmt: skip
    assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text
    assert requests.get(control, timeout=TIMEOUT).json() == []
    r = requests.post(codeflow_live.url + "/token", data={"grant_type": "client_credentials",
                      "client_id": "nobody"}, timeout=TIMEOUT)  # fmt: skip
    assert r.status_code == 401


def test_a_planned_oauth_error_fires_as_planned(codeflow_live) -> None:
    """RFC 6749 §5.2: the planned error, status and description, as given."""
    codeflow_live.faults.add(endpoint="token", kind="oauth_error", error="temporarily_unavailable",
                             status=503, description="Try again later.")  # fmt: skip
    r = requests.post(codeflow_live.url + "/token", data={"grant_type": "client_credentials"},
                      timeout=TIMEOUT)  # fmt: skip
    assert r.status_code == 503
    assert r.json() == {"error": "temporarily_unavailable", "error_description": "Try again later."}
