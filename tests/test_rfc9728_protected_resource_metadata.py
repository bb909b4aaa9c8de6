"""The SDK and protected resources: RFC 9728 protected-resource metadata, RFC 8707
resource indicators, RFC 6750 §3 challenges.

``BearerValidator(resource=...)`` accepts only tokens whose ``aud`` names its resource
(JWT or introspected), its helpers serve ``/.well-known/oauth-protected-resource[/path]``
and point to it from every 401 (RFC 9728 §5.1); ``Client`` sends ``resource`` and finds
the authorization server from a resource's metadata, refusing metadata about another
resource (RFC 9728 §3.3).

Everything runs over real HTTP on 127.0.0.1: codeflow, and the APIs (WSGI apps behind
``require_bearer``) on sockets of their own.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import bottle
import jwt
import pytest
import requests
from codeflow_sdk import (
    BearerValidator,
    BottleBearer,
    Client,
    DiscoveryError,
    LoginState,
    require_bearer,
    resource_metadata,
)
from codeflow_sdk._wire import resource_metadata_url
from sdk_support import (
    CONFIDENTIAL,
    INTROSPECTOR,
    INTROSPECTOR_SECRET,
    REDIRECT,
    SECRET,
    IdP,
    follow,
    free_port,
    serving,
)

pytestmark = pytest.mark.http

WELL_KNOWN = "/.well-known/oauth-protected-resource"


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    token = environ["codeflow.token"]
    body = json.dumps({"sub": token.sub, "scopes": list(token.scopes)}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


@contextlib.contextmanager
def api(idp: IdP, path: str = "/api", *, scope: str = "notes:read", jwt_tokens: bool = True,
        introspect: bool = False) -> Iterator[tuple[str, BearerValidator]]:  # fmt: skip
    """An API on its own socket, registered with codeflow as a resource (its URL), behind
    require_bearer with a validator that knows that URL; yields (resource, validator)."""
    port = free_port()
    resource = f"http://127.0.0.1:{port}{path}"
    idp.srv.add_resource(resource, scopes=["notes:read", "notes:write"], name="Notes",
                         access_token_jwt=jwt_tokens)  # fmt: skip
    creds = {"introspection_client_id": INTROSPECTOR,
             "introspection_client_secret": INTROSPECTOR_SECRET} if introspect else {}  # fmt: skip
    scopes = ["notes:read", "notes:write"]
    validator = BearerValidator(idp.url, resource=resource, resource_name="Notes",
                                scopes_supported=scopes, **creds)  # fmt: skip
    with serving(require_bearer(hello, validator, scope), port):
        yield resource, validator


def login(client: Client, scope: str = "notes:read", **options: Any):
    url, record = client.start_login(scope, **options)
    return client.finish_login(follow(url), record), url


def call(resource: str, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(resource, headers=headers, timeout=10)


# -- The metadata: RFC 9728 §2, §3 --------------------------------------------------------


def test_metadata_url_inserts_the_well_known_suffix() -> None:
    """RFC 9728 §3.1: the suffix goes "between the host component and the path and/or
    query components"; a terminating slash after the host is removed."""
    assert resource_metadata_url("https://api.example/") == f"https://api.example{WELL_KNOWN}"
    assert resource_metadata_url("https://api.example") == f"https://api.example{WELL_KNOWN}"
    assert resource_metadata_url("https://api.example:8443/v1/mcp?t=1") == (
        f"https://api.example:8443{WELL_KNOWN}/v1/mcp?t=1"
    )
    with pytest.raises(ValueError):
        resource_metadata_url("https://api.example/#frag")


def test_the_api_serves_its_metadata_without_a_token(idp: IdP) -> None:
    """RFC 9728 §2: resource (REQUIRED), authorization_servers, scopes_supported,
    bearer_methods_supported; §3.2: 200 application/json; public (no token)."""
    with api(idp, "/v1/notes") as (resource, _):
        port = resource.split(":")[2].split("/")[0]
        r = requests.get(f"http://127.0.0.1:{port}{WELL_KNOWN}/v1/notes", timeout=10)
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "application/json"
        assert r.headers["Access-Control-Allow-Origin"] == "*"
        assert r.json() == {
            "resource": resource,
            "authorization_servers": [idp.url],
            "scopes_supported": ["notes:read", "notes:write"],
            "bearer_methods_supported": ["header"],
            "resource_name": "Notes",
        }
        r = requests.post(f"http://127.0.0.1:{port}{WELL_KNOWN}/v1/notes", timeout=10)
        assert r.status_code == 405


def test_401_points_to_the_metadata_and_403_names_the_scope(idp: IdP) -> None:
    """RFC 9728 §5.1: WWW-Authenticate carries resource_metadata; RFC 6750 §3.1: without a
    token no error code (the scope needed, RFC 6750 §3's scope attribute), and for too
    small a scope 403 with error="insufficient_scope" and the scope needed."""
    with api(idp, scope="notes:write") as (resource, validator):
        r = call(resource)
        assert r.status_code == 401
        challenge = r.headers["WWW-Authenticate"]
        assert f'resource_metadata="{validator.metadata_url}"' in challenge
        assert "error=" not in challenge and 'scope="notes:write"' in challenge
        client = Client.for_resource(resource, CONFIDENTIAL, SECRET, REDIRECT)
        tokens, _ = login(client, "notes:read")
        r = call(resource, tokens.access_token)
        assert r.status_code == 403
        challenge = r.headers["WWW-Authenticate"]
        assert 'error="insufficient_scope"' in challenge and 'scope="notes:write"' in challenge
        assert f'resource_metadata="{validator.metadata_url}"' in challenge


def test_bottle_plugin_serves_the_metadata(idp: IdP) -> None:
    """RFC 9728 §3 through BottleBearer: installing it adds the metadata route."""
    port = free_port()
    resource = f"http://127.0.0.1:{port}/"
    validator = BearerValidator(idp.url, resource=resource, scopes_supported="notes:read")
    app = bottle.Bottle()
    app.install(BottleBearer(validator))
    app.route("/", "GET", lambda: {"ok": True})
    with serving(app, port) as base:
        r = requests.get(base + WELL_KNOWN, timeout=10)
        assert r.status_code == 200 and r.json()["resource"] == resource
        assert r.json()["scopes_supported"] == ["notes:read"]
        r = requests.get(base + "/", timeout=10)
        assert r.status_code == 401 and "resource_metadata=" in r.headers["WWW-Authenticate"]


# -- The client: RFC 8707 resource, RFC 9728 discovery ---------------------------------------


def test_client_finds_the_server_from_the_resource_and_sends_resource(idp: IdP) -> None:
    """RFC 9728 §3: the client reads authorization_servers from the resource's metadata;
    RFC 8707 §2.1-2.2: it names the resource at both endpoints, and the token's aud is
    the resource, which the API accepts (RFC 9068 §4)."""
    with api(idp) as (resource, _):
        client = Client.for_resource(resource, CONFIDENTIAL, SECRET, REDIRECT)
        assert client.issuer == idp.url
        tokens, url = login(client)
        query = urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query)
        assert ("resource", resource) in query
        assert jwt.decode(tokens.access_token, options={"verify_signature": False})["aud"] == (
            resource
        )
        r = call(resource, tokens.access_token)
        assert r.status_code == 200, r.text
        assert r.json() == {"sub": "alice", "scopes": ["notes:read"]}


def test_a_token_for_one_api_is_refused_by_another(idp: IdP) -> None:
    """RFC 9068 §4: "The JWT access token MUST be rejected if aud does not contain a
    resource indicator of the current resource server"; RFC 8707 §1: a token requested
    for one resource is not usable at another. Both APIs are registered with codeflow and
    share the scope name."""
    with api(idp, "/a") as (api_a, _), api(idp, "/b") as (api_b, _):
        tokens, _ = login(Client.for_resource(api_a, CONFIDENTIAL, SECRET, REDIRECT))
        assert call(api_a, tokens.access_token).status_code == 200
        r = call(api_b, tokens.access_token)
        assert r.status_code == 401
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]


def test_an_introspected_token_for_another_api_is_refused(idp: IdP) -> None:
    """RFC 7662 §2.2 aud with RFC 8707: an opaque token for API A, introspected by API B's
    validator, names A and not B: refused; A's own validator accepts it."""
    with api(idp, "/a", jwt_tokens=False, introspect=True) as (api_a, _), \
            api(idp, "/b", jwt_tokens=False, introspect=True) as (api_b, _):  # fmt: skip
        tokens, _ = login(Client.for_resource(api_a, CONFIDENTIAL, SECRET, REDIRECT))
        assert tokens.access_token.count(".") == 0  # opaque: introspected
        assert call(api_a, tokens.access_token).status_code == 200
        assert call(api_b, tokens.access_token).status_code == 401


def test_refresh_and_client_credentials_send_resource(idp: IdP) -> None:
    """RFC 8707 §2.2: the client names the resource at refresh and client_credentials."""
    with api(idp) as (resource, _):
        client = Client.for_resource(resource, CONFIDENTIAL, SECRET, REDIRECT)
        tokens, _ = login(client, "offline_access notes:read")
        assert tokens.refresh_token
        refreshed = client.refresh(tokens.refresh_token)
        assert call(resource, refreshed.access_token).status_code == 200
        idp.srv.update_client(CONFIDENTIAL, scopes=["openid", "notes:read"])
        machine = client.client_credentials("notes:read")
        claims = jwt.decode(machine.access_token, options={"verify_signature": False})
        assert claims["aud"] == resource and claims["sub"] == CONFIDENTIAL


def test_metadata_about_another_resource_is_not_used(idp: IdP) -> None:
    """RFC 9728 §3.3: "If these values are not identical, the data contained in the
    response MUST NOT be used": a host answering for another resource (or not at all)
    gives DiscoveryError, and no Client."""
    def impostor(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        body = json.dumps({"resource": "https://elsewhere.example/",
                           "authorization_servers": ["https://evil.example"]}).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    with serving(impostor) as base:
        with pytest.raises(DiscoveryError, match="not used"):
            Client.for_resource(base + "/api", CONFIDENTIAL, SECRET, REDIRECT)
        with pytest.raises(DiscoveryError, match="not used"):
            resource_metadata(base + "/api", metadata_url=base + WELL_KNOWN + "/api")
    with serving(bottle.Bottle()) as base, pytest.raises(DiscoveryError, match="404"):
        resource_metadata(base + "/api")


def test_a_login_state_kept_before_resources_still_reads() -> None:
    """LoginState.from_dict reads a dict an older SDK wrote (no resource)."""
    old = {"state": "s", "nonce": None, "code_verifier": "v" * 43,
           "redirect_uri": REDIRECT, "scope": "openid", "max_age": None}  # fmt: skip
    assert LoginState.from_dict(old).resource == ""


def test_a_client_that_pins_its_server_refuses_a_resource_naming_another(idp: IdP) -> None:
    """RFC 9728 §7 (security considerations): with ``issuer``, the resource must name
    that server; the pinned one is used, another one refused."""
    with api(idp) as (resource, _):
        assert Client.for_resource(resource, CONFIDENTIAL, SECRET, REDIRECT,
                                   issuer=idp.url).issuer == idp.url  # fmt: skip
        with pytest.raises(DiscoveryError, match="does not name"):
            Client.for_resource(resource, CONFIDENTIAL, SECRET, REDIRECT,
                                issuer="https://trusted.example")  # fmt: skip
