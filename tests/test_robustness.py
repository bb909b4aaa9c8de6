"""DESIGN "nothing a client sends makes a 5xx": random and malformed requests at every
endpoint, in-process through ``wsgiref.validate`` and over a real socket.

RFC 6749 §3.1: "Request and response parameters MUST NOT be included more than once."
DESIGN: "Bad input — a repeated parameter, a missing one, wrong types, oversize values,
non-UTF-8 — gets a 4xx with a clear message; nothing a client sends makes a 5xx."
"""

from __future__ import annotations

import base64
import io
import json
import socket
import string
import urllib.parse
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import WSGIWarning, validator

import pytest
import requests
from conftest import (
    CONFIDENTIAL,
    ISSUER,
    NATIVE_REDIRECT,
    PASSWORD,
    PUBLIC,
    REDIRECT,
    SECRET,
    USERNAME,
    Clock,
    browser_authorize,
    form_fields,
    make_server,
    new_flow,
    pkce_pair,
    query_of,
    redeem_over_http,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from wsgi_client import WSGIClient

import codeflow

FORM = "application/x-www-form-urlencoded"
HOST = urllib.parse.urlsplit(ISSUER).netloc
TIMEOUT = 10

# Every endpoint and the methods it answers.
ENDPOINTS = {
    codeflow.AUTHORIZE_PATH: ("GET", "POST"),
    codeflow.LOGIN_PATH: ("POST",),
    codeflow.CONSENT_PATH: ("POST",),
    codeflow.TOKEN_PATH: ("POST",),
    codeflow.INTROSPECT_PATH: ("POST",),
    codeflow.REVOKE_PATH: ("POST",),
    codeflow.OAUTH_METADATA_PATH: ("GET",),
    "/": ("GET",),
    codeflow.DEMO_PATH: ("GET",),
    codeflow.DEMO_CALLBACK_PATH: ("GET",),
}
API_PATHS = (codeflow.TOKEN_PATH, codeflow.INTROSPECT_PATH, codeflow.REVOKE_PATH)
METHODS = ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE")
ODD_METHODS = ("get", "post", "PROPFIND", "BREW", "")


###############################################################################
# Calling the app with an environ we control ##################################
###############################################################################


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class RawRequest:
    """One request as a client may send it: every field is whatever it sent."""

    method: str = "GET"
    path: str = "/"  # PATH_INFO: PEP 3333 "bytes" as a latin-1 str
    query: bytes = b""
    body: bytes = b""
    content_type: str | None = None
    content_length: str | None = "auto"  # "auto": len(body); None: header absent
    headers: dict[str, str] = field(default_factory=dict)  # CGI names: HTTP_COOKIE, ...


def validator_accepts(content_length: str | None) -> bool:
    """wsgiref.validate refuses an environ whose CONTENT_LENGTH is not an int >= 0; a
    real server passes such a header through, so the app must cope with it."""
    if not content_length:
        return True
    try:
        return int(content_length) >= 0
    except ValueError:
        return False


def send(srv: codeflow.Server, req: RawRequest) -> Answer:
    """Call ``srv.wsgi`` through wsgiref.validate, so that every answer is also a valid
    PEP 3333 response, whatever the request."""
    environ: dict = {
        "REQUEST_METHOD": req.method,
        "SCRIPT_NAME": "",
        "PATH_INFO": req.path,
        "QUERY_STRING": req.query.decode("latin-1"),
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": HOST,
        "wsgi.input": io.BytesIO(req.body),
    }
    length = str(len(req.body)) if req.content_length == "auto" else req.content_length
    if req.content_type is not None:
        environ["CONTENT_TYPE"] = req.content_type
    environ.update(req.headers)
    setup_testing_defaults(environ)

    def app(env: dict, start_response):
        if length is not None:
            env["CONTENT_LENGTH"] = length  # set after the validator looked, see above
        return srv.wsgi(env, start_response)

    if length is not None and validator_accepts(length):
        environ["CONTENT_LENGTH"] = length
    captured: dict = {}

    def start_response(status: str, headers: list, exc_info=None):
        captured["status"], captured["headers"] = status, headers
        return lambda data: None

    with warnings.catch_warnings():
        # Methods outside HTTP's usual set are part of the storm; the validator warns.
        warnings.filterwarnings("ignore", "Unknown REQUEST_METHOD", WSGIWarning)
        result = validator(app)(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            result.close()
    headers = {name.lower(): value for name, value in captured["headers"]}
    return Answer(int(captured["status"].split()[0]), headers, body)


def post_form(srv: codeflow.Server, path: str, body: bytes, **kw) -> Answer:
    return send(srv, RawRequest("POST", path, body=body, content_type=FORM, **kw))


def basic(client_id: str, secret: str) -> dict[str, str]:
    credentials = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {credentials}"}


def assert_flow_works_in_process(srv: codeflow.Server) -> None:
    """The whole authorization code flow, in-process: the server still works."""
    browser = WSGIClient(srv.wsgi)
    flow = new_flow()
    r = browser.get(codeflow.AUTHORIZE_PATH, params=flow.params)
    assert r.status == 200 and 'action="login"' in r.text, r.text
    r = browser.post(
        codeflow.LOGIN_PATH,
        data={**form_fields(r.text), "username": USERNAME, "password": PASSWORD},
    )
    assert r.status == 303, r.text
    r = browser.get(r.location)
    if r.status == 200:  # consent is asked once per user, client and scope
        assert 'action="consent"' in r.text, r.text
        r = browser.post(codeflow.CONSENT_PATH, data={**form_fields(r.text), "decision": "approve"})
    assert r.status in (302, 303), r.text
    callback = query_of(r.location)
    assert callback["state"] == flow.params["state"]
    app = WSGIClient(srv.wsgi)
    auth = {"Authorization": basic(CONFIDENTIAL, SECRET)["HTTP_AUTHORIZATION"]}
    r = app.post(
        codeflow.TOKEN_PATH,
        data={
            "grant_type": "authorization_code",
            "code": callback["code"],
            "redirect_uri": REDIRECT,
            "code_verifier": flow.verifier,
        },
        headers=auth,
    )
    assert r.status == 200, r.text
    token = r.json()["access_token"]
    r = app.post(codeflow.INTROSPECT_PATH, data={"token": token}, headers=auth)
    assert r.status == 200 and r.json()["active"] is True, r.text


###############################################################################
# What a client may send: strategies ###########################################
###############################################################################

PARAM_NAMES = (
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
    "nonce",
    "login_hint",
    "request",
    "request_uri",
    "grant_type",
    "code",
    "code_verifier",
    "refresh_token",
    "token",
    "token_type_hint",
    "client_secret",
    "csrf_token",
    "username",
    "password",
    "decision",
    "iss",
    "error",
)
KNOWN_VALUES = (
    CONFIDENTIAL,
    PUBLIC,
    codeflow.DEMO_CLIENT_ID,
    REDIRECT,
    NATIVE_REDIRECT,
    "http://127.0.0.1:1/native/callback",
    ISSUER + codeflow.DEMO_CALLBACK_PATH,
    "code",
    "token",
    "authorization_code",
    "refresh_token",
    "client_credentials",
    "password",
    "S256",
    "plain",
    pkce_pair()[1],
    "openid profile",
    "offline_access api:read",
    "approve",
    "deny",
    USERNAME,
    PASSWORD,
    SECRET,
)
latin1 = st.text(st.characters(max_codepoint=0xFF), max_size=30)
RAW_PIECES = (
    b"%FF",
    b"%C3",
    b"%C3%A9",
    b"%e2%82",
    b"%ED%A0%80",  # an encoded UTF-16 surrogate: not valid UTF-8
    b"%00",
    b"%",
    b"%G1",
    b"+",
    b"%26",
    b"%3D",
    b"a",
    b"\xff",
    b"\xc3\xa9",
    b"\x00",
)


def mostly(common: st.SearchStrategy, *rare: st.SearchStrategy, odds: int = 3) -> st.SearchStrategy:
    """``common`` ``odds`` times out of ``odds + 1``, else one of ``rare``: most requests
    must get past the envelope checks (method, content type, length, client
    authentication) for the storm to reach the logic behind them."""
    return st.integers(0, odds).flatmap(lambda i: common if i < odds else st.one_of(*rare))


def _templates() -> dict[str, list[dict[str, str]]]:
    """Well-formed requests per endpoint: the storm starts from these and breaks them, so
    that it reaches the logic behind the parsing and not only the parser."""
    confidential, public = new_flow(), new_flow(PUBLIC, redirect_uri=NATIVE_REDIRECT)
    demo = new_flow(codeflow.DEMO_CLIENT_ID, redirect_uri=ISSUER + codeflow.DEMO_CALLBACK_PATH)
    code = {"grant_type": "authorization_code", "code": "x" * 43, "redirect_uri": REDIRECT}
    return {
        codeflow.AUTHORIZE_PATH: [confidential.params, public.params, demo.params],
        codeflow.LOGIN_PATH: [{"csrf_token": "x", "request": "y", "username": USERNAME}],
        codeflow.CONSENT_PATH: [{"csrf_token": "x", "request": "y", "decision": "approve"}],
        codeflow.TOKEN_PATH: [
            {"grant_type": "client_credentials", "scope": "api:read"},
            {**code, "code_verifier": confidential.verifier},
            {**code, "client_id": PUBLIC, "code_verifier": public.verifier},
            {"grant_type": "refresh_token", "refresh_token": "x" * 43, "scope": "openid"},
            {"grant_type": "client_credentials", "client_id": CONFIDENTIAL, "client_secret": "s"},
        ],
        codeflow.INTROSPECT_PATH: [{"token": "x" * 43, "token_type_hint": "access_token"}],
        codeflow.REVOKE_PATH: [{"token": "x" * 43, "token_type_hint": "refresh_token"}],
        codeflow.DEMO_CALLBACK_PATH: [{"code": "x" * 43, "state": "s", "iss": ISSUER}],
    }


TEMPLATES = _templates()
ALL_TEMPLATES = [t for ts in TEMPLATES.values() for t in ts]


good_names = st.sampled_from(PARAM_NAMES)
good_values = st.sampled_from(KNOWN_VALUES) | st.text(max_size=30)


@st.composite
def bad_component(draw) -> bytes:
    """A parameter name or value that is not well formed, or too long."""
    kind = draw(st.sampled_from(("bytes", "escapes", "huge")))
    if kind == "bytes":  # raw bytes: non-UTF-8, non-ASCII, stray & = % +
        return draw(st.binary(min_size=1, max_size=30))
    if kind == "escapes":
        return b"".join(draw(st.lists(st.sampled_from(RAW_PIECES), min_size=1, max_size=8)))
    return b"x" * draw(st.integers(codeflow.MAX_PARAM_LENGTH - 2, codeflow.MAX_PARAM_LENGTH + 64))


@st.composite
def well_formed_pairs(draw, templates: list[dict[str, str]]) -> list[tuple[str, str]]:
    """A template with parameters dropped, values changed and parameters added."""
    pairs = []
    for name, value in draw(st.sampled_from(templates)).items() if templates else ():
        action = draw(st.sampled_from(("keep",) * 8 + ("drop", "change")))
        if action != "drop":
            pairs.append((name, value if action == "keep" else draw(good_values)))
    return pairs + draw(st.lists(st.tuples(good_names, good_values), max_size=3))


@st.composite
def form_data(draw, templates: list[dict[str, str]] = ()) -> bytes:
    """A query string or form body: well-formed pairs with, half of the time, a fault:
    a malformed or oversize name or value, a repeated parameter, a bare name, too many
    parameters, or noise."""
    pairs = [
        (urllib.parse.quote_plus(name).encode(), urllib.parse.quote_plus(value).encode())
        for name, value in draw(well_formed_pairs(list(templates)))
    ]
    fault = draw(st.sampled_from(("none",) * 5 + ("component", "repeat", "bare", "many", "noise")))
    if fault == "noise":
        return draw(st.binary(max_size=120))
    if fault == "component":
        i = draw(st.integers(0, len(pairs)))
        pair = (b"", b"") if i == len(pairs) else pairs[i]
        bad = draw(bad_component())
        pairs[i : i + 1] = [(bad, pair[1]) if draw(st.booleans()) else (pair[0], bad)]
    elif fault == "repeat" and pairs:
        pairs.append(draw(st.sampled_from(pairs)))  # RFC 6749 §3.1: a repeated parameter
    elif fault == "bare":
        pairs.append((draw(st.sampled_from(PARAM_NAMES)).encode(), None))
    elif fault == "many":
        extra = codeflow.MAX_PARAMS + draw(st.integers(-2, 8))
        pairs += [(b"p%d" % i, b"v") for i in range(extra)]
    separator = mostly(st.just(b"&"), st.sampled_from((b";", b"&&", b"&amp;")))
    return draw(separator).join(
        name if value is None else name + b"=" + value for name, value in pairs
    )


def bodies(templates: list[dict[str, str]]) -> st.SearchStrategy[bytes]:
    return mostly(
        form_data(templates),
        st.binary(max_size=200),
        st.integers(codeflow.MAX_BODY - 1, codeflow.MAX_BODY + 16).map(lambda n: b"a=" + b"x" * n),
    )


content_types = mostly(
    st.sampled_from((FORM, FORM, FORM + "; charset=utf-8", "Application/X-WWW-Form-URLEncoded")),
    st.none(),
    st.sampled_from(("application/json", "text/plain", "multipart/form-data; boundary=x", "")),
    latin1,
)
content_lengths = mostly(
    st.just("auto"),
    st.none(),
    st.sampled_from(("abc", "-5", "", " 7 ", "1e3", "0x10", "5_0", "+4", "99999999999999999999")),
    st.integers(0, 400).map(str),
)
authorizations = mostly(
    # Known clients, with the right secret (cached after its first use) or a wrong one.
    st.tuples(
        st.sampled_from((CONFIDENTIAL, PUBLIC, codeflow.DEMO_CLIENT_ID)),
        st.sampled_from((SECRET, SECRET, "")) | latin1,
    ).map(lambda t: "Basic " + base64.b64encode(f"{t[0]}:{t[1]}".encode()).decode()),
    st.binary(max_size=40).map(lambda b: "Basic " + base64.b64encode(b).decode()),
    latin1.map(lambda s: "Basic " + s),
    latin1.map(lambda s: "Bearer " + s),
    latin1,
)
cookie_values = st.one_of(
    st.text(string.ascii_letters + string.digits + "-_", min_size=22, max_size=22),
    st.text(st.characters(max_codepoint=0xFF), min_size=22, max_size=22),
    latin1,
    latin1.map(lambda s: '"' + s.replace('"', "").replace("\\", "") + '"'),
)
cookies = mostly(
    st.tuples(cookie_values, cookie_values).map(
        lambda t: f"{codeflow.SESSION_COOKIE}={t[0]}; {codeflow.CSRF_COOKIE}={t[1]}"
    ),
    cookie_values.map(lambda v: f"{codeflow.CSRF_COOKIE}={v}"),
    latin1,
)
hosts = mostly(st.just(HOST), st.sampled_from(("localhost:8000", "", "evil.example")), latin1)


@st.composite
def headers(draw) -> dict[str, str]:
    out = {}
    for name, values, present in (
        ("HTTP_AUTHORIZATION", authorizations, 3),
        ("HTTP_COOKIE", cookies, 2),
        ("HTTP_HOST", hosts, 2),
        ("HTTP_X_FORWARDED_HOST", hosts, 1),
    ):
        if draw(st.integers(0, 3)) < present:
            out[name] = draw(values)
    return out


@st.composite
def requests_at(draw, endpoint: str | None) -> RawRequest:
    """A random request aimed at ``endpoint`` (or anywhere, for None)."""
    if endpoint is None:
        path = draw(
            st.one_of(
                latin1.map(lambda s: "/" + s),
                st.binary(max_size=30).map(lambda b: "/" + b.decode("latin-1")),
                st.sampled_from(tuple(ENDPOINTS)).map(lambda p: p + "/"),
                st.just(""),
            )
        )
        method = draw(st.sampled_from(METHODS + ODD_METHODS))
    else:
        # Mostly the endpoint itself; sometimes with stray (often non-UTF-8) bytes after it.
        suffix = st.binary(min_size=1, max_size=6).map(lambda b: b.decode("latin-1"))
        path = endpoint + draw(mostly(st.just(""), suffix, odds=7))
        method = draw(
            mostly(
                st.sampled_from(ENDPOINTS[endpoint]),
                st.sampled_from(METHODS + ODD_METHODS),
                odds=7,
            )
        )
    templates = ALL_TEMPLATES if endpoint is None else TEMPLATES.get(endpoint, [])
    with_body = method not in ("GET", "HEAD") or draw(st.booleans())
    return RawRequest(
        method=method,
        path=path,
        query=draw(form_data(templates if method in ("GET", "HEAD") else [])),
        body=draw(bodies(templates)) if with_body else b"",
        content_type=draw(content_types),
        content_length=draw(content_lengths),
        headers=draw(headers()),
    )


@pytest.fixture(scope="module")
def server() -> codeflow.Server:
    """One server (demo client included) for this module: every test here only sends it
    bad input, and the storms check that it keeps working afterwards. (Shadows the
    conftest fixture, to pay for scrypt-hashed secrets once rather than per test.)"""
    return make_server(Clock(), demo=True)


STORM = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


###############################################################################
# The storm ####################################################################
###############################################################################


@pytest.mark.parametrize("endpoint", [*ENDPOINTS, None], ids=[*ENDPOINTS, "anywhere"])
def test_no_request_makes_a_5xx_and_the_server_still_works(
    server: codeflow.Server, endpoint: str | None
) -> None:
    """DESIGN "nothing a client sends makes a 5xx": random methods, paths (non-UTF-8
    included), query strings and bodies (raw bytes, bad %-escapes, repeated, oversize and
    too many parameters), content types, Content-Length values, Authorization headers and
    cookies never get a 5xx, every answer is valid PEP 3333, and afterwards the same
    server still runs the whole flow."""

    @STORM
    @given(req=requests_at(endpoint))
    def storm(req: RawRequest) -> None:
        answer = send(server, req)
        assert answer.status < 500, answer.text

    storm()
    # Wrong client secrets and passwords in the storm may have met their waits.
    server.clock.advance(codeflow.MAX_DELAY + 1)  # type: ignore[attr-defined]
    assert_flow_works_in_process(server)


@st.composite
def form_fields_from(draw, valid: dict[str, str]) -> dict[str, str]:
    """Each field the real value, a random one, or absent; plus login and consent fields."""
    fields = {}
    for name in ("csrf_token", "request"):
        choice = draw(st.sampled_from(("valid", "valid", "random", "absent")))
        if choice == "valid":
            fields[name] = valid[name]
        elif choice == "random":
            fields[name] = draw(st.text(max_size=40))
    for name, known in (("username", USERNAME), ("password", PASSWORD), ("decision", "approve")):
        if draw(st.booleans()):
            fields[name] = draw(st.sampled_from((known, "deny")) | st.text(max_size=20))
    return fields


def test_mangled_login_and_consent_forms_behind_a_valid_csrf_token_never_make_a_5xx() -> None:
    """DESIGN "nothing a client sends makes a 5xx": login and consent posts that carry a
    valid CSRF token and signed request, with any other field or cookie changed (so that
    the checks behind the CSRF check are reached), never get a 5xx."""
    clock = Clock()
    srv = make_server(clock)
    browser = WSGIClient(srv.wsgi)
    r = browser.get(codeflow.AUTHORIZE_PATH, params=new_flow().params)
    login_fields = form_fields(r.text)
    r = browser.post(
        codeflow.LOGIN_PATH, data={**login_fields, "username": USERNAME, "password": PASSWORD}
    )
    consent_fields = form_fields(browser.get(r.location).text)
    real = {
        codeflow.CSRF_COOKIE: browser.cookies[codeflow.CSRF_COOKIE],
        codeflow.SESSION_COOKIE: browser.cookies[codeflow.SESSION_COOKIE],
    }
    mangled_cookie = st.sampled_from(tuple(real.values())) | cookie_values | st.just('"\\351"')

    @STORM
    @given(
        path=st.sampled_from((codeflow.LOGIN_PATH, codeflow.CONSENT_PATH)),
        fields=st.sampled_from((login_fields, consent_fields)).flatmap(form_fields_from),
        csrf_cookie=st.none() | st.just(real[codeflow.CSRF_COOKIE]) | mangled_cookie,
        session_cookie=st.none() | st.just(real[codeflow.SESSION_COOKIE]) | mangled_cookie,
    )
    # '"\351"' is an all-ASCII cookie header that http.cookies unquotes to "é".
    @example(
        path=codeflow.LOGIN_PATH,
        fields={**login_fields, "username": USERNAME},
        csrf_cookie='"\\351"',
        session_cookie=None,
    )
    def storm(path: str, fields: dict, csrf_cookie: str | None, session_cookie: str | None) -> None:
        jar = [
            f"{name}={value}"
            for name, value in (
                (codeflow.CSRF_COOKIE, csrf_cookie),
                (codeflow.SESSION_COOKIE, session_cookie),
            )
            if value is not None
        ]
        body = urllib.parse.urlencode(fields).encode()
        answer = post_form(srv, path, body, headers={"HTTP_COOKIE": "; ".join(jar)})
        assert answer.status < 500, answer.text

    storm()
    clock.advance(codeflow.MAX_DELAY + 1)  # wrong passwords above may have met their waits
    assert_flow_works_in_process(srv)


###############################################################################
# Each class of bad input, and its exact answer ################################
###############################################################################


def assert_html_error_page(answer: Answer, status: int = 400) -> None:
    assert answer.status == status, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    assert "location" not in answer.headers
    # An expired or foreign form gets its own plain heading; every other error the generic one.
    headings = ("<h1>This request cannot be completed</h1>", "<h1>This form has expired</h1>")
    assert any(h in answer.text for h in headings), answer.text
    assert 'role="alert"' in answer.text


def assert_json_error(answer: Answer, status: int, error: str) -> None:
    assert answer.status == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["error"] == error
    assert answer.json()["error_description"]


@pytest.mark.parametrize(
    "bad",
    [b"\xff", b"%FF", b"%C3", b"caf\xe9", b"%ED%A0%80"],
    ids=["raw-0xFF", "escaped-FF", "truncated-C3", "raw-latin-1", "escaped-surrogate"],
)
def test_non_utf8_query_at_authorize_is_a_400_page(server: codeflow.Server, bad: bytes) -> None:
    """DESIGN "non-UTF-8 — gets a 4xx": a query string that is not UTF-8 gets a 400 HTML
    page, never a redirect (RFC 6749 §4.1.2.1: the client is not trusted yet)."""
    params = urllib.parse.urlencode(new_flow().params).encode()
    answer = send(server, RawRequest("GET", codeflow.AUTHORIZE_PATH, query=params + b"&x=" + bad))
    assert_html_error_page(answer)
    assert "UTF-8" in answer.text


def test_non_utf8_form_at_token_is_invalid_request(server: codeflow.Server) -> None:
    """DESIGN "non-UTF-8 — gets a 4xx": a form body that is not UTF-8 gets 400
    invalid_request (RFC 6749 §5.2)."""
    answer = post_form(server, codeflow.TOKEN_PATH, b"grant_type=client_credentials&scope=%FF")
    assert_json_error(answer, 400, "invalid_request")


def test_body_over_max_body_at_token_is_413(server: codeflow.Server) -> None:
    """DESIGN "oversize values — gets a 4xx": a body over MAX_BODY gets 413 with an
    invalid_request JSON error, and is not read."""
    body = b"grant_type=client_credentials&pad=" + b"x" * codeflow.MAX_BODY
    answer = post_form(server, codeflow.TOKEN_PATH, body, headers=basic(CONFIDENTIAL, SECRET))
    assert_json_error(answer, 413, "invalid_request")
    assert str(codeflow.MAX_BODY) in answer.json()["error_description"]


def test_huge_content_length_is_413_without_a_body(server: codeflow.Server) -> None:
    """DESIGN "oversize values": a Content-Length far over MAX_BODY gets 413 before any
    body is read."""
    answer = send(
        server,
        RawRequest(
            "POST", codeflow.TOKEN_PATH, content_type=FORM, content_length="99999999999999999999"
        ),
    )
    assert_json_error(answer, 413, "invalid_request")


@pytest.mark.parametrize("path", API_PATHS)
def test_repeated_parameter_at_api_endpoints_is_invalid_request(
    server: codeflow.Server, path: str
) -> None:
    """RFC 6749 §3.1: "Request and response parameters MUST NOT be included more than
    once": a repeated parameter gets 400 invalid_request JSON naming it."""
    body = b"grant_type=client_credentials&token=a&token=b&grant_type=client_credentials"
    answer = post_form(server, path, body, headers=basic(CONFIDENTIAL, SECRET))
    assert_json_error(answer, 400, "invalid_request")
    assert "repeated" in answer.json()["error_description"]


def test_repeated_client_id_at_authorize_is_a_400_page(server: codeflow.Server) -> None:
    """RFC 6749 §3.1 with §4.1.2.1: a repeated client_id makes the client untrusted, so the
    answer is a 400 page, not a redirect."""
    query = urllib.parse.urlencode([*new_flow().params.items(), ("client_id", PUBLIC)])
    answer = send(server, RawRequest("GET", codeflow.AUTHORIZE_PATH, query=query.encode()))
    assert_html_error_page(answer)


def test_repeated_scope_at_authorize_redirects_invalid_request(server: codeflow.Server) -> None:
    """RFC 6749 §3.1 with §4.1.2.1: once the client and redirect_uri are trusted, a repeated
    parameter goes back to the client as error=invalid_request, with the state."""
    flow = new_flow()
    query = urllib.parse.urlencode([*flow.params.items(), ("scope", "openid")])
    answer = send(server, RawRequest("GET", codeflow.AUTHORIZE_PATH, query=query.encode()))
    assert answer.status == 302
    back = query_of(answer.headers["location"])
    assert back["error"] == "invalid_request"
    assert back["state"] == flow.params["state"]


@pytest.mark.parametrize("length", ["abc", "1e3", "0x10", "twelve"])
def test_non_numeric_content_length_is_400(server: codeflow.Server, length: str) -> None:
    """DESIGN "wrong types — gets a 4xx": a Content-Length that is not a number gets 400
    invalid_request."""
    answer = send(
        server,
        RawRequest(
            "POST",
            codeflow.TOKEN_PATH,
            body=b"grant_type=client_credentials",
            content_type=FORM,
            content_length=length,
            headers=basic(CONFIDENTIAL, SECRET),
        ),
    )
    assert_json_error(answer, 400, "invalid_request")
    assert "Content-Length" in answer.json()["error_description"]


def test_non_numeric_content_length_at_login_is_a_400_page(server: codeflow.Server) -> None:
    """DESIGN "wrong types — gets a 4xx": at a browser endpoint the answer is a 400 page."""
    answer = send(
        server,
        RawRequest("POST", codeflow.LOGIN_PATH, content_type=FORM, content_length="abc"),
    )
    assert_html_error_page(answer)


@pytest.mark.parametrize("path", API_PATHS)
def test_too_many_parameters_is_invalid_request(server: codeflow.Server, path: str) -> None:
    """DESIGN "Bad input ... gets a 4xx": more than MAX_PARAMS parameters gets 400."""
    body = "&".join(f"p{i}=v" for i in range(codeflow.MAX_PARAMS + 1)).encode()
    answer = post_form(server, path, body, headers=basic(CONFIDENTIAL, SECRET))
    assert_json_error(answer, 400, "invalid_request")


def test_too_many_parameters_at_authorize_is_a_400_page(server: codeflow.Server) -> None:
    """DESIGN "Bad input ... gets a 4xx": more than MAX_PARAMS query parameters get a
    400 page."""
    pairs = [*new_flow().params.items()] + [(f"p{i}", "v") for i in range(codeflow.MAX_PARAMS)]
    query = urllib.parse.urlencode(pairs).encode()
    assert_html_error_page(send(server, RawRequest("GET", codeflow.AUTHORIZE_PATH, query=query)))


def test_oversize_parameter_is_invalid_request(server: codeflow.Server) -> None:
    """DESIGN "oversize values — gets a 4xx": a value over MAX_PARAM_LENGTH gets 400."""
    body = b"grant_type=client_credentials&scope=" + b"a" * (codeflow.MAX_PARAM_LENGTH + 1)
    answer = post_form(server, codeflow.TOKEN_PATH, body, headers=basic(CONFIDENTIAL, SECRET))
    assert_json_error(answer, 400, "invalid_request")
    assert "too long" in answer.json()["error_description"]


def test_oversize_state_at_authorize_is_a_400_page(server: codeflow.Server) -> None:
    """DESIGN "oversize values": an oversize query value gets a 400 page, not a redirect
    carrying it back."""
    params = new_flow(state="s" * (codeflow.MAX_PARAM_LENGTH + 1)).params
    query = urllib.parse.urlencode(params).encode()
    assert_html_error_page(send(server, RawRequest("GET", codeflow.AUTHORIZE_PATH, query=query)))


@pytest.mark.parametrize(
    "content_type", [None, "application/json", "text/plain", "multipart/form-data; boundary=x"]
)
def test_wrong_content_type_at_token_is_invalid_request(
    server: codeflow.Server, content_type: str | None
) -> None:
    """RFC 6749 §4.1.3: the token request is application/x-www-form-urlencoded; any other
    (or no) content type gets 400 invalid_request."""
    answer = send(
        server,
        RawRequest(
            "POST",
            codeflow.TOKEN_PATH,
            body=b"grant_type=client_credentials",
            content_type=content_type,
            headers=basic(CONFIDENTIAL, SECRET),
        ),
    )
    assert_json_error(answer, 400, "invalid_request")


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic !!!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic \xff\xfe",
        "Basic ",
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
    ],
    ids=["not-base64", "no-colon", "non-ascii", "empty", "not-utf8"],
)
def test_malformed_basic_credentials_are_invalid_client(
    server: codeflow.Server, authorization: str
) -> None:
    """RFC 6749 §5.2: malformed HTTP Basic credentials get 401 invalid_client with
    WWW-Authenticate: Basic."""
    answer = post_form(
        server,
        codeflow.TOKEN_PATH,
        b"grant_type=client_credentials",
        headers={"HTTP_AUTHORIZATION": authorization},
    )
    assert_json_error(answer, 401, "invalid_client")
    assert answer.headers["www-authenticate"].startswith("Basic ")


@pytest.mark.parametrize("path", ["/nope", "/authorize/extra", "/.well-known/openid", "/tokens"])
def test_unknown_path_is_404(server: codeflow.Server, path: str) -> None:
    """DESIGN "nothing a client sends makes a 5xx": an unknown path gets 404."""
    assert send(server, RawRequest("GET", path)).status == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", codeflow.TOKEN_PATH),
        ("GET", codeflow.LOGIN_PATH),
        ("GET", codeflow.CONSENT_PATH),
        ("DELETE", codeflow.REVOKE_PATH),
        ("PUT", codeflow.AUTHORIZE_PATH),
        ("POST", codeflow.OAUTH_METADATA_PATH),
        ("OPTIONS", codeflow.INTROSPECT_PATH),
        ("BREW", "/"),
    ],
)
def test_wrong_method_is_405(server: codeflow.Server, method: str, path: str) -> None:
    """DESIGN "nothing a client sends makes a 5xx": a method an endpoint does not answer
    gets 405 with an Allow header."""
    answer = send(server, RawRequest(method, path))
    assert answer.status == 405
    assert answer.headers["allow"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/\xff"),
        ("GET", codeflow.OAUTH_METADATA_PATH + "\xff"),
        ("GET", codeflow.AUTHORIZE_PATH + "\xc3"),
        ("POST", codeflow.TOKEN_PATH + "\xe9"),
    ],
    ids=["root", "metadata", "authorize", "token"],
)
def test_a_path_that_is_not_utf8_is_400(server: codeflow.Server, method: str, path: str) -> None:
    """DESIGN "non-UTF-8 — gets a 4xx": a path that is not UTF-8 gets 400; it is not served
    as the path that is left once the bad bytes are dropped (here a token request that
    would otherwise succeed)."""
    body = b"grant_type=client_credentials" if method == "POST" else b""
    headers = basic(CONFIDENTIAL, SECRET)
    answer = send(server, RawRequest(method, path, body=body, content_type=FORM, headers=headers))
    assert answer.status == 400, answer.text


@pytest.mark.parametrize("cookie", ['"\\351"', '"\xe9t\xe9"'], ids=["octal-escape", "latin-1"])
def test_non_ascii_csrf_cookie_with_a_valid_form_is_a_400_page(
    server: codeflow.Server, cookie: str
) -> None:
    """DESIGN "nothing a client sends makes a 5xx": a login form whose CSRF cookie is not
    ASCII (here behind a valid csrf_token) gets the 400 "form has expired" page."""
    r = WSGIClient(server.wsgi).get(codeflow.AUTHORIZE_PATH, params=new_flow().params)
    form = {**form_fields(r.text), "username": USERNAME, "password": PASSWORD}
    answer = post_form(
        server,
        codeflow.LOGIN_PATH,
        urllib.parse.urlencode(form).encode(),
        headers={"HTTP_COOKIE": f"{codeflow.CSRF_COOKIE}={cookie}"},
    )
    assert_html_error_page(answer)


###############################################################################
# The same bad input over a real socket ########################################
###############################################################################


def raw_http(
    base: str, request_line: bytes, headers: Sequence[bytes] = (), body: bytes = b""
) -> int:
    """Send bytes exactly as given (requests and http.client would refuse or fix them);
    return the status code of the answer."""
    url = urllib.parse.urlsplit(base)
    head = [request_line, b"Host: " + url.netloc.encode(), b"Connection: close", *headers]
    with socket.create_connection((url.hostname, url.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + body)
        received = b""
        for _ in range(1000):  # the server closes the connection after one answer
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    status_line = received.split(b"\r\n", 1)[0]
    return int(status_line.split()[1])


def form_headers(body: bytes) -> list[bytes]:
    return [b"Content-Type: " + FORM.encode(), b"Content-Length: %d" % len(body)]


def test_bad_input_over_http_gets_4xx_and_the_server_keeps_serving(live) -> None:
    """DESIGN "nothing a client sends makes a 5xx", on the wire: a real HTTP server answers
    each class of bad input with its 4xx, and then still runs the whole flow."""
    srv, base = live
    many = "&".join(f"p{i}=v" for i in range(codeflow.MAX_PARAMS + 1)).encode()
    repeated = b"grant_type=client_credentials&grant_type=client_credentials"
    grant = b"grant_type=client_credentials"
    form = b"Content-Type: " + FORM.encode()
    cases = [
        (b"GET /authorize?client_id=\xff&response_type=code HTTP/1.1", [], b"", 400),
        (b"GET /authorize?client_id=%FF&response_type=code HTTP/1.1", [], b"", 400),
        (b"POST /token HTTP/1.1", [form, b"Content-Length: abc"], b"", 400),
        (b"POST /token HTTP/1.1", [form, b"Content-Length: 99999999999"], b"", 413),
        (b"POST /token HTTP/1.1", form_headers(repeated), repeated, 400),
        (b"POST /token HTTP/1.1", form_headers(many), many, 400),
        (b"POST /token HTTP/1.1", [b"Authorization: Basic \xff", *form_headers(grant)], grant, 401),
        (b"POST /token HTTP/1.1", [b"Content-Type: text/plain", b"Content-Length: 3"], b"a=b", 400),
        (b"POST /login HTTP/1.1", [b"Cookie: codeflow_csrf=\xff; codeflow_session=\x01"], b"", 400),
        (b"GET /.well-known/oauth-authorization-server%FF HTTP/1.1", [], b"", 400),
        (b"GET /nope HTTP/1.1", [], b"", 404),
        (b"GET /token HTTP/1.1", [], b"", 405),
        (b"BREW /authorize HTTP/1.1", [], b"", 405),
    ]
    for request_line, headers, body, expected in cases:
        assert raw_http(base, request_line, headers, body) == expected, request_line

    # Still serving: discovery, then the whole flow with a real client over the socket.
    with requests.Session() as http:
        metadata = http.get(base + codeflow.OAUTH_METADATA_PATH, timeout=TIMEOUT).json()
        flow = new_flow()
        callback = browser_authorize(base, flow, session=http)
        assert callback["iss"] == srv.issuer
        r = redeem_over_http(
            metadata["token_endpoint"], callback["code"], flow, session=http, timeout=TIMEOUT
        )
        assert r.status_code == 200, r.text
        assert r.json()["token_type"] == "Bearer"
