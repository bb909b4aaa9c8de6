"""The authorization endpoint: RFC 6749 §3.1, §3.1.2, §3.3, §4.1.1, §4.1.2, §4.1.2.1,
RFC 8252 §7.3 (loopback redirect URIs), RFC 9207 (``iss``), OpenID Connect Core §6
(request objects refused).

In-process through the WSGI app (wsgiref.validate), plus one check on a real socket.
"""

from __future__ import annotations

import base64
import re
import urllib.parse

import pytest
import requests
from conftest import (
    CONFIDENTIAL,
    ISSUER,
    PUBLIC,
    REDIRECT,
    SECRET,
    Clock,
    make_server,
    new_flow,
    query_of,
)
from wsgi_client import Response, WSGIClient

import codeflow

BASIC = "Basic " + base64.b64encode(f"{CONFIDENTIAL}:{SECRET}".encode()).decode()
# RFC 6749 §4.1.2.1: error_description = 1*( %x20-21 / %x23-5B / %x5D-7E )
ERROR_DESCRIPTION_RE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]+")


@pytest.fixture
def browser(server: codeflow.Server) -> WSGIClient:
    return WSGIClient(server.wsgi)


@pytest.fixture
def auto(clock: Clock) -> codeflow.Server:
    """A server that approves every request at once as alice (no login, no consent)."""
    srv = make_server(clock, auto_approve="alice")
    srv.add_user("bob", "bob-password")
    return srv


def assert_error_page(r: Response, error: str = "invalid_request") -> None:
    """An untrusted request: an HTML page, never a redirect."""
    assert r.status == 400
    assert "location" not in r.headers
    assert r.headers["content-type"].startswith("text/html")
    assert f"<code>{error}</code>" in r.text


def redirect_query(r: Response, to: str = REDIRECT, status: int = 302) -> dict[str, str]:
    """The query of a redirect to the client's redirect_uri."""
    assert r.status == status, r.text
    location = r.location
    assert location is not None
    assert location.split("?")[0] == to.split("?")[0]
    return query_of(location)


def assert_error_redirect(
    r: Response, error: str, state: str | None, status: int = 302
) -> dict[str, str]:
    q = redirect_query(r, status=status)
    assert q["error"] == error
    assert q["error_description"]
    assert q["iss"] == ISSUER
    assert "code" not in q
    if state is None:
        assert "state" not in q
    else:
        assert q["state"] == state
    return q


def redeem(client: WSGIClient, code: str, verifier: str, redirect_uri: str | None = REDIRECT):
    data = {"grant_type": "authorization_code", "code": code, "code_verifier": verifier}
    if redirect_uri is not None:
        data["redirect_uri"] = redirect_uri
    return client.post("/token", data=data, headers={"Authorization": BASIC})


###############################################################################
# Untrusted client or redirect_uri: a page, never a redirect ##################
###############################################################################

UNTRUSTED = {
    "unknown client_id": [("client_id", "no-such-app"), ("redirect_uri", REDIRECT)],
    "missing client_id": [("redirect_uri", REDIRECT)],
    "repeated client_id": [
        ("client_id", CONFIDENTIAL),
        ("client_id", CONFIDENTIAL),
        ("redirect_uri", REDIRECT),
    ],
    "empty client_id": [("client_id", ""), ("redirect_uri", REDIRECT)],
    "unregistered redirect_uri": [
        ("client_id", CONFIDENTIAL),
        ("redirect_uri", "https://attacker.example/callback"),
    ],
    "redirect_uri with another path": [
        ("client_id", CONFIDENTIAL),
        ("redirect_uri", "http://127.0.0.1:9000/callback/evil"),
    ],
    "redirect_uri with an extra query": [
        ("client_id", CONFIDENTIAL),
        ("redirect_uri", REDIRECT + "?next=https://attacker.example"),
    ],
    "redirect_uri with a fragment": [
        ("client_id", CONFIDENTIAL),
        ("redirect_uri", REDIRECT + "#x"),
    ],
    "redirect_uri with a trailing slash": [
        ("client_id", CONFIDENTIAL),
        ("redirect_uri", REDIRECT + "/"),
    ],
    "missing redirect_uri with several registered": [("client_id", PUBLIC)],
    "repeated redirect_uri": [
        ("client_id", CONFIDENTIAL),
        ("redirect_uri", REDIRECT),
        ("redirect_uri", REDIRECT),
    ],
}


@pytest.mark.parametrize("pairs", UNTRUSTED.values(), ids=UNTRUSTED.keys())
def test_untrusted_client_or_redirect_uri_gets_an_error_page_not_a_redirect(browser, pairs):
    """RFC 6749 §4.1.2.1: "If the request fails due to a missing, invalid, or mismatching
    redirection URI, or if the client identifier is missing or invalid, the authorization
    server SHOULD inform the resource owner of the error and MUST NOT automatically
    redirect the user-agent to the invalid redirection URI."
    """
    flow = new_flow()
    rest = [(k, v) for k, v in flow.params.items() if k not in ("client_id", "redirect_uri")]
    r = browser.get("/authorize", params=pairs + rest)
    assert_error_page(r)


def test_untrusted_request_is_not_redirected_even_when_other_parameters_are_bad_too(browser):
    """RFC 6749 §4.1.2.1: the authorization server "MUST NOT automatically redirect the
    user-agent to the invalid redirection URI", whatever else is wrong with the request.
    """
    params = {
        "client_id": CONFIDENTIAL,
        "redirect_uri": "https://attacker.example/cb",
        "response_type": "token",
        "scope": "admin",
        "state": "s",
    }
    r = browser.get("/authorize", params=params)
    assert_error_page(r)
    assert "attacker.example" not in r.headers.get("location", "")


def test_redirect_uri_may_be_omitted_when_exactly_one_is_registered(auto):
    """RFC 6749 §3.1.2.3: "If multiple redirection URIs have been registered ... the client
    MUST include a redirection URI with the authorization request"; with one registered,
    redirect_uri is OPTIONAL (§4.1.1) and the response goes to the registered one.
    """
    browser = WSGIClient(auto.wsgi)
    flow = new_flow(redirect_uri=None)
    q = redirect_query(browser.get("/authorize", params=flow.params))
    assert q["state"] == flow.params["state"]
    r = redeem(browser, q["code"], flow.verifier, redirect_uri=None)
    assert r.status == 200, r.text


def test_errors_go_to_the_single_registered_redirect_uri_when_it_is_omitted(browser):
    """RFC 6749 §4.1.2.1: once the redirection URI is valid, "the authorization server
    informs the client by adding the following parameters to the query component of the
    redirection URI"; an omitted redirect_uri means the registered one (§3.1.2.3).
    """
    flow = new_flow(redirect_uri=None, response_type="token")
    assert_error_redirect(
        browser.get("/authorize", params=flow.params),
        "unsupported_response_type",
        flow.params["state"],
    )


###############################################################################
# RFC 8252 §7.3: loopback redirect URIs of native (public) clients #############
###############################################################################


def test_a_registered_loopback_uri_with_a_port_is_matched_exactly(auto):
    """RFC 9700 §2.1: "authorization servers MUST utilize exact string matching" of
    redirect URIs; the RFC 8252 §7.3 exception is for native apps, which register a
    loopback URI without a port. One registered with its port (a web app on this
    machine) keeps exact matching, so a code cannot be sent to another local port."""
    browser = WSGIClient(auto.wsgi)
    flow = new_flow(PUBLIC, redirect_uri="http://127.0.0.1:9001/callback")
    assert_error_page(browser.get("/authorize", params=flow.params))


@pytest.mark.parametrize(
    "given",
    [
        "http://127.0.0.1:51234/native/callback",
        "http://127.0.0.1/native/callback",
    ],
    ids=["port added", "no port (exact)"],
)
def test_public_client_loopback_redirect_uri_may_use_any_port(auto, given):
    """RFC 8252 §7.3: "The authorization server MUST allow any port to be specified at the
    time of the request for loopback IP redirect URIs, to accommodate clients that obtain
    an available ephemeral port from the operating system."
    """
    browser = WSGIClient(auto.wsgi)
    flow = new_flow(PUBLIC, redirect_uri=given)
    r = browser.get("/authorize", params=flow.params)
    assert r.status == 302
    assert r.location.startswith(given + "?")
    code = query_of(r.location)["code"]
    token = browser.post(
        "/token",
        data={
            "grant_type": "authorization_code",
            "client_id": PUBLIC,
            "code": code,
            "redirect_uri": given,
            "code_verifier": flow.verifier,
        },
    )
    assert token.status == 200, token.text


def test_ipv6_loopback_redirect_uri_may_use_any_port(auto):
    """RFC 8252 §7.3: "The authorization server MUST allow any port to be specified at the
    time of the request for loopback IP redirect URIs" ([::1] as well as 127.0.0.1).
    """
    auto.add_client("ipv6-app", redirect_uris=["http://[::1]/cb"])
    flow = new_flow("ipv6-app", redirect_uri="http://[::1]:40001/cb")
    r = WSGIClient(auto.wsgi).get("/authorize", params=flow.params)
    assert r.status == 302
    assert r.location.startswith("http://[::1]:40001/cb?code=")


@pytest.mark.parametrize(
    "given",
    [
        "http://127.0.0.1:51234/native/other",
        "http://localhost:51234/native/callback",
        "http://127.0.0.2:51234/native/callback",
        "https://127.0.0.1:51234/native/callback",
        "http://127.0.0.1:51234/native/callback?x=1",
        "http://user@127.0.0.1:51234/native/callback",
        "http://127.0.0.1:51234@attacker.example/native/callback",
        "http://127.0.0.1:99999/native/callback",
    ],
    ids=[
        "other path",
        "localhost host",
        "other loopback IP",
        "https scheme",
        "extra query",
        "userinfo",
        "attacker host after @",
        "invalid port",
    ],
)
def test_loopback_port_exception_does_not_relax_anything_else(browser, given):
    """RFC 8252 §7.3: only the port may vary; RFC 9700 §2.1: redirect URIs are otherwise
    compared by exact string matching, and a mismatch "MUST NOT" be redirected to
    (RFC 6749 §4.1.2.1).
    """
    flow = new_flow(PUBLIC, redirect_uri=given)
    assert_error_page(browser.get("/authorize", params=flow.params))


@pytest.mark.parametrize(
    "given",
    [
        "http://127.0.0.1:51234/native/call\nback",
        "http://127.0.0.1:51234/native/call\tback",
        " http://127.0.0.1:51234/native/callback",
    ],
    ids=["newline in path", "tab in path", "leading space"],
)
def test_loopback_redirect_uri_with_whitespace_is_refused(browser, given):
    """RFC 8252 §7.3: only the port of a loopback redirect URI may differ from the
    registered one; otherwise RFC 9700 §2.1: "authorization servers MUST utilize exact
    string matching", and whitespace is not part of any URI (RFC 3986 §2).
    """
    flow = new_flow(PUBLIC, redirect_uri=given)
    assert_error_page(browser.get("/authorize", params=flow.params))


def test_loopback_port_exception_is_not_for_confidential_clients(browser):
    """RFC 8252 §7.3 is about native apps (public clients, §8.4); for every other client
    RFC 9700 §2.1: "authorization servers MUST utilize exact string matching".
    """
    flow = new_flow(CONFIDENTIAL, redirect_uri="http://127.0.0.1:9001/callback")
    assert_error_page(browser.get("/authorize", params=flow.params))


###############################################################################
# Errors after the redirect_uri is trusted: RFC 6749 §4.1.2.1 ##################
###############################################################################

REDIRECTED_ERRORS = {
    "response_type=token": ({"response_type": "token"}, "unsupported_response_type"),
    "response_type=code id_token": (
        {"response_type": "code id_token"},
        "unsupported_response_type",
    ),
    "missing response_type": ({"response_type": None}, "invalid_request"),
    "unknown scope": ({"scope": "openid admin"}, "invalid_scope"),
    "request object": ({"request": "eyJhbGciOiJub25lIn0.e30."}, "request_not_supported"),
    "request_uri": ({"request_uri": "https://client.example/r/1"}, "request_uri_not_supported"),
}


@pytest.mark.parametrize(
    ("overrides", "error"), REDIRECTED_ERRORS.values(), ids=REDIRECTED_ERRORS.keys()
)
def test_errors_redirect_to_the_client_with_error_state_and_iss(browser, overrides, error):
    """RFC 6749 §4.1.2.1: "If the resource owner denies the access request or if the
    request fails for reasons other than a missing or invalid redirection URI, the
    authorization server informs the client by adding the following parameters to the
    query component of the redirection URI": error (REQUIRED), error_description,
    state ("REQUIRED if a "state" parameter was present"); RFC 9207 §2: iss.
    """
    flow = new_flow(**overrides)
    r = browser.get("/authorize", params=flow.params)
    assert_error_redirect(r, error, flow.params["state"])
    assert r.headers["cache-control"] == "no-store"


def test_response_type_token_is_unsupported_for_public_clients_too(browser):
    """OAuth 2.1 §4.1.1 / RFC 9700 §2.1.2: "the implicit grant (response type "token")
    ... SHOULD NOT be used"; RFC 6749 §4.1.2.1: unsupported_response_type.
    """
    flow = new_flow(PUBLIC, response_type="token")
    assert_error_redirect(
        browser.get("/authorize", params=flow.params),
        "unsupported_response_type",
        flow.params["state"],
    )


def test_client_without_authorization_code_grant_is_unauthorized(server, browser):
    """RFC 6749 §4.1.2.1: unauthorized_client: "The client is not authorized to request an
    authorization code using this method."
    """
    server.add_client(
        "machine", client_secret="s", redirect_uris=[REDIRECT], grant_types=["client_credentials"]
    )
    flow = new_flow("machine")
    assert_error_redirect(
        browser.get("/authorize", params=flow.params), "unauthorized_client", flow.params["state"]
    )


@pytest.mark.parametrize("name", ["scope", "state", "response_type", "code_challenge"])
def test_repeated_parameter_is_an_invalid_request_redirect(browser, name):
    """RFC 6749 §3.1: "Request and response parameters MUST NOT be included more than
    once"; §4.1.2.1: invalid_request: the request "includes a parameter more than once".
    """
    flow = new_flow()
    pairs = [*flow.params.items(), (name, flow.params[name])]
    r = browser.get("/authorize", params=pairs)
    state = None if name == "state" else flow.params["state"]
    q = assert_error_redirect(r, "invalid_request", state)
    assert name in q["error_description"]


def test_error_without_state_in_the_request_has_no_state(browser):
    """RFC 6749 §4.1.2.1: state is "REQUIRED if a "state" parameter was present in the
    client authorization request": absent, it is not invented.
    """
    flow = new_flow(state=None, response_type="token")
    assert_error_redirect(
        browser.get("/authorize", params=flow.params), "unsupported_response_type", None
    )


@pytest.mark.parametrize(
    "scope",
    ['openid "quoted"', "openid back\\slash", "openid caf\u00e9"],
    ids=["double quote", "backslash", "non-ASCII"],
)
def test_error_description_stays_within_the_allowed_characters(browser, scope):
    """RFC 6749 §4.1.2.1: "Values for the "error_description" parameter MUST NOT include
    characters outside the set %x20-21 / %x23-5B / %x5D-7E."
    """
    flow = new_flow(scope=scope)
    q = assert_error_redirect(
        browser.get("/authorize", params=flow.params), "invalid_scope", flow.params["state"]
    )
    assert ERROR_DESCRIPTION_RE.fullmatch(q["error_description"]), q["error_description"]


def test_error_description_for_a_repeated_non_ascii_parameter_stays_ascii(browser):
    """RFC 6749 §4.1.2.1: "Values for the "error_description" parameter MUST NOT include
    characters outside the set %x20-21 / %x23-5B / %x5D-7E."
    """
    flow = new_flow()
    pairs = [*flow.params.items(), ("caf\u00e9", "1"), ("caf\u00e9", "2")]
    q = assert_error_redirect(
        browser.get("/authorize", params=pairs), "invalid_request", flow.params["state"]
    )
    assert ERROR_DESCRIPTION_RE.fullmatch(q["error_description"]), q["error_description"]


def test_non_utf8_query_gets_an_error_page(browser):
    """RFC 6749 §4.1.2.1: a request the server cannot even read has no trusted
    redirection URI, so it "MUST NOT automatically redirect"; nothing makes a 5xx.
    """
    query = urllib.parse.urlencode(new_flow().params) + "&state=%FF%FE"
    assert_error_page(browser.get("/authorize?" + query))


###############################################################################
# Scope: RFC 6749 §3.3 #########################################################
###############################################################################


@pytest.mark.parametrize("scope", [None, ""], ids=["omitted", "empty value"])
def test_omitted_scope_means_the_clients_registered_scopes(auto, scope):
    """RFC 6749 §3.3: "If the client omits the scope parameter when requesting
    authorization, the authorization server MUST either process the request using a
    pre-defined default value or fail the request indicating an invalid scope"; §3.1:
    "Parameters sent without a value MUST be treated as if they were omitted".
    """
    browser = WSGIClient(auto.wsgi)
    flow = new_flow(scope=scope)
    q = redirect_query(browser.get("/authorize", params=flow.params))
    r = redeem(browser, q["code"], flow.verifier)
    assert r.status == 200, r.text
    client = auto.storage.get_client(CONFIDENTIAL)
    assert set(r.json()["scope"].split(" ")) == set(client.scopes)


def test_scope_is_a_space_delimited_set(auto):
    """RFC 6749 §3.3: "The value of the scope parameter is expressed as a list of
    space-delimited, case-sensitive strings"; order and repetition do not matter.
    """
    browser = WSGIClient(auto.wsgi)
    flow = new_flow(scope="profile  openid profile")
    q = redirect_query(browser.get("/authorize", params=flow.params))
    r = redeem(browser, q["code"], flow.verifier)
    assert sorted(r.json()["scope"].split(" ")) == ["openid", "profile"]


def test_scope_is_case_sensitive(browser):
    """RFC 6749 §3.3: scopes are "case-sensitive strings": OPENID is not openid."""
    flow = new_flow(scope="OPENID")
    assert_error_redirect(
        browser.get("/authorize", params=flow.params), "invalid_scope", flow.params["state"]
    )


###############################################################################
# Successful responses: RFC 6749 §4.1.2, RFC 9207 ##############################
###############################################################################


def test_auto_approve_answers_with_a_code_state_and_iss_at_once(auto):
    """RFC 6749 §4.1.2: the response carries code (REQUIRED) and state ("REQUIRED if the
    "state" parameter was present"); RFC 9207 §2: "the authorization server MUST include
    the iss parameter" in the authorization response.
    """
    browser = WSGIClient(auto.wsgi)
    flow = new_flow()
    r = browser.get("/authorize", params=flow.params)
    q = redirect_query(r)
    assert set(q) == {"code", "state", "iss"}
    assert q["state"] == flow.params["state"]
    assert q["iss"] == ISSUER
    assert len(q["code"]) >= 32
    assert "codeflow_session" not in browser.cookies


@pytest.mark.parametrize("state", ["a b&c=d/e+f%20g", "caf\u00e9 \u2603", "x" * 500])
def test_state_comes_back_exactly_as_sent(auto, state):
    """RFC 6749 §4.1.2: state is "REQUIRED if the "state" parameter was present in the
    client authorization request. The exact value received from the client."
    """
    flow = new_flow(state=state)
    q = redirect_query(WSGIClient(auto.wsgi).get("/authorize", params=flow.params))
    assert q["state"] == state


def test_login_hint_of_another_existing_user_picks_that_user(auto):
    """RFC 6749 §4.1.2: the code is issued for the resource owner who was authenticated;
    with auto-approve, login_hint names that user (DESIGN.md, embedding contract).
    """
    browser = WSGIClient(auto.wsgi)
    flow = new_flow(login_hint="bob")
    q = redirect_query(browser.get("/authorize", params=flow.params))
    token = redeem(browser, q["code"], flow.verifier).json()["access_token"]
    r = browser.post("/introspect", data={"token": token}, headers={"Authorization": BASIC})
    assert r.json()["active"] is True
    assert r.json()["sub"] == "bob"


def test_login_hint_of_an_unknown_user_falls_back_to_the_auto_approve_user(auto):
    """RFC 6749 §4.1.2: a code is only ever issued for an existing resource owner; an
    unknown login_hint does not create one.
    """
    browser = WSGIClient(auto.wsgi)
    flow = new_flow(login_hint="mallory")
    q = redirect_query(browser.get("/authorize", params=flow.params))
    token = redeem(browser, q["code"], flow.verifier).json()["access_token"]
    r = browser.post("/introspect", data={"token": token}, headers={"Authorization": BASIC})
    assert r.json()["sub"] == "alice"


def test_redirect_uri_query_component_is_kept(clock):
    """RFC 6749 §3.1.2: "The endpoint URI MAY include an "application/x-www-form-urlencoded"
    formatted ... query component, which MUST be retained when adding additional query
    parameters."
    """
    srv = make_server(clock, auto_approve="alice")
    uri = "http://127.0.0.1:9000/cb?tenant=acme&lang=en"
    srv.add_client("tenant-app", redirect_uris=[uri])
    browser = WSGIClient(srv.wsgi)

    flow = new_flow("tenant-app", redirect_uri=uri)
    r = browser.get("/authorize", params=flow.params)
    assert r.status == 302
    assert r.location.startswith(uri + "&")
    q = query_of(r.location)
    assert (q["tenant"], q["lang"]) == ("acme", "en")
    assert "code" in q

    flow = new_flow("tenant-app", redirect_uri=uri, response_type="token")
    r = browser.get("/authorize", params=flow.params)
    assert r.location.startswith(uri + "&")
    q = query_of(r.location)
    assert (q["tenant"], q["error"]) == ("acme", "unsupported_response_type")
    assert q["iss"] == ISSUER


def test_unrecognised_parameters_are_ignored(auto):
    """RFC 6749 §3.1: "The authorization server MUST ignore unrecognized request
    parameters."
    """
    flow = new_flow(foo="bar", resource_owner="someone", x_custom="1")
    q = redirect_query(WSGIClient(auto.wsgi).get("/authorize", params=flow.params))
    assert "code" in q
    assert "foo" not in q


def test_unrecognised_parameters_do_not_stop_the_login_page(browser):
    """RFC 6749 §3.1: "The authorization server MUST ignore unrecognized request
    parameters."
    """
    flow = new_flow(foo="bar")
    r = browser.get("/authorize", params=flow.params)
    assert r.status == 200
    assert 'action="login"' in r.text


###############################################################################
# RFC 6749 §3.1: GET and POST ##################################################
###############################################################################


def test_authorization_endpoint_also_accepts_a_form_post(auto):
    """RFC 6749 §3.1: "The authorization server MUST support the use of the HTTP "GET"
    method for the authorization endpoint and MAY support the use of the "POST" method
    as well." A POST is answered with 303 (RFC 9700 §4.12).
    """
    browser = WSGIClient(auto.wsgi)
    flow = new_flow()
    q = redirect_query(browser.post("/authorize", data=flow.params), status=303)
    assert q["state"] == flow.params["state"]
    assert q["iss"] == ISSUER
    assert redeem(browser, q["code"], flow.verifier).status == 200


def test_form_post_without_a_session_shows_the_login_page(browser):
    """RFC 6749 §3.1: the endpoint MAY support "POST"; RFC 6749 §4.1.1: the server then
    authenticates the resource owner, as for GET.
    """
    r = browser.post("/authorize", data=new_flow().params)
    assert r.status == 200
    assert 'action="login"' in r.text


def test_form_post_error_is_a_303_redirect_with_iss(browser):
    """RFC 6749 §4.1.2.1 and RFC 9207 §2 for a POSTed request; RFC 9700 §4.12: "the
    authorization server ... MUST NOT use HTTP status code 307" after a POST (we use 303).
    """
    flow = new_flow(response_type="token")
    r = browser.post("/authorize", data=flow.params)
    assert_error_redirect(r, "unsupported_response_type", flow.params["state"], status=303)


def test_form_post_with_another_content_type_gets_an_error_page(browser):
    """RFC 6749 §3.1 with POST: the parameters are "application/x-www-form-urlencoded";
    another body cannot be trusted to name the client, so no redirect (§4.1.2.1).
    """
    body = urllib.parse.urlencode(new_flow().params).encode()
    r = browser.post("/authorize", body=body, content_type="text/plain")
    assert_error_page(r)


###############################################################################
# No CORS on a browser-navigated endpoint ######################################
###############################################################################


@pytest.mark.parametrize("kind", ["login page", "error redirect", "error page", "post"])
def test_authorization_endpoint_sends_no_cors_headers(browser, kind):
    """RFC 6749 §3.1: the authorization endpoint is reached by user-agent navigation, not
    by scripts; no Access-Control-Allow-Origin, so no other origin can read its answers.
    """
    origin = {"Origin": "https://attacker.example"}
    flow = new_flow()
    if kind == "login page":
        r = browser.get("/authorize", params=flow.params, headers=origin)
    elif kind == "error redirect":
        r = browser.get("/authorize", params={**flow.params, "scope": "x"}, headers=origin)
    elif kind == "error page":
        r = browser.get("/authorize", params={**flow.params, "client_id": "x"}, headers=origin)
    else:
        r = browser.post("/authorize", data=flow.params, headers=origin)
    assert not [h for h in r.headers if h.startswith("access-control-")]


###############################################################################
# On the wire ##################################################################
###############################################################################


@pytest.mark.http
def test_on_the_wire_untrusted_is_a_page_and_errors_redirect_with_iss(live):
    """RFC 6749 §4.1.2.1: no redirect to an invalid redirection URI, an error redirect
    otherwise; RFC 9207 §2: iss is the issuer identifier, over real HTTP.
    """
    _, base = live
    flow = new_flow()
    bad = requests.get(
        base + "/authorize",
        params={**flow.params, "redirect_uri": "https://attacker.example/cb"},
        allow_redirects=False,
        timeout=10,
    )
    assert bad.status_code == 400
    assert "Location" not in bad.headers
    assert bad.headers["Content-Type"].startswith("text/html")

    r = requests.get(
        base + "/authorize",
        params={**flow.params, "response_type": "token"},
        allow_redirects=False,
        timeout=10,
    )
    assert r.status_code == 302
    q = query_of(r.headers["Location"])
    assert q["error"] == "unsupported_response_type"
    assert q["state"] == flow.params["state"]
    assert q["iss"] == base
