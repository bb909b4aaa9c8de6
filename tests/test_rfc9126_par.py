"""Pushed authorization requests (RFC 9126): the PAR endpoint (§2: client-authenticated,
validated as the authorization endpoint would, §2.2's 201 with request_uri and
expires_in, §2.3's JSON errors), the authorization endpoint taking client_id and
request_uri only (§4: one-time, short-lived, the client must match), and
require_pushed_authorization_requests per client and server-wide (§5, §6), through login
and consent.

In-process through the WSGI app with a clock the tests move.
"""

from __future__ import annotations

import html
import re
import secrets
from pathlib import Path
from typing import Any

import pytest
import requests
from codeflow_storage.sqlite import SQLiteStorage
from conftest import (
    CONFIDENTIAL,
    ISSUER,
    PASSWORD,
    PUBLIC,
    REDIRECT,
    SECRET,
    USERNAME,
    Clock,
    form_fields,
    make_server,
    new_flow,
    query_of,
)
from test_cli import free_port, run, serving
from test_cli_manage import cli
from wsgi_client import Response, WSGIClient, basic

import codeflow

PREFIX = "urn:ietf:params:oauth:request_uri:"


@pytest.fixture
def server(clock: Clock) -> codeflow.Server:
    return make_server(clock)


@pytest.fixture
def wc(server: codeflow.Server) -> WSGIClient:
    return WSGIClient(server.wsgi)


def push(wc: WSGIClient, params: dict[str, str], client: str = CONFIDENTIAL) -> Response:
    if client == CONFIDENTIAL:
        body = {k: v for k, v in params.items() if k != "client_id"}
        return wc.post("/par", data=body, headers=basic(CONFIDENTIAL, SECRET))
    return wc.post("/par", data={**params, "client_id": client})


def pushed(wc: WSGIClient, params: dict[str, str], client: str = CONFIDENTIAL) -> str:
    r = push(wc, params, client)
    assert r.status == 201, r.text
    return r.json()["request_uri"]


def sign_in_and_consent(wc: WSGIClient, page: Response) -> Response:
    """Log in on ``page``, follow the redirect back to /authorize, consent; the redirect."""
    assert 'action="login"' in page.text, page.text
    r = wc.post("/login", data={**form_fields(page.text), "username": USERNAME,
                                "password": PASSWORD})  # fmt: skip
    assert r.status == 303, r.text
    page = wc.get(r.location)
    assert 'action="consent"' in page.text, page.text
    return wc.post("/consent", data={**form_fields(page.text), "decision": "approve"})


def redeem(wc: WSGIClient, code: str, verifier: str) -> Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "code_verifier": verifier}  # fmt: skip
    return wc.post("/token", data=data, headers=basic(CONFIDENTIAL, SECRET))


def test_par_answers_201_with_a_one_time_request_uri(wc):
    """RFC 9126 §2.2: "the authorization server MUST return ... HTTP status code 201" with
    request_uri and expires_in; no-store, as a token response."""
    r = push(wc, new_flow().params)
    assert r.status == 201, r.text
    body = r.json()
    assert set(body) == {"request_uri", "expires_in"}
    assert body["request_uri"].startswith(PREFIX) and len(body["request_uri"]) > len(PREFIX) + 40
    assert body["expires_in"] == 60
    assert r.headers["cache-control"] == "no-store"


def test_the_whole_flow_with_a_pushed_request(server, wc):
    """RFC 9126 §4: the authorization endpoint takes client_id and request_uri, and the
    pushed parameters are the request: through login and consent, the code comes back
    with the pushed state, and redeems with the pushed PKCE verifier."""
    flow = new_flow()
    uri = pushed(wc, flow.params)
    page = wc.get("/authorize", params={"client_id": CONFIDENTIAL, "request_uri": uri})
    assert page.status == 200 and "Confidential App" in page.text
    r = sign_in_and_consent(wc, page)
    assert r.status == 303, r.text
    query = query_of(r.location)
    assert query["state"] == flow.params["state"] and query["iss"] == ISSUER
    token = redeem(wc, query["code"], flow.verifier)
    assert token.status == 200, token.text
    assert "id_token" in token.json()


def test_other_parameters_at_the_authorization_endpoint_are_ignored(server, wc):
    """RFC 9126 §4: the pushed request is the request; parameters sent beside request_uri
    do not change it (here: a state and redirect_uri of an attacker's)."""
    server.auto_approve = USERNAME
    flow = new_flow()
    uri = pushed(wc, flow.params)
    r = wc.get("/authorize", params={"client_id": CONFIDENTIAL, "request_uri": uri,
                                     "state": "evil", "redirect_uri": "https://evil.example/cb",
                                     "scope": "openid email"})  # fmt: skip
    assert r.status == 302 and r.location.startswith(REDIRECT + "?")
    assert query_of(r.location)["state"] == flow.params["state"]


def test_a_request_uri_works_once(server, wc):
    """RFC 9126 §4: "the authorization server ... SHOULD treat request_uri values as
    one-time use": a replay gets an error page, never a redirect."""
    server.auto_approve = USERNAME
    uri = pushed(wc, new_flow().params)
    first = wc.get("/authorize", params={"client_id": CONFIDENTIAL, "request_uri": uri})
    assert first.status == 302
    again = wc.get("/authorize", params={"client_id": CONFIDENTIAL, "request_uri": uri})
    assert again.status == 400 and "location" not in again.headers
    assert "already used" in again.text


def test_a_request_uri_expires_after_60_seconds(server, clock, wc):
    """RFC 9126 §2.2 expires_in: the request_uri is short-lived."""
    server.auto_approve = USERNAME
    uri = pushed(wc, new_flow().params)
    clock.advance(61)
    r = wc.get("/authorize", params={"client_id": CONFIDENTIAL, "request_uri": uri})
    assert r.status == 400 and "location" not in r.headers


def test_the_client_id_must_match(server, wc):
    """RFC 9126 §4: "the authorization server MUST ensure that the client_id ... matches
    the one in the pushed authorization request"; a mismatch or none is an error page."""
    server.auto_approve = USERNAME
    uri = pushed(wc, new_flow().params)
    r = wc.get("/authorize", params={"client_id": PUBLIC, "request_uri": uri})
    assert r.status == 400 and "location" not in r.headers and "another client" in r.text
    r = wc.get("/authorize", params={"request_uri": pushed(wc, new_flow().params)})
    assert r.status == 400 and "location" not in r.headers


def test_a_pushed_request_is_stored_shared_and_by_hash(server, wc):
    """RFC 9126 §2.2 with DESIGN.md: the request is kept in storage (every node sharing it
    finds it), by the hash of its request_uri; the client's secret is not kept."""
    body = {**new_flow().params, "client_secret": SECRET}
    body.pop("client_id")
    r = wc.post("/par", data={**body, "client_id": CONFIDENTIAL})
    assert r.status == 201, r.text
    uri = r.json()["request_uri"]
    stored = server.storage.consume_pushed_request(codeflow.token_hash(uri))
    assert stored is not None and stored.client_id == CONFIDENTIAL
    assert "client_secret" not in stored.params and stored.params["client_id"] == CONFIDENTIAL


def test_par_needs_client_authentication(wc):
    """RFC 9126 §2: client authentication as at the token endpoint: a confidential
    client's wrong or missing secret, an unknown client: 401 invalid_client; a public client
    names itself with client_id."""
    params = new_flow().params
    r = wc.post("/par", data=params)  # no secret
    assert r.status == 401 and r.json()["error"] == "invalid_client"
    r = wc.post("/par", data={k: v for k, v in params.items() if k != "client_id"},
                headers=basic(CONFIDENTIAL, "wrong"))  # fmt: skip
    assert r.status == 401 and "www-authenticate" in r.headers
    r = wc.post("/par", data={**params, "client_id": "nobody"})
    assert r.status == 401 and r.json()["error"] == "invalid_client"
    r = push(wc, new_flow(PUBLIC).params, PUBLIC)
    assert r.status == 201, r.text


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"scope": "openid admin"}, "invalid_scope"),
        ({"code_challenge": None, "code_challenge_method": None}, "invalid_request"),
        ({"redirect_uri": "https://evil.example/cb"}, "invalid_request"),
        ({"request_uri": PREFIX + "x"}, "invalid_request"),
        ({"response_mode": "fragment"}, "invalid_request"),
    ],
)
def test_par_validates_as_the_authorization_endpoint_and_answers_json(wc, change, error):
    """RFC 9126 §2.1: "The AS MUST validate the pushed request as it would an
    authorization request sent to the authorization endpoint"; §2.3: errors as JSON
    (RFC 6749 §5.2 form), never a redirect; §2.1: request_uri "MUST NOT be provided"."""
    params: dict[str, Any] = {**new_flow().params, **change}
    r = push(wc, {k: v for k, v in params.items() if v is not None})
    assert r.status == 400, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"] == error and r.json()["error_description"]
    assert "location" not in r.headers


def test_client_may_be_required_to_push(server, wc):
    """RFC 9126 §6 require_pushed_authorization_requests (client metadata): the
    authorization endpoint refuses that client's requests that were not pushed (an
    invalid_request back to its registered redirect URI), and takes pushed ones."""
    server.update_client(CONFIDENTIAL, require_pushed_authorization_requests=True)
    server.auto_approve = USERNAME
    r = wc.get("/authorize", params=new_flow().params)
    assert r.status == 302 and query_of(r.location)["error"] == "invalid_request"
    assert "code" not in query_of(r.location)
    uri = pushed(wc, new_flow().params)
    r = wc.get("/authorize", params={"client_id": CONFIDENTIAL, "request_uri": uri})
    assert r.status == 302 and "code" in query_of(r.location)
    r = wc.get("/authorize", params=new_flow(PUBLIC).params)  # another client is not held
    assert "code" in query_of(r.location)


def test_server_may_require_every_client_to_push(clock):
    """RFC 9126 §5 require_pushed_authorization_requests (server metadata): advertised in
    discovery, and every client's plain request is refused."""
    srv = make_server(clock, require_pushed_authorization_requests=True, auto_approve=USERNAME)
    wc = WSGIClient(srv.wsgi)
    metadata = wc.get("/.well-known/openid-configuration").json()
    assert metadata["require_pushed_authorization_requests"] is True
    for client in (CONFIDENTIAL, PUBLIC):
        r = wc.get("/authorize", params=new_flow(client).params)
        assert query_of(r.location)["error"] == "invalid_request", client
    r = wc.get("/authorize", params={"client_id": CONFIDENTIAL,
                                     "request_uri": pushed(wc, new_flow().params)})  # fmt: skip
    assert "code" in query_of(r.location)


def test_required_push_holds_through_login_and_consent(server, wc):
    """RFC 9126 §5: with pushing required, the request goes on after the sign-in (to
    /authorize, then the consent form) without its parameters ever coming from the
    browser: the redirect after login carries a request_uri of ours, not the parameters."""
    server.update_client(CONFIDENTIAL, require_pushed_authorization_requests=True)
    flow = new_flow()
    uri = pushed(wc, flow.params)
    page = wc.get("/authorize", params={"client_id": CONFIDENTIAL, "request_uri": uri})
    r = wc.post("/login", data={**form_fields(page.text), "username": USERNAME,
                                "password": PASSWORD})  # fmt: skip
    assert r.status == 303
    after = query_of(r.location)
    assert set(after) == {"client_id", "request_uri"} and flow.params["state"] not in r.location
    consent = wc.get(r.location)
    assert 'action="consent"' in consent.text
    done = wc.post("/consent", data={**form_fields(consent.text), "decision": "approve"})
    query = query_of(done.location)
    assert query["state"] == flow.params["state"]
    assert redeem(wc, query["code"], flow.verifier).status == 200
    # "Not you?" on the consent page keeps it pushed too.
    link = html.unescape(re.search(r'<a href="([^"]+)">Not you\?', consent.text).group(1))
    assert "request_uri=urn%3Acodeflow%3Apushed%3A" in link and "state=" not in link


def test_a_forged_resume_request_uri_is_refused(server, wc):
    """Our own continuation request_uri is signed: a made-up one is an error page."""
    server.update_client(CONFIDENTIAL, require_pushed_authorization_requests=True)
    r = wc.get("/authorize", params={"client_id": CONFIDENTIAL,
                                     "request_uri": "urn:codeflow:pushed:forged"})  # fmt: skip
    assert r.status == 400 and "location" not in r.headers


def test_discovery_advertises_par(wc):
    """RFC 9126 §5: pushed_authorization_request_endpoint and
    require_pushed_authorization_requests (false unless the server requires it)."""
    metadata = wc.get("/.well-known/oauth-authorization-server").json()
    assert metadata["pushed_authorization_request_endpoint"] == ISSUER + "/par"
    assert metadata["require_pushed_authorization_requests"] is False


def test_par_answers_cors_for_the_clients_origins(server, wc):
    """Fetch §3.2: a browser app (a public client) may push from its redirect URI's
    origin, as it calls /token; other origins get no Access-Control-Allow-Origin."""
    ok = wc.post("/par", data={**new_flow(PUBLIC).params, "client_id": PUBLIC},
                 headers={"Origin": "http://127.0.0.1:9000"})  # fmt: skip
    assert ok.status == 201 and ok.headers["access-control-allow-origin"] == "http://127.0.0.1:9000"
    other = wc.post("/par", data={**new_flow(PUBLIC).params, "client_id": PUBLIC},
                    headers={"Origin": "https://evil.example"})  # fmt: skip
    assert "access-control-allow-origin" not in other.headers


# -- Settings: the CLI, the config file, serve ---------------------------------------


def test_cli_sets_a_clients_requirement(tmp_path: Path) -> None:
    """RFC 9126 §6 require_pushed_authorization_requests as client metadata: `client add`
    and `client update` set and clear it; stored with the client."""
    db = f"sqlite:///{tmp_path / 'codeflow.db'}"
    added = cli("client", "add", "app", "--redirect-uri", "https://app.example/cb",
                "--require-pushed-authorization-requests", "--storage", db)  # fmt: skip
    assert added.returncode == 0, added.stderr
    with SQLiteStorage(tmp_path / "codeflow.db") as store:
        assert store.get_client("app").require_pushed_authorization_requests  # type: ignore[union-attr]
    updated = cli("client", "update", "app", "--no-require-pushed-authorization-requests",
                  "--storage", db)  # fmt: skip
    assert updated.returncode == 0, updated.stderr
    with SQLiteStorage(tmp_path / "codeflow.db") as store:
        assert not store.get_client("app").require_pushed_authorization_requests  # type: ignore[union-attr]


def test_config_file_sets_a_clients_requirement(clock) -> None:
    """The [[clients]] key require_pushed_authorization_requests (a boolean, else a clear
    error naming it)."""
    srv = codeflow.Server(issuer=ISSUER, clock=clock)
    entry = {"client_id": "app", "redirect_uris": [REDIRECT],
             "require_pushed_authorization_requests": True}  # fmt: skip
    codeflow.load_config(srv, {"clients": [entry]})
    assert srv.storage.get_client("app").require_pushed_authorization_requests  # type: ignore[union-attr]
    bad = {**entry, "require_pushed_authorization_requests": "yes"}
    with pytest.raises(ValueError, match="require_pushed_authorization_requests"):
        codeflow.load_config(srv, {"clients": [bad]})


@pytest.mark.http
@pytest.mark.parametrize("where", ["option", "config"])
def test_serve_requires_pushed_requests_from_option_or_config(tmp_path: Path, where: str) -> None:
    """RFC 9126 §5: `serve --require-pushed-authorization-requests`, or the top-level
    config key, requires pushing of every client, and discovery says so."""
    config = tmp_path / "codeflow.toml"
    top = "require_pushed_authorization_requests = true\n" if where == "config" else ""
    config.write_text(top + f'[[clients]]\nclient_id = "app"\nredirect_uris = ["{REDIRECT}"]\n')
    option = ["--require-pushed-authorization-requests"] if where == "option" else []
    with serving("--config", str(config), *option) as server:
        doc = requests.get(server.base + "/.well-known/openid-configuration", timeout=10).json()
        assert doc["require_pushed_authorization_requests"] is True
        r = requests.get(server.base + "/authorize", params=new_flow("app").params,
                         allow_redirects=False, timeout=10)  # fmt: skip
        assert query_of(r.headers["Location"])["error"] == "invalid_request"
        assert server.interrupt() == 0, server.stderr


def test_serve_refuses_a_requirement_that_is_not_a_boolean(tmp_path: Path) -> None:
    """A config value of the wrong type stops `serve` with a message naming the key."""
    config = tmp_path / "codeflow.toml"
    config.write_text('require_pushed_authorization_requests = "yes"\n')
    result = run("serve", "--config", str(config), "--port", str(free_port()))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "require_pushed_authorization_requests" in result.stderr


def test_a_pushed_request_too_large_to_continue_is_refused_up_front(wc):
    """DESIGN.md: bad input gets a clear 4xx: a pushed request whose parameters could not
    go on after the sign-in (the signed continuation has MAX_PARAM_LENGTH at most) is
    refused at /par, not after the user signed in."""
    # Random, so that the signer's compression cannot shrink it.
    big = {**new_flow().params, "login_hint": secrets.token_urlsafe(3000),
           "ui_locales": secrets.token_urlsafe(3000)}  # fmt: skip
    r = push(wc, big)
    assert r.status == 400 and r.json()["error"] == "invalid_request"
    assert "too large" in r.json()["error_description"]


def test_a_pushed_request_keeps_several_resources(server, wc) -> None:
    """RFC 8707 §2: "Multiple resource parameters MAY be used"; pushed (RFC 9126 §2.1) they
    come back as the request had them: the code's token is for both resources."""
    server.auto_approve = USERNAME
    one, two = "https://one.example/", "https://two.example/"
    server.add_resource(one, scopes=["a"])
    server.add_resource(two, scopes=["b"])
    flow = new_flow(scope="a b")
    r = wc.post("/par", data=[*[(k, v) for k, v in flow.params.items() if k != "client_id"],
                              ("resource", one), ("resource", two)],
                headers=basic(CONFIDENTIAL, SECRET))  # fmt: skip
    assert r.status == 201, r.text
    r = wc.get("/authorize", params={"client_id": CONFIDENTIAL,
                                     "request_uri": r.json()["request_uri"]})  # fmt: skip
    assert r.status == 302 and "code" in query_of(r.location), r.location
    token = redeem(wc, query_of(r.location)["code"], flow.verifier)
    assert token.status == 200, token.text
    introspected = wc.post("/introspect", data={"token": token.json()["access_token"]},
                           headers=basic(CONFIDENTIAL, SECRET)).json()  # fmt: skip
    assert sorted(introspected["aud"]) == [one, two]
