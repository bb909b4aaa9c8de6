"""RFC 8707: resource indicators, with resources as registrations of their own
(``Server.add_resource``, ``[[resources]]``, ``codeflow resource ...``).

A client names the APIs it wants a token for with ``resource`` at the authorization
endpoint (§2.1) and the token endpoint (§2.2); the token's audience is those resources
(RFC 9068 §3 ``aud``; RFC 7662 §2.2 in introspection), its scopes are theirs, a refresh
may narrow the audience and never widen it, and anything unknown, disallowed or malformed
is ``invalid_target`` (§2). The consent page says which API the app reaches. Without
``resource`` nothing changes.

The end-to-end flow runs over real HTTP on 127.0.0.1; the rest in-process through
``wsgiref.validate``. JWTs are verified with PyJWT against the published JWKS.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import jwt
import pytest
import requests
from conftest import (
    CONFIDENTIAL,
    ISSUER,
    PASSWORD,
    REDIRECT,
    SECRET,
    USERNAME,
    Clock,
    form_fields,
    make_server,
    new_flow,
    query_of,
)
from oidc_helpers import approve, is_consent_page, jwks_keys, submit_login, verify_jwt
from wsgi_client import Response, WSGIClient, basic

import codeflow

API = "https://api.example/v1"
MAIL = "https://mail.example/"
OPAQUE = "urn:example:billing"
SERVICE, SERVICE_SECRET = "api-server", "api-server-secret"


def add_resources(srv: codeflow.Server) -> None:
    srv.add_resource(API, scopes=["read", "write"], name="Example API",
                     client_id=SERVICE)  # fmt: skip
    srv.add_resource(MAIL, scopes=["mail.read", "read"], name="Mail")
    srv.add_resource(OPAQUE, scopes=["invoices"], access_token_jwt=False,
                     access_token_lifetime=300)  # fmt: skip
    srv.add_client(SERVICE, client_secret=SERVICE_SECRET, grant_types=["client_credentials"],
                   scopes=["read"])  # fmt: skip


@pytest.fixture
def server(clock: Clock) -> codeflow.Server:
    srv = make_server(clock)
    add_resources(srv)
    return srv


@pytest.fixture
def browser(server: codeflow.Server) -> WSGIClient:
    return WSGIClient(server.wsgi)


def pairs(flow_params: dict[str, str], *resources: str) -> list[tuple[str, str]]:
    return [*flow_params.items(), *(("resource", r) for r in resources)]


def consent_for(browser: WSGIClient, params: list[tuple[str, str]]) -> Response:
    """Authorize, signing in when asked; the answer after sign-in (consent page or redirect)."""
    r = browser.get("/authorize", params=params)
    if r.status == 200 and 'action="login"' in r.text:
        r = submit_login(browser, r)
    return r


def code_for(browser: WSGIClient, params: list[tuple[str, str]]) -> str:
    r = consent_for(browser, params)
    if is_consent_page(r):
        r = approve(browser, r)
    assert r.status in (302, 303), r.text
    query = query_of(r.location)
    assert "code" in query, query
    return query["code"]


def token_request(browser: WSGIClient, data: list[tuple[str, str]], client: str = CONFIDENTIAL,
                  secret: str = SECRET) -> Response:  # fmt: skip
    return browser.post("/token", data=data, headers=basic(client, secret))


def redeem(browser: WSGIClient, flow, code: str, *resources: str) -> Response:
    data = [("grant_type", "authorization_code"), ("code", code), ("redirect_uri", REDIRECT),
            ("code_verifier", flow.verifier), *(("resource", r) for r in resources)]  # fmt: skip
    return token_request(browser, data)


def claims_of(browser: WSGIClient, token: str, audience: str, now: float) -> dict:
    return verify_jwt(token, jwks_keys(browser), audience=audience, now=now)[1]


def introspect(browser: WSGIClient, token: str, client: str = CONFIDENTIAL,
               secret: str = SECRET) -> dict:  # fmt: skip
    r = browser.post("/introspect", data={"token": token}, headers=basic(client, secret))
    assert r.status == 200, r.text
    return r.json()


# -- Over real HTTP: the whole flow -------------------------------------------------


def test_a_token_asked_for_a_resource_has_it_as_aud_over_http(
    live: tuple[codeflow.Server, str],
) -> None:
    """RFC 8707 §2.1 and §2.2: "resource" at the authorization and token endpoints; RFC
    9068 §3: the token's aud is the resource; RFC 7662 §2.2: so is introspection's. The
    consent page names the API and lists its scopes. Real HTTP on 127.0.0.1."""
    srv, base = live
    add_resources(srv)
    flow = new_flow(CONFIDENTIAL, scope="openid read")
    s = requests.Session()
    r = s.get(base + "/authorize", params=pairs(flow.params, API), allow_redirects=False)
    data = {**form_fields(r.text), "username": USERNAME, "password": PASSWORD}
    r = s.post(base + "/login", data=data, allow_redirects=False)
    r = s.get(r.headers["Location"], allow_redirects=False)
    assert r.status_code == 200 and 'action="consent"' in r.text
    assert "Example API" in r.text and API in r.text and "<code>read</code>" in r.text
    r = s.post(base + "/consent", data={**form_fields(r.text), "decision": "approve"},
               allow_redirects=False)  # fmt: skip
    code = query_of(r.headers["Location"])["code"]
    r = requests.post(base + "/token", auth=(CONFIDENTIAL, SECRET), timeout=10, data=[
        ("grant_type", "authorization_code"), ("code", code), ("redirect_uri", REDIRECT),
        ("code_verifier", flow.verifier), ("resource", API)])  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    jwks = requests.get(base + "/jwks", timeout=10).json()["keys"]
    keys = {k["kid"]: jwt.PyJWK(k) for k in jwks}
    header = jwt.get_unverified_header(body["access_token"])
    claims = jwt.decode(body["access_token"], keys[header["kid"]].key, algorithms=["RS256"],
                        audience=API, issuer=base)  # fmt: skip
    assert header["typ"] == "at+jwt"
    assert claims["aud"] == API
    assert claims["scope"].split() == ["openid", "read"]
    r = requests.post(base + "/introspect", data={"token": body["access_token"]},
                      auth=(CONFIDENTIAL, SECRET), timeout=10)  # fmt: skip
    assert r.json()["aud"] == API and r.json()["active"] is True


# -- Authorization endpoint: §2.1 -------------------------------------------------------


def test_the_consent_page_names_each_api_and_its_scopes(browser: WSGIClient) -> None:
    """RFC 8707 §2.1 with two resources: the consent page says which APIs the app will
    reach and lists each one's scopes under it (a scope both define, under both)."""
    flow = new_flow(CONFIDENTIAL, scope="openid read mail.read")
    r = consent_for(browser, pairs(flow.params, API, MAIL))
    assert is_consent_page(r), r.text
    assert "Example API" in r.text and API in r.text and "Mail" in r.text and MAIL in r.text
    api_part = r.text.split(API, 1)[1].split("</ul>", 1)[0]
    mail_part = r.text.split(MAIL, 1)[1].split("</ul>", 1)[0]
    assert "<code>read</code>" in api_part and "mail.read" not in api_part
    assert "<code>read</code>" in mail_part and "<code>mail.read</code>" in mail_part


def test_a_resource_without_scope_asks_for_the_resources_scopes(
    server: codeflow.Server, browser: WSGIClient, clock: Clock
) -> None:
    """RFC 8707 §2.1: scopes are the resource's: a request with resource and no scope
    asks for the resource's scopes, which the client's registration need not list."""
    flow = new_flow(CONFIDENTIAL, scope=None)
    code = code_for(browser, pairs(flow.params, API))
    r = redeem(browser, flow, code)
    assert r.status == 200, r.text
    assert r.json()["scope"].split() == ["read", "write"]
    assert claims_of(browser, r.json()["access_token"], API, clock.now)["aud"] == API


def test_a_resources_scope_is_refused_without_the_resource(browser: WSGIClient) -> None:
    """RFC 6749 §3.3 and RFC 8707: "write" is the API's scope, not the client's: asked for
    without the resource it is invalid_scope, as before resources."""
    flow = new_flow(CONFIDENTIAL, scope="openid write")
    r = browser.get("/authorize", params=flow.params)
    assert r.status == 302
    assert query_of(r.location)["error"] == "invalid_scope"


@pytest.mark.parametrize(
    "resource",
    ["https://unknown.example/", "https://api.example/v1#frag", "/relative/path", "api.example",
     "https://api.example/v1 https://mail.example/"],
)  # fmt: skip
def test_an_unknown_or_malformed_resource_is_invalid_target(
    browser: WSGIClient, resource: str
) -> None:
    """RFC 8707 §2: the resource "MUST be an absolute URI", "MUST NOT include a fragment",
    and one the server does not accept is answered with invalid_target, redirected to the
    client (RFC 6749 §4.1.2.1) with its state."""
    flow = new_flow(CONFIDENTIAL)
    r = browser.get("/authorize", params=pairs(flow.params, resource))
    assert r.status == 302, r.text
    query = query_of(r.location)
    assert query["error"] == "invalid_target", query
    assert query["state"] == flow.params["state"]


def test_a_resource_the_client_may_not_ask_for_is_invalid_target(
    server: codeflow.Server, browser: WSGIClient
) -> None:
    """RFC 8707 §2: a client that lists its resources (``resources``) is refused any other
    registered one with invalid_target, and gets the ones it lists."""
    server.update_client(CONFIDENTIAL, resources=[MAIL])
    flow = new_flow(CONFIDENTIAL, scope="read")
    r = browser.get("/authorize", params=pairs(flow.params, API))
    assert query_of(r.location)["error"] == "invalid_target"
    assert code_for(browser, pairs(new_flow(CONFIDENTIAL, scope="read").params, MAIL))


def test_consent_to_one_api_is_no_consent_to_another(browser: WSGIClient) -> None:
    """RFC 8707: a scope is the resource's: consent to "read" of one API does not let the
    app reach another API's "read" without asking (RFC 6819 §5.2.3.5 spirit)."""
    code_for(browser, pairs(new_flow(CONFIDENTIAL, scope="read").params, API))
    r = consent_for(browser, pairs(new_flow(CONFIDENTIAL, scope="read").params, API))
    assert r.status == 302, "the same API and scope again: remembered"
    r = consent_for(browser, pairs(new_flow(CONFIDENTIAL, scope="read").params, MAIL))
    assert is_consent_page(r), "another API with a scope of the same name: asked"


# -- Token endpoint: §2.2 ---------------------------------------------------------------


def test_several_resources_make_an_audience_of_several(
    browser: WSGIClient, clock: Clock
) -> None:
    """RFC 8707 §2.1: several resource parameters; RFC 9068 §3: aud is then an array."""
    flow = new_flow(CONFIDENTIAL, scope="read mail.read")
    code = code_for(browser, pairs(flow.params, API, MAIL))
    r = redeem(browser, flow, code)
    assert r.status == 200, r.text
    claims = claims_of(browser, r.json()["access_token"], API, clock.now)
    assert sorted(claims["aud"]) == sorted([API, MAIL])
    assert introspect(browser, r.json()["access_token"])["aud"] == [API, MAIL]


def test_the_token_request_may_name_one_of_the_authorized_resources(
    browser: WSGIClient, clock: Clock
) -> None:
    """RFC 8707 §2.2: at the token endpoint, resource picks the audience of this access
    token among the authorized ones; its scope keeps that API's scopes only."""
    flow = new_flow(CONFIDENTIAL, scope="openid write mail.read")
    code = code_for(browser, pairs(flow.params, API, MAIL))
    r = redeem(browser, flow, code, MAIL)
    assert r.status == 200, r.text
    claims = claims_of(browser, r.json()["access_token"], MAIL, clock.now)
    assert claims["aud"] == MAIL
    assert r.json()["scope"].split() == ["openid", "mail.read"]


def test_a_code_cannot_be_redeemed_for_a_resource_it_was_not_authorized_for(
    browser: WSGIClient,
) -> None:
    """RFC 8707 §2.2: a resource beyond the authorization is invalid_target; and the code
    is consumed first (RFC 6749 §4.1.2: single use), so it is gone."""
    flow = new_flow(CONFIDENTIAL, scope="read")
    code = code_for(browser, pairs(flow.params, API))
    r = redeem(browser, flow, code, MAIL)
    assert r.status == 400 and r.json()["error"] == "invalid_target", r.text
    assert redeem(browser, flow, code).json()["error"] == "invalid_grant"


def test_a_refresh_may_narrow_the_audience_and_never_widen_it(
    browser: WSGIClient, clock: Clock
) -> None:
    """RFC 8707 §2.2: with a refresh token, resource asks for an access token to some of
    the granted resources; one never granted is invalid_target; without resource, the
    refresh gives all of them again (the refresh token keeps the whole grant)."""
    flow = new_flow(CONFIDENTIAL, scope="offline_access read mail.read")
    code = code_for(browser, pairs(flow.params, API, MAIL))
    first = redeem(browser, flow, code).json()

    def refresh(token: str, *resources: str) -> Response:
        data = [("grant_type", "refresh_token"), ("refresh_token", token),
                *(("resource", r) for r in resources)]  # fmt: skip
        return token_request(browser, data)

    narrowed = refresh(first["refresh_token"], API)
    assert narrowed.status == 200, narrowed.text
    assert claims_of(browser, narrowed.json()["access_token"], API, clock.now)["aud"] == API
    assert narrowed.json()["scope"].split() == ["offline_access", "read"]
    wider = refresh(narrowed.json()["refresh_token"], API, OPAQUE)
    assert wider.status == 400 and wider.json()["error"] == "invalid_target", wider.text
    whole = refresh(narrowed.json()["refresh_token"])
    assert whole.status == 200, whole.text
    aud = claims_of(browser, whole.json()["access_token"], API, clock.now)["aud"]
    assert sorted(aud) == sorted([API, MAIL])


def test_a_grant_without_resources_cannot_gain_one_at_refresh(browser: WSGIClient) -> None:
    """RFC 8707 §2.2: a grant made without resource has none to narrow to: asking for one
    at refresh would widen it, invalid_target."""
    flow = new_flow(CONFIDENTIAL, scope="openid offline_access")
    first = redeem(browser, flow, code_for(browser, list(flow.params.items()))).json()
    r = token_request(browser, [("grant_type", "refresh_token"),
                                ("refresh_token", first["refresh_token"]), ("resource", API)])
    assert r.status == 400 and r.json()["error"] == "invalid_target", r.text


def test_client_credentials_with_a_resource(browser: WSGIClient, clock: Clock) -> None:
    """RFC 8707 §2.2 with RFC 6749 §4.4: aud is the resource; with no user to consent, the
    client's registered scopes cap the scope (the resource's among them by default)."""
    r = token_request(browser, [("grant_type", "client_credentials"), ("resource", API)],
                      SERVICE, SERVICE_SECRET)  # fmt: skip
    assert r.status == 200, r.text
    assert r.json()["scope"] == "read"
    claims = claims_of(browser, r.json()["access_token"], API, clock.now)
    assert claims["aud"] == API and claims["sub"] == SERVICE
    r = token_request(browser, [("grant_type", "client_credentials"), ("resource", API),
                                ("scope", "write")], SERVICE, SERVICE_SECRET)  # fmt: skip
    assert r.status == 400 and r.json()["error"] == "invalid_scope"
    r = token_request(browser, [("grant_type", "client_credentials"),
                                ("resource", "https://nowhere.example/")], SERVICE, SERVICE_SECRET)
    assert r.status == 400 and r.json()["error"] == "invalid_target"


def test_a_resource_chooses_opaque_tokens_and_their_lifetime(browser: WSGIClient) -> None:
    """The resource's registration: opaque access tokens with a lifetime of their own;
    RFC 7662 §2.2: introspection gives their aud."""
    flow = new_flow(CONFIDENTIAL, scope="invoices")
    body = redeem(browser, flow, code_for(browser, pairs(flow.params, OPAQUE))).json()
    assert body["access_token"].count(".") == 0 and body["expires_in"] == 300
    info = introspect(browser, body["access_token"])
    assert info["active"] and info["aud"] == OPAQUE and info["exp"] - info["iat"] == 300


def test_without_resource_nothing_changes(
    server: codeflow.Server, browser: WSGIClient, clock: Clock
) -> None:
    """Backwards compatible: without resource, the client's scopes and RFC 9068 §3's
    default audience, as before; introspection says so too."""
    server.update_client(CONFIDENTIAL, access_token_jwt=True)
    flow = new_flow(CONFIDENTIAL, scope="openid api:read")
    body = redeem(browser, flow, code_for(browser, list(flow.params.items()))).json()
    claims = claims_of(browser, body["access_token"], server.access_token_audience, clock.now)
    assert claims["aud"] == ISSUER
    assert introspect(browser, body["access_token"])["aud"] == ISSUER


# -- Introspection by a resource's own server: RFC 7662 §4 --------------------------------


def test_a_resources_server_introspects_only_its_tokens(
    server: codeflow.Server, browser: WSGIClient
) -> None:
    """RFC 7662 §4: the server "SHOULD require protected resources to be specifically
    authorized"; a token for another API is inactive to a resource's client (§2.2 "not
    allowed to introspect"), and with introspection off it may not call at all."""
    flow = new_flow(CONFIDENTIAL, scope="read mail.read")
    code = code_for(browser, pairs(flow.params, API, MAIL))
    both = redeem(browser, flow, code, API).json()["access_token"]
    flow = new_flow(CONFIDENTIAL, scope="mail.read")
    mail_only = redeem(browser, flow, code_for(browser, pairs(flow.params, MAIL))).json()
    assert introspect(browser, both, SERVICE, SERVICE_SECRET)["active"] is True
    assert introspect(browser, mail_only["access_token"], SERVICE, SERVICE_SECRET) == {
        "active": False
    }
    server.add_resource(API, scopes=["read", "write"], client_id=SERVICE, introspection=False)
    r = browser.post("/introspect", data={"token": both},
                     headers=basic(SERVICE, SERVICE_SECRET))  # fmt: skip
    assert r.status == 400 and r.json()["error"] == "unauthorized_client"


# -- Registration: Server, config file, CLI ---------------------------------------------


@pytest.mark.parametrize("uri", ["", "relative", "https://x.example/#f", "https://x.example/ a",
                                 "http://", "https://x.example:99999/"])  # fmt: skip
def test_add_resource_refuses_what_is_no_absolute_uri(uri: str) -> None:
    """RFC 8707 §2: "an absolute URI", "MUST NOT include a fragment component"."""
    with pytest.raises(ValueError, match="absolute URI"):
        codeflow.Server().add_resource(uri)


def test_resources_are_listed_and_removed(server: codeflow.Server, browser: WSGIClient) -> None:
    """Server.list_resources and remove_resource; a removed resource is unknown again."""
    assert [r.uri for r in server.list_resources()] == sorted([API, MAIL, OPAQUE])
    assert server.remove_resource(MAIL) is True and server.remove_resource(MAIL) is False
    flow = new_flow(CONFIDENTIAL, scope="read")
    r = browser.get("/authorize", params=pairs(flow.params, MAIL))
    assert query_of(r.location)["error"] == "invalid_target"


def test_config_file_declares_resources(tmp_path: Path) -> None:
    """[[resources]] in the config file (DESIGN: Config file), typed as the others are."""
    srv = codeflow.Server(issuer=ISSUER)
    codeflow.load_config(srv, {"resources": [
        {"uri": API, "scopes": ["read"], "name": "Example API", "access_token_lifetime": 600,
         "client_id": SERVICE, "introspection": False, "access_token_jwt": False}]})  # fmt: skip
    resource = srv.storage.get_resource(API)
    assert resource is not None
    assert (resource.scopes, resource.name, resource.access_token_lifetime, resource.client_id,
            resource.introspection, resource.access_token_jwt) == (
        ("read",), "Example API", 600, SERVICE, False, False)  # fmt: skip
    with pytest.raises(ValueError, match="access_token_lifetime must be a whole number"):
        codeflow.load_config(srv, {"resources": [{"uri": API, "access_token_lifetime": True}]})
    with pytest.raises(ValueError, match="absolute URI"):
        codeflow.load_config(srv, {"resources": [{"uri": "no-scheme"}]})


def test_cli_resource_add_list_remove(tmp_path: Path) -> None:
    """`codeflow resource add|list|remove` on a real SQLite file, in a subprocess."""
    from test_cli import codeflow_command

    db = f"sqlite:///{tmp_path / 'codeflow.db'}"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(codeflow_command(*args, "--storage", db), capture_output=True,  # noqa: S603
                              text=True, timeout=30, check=False)  # fmt: skip

    added = cli("resource", "add", API, "--scope", "read", "--scope", "write", "--name", "API",
                "--client", SERVICE, "--access-token-lifetime", "120")  # fmt: skip
    assert added.returncode == 0, added.stderr
    again = cli("resource", "add", API)
    assert again.returncode == 2 and "already exists" in again.stderr
    bad = cli("resource", "add", "https://x.example/#frag")
    assert bad.returncode == 2 and "absolute URI" in bad.stderr and "Traceback" not in bad.stderr
    listed = cli("resource", "list")
    assert listed.stdout.split("\t")[:4] == [API, "jwt", "API", "read write"]
    changed = cli("resource", "update", API, "--scope", "read", "--no-jwt-access-tokens",
                  "--client", "")  # fmt: skip
    assert changed.returncode == 0, changed.stderr
    assert cli("resource", "list").stdout.strip().split("\t") == [API, "opaque", "API", "read", "-"]
    nothing = cli("resource", "update", API)
    assert nothing.returncode == 2 and "nothing to change" in nothing.stderr
    assert cli("resource", "remove", API).returncode == 0
    assert cli("resource", "list").stdout == ""
    gone = cli("resource", "remove", API)
    assert gone.returncode == 2 and "no resource" in gone.stderr


def test_grants_list_shows_an_apis_scopes_with_its_uri(
    server: codeflow.Server, browser: WSGIClient, capsys: pytest.CaptureFixture[str]
) -> None:
    """`codeflow grants list`: consent to an API's scope is shown as scope@URI, so that one
    API's read is told apart from another's."""
    import argparse

    code_for(browser, pairs(new_flow(CONFIDENTIAL, scope="openid read").params, API))
    codeflow.grants_list(server, argparse.Namespace(user=None, client=None))
    fields = capsys.readouterr().out.split("\t")
    assert fields[:2] == [USERNAME, CONFIDENTIAL]
    assert fields[2].split(" ") == [API, "openid", f"read@{API}"]


def test_userinfo_refuses_a_token_for_a_resource(
    server: codeflow.Server, browser: WSGIClient
) -> None:
    """RFC 8707 §1: a token for a resource is for it alone: the API it was given to cannot
    read the user's claims at userinfo with it (RFC 6750 §3.1 invalid_token); a token
    without resource still works there (OIDC Core §5.3)."""
    flow = new_flow(CONFIDENTIAL, scope="openid profile read")
    body = redeem(browser, flow, code_for(browser, pairs(flow.params, API))).json()
    r = browser.get("/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert r.status == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    assert body["id_token"]  # the client has the user's claims there
    flow = new_flow(CONFIDENTIAL, scope="openid profile")
    body = redeem(browser, flow, code_for(browser, list(flow.params.items()))).json()
    r = browser.get("/userinfo", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert r.status == 200 and r.json()["name"] == "Alice"


def test_the_account_page_names_an_apis_scope_with_its_uri(server: codeflow.Server) -> None:
    """The connected apps of /account: consent to an API's scope reads "read at URI", not
    the stored item (RFC 8707: scopes are the resource's)."""
    from test_account import account, signed_in

    browser = signed_in(server)
    code_for(browser, pairs(new_flow(CONFIDENTIAL, scope="openid read").params, API))
    page = account(browser).text
    assert f"read at {API}" in page and f"{API} read" not in page


def test_several_resources_through_a_pushed_request(
    server: codeflow.Server, browser: WSGIClient
) -> None:
    """RFC 9126 §2.1 with RFC 8707 §2.1: the resource parameters of a pushed authorization
    request, several of them, make the audience as they would in the query."""
    server.auto_approve = USERNAME
    flow = new_flow(CONFIDENTIAL, scope="read mail.read")
    r = browser.post("/par", data=pairs(flow.params, API, MAIL),
                     headers=basic(CONFIDENTIAL, SECRET))  # fmt: skip
    assert r.status == 201, r.text
    r = browser.get("/authorize", params={"client_id": CONFIDENTIAL,
                                          "request_uri": r.json()["request_uri"]})  # fmt: skip
    token = redeem(browser, flow, query_of(r.location)["code"]).json()["access_token"]
    assert introspect(browser, token)["aud"] == [API, MAIL]
