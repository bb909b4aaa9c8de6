"""Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document; the MCP
authorization specification's "Client ID Metadata Documents"): a client_id that is an
https URL names the JSON document there, which the server fetches and checks.

Everything runs over real sockets: codeflow on 127.0.0.1, and document hosts on
127.0.0.1, well behaved or hostile, which the server may reach only because the tests
allow loopback explicitly (fetch_allowed_networks). Plain http on loopback stands in for
https here: the https path (certificate, SNI on the checked address) is tested in
test_outbound_fetch.py with a CA of the test's own, and the document's checks do not
depend on the scheme.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from conftest import (
    PASSWORD,
    USERNAME,
    form_fields,
    new_flow,
    query_of,
    share_session_keys,
)
from document_hosts import DocumentHost, document_host, drip, huge, json_body, redirect_to

import codeflow

LOOPBACK = ["127.0.0.0/8"]
REDIRECT = "http://127.0.0.1:9000/callback"


def get(url: str, **options: Any) -> requests.Response:
    return requests.get(url, timeout=10, **options)


def post(url: str, **options: Any) -> requests.Response:
    return requests.post(url, timeout=10, **options)


@pytest.fixture
def host() -> Iterator[DocumentHost]:
    with document_host() as running:
        yield running


def serve(**options: Any) -> Iterator[tuple[codeflow.Server, str]]:
    options = {"client_id_metadata_documents": True, "fetch_allowed_networks": LOOPBACK,
               **options}  # fmt: skip
    srv = share_session_keys(codeflow.Server(**options))
    with srv.running() as url:
        srv.add_user(USERNAME, PASSWORD)
        yield srv, url


@pytest.fixture
def live() -> Iterator[tuple[codeflow.Server, str]]:
    yield from serve()


def publish(host: DocumentHost, path: str = "/client.json", **members: Any) -> str:
    """Serve a client metadata document at ``path``; its URL is the client_id."""
    client_id = host.url(path)
    document = {
        "client_id": client_id,
        "client_name": "Doc App",
        "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        **members,
    }
    headers = document.pop("_headers", {})
    host.routes[path] = json_body({k: v for k, v in document.items() if v is not None},
                                  headers=headers)  # fmt: skip
    return client_id


def authorize_page(url: str, client_id: str, **overrides: str) -> requests.Response:
    flow = new_flow(client_id, redirect_uri=REDIRECT, **overrides)
    return get(url + "/authorize", params=flow.params, allow_redirects=False)


def assert_refused_page(r: requests.Response, words: str) -> None:
    """RFC 6749 §4.1.2.1: a client that cannot be trusted gets an error page, never a
    redirect; the page says why."""
    assert r.status_code == 400, r.text
    assert "Location" not in r.headers
    assert words in re.sub(r"\s+", " ", r.text), r.text


def sign_in(s: requests.Session, url: str, flow_params: dict[str, str]) -> requests.Response:
    """Authorize, then sign in; the answer to the authorization request after it."""
    r = s.get(url + "/authorize", params=flow_params, allow_redirects=False)
    assert 'action="login"' in r.text, r.text
    data = {**form_fields(r.text), "username": USERNAME, "password": PASSWORD}
    r = s.post(url + "/login", data=data, allow_redirects=False)
    assert r.status_code == 303, r.text
    return s.get(r.headers["Location"], allow_redirects=False)


def test_discovery_advertises_support_only_when_enabled(host: DocumentHost) -> None:
    """CIMD §5: "client_id_metadata_document_supported" in the authorization server's
    metadata (RFC 8414) when the server supports it; absent otherwise."""
    for enabled in (True, False):
        srv = codeflow.Server(client_id_metadata_documents=enabled)
        with srv.running() as url:
            meta = get(url + "/.well-known/oauth-authorization-server").json()
        assert meta.get("client_id_metadata_document_supported") is (True if enabled else None)


def test_full_code_flow_with_pkce(live: tuple[codeflow.Server, str], host: DocumentHost) -> None:
    """CIMD §4: the client's document is fetched when the client is named; the flow runs
    as for a registered public client (RFC 6749 §4.1, RFC 7636): consent, code, tokens
    with PKCE and no secret, a refresh, userinfo and introspection."""
    srv, url = live
    client_id = publish(host)
    flow = new_flow(client_id, redirect_uri=REDIRECT, scope="openid profile offline_access")
    s = requests.Session()
    r = sign_in(s, url, flow.params)
    page = re.sub(r"\s+", " ", r.text)
    # The consent page: the document's client_name, marked unverified, with where the
    # document is and which host receives the answer.
    assert 'action="consent"' in page
    assert "<strong>Doc App</strong> asks to" in page
    assert "Unverified app." in page
    assert f"a document at <strong>127.0.0.1:{host.port}</strong>" in page
    assert "Your answer goes to <strong>127.0.0.1:9000</strong>" in page
    r = s.post(url + "/consent", data={**form_fields(r.text), "decision": "approve"},
               allow_redirects=False)  # fmt: skip
    assert r.status_code == 303, r.text
    callback = query_of(r.headers["Location"])
    assert r.headers["Location"].startswith(REDIRECT)
    assert callback["state"] == flow.params["state"]
    tokens = post(url + "/token", data={
        "grant_type": "authorization_code", "code": callback["code"], "client_id": client_id,
        "redirect_uri": REDIRECT, "code_verifier": flow.verifier,
    }).json()  # fmt: skip
    assert tokens["token_type"] == "Bearer", tokens
    refreshed = post(url + "/token", data={
        "grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
        "client_id": client_id,
    }).json()  # fmt: skip
    assert "access_token" in refreshed, refreshed
    bearer = {"Authorization": f"Bearer {refreshed['access_token']}"}
    info = get(url + "/userinfo", headers=bearer)
    assert info.status_code == 200 and info.json()["sub"] == USERNAME
    srv.add_client("api", client_secret="api-secret")
    active = post(url + "/introspect", data={"token": refreshed["access_token"]},
                           auth=("api", "api-secret")).json()  # fmt: skip
    assert active["active"] is True and active["client_id"] == client_id
    # Nothing of the client was stored: the document is its registration.
    assert srv.storage.get_client(client_id) is None


def test_secret_refused_at_the_token_endpoint(
    live: tuple[codeflow.Server, str], host: DocumentHost
) -> None:
    """CIMD §4.1: a document client shares no secret; one sent is refused (RFC 6749 §5.2)."""
    _, url = live
    client_id = publish(host)
    r = post(url + "/token", data={"grant_type": "authorization_code", "code": "x"},
                      auth=(client_id, "a-secret"))  # fmt: skip
    assert (r.status_code, r.json()["error"]) == (401, "invalid_client")


def test_loopback_redirect_any_port_for_native_clients(host: DocumentHost) -> None:
    """RFC 8252 §7.3: a loopback redirect URI listed without a port matches any port."""
    for _, url in serve(auto_approve=USERNAME):
        client_id = publish(host, redirect_uris=["http://127.0.0.1/callback"],
                            application_type="native")  # fmt: skip
        flow = new_flow(client_id, redirect_uri="http://127.0.0.1:51234/callback")
        r = get(url + "/authorize", params=flow.params, allow_redirects=False)
        assert r.status_code == 302, r.text
        assert r.headers["Location"].startswith("http://127.0.0.1:51234/callback?code=")
        flow = new_flow(client_id, redirect_uri="http://127.0.0.1:51234/other")
        assert_refused_page(get(url + "/authorize", params=flow.params,
                                         allow_redirects=False), "not registered")  # fmt: skip


def test_consent_for_a_loopback_redirect_is_asked_every_time(
    live: tuple[codeflow.Server, str], host: DocumentHost
) -> None:
    """RFC 8252 §8.6: a consent given to a public client whose answer goes to loopback is
    not reused: any local process could claim to be it."""
    _, url = live
    client_id = publish(host)
    s = requests.Session()
    flow = new_flow(client_id, redirect_uri=REDIRECT)
    r = sign_in(s, url, flow.params)
    r = s.post(url + "/consent", data={**form_fields(r.text), "decision": "approve"},
               allow_redirects=False)  # fmt: skip
    assert "code" in query_of(r.headers["Location"])
    r = s.get(url + "/authorize", params=new_flow(client_id, redirect_uri=REDIRECT).params,
              allow_redirects=False)  # fmt: skip
    assert 'action="consent"' in r.text and "Unverified app." in r.text


@pytest.mark.parametrize(
    ("members", "words"),
    [
        ({"client_id": "https://elsewhere.example/client.json"}, "client_id is not its own URL"),
        ({"client_secret": "s3cret"}, "may not carry client_secret"),
        ({"client_secret_expires_at": 0}, "may not carry client_secret_expires_at"),
        ({"token_endpoint_auth_method": "client_secret_basic"}, "must be none"),
        ({"token_endpoint_auth_method": "client_secret_post"}, "must be none"),
        ({"redirect_uris": ["https://other.example/cb"]}, "not registered for this client"),
        ({"redirect_uris": ["javascript:alert(1)"]}, "not allowed"),
        ({"redirect_uris": "http://127.0.0.1:9000/callback"}, "must be an array"),
        ({"grant_types": ["client_credentials"]}, "grant_types may list only"),
        ({"response_types": ["token"]}, "response_types may only be code"),
        ({"jwks_uri": "https://keys.example/jwks"}, "jwks_uri"),
        ({"client_name": "Evil\u202eppA"}, "client_name must be a printable string"),
    ],
)
def test_unacceptable_documents_refused(
    live: tuple[codeflow.Server, str], host: DocumentHost, members: dict[str, Any], words: str
) -> None:
    """CIMD §4.1 (client_id equals the URL; no shared secret), RFC 7591 §2 (the metadata),
    RFC 6749 §3.1.2.3 (the redirect URI must be registered): each refused with a page
    that says why, never a redirect."""
    _, url = live
    client_id = publish(host, **members)
    assert_refused_page(authorize_page(url, client_id), words)


def test_document_that_is_not_an_object_refused(
    live: tuple[codeflow.Server, str], host: DocumentHost
) -> None:
    _, url = live
    host.routes["/list.json"] = json_body([1, 2, 3])
    assert_refused_page(authorize_page(url, host.url("/list.json")), "not a JSON object")


@pytest.mark.parametrize(
    ("path", "words"),
    [("/", "must have a path"), ("/a/../client.json", ". or .. path segments"),
     ("/client.json#frag", "fragment")],
)  # fmt: skip
def test_client_id_urls_checked(
    live: tuple[codeflow.Server, str], host: DocumentHost, path: str, words: str
) -> None:
    """CIMD §3: the client_id URL has a path, no dot segments, no fragment."""
    _, url = live
    assert_refused_page(authorize_page(url, host.url(path)), words)
    assert host.hits == {}


def test_redirect_loop_host_refused(live: tuple[codeflow.Server, str], host: DocumentHost) -> None:
    """A document host that redirects (to itself, forever) is asked once and refused."""
    _, url = live
    host.routes["/loop.json"] = redirect_to(host.url("/loop.json"))
    assert_refused_page(authorize_page(url, host.url("/loop.json")), "redirects are not followed")
    assert host.hits == {"/loop.json": 1}


def test_ten_megabyte_document_refused(
    live: tuple[codeflow.Server, str], host: DocumentHost
) -> None:
    _, url = live
    host.routes["/big.json"] = huge(10 * 1024 * 1024, declare_length=False)
    words = f"larger than {codeflow.CLIENT_METADATA_MAX_BYTES} bytes"
    assert_refused_page(authorize_page(url, host.url("/big.json")), words)


def test_slow_document_host_cut_off(
    live: tuple[codeflow.Server, str], host: DocumentHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host that drips its answer a byte at a time is cut off at the fetch deadline, and
    the user gets an error page rather than a hung request."""
    _, url = live
    monkeypatch.setattr(codeflow, "FETCH_TIMEOUT", 1.0)
    host.routes["/slow.json"] = drip(in_headers=False)
    started = time.monotonic()
    assert_refused_page(authorize_page(url, host.url("/slow.json")), "did not answer within 1")
    assert time.monotonic() - started < 3


def test_document_on_a_private_address_refused_without_the_allowance(host: DocumentHost) -> None:
    """SSRF: without an explicit allowance, a document host whose name resolves to a
    loopback address (``localhost``) is refused after resolution, and never contacted."""
    for _, url in serve(fetch_allowed_networks=()):
        client_id = publish(host, "/client.json")
        named = client_id.replace("127.0.0.1", "localhost")
        assert_refused_page(authorize_page(url, named), "resolves to an address that is not public")
    assert host.hits == {}


def test_trusted_hosts_allowlist(host: DocumentHost) -> None:
    """client_id_metadata_hosts: only documents from these hosts are fetched."""
    for _, url in serve(client_id_metadata_hosts=["clients.example.com"]):
        client_id = publish(host)
        assert_refused_page(authorize_page(url, client_id), "not one of the hosts")
    assert host.hits == {}
    for _, url in serve(client_id_metadata_hosts=["127.0.0.1"], auto_approve=USERNAME):
        assert authorize_page(url, publish(host)).status_code == 302


def test_disabled_by_default(host: DocumentHost) -> None:
    """Off unless the operator enables it: a URL client_id is just an unknown client, and
    nothing is fetched."""
    srv = share_session_keys(codeflow.Server(fetch_allowed_networks=LOOPBACK))
    with srv.running() as url:
        assert_refused_page(authorize_page(url, publish(host)), "not a registered client")
    assert host.hits == {}


def test_document_gone_refused_at_the_token_endpoint(host: DocumentHost) -> None:
    """RFC 6749 §5.2 invalid_client, with the reason, when the document can no longer be
    fetched (no-store: fetched for each request)."""
    for _, url in serve(auto_approve=USERNAME):
        client_id = publish(host, _headers={"Cache-Control": "no-store"})
        flow = new_flow(client_id, redirect_uri=REDIRECT)
        r = get(url + "/authorize", params=flow.params, allow_redirects=False)
        code = query_of(r.headers["Location"])["code"]
        del host.routes["/client.json"]
        r = post(url + "/token", data={
            "grant_type": "authorization_code", "code": code, "client_id": client_id,
            "redirect_uri": REDIRECT, "code_verifier": flow.verifier,
        })  # fmt: skip
        assert (r.status_code, r.json()["error"]) == (401, "invalid_client")
        assert "HTTP 404" in r.json()["error_description"]


def test_registered_client_wins_over_a_document(host: DocumentHost) -> None:
    """A client the operator registered under a URL client_id is that client: no fetch."""
    for srv, url in serve(auto_approve=USERNAME):
        client_id = host.url("/client.json")
        srv.add_client(client_id, redirect_uris=[REDIRECT])
        assert authorize_page(url, client_id).status_code == 302
    assert host.hits == {}


def test_fixture_enables_self_registration_in_one_line(
    codeflow_factory: Any, host: DocumentHost
) -> None:
    """The pytest plugin: ``codeflow_factory(live=True, self_registration=True)`` accepts
    documents served on 127.0.0.1 and RFC 7591 registration, for MCP client authors."""
    live = codeflow_factory(live=True, self_registration=True, auto_approve="alice")
    meta = get(live.url + "/.well-known/oauth-authorization-server").json()
    assert meta["client_id_metadata_document_supported"] is True
    assert meta["registration_endpoint"] == live.url + "/register"
    r = authorize_page(live.url, publish(host))
    assert r.status_code == 302 and "code=" in r.headers["Location"], r.text
    assert post(live.url + "/register", json={"redirect_uris": [REDIRECT],
                                              "token_endpoint_auth_method": "none"}).ok


def test_browser_client_reads_the_token_answer_cors(host: DocumentHost) -> None:
    """Fetch §3.2.3: a browser app identified by its document (a public client) may read
    the token answer from the origin of its redirect URIs, as a registered one may."""
    for _, url in serve(auto_approve=USERNAME):
        client_id = publish(host, redirect_uris=["http://127.0.0.1:5173/callback"])
        flow = new_flow(client_id, redirect_uri="http://127.0.0.1:5173/callback")
        r = get(url + "/authorize", params=flow.params, allow_redirects=False)
        code = query_of(r.headers["Location"])["code"]
        r = post(url + "/token", data={
            "grant_type": "authorization_code", "code": code, "client_id": client_id,
            "redirect_uri": "http://127.0.0.1:5173/callback", "code_verifier": flow.verifier,
        }, headers={"Origin": "http://127.0.0.1:5173"})  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.headers["Access-Control-Allow-Origin"] == "http://127.0.0.1:5173"
        r = post(url + "/token", data={"grant_type": "refresh_token", "refresh_token": "x",
                                       "client_id": client_id},
                 headers={"Origin": "https://evil.example"})  # fmt: skip
        assert "Access-Control-Allow-Origin" not in r.headers


def test_a_document_that_changes_its_redirect_uris_asks_for_consent_again(
    live: tuple[codeflow.Server, str], host: DocumentHost
) -> None:
    """RFC 8252 §8.6, RFC 6819 §5.2.3.5: a consent answers later requests without a page
    only while the redirect URI proves which client asks. A document's host may change it
    at any time (a compromised host too): a consent given while it listed
    https://app.example/cb was reused once it also listed https://evil.example/cb, and
    with prompt=none the user's code went there, redeemable with a PKCE pair of the
    attacker's. Consent is now bound to the redirect URIs the document listed when the
    user consented (consent_binding): a changed list asks again, an unchanged one does
    not."""
    _, url = live
    app = "https://app.example/cb"
    no_store = {"Cache-Control": "no-store"}
    client_id = publish(host, redirect_uris=[app], _headers=no_store)
    s = requests.Session()
    r = sign_in(s, url, new_flow(client_id, redirect_uri=app).params)
    r = s.post(url + "/consent", data={**form_fields(r.text), "decision": "approve"},
               allow_redirects=False)  # fmt: skip
    assert r.headers["Location"].startswith(app + "?code=")

    def silent(redirect_uri: str) -> str:
        flow = new_flow(client_id, redirect_uri=redirect_uri, prompt="none")
        r = s.get(url + "/authorize", params=flow.params, allow_redirects=False)
        return r.headers.get("Location", "") or r.text

    assert silent(app).startswith(app + "?code=")  # remembered
    publish(host, redirect_uris=[app, "https://evil.example/cb"], _headers=no_store)
    answer = silent("https://evil.example/cb")
    assert "code=" not in answer and "consent_required" in answer, answer[:300]
    assert "code=" not in silent(app)
    publish(host, redirect_uris=[app], _headers=no_store)  # as it was consented to
    assert silent(app).startswith(app + "?code=")
