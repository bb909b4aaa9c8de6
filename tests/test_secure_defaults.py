"""DESIGN "Defaults are the secure ones (RFC 9700)": what a server does before anyone
configures it."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import CONFIDENTIAL, PUBLIC, REDIRECT, SECRET, USERNAME, new_flow, query_of
from wsgi_client import WSGIClient

import codeflow


def test_passwords_are_hashed_with_a_memory_hard_kdf_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RFC 9700 §2.4 spirit, DESIGN: "passwords hashed with a memory-hard KDF": scrypt
    with N=2**14, r=8 (16 MiB) and a per-user random salt, never the password itself."""
    monkeypatch.setattr(codeflow, "SCRYPT_N", 2**14)  # the suite runs with a cheaper N
    srv = codeflow.Server()
    one = srv.add_user("one", "same password")
    two = srv.add_user("two", "same password")
    assert one.password_hash.startswith("scrypt$16384$8$1$")
    assert "same password" not in one.password_hash
    assert one.password_hash != two.password_hash  # per-user salt
    assert codeflow.verify_password("same password", one.password_hash)
    assert not codeflow.verify_password("other password", one.password_hash)


def test_client_secrets_are_stored_only_as_hashes(server: codeflow.Server) -> None:
    """DESIGN "Secrets reach storage only as hashes": a client secret is kept as a salted
    scrypt hash."""
    client = server.storage.get_client(CONFIDENTIAL)
    assert client is not None and client.secret_hash is not None
    assert SECRET not in repr(client)
    assert codeflow.verify_password(SECRET, client.secret_hash)


def test_codes_and_tokens_are_stored_only_as_hashes(server: codeflow.Server) -> None:
    """DESIGN "tokens and codes stored only as hashes": nothing in storage can be
    presented back to the server."""
    srv = codeflow.Server(issuer=server.issuer, storage=server.storage, auto_approve=USERNAME)
    wc = WSGIClient(srv.wsgi)
    flow = new_flow()
    code = query_of(wc.get("/authorize", params=flow.params).location)["code"]
    body = wc.post(
        "/token",
        {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
         "code_verifier": flow.verifier, "client_id": CONFIDENTIAL, "client_secret": SECRET},
    ).json()  # fmt: skip
    stored = repr(vars(server.storage))
    for value in (code, body["access_token"], body["refresh_token"]):
        assert value not in stored
        assert codeflow.token_hash(value) in stored


def test_public_clients_cannot_opt_out_of_pkce() -> None:
    """RFC 9700 §2.1.1: "Public clients MUST use PKCE"; registration refuses the opt-out."""
    with pytest.raises(ValueError, match="PKCE"):
        codeflow.Server().add_client(PUBLIC, redirect_uris=[REDIRECT], require_pkce=False)


def test_new_clients_require_pkce_and_get_no_implicit_or_password_grant() -> None:
    """RFC 9700 §2.1.1, §2.1.2, §2.4: PKCE by default; no implicit grant; "The resource
    owner password credentials grant MUST NOT be used"."""
    client = codeflow.Server().add_client("c", client_secret="s", redirect_uris=[REDIRECT])
    assert client.require_pkce
    assert set(client.grant_types) == {"authorization_code", "refresh_token"}
    with pytest.raises(ValueError, match="grant"):
        codeflow.Server().add_client("c", redirect_uris=[REDIRECT], grant_types=["password"])


@pytest.mark.parametrize("uri", ["/relative", "http://app.example/cb#fragment", "app.example/cb"])
def test_redirect_uris_must_be_absolute_without_fragment(uri: str) -> None:
    """RFC 6749 §3.1.2: "The redirection endpoint URI MUST be an absolute URI" and "MUST
    NOT include a fragment component"."""
    with pytest.raises(ValueError, match="redirect_uri"):
        codeflow.Server().add_client("c", redirect_uris=[uri])


def test_lifetimes_are_short_by_default() -> None:
    """RFC 6749 §4.1.2: codes "MUST expire shortly after"; ours live 60 s. Access tokens
    live an hour; sessions and forms are bounded too."""
    srv = codeflow.Server()
    assert srv.code_lifetime == 60
    assert srv.access_token_lifetime == 3600
    assert codeflow.SESSION_LIFETIME <= 12 * 3600
    assert codeflow.FORM_LIFETIME <= 3600


def test_records_are_immutable() -> None:
    """STYLE "records as dataclasses": frozen, so no code path edits a stored record behind
    the storage's back (atomic operations stay the only way to change one)."""
    for record in (codeflow.Client, codeflow.User, codeflow.AuthorizationCode, codeflow.Token):
        assert dataclasses.fields(record)
        assert record.__dataclass_params__.frozen  # type: ignore[attr-defined]
