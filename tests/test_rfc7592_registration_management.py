"""Dynamic Client Registration Management: RFC 7592 §2.1 (read), §2.2 (update), §2.3
(delete), with the registration access token of RFC 7592 §3, in-process through WSGI."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from conftest import USERNAME, Clock, share_session_keys
from wsgi_client import Response, WSGIClient, basic

import codeflow

ISSUER = "http://127.0.0.1:8000"
WEB = {
    "client_name": "Web App",
    "redirect_uris": ["https://app.example/cb"],
    "token_endpoint_auth_method": "client_secret_basic",
    "grant_types": ["authorization_code", "refresh_token"],
}


@pytest.fixture
def srv(clock: Clock) -> codeflow.Server:
    srv = share_session_keys(codeflow.Server(issuer=ISSUER, clock=clock, registration="open"))
    srv.add_user(USERNAME)
    return srv


@pytest.fixture
def wc(srv: codeflow.Server) -> WSGIClient:
    return WSGIClient(srv.wsgi)


def send(wc: WSGIClient, method: str, path: str, token: str | None,
         metadata: Any = None) -> Response:  # fmt: skip
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = b""
    if metadata is not None:
        body = json.dumps(metadata).encode()
        headers["Content-Type"] = "application/json"
    return wc.request(method, path, headers=headers, body=body)


@pytest.fixture
def registered(wc: WSGIClient) -> dict[str, Any]:
    r = send(wc, "POST", "/register", None, WEB)
    assert r.status == 201, r.text
    body = r.json()
    body["path"] = urlpath(body["registration_client_uri"])
    return body


def urlpath(uri: str) -> str:
    assert uri.startswith(ISSUER)
    return uri[len(ISSUER):]


def test_read(wc: WSGIClient, registered: dict[str, Any]) -> None:
    """RFC 7592 §2.1: GET on the registration_client_uri with the registration access
    token answers the client's current configuration (the secret is not shown again:
    only its hash is kept)."""
    r = send(wc, "GET", registered["path"], registered["registration_access_token"])
    assert r.status == 200, r.text
    body = r.json()
    assert body["client_id"] == registered["client_id"]
    assert body["client_name"] == "Web App"
    assert body["redirect_uris"] == WEB["redirect_uris"]
    assert body["registration_client_uri"] == registered["registration_client_uri"]
    assert "client_secret" not in body and body["client_secret_expires_at"] == 0
    assert r.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_wrong_or_missing_token_is_401(
    srv: codeflow.Server, wc: WSGIClient, registered: dict[str, Any], method: str
) -> None:
    """RFC 7592 §2: "If the registration access token used to make this request is not
    valid, the server MUST respond with an error as described in [RFC6750]": 401 with
    WWW-Authenticate: Bearer. Nothing changes."""
    metadata = {**WEB, "client_id": registered["client_id"]} if method == "PUT" else None
    for token in (None, "wrong", registered["client_secret"]):
        r = send(wc, method, registered["path"], token, metadata)
        assert r.status == 401, r.text
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert srv.storage.get_client(registered["client_id"]) is not None


def test_token_of_another_client_refused(wc: WSGIClient, registered: dict[str, Any]) -> None:
    other = send(wc, "POST", "/register", None, WEB).json()
    r = send(wc, "GET", registered["path"], other["registration_access_token"])
    assert r.status == 401


def test_unknown_client_is_401_like_a_wrong_token(
    wc: WSGIClient, registered: dict[str, Any]
) -> None:
    """RFC 7592 §2.1: "If the client does not exist on this server, the server MUST
    respond with HTTP 401 Unauthorized"."""
    r = send(wc, "GET", "/register/dcr_nobody", registered["registration_access_token"])
    assert r.status == 401 and r.json()["error"] == "invalid_token"


def test_operator_clients_cannot_be_managed(srv: codeflow.Server, wc: WSGIClient) -> None:
    """A client the operator added has no registration access token: nothing opens it."""
    srv.add_client("operator-app", client_secret="s", redirect_uris=["https://op.example/cb"])
    assert send(wc, "GET", "/register/operator-app", "anything").status == 401
    assert send(wc, "DELETE", "/register/operator-app", "anything").status == 401


def test_update_replaces_the_metadata(
    srv: codeflow.Server, wc: WSGIClient, registered: dict[str, Any], clock: Clock
) -> None:
    """RFC 7592 §2.2: PUT replaces the whole registration: "Omitted fields MUST be treated
    as null or empty values"; the client_id, its secret and its issued-at stay."""
    clock.advance(60)
    new = {"client_id": registered["client_id"], "redirect_uris": ["https://app.example/new"],
           "client_name": "Renamed", "grant_types": ["authorization_code"]}  # fmt: skip
    r = send(wc, "PUT", registered["path"], registered["registration_access_token"], new)
    assert r.status == 200, r.text
    body = r.json()
    assert body["client_name"] == "Renamed"
    assert body["redirect_uris"] == ["https://app.example/new"]
    assert body["grant_types"] == ["authorization_code"]
    assert body["client_id_issued_at"] == registered["client_id_issued_at"]
    assert "client_secret" not in body  # the same secret, not shown again
    stored = srv.storage.get_client(registered["client_id"])
    assert stored is not None and stored.redirect_uris == ("https://app.example/new",)
    assert codeflow.verify_password(registered["client_secret"], stored.secret_hash or "")


def test_update_to_public_drops_the_secret_and_back_issues_a_new_one(
    srv: codeflow.Server, wc: WSGIClient, registered: dict[str, Any]
) -> None:
    token, path, client_id = (registered["registration_access_token"], registered["path"],
                              registered["client_id"])  # fmt: skip
    public = {**WEB, "client_id": client_id, "token_endpoint_auth_method": "none"}
    assert send(wc, "PUT", path, token, public).status == 200
    assert srv.storage.get_client(client_id).public  # type: ignore[union-attr]
    body = send(wc, "PUT", path, token, {**WEB, "client_id": client_id}).json()
    assert body["client_secret"] and body["client_secret"] != registered["client_secret"]
    stored = srv.storage.get_client(client_id)
    assert stored is not None and codeflow.verify_password(body["client_secret"],
                                                           stored.secret_hash or "")  # fmt: skip


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({"client_id": "dcr_other"}, "invalid_request", "client_id"),
        ({"client_id": None}, "invalid_request", "client_id"),
        ({"registration_access_token": "x"}, "invalid_request", "registration_access_token"),
        ({"client_secret": "not-the-secret"}, "invalid_request", "client_secret"),
        ({"redirect_uris": ["http://evil.example/cb"]}, "invalid_redirect_uri", "https"),
        ({"grant_types": ["implicit"]}, "invalid_client_metadata", "grant_types"),
    ],
)
def test_bad_updates_refused(
    srv: codeflow.Server, wc: WSGIClient, registered: dict[str, Any], change: dict[str, Any],
    error: str, words: str,
) -> None:  # fmt: skip
    """RFC 7592 §2.2: the request's client_id must be the client's, a client_secret sent
    must be its current one, the server-set fields may not be sent; the metadata is
    checked as at registration (RFC 7591 §3.2.2 errors). Nothing changes."""
    metadata = {**WEB, "client_id": registered["client_id"], **change}
    metadata = {k: v for k, v in metadata.items() if v is not None}
    r = send(wc, "PUT", registered["path"], registered["registration_access_token"], metadata)
    assert (r.status, r.json()["error"]) == (400, error), r.text
    assert words in r.json()["error_description"]
    stored = srv.storage.get_client(registered["client_id"])
    assert stored is not None and stored.redirect_uris == tuple(WEB["redirect_uris"])


def test_update_with_the_current_secret_accepted(
    wc: WSGIClient, registered: dict[str, Any]
) -> None:
    metadata = {**WEB, "client_id": registered["client_id"],
                "client_secret": registered["client_secret"]}  # fmt: skip
    r = send(wc, "PUT", registered["path"], registered["registration_access_token"], metadata)
    assert r.status == 200, r.text


def test_delete_removes_the_client_and_its_grants(
    srv: codeflow.Server, wc: WSGIClient, registered: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """RFC 7592 §2.3: DELETE answers 204 No Content; the client, its tokens and its
    registration access token stop working at once."""
    client_id = registered["client_id"]
    tokens = srv.issue_tokens(USERNAME, client_id, "openid offline_access")
    with caplog.at_level(logging.INFO, logger="codeflow.audit"):
        r = send(wc, "DELETE", registered["path"], registered["registration_access_token"])
    assert r.status == 204 and r.body == b""
    assert srv.storage.get_client(client_id) is None
    assert "client.registration_deleted" in caplog.text
    gone = send(wc, "GET", registered["path"], registered["registration_access_token"])
    assert gone.status == 401
    r = wc.post("/token", {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
                headers=basic(client_id, registered["client_secret"]))  # fmt: skip
    assert r.status == 401 and r.json()["error"] == "invalid_client"


def test_update_audited(wc: WSGIClient, registered: dict[str, Any],
                        caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    with caplog.at_level(logging.INFO, logger="codeflow.audit"):
        send(wc, "PUT", registered["path"], registered["registration_access_token"],
             {**WEB, "client_id": registered["client_id"]})  # fmt: skip
    assert "client.registration_changed" in caplog.text
    assert registered["registration_access_token"] not in caplog.text


@pytest.mark.parametrize("method", ["PUT", "POST"])
def test_malformed_bodies_are_4xx(wc: WSGIClient, registered: dict[str, Any], method: str) -> None:
    """Nothing a client sends makes a 5xx: a body that is not JSON, or too large."""
    path = registered["path"] if method == "PUT" else "/register"
    token = registered["registration_access_token"] if method == "PUT" else None
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"}
                                                      if token else {})}  # fmt: skip
    many = b'{"redirect_uris": [' + b'"x",' * 20000 + b'"y"]}'
    for body in (b"\x00\xff", b"[" * 100_000, b"[" * 60_000, many):
        r = wc.request(method, path, headers=headers, body=body)
        assert 400 <= r.status < 500, (r.status, r.text)
