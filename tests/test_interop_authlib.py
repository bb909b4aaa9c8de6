"""DESIGN "Real independent clients complete the flow against us": authlib and
requests-oauthlib, configured from the discovery document (RFC 8414), run the whole
authorization code flow with PKCE (RFC 7636) against a running server on 127.0.0.1.

The client library builds the authorization URL, checks the callback's state and
exchanges the code, refreshes, and (authlib) introspects and revokes. Only the browser's
part (login and consent) is played here, with requests and the pages' forms.
"""

from __future__ import annotations

import secrets
import urllib.parse

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session as AuthlibSession
from authlib.integrations.requests_client import OAuthError as AuthlibOAuthError
from authlib.oauth2.rfc6749.errors import MismatchingStateException
from conftest import (
    CONFIDENTIAL,
    PASSWORD,
    PUBLIC,
    REDIRECT,
    SECRET,
    USERNAME,
    form_fields,
    query_of,
)
from oauthlib.oauth2.rfc6749.errors import MismatchingStateError
from requests_oauthlib import OAuth2Session as OAuthlibSession

import codeflow

TIMEOUT = 10
SCOPE = "openid profile offline_access"

pytestmark = pytest.mark.http


def discover(base: str) -> dict:
    """RFC 8414 §3: the client reads every endpoint from the metadata."""
    r = requests.get(base + codeflow.OAUTH_METADATA_PATH, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    meta = r.json()
    assert meta["issuer"] == base
    return meta


def act_as_browser(authorization_url: str) -> str:
    """Follow an authorization URL as a user would: sign in, allow; return the URL the
    browser is finally sent to (the client's redirect_uri with the response)."""
    with requests.Session() as browser:
        r = browser.get(authorization_url, allow_redirects=False, timeout=TIMEOUT)
        if 'action="login"' in r.text:
            form = {**form_fields(r.text), "username": USERNAME, "password": PASSWORD}
            login = urllib.parse.urljoin(authorization_url, "login")
            r = browser.post(login, data=form, allow_redirects=False, timeout=TIMEOUT)
            assert r.status_code == 303, r.text
            r = browser.get(r.headers["Location"], allow_redirects=False, timeout=TIMEOUT)
        if 'action="consent"' in r.text:
            form = {**form_fields(r.text), "decision": "approve"}
            consent = urllib.parse.urljoin(authorization_url, "consent")
            r = browser.post(consent, data=form, allow_redirects=False, timeout=TIMEOUT)
        assert r.status_code in (302, 303), r.text
        location = r.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    return location


def test_authlib_confidential_client_with_client_secret_basic(live) -> None:
    """RFC 6749 §4.1 with §2.3.1 client_secret_basic and RFC 7636 S256: authlib runs the
    whole flow (authorize, callback with state, code exchange, introspection, refresh,
    revocation) against codeflow's discovery document."""
    _, base = live
    meta = discover(base)
    assert "client_secret_basic" in meta["token_endpoint_auth_methods_supported"]
    assert "S256" in meta["code_challenge_methods_supported"]
    verifier = secrets.token_urlsafe(48)
    with AuthlibSession(
        CONFIDENTIAL,
        SECRET,
        scope=SCOPE,
        redirect_uri=REDIRECT,
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_basic",
    ) as client:
        url, state = client.create_authorization_url(
            meta["authorization_endpoint"], code_verifier=verifier
        )
        assert query_of(url)["code_challenge_method"] == "S256"
        callback = act_as_browser(url)
        # RFC 9207 §2.4: the client checks iss before it uses the code.
        assert query_of(callback)["iss"] == meta["issuer"]
        token = client.fetch_token(
            meta["token_endpoint"],
            authorization_response=callback,
            state=state,
            code_verifier=verifier,
        )
        assert token["token_type"] == "Bearer"
        assert token["scope"] == SCOPE
        assert token["refresh_token"]

        info = client.introspect_token(meta["introspection_endpoint"], token=token["access_token"])
        assert info.status_code == 200
        assert info.json()["active"] is True
        assert info.json()["sub"] == USERNAME

        refreshed = client.refresh_token(meta["token_endpoint"])
        assert refreshed["access_token"] != token["access_token"]
        assert refreshed["refresh_token"] != token["refresh_token"]

        r = client.revoke_token(
            meta["revocation_endpoint"],
            token=refreshed["refresh_token"],
            token_type_hint="refresh_token",
        )
        assert r.status_code == 200
        # RFC 7009 §2.1: revoking the refresh token also ends its access tokens.
        info = client.introspect_token(
            meta["introspection_endpoint"], token=refreshed["access_token"]
        )
        assert info.json() == {"active": False}


def test_authlib_public_client_with_auth_method_none(live) -> None:
    """RFC 6749 §2.3 and RFC 7636 §4.5: authlib as a public client (auth method none:
    client_id in the body, PKCE instead of a secret) gets, refreshes and revokes tokens."""
    _, base = live
    meta = discover(base)
    assert "none" in meta["token_endpoint_auth_methods_supported"]
    verifier = secrets.token_urlsafe(48)
    with AuthlibSession(
        PUBLIC,
        scope=SCOPE,
        redirect_uri=REDIRECT,
        code_challenge_method="S256",
        token_endpoint_auth_method="none",
    ) as client:
        url, state = client.create_authorization_url(
            meta["authorization_endpoint"], code_verifier=verifier
        )
        callback = act_as_browser(url)
        token = client.fetch_token(
            meta["token_endpoint"],
            authorization_response=callback,
            state=state,
            code_verifier=verifier,
        )
        assert token["token_type"] == "Bearer"
        refreshed = client.refresh_token(meta["token_endpoint"])
        assert refreshed["access_token"] != token["access_token"]
        r = client.revoke_token(meta["revocation_endpoint"], token=refreshed["refresh_token"])
        assert r.status_code == 200
        # RFC 9700 §4.14.2: a revoked refresh token buys nothing.
        with pytest.raises(AuthlibOAuthError) as refused:
            client.refresh_token(meta["token_endpoint"], refresh_token=refreshed["refresh_token"])
        assert refused.value.error == "invalid_grant"


def test_authlib_refuses_a_callback_with_another_state(live) -> None:
    """RFC 6749 §10.12: a callback whose state is not the one the client sent is refused
    by the client library before any token request."""
    _, base = live
    meta = discover(base)
    verifier = secrets.token_urlsafe(48)
    with AuthlibSession(
        PUBLIC, scope=SCOPE, redirect_uri=REDIRECT, code_challenge_method="S256"
    ) as client:
        url, _ = client.create_authorization_url(
            meta["authorization_endpoint"], code_verifier=verifier
        )
        callback = act_as_browser(url)
        with pytest.raises(MismatchingStateException):
            client.fetch_token(
                meta["token_endpoint"],
                authorization_response=callback,
                state="another-state",
                code_verifier=verifier,
            )


def test_requests_oauthlib_confidential_client_with_pkce(live, monkeypatch) -> None:
    """RFC 6749 §4.1 with RFC 7636 S256: requests-oauthlib (pkce="S256", client_secret_basic)
    builds the authorization URL, checks the callback's state, exchanges the code, uses
    the access token at the userinfo endpoint, and refreshes."""
    # oauthlib refuses http:// outright; this server is on the loopback interface.
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    _, base = live
    meta = discover(base)
    with OAuthlibSession(
        CONFIDENTIAL, redirect_uri=REDIRECT, scope=SCOPE.split(), pkce="S256"
    ) as client:
        url, _ = client.authorization_url(meta["authorization_endpoint"])
        assert query_of(url)["code_challenge_method"] == "S256"
        callback = act_as_browser(url)
        assert query_of(callback)["iss"] == meta["issuer"]  # RFC 9207 §2.4
        token = client.fetch_token(
            meta["token_endpoint"], authorization_response=callback, client_secret=SECRET
        )
        assert token["token_type"] == "Bearer"
        assert token["refresh_token"]

        # The session sends the token as a bearer token (RFC 6750 §2.1).
        r = client.get(meta["userinfo_endpoint"], timeout=TIMEOUT)
        assert r.status_code == 200, r.text
        assert r.json()["sub"] == USERNAME

        refreshed = client.refresh_token(meta["token_endpoint"], auth=(CONFIDENTIAL, SECRET))
        assert refreshed["access_token"] != token["access_token"]
        assert refreshed["refresh_token"] != token["refresh_token"]
        r = client.get(meta["userinfo_endpoint"], timeout=TIMEOUT)
        assert r.status_code == 200, r.text


def test_requests_oauthlib_refuses_a_callback_with_another_state(live, monkeypatch) -> None:
    """RFC 6749 §10.12: requests-oauthlib refuses a callback whose state it did not send."""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    _, base = live
    meta = discover(base)
    with OAuthlibSession(
        CONFIDENTIAL, redirect_uri=REDIRECT, scope=SCOPE.split(), pkce="S256"
    ) as client:
        url, state = client.authorization_url(meta["authorization_endpoint"])
        callback = act_as_browser(url)
        forged = callback.replace(urllib.parse.quote(state), "another-state")
        assert forged != callback
        with pytest.raises(MismatchingStateError):
            client.fetch_token(
                meta["token_endpoint"], authorization_response=forged, client_secret=SECRET
            )
