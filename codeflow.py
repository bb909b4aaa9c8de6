"""codeflow: an OAuth 2.1 authorization server in one module.

It implements the authorization code flow with PKCE and the grants around it:

- RFC 6749 (OAuth 2.0) §4.1 authorization code, §4.4 client credentials, §6 refresh,
  as tightened by OAuth 2.1 and RFC 9700 (security best current practice);
- RFC 7636 (PKCE, S256 only), RFC 9207 (``iss`` in authorization responses),
  RFC 8252 §7.3 (any port for loopback redirect URIs of native clients);
- RFC 7009 (revocation), RFC 7662 (introspection), RFC 8414 (discovery);
- RFC 6238 (TOTP) as an optional second factor at login;
- OpenID Connect Core 1.0 (ID tokens with the granted claims, amr and acr per RFC 8176,
  refreshed ID tokens, userinfo, the claims parameter), Discovery 1.0, RP-Initiated Logout
  1.0, OAuth 2.0 Form Post Response Mode; RFC 7517 (JWKS, with key rotation) and RFC 9068
  (JWT access tokens);
- RFC 8707 (resource indicators: resources registered with their scopes, token format
  and lifetime; tokens whose aud is the resource) and RFC 8693 (token exchange, for
  services, by per-client policy);
- CORS (the Fetch Standard) on the endpoints browser apps call;
- RFC 7591 and RFC 7592 (dynamic client registration and its management) and OAuth
  Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document), off unless
  enabled, with hardened fetches of the URLs clients name;
- RFC 9449 (DPoP: tokens bound to a client's key, proofs checked at the token, PAR and
  userinfo endpoints) and RFC 7523 §2.2 (private_key_jwt client authentication).

The module reads top to bottom in the order a request meets it, one banner a section:
helpers, errors, records, storage, the server (configuration and registration), browser
state (sessions, signed forms, CSRF), throttling failed sign-ins, outbound fetches,
clients that register themselves, client authentication, sender-constrained tokens
(DPoP), PKCE, resource indicators, the authorization endpoint, login and consent, the
token endpoint, OpenID Connect (keys, ID tokens,
userinfo, logout), introspection/revocation/discovery; then the pages
(all HTML), the demo client, the WSGI app (the only place that touches bottle), the fake
IdP for test suites, running it, and configuration and the CLI.

The protocol is plain functions of a Server and the request's parameters (and, for
browser-facing steps, an explicit Browser value) that return a Redirect, a Page or a
JSON body, or raise an OAuthError: ``authorize(srv, pairs, Browser.new())`` and
``token_endpoint(srv, params, authorization)`` work without any HTTP.

Dependencies: bottle (HTTP), itsdangerous (signed cookies and forms), PyJWT with
cryptography (JOSE: ID tokens, JWT access tokens, JWKS), pyotp (TOTP); waitress is
used for serving when it is installed. Copied alone into another project, this
file runs on memory storage.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import contextvars
import functools
import getpass
import hashlib
import hmac
import html
import http.client
import importlib
import importlib.metadata
import io
import ipaddress
import json
import logging
import math
import mmap
import os
import queue
import re
import secrets
import selectors
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol, TextIO, TypeAlias, cast
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

if TYPE_CHECKING:
    from waitress.server import BaseWSGIServer

import bottle
import itsdangerous
import jwt
import pyotp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

__all__ = [
    "AuthorizationCode",
    "Browser",
    "Client",
    "DeviceAuthorization",
    "Grant",
    "LoginSession",
    "MemoryStorage",
    "OAuthError",
    "Passkey",
    "PushedRequest",
    "RemovedUser",
    "Resource",
    "Server",
    "SigningKey",
    "Storage",
    "StorageUnavailable",
    "Token",
    "User",
    "authorize",
    "hash_password",
    "main",
    "new_signing_key",
    "open_storage",
    "token_endpoint",
    "verify_password",
]

__version__ = "0.1.0"

log = logging.getLogger("codeflow")

CODE_LIFETIME = (
    60  # RFC 6749 §4.1.2: "The authorization code MUST expire shortly after it is issued"
)
ACCESS_TOKEN_LIFETIME = 3600
REFRESH_TOKEN_LIFETIME = 30 * 24 * 3600
ID_TOKEN_LIFETIME = 3600
SESSION_LIFETIME = 8 * 3600  # how long a login lasts in the browser
FORM_LIFETIME = 30 * 60  # how long a login or consent form may sit open before it expires
OTP_LIFETIME = 5 * 60  # how long the TOTP step may follow a right password
BROWSER_ID_LIFETIME = 7 * 24 * 3600  # a browser's signed id (the CSRF cookie), renewed at login
# Throttling failed sign-ins (NIST SP 800-63B §5.2.2); the policy and its arithmetic are
# in the section "Throttling failed sign-ins".
FAILURES_BEFORE_DELAY = 5  # consecutive failures from one address on one account
FIRST_DELAY = 30  # then a wait, doubling: NIST SP 800-63B §5.2.2 "30 seconds up to an hour"
MAX_DELAY = 3600
ACCOUNT_FAILURES_BEFORE_DELAY = 10  # consecutive failures on one account, from anywhere
MAX_ACCOUNT_DELAY = 15 * 60  # the gentle per-account wait never grows past this
KNOWN_ADDRESSES = 4  # addresses remembered per user for having signed in there
FORGET_FAILURES = 24 * 3600  # a count with no failure for this long starts again
THROTTLE_ENTRIES = 50_000  # client secret budgets kept at most (and MemoryStorage's counts)
CHECK_WAIT = 10  # seconds a request may wait for the checks under way on its account
SECRET_CHECK_BURST = 10  # scrypt runs for one client from one address, then
SECRET_CHECK_INTERVAL = 1  # one more each this many seconds
SECRET_CHECKS_AT_ONCE = 2  # and no more than this many at once
MAX_BODY = 64 * 1024  # no request of this protocol needs more
MAX_PARAMS = 64
MAX_PARAM_LENGTH = 4096
DEFAULT_SCOPES = ("openid", "profile", "email", "offline_access")
DEFAULT_GRANT_TYPES = ("authorization_code", "refresh_token")
# RFC 8693 §2.1: the grant type of token exchange, and §3 the token type identifiers.
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105 -- a URN
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 -- a URN
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 -- a URN
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"  # RFC 8628 §3.4
GRANT_TYPES = (
    "authorization_code", "refresh_token", "client_credentials", TOKEN_EXCHANGE, DEVICE_CODE_GRANT,
)
# RFC 8628 §3.2 expires_in; §6.1: user codes "SHOULD have a limited lifetime" (§5.1: the
# shorter it is, the fewer guesses it can meet).
DEVICE_CODE_LIFETIME = 10 * 60
DEVICE_POLL_INTERVAL = 5  # RFC 8628 §3.2 interval: "If no value is provided, clients MUST use 5"
DEVICE_SLOW_DOWN = 5  # RFC 8628 §3.5 slow_down: "the interval MUST be increased by 5 seconds"
# RFC 8628 §6.1: "BCDFGHJKLMNPQRSTVWXZ" ("base-20"), 8 characters shown as XXXX-XXXX:
# 20^8 = 2.56e10 codes, "approximately 34.5 bits of entropy".
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH = 8
# RFC 9126 §2.2: request_uri, one-time and short-lived ("expires_in" of 60 s in its example).
PUSHED_REQUEST_LIFETIME = 60
REQUEST_URI_PREFIX = "urn:ietf:params:oauth:request_uri:"  # RFC 9126 §2.2
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # 16 MiB per hash: memory-hard (RFC 9700 §2.4 spirit)
MAX_REGISTERED_CLIENTS = 10_000  # self-registered clients at most (RFC 7591; see its section)
TRANSCRIPT_LIMIT = 1000  # exchanges a test-mode transcript keeps, the oldest dropped first

# Endpoint paths are ours to choose; clients find them through discovery (RFC 8414 §2).
AUTHORIZE_PATH = "/authorize"
LOGIN_PATH = "/login"
CONSENT_PATH = "/consent"
TOKEN_PATH = "/token"  # noqa: S105 -- a path, not a password
INTROSPECT_PATH = "/introspect"
REVOKE_PATH = "/revoke"
USERINFO_PATH = "/userinfo"
JWKS_PATH = "/jwks"
LOGOUT_PATH = "/logout"
DEVICE_AUTHORIZATION_PATH = "/device_authorization"  # RFC 8628 §3.1
DEVICE_PATH = "/device"  # RFC 8628 §3.3 verification_uri: where the user types the code
PAR_PATH = "/par"  # RFC 9126 §2
REGISTRATION_PATH = "/register"  # RFC 7591 §3; RFC 7592's client URIs are under it
ACCOUNT_PATH = "/account"  # the user's own account area (README "Your account")
OAUTH_METADATA_PATH = "/.well-known/oauth-authorization-server"
OIDC_METADATA_PATH = "/.well-known/openid-configuration"
HEALTH_PATH = "/healthz"
SIGNING_ALGS = ("RS256", "ES256")  # RS256 is OIDC Core §15.1's mandatory default
# The asymmetric JWS algorithms (RFC 7518 §3.1, RFC 8037 §3.1) of the keys clients hold:
# DPoP proofs (RFC 9449 §4.3: "not none or an identifier for a symmetric algorithm") and
# client assertions (private_key_jwt: a key the server knows only the public half of).
CLIENT_KEY_ALGS = ("ES256", "ES384", "ES512", "EdDSA", "PS256", "PS384", "PS512",
                   "RS256", "RS384", "RS512")  # fmt: skip
DPOP_PROOF_WINDOW = 60  # RFC 9449 §11.1: seconds a proof's iat may be from now, either way
DPOP_NONCE_LIFETIME = 5 * 60  # RFC 9449 §8: how long a DPoP-Nonce the server gave is good for
MAX_DPOP_PROOF = 8192  # characters: a proof with a 4096-bit RSA key is under 2,000
# RFC 7523 §3: "The JWT MUST contain an exp claim that limits the time window during which
# the JWT can be used": at most this far ahead (Authlib, for one, writes iat + 3600), so
# that the replay cache holds a client's assertions for an hour at most.
MAX_CLIENT_ASSERTION_LIFETIME = 3600
CLOCK_SKEW = 60  # seconds a client's clock may run ahead of ours (iat, nbf)

# OIDC Core §5.4: the claims each scope asks for.
SCOPE_CLAIMS = {
    "profile": (
        "name", "family_name", "given_name", "middle_name", "nickname", "preferred_username",
        "profile", "picture", "website", "gender", "birthdate", "zoneinfo", "locale",
        "updated_at",
    ),
    "email": ("email", "email_verified"),
    "address": ("address",),
    "phone": ("phone_number", "phone_number_verified"),
}
# The scope that releases each claim: a claim asked for on its own (OIDC Core §5.5) is
# released to a client that may ask for its scope, and the consent page shows that scope.
CLAIM_SCOPE = {claim: scope for scope, claims in SCOPE_CLAIMS.items() for claim in claims}
PROMPT_VALUES = ("none", "login", "consent")
# OAuth 2.0 Multiple Response Type Encoding Practices §2.1: query is the default for code;
# OAuth 2.0 Form Post Response Mode §2: form_post.
RESPONSE_MODES = ("query", "form_post")
# OIDC Core §2 acr: the authentication context classes this server tells apart. The
# multi-factor one is OpenID Provider Authentication Policy Extension 1.0 §4's policy URI,
# which relying parties send in acr_values to ask for a second factor.
ACR_PASSWORD = "urn:codeflow:acr:password"  # noqa: S105 -- an acr value, not a password
ACR_MFA = "http://schemas.openid.net/pape/policies/2007/06/multi-factor"
ACR_VALUES = (ACR_PASSWORD, ACR_MFA)
# RFC 8176 §2: the authentication methods references of a sign-in.
AMR_PASSWORD = ("pwd",)
AMR_PASSWORD_AND_OTP = ("pwd", "otp", "mfa")

SCOPE_WORDS = {
    "openid": "Confirm who you are",
    "profile": "See your name and basic profile",
    "email": "See your email address",
    "address": "See your postal address",
    "phone": "See your phone number",
    "offline_access": "Stay signed in to this app while you are away (a refresh token)",
}


###############################################################################
# Helpers #####################################################################
###############################################################################


def b64url(data: bytes) -> str:
    """Base64url without padding (RFC 7636 Appendix A)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_secret() -> str:
    """A 256-bit random string for codes and tokens (RFC 6749 §10.10)."""
    return secrets.token_urlsafe(32)


def new_subject() -> str:
    """A subject for a user whose username an earlier user had (``Storage.add_user``): 128
    random bits, so that it says nothing of the user, nor that the name was used before.
    OIDC Core §2: sub "MUST NOT exceed 255 ASCII characters in length"; this has 22."""
    return secrets.token_urlsafe(16)


def token_hash(value: str) -> str:
    """What storage keeps of a code or token: its SHA-256, never the value itself.

    The values are 256-bit random strings, so a fast hash is enough; a stolen
    database yields nothing that can be presented to the server.
    """
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


# Test-speed hashing, for servers made with password_hashing="fast" (the pytest plugin's):
# one salted SHA-256 instead of scrypt's 16 MiB, under a scheme name of its own, so that
# such a hash is known for what it is wherever it ends up. Only a server in fast mode
# verifies one: a store a test server wrote lets no one in on a production server.
PasswordHashing: TypeAlias = Literal["scrypt", "fast"]
PASSWORD_HASHINGS: tuple[PasswordHashing, ...] = ("scrypt", "fast")
FAST_HASH_SCHEME = "test-only-sha256"
FAST_HASH_NOTE = "checked against a test-only hash (password_hashing='fast')"


# Memory-hard hashes running at once in this process, whatever asks for them (logins under
# any username from any address, client secrets, registrations): each takes 16 MiB and a
# core for ~40 ms, so a burst of sign-ins queues here instead of exhausting memory (a
# stdlib server's 200 threads would want 3 GiB) or starving every other request of CPU.
SCRYPT_AT_ONCE = 4
SCRYPT_SLOTS = threading.BoundedSemaphore(SCRYPT_AT_ONCE)


def hash_password(password: str, *, hashing: PasswordHashing = "scrypt") -> str:
    """Hash a password or client secret with scrypt and a per-hash random salt; with
    ``hashing="fast"`` (test suites only), with one salted SHA-256 marked as such."""
    salt = secrets.token_bytes(16)
    if hashing == "fast":
        digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
        return f"{FAST_HASH_SCHEME}${b64url(salt)}${b64url(digest)}"
    with SCRYPT_SLOTS:
        key = hashlib.scrypt(
            password.encode("utf-8"), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32
        )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64url(salt)}${b64url(key)}"


def verify_password(password: str, encoded: str, *, hashing: PasswordHashing = "scrypt") -> bool:
    """Check a password against hash_password's output, in constant time. A fast hash
    verifies only with ``hashing="fast"``; scrypt hashes verify in either mode."""
    if encoded.startswith(FAST_HASH_SCHEME + "$"):
        return _verify_fast(password, encoded, hashing)
    try:
        scheme, n, r, p, salt, key = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.urlsafe_b64decode(key + "==")
        with SCRYPT_SLOTS:
            actual = hashlib.scrypt(
                password.encode("utf-8"),
                salt=base64.urlsafe_b64decode(salt + "=="),
                n=int(n),
                r=int(r),
                p=int(p),
                dklen=len(expected),
            )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def _verify_fast(password: str, encoded: str, hashing: PasswordHashing) -> bool:
    if hashing != "fast":
        log.warning(
            "codeflow: refused a password or client secret hashed for test suites "
            "(password_hashing='fast'); set it again on this server to hash it with scrypt"
        )
        return False
    try:
        _, salt, digest = encoded.split("$")
        expected = base64.urlsafe_b64decode(digest + "==")
        actual = hashlib.sha256(base64.urlsafe_b64decode(salt + "==") + password.encode("utf-8"))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual.digest(), expected)


@functools.cache
def dummy_hash(hashing: PasswordHashing = "scrypt") -> str:
    """A hash to check wrong usernames against, so they cost as much as wrong passwords.
    Made on first use: importing codeflow stays cheap."""
    return hash_password(secrets.token_urlsafe(16), hashing=hashing)


NO_PASSWORD = "!"  # noqa: S105 -- the password_hash of a user who cannot sign in with a password


def split_scope(scope: str | None) -> tuple[str, ...]:
    """RFC 6749 §3.3: a space-delimited list of case-sensitive strings, order irrelevant."""
    seen: dict[str, None] = {}
    for item in (scope or "").split(" "):
        if item:
            seen[item] = None
    return tuple(seen)


def parse_pairs(raw: bytes) -> list[tuple[str, str]]:
    """Parse application/x-www-form-urlencoded bytes (a query string or a form body).

    RFC 6749 §3.1: "Parameters sent without a value MUST be treated as if they were
    omitted from the request." Anything that is not UTF-8 is refused.
    """
    try:
        pairs = urllib.parse.parse_qsl(
            raw.decode("ascii"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_PARAMS,
        )
    except UnicodeDecodeError:
        raise InvalidRequest("The request is not valid UTF-8 form-urlencoded data.") from None
    except ValueError:
        raise InvalidRequest(f"The request has more than {MAX_PARAMS} parameters.") from None
    for name, value in pairs:
        if len(value) > MAX_PARAM_LENGTH or len(name) > MAX_PARAM_LENGTH:
            raise InvalidRequest(f"The {name[:40]!r} parameter is too long.")
    return [(name, value) for name, value in pairs if value != ""]


REPEATABLE = ("resource", "audience")  # RFC 8707 §2, RFC 8693 §2.1


def single_params(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """RFC 6749 §3.1: "Request and response parameters MUST NOT be included more than once."

    Except ``resource``: RFC 8707 §2 "Multiple resource parameters MAY be used", kept as
    one value of space-separated URIs (a URI has no space, so a value with one is
    refused: invalid_target); ``split_scope`` splits it again, ``request_pairs`` unfolds
    it. The same for RFC 8693 §2.1 ``audience`` (of the token exchange, which checks it).
    """
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in REPEATABLE:
            if name == "resource" and not resource_uri_ok(value):
                raise InvalidTarget(
                    "resource must be an absolute URI without fragment (RFC 8707 section 2)."
                )
            params[name] = f"{params[name]} {value}" if name in params else value
            continue
        if name in params:
            raise InvalidRequest(f"The {name[:40]!r} parameter is repeated.")
        params[name] = value
    return params


def request_pairs(params: dict[str, str]) -> list[tuple[str, str]]:
    """``params`` as the request had them: each resource of the one ``resource`` value
    (single_params) its own parameter again, as RFC 8707 §2 sends them."""
    return [
        (name, item)
        for name, value in params.items()
        for item in (value.split(" ") if name in REPEATABLE else [value])
    ]


def add_query(uri: str, params: dict[str, str]) -> str:
    """RFC 6749 §3.1.2: keep the URI's own query component when adding parameters."""
    parts = urllib.parse.urlsplit(uri)
    extra = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urllib.parse.urlunsplit(parts._replace(query=query))


LOOPBACK_HOSTS = ("127.0.0.1", "::1")


def redirect_uri_matches(registered: str, given: str, *, native: bool) -> bool:
    """Exact string match (RFC 9700 §2.1), except the port of a loopback IP URI.

    RFC 8252 §7.3: "The authorization server MUST allow any port to be specified at
    the time of the request for loopback IP redirect URIs, to accommodate clients
    that obtain an available ephemeral port from the operating system."
    """
    if hmac.compare_digest(registered.encode(), given.encode()):
        return True
    if not native:
        return False
    try:
        reg, got = urllib.parse.urlsplit(registered), urllib.parse.urlsplit(given)
        port = got.port
        # A registered loopback URI without a port is a native app's (RFC 8252 §7.3); one
        # with a port (a web app on this machine, the demo) is matched exactly.
        if reg.port is not None:
            return False
    except ValueError:  # "http://[" and other hosts urlsplit cannot parse
        return False
    if reg.scheme != "http" or reg.hostname not in LOOPBACK_HOSTS:
        return False
    host = "[::1]" if reg.hostname == "::1" else reg.hostname
    # Only the port may differ: the rest must be the registered string, character for
    # character (urlsplit forgives whitespace and control characters; we do not).
    return (
        urllib.parse.urlunsplit(got) == given
        and got.netloc in (host, f"{host}:{port}")
        and urllib.parse.urlunsplit(got._replace(netloc=host))
        == urllib.parse.urlunsplit(reg._replace(netloc=host))
    )


audit_log = logging.getLogger("codeflow.audit")
access_log = logging.getLogger("codeflow.access")

# Audit events, by stable name, for operators to keep and alert on (README "Logs"). Their
# fields name who and what (user, client, address, scope, kid), never a secret.
AUDIT_EVENTS = (
    "login.succeeded", "login.failed", "login.throttled", "second_factor.required",
    "second_factor.failed", "second_factor.throttled", "second_factor.replayed",
    "consent.granted", "consent.denied", "code.issued", "code.redeemed", "code.replayed",
    "refresh.rotated", "refresh.reuse_detected", "token.revoked", "client_auth.failed",
    "key.rotated", "user.added", "user.changed", "user.removed", "client.added",
    "client.changed", "client.removed", "logout.backchannel_sent", "logout.backchannel_failed",
    "device.code_issued", "device.approved", "device.denied", "device.user_code_failed",
    "device.user_code_throttled", "device.redeemed", "request.pushed",
    "resource.added", "resource.changed", "resource.removed", "token.exchanged",
    "client.registered", "client.registration_changed", "client.registration_deleted",
    "client.grants_ended", "client.registration_expired",
    "account.password_changed", "account.password_refused", "account.totp_enrolled",
    "account.totp_removed", "account.recovery_codes_created", "account.recovery_code_used",
    "account.app_revoked", "account.session_ended", "account.sessions_ended",
    "account.reauth_required", "passkey.registered", "passkey.removed", "passkey.used",
    "passkey.failed",
)  # fmt: skip


def audit(event: str, **fields: str | int | None) -> None:
    """Log the audit event ``event`` (one of AUDIT_EVENTS) with its fields."""
    given = {name: value for name, value in fields.items() if value is not None}
    if audit_log.isEnabledFor(logging.INFO):
        text = " ".join(f"{name}={value!r}" for name, value in given.items())
        audit_log.info("%s %s", event, text, extra={"event": event, "fields": given})


def check_claims(claims: Any, owner: str) -> dict[str, Any]:
    """``claims`` as userinfo and ID tokens carry them: a JSON object (OIDC Core §5.3.2,
    RFC 8259), else ValueError naming the claim. Checked when claims are given, so that a
    value JSON cannot carry (a TOML date, NaN) fails there, not in every answer after."""
    if not isinstance(claims, dict) or not all(isinstance(name, str) for name in claims):
        raise ValueError(f"{owner}: claims must be a table of claim names to values")
    for name, value in claims.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(
                f"{owner}: claim {name!r} is not a JSON value: {repr(value)[:60]} (write a "
                'date as a string, "2000-01-31", or as seconds since 1970, OIDC Core §5.1)'
            ) from None
    return dict(claims)


###############################################################################
# Errors: RFC 6749 §4.1.2.1 (authorization), §5.2 (token) ####################
###############################################################################


ERROR_DESCRIPTION_UNSAFE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


class OAuthError(Exception):
    """An OAuth error response: ``error`` is the wire code, ``status`` the HTTP status.

    Errors raised before the client and its redirect_uri are trusted are rendered as
    an HTML page and never redirect (RFC 6749 §4.1.2.1, RFC 9700 §4.11); every other
    authorization error goes back to the client as a redirect.
    """

    error = "server_error"
    status = 400
    # The WWW-Authenticate scheme of this error at a resource (RFC 6750 §3, RFC 9449 §7.1);
    # None: the scheme the request used.
    challenge: str | None = None

    def __init__(
        self, description: str, *, error: str | None = None, status: int | None = None
    ) -> None:
        # RFC 6749 §4.1.2.1: error_description "MUST NOT include characters outside the
        # set %x20-21 / %x23-5B / %x5D-7E"; descriptions may quote what a client sent.
        description = ERROR_DESCRIPTION_UNSAFE.sub("?", description)
        super().__init__(description)
        self.description = description
        if error is not None:
            self.error = error
        if status is not None:
            self.status = status

    def to_json(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


class InvalidRequest(OAuthError):
    error = "invalid_request"


class InvalidClient(OAuthError):
    """RFC 6749 §5.2: client authentication failed; ``basic`` says whether the client
    used HTTP Basic, which makes a 401 with ``WWW-Authenticate`` mandatory."""

    error = "invalid_client"
    status = 401

    def __init__(self, description: str, *, basic: bool = False) -> None:
        super().__init__(description)
        self.basic = basic


class InvalidGrant(OAuthError):
    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"


class InvalidScope(OAuthError):
    error = "invalid_scope"


class InvalidTarget(OAuthError):
    """RFC 8707 §2: "The requested resource is invalid, missing, unknown, or malformed"."""

    error = "invalid_target"


class AccessDenied(OAuthError):
    error = "access_denied"


class UnsupportedResponseType(OAuthError):
    error = "unsupported_response_type"


class RequestNotSupported(OAuthError):
    error = "request_not_supported"  # OpenID Connect Core §6


class RequestUriNotSupported(OAuthError):
    error = "request_uri_not_supported"  # OpenID Connect Core §6


class LoginRequired(OAuthError):
    error = "login_required"  # OpenID Connect Core §3.1.2.6


class ConsentRequired(OAuthError):
    error = "consent_required"  # OpenID Connect Core §3.1.2.6


class UnmetAuthenticationRequirements(OAuthError):
    # OpenID Connect Core Error Code unmet_authentication_requirements 1.0 §2
    error = "unmet_authentication_requirements"


class AuthorizationPending(OAuthError):
    error = "authorization_pending"  # RFC 8628 §3.5


class SlowDown(OAuthError):
    error = "slow_down"  # RFC 8628 §3.5


class ExpiredToken(OAuthError):
    error = "expired_token"  # RFC 8628 §3.5
class InvalidRedirectUri(OAuthError):
    error = "invalid_redirect_uri"  # RFC 7591 §3.2.2


class InvalidClientMetadata(OAuthError):
    error = "invalid_client_metadata"  # RFC 7591 §3.2.2


class InvalidToken(OAuthError):
    """RFC 6750 §3.1: the access token is expired, revoked, malformed or invalid."""

    error = "invalid_token"
    status = 401


class InsufficientScope(OAuthError):
    error = "insufficient_scope"  # RFC 6750 §3.1
    status = 403


class MissingToken(InvalidToken):
    """RFC 6750 §3.1: "If the request lacks any authentication information ..., the
    resource server SHOULD NOT include an error code or other error information."
    """


class InvalidDPoPProof(OAuthError):
    """RFC 9449 §5: "If the DPoP proof is invalid, the authorization server issues an
    error response per Section 5.2 of [RFC6749] with invalid_dpop_proof"; at a resource,
    401 with a DPoP challenge (§7.1)."""

    error = "invalid_dpop_proof"
    challenge = "DPoP"


class UseDPoPNonce(OAuthError):
    """RFC 9449 §8: the proof lacks the nonce the server requires, or has an old one; the
    answer carries a fresh one in ``DPoP-Nonce`` (400 at the token endpoint, 401 with a
    DPoP challenge at a resource, §9)."""

    error = "use_dpop_nonce"
    challenge = "DPoP"

    def __init__(self, description: str, nonce: str, *, status: int = 400) -> None:
        super().__init__(description, status=status)
        self.nonce = nonce


class DPoPBoundToken(InvalidToken):
    """RFC 9449 §7.2: a DPoP-bound token sent as a Bearer token, or a DPoP proof whose key
    is not the one the token is bound to: refused with a DPoP challenge."""

    challenge = "DPoP"


class UntrustedRequest(OAuthError):
    """The client or redirect_uri cannot be trusted: answer with a page, never a redirect."""

    error = "invalid_request"


class CrossSiteRequest(UntrustedRequest):
    """A form of ours posted from another site (RFC 9700 §4.4): answered with a page."""

    status = 403


class PayloadTooLarge(OAuthError):
    error = "invalid_request"
    status = 413


class TooManyAttempts(OAuthError):
    """RFC 6585 §4: 429 Too Many Requests, with Retry-After (RFC 9110 §10.2.3) saying when
    to try again. The code is RFC 6749 §4.1.2.1's temporarily_unavailable: the request
    was not checked now, which says nothing about its credentials."""

    error = "temporarily_unavailable"
    status = 429

    def __init__(self, description: str, retry_after: int) -> None:
        super().__init__(description)
        self.retry_after = retry_after


# RFC 9110 §10.2.3: the seconds a client is asked to wait before retrying while storage is
# down: long enough for a pool to reconnect or a lock to pass, short enough not to strand it.
STORAGE_RETRY_AFTER = 5


class StorageUnavailable(Exception):
    """Storage cannot be reached now: the database is down or restarting, its connection
    pool is exhausted, or a lock outlasted the busy timeout. Backends raise it (with the
    driver's error as ``__cause__``) for such connection-level failures and nothing else.

    Not an OAuthError, on purpose: no protocol step catches it, so it never becomes a
    redirect to the client (which would lose the user's request); the WSGI layer answers
    503 with Retry-After (RFC 9110 §15.6.4), as RFC 6749 §4.1.2.1's and §5.2's
    ``temporarily_unavailable``: "The authorization server is currently unable to handle
    the request due to a temporary overloading or maintenance of the server"."""

    error = "temporarily_unavailable"
    status = 503

    def __init__(self, description: str, retry_after: int = STORAGE_RETRY_AFTER) -> None:
        super().__init__(description)
        self.description = description
        self.retry_after = retry_after

    def to_json(self) -> dict[str, str]:
        return {
            "error": self.error,
            "error_description": "The server cannot reach its storage; try again later.",
        }


class FormExpired(UntrustedRequest):
    """A form whose CSRF token or signed request is no longer good: too old, or sent
    from another browser. ``restart`` is a safe place to begin again, if one is known;
    ``lifetime`` how long such a form lasts, in seconds."""

    def __init__(
        self, description: str, restart: str | None = None, lifetime: int = FORM_LIFETIME
    ) -> None:
        super().__init__(description)
        self.restart = restart
        self.lifetime = lifetime


###############################################################################
# Records ######################################################################
###############################################################################


@dataclass(frozen=True)
class FailureCount:
    """A sign-in throttle's count in storage (Storage.count_failure): ``count``
    consecutive failures, the ``last`` at that time, a gate shut ``until`` then, and
    ``expires_at``, when purge_expired may forget it."""

    count: int = 0
    last: float = 0.0
    until: float = 0.0
    expires_at: float = 0.0


@dataclass(frozen=True)
class Client:
    """A registered client (RFC 6749 §2). ``secret_hash`` is None for a public client."""

    client_id: str
    redirect_uris: tuple[str, ...] = ()
    secret_hash: str | None = None
    name: str = ""
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    grant_types: tuple[str, ...] = DEFAULT_GRANT_TYPES
    require_pkce: bool = True  # RFC 9700 §2.1.1: PKCE for every client unless it opts out
    id_token_signed_response_alg: str = "RS256"  # noqa: S105 -- OIDC Registration §2
    access_token_jwt: bool = False  # RFC 9068 JWT access tokens instead of opaque ones
    post_logout_redirect_uris: tuple[str, ...] = ()  # OIDC RP-Initiated Logout §3.1
    # Origins of browser apps that may read the token, userinfo and revocation answers
    # (CORS), besides those of a public client's redirect URIs (see cors_origins).
    allowed_origins: tuple[str, ...] = ()
    # OIDC Core §5.4: the user's claims from userinfo only, not in ID tokens as well.
    minimal_id_token: bool = False
    # OIDC Back-Channel Logout 1.0 §2.2: where logout tokens are POSTed, and whether the RP
    # needs their sid; Front-Channel Logout 1.0 §2: the page framed on logout, and whether
    # it needs iss and sid.
    backchannel_logout_uri: str | None = None
    backchannel_logout_session_required: bool = False
    frontchannel_logout_uri: str | None = None
    frontchannel_logout_session_required: bool = False
    declared: str = ""  # the config file's entry, hashed, if it declares this client
    # RFC 9126 §6: authorization requests only through the PAR endpoint.
    require_pushed_authorization_requests: bool = False
    # RFC 8707: the resources (Resource.uri) it may ask tokens for; none listed: any.
    resources: tuple[str, ...] = ()
    # RFC 8693: the resources it may get tokens for by token exchange, on behalf of a user
    # whose token names a resource this client serves (Resource.client_id); none: no
    # exchange at all.
    token_exchange: tuple[str, ...] = ()
    # A client that registered itself (see "Clients that register themselves"): how
    # (REGISTERED_DYNAMICALLY, RFC 7591; REGISTERED_BY_DOCUMENT, a Client ID Metadata
    # Document, never stored; "" for the operator's clients), the SHA-256 of its RFC 7592
    # registration access token, and the metadata as registered (RFC 7591 §3.2.1).
    registration: str = ""
    registration_token_hash: str | None = None
    registered_metadata: dict[str, Any] = field(default_factory=dict)
    # RFC 7523 §2.2, OIDC Core §9 private_key_jwt: the client's public keys (a JWK Set,
    # RFC 7517 §5), inline or where to fetch them (RFC 7591 §2 jwks, jwks_uri). A client
    # with keys authenticates with signed assertions only; it has no secret.
    jwks: dict[str, Any] = field(default_factory=dict)
    jwks_uri: str | None = None
    # RFC 9449 §5.2: every token request must carry a DPoP proof; no Bearer tokens.
    dpop_bound_access_tokens: bool = False

    @property
    def public(self) -> bool:
        """RFC 6749 §2.1: a client that cannot authenticate: no secret and no keys."""
        return self.secret_hash is None and not self.keyed

    @property
    def keyed(self) -> bool:
        """The client authenticates with private_key_jwt (RFC 7523 §2.2)."""
        return bool(self.jwks) or self.jwks_uri is not None

    @property
    def unverified(self) -> bool:
        """Whether the client described itself, unchecked by the operator: its name is
        only what it says it is (the consent page says so)."""
        return self.registration != ""


@dataclass(frozen=True)
class Resource:
    """A protected resource (RFC 8707 §2, an API) that clients ask tokens for with the
    ``resource`` parameter. ``uri`` is its resource indicator: an absolute URI without a
    fragment, the ``aud`` of its access tokens (RFC 9068 §3). ``scopes`` are the scopes it
    defines, which a client may ask for together with it and the consent page lists.
    Access tokens for it are RFC 9068 JWTs unless ``access_token_jwt`` is False, living
    ``access_token_lifetime`` seconds (None: the server's). ``client_id`` names the
    confidential client its server authenticates as, to introspect its tokens
    (``introspection``: whether it may, RFC 7662 §4) and to exchange them (RFC 8693)."""

    uri: str
    scopes: tuple[str, ...] = ()
    name: str = ""
    access_token_jwt: bool = True
    access_token_lifetime: int | None = None
    introspection: bool = True
    client_id: str | None = None
    declared: str = ""  # the config file's entry, hashed, if it declares this resource


@dataclass(frozen=True)
class User:
    """A user. ``record_id`` is random and new with every record made (``replace`` keeps
    it): a user removed and added again under the same name is another person (OIDC Core
    §2: a sub is "never reassigned"), and since a session cookie's fingerprint covers it
    (``credentials_fingerprint``), no session carries over to the new one. A new one for
    the same user signs the user out everywhere (``Server.revoke_sessions``).

    ``subject`` is the ``sub`` of the user's ID tokens, userinfo, introspection and JWT
    access tokens (OIDC Core §2: "A locally unique and never reassigned identifier within
    the Issuer for the End-User"). Storage chooses it when the user is first stored
    (``Storage.add_user``): the username, unless a user ever had that name or subject, in
    which case a new random one (``new_subject``); it never changes after. A record made
    without one carries the username (what storage gives a name never used)."""

    username: str
    password_hash: str
    claims: dict[str, Any] = field(default_factory=dict)
    totp_secret: str | None = None
    record_id: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    declared: str = ""  # the config file's entry, hashed, if it declares this user
    subject: str = ""

    def __post_init__(self) -> None:
        if not self.subject:
            object.__setattr__(self, "subject", self.username)


@dataclass(frozen=True)
class RemovedUser:
    """The tombstone of a removed user, kept for ever (``Storage.remove_user``): its name
    and subject may not become another user's subject, nor a client_id (OIDC Core §2,
    RFC 9700 §4.15.1)."""

    username: str
    subject: str
    removed_at: float


@dataclass(frozen=True)
class AuthorizationCode:
    """An issued code (RFC 6749 §4.1.2), bound to everything the token request must repeat."""

    code_hash: str
    client_id: str
    username: str
    redirect_uri: str
    redirect_uri_required: bool  # it was in the authorization request (RFC 6749 §4.1.3)
    scope: tuple[str, ...]
    code_challenge: str | None
    nonce: str | None
    auth_time: int
    expires_at: float
    amr: tuple[str, ...] = ()  # OIDC Core §2, RFC 8176: how the user signed in
    acr: str | None = None  # OIDC Core §2: the class of that sign-in (ACR_VALUES)
    # OIDC Core §5.5: the claims request parameter, checked ("id_token", "userinfo")
    claims_request: dict[str, Any] = field(default_factory=dict)
    # Front-Channel Logout §3, Back-Channel Logout §2.4: the login session (Session.sid)
    # the code was issued in; None without a browser sign-in (auto-approve).
    sid: str | None = None
    # RFC 8707 §2.1: the resources (Resource.uri) the user authorized the client to reach.
    resources: tuple[str, ...] = ()
    # RFC 9449 §10: the thumbprint of the DPoP key the code may be redeemed with only.
    dpop_jkt: str | None = None


TokenKind = Literal["access", "refresh"]


@dataclass(frozen=True)
class Token:
    """An access or refresh token, kept by hash. ``family_id`` groups every token of one
    grant so that code replay or refresh-token reuse can revoke them together."""

    token_hash: str
    kind: TokenKind
    client_id: str
    username: str | None  # None for client_credentials
    scope: tuple[str, ...]
    issued_at: float
    expires_at: float
    family_id: str
    revoked: bool = False
    # When the user signed in for this grant, for the ID token of a refresh (OIDC Core
    # §12.2); None for client_credentials, and for tokens stored before it was kept.
    auth_time: int | None = None
    amr: tuple[str, ...] = ()  # and how, for the same reason (OIDC Core §2, RFC 8176)
    acr: str | None = None
    # OIDC Core §5.5: the grant's claims request, for userinfo and refreshed ID tokens
    claims_request: dict[str, Any] = field(default_factory=dict)
    sid: str | None = None  # the login session of the grant, for refreshed ID tokens' sid
    # RFC 8707: an access token's audience (its aud, RFC 9068 §3, and introspection's,
    # RFC 7662 §2.2); a refresh token's, every resource granted, which a refresh may
    # narrow (§2.2). Empty: the server's default audience, as before resources.
    audience: tuple[str, ...] = ()
    # RFC 8693 §4.1: the act claim of a token issued by token exchange: who acts for sub.
    actor: dict[str, Any] = field(default_factory=dict)
    # RFC 9449 §6: the JWK thumbprint (RFC 7638) of the DPoP key the token is bound to
    # (cnf.jkt); None for a Bearer token.
    jkt: str | None = None

    def active(self, now: float) -> bool:
        return not self.revoked and now < self.expires_at


DeviceStatus = Literal["pending", "approved", "denied", "redeemed"]


@dataclass(frozen=True)
class DeviceAuthorization:
    """A device authorization request (RFC 8628 §3.1), kept by the hashes of its device
    code and user code. ``status``: pending until the user approves or denies it on the
    /device page (once: §6.1 "user codes ... SHOULD be single use"), redeemed once the
    client has its tokens. ``poll_interval``: the seconds the client must wait between polls,
    grown by slow_down (§3.5); ``polled_at`` its last poll. Who approved and how they
    signed in, for the tokens and the ID token (OIDC Core §2, RFC 8176)."""

    device_code_hash: str
    user_code_hash: str
    client_id: str
    scope: tuple[str, ...]
    expires_at: float
    poll_interval: int = DEVICE_POLL_INTERVAL
    status: DeviceStatus = "pending"
    polled_at: float | None = None
    username: str | None = None
    auth_time: int | None = None
    amr: tuple[str, ...] = ()
    nonce: str | None = None  # echoed in the ID token, if the client sent one
    resources: tuple[str, ...] = ()  # RFC 8707: the resources asked for (Resource.uri)


@dataclass(frozen=True)
class PushedRequest:
    """An authorization request a client pushed (RFC 9126 §2.1), kept by the hash of its
    request_uri until it is used once or expires (§2.2)."""

    request_uri_hash: str
    client_id: str
    params: dict[str, str]
    expires_at: float


@dataclass(frozen=True)
class Grant:
    """What one user has granted one client (RFC 6749 §1.3): the scopes consented to on
    the consent page (None if never: tokens issued by auto-approve or ``issue_tokens``
    come without one), when consent was last given (None if never, or if the store does
    not know), and how many of the pair's access and refresh tokens are active."""

    username: str
    client_id: str
    scopes: frozenset[str] | None
    consented_at: float | None
    access_tokens: int
    refresh_tokens: int


@dataclass(frozen=True)
class LoginSession:
    """A browser's login session as storage keeps it, so that the user can see and end it
    (README "Your account"): ``sid`` is the session cookie's (``Session.sid``); when it
    began, when it was last used (kept at most LAST_USED_INTERVAL stale), the client's
    address as resolved through trusted proxies, its User-Agent (cut short), and when it
    ends by itself. A session whose record is gone is over (``read_session``)."""

    sid: str
    username: str
    created_at: float
    last_used_at: float
    expires_at: float
    address: str = ""
    user_agent: str = ""


@dataclass(frozen=True)
class Passkey:
    """A WebAuthn credential (WebAuthn Level 2 §6.4.1 credential record) a user registered on
    the account page: its id and COSE public key (base64url), the signature counter last
    seen (§6.1.1), a name the user chose, whether it may sign in without a password (it
    verified the user, §6.2.3), and whether it is backed up (synced: a software key, amr
    ``swk``; else ``hwk``, RFC 8176 §2)."""

    credential_id: str
    username: str
    public_key: str
    sign_count: int
    name: str
    created_at: float
    last_used_at: float | None = None
    passwordless: bool = False
    backed_up: bool = False
    transports: tuple[str, ...] = ()


@dataclass(frozen=True)
class SigningKey:
    """A JWS signing key (RFC 7517). ``expires_at`` is None while the key signs; once a
    newer key takes over, it stays published until every token it signed has expired."""

    kid: str
    alg: str  # "RS256" or "ES256"
    private_pem: str
    created_at: float
    expires_at: float | None = None


###############################################################################
# Storage ######################################################################
###############################################################################


class Storage(Protocol):
    """Where codeflow keeps its records. Records in, records out, no policy.

    Secrets arrive here only as hashes. Methods whose names say ``consume`` or
    ``rotate`` must be atomic across every thread and process sharing the store. One
    choice is the store's, as only it can make it atomically: a new user's subject
    (``add_user``), which no user, stored or removed, ever had.
    """

    def add_client(self, client: Client) -> None:
        """Add a client, or replace the one with the same client_id."""
        ...

    def get_client(self, client_id: str) -> Client | None: ...
    def list_clients(self) -> list[Client]: ...

    def count_clients(self, registration: str) -> int:
        """How many stored clients have this ``registration`` (Client.registration)."""
        ...

    def remove_unused_clients(
        self, registration: str, issued_before: float, now: float
    ) -> list[str]:
        """Remove, in one transaction, the clients with this ``registration`` whose
        ``registered_metadata["client_id_issued_at"]`` (RFC 7591 §3.2.1) is before
        ``issued_before`` and that nothing refers to: no consent, and no token, code, device
        authorization or pushed request unexpired at ``now``. Return their client_ids."""
        ...

    def remove_client(self, client_id: str) -> bool:
        """Remove a client and, in the same transaction, every grant to it: its tokens,
        its unredeemed codes, its device authorization and pushed requests and the consents
        users gave it, so that nothing passes to a client registered later under the same
        client_id. The grants go even when the
        client is already gone (a token request that raced the removal may have saved
        one). True if there was a client to remove."""
        ...

    def add_resource(self, resource: Resource) -> None:
        """Add a resource (RFC 8707), or replace the one with the same uri."""
        ...

    def get_resource(self, uri: str) -> Resource | None: ...
    def list_resources(self) -> list[Resource]: ...

    def remove_resource(self, uri: str) -> bool:
        """Remove a resource; True if there was one. Tokens issued for it stay until they
        expire or are revoked: a resource server keeps checking what it was given."""
        ...

    def add_user(self, user: User) -> User:
        """Atomically add a user, or replace the one with the same username, and return
        the user as stored: ``user`` with its subject (OIDC Core §2: sub is "never
        reassigned"). A user replaced keeps its stored subject, whatever ``user.subject``
        says. A new one gets ``user.subject`` (the username, unless the record says
        otherwise) if no user, stored or removed (``removed_users``), has or had that as
        its username or subject; else a ``new_subject()`` of which the same holds. The
        check and the write are one transaction, so processes sharing the store never give
        one subject twice."""
        ...

    def get_user(self, username: str) -> User | None: ...
    def list_users(self) -> list[User]: ...

    def get_user_by_subject(self, subject: str) -> User | None:
        """The stored user whose ``subject`` this is (one at most), if any."""
        ...

    def remove_user(self, username: str, removed_at: float | None = None) -> bool:
        """Remove a user and, in the same transaction, everything of the user's: tokens,
        unredeemed codes and device authorizations, consents, the TOTP steps used,
        recovery codes, passkeys and login sessions, so that nothing passes to a user added
        later under the same name (OIDC Core §2: a sub is "never reassigned"). (Session
        cookies also carry a fingerprint that covers ``User.record_id``, which a new user of
        that name does not share.) The grants go even
        when the user is already gone. In the same transaction, a user that was there
        leaves a tombstone (``RemovedUser``: username, subject and ``removed_at``, the
        time now if None) that is kept for ever, never purged: ``add_user`` gives neither
        name as a subject again. True if there was a user to remove."""
        ...

    def removed_users(self, name: str) -> list[RemovedUser]:
        """The tombstones whose username or subject is ``name``, by ``removed_at``."""
        ...

    def change_credentials(self, user: User) -> bool:
        """Atomically replace the stored user of ``user.username`` with ``user`` (whose
        password or second factor changed), but for its subject, which stays; revoke every
        refresh token the user holds, delete the user's unredeemed codes, device
        authorizations, login sessions and known addresses (RFC 9700 §4.14.2: a security
        event ends the grants made under the old credentials; an address a sign-in with
        them completed from is trusted no longer). False, changing nothing, if there is no
        such user."""
        ...

    def save_code(self, code: AuthorizationCode) -> None: ...

    def consume_code(self, code_hash: str) -> tuple[AuthorizationCode, User | None] | None:
        """Atomically take a code: of N concurrent callers, at most one gets it. It comes
        with the stored user it was issued for (None if there is none now), read at the
        same moment: the token request needs both, and a database server is then asked
        once.

        The store remembers that the code was used, so that a replay can revoke
        the tokens it issued (``revoke_family(code_hash)``).
        """
        ...

    def save_device_authorization(self, device: DeviceAuthorization) -> bool:
        """Add a device authorization request (RFC 8628 §3.1); False, saving nothing, if a
        stored one (expired or not, until purged) has the same user_code_hash or
        device_code_hash: the caller makes another code."""
        ...

    def get_device_authorization(self, user_code_hash: str) -> DeviceAuthorization | None:
        """The device authorization request of a user code, in any status."""
        ...

    def decide_device_authorization(self, decided: DeviceAuthorization, now: float) -> bool:
        """Atomically give the request of ``decided.user_code_hash`` the status
        ("approved" or "denied"), scope, username, auth_time and amr of ``decided``,
        only if it is still pending and unexpired at ``now``; False, changing nothing,
        otherwise: of N concurrent decisions on one user code, at most one is made
        (RFC 8628 §6.1: a user code is used once)."""
        ...

    def poll_device_authorization(
        self, device_code_hash: str, now: float, slow_down: int
    ) -> DeviceAuthorization | None:
        """Atomically note a token request's poll of the device code at ``now`` and return
        the record as it was before it (``polled_at`` the previous poll), or None if there
        is no such device code. A poll less than ``poll_interval`` seconds after the previous
        one adds ``slow_down`` to the stored poll_interval, for this and every later poll
        (RFC 8628 §3.5)."""
        ...

    def redeem_device_authorization(self, device_code_hash: str) -> DeviceAuthorization | None:
        """Atomically mark an approved request redeemed and return it (as approved): of N
        concurrent callers, at most one gets it; None if it is not approved."""
        ...

    def save_pushed_request(self, pushed: PushedRequest) -> None:
        """Store an authorization request a client pushed (RFC 9126 §2.1)."""
        ...

    def consume_pushed_request(self, request_uri_hash: str) -> PushedRequest | None:
        """Atomically take a pushed request: of N concurrent callers, at most one gets it
        (RFC 9126 §4: a request_uri is used once)."""
        ...

    def save_token(self, *tokens: Token, holder: User | None = None) -> bool:
        """Store tokens, in one transaction; a token of a revoked family is stored as
        revoked. With ``holder``, the user record the grant was checked against (the
        tokens' user), store them only while the stored user of that name has its
        subject, password hash and TOTP secret: a removal or a change of credentials
        that committed since the check leaves nothing stored (RFC 9700 §4.14.2; OIDC
        Core §2). True if stored."""
        ...

    def get_token(self, token_hash: str) -> Token | None: ...

    def get_token_and_user(self, token_hash: str) -> tuple[Token, User | None] | None:
        """A token and its stored user (None for a client's own token, or a user stored no
        longer), read together: what a refresh and userinfo need, in one ask."""
        ...

    def rotate_refresh_token(self, old_hash: str, *new: Token) -> bool:
        """Atomically revoke the active refresh token ``old_hash`` and save the ``new``
        tokens (its successor and the access token that comes with it).

        Returns False, saving nothing, when ``old_hash`` is unknown or already revoked:
        of N concurrent rotations of one token, at most one succeeds. Atomic too with
        ``remove_user`` and ``change_credentials``: one that commits after the rotation
        deletes or revokes what it saved, and one before leaves ``old_hash`` gone or
        revoked (so issue_tokens needs no holder check on a refresh; OIDC Core §2, RFC
        9700 §4.14.2).
        """
        ...

    def revoke_token(self, token_hash: str) -> None: ...

    def revoke_family(self, family_id: str) -> bool:
        """Revoke every token of a grant, including any saved after this call. False,
        remembering nothing, if the family is unknown (no token of it, no used code of that
        hash): a random code cannot grow the store, and a replay is told from a guess."""
        ...

    def save_consent(
        self, username: str, client_id: str, scopes: Iterable[str], consented_at: float,
        bound_to: str = "",
    ) -> None:  # fmt: skip
        """Add ``scopes`` to what the user consented to give the client, and remember
        ``consented_at`` as when consent was last given. ``bound_to`` names what the client
        was when the user consented (consent_binding); a consent given under another
        ``bound_to`` is replaced, not added to."""
        ...

    def get_consent(self, username: str, client_id: str, bound_to: str = "") -> frozenset[str]:
        """The scopes the user consented to give the client, if consented under
        ``bound_to``; else none."""
        ...

    def list_grants(
        self, now: float, username: str | None = None, client_id: str | None = None
    ) -> list[Grant]:
        """Every grant of a user to a client, by username then client_id: each pair with a
        stored consent or an active (at ``now``) token, only ``username``'s or
        ``client_id``'s when given. A client_credentials token is no user's grant. One
        consistent snapshot: a grant being revoked meanwhile is listed whole or not at all."""
        ...

    def revoke_grant(self, username: str, client_id: str, now: float) -> bool:
        """Atomically end the grant of ``username`` to ``client_id``, in one transaction:
        delete the consent, revoke every token of the pair and delete its unredeemed codes
        and device authorizations (RFC 7009 §2.1: revoking the grant revokes its tokens),
        so that a refresh-token
        rotation racing it leaves no active token. True if there was a grant to end (a
        consent or an active token, as list_grants finds them)."""
        ...

    def change_record_id(self, username: str, record_id: str) -> bool:
        """Atomically give the user ``record_id``, delete the user's login sessions and change
        nothing else: every login session of the user ends (a session cookie's fingerprint
        covers ``User.record_id`` too) while tokens and consents stay. False, changing
        nothing, if there is no such user."""
        ...

    def record_totp_step(self, username: str, step: int) -> bool:
        """Atomically remember that the user signed in with the TOTP code of time step
        ``step``; False, remembering nothing, if that step or a later one was used before
        (RFC 6238 §5.2: a code must not be accepted twice)."""
        ...

    def spend_budget(self, key: str, now: float, interval: float, burst: int) -> float:
        """Spend one of ``key``'s budget (a rate limit: RFC 6585 §4), a token bucket of
        ``burst`` that gains one back each ``interval`` s: 0 when spent, else the seconds
        until one is there, nothing spent. Kept as the FailureCount of ``key``: ``until``
        the time the budget is whole again (and purge_expired may forget it), ``count``
        the spends since it last was, ``last`` the last. Atomic: of concurrent calls,
        from any process, no more succeed than the budget holds."""
        ...

    def count_failure(self, key: str, now: float, window: float) -> int:
        """Count a failure of ``key`` at ``now`` (a sign-in throttle's count, see
        "Throttling failed sign-ins") and return the consecutive failures: this one and
        those before it, each within ``window`` s of the next (an older count starts
        again at 1). Atomic: concurrent calls, from any process, return distinct counts."""
        ...

    def hold_failures(self, key: str, until: float) -> None:
        """Keep ``key`` shut until ``until`` at least (a later until already kept stays)."""
        ...

    def failures(self, key: str, now: float, window: float) -> FailureCount:
        """The failures of ``key`` as they stand at ``now`` (count 0 once the last is
        ``window`` s old; until stays)."""
        ...

    def clear_failures(self, keys: Sequence[str]) -> None:
        """Forget the failures of ``keys`` (a success)."""
        ...

    def remember_address(self, user: User, address: str, now: float, keep: int) -> None:
        """Note that ``user`` (the record whose credentials a sign-in checked) completed a
        sign-in from ``address`` at ``now`` (the sign-in throttle's known addresses, see
        "Throttling failed sign-ins"), and forget all but the user's ``keep`` most recent
        ones: this one and the others by when the user last signed in from each (latest
        first, ties by address; ``keep`` is the same from call to call, KNOWN_ADDRESSES).
        Atomic: concurrent calls, from any process, leave at most ``keep``. Nothing is
        noted unless a stored user has ``user``'s subject, password hash and TOTP secret
        still: not for one removed meanwhile, nor after change_credentials gave it others
        (RFC 9700 §4.14.2: an address the old credentials signed in from is not trusted)."""
        ...

    def known_address(self, username: str, address: str) -> bool:
        """Whether ``address`` is among the remembered ones of the user named ``username``
        now. They belong to its subject: a user added again under a removed name has
        another (OIDC Core §2: never reassigned) and knows none of the removed one's,
        which remove_user forgets."""
        ...

    def save_login_session(self, session: LoginSession) -> None:
        """Store a login session that has just begun (``LoginSession``)."""
        ...

    def get_login_session(self, sid: str) -> tuple[LoginSession, User | None] | None:
        """A login session and the stored user of its username (None if there is none
        now), read together: every request of a signed-in browser needs both."""
        ...

    def touch_login_session(self, sid: str, last_used_at: float, address: str) -> None:
        """Remember when, and from which address, the session ``sid`` was last used; nothing
        if it is gone."""
        ...

    def list_login_sessions(self, username: str, now: float) -> list[LoginSession]:
        """The user's login sessions that have not expired at ``now``, newest first."""
        ...

    def delete_login_sessions(
        self, username: str, sid: str | None = None, *, keep: str | None = None
    ) -> int:
        """End login sessions of ``username``: the one ``sid``, if it is the user's; without
        ``sid``, every one but ``keep``. Returns how many ended. (``remove_user``,
        ``change_credentials`` and ``change_record_id`` end all of the user's, in their
        own transaction.)"""
        ...

    def set_recovery_codes(self, username: str, code_hashes: Iterable[str]) -> None:
        """Replace the user's recovery codes (their hashes) with ``code_hashes``, in one
        transaction; none removes them."""
        ...

    def consume_recovery_code(self, username: str, code_hash: str) -> bool:
        """Atomically take one of the user's recovery codes: of N concurrent callers with
        the same code, at most one gets True (NIST SP 800-63B §5.1.2.1: a look-up secret
        is used once)."""
        ...

    def recovery_codes_left(self, username: str) -> int: ...

    def save_passkey(self, passkey: Passkey) -> bool:
        """Store a new passkey; False, storing nothing, if a passkey with its credential_id
        is stored already, whoever's it is (WebAuthn Level 2 §7.1 step 22: a credential id
        "not yet registered to any other user"; an authenticator chooses its ids, so
        replacing would let one user overwrite another's passkey)."""
        ...

    def get_passkey(self, credential_id: str) -> Passkey | None: ...

    def list_passkeys(self, username: str) -> list[Passkey]:
        """The user's passkeys, oldest first."""
        ...

    def delete_passkey(self, username: str, credential_id: str) -> bool:
        """Delete the passkey ``credential_id`` if it is the user's; True if it was."""
        ...

    def record_passkey_use(self, credential_id: str, sign_count: int, used_at: float) -> bool:
        """Atomically note a sign-in with the passkey: its new signature counter and when.
        False, changing nothing, if the counter did not grow while either is not 0 (WebAuthn
        §6.1.1: a signal that the authenticator may have been cloned), or if it is gone."""
        ...

    def use_webauthn_challenge(self, challenge_hash: str, expires_at: float) -> bool:
        """Atomically remember until ``expires_at`` that a WebAuthn ceremony's challenge was
        used; False if it was used before: of N concurrent callers, one gets True (WebAuthn
        §13.4.3: challenges are single-use)."""
        ...

    def get_or_add_setting(self, name: str, candidate: str) -> str:
        """Atomically return the stored value of ``name``, storing ``candidate`` if none:
        processes sharing a store agree on one value (the cookie-signing key, say)."""
        ...

    def signing_keys(self) -> list[SigningKey]:
        """Every stored signing key, newest first."""
        ...

    def get_or_add_signing_key(self, candidate: SigningKey) -> SigningKey:
        """Atomically return the current key (``expires_at`` None) of ``candidate.alg``,
        adding ``candidate`` if there is none."""
        ...

    def rotate_signing_key(self, new: SigningKey, retire_until: float) -> None:
        """Atomically add ``new`` and give the current key of its alg ``retire_until``."""
        ...

    def remember_jti(self, key: str, expires_at: float, now: float) -> bool:
        """Atomically remember the one-time identifier ``key`` until ``expires_at``; False,
        changing nothing, if it is remembered and not expired at ``now``: of N concurrent
        callers with one key, at most one gets True. ``key`` is a hash that names its use
        (a DPoP proof's jti, RFC 9449 §11.1; a client assertion's, RFC 7523 §3), so uses
        never collide. An expired entry counts as absent; purge_expired deletes them."""
        ...

    def purge_expired(self, now: float) -> int:
        """Delete expired codes, tokens, signing keys, ended-session records, login
        sessions, used WebAuthn challenges, device authorizations, pushed requests and
        one-time identifiers; return how many went."""
        ...


class MemoryStorage:
    """A thread-safe Storage in this process's memory: for tests, demos and embedding."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, Client] = {}
        self._resources: dict[str, Resource] = {}
        self._users: dict[str, User] = {}
        self._subjects: dict[str, str] = {}  # subject -> username, of the stored users
        self._removed_users: list[RemovedUser] = []  # tombstones, kept for ever
        self._retired: set[str] = set()  # their usernames and subjects
        self._codes: dict[str, AuthorizationCode] = {}
        self._used_codes: dict[str, float] = {}  # code_hash -> expiry, for replay detection
        self._tokens: dict[str, Token] = {}
        self._families: dict[str, set[str]] = {}
        self._revoked_families: set[str] = set()
        # (username, client_id) -> consented scopes, when consent was last given, bound_to
        self._consents: dict[tuple[str, str], tuple[frozenset[str], float, str]] = {}
        self._settings: dict[str, str] = {}
        self._totp_steps: dict[str, int] = {}
        self._failures: dict[str, FailureCount] = {}  # by throttle key
        self._known_addresses: dict[str, dict[str, float]] = {}  # subject: {address: seen_at}
        self._keys: list[SigningKey] = []  # newest first
        self._devices: dict[str, DeviceAuthorization] = {}  # by device_code_hash
        self._user_codes: dict[str, str] = {}  # user_code_hash -> device_code_hash
        self._pushed: dict[str, PushedRequest] = {}
        self._login_sessions: dict[str, LoginSession] = {}
        self._recovery_codes: dict[str, set[str]] = {}
        self._passkeys: dict[str, Passkey] = {}
        self._used_challenges: dict[str, float] = {}  # challenge_hash -> until
        self._jtis: dict[str, float] = {}  # remember_jti: key -> expires_at
        self._jtis_swept = 0  # how many there were after the last sweep of expired ones

    def add_client(self, client: Client) -> None:
        with self._lock:
            self._clients[client.client_id] = client

    def get_client(self, client_id: str) -> Client | None:
        return self._clients.get(client_id)

    def list_clients(self) -> list[Client]:
        return sorted(self._clients.values(), key=lambda c: c.client_id)

    def count_clients(self, registration: str) -> int:
        return sum(c.registration == registration for c in list(self._clients.values()))

    def remove_unused_clients(
        self, registration: str, issued_before: float, now: float
    ) -> list[str]:
        with self._lock:
            used = {client for _, client in self._consents}
            used.update(t.client_id for t in self._tokens.values() if t.expires_at > now)
            used.update(c.client_id for c in self._codes.values() if c.expires_at > now)
            used.update(d.client_id for d in self._devices.values() if d.expires_at > now)
            used.update(p.client_id for p in self._pushed.values() if p.expires_at > now)
            gone = [
                c.client_id for c in self._clients.values()
                if c.registration == registration and c.client_id not in used
                and isinstance(issued := c.registered_metadata.get("client_id_issued_at"),
                               (int, float)) and issued < issued_before
            ]  # fmt: skip
            for client_id in gone:
                del self._clients[client_id]
            return sorted(gone)

    def remove_client(self, client_id: str) -> bool:
        with self._lock:
            self._drop_tokens([h for h, t in self._tokens.items() if t.client_id == client_id])
            self._codes = {h: c for h, c in self._codes.items() if c.client_id != client_id}
            self._consents = {k: v for k, v in self._consents.items() if k[1] != client_id}
            self._drop_devices(lambda d: d.client_id == client_id)
            self._pushed = {h: p for h, p in self._pushed.items() if p.client_id != client_id}
            return self._clients.pop(client_id, None) is not None

    def add_resource(self, resource: Resource) -> None:
        with self._lock:
            self._resources[resource.uri] = resource

    def get_resource(self, uri: str) -> Resource | None:
        return self._resources.get(uri)

    def list_resources(self) -> list[Resource]:
        return sorted(self._resources.values(), key=lambda r: r.uri)

    def remove_resource(self, uri: str) -> bool:
        with self._lock:
            return self._resources.pop(uri, None) is not None

    def add_user(self, user: User) -> User:
        with self._lock:
            stored = self._users.get(user.username)
            if stored is not None:
                subject = stored.subject
            else:
                subject = user.subject
                while self._subject_taken(subject):
                    subject = new_subject()
            user = replace(user, subject=subject)
            self._users[user.username] = user
            self._subjects[subject] = user.username
            return user

    def _subject_taken(self, name: str) -> bool:
        return name in self._users or name in self._subjects or name in self._retired

    def get_user(self, username: str) -> User | None:
        return self._users.get(username)

    def list_users(self) -> list[User]:
        return sorted(self._users.values(), key=lambda u: u.username)

    def get_user_by_subject(self, subject: str) -> User | None:
        username = self._subjects.get(subject)
        return None if username is None else self._users.get(username)

    def remove_user(self, username: str, removed_at: float | None = None) -> bool:
        with self._lock:
            self._drop_tokens([h for h, t in self._tokens.items() if t.username == username])
            self._codes = {h: c for h, c in self._codes.items() if c.username != username}
            self._consents = {k: v for k, v in self._consents.items() if k[0] != username}
            self._drop_devices(lambda d: d.username == username)
            self._totp_steps.pop(username, None)
            self._recovery_codes.pop(username, None)
            self._drop_login_sessions(username)
            self._passkeys = {k: p for k, p in self._passkeys.items() if p.username != username}
            user = self._users.pop(username, None)
            if user is None:
                return False
            del self._subjects[user.subject]
            self._known_addresses.pop(user.subject, None)
            when = time.time() if removed_at is None else removed_at
            self._removed_users.append(RemovedUser(user.username, user.subject, when))
            self._retired.update((user.username, user.subject))
            return True

    def removed_users(self, name: str) -> list[RemovedUser]:
        found = [r for r in self._removed_users if name in (r.username, r.subject)]
        return sorted(found, key=lambda r: r.removed_at)

    def change_credentials(self, user: User) -> bool:
        with self._lock:
            stored = self._users.get(user.username)
            if stored is None:
                return False
            self._users[user.username] = replace(user, subject=stored.subject)
            refresh = [t for t in self._tokens.values()
                       if t.username == user.username and t.kind == "refresh"]  # fmt: skip
            for token in refresh:
                self._tokens[token.token_hash] = replace(token, revoked=True)
            self._codes = {h: c for h, c in self._codes.items() if c.username != user.username}
            self._drop_devices(lambda d: d.username == user.username)
            self._drop_login_sessions(user.username)
            self._known_addresses.pop(stored.subject, None)
            return True

    def _drop_login_sessions(self, username: str, keep: str | None = None) -> int:
        gone = [sid for sid, ls in self._login_sessions.items()
                if ls.username == username and sid != keep]  # fmt: skip
        for sid in gone:
            del self._login_sessions[sid]
        return len(gone)

    def _drop_tokens(self, hashes: list[str]) -> None:
        for h in hashes:
            family = self._tokens.pop(h).family_id
            members = self._families[family]
            members.discard(h)
            if not members:
                del self._families[family]

    def save_code(self, code: AuthorizationCode) -> None:
        with self._lock:
            self._codes[code.code_hash] = code

    def consume_code(self, code_hash: str) -> tuple[AuthorizationCode, User | None] | None:
        with self._lock:
            code = self._codes.pop(code_hash, None)
            if code is None:
                return None
            self._used_codes[code_hash] = code.expires_at
            return code, self._users.get(code.username)

    def _drop_devices(self, which: Callable[[DeviceAuthorization], bool]) -> None:
        for device in [d for d in self._devices.values() if which(d)]:
            del self._devices[device.device_code_hash]
            del self._user_codes[device.user_code_hash]

    def save_device_authorization(self, device: DeviceAuthorization) -> bool:
        with self._lock:
            taken = device.user_code_hash in self._user_codes
            if taken or device.device_code_hash in self._devices:
                return False
            self._devices[device.device_code_hash] = device
            self._user_codes[device.user_code_hash] = device.device_code_hash
            return True

    def get_device_authorization(self, user_code_hash: str) -> DeviceAuthorization | None:
        device_code_hash = self._user_codes.get(user_code_hash)
        return None if device_code_hash is None else self._devices.get(device_code_hash)

    def decide_device_authorization(self, decided: DeviceAuthorization, now: float) -> bool:
        with self._lock:
            stored = self.get_device_authorization(decided.user_code_hash)
            if stored is None or stored.status != "pending" or stored.expires_at <= now:
                return False
            self._devices[stored.device_code_hash] = replace(
                stored, status=decided.status, scope=decided.scope, username=decided.username,
                auth_time=decided.auth_time, amr=decided.amr,
            )  # fmt: skip
            return True

    def poll_device_authorization(
        self, device_code_hash: str, now: float, slow_down: int
    ) -> DeviceAuthorization | None:
        with self._lock:
            device = self._devices.get(device_code_hash)
            if device is None:
                return None
            soon = device.polled_at is not None and now - device.polled_at < device.poll_interval
            interval = device.poll_interval + (slow_down if soon else 0)
            self._devices[device_code_hash] = replace(device, polled_at=now, poll_interval=interval)
            return device

    def redeem_device_authorization(self, device_code_hash: str) -> DeviceAuthorization | None:
        with self._lock:
            device = self._devices.get(device_code_hash)
            if device is None or device.status != "approved":
                return None
            self._devices[device_code_hash] = replace(device, status="redeemed")
            return device

    def save_pushed_request(self, pushed: PushedRequest) -> None:
        with self._lock:
            self._pushed[pushed.request_uri_hash] = pushed

    def consume_pushed_request(self, request_uri_hash: str) -> PushedRequest | None:
        with self._lock:
            return self._pushed.pop(request_uri_hash, None)

    def save_token(self, *tokens: Token, holder: User | None = None) -> bool:
        with self._lock:
            if holder is not None and not self._is_stored(holder):
                return False
            for token in tokens:
                self._save_token(token)
            return True

    def _is_stored(self, user: User) -> bool:
        """Whether the stored user of ``user``'s name is that record, credentials and all."""
        stored = self._users.get(user.username)
        checked = (user.subject, user.password_hash, user.totp_secret)
        return stored is not None and (
            stored.subject, stored.password_hash, stored.totp_secret
        ) == checked

    def _save_token(self, token: Token) -> None:
        if token.family_id in self._revoked_families:
            token = replace(token, revoked=True)
        self._tokens[token.token_hash] = token
        self._families.setdefault(token.family_id, set()).add(token.token_hash)

    def get_token(self, token_hash: str) -> Token | None:
        return self._tokens.get(token_hash)

    def get_token_and_user(self, token_hash: str) -> tuple[Token, User | None] | None:
        token = self._tokens.get(token_hash)
        if token is None:
            return None
        return token, None if token.username is None else self._users.get(token.username)

    def rotate_refresh_token(self, old_hash: str, *new: Token) -> bool:
        with self._lock:
            old = self._tokens.get(old_hash)
            if old is None or old.revoked or old.kind != "refresh":
                return False
            self._tokens[old_hash] = replace(old, revoked=True)
            for token in new:
                self._save_token(token)
            return True

    def revoke_token(self, token_hash: str) -> None:
        with self._lock:
            token = self._tokens.get(token_hash)
            if token is not None:
                self._tokens[token_hash] = replace(token, revoked=True)

    def revoke_family(self, family_id: str) -> bool:
        with self._lock:
            # Only families that exist are remembered, so random codes cannot grow the set.
            if family_id not in self._families and family_id not in self._used_codes:
                return False
            self._revoked_families.add(family_id)
            for h in self._families.get(family_id, ()):
                self._tokens[h] = replace(self._tokens[h], revoked=True)
            return True

    def save_consent(
        self, username: str, client_id: str, scopes: Iterable[str], consented_at: float,
        bound_to: str = "",
    ) -> None:  # fmt: skip
        with self._lock:
            key = (username, client_id)
            granted = self.get_consent(username, client_id, bound_to)
            self._consents[key] = (granted | frozenset(scopes), consented_at, bound_to)

    def get_consent(self, username: str, client_id: str, bound_to: str = "") -> frozenset[str]:
        scopes, _, bound = self._consents.get((username, client_id), (frozenset(), 0.0, ""))
        return scopes if bound == bound_to else frozenset()

    def list_grants(
        self, now: float, username: str | None = None, client_id: str | None = None
    ) -> list[Grant]:
        def wanted(user: str, client: str) -> bool:
            return username in (None, user) and client_id in (None, client)

        with self._lock:
            grants: dict[tuple[str, str], Grant] = {
                key: Grant(*key, scopes, at, 0, 0)
                for key, (scopes, at, _) in self._consents.items()
                if wanted(*key)
            }
            for t in self._tokens.values():
                if t.username is None or not t.active(now) or not wanted(t.username, t.client_id):
                    continue
                key = (t.username, t.client_id)
                grant = grants.get(key) or Grant(*key, None, None, 0, 0)
                grants[key] = replace(
                    grant,
                    access_tokens=grant.access_tokens + (t.kind == "access"),
                    refresh_tokens=grant.refresh_tokens + (t.kind == "refresh"),
                )
            return [grants[key] for key in sorted(grants)]

    def revoke_grant(self, username: str, client_id: str, now: float) -> bool:
        with self._lock:
            found = self._consents.pop((username, client_id), None) is not None
            for t in list(self._tokens.values()):
                if t.username == username and t.client_id == client_id and not t.revoked:
                    found = found or t.active(now)
                    self._tokens[t.token_hash] = replace(t, revoked=True)
            self._codes = {
                h: c for h, c in self._codes.items()
                if (c.username, c.client_id) != (username, client_id)
            }  # fmt: skip
            self._drop_devices(lambda d: (d.username, d.client_id) == (username, client_id))
            return found

    def change_record_id(self, username: str, record_id: str) -> bool:
        with self._lock:
            user = self._users.get(username)
            if user is None:
                return False
            self._users[username] = replace(user, record_id=record_id)
            self._drop_login_sessions(username)
            return True

    def record_totp_step(self, username: str, step: int) -> bool:
        with self._lock:
            if self._totp_steps.get(username, -1) >= step:
                return False
            self._totp_steps[username] = step
            return True

    def spend_budget(self, key: str, now: float, interval: float, burst: int) -> float:
        with self._lock:
            old = self._failures.get(key, FailureCount())
            whole = max(old.until, now) + interval  # when it would be whole after this spend
            if whole - now > burst * interval:
                return whole - now - burst * interval
            count = old.count + 1 if old.until > now else 1
            self._failures[key] = FailureCount(count, now, whole, whole)
            self._bound_failures(now)
            return 0.0

    def count_failure(self, key: str, now: float, window: float) -> int:
        with self._lock:
            old = self._failures.get(key)
            count = old.count + 1 if old and old.last > now - window else 1
            until = old.until if old else 0.0
            self._failures[key] = FailureCount(count, now, until, max(until, now + window))
            self._bound_failures(now)
            return count

    def _bound_failures(self, now: float) -> None:
        # Bounded under a spray of names, as a database need not be: past 4 *
        # THROTTLE_ENTRIES counts, a tenth goes, the fewest failures first (a sprayed
        # name's one), among equals the oldest, and a gate held shut last, so that a
        # spray does not wash out the waits it is under. A gate is a wait with no count
        # of its own (hold_failures); a spent budget's ``until`` (spend_budget) holds
        # nothing until its count is the burst, so it goes by its count as a failure
        # count does: one spend from each of many addresses is a spray too.
        if len(self._failures) > 4 * THROTTLE_ENTRIES:
            kept = self._failures
            worth = {k: (f.until > now and not f.count, f.count, f.last) for k, f in kept.items()}
            for k in sorted(worth, key=worth.__getitem__)[: len(worth) // 10]:
                del kept[k]

    def hold_failures(self, key: str, until: float) -> None:
        with self._lock:
            old = self._failures.get(key, FailureCount())
            self._failures[key] = FailureCount(
                old.count, old.last, max(old.until, until), max(old.expires_at, until)
            )

    def failures(self, key: str, now: float, window: float) -> FailureCount:
        entry = self._failures.get(key, FailureCount())
        return replace(entry, count=0) if entry.last <= now - window else entry

    def clear_failures(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._failures.pop(key, None)

    def remember_address(self, user: User, address: str, now: float, keep: int) -> None:
        with self._lock:
            if not self._is_stored(user):
                return
            seen = self._known_addresses.setdefault(user.subject, {})
            seen[address] = now
            others = sorted(((t, a) for a, t in seen.items() if a != address), reverse=True)
            for _, gone in others[max(keep - 1, 0) :]:
                del seen[gone]

    def known_address(self, username: str, address: str) -> bool:
        user = self._users.get(username)
        return user is not None and address in self._known_addresses.get(user.subject, {})

    def save_login_session(self, session: LoginSession) -> None:
        with self._lock:
            self._login_sessions[session.sid] = session

    def get_login_session(self, sid: str) -> tuple[LoginSession, User | None] | None:
        session = self._login_sessions.get(sid)
        return None if session is None else (session, self._users.get(session.username))

    def touch_login_session(self, sid: str, last_used_at: float, address: str) -> None:
        with self._lock:
            found = self._login_sessions.get(sid)
            if found is not None:
                self._login_sessions[sid] = replace(
                    found, last_used_at=last_used_at, address=address
                )

    def list_login_sessions(self, username: str, now: float) -> list[LoginSession]:
        found = [ls for ls in self._login_sessions.values()
                 if ls.username == username and ls.expires_at > now]  # fmt: skip
        return sorted(found, key=lambda ls: (ls.created_at, ls.sid), reverse=True)

    def delete_login_sessions(
        self, username: str, sid: str | None = None, *, keep: str | None = None
    ) -> int:
        with self._lock:
            if sid is None:
                return self._drop_login_sessions(username, keep)
            found = self._login_sessions.get(sid)
            if found is None or found.username != username:
                return 0
            del self._login_sessions[sid]
            return 1

    def set_recovery_codes(self, username: str, code_hashes: Iterable[str]) -> None:
        with self._lock:
            self._recovery_codes[username] = set(code_hashes)

    def consume_recovery_code(self, username: str, code_hash: str) -> bool:
        with self._lock:
            codes = self._recovery_codes.get(username, set())
            if code_hash not in codes:
                return False
            codes.discard(code_hash)
            return True

    def recovery_codes_left(self, username: str) -> int:
        return len(self._recovery_codes.get(username, ()))

    def save_passkey(self, passkey: Passkey) -> bool:
        with self._lock:
            if passkey.credential_id in self._passkeys:
                return False
            self._passkeys[passkey.credential_id] = passkey
            return True

    def get_passkey(self, credential_id: str) -> Passkey | None:
        return self._passkeys.get(credential_id)

    def list_passkeys(self, username: str) -> list[Passkey]:
        found = [p for p in self._passkeys.values() if p.username == username]
        return sorted(found, key=lambda p: (p.created_at, p.credential_id))

    def delete_passkey(self, username: str, credential_id: str) -> bool:
        with self._lock:
            found = self._passkeys.get(credential_id)
            if found is None or found.username != username:
                return False
            del self._passkeys[credential_id]
            return True

    def record_passkey_use(self, credential_id: str, sign_count: int, used_at: float) -> bool:
        with self._lock:
            found = self._passkeys.get(credential_id)
            if found is None or ((sign_count or found.sign_count) and
                                 sign_count <= found.sign_count):  # fmt: skip
                return False
            self._passkeys[credential_id] = replace(found, sign_count=sign_count,
                                                    last_used_at=used_at)  # fmt: skip
            return True

    def use_webauthn_challenge(self, challenge_hash: str, expires_at: float) -> bool:
        with self._lock:
            if challenge_hash in self._used_challenges:
                return False
            self._used_challenges[challenge_hash] = expires_at
            return True

    def get_or_add_setting(self, name: str, candidate: str) -> str:
        with self._lock:
            return self._settings.setdefault(name, candidate)

    def signing_keys(self) -> list[SigningKey]:
        return list(self._keys)

    def get_or_add_signing_key(self, candidate: SigningKey) -> SigningKey:
        with self._lock:
            for key in self._keys:
                if key.alg == candidate.alg and key.expires_at is None:
                    return key
            self._keys.insert(0, candidate)
            return candidate

    def rotate_signing_key(self, new: SigningKey, retire_until: float) -> None:
        with self._lock:
            self._keys = [new] + [
                replace(k, expires_at=retire_until)
                if k.alg == new.alg and k.expires_at is None
                else k
                for k in self._keys
            ]

    def remember_jti(self, key: str, expires_at: float, now: float) -> bool:
        with self._lock:
            if self._jtis.get(key, now) > now:
                return False
            self._jtis[key] = expires_at
            # Expired entries go whenever the table has doubled since the last sweep, so
            # that it stays bounded by what is unexpired even if nothing calls the purge.
            if len(self._jtis) > 2 * max(self._jtis_swept, 512):
                self._jtis = {k: exp for k, exp in self._jtis.items() if exp > now}
                self._jtis_swept = len(self._jtis)
            return True

    def purge_expired(self, now: float) -> int:
        with self._lock:
            jtis = [k for k, exp in self._jtis.items() if exp <= now]
            for k in jtis:
                del self._jtis[k]
            keys = [k for k in self._keys if k.expires_at is not None and k.expires_at <= now]
            self._keys = [k for k in self._keys if k not in keys]
            counts = [k for k, f in self._failures.items() if f.expires_at <= now]
            for k in counts:
                del self._failures[k]
            logins = [sid for sid, ls in self._login_sessions.items() if ls.expires_at <= now]
            for sid in logins:
                del self._login_sessions[sid]
            challenges = [h for h, until in self._used_challenges.items() if until <= now]
            for h in challenges:
                del self._used_challenges[h]
            codes = [h for h, c in self._codes.items() if c.expires_at <= now]
            used = [h for h, exp in self._used_codes.items() if exp <= now]
            tokens = [h for h, t in self._tokens.items() if t.expires_at <= now]
            for h in codes:
                del self._codes[h]
            for h in used:
                del self._used_codes[h]
            for h in tokens:
                family = self._tokens.pop(h).family_id
                members = self._families[family]
                members.discard(h)
                if not members:
                    del self._families[family]
            self._revoked_families = {
                f for f in self._revoked_families if f in self._families or f in self._used_codes
            }
            devices = len(self._devices)
            self._drop_devices(lambda d: d.expires_at <= now)
            pushed = [h for h, p in self._pushed.items() if p.expires_at <= now]
            for h in pushed:
                del self._pushed[h]
            gone = (len(keys) + len(logins) + len(challenges) + len(codes)
                    + len(used) + len(tokens))  # fmt: skip
            return gone + devices - len(self._devices) + len(pushed) + len(jtis)


# Per-process caches (README "Run several nodes"): a node reads the records that change
# rarely and are read on every request (clients, resources, signing keys) from its own
# memory, at most CACHE_SECONDS old. Their staleness is what a node may miss of a change
# another node made: a removed client, or its new secret, takes effect on every node
# within the bound (at once on the node that made it: a write through a cache forgets
# what it changes); a new signing key signs only once it has been in storage that long,
# so every node publishes it before any node signs with it (signing_key). Users are not
# cached: a password changed, a user removed or sessions ended act at once everywhere.
# A miss is not cached either: a client registered on one node is found on the next at once.
# Nor is a key a JWT names and the cached keys lack: it may be one another node made since
# (a brand-new store's first keys sign at once; nodes' clocks differ), so the keys are read
# again, at most once per KEY_MISS_SECONDS, since anyone can send a JWT under a made-up kid.
CACHE_SECONDS = 5.0
CACHE_ENTRIES = 4096  # clients cached at once; past that the cache starts over
KEY_MISS_SECONDS = 1.0


class CachedStorage:
    """A Storage whose reads of clients, resources and signing keys a process answers
    from memory, at most ``seconds`` old by ``clock``; every other operation, and every
    read it has not cached, goes to ``storage``. Writes through it forget what they change,
    and a read that raced a write does not cache what it read (``_writes``), so this
    process sees its own changes at once."""

    def __init__(self, storage: Storage, seconds: float, clock: Callable[[], float]) -> None:
        self.storage = storage
        self.seconds = seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._writes = 0  # writes through this cache so far
        self._clients: dict[str, tuple[float, Client]] = {}
        self._resources: tuple[float, list[Resource]] | None = None
        self._keys: tuple[float, list[SigningKey]] | None = None
        self._keys_reread_at = -math.inf  # when reread_signing_keys last went to storage

    def __getattr__(self, name: str) -> Any:
        return getattr(self.storage, name)

    def _wrote(self, clients: Iterable[str] = (), resources: bool = False,
               keys: bool = False) -> None:  # fmt: skip
        with self._lock:
            self._writes += 1
            for client_id in clients:
                self._clients.pop(client_id, None)
            if resources:
                self._resources = None
            if keys:
                self._keys = None

    def get_client(self, client_id: str) -> Client | None:
        now = self.clock()
        cached = self._clients.get(client_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        writes = self._writes
        client = self.storage.get_client(client_id)
        if client is not None:
            with self._lock:
                if writes == self._writes:
                    if len(self._clients) >= CACHE_ENTRIES:
                        self._clients.clear()
                    self._clients[client_id] = (now + self.seconds, client)
        return client

    def add_client(self, client: Client) -> None:
        try:
            self.storage.add_client(client)
        finally:
            self._wrote(clients=[client.client_id])

    def remove_client(self, client_id: str) -> bool:
        try:
            return self.storage.remove_client(client_id)
        finally:
            self._wrote(clients=[client_id])

    def remove_unused_clients(
        self, registration: str, issued_before: float, now: float
    ) -> list[str]:
        gone = self.storage.remove_unused_clients(registration, issued_before, now)
        self._wrote(clients=gone)
        return gone

    def list_resources(self) -> list[Resource]:
        now = self.clock()
        cached = self._resources
        if cached is not None and cached[0] > now:
            return list(cached[1])
        writes = self._writes
        resources = self.storage.list_resources()
        with self._lock:
            if writes == self._writes:
                self._resources = (now + self.seconds, resources)
        return list(resources)

    def get_resource(self, uri: str) -> Resource | None:
        return next((r for r in self.list_resources() if r.uri == uri), None)

    def add_resource(self, resource: Resource) -> None:
        try:
            self.storage.add_resource(resource)
        finally:
            self._wrote(resources=True)

    def remove_resource(self, uri: str) -> bool:
        try:
            return self.storage.remove_resource(uri)
        finally:
            self._wrote(resources=True)

    def signing_keys(self) -> list[SigningKey]:
        now = self.clock()
        cached = self._keys
        if cached is not None and cached[0] > now:
            return list(cached[1])
        writes = self._writes
        keys = self.storage.signing_keys()
        with self._lock:
            if writes == self._writes:
                self._keys = (now + self.seconds, keys)
        return list(keys)

    def reread_signing_keys(self) -> list[SigningKey]:
        """The keys as storage has them now, for a kid the cached ones lack; but at most
        once per KEY_MISS_SECONDS, and the cached keys otherwise."""
        now = self.clock()
        with self._lock:
            if now >= self._keys_reread_at + KEY_MISS_SECONDS:
                self._keys_reread_at = now
                self._keys = None
        return self.signing_keys()

    def get_or_add_signing_key(self, candidate: SigningKey) -> SigningKey:
        try:
            return self.storage.get_or_add_signing_key(candidate)
        finally:
            self._wrote(keys=True)

    def rotate_signing_key(self, new: SigningKey, retire_until: float) -> None:
        try:
            self.storage.rotate_signing_key(new, retire_until)
        finally:
            self._wrote(keys=True)

    def purge_expired(self, now: float) -> int:
        try:
            return self.storage.purge_expired(now)
        finally:
            self._wrote(keys=True)


###############################################################################
# The server: configuration and registration ##################################
###############################################################################


def refuse_shared_subject(storage: Storage, name: str, *, user: bool = False) -> None:
    """Raise ValueError if ``name``, a new client_id (or username, with ``user``), is
    already the name of a user (or client); or, for a client_id, a user's subject or the
    username or subject of a removed user (``Storage.removed_users``).

    RFC 9700 §4.15.1: "Authorization servers SHOULD NOT allow clients to influence their
    client_id or any claim that could cause confusion with a genuine resource owner if a
    common namespace for client IDs and user identifiers exists". Ours is common: the sub of
    a client_credentials access token is its client_id (RFC 9068 §2.2), that of a user's
    token the user's subject (the username, unless the name was used before), with the
    same iss, aud and typ either way. Giving clients subjects of their own (a prefix, say)
    would change the sub that resource servers already see for every client; refusing the
    one name that would be ambiguous, at registration and both ways, changes nothing for
    anyone else. A removed user's sub may live on in a relying party's records, so its
    name stays refused. A new username may be a removed user's: the new user gets a new
    subject (``Storage.add_user``). (Names registered before this check are not
    revisited.)
    """
    if user:
        holder = "there is a client named" if storage.get_client(name) else None
    elif storage.get_user(name) is not None:
        holder = "there is a user named"
    elif storage.get_user_by_subject(name) is not None:
        holder = "there is a user whose sub is"
    elif storage.removed_users(name):
        holder = "a removed user had the name or sub"
    else:
        holder = None
    if holder is not None:
        raise ValueError(
            f"cannot use {name!r} as a {'username' if user else 'client_id'}: {holder} "
            f"{name!r}, and the tokens of both would carry sub {name!r} (RFC 9700 §4.15)"
        )


class Server:
    """An authorization server: configuration, storage, and ``.wsgi``, the WSGI app.

    >>> srv = Server(issuer="http://127.0.0.1:8000")
    >>> client = srv.add_client("app", redirect_uris=["http://127.0.0.1:9000/cb"])
    >>> user = srv.add_user("alice", "wonderland")

    ``auto_approve="alice"`` skips login and consent for tests: every authorization
    request is approved at once as alice, or as the user named by ``login_hint``.
    For test suites (see "A fake IdP for test suites"): ``transcript=True`` records every
    exchange (the last ``transcript_limit`` of them), ``test_mode=True`` also opens the
    HTTP control surface, ``internal_url`` is where back-channel clients reach the
    server by another name, and ``password_hashing="fast"`` hashes passwords and client
    secrets in microseconds instead of scrypt's tens of milliseconds (hashes only a
    server in that mode accepts: see hash_password). Behind reverse proxies,
    ``trusted_proxies`` lists their addresses or CIDR networks: from them, and only from
    them, X-Forwarded-For or Forwarded (RFC 7239) give the client's address and scheme
    (see "The WSGI app"). ``passkeys=True`` offers passkeys (WebAuthn) on the account
    and login pages (see "Passkeys"), with the optional webauthn library. Clients that
    register themselves (see their section), off by default:
    ``client_id_metadata_documents=True`` (from ``client_id_metadata_hosts`` only, if
    given), ``registration="open"`` or ``"token"`` (with ``registration_tokens``), at most
    ``max_registered_clients``; the fetches of their documents reach public addresses
    only, and ``fetch_allowed_networks`` (a test suite's loopback), trusting
    ``fetch_ca_file`` besides the system's CAs.
    ``dpop_nonces=True``: DPoP proofs must carry a nonce the server gave (RFC 9449 §8;
    see "Sender-constrained tokens"). ``cache_seconds``: how stale this process's copies
    of clients, resources and signing keys may be (CACHE_SECONDS; 0 over MemoryStorage;
    see CachedStorage and README "Run several nodes").

    The protocol below is plain functions of a Server and the request's parameters;
    this class holds only what they share: configuration, storage, the signer of
    cookies and forms, the failed-sign-in counters, and the test-suite conveniences.
    """

    def __init__(
        self,
        issuer: str | None = None,
        storage: Storage | None = None,
        clock: Callable[[], float] = time.time,
        *,
        auto_approve: str | None = None,
        secret_key: str | bytes | None = None,
        code_lifetime: int = CODE_LIFETIME,
        access_token_lifetime: int = ACCESS_TOKEN_LIFETIME,
        refresh_token_lifetime: int = REFRESH_TOKEN_LIFETIME,
        id_token_lifetime: int = ID_TOKEN_LIFETIME,
        access_token_audience: str | None = None,
        demo: bool = False,
        test_mode: bool = False,
        transcript: bool = False,
        transcript_limit: int = TRANSCRIPT_LIMIT,
        internal_url: str | None = None,
        trusted_proxies: Iterable[str] = (),
        password_hashing: PasswordHashing = "scrypt",  # noqa: S107 -- a mode, not a password
        require_pushed_authorization_requests: bool = False,
        fetch_allowed_networks: Iterable[str] = (),
        fetch_ca_file: str | None = None,
        client_id_metadata_documents: bool = False,
        client_id_metadata_hosts: Iterable[str] = (),
        registration: RegistrationPolicy = "off",
        registration_tokens: Iterable[str] = (),
        max_registered_clients: int = MAX_REGISTERED_CLIENTS,
        passkeys: bool = False,
        dpop_nonces: bool = False,
        cache_seconds: float | None = None,
    ) -> None:
        self._issuer_given = issuer is not None
        self.issuer = (issuer or "http://127.0.0.1").rstrip("/")
        storage = storage if storage is not None else MemoryStorage()
        # How stale this process's reads of clients, resources and keys may be (see
        # CachedStorage): none over MemoryStorage, which no other process shares and
        # whose reads cost what a cache's would.
        if cache_seconds is None:
            cache_seconds = 0.0 if isinstance(storage, MemoryStorage) else CACHE_SECONDS
        self.cache_seconds = cache_seconds
        self.storage: Storage = (
            cast(Storage, CachedStorage(storage, cache_seconds, clock))
            if cache_seconds > 0
            else storage
        )
        self.clock = clock
        self.code_lifetime = code_lifetime
        self.access_token_lifetime = access_token_lifetime
        self.refresh_token_lifetime = refresh_token_lifetime
        self.id_token_lifetime = id_token_lifetime
        # RFC 9068 §3: without a resource indicator, "a default resource indicator".
        self._audience = access_token_audience
        self.demo = demo
        # Reverse proxies whose forwarding headers give the client's address and scheme.
        self.trusted_proxies = proxy_networks(trusted_proxies)
        # RFC 9449 §8: whether DPoP proofs must carry a nonce the server gave (see "DPoP").
        self.dpop_nonces = dpop_nonces
        # Passkeys (WebAuthn) on the account and login pages; they need the issuer's host to
        # stay the same (it is their relying party ID) and the optional webauthn library.
        self.passkeys = passkeys
        # RFC 9126 §5: every client's authorization requests through the PAR endpoint only.
        self.require_pushed_authorization_requests = require_pushed_authorization_requests
        self.login_limiter = LoginLimiter(clock, self.storage)
        self.secret_checks = SecretChecks(clock)
        # client_id and secret hash -> SHA-256 of a verified secret (check_client_secret).
        self.verified_secrets: dict[tuple[str, str], bytes] = {}
        # One key signs cookies and forms; each use has its own salt (itsdangerous).
        # Kept in storage unless given, so that processes sharing a store share sessions.
        key = secret_key or self.storage.get_or_add_setting("secret_key", secrets.token_hex(32))
        self.signer = Signer(key, clock)
        # A fake IdP for test suites (see its section): back-channel endpoints on another
        # base URL, scripted claims, a fault plan, and a transcript when asked for.
        self.internal_url = internal_url.rstrip("/") if internal_url else None
        self.test_mode = test_mode
        self.faults = FaultPlan()
        self.transcript = Transcript(enabled=transcript or test_mode, limit=transcript_limit)
        self.scripted_claims = ScriptedClaims()
        if password_hashing not in PASSWORD_HASHINGS:
            raise ValueError(f"password_hashing must be one of {PASSWORD_HASHINGS}")
        # Read by every hash and check of a password or secret (see hash_password); a
        # server in fast mode says so, as every test convenience does.
        self.password_hashing: PasswordHashing = password_hashing
        if password_hashing == "fast":  # noqa: S105 -- a mode, not a password
            log.warning(
                "codeflow: password_hashing='fast': passwords and client secrets are hashed "
                "for test suites, not with scrypt; never run this in production"
            )
        # Outbound fetches of URLs others choose (see "Outbound fetches"): what they may
        # reach besides public https hosts (test suites' loopback servers), and a cache.
        self.fetch_policy = FetchPolicy(
            proxy_networks(fetch_allowed_networks, "fetch_allowed_networks"), fetch_ca_file
        )
        if self.fetch_policy.allowed_networks:
            log.warning(
                "codeflow: outbound fetches may reach %s (fetch_allowed_networks); never "
                "allow internal networks in production",
                ", ".join(map(str, self.fetch_policy.allowed_networks)),
            )
        self.fetch_cache = FetchCache()
        self.jwks_refetches = RefetchLimiter()  # private_key_jwt keys from a jwks_uri
        # Clients that register themselves (see their section): Client ID Metadata
        # Documents (only from these hosts, if any), and RFC 7591 registration.
        self.client_id_metadata_documents = client_id_metadata_documents
        self.client_id_metadata_hosts = tuple(h.lower() for h in client_id_metadata_hosts)
        if registration not in REGISTRATION_POLICIES:
            raise ValueError(f"registration must be one of {', '.join(REGISTRATION_POLICIES)}")
        self.registration: RegistrationPolicy = registration
        # RFC 7591 §3: the initial access tokens of the "token" policy, kept as hashes.
        self.registration_token_hashes = tuple(token_hash(t) for t in registration_tokens if t)
        if registration == "token" and not self.registration_token_hashes:
            raise ValueError("registration='token' needs registration_tokens (initial access "
                             "tokens, RFC 7591 §3)")  # fmt: skip
        self.max_registered_clients = max_registered_clients
        self.auto_approve = auto_approve
        if demo:
            add_demo(self)
        self.wsgi: WSGIApp = build_wsgi(self)
        if test_mode:
            log.warning(
                "codeflow: TEST MODE: faults can be injected over HTTP at %sfaults and every "
                "request is recorded; never run this in production", CONTROL_PREFIX
            )

    @property
    def auto_approve(self) -> str | None:
        """The user every authorization request is approved as, at once; None: ask."""
        return self._auto_approve

    @auto_approve.setter
    def auto_approve(self, username: str | None) -> None:
        self._auto_approve = username
        if username is None:
            return
        log.warning("codeflow: auto-approve is on: every request is approved as %r", username)
        if self.storage.get_user(username) is None:
            # A real user (without a password), so that its codes, userinfo and
            # introspection behave as any user's.
            self.add_user(username)

    @property
    def secure_cookies(self) -> bool:
        return self.issuer.startswith("https:")

    @property
    def access_token_audience(self) -> str:
        return self._audience or self.issuer

    # -- Clients (RFC 6749 §2) ---------------------------------------------------

    def add_client(
        self,
        client_id: str,
        *,
        client_secret: str | None = None,
        redirect_uris: Iterable[str] = (),
        name: str = "",
        scopes: Iterable[str] = DEFAULT_SCOPES,
        grant_types: Iterable[str] = DEFAULT_GRANT_TYPES,
        require_pkce: bool = True,
        id_token_signed_response_alg: str = "RS256",  # noqa: S107 -- an alg name
        access_token_jwt: bool = False,
        post_logout_redirect_uris: Iterable[str] = (),
        allowed_origins: Iterable[str] = (),
        minimal_id_token: bool = False,
        backchannel_logout_uri: str | None = None,
        backchannel_logout_session_required: bool = False,
        frontchannel_logout_uri: str | None = None,
        frontchannel_logout_session_required: bool = False,
        require_pushed_authorization_requests: bool = False,
        resources: Iterable[str] = (),
        token_exchange: Iterable[str] = (),
        jwks: dict[str, Any] | None = None,
        jwks_uri: str | None = None,
        dpop_bound_access_tokens: bool = False,
        declared: str = "",
    ) -> Client:
        """Register a client, or replace the one with that client_id; without
        ``client_secret`` it is public (RFC 6749 §2.1). A client_id may not be a username
        (see ``refuse_shared_subject``). ``allowed_origins``: web origins, such as
        ``https://app.example``, whose pages may call the token, userinfo and revocation
        endpoints (CORS); a public client's redirect URIs give theirs without it.
        ``minimal_id_token``: ID tokens without the user's claims (userinfo has them).
        ``backchannel_logout_uri``: where logout tokens are POSTed when the user signs out
        (OIDC Back-Channel Logout 1.0); ``frontchannel_logout_uri``: the page the
        signed-out page frames (Front-Channel Logout 1.0); absolute https, or http on a
        loopback address. ``resources``: the resources (RFC 8707) it may ask tokens for
        (none: any registered one); ``token_exchange``: the resources it may get tokens
        for by token exchange (RFC 8693), for a user's token to a resource it serves.
        ``require_pushed_authorization_requests``: its authorization requests only through
        the PAR endpoint (RFC 9126 §6). With ``urn:ietf:params:oauth:grant-type:device_code``
        in ``grant_types``, it may use the device authorization grant (RFC 8628).
        ``jwks`` (a JWK Set of public keys) or ``jwks_uri``: the client authenticates with
        private_key_jwt (RFC 7523 §2.2) instead of a secret. ``dpop_bound_access_tokens``:
        its token requests must carry a DPoP proof (RFC 9449 §5.2), so that all its tokens
        are bound to its key. ``declared``: the config file's entry that declares it
        (load_config), hashed; the CLI edits no declared client."""
        refuse_shared_subject(self.storage, client_id)
        client = Client(
            client_id=client_id,
            redirect_uris=tuple(redirect_uris),
            secret_hash=None,
            name=name,
            scopes=tuple(scopes),
            grant_types=tuple(grant_types),
            require_pkce=require_pkce,
            id_token_signed_response_alg=id_token_signed_response_alg,
            access_token_jwt=access_token_jwt,
            post_logout_redirect_uris=tuple(post_logout_redirect_uris),
            allowed_origins=tuple(allowed_origins),
            minimal_id_token=minimal_id_token,
            backchannel_logout_uri=backchannel_logout_uri,
            backchannel_logout_session_required=backchannel_logout_session_required,
            frontchannel_logout_uri=frontchannel_logout_uri,
            frontchannel_logout_session_required=frontchannel_logout_session_required,
            require_pushed_authorization_requests=require_pushed_authorization_requests,
            resources=tuple(resources),
            token_exchange=tuple(token_exchange),
            jwks=dict(jwks or {}),
            jwks_uri=jwks_uri,
            dpop_bound_access_tokens=dpop_bound_access_tokens,
            declared=declared,
        )
        if client_secret is not None and client.keyed:
            raise ValueError("a client authenticates with a secret or with keys, not both")
        check_client(client, public=client_secret is None and not client.keyed)
        if client_secret is not None:
            secret_hash = hash_password(client_secret, hashing=self.password_hashing)
            client = replace(client, secret_hash=secret_hash)
        self.storage.add_client(client)
        audit("client.added", client=client_id, public=int(client.public))
        return client

    def update_client(self, client_id: str, **changes: Any) -> Client:
        """Change some of a client's settings (``redirect_uris``, ``name``, ``scopes``,
        ``access_token_jwt``, ...: the fields of Client); the rest, its secret too, stays."""
        client = self.storage.get_client(client_id)
        if client is None:
            raise ValueError(f"no client {client_id!r}")
        if {"client_id", "secret_hash"} & set(changes):
            raise ValueError("client_id and the secret cannot be updated (rotate_client_secret)")
        tuples = ("redirect_uris", "scopes", "grant_types", "post_logout_redirect_uris",
                  "allowed_origins", "resources", "token_exchange")  # fmt: skip
        changes = {k: tuple(v) if k in tuples else v for k, v in changes.items()}
        client = replace(client, **changes)
        if client.secret_hash is not None and client.keyed:
            raise ValueError("a client authenticates with a secret or with keys, not both")
        check_client(client, public=client.public)
        self.storage.add_client(client)
        audit("client.changed", client=client_id, changed=" ".join(sorted(changes)))
        return client

    def rotate_client_secret(self, client_id: str) -> str:
        """Give a confidential client a new secret, returned once; the old one stops
        working at once (only the new one's hash is kept)."""
        client = self.storage.get_client(client_id)
        if client is None:
            raise ValueError(f"no client {client_id!r}")
        if client.secret_hash is None:
            kind = "authenticates with keys" if client.keyed else "is a public client"
            raise ValueError(f"{client_id!r} {kind}: it has no secret")
        secret = new_secret()
        secret_hash = hash_password(secret, hashing=self.password_hashing)
        self.storage.add_client(replace(client, secret_hash=secret_hash))
        audit("client.changed", client=client_id, changed="secret")
        return secret

    def remove_client(self, client_id: str) -> bool:
        """Remove a client with its tokens, codes and consents; False if there was none."""
        removed = self.storage.remove_client(client_id)
        if removed:
            audit("client.removed", client=client_id)
        return removed

    # -- Resources (RFC 8707) ------------------------------------------------------

    def add_resource(
        self,
        uri: str,
        *,
        scopes: Iterable[str] = (),
        name: str = "",
        access_token_jwt: bool = True,
        access_token_lifetime: int | None = None,
        introspection: bool = True,
        client_id: str | None = None,
        declared: str = "",
    ) -> Resource:
        """Register a protected resource (an API), or replace the one with that URI: its
        resource indicator (RFC 8707 §2: an absolute URI without fragment), the scopes it
        defines, the name users see on the consent page, its access tokens' format (RFC
        9068 JWT unless ``access_token_jwt=False``) and lifetime in seconds (None: the
        server's), and the confidential client its server authenticates as
        (``client_id``), which may introspect its tokens when ``introspection`` and
        exchange them by the client's ``token_exchange`` policy (RFC 8693). ``declared``:
        as for add_client."""
        resource = Resource(
            uri=uri,
            scopes=tuple(scopes),
            name=name,
            access_token_jwt=access_token_jwt,
            access_token_lifetime=access_token_lifetime,
            introspection=introspection,
            client_id=client_id,
            declared=declared,
        )
        check_resource(resource)
        self.storage.add_resource(resource)
        audit("resource.added", resource=uri)
        return resource

    def update_resource(self, uri: str, **changes: Any) -> Resource:
        """Change some of a resource's settings (``scopes``, ``name``, ``access_token_jwt``,
        ``access_token_lifetime``, ``introspection``, ``client_id``); the URI stays. Tokens
        already issued keep what they were issued with."""
        resource = self.storage.get_resource(uri)
        if resource is None:
            raise ValueError(f"no resource {uri!r}")
        if "uri" in changes:
            raise ValueError("a resource's uri cannot change: add a resource with the new one")
        if "scopes" in changes:
            changes["scopes"] = tuple(changes["scopes"])
        resource = replace(resource, **changes)
        check_resource(resource)
        self.storage.add_resource(resource)
        audit("resource.changed", resource=uri, changed=" ".join(sorted(changes)))
        return resource

    def list_resources(self) -> list[Resource]:
        """Every registered resource, by URI."""
        return self.storage.list_resources()

    def remove_resource(self, uri: str) -> bool:
        """Remove a resource; False if there was none. Clients can no longer ask for it;
        tokens issued for it live until they expire or are revoked."""
        removed = self.storage.remove_resource(uri)
        if removed:
            audit("resource.removed", resource=uri)
        return removed

    # -- Users ---------------------------------------------------------------------

    def add_user(
        self,
        username: str,
        password: str | None = None,
        *,
        claims: dict[str, Any] | None = None,
        totp_secret: str | None = None,
        declared: str = "",
    ) -> User:
        """Register a user, or replace the one with that username; without a password the
        user can only be auto-approved. Returns the user as stored, with its ``subject``:
        the username, unless the name or subject of a removed user (see ``User``).

        With ``totp_secret`` (base32, as ``pyotp.random_base32()`` makes) the user signs
        in with a TOTP code after the password (RFC 6238). A username may not be a
        client_id (see ``refuse_shared_subject``). ``declared``: as for add_client."""
        user = self._user_record(username, password, claims, totp_secret, declared)
        user = self.storage.add_user(user)
        audit("user.added", user=username, totp=int(totp_secret is not None))
        return user

    def _user_record(
        self,
        username: str,
        password: str | None,
        claims: dict[str, Any] | None,
        totp_secret: str | None,
        declared: str,
    ) -> User:
        """The record add_user stores, checked, its password hashed; not stored."""
        refuse_shared_subject(self.storage, username, user=True)
        refuse_empty_password(password)
        if totp_secret is not None:
            pyotp.TOTP(totp_secret).now()  # a malformed secret fails here, not at login
        claims = check_claims(claims if claims is not None else {}, f"user {username!r}")
        hashed = (
            hash_password(password, hashing=self.password_hashing)
            if password is not None else NO_PASSWORD
        )  # fmt: skip
        return User(username, hashed, claims, totp_secret, declared=declared)

    def _user(self, username: str) -> User:
        user = self.storage.get_user(username)
        if user is None:
            raise ValueError(f"unknown user {username!r}")
        return user

    def set_claims(self, username: str, claims: dict[str, Any], *, merge: bool = True) -> User:
        """Set a user's claims (what userinfo answers, OIDC Core §5.3), merged into the
        current ones unless ``merge=False``."""
        claims = check_claims(claims, f"user {username!r}")
        user = self._user(username)
        user = replace(user, claims={**(user.claims if merge else {}), **claims})
        user = self.storage.add_user(user)
        audit("user.changed", user=username, changed="claims")
        return user

    def set_password(self, username: str, password: str) -> User:
        """Change a user's password. The user's sessions end (credentials_fingerprint), and
        so do the refresh tokens and codes issued under the old one (see
        ``Storage.change_credentials``); access tokens run out within their lifetime."""
        refuse_empty_password(password)
        hashed = hash_password(password, hashing=self.password_hashing)
        user = replace(self._user(username), password_hash=hashed)
        return self._change_credentials(user)

    def set_totp(self, username: str, totp_secret: str | None) -> User:
        """Enrol a TOTP second factor (RFC 6238), or remove it with None; as with
        ``set_password``, the user's sessions, refresh tokens and codes end."""
        if totp_secret is not None:
            pyotp.TOTP(totp_secret).now()
        user = replace(self._user(username), totp_secret=totp_secret)
        return self._change_credentials(user)

    def _change_credentials(self, user: User) -> User:
        # RFC 9700 §4.14.2: "Authorization servers MAY revoke refresh tokens automatically in
        # case of a security event, such as: password change". Whoever knew the old password
        # or second factor may hold one; the new credentials and the revocation are one step
        # in storage, so no crash between them leaves such a grant alive.
        if not self.storage.change_credentials(user):
            raise ValueError(f"unknown user {user.username!r}")
        audit("user.changed", user=user.username, changed="credentials")
        return user

    def remove_user(self, username: str) -> bool:
        """Remove a user with the user's tokens, codes, consents and sessions; False if there
        was none. The name and subject are remembered for ever: a user added later under
        that name gets another sub (OIDC Core §2: "never reassigned")."""
        removed = self.storage.remove_user(username, self.clock())
        if removed:
            audit("user.removed", user=username)
        return removed

    def revoke_sessions(self, username: str) -> None:
        """Sign the user out everywhere: every login session ends, on every browser, and
        the next authorization request asks the user to sign in again. What clients were
        granted stays (their refresh tokens, the consents): signing out of the provider is
        not revoking the apps' access; ``revoke_grant`` does that."""
        # A session cookie carries the user's credentials_fingerprint, which covers
        # User.record_id: a new one (random, as every User gets) matches no cookie issued
        # before. Storage changes only that field, so a racing password change is kept.
        if not self.storage.change_record_id(username, secrets.token_urlsafe(12)):
            raise ValueError(f"no user {username!r}")

    # -- Grants: what users gave clients ------------------------------------------

    def list_grants(self, username: str | None = None, client_id: str | None = None) -> list[Grant]:
        """Each user's grant to each client (a consent, active tokens, or both), only
        ``username``'s or ``client_id``'s when given."""
        return self.storage.list_grants(self.clock(), username, client_id)

    def revoke_grant(self, username: str, client_id: str) -> bool:
        """End what ``username`` granted ``client_id``: the consent, every token and the
        unredeemed codes, in one step (RFC 7009 §2.1); False if there was no grant. The
        user stays signed in, and is asked to consent again at the client's next request.
        A resource server that checks RFC 9068 JWT access tokens itself, without
        introspection, accepts them until they expire."""
        return self.storage.revoke_grant(username, client_id, self.clock())

    # -- Tokens and keys --------------------------------------------------------

    def issue_tokens(
        self,
        user: User | str | None,
        client: Client | str,
        scope: str | Iterable[str] = (),
        claims: dict[str, Any] | None = None,
        *,
        resource: str | Iterable[str] = (),
        dpop_jkt: str | None = None,
    ) -> dict[str, Any]:
        """Mint tokens without a browser, as the token endpoint would (for API tests). The
        tokens carry the stored user's subject as sub; for a username no user has, the
        name itself (minting for a user never added is a test's convenience), unless a
        removed user had it: ValueError, as its sub is never reassigned (OIDC Core §2).
        ``resource``: registered resources the access token is for (RFC 8707, its aud).
        ``dpop_jkt``: bind them to the DPoP key of that RFC 7638 thumbprint, as a token
        request with its proof would (RFC 9449 §5: token_type DPoP, cnf.jkt)."""
        if isinstance(client, str):
            found = self.storage.get_client(client)
            if found is None:
                raise ValueError(f"unknown client {client!r}")
            client = found
        username = user.username if isinstance(user, User) else user
        holder = stored = None
        if username is not None:
            stored = self.storage.get_user(username)
            if stored is None and self.storage.removed_users(username):
                raise ValueError(f"no user {username!r}: a removed user had that name or sub")
            holder = stored or User(username, NO_PASSWORD)
        claims = check_claims(claims, "issue_tokens") if claims is not None else None
        uris = split_scope(resource) if isinstance(resource, str) else tuple(resource)
        try:
            audience = known_resources(self.storage, uris)
        except InvalidTarget as err:
            raise ValueError(err.description) from None
        scopes = (split_scope(scope) if isinstance(scope, str) else tuple(scope)) or (
            resource_scopes(audience) or client.scopes
        )
        # As at the token endpoint: OIDC Core §11 offline access decides the refresh token.
        offline = "openid" not in scopes or "offline_access" in scopes
        return issue_tokens(
            self, client, holder, scopes,
            family_id=new_secret(), refresh=holder is not None and offline,
            auth_time=int(self.clock()), claims=claims, audience=audience, jkt=dpop_jkt,
            stored_user=stored is not None,
        )  # fmt: skip

    def next_claims(self, claims: dict[str, Any], *, username: str | None = None) -> None:
        """Put ``claims`` into the next ID token issued (for ``username`` only, if given),
        over the ones it would carry; used once. Queued calls apply in order."""
        self.scripted_claims.add(check_claims(claims, "next_claims"), username)

    def rotate_keys(self) -> list[SigningKey]:
        """Publish new signing keys, which sign from ``cache_seconds`` on (at once over
        MemoryStorage; see rotate_signing_keys)."""
        return rotate_signing_keys(self)

    def purge(self) -> int:
        """Delete expired codes, tokens, keys and ended sessions, and self-registered
        clients never used (UNUSED_REGISTRATION_SECONDS); return how many went."""
        now = self.clock()
        gone = self.storage.purge_expired(now)
        unused = self.storage.remove_unused_clients(
            REGISTERED_DYNAMICALLY, now - UNUSED_REGISTRATION_SECONDS, now
        )
        for client_id in unused:
            audit("client.registration_expired", client=client_id)
        return gone + len(unused)

    # -- Running ---------------------------------------------------------------

    @contextlib.contextmanager
    def running(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve on a free loopback port in a thread; yield the base URL, then stop.

        Unless an issuer was given, the issuer becomes that base URL.
        """
        httpd = make_server(host, port, self.wsgi, ThreadingWSGIServer, QuietHandler)
        url = f"http://{host}:{httpd.server_port}"
        if not self._issuer_given:
            self.issuer = url
            if self.demo:
                add_demo(self)
        thread = threading.Thread(target=httpd.serve_until_stopped, daemon=True)
        thread.start()
        stop_purging = threading.Event()
        purge_forever(self, stop=stop_purging)
        try:
            yield url
        finally:
            stop_purging.set()
            httpd.stop()
            thread.join()
            httpd.server_close()


def refuse_empty_password(password: str | None) -> None:
    """An empty password would sign in a form sent without one (RFC 6749 §3.1 drops empty
    parameters, so a missing field reads as ""). Length and common-password rules for
    passwords users choose belong to the account pages (NIST SP 800-63B §5.1.1.2)."""
    if password is not None and not password:
        raise ValueError("a password cannot be empty")


def check_client(client: Client, *, public: bool) -> None:
    """A client registration that makes sense, else ValueError naming what does not."""
    for uri in (*client.redirect_uris, *client.post_logout_redirect_uris):
        parts = urllib.parse.urlsplit(uri)
        # RFC 6749 §3.1.2: "The redirection endpoint URI MUST be an absolute URI" and
        # "MUST NOT include a fragment component." A native app's private-use scheme has
        # no authority (RFC 8252 §7.1: com.example.app:/oauth2redirect); a web URI has.
        # (A "host:port/path" typed without a scheme parses as scheme "host": refused, as
        # its path does not begin with "/".)
        web = parts.scheme in ("http", "https")
        rooted = bool(parts.netloc) or (not web and parts.path.startswith("/"))
        if not parts.scheme or not rooted or parts.fragment or "#" in uri:
            raise ValueError(f"redirect_uri must be absolute, without fragment: {uri!r}")
    unknown = set(client.grant_types) - set(GRANT_TYPES)
    if unknown:
        raise ValueError(f"unsupported grant types: {sorted(unknown)}")
    if client.id_token_signed_response_alg not in SIGNING_ALGS:
        raise ValueError(f"id_token_signed_response_alg must be one of {SIGNING_ALGS}")
    if public and not client.require_pkce:
        raise ValueError("a public client cannot opt out of PKCE (RFC 9700 §2.1.1)")
    for setting in ("backchannel_logout_uri", "frontchannel_logout_uri"):
        uri = getattr(client, setting)
        # OIDC Back-Channel Logout §2.2: the URI "MUST be an absolute URI" and "MUST NOT
        # include a fragment component" (Front-Channel Logout §2: the same); https, or http
        # where only this machine can listen (loopback, as RFC 8252 §8.3 reasons).
        if uri is not None and not logout_uri_ok(uri):
            raise ValueError(
                f"{setting} must be an absolute https URI (http only on a loopback address), "
                f"without fragment: {uri!r}"
            )
    for uri in (*client.resources, *client.token_exchange):
        if not resource_uri_ok(uri):
            raise ValueError(f"a resource must be an absolute URI without fragment: {uri!r}")
    if client.token_exchange and TOKEN_EXCHANGE not in client.grant_types:
        raise ValueError(f"token_exchange needs the grant type {TOKEN_EXCHANGE} (RFC 8693)")
    check_client_keys(client)
    for origin in client.allowed_origins:
        if web_origin(origin) != origin:
            raise ValueError(
                f"allowed_origins: {origin!r} is not an origin: write scheme://host[:port], "
                "as a browser sends it in Origin (no path, no trailing slash, no default "
                "port, lower case; no wildcard)"
            )


# RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
SCOPE_TOKEN_RE = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def resource_uri_ok(uri: str) -> bool:
    """RFC 8707 §2: a resource "MUST be an absolute URI, as specified by Section 4.3 of
    [RFC3986]", which has a scheme and no fragment ("MUST NOT include a fragment
    component"); nothing outside printable ASCII, so that it cannot smuggle anything into
    a token, a header or a page."""
    if not uri or len(uri) > MAX_PARAM_LENGTH or not re.fullmatch(r"[\x21-\x7e]+", uri):
        return False
    try:
        parts = urllib.parse.urlsplit(uri)
        parts.port  # noqa: B018 -- a bad port raises here
    except ValueError:
        return False
    if "#" in uri or not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9+.-]*", parts.scheme or ""):
        return False
    # An http(s) URI names a host; other schemes (urn:) need only something after ":".
    return bool(parts.netloc) if parts.scheme.lower() in ("http", "https") else bool(parts.path)


def check_resource(resource: Resource) -> None:
    """A resource registration that makes sense, else ValueError naming what does not."""
    if not resource_uri_ok(resource.uri):
        raise ValueError(
            f"a resource must be an absolute URI without fragment (RFC 8707 2): {resource.uri!r}"
        )
    for scope in resource.scopes:
        if not SCOPE_TOKEN_RE.fullmatch(scope):
            raise ValueError(f"resource scope {scope!r} is not a scope token (RFC 6749 3.3)")
    if resource.access_token_lifetime is not None and resource.access_token_lifetime <= 0:
        raise ValueError("access_token_lifetime must be a positive number of seconds")
def check_client_keys(client: Client) -> None:
    """RFC 7591 §2: "jwks" is a JWK Set (RFC 7517 §5) of the client's public keys and
    "jwks_uri" where it is published; "These two parameters MUST NOT both be present".
    Each key must be a public RSA, EC or OKP key (private_key_jwt verifies signatures
    with it; RFC 7517 §9.2: a private key does not belong in a key set one publishes)."""
    if client.jwks and client.jwks_uri is not None:
        raise ValueError("jwks and jwks_uri cannot both be given (RFC 7591 2)")
    if client.jwks_uri is not None:
        # Fetched when the client authenticates, through fetch_json_document (see
        # "Outbound fetches"): here only its form is checked.
        try:
            check_fetch_url(client.jwks_uri)
        except FetchError as err:
            raise ValueError(f"jwks_uri: {err.description}") from None
    if not client.jwks:
        return
    keys = client.jwks.get("keys")
    if not isinstance(keys, list) or not keys or set(client.jwks) != {"keys"}:
        raise ValueError('jwks must be a JWK Set: {"keys": [...]} with at least one key')
    for i, jwk in enumerate(keys):
        owner = f"jwks key {i}"
        try:
            json.dumps(jwk, allow_nan=False)
        except (TypeError, ValueError):
            raise ValueError(f"{owner}: not a JSON object") from None
        algs = jwk_algs(jwk) if isinstance(jwk, dict) else ()
        if not algs:
            raise ValueError(
                f"{owner}: not an RSA, EC (P-256, P-384, P-521) or Ed25519 key, or its alg "
                f"is not one of {', '.join(CLIENT_KEY_ALGS)}"
            )
        public_jwk(jwk, algs[0], owner)


def jwk_algs(jwk: dict[str, Any]) -> tuple[str, ...]:
    """The algorithms of CLIENT_KEY_ALGS a JWK may sign with: its own ``alg`` if it names
    one (RFC 7517 §4.4), else every one its key type and curve fit."""
    if jwk.get("alg") is not None:
        return (jwk["alg"],) if jwk["alg"] in CLIENT_KEY_ALGS else ()
    kty, crv = jwk.get("kty"), jwk.get("crv")
    if kty == "RSA":
        return ("PS256", "PS384", "PS512", "RS256", "RS384", "RS512")
    if kty in ("EC", "OKP") and isinstance(crv, str):
        # RFC 7518 §3.4, RFC 8037 §3.1: each curve signs with one algorithm.
        curves = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "Ed25519": "EdDSA"}
        alg = curves.get(crv)
        return (alg,) if alg is not None and (kty == "OKP") == (alg == "EdDSA") else ()
    return ()


def logout_uri_ok(uri: str) -> bool:
    """An absolute https URI, or http on a loopback address, without fragment."""
    try:
        parts = urllib.parse.urlsplit(uri)
        parts.port  # noqa: B018 -- a bad port raises here
    except ValueError:
        return False
    if not parts.hostname or parts.fragment or "#" in uri:
        return False
    loopback = parts.hostname == "localhost" or (
        (address := ip_address(parts.hostname)) is not None and address.is_loopback
    )
    return parts.scheme == "https" or (parts.scheme == "http" and loopback)


def web_origin(uri: str) -> str | None:
    """The serialized origin of an http(s) URI (HTML §7.1.1: scheme "://" host, and ":"
    port unless it is the scheme's default), as a browser sends it in ``Origin``; None for
    other schemes (a native app's private-use scheme has no web origin)."""
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default) else "")


###############################################################################
# Browser state: sessions, signed forms, CSRF #################################
###############################################################################

# What the server knows of a browser lives in two cookies: the signed login session and
# the CSRF cookie, a signed browser id that every form's token is bound to. The protocol
# functions get it as one explicit Browser value and answer with a Redirect or a Page
# that says how it changes; only the WSGI layer reads and writes the cookies themselves.
#
# Why a page on a sibling origin cannot forge a form (RFC 6749 §10.12, RFC 9700 §4.4):
# cookies ignore ports, and a sibling subdomain can set cookies for its parent, so the
# attacker may plant a CSRF cookie of its choice (on http there is no __Host- prefix to
# stop it; on https there is). Three things defeat that. (1) The browser id is one the
# server signed and set; the server issues a new one when the user signs in, so a value
# planted before sign-in is gone after it. (2) A form's token is bound to the browser id
# *and* to the login session it was shown in: a token the attacker fetched for itself
# names no session or the attacker's, never the victim's, which an attacker cannot read.
# (3) A form is accepted only from our own origin (Fetch Metadata ``Sec-Fetch-Site``, or
# ``Origin`` where a browser sends no metadata; see refuse_cross_site).

SESSION_COOKIE = "codeflow_session"
CSRF_COOKIE = "codeflow_csrf"
DEVICE_COOKIE = "codeflow_device"  # signed: the accounts this browser signed in to
DEVICE_LIFETIME = 90 * 24 * 3600
MAX_DEVICE_ACCOUNTS = 8
# RFC 6265bis §4.1.3.2: a __Host- cookie is Secure, host-only and Path=/, so a sibling
# subdomain cannot plant one; used whenever the issuer is https.
HOST_PREFIX = "__Host-"


@dataclass(frozen=True)
class Session:
    """Who is logged in in this browser, from the signed session cookie."""

    username: str
    auth_time: int
    sid: str = ""  # names the session, so that logout can end it everywhere
    amr: tuple[str, ...] = ()  # RFC 8176 §2: how the user signed in ("pwd", "otp", "mfa")
    # credentials_fingerprint of the user record whose password (and code) were checked:
    # a session started by a check that raced a password change is born ended.
    fingerprint: str = ""


@dataclass(frozen=True)
class Browser:
    """The browser making a request: ``csrf`` is its CSRF cookie (a new one when it sent
    none), ``session`` its login session, ``address`` the client address that failed
    sign-ins are counted against."""

    csrf: str
    session: Session | None = None
    address: str = ""
    # The accounts this browser completed a sign-in to before (its signed device cookie):
    # the account-wide throttling gates do not hold it (OWASP "device cookies").
    devices: frozenset[str] = frozenset()
    user_agent: str = ""  # its User-Agent, cut short: what the account page's sessions show

    @classmethod
    def new(cls, session: Session | None = None, address: str = "") -> Browser:
        """A browser seen for the first time: a fresh CSRF cookie."""
        return cls(secrets.token_urlsafe(16), session, address)

    def with_device(self, username: str) -> frozenset[str]:
        """The accounts of the device cookie once ``username`` signed in here (the last
        MAX_DEVICE_ACCOUNTS)."""
        kept = sorted(self.devices - {username})[-(MAX_DEVICE_ACCOUNTS - 1):]
        return frozenset([*kept, username])


@dataclass(frozen=True)
class Redirect:
    """Send the browser to ``location``; ``session`` starts a login session there,
    ``signed_out`` ends the one it has."""

    location: str
    session: Session | None = None
    signed_out: bool = False


@dataclass(frozen=True)
class Page:
    """An HTML page (see "Pages"); ``signed_out`` ends the browser's login session."""

    title: str
    body: str
    status: int = 200
    signed_out: bool = False
    cookies: tuple[tuple[str, str], ...] = ()  # (name, value) it sets: the demo client's
    retry_after: int = 0  # RFC 9110 §10.2.3: seconds before trying again (with a 429, 503)
    script: str = ""  # an inline script, the only one its CSP allows (form_post_page)
    frames: tuple[str, ...] = ()  # the origins its CSP lets it frame (signed_out_page)
    forward: str | None = None  # where it goes on to once loaded (signed_out_page)
    session: Session | None = None  # a login session it starts (an account page's)


class Signer:
    """Signed values with an expiry for cookies and forms (itsdangerous): one key, and a
    salt per purpose, so that a value signed for one use is worth nothing in another."""

    def __init__(self, key: str | bytes, clock: Callable[[], float]) -> None:
        self._serializer = itsdangerous.URLSafeSerializer(key)
        self._clock = clock

    def dumps(self, payload: dict[str, Any], purpose: str, lifetime: int) -> str:
        # Expiry is checked against our own clock, so tests that move time see it.
        return self._serializer.dumps({**payload, "e": self._clock() + lifetime}, salt=purpose)

    def loads(
        self, value: str | None, purpose: str, *, expired: bool = False
    ) -> dict[str, Any] | None:
        """The payload of a value signed for ``purpose``; None if forged or expired (an
        expired one too with ``expired=True``)."""
        if not value:
            return None
        try:
            payload = self._serializer.loads(value, salt=purpose)
        except itsdangerous.BadData:
            return None
        if not isinstance(payload, dict):
            return None
        if not expired and payload.get("e", 0) <= self._clock():
            return None
        return payload

    def mac(self, message: str) -> str:
        """An HMAC-SHA256 of ``message`` under the signing key, base64url."""
        key = self._serializer.secret_keys[-1]
        return b64url(hmac.new(key, message.encode(), "sha256").digest())

    def browser_id(self) -> str:
        """A new browser id for the CSRF cookie: random, and signed, so that the server
        accepts only ids it issued itself."""
        return self.dumps({"b": secrets.token_urlsafe(16)}, "browser", BROWSER_ID_LIFETIME)

    def csrf_token(self, browser: Browser) -> str:
        """A form's CSRF token: the browser's id and its login session, signed, with an
        expiry (RFC 6749 §10.12: "bind the request to the user-agent's authenticated
        state")."""
        sid = browser.session.sid if browser.session else ""
        return self.dumps({"c": browser.csrf, "s": sid}, "csrf", FORM_LIFETIME)

    def check_csrf(self, token: str | None, browser: Browser) -> bool:
        """The token was made for this browser and, if it has a login session, for that
        session. A browser whose session is gone may go on: the step asks it to sign in."""
        payload = self.loads(token, "csrf")
        if not payload:
            return False
        # compare_digest takes str only when ASCII; cookies may be any latin-1 text.
        expected = str(payload.get("c")).encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(expected, browser.csrf.encode("utf-8", "surrogatepass")):
            return False
        sid = str(payload.get("s", ""))
        return browser.session is None or hmac.compare_digest(sid, browser.session.sid)

    def request(self, params: dict[str, str], purpose: str = "authorize") -> str:
        """The request a form continues, signed for one ``purpose`` (salt): a logout
        form's blob is no authorization request."""
        return self.dumps({"p": params}, purpose, FORM_LIFETIME)

    def request_params(
        self, value: str | None, purpose: str = "authorize", *, expired: bool = False
    ) -> dict[str, str] | None:
        payload = self.loads(value, purpose, expired=expired)
        params = payload.get("p") if payload else None
        return params if isinstance(params, dict) and params else None

    def pending(self, user: User, browser: Browser) -> str:
        """Who typed the right password, for the TOTP step that follows (RFC 6238); bound
        to this browser's CSRF cookie, so it is worth nothing in another browser, and to
        the credentials it was checked against, so a password change voids it."""
        payload = {"u": user.username, "c": browser.csrf, "f": credentials_fingerprint(user)}
        return self.dumps(payload, "otp", OTP_LIFETIME)

    def pending_user(self, value: str | None, browser: Browser) -> tuple[str, str] | None:
        """The username and credentials fingerprint of a pending sign-in."""
        payload = self.loads(value, "otp")
        if not payload or payload.get("c") != browser.csrf:
            return None
        return str(payload["u"]), str(payload.get("f", ""))

    def session_cookie(self, session: Session) -> str:
        """The session cookie, carrying the fingerprint of the credentials its sign-in
        checked (read_session compares it with the user's current ones)."""
        payload = {"u": session.username, "t": session.auth_time, "s": session.sid,
                   "f": session.fingerprint, "a": list(session.amr)}  # fmt: skip
        return self.dumps(payload, "session", SESSION_LIFETIME)


def credentials_fingerprint(user: User) -> str:
    """Changes when the user's password or TOTP secret does, ending older sessions; and
    differs between a removed user and a new one of the same name (``User.record_id``),
    even where the password hash alone would not tell them apart: the same hash restored,
    or no password at all."""
    material = f"{user.password_hash}\0{user.totp_secret or ''}\0{user.record_id}".encode()
    return hashlib.sha256(material).hexdigest()[:16]


# How stale a login session's last use may be in storage: a request writes it at most
# once a minute, so that reading the session stays one primary-key look-up per request.
LAST_USED_INTERVAL = 60
USER_AGENT_LENGTH = 200  # what storage keeps of a User-Agent


def read_session(srv: Server, cookie: str | None, address: str = "") -> Session | None:
    """The signed-in user, unless the session was ended (logout, or from the account page:
    its ``LoginSession`` record is gone), or the user was removed, changed password or
    second factor, or was signed out everywhere (``Server.revoke_sessions``) since signing
    in. Notes the session's use from ``address``, at most once per LAST_USED_INTERVAL."""
    payload = srv.signer.loads(cookie, "session")
    if not payload or "s" not in payload:
        return None
    now = srv.clock()
    record, user = srv.storage.get_login_session(str(payload["s"])) or (None, None)
    if record is None or record.username != payload["u"] or record.expires_at <= now:
        return None
    if user is None or payload.get("f") != credentials_fingerprint(user):
        return None
    if now - record.last_used_at >= LAST_USED_INTERVAL:
        srv.storage.touch_login_session(record.sid, now, address or record.address)
    amr = payload.get("a")
    amr = tuple(str(m) for m in amr) if isinstance(amr, list) else ()
    return Session(payload["u"], payload["t"], payload["s"], amr, str(payload.get("f", "")))


def start_session(
    srv: Server, user: User, browser: Browser, amr: tuple[str, ...], auth_time: int | None = None
) -> Session:
    """Begin the login session of ``user``, as its credentials were checked, signed in by
    the methods ``amr`` (RFC 8176) at ``auth_time`` (now if None): a new sid, and its
    record in storage (``LoginSession``), which replaces this browser's previous one."""
    now = srv.clock()
    session = Session(user.username, int(now) if auth_time is None else auth_time,
                      secrets.token_urlsafe(16), amr, credentials_fingerprint(user))  # fmt: skip
    if browser.session is not None:
        srv.storage.delete_login_sessions(browser.session.username, browser.session.sid)
    record = LoginSession(session.sid, user.username, now, now, now + SESSION_LIFETIME,
                          browser.address, browser.user_agent)  # fmt: skip
    srv.storage.save_login_session(record)
    return session


###############################################################################
# Throttling failed sign-ins (NIST SP 800-63B §5.2.2) ########################
###############################################################################


# NIST SP 800-63B §5.2.2: "the verifier SHALL implement controls to protect against
# online guessing attacks", and it lists ways "to reduce the likelihood that an attacker
# will lock the legitimate claimant out as a result of rate limiting". Here nothing is a
# lock: every refusal is a wait that ends on its own, and no wait caused from other
# addresses applies to an address the user has signed in from. Passwords and TOTP codes
# are throttled alike, each kind with its own counts ("password:alice", "otp:alice"); a
# success resets its own kind only.
#
# 1. Per (account, address): after FAILURES_BEFORE_DELAY consecutive failures from one
#    address, each further failure there makes that address wait FIRST_DELAY, doubling up
#    to MAX_DELAY. It concerns that address alone.
# 2. Per account: consecutive failures from anywhere, until a success. From
#    ACCOUNT_FAILURES_BEFORE_DELAY on, each failure shuts a gate for FIRST_DELAY, doubling
#    up to MAX_ACCOUNT_DELAY (gentle: a quarter of (1)'s cap). Which gate depends on the
#    address, and none is a lock:
#    - an address the account signed in from (the last KNOWN_ADDRESSES; §5.2.2 suggests
#      "accepting only authentication requests that come from a white list of IP addresses
#      from which the subscriber has been successfully authenticated before") passes no
#      gate: only its own (1) applies, so alice signs in from home at once while an
#      attacker elsewhere is kept waiting on her account;
#    - an address that has failed on the account waits at the "suspect" gate;
#    - any other address waits at the "new" gate, which only new addresses' failures
#      shut: an attacker whose addresses have all failed cannot keep a new one out, and
#      holding it shut costs a fresh address every MAX_ACCOUNT_DELAY. Unless that is paid,
#      a user on a new address waits MAX_ACCOUNT_DELAY at most.
# A refused request is answered at once with Retry-After, without checking the secret (no
# scrypt, no TOTP); only checks that ran and failed are counted. Not locking is a choice
# against §5.2.2's "no more than 100" consecutive failures: (2) spreads 100 of them over
# hours, and a lock is exactly what an attacker would use.
#
# The day's guessing budget N on one account, for an attacker with any number of addresses:
#   the gates: 10 checks before they shut, then each admits one per wait: 5 while the wait
#     grows (30, 60, 120, 240, 480 s), then one per 900 s, 96 a day: 10 + 2 * (5 + 96) = 212;
#   addresses the user signed in from, should the attacker share them (KNOWN_ADDRESSES = 4):
#     each 5 + 7 while its wait grows (30 s to 1920 s) + 23 at one an hour = 35, so 140;
#   N ≤ 352 checks a day.
# A TOTP code is one of 10^6, and 3 are accepted per check (one step of drift either way,
# RFC 6238 §5.2), so N checks a day succeed with probability at most N * 3 / 10^6 =
# 352 * 3 / 10^6 ≈ 0.11%, well under 1% (which needs N < 3,334). A password faces the same
# N; each success of the real user resets the count and gives back at most 10 + 2 * 5.
#
# Checks run concurrently. One under way is not yet a failure, so a burst of right answers
# is never refused for it; but a request that would be refused were the checks under way
# on its keys to fail waits for them first (up to CHECK_WAIT s), so that guesses sent in
# parallel get no more checks than guesses sent one after another.
#
# Everything the throttle decides by lives in storage, shared by every process and node on
# it (README "Run several nodes"), each read and written at once:
# - the counts and the gates' waits (Storage.count_failure): each failure is one atomic
#   increment there and each attempt reads the counts it is gated by, so a failure counted
#   on one node shuts the next attempt on any node. A count is forgotten a day after its
#   last failure, and purge_expired deletes it then.
# - the known addresses (Storage.remember_address), the user's, for both kinds of secret:
#   one atomic write when a sign-in completes, read (Storage.known_address) only by an
#   attempt that a gate would hold, so an address a sign-in completed from on one node
#   passes the gates on every node from then on. They belong to the user's subject:
#   remove_user takes them along, and a user added again under the name starts with none
#   (OIDC Core §2: a sub is "never reassigned"); a new password or second factor forgets
#   them (change_credentials), so that after a compromise the attacker's address is not
#   trusted, and the user's own sign-ins make hers known again. A sign-in is remembered
#   only under the credentials it checked, so one that completes while they change is
#   forgotten whichever commits first.
# What stays in this process is the checks under way (Checks), for the waiting above: a
# burst may overshoot by the checks in flight at once on other nodes, since a node waits
# only for its own. An account has an entry only while requests on it are in attempt(),
# so what the process keeps is bounded by its requests in flight, whatever names are
# sprayed. Each entry has its own lock, held over its account's storage reads and writes
# (so that a check waiting for another reads the count with that one's outcome in it):
# sign-ins to different accounts do not wait for each other's round trips.
# IPv6 addresses are counted per /56 (address_group): the low 64 bits are the host's own
# to choose (RFC 4291 §2.5.1), and a site usually has a /56 of /64s, so rotating through
# them gains nothing.


@dataclass
class Attempt:
    """One sign-in attempt under the throttle: ``wait`` > 0 says it was refused, unchecked,
    and for how many seconds; otherwise the caller checks the secret and sets ``ok``."""

    wait: int = 0
    ok: bool | None = None


@dataclass
class Checks:
    """This process's checks under way on one account: ``running`` in all, and per address
    and per gate; ``requests`` in LoginLimiter.attempt on the account, waiting or checking
    (the entry goes with the last of them). ``changed`` is the account's lock and what its
    waiting requests wait on."""

    changed: threading.Condition = field(default_factory=threading.Condition)
    requests: int = 0
    running: int = 0
    addresses: collections.Counter[str] = field(default_factory=collections.Counter)
    gates: collections.Counter[str] = field(default_factory=collections.Counter)


def address_delay(failures: int) -> int:
    """(1): the wait after ``failures`` consecutive ones from one address on one account."""
    return backoff(failures - FAILURES_BEFORE_DELAY, MAX_DELAY)


def account_delay(failures: int) -> int:
    """(2): how long a gate shuts after the account's ``failures``-th consecutive one."""
    return backoff(failures - ACCOUNT_FAILURES_BEFORE_DELAY, MAX_ACCOUNT_DELAY)


def backoff(excess: int, cap: int) -> int:
    """No wait before the allowance is used up, then FIRST_DELAY doubling, up to ``cap``."""
    return 0 if excess < 0 else min(FIRST_DELAY * 2 ** min(excess, 20), cap)


def throttle_key(value: str) -> str:
    """A bounded key: a long username costs no more memory than a short one."""
    if len(value) <= 64:
        return value
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def ip_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
    return ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped else ip


def address_group(address: str) -> str:
    """The address failures are counted against: an IPv6 client's /56 (a site usually has
    a /56 or /48, so fresh /64s cost an attacker nothing), an IPv4-mapped address's IPv4,
    else the address."""
    ip = ip_address(address)  # an IPv4-mapped address is its IPv4 already
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 56), strict=False))
    # The IPv4 address as written for every socket kind (a dual-stack one's ::ffff:a.b.c.d,
    # RFC 4291 §2.5.5.2, is a.b.c.d), so that one client has one count on every node.
    return str(ip) if ip is not None else throttle_key(address)


def failure_key(account: str, address: str = "", gate: str = "") -> str:
    """The storage key of a count: an account's, an (account, address) pair's or an
    account's gate; JSON, so that no username or address can name another's count."""
    return json.dumps([account, address, gate], separators=(",", ":"))


class LoginLimiter:
    """Failed sign-ins per account and per (account, address), counted in storage: the waits
    that slow guessing without locking anyone out (see the section's comment)."""

    GATES = ("new", "suspect")

    def __init__(self, clock: Callable[[], float], storage: Storage) -> None:
        self._clock = clock
        self._storage = storage
        self._lock = threading.Lock()  # over _checks only, never over a storage call
        self._checks: dict[str, Checks] = {}

    def size(self) -> int:
        """How many accounts this process keeps an entry for: those with requests under way."""
        with self._lock:
            return len(self._checks)

    @contextlib.contextmanager
    def attempt(
        self, account: str, address: str, *, user: str | None = None, trusted: bool = False
    ) -> Iterator[Attempt]:
        """Admit one check of ``account``'s secret from ``address``, or refuse it
        (``wait``). The check counts as failed only if the caller sets ``ok = False``.
        ``user``: the name of the user the secret is of, if any; an address it completed
        a sign-in from (Storage.known_address) passes the account-wide gates. ``trusted``:
        the browser completed a sign-in to this account before (its device cookie says
        so), so the account-wide gates do not hold it either. The back-off of its own
        address holds both."""
        account, address = throttle_key(account), address_group(address)
        attempt = Attempt()
        with self._entry(account) as checks:
            with checks.changed:
                gate = self._admit(account, address, user, trusted, checks, attempt)
            if attempt.wait:
                yield attempt
                return
            try:
                yield attempt
            finally:
                with checks.changed:
                    try:
                        self._settle(account, address, gate, checks, attempt.ok)
                    finally:
                        checks.changed.notify_all()

    def remember(self, user: User, address: str) -> None:
        """A sign-in of ``user`` (as its credentials were checked) completed from
        ``address``, second factor and all: its address is one of the user's known ones, on
        every node. Only then: a password step passed by someone without the second factor
        must not push the user's own addresses out."""
        self._storage.remember_address(
            user, address_group(address), self._clock(), KNOWN_ADDRESSES
        )

    @contextlib.contextmanager
    def _entry(self, account: str) -> Iterator[Checks]:
        """The Checks of ``account``, made if need be, for as long as the caller needs it."""
        with self._lock:
            checks = self._checks.get(account)
            if checks is None:
                checks = self._checks[account] = Checks()
            checks.requests += 1
        try:
            yield checks
        finally:
            with self._lock:
                checks.requests -= 1
                if not checks.requests:
                    del self._checks[account]

    def _admit(
        self, account: str, address: str, user: str | None, trusted: bool, checks: Checks,
        attempt: Attempt,
    ) -> str | None:
        """Wait until the check may run and register it in ``checks``, returning the gate
        it passes; or set ``attempt.wait``. Called holding ``checks.changed``."""
        deadline = time.monotonic() + CHECK_WAIT
        known = True if trusted else None  # None: not looked up, a round trip, until needed
        while True:
            now = self._clock()
            pair = self._storage.failures(failure_key(account, address), now, FORGET_FAILURES)
            until = pair.last + address_delay(pair.count) if pair.count else 0.0
            # Would this attempt be refused if the checks under way failed? Then it waits
            # for them rather than run now.
            running = checks.addresses[address]
            busy = bool(running and address_delay(pair.count + running))
            gate = None if known else ("suspect" if pair.count else "new")
            if gate is not None:
                key = failure_key(account, gate=gate)
                shut = self._storage.failures(key, now, FORGET_FAILURES).until
                gate_busy = bool(checks.gates[gate]) and bool(account_delay(
                    self._storage.failures(failure_key(account), now, FORGET_FAILURES).count
                    + checks.running
                ))  # fmt: skip
                if (shut > now or gate_busy) and known is None:
                    known = user is not None and self._storage.known_address(user, address)
                if known:
                    gate = None
                else:
                    until, busy = max(until, shut), busy or gate_busy
            if until > now:
                attempt.wait = math.ceil(until - now)
                return None
            if not busy:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                attempt.wait = 1
                return None
            checks.changed.wait(remaining)
        checks.running += 1
        checks.addresses[address] += 1
        if gate is not None:
            checks.gates[gate] += 1
        return gate

    def _settle(
        self, account: str, address: str, gate: str | None, checks: Checks, ok: bool | None
    ) -> None:
        """Count the check's outcome (None: it did not finish, so it counts for nothing).
        Called holding ``checks.changed``: a check waiting for this one (_admit) reads the
        count with this outcome in it."""
        now = self._clock()
        checks.running -= 1
        checks.addresses[address] -= 1
        if not checks.addresses[address]:  # an entry under steady use keeps no dead keys
            del checks.addresses[address]
        if gate is not None:
            checks.gates[gate] -= 1
        if ok:
            gates = [failure_key(account, gate=name) for name in self.GATES]
            self._storage.clear_failures([failure_key(account, address), failure_key(account),
                                          *gates])  # fmt: skip
        elif ok is not None:
            # The waits follow from the counts, so only the counts and a gate's wait
            # (which depends on the account's count when it shut) are written.
            self._storage.count_failure(failure_key(account, address), now, FORGET_FAILURES)
            count = self._storage.count_failure(failure_key(account), now, FORGET_FAILURES)
            if gate is not None:
                until = now + account_delay(count)
                self._storage.hold_failures(failure_key(account, gate=gate), until)


class SecretChecks:
    """The scrypt runs that client secrets cost, bounded per client and address.

    A client secret is high-entropy (RFC 6749 §10.10: guessing credentials not meant for
    end-users "MUST be less than or equal to 2^(-128)"; ``client add`` makes 256-bit
    ones), so guessing it online is hopeless and wrong ones are not counted against the
    client: that would let anyone lock a client out. What needs bounding is the cost,
    16 MiB and ~100 ms of scrypt per unverified secret: from one address, for one client,
    SECRET_CHECK_BURST runs, then one per SECRET_CHECK_INTERVAL, and no more than
    SECRET_CHECKS_AT_ONCE at a time. A verified secret is cached (check_client_secret),
    so the client itself pays one run per process and afterwards none: wrong secrets are
    then turned away without a run. Concurrent checks of the same secret share one run.
    """

    @dataclass
    class Budget:
        tokens: float
        updated: float
        running: int = 0
        last: float = 0.0  # for _make_room: when the budget was last spent

    @dataclass
    class Flight:
        done: threading.Event = field(default_factory=threading.Event)
        ok: bool = False

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._budgets: dict[tuple[str, str], SecretChecks.Budget] = {}
        self._flights: dict[tuple[str, str, bytes], SecretChecks.Flight] = {}

    def run(
        self, client: Client, address: str, digest: bytes, verify: Callable[[], bool]
    ) -> bool:
        """``verify()`` within the budget of ``client`` at ``address``, once for all the
        concurrent checks of the same secret (``digest``); raise TooManyAttempts beyond."""
        key = (throttle_key(client.client_id), address_group(address))
        flight_key = (client.client_id, client.secret_hash or "", digest)
        with self._lock:
            flight = self._flights.get(flight_key)
            leader = flight is None
            if flight is None:
                wait = self._spend(key)
                if wait:
                    raise TooManyAttempts(
                        f"Too many client authentication attempts. Try again in {wait} s.", wait
                    )
                flight = self._flights[flight_key] = SecretChecks.Flight()
        if not leader:
            if not flight.done.wait(CHECK_WAIT):
                raise TooManyAttempts("Client authentication is busy. Try again.", 1)
            return flight.ok
        try:
            flight.ok = verify()
        finally:
            with self._lock:
                del self._flights[flight_key]
                self._budgets[key].running -= 1
            flight.done.set()
        return flight.ok

    def _spend(self, key: tuple[str, str]) -> int:
        """Take one run from the budget of ``key``: 0, or the seconds until one is left."""
        now = self._clock()
        budget = self._budgets.get(key)
        if budget is None:
            self._make_room(now)
            budget = self._budgets[key] = SecretChecks.Budget(SECRET_CHECK_BURST, now)
        refill = max(now - budget.updated, 0.0) / SECRET_CHECK_INTERVAL
        budget.tokens, budget.updated = min(budget.tokens + refill, SECRET_CHECK_BURST), now
        if budget.running >= SECRET_CHECKS_AT_ONCE:
            return 1
        if budget.tokens < 1:
            return math.ceil((1 - budget.tokens) * SECRET_CHECK_INTERVAL)
        budget.tokens -= 1
        budget.running += 1
        budget.last = now
        return 0

    def _make_room(self, now: float) -> None:
        if len(self._budgets) < THROTTLE_ENTRIES:
            return
        # A full budget is as good as none; then the least recently spent go.
        refilled = SECRET_CHECK_BURST * SECRET_CHECK_INTERVAL
        idle = sorted((b.last, k) for k, b in self._budgets.items() if not b.running)
        full = [k for last, k in idle if last <= now - refilled]
        rest = [k for last, k in idle if last > now - refilled]
        for k in [*full, *rest][: len(self._budgets) - THROTTLE_ENTRIES * 9 // 10]:
            del self._budgets[k]


###############################################################################
# Outbound fetches: documents at URLs that others choose ######################
###############################################################################

# Some URLs the server fetches are chosen by whoever sends a request: a Client ID Metadata
# Document's client_id, a client's jwks_uri. Fetched naively, such a URL makes this server
# a proxy into the network it sits in (server-side request forgery: the cloud metadata
# service at 169.254.169.254, an admin page on 10.0.0.5, the database on localhost), and
# a host that answers slowly or endlessly ties up its threads and memory. So every such
# fetch goes through fetch_json_document, and only through it:
#
# - https only, certificate verified, for the URL's own host name (SNI and Host);
#   plain http only to a loopback address an operator allowed (fetch_allowed_networks,
#   for test suites);
# - the name is resolved once, and every address it resolves to must be public
#   (``ipaddress``'s is_global: no private, loopback, link-local, multicast, reserved
#   or unspecified address, nor an IPv6 address that embeds one: IPv4-mapped, NAT64,
#   6to4, Teredo), unless the operator's fetch_allowed_networks lists it; then the
#   connection goes to an address that was checked, never to the name again, so a DNS
#   answer that changes between the check and the connection (DNS rebinding) is moot;
# - no redirect is followed: a 3xx is an error. A document's identity is its URL (the
#   Client ID Metadata Document's client_id must equal it), and each hop would be one
#   more host to check; a publisher moves a document by publishing the new URL;
# - at most max_bytes of body, and one deadline (FETCH_TIMEOUT) for the whole exchange,
#   from resolving the name to the last byte: a host that drips a byte a second is cut
#   off when it runs out, whatever the socket timeouts would allow;
# - a 200 answer of content type application/json (or application/<x>+json), a JSON
#   value; nothing else is parsed;
# - at most FETCHES_AT_ONCE under way in this process, FETCHES_PER_ADDRESS to one
#   address (an IPv6 /56, address_group: a host has a whole /64 or more to answer from),
#   and FETCHES_PER_REQUESTER on behalf of one requesting address (the client's, behind
#   trusted proxies: requesting_address), so a burst of requests naming slow hosts
#   cannot hold every thread, nor slow hosts on a few addresses every slot, nor one
#   attacker with many slow hosts every slot; requests for one document at once share
#   one fetch (only the first one's requester spends a slot);
# - HTTP caching (RFC 9111 §5.2.2): no-store and no-cache are not cached, max-age is,
#   within FETCH_CACHE_MIN..FETCH_CACHE_MAX seconds; without either, FETCH_CACHE_DEFAULT.
#   A process's cache is stale by FETCH_CACHE_MAX at most; FETCH_CACHE_ENTRIES bound it.

FETCH_TIMEOUT = 5.0  # seconds for a whole fetch: DNS, connect, TLS, headers, body
FETCH_MAX_BYTES = 64 * 1024  # a client's metadata or JWKS is a few KiB
FETCHES_AT_ONCE = 8
FETCHES_PER_ADDRESS = 2  # to one address group at once
FETCHES_PER_REQUESTER = 2  # on behalf of one requesting address group at once
FETCH_CACHE_DEFAULT = 300  # seconds a document without caching headers is reused
FETCH_CACHE_MIN = 30  # max-age below this counts as this (a floor against refetch storms)
FETCH_CACHE_MAX = 24 * 3600
FETCH_CACHE_ENTRIES = 1000
FETCH_URL_LENGTH = 2048
FETCH_SLOTS = threading.BoundedSemaphore(FETCHES_AT_ONCE)
# RFC 6052 §2.1: the NAT64 well-known prefix, whose low 32 bits are an IPv4 address.
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")
IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address


class FetchError(Exception):
    """A document could not be fetched, or is not one we accept; ``description`` says
    why in words fit for an error_description (no address is disclosed beyond the
    URL's own host)."""

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


@dataclass(frozen=True)
class FetchPolicy:
    """What outbound fetches may reach, beyond public addresses over https: the
    networks (CIDR) the operator allows although they are not public, for test suites
    (``fetch_allowed_networks``); plain http is allowed to loopback addresses among them.
    ``ca_file``: certificates to trust besides the system's (a test suite's own CA)."""

    allowed_networks: tuple[IPNetwork, ...] = ()
    ca_file: str | None = None

    def allows(self, address: IPAddress) -> bool:
        return any(address in network for network in self.allowed_networks)


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries, where a router would deliver to it:
    IPv4-mapped (RFC 4291 §2.5.5.2), NAT64 (RFC 6052), 6to4 (RFC 3056), Teredo's
    server or client (RFC 4380)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def public_address(address: IPAddress) -> bool:
    """Whether ``address`` is on the public Internet: not private, loopback, link-local,
    multicast, reserved or unspecified (RFC 6890's special-purpose registries, as
    ``ipaddress`` knows them), nor an IPv6 address that carries such an IPv4 address."""
    inner = embedded_ipv4(address)
    if inner is not None and not public_address(inner):
        return False
    return address.is_global and not (
        address.is_multicast or address.is_reserved or address.is_unspecified
    )


def resolve_checked(host: str, port: int, policy: FetchPolicy, deadline: float) -> list[IPAddress]:
    """Resolve ``host`` once and return its addresses, each public or allowed by the
    policy; FetchError if any is not (a name that resolves to one public and one private
    address is refused whole: which one a connection would get is the resolver's say)."""
    literal = ip_address_literal(host)
    if literal is not None:
        found = [literal]
    else:
        found = [ipaddress.ip_address(a) for a in resolve_within(host, port, deadline)]
    if not found:
        raise FetchError(f"{host} has no address.")
    for address in found:
        if not public_address(address) and not policy.allows(address):
            raise FetchError(
                f"{host} resolves to an address that is not public (private, loopback, "
                "link-local or reserved); such addresses are never fetched."
            )
    return found


def ip_address_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def resolve_within(host: str, port: int, deadline: float) -> list[str]:
    """getaddrinfo has no timeout of its own: it runs in a thread waited for until the
    deadline, after which the fetch gives up (the thread ends when the resolver does)."""
    answer: list[str] = []
    failed: list[str] = []

    def run() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            answer.extend(dict.fromkeys(str(info[4][0]).partition("%")[0] for info in infos))
        except (OSError, UnicodeError) as err:
            failed.append(str(err))

    resolver = threading.Thread(target=run, daemon=True)
    resolver.start()
    resolver.join(max(0.0, deadline - time.monotonic()))
    if resolver.is_alive():
        raise FetchError(f"Resolving {host} took too long.")
    if failed:
        raise FetchError(f"{host} could not be resolved.")
    return answer


class _PinnedConnection(http.client.HTTPSConnection):
    """An HTTP(S) connection to ``address``, a checked address of ``host``: the socket goes
    to the address, while the Host header, the TLS server name (SNI) and the certificate
    check use the host name, as if the name had been resolved here."""

    def __init__(
        self, host: str, port: int, address: IPAddress, tls: ssl.SSLContext | None,
        timeout: float,
    ) -> None:  # fmt: skip
        super().__init__(host, port, timeout=timeout, context=tls)
        self.address = address
        self.tls = tls
        self.raw: socket.socket | None = None

    def connect(self) -> None:
        raw = socket.create_connection((str(self.address), self.port), self.timeout)
        self.raw = raw
        self.sock = self.tls.wrap_socket(raw, server_hostname=self.host) if self.tls else raw

    def cut(self) -> None:
        """End the exchange from another thread (the deadline): a read in progress
        returns at once."""
        sock = self.sock
        with contextlib.suppress(OSError):
            if sock is not None:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


def fetch_json_document(
    srv: Server,
    url: str,
    *,
    max_bytes: int = FETCH_MAX_BYTES,
    hosts: Iterable[str] = (),
    fresh: bool = False,
) -> Any:
    """GET the JSON document at ``url``, a URL that someone other than the operator chose,
    with the defences listed above this function; the parsed JSON value, or FetchError
    saying why not. ``hosts``: if any, the only host names that may be fetched (an
    allowlist of trusted hosts). ``fresh``: skip the cache (a JWKS that lacks a new kid)."""
    allowed = {h.lower().rstrip(".") for h in hosts}
    parts = check_fetch_url(url)
    host = cast(str, parts.hostname)
    if allowed and host not in allowed:
        raise FetchError(f"{host} is not one of the hosts this server fetches documents from.")
    # One entry per URL and size limit: a document cached for a caller that allows more
    # bytes is not handed to one that allows fewer.
    key = f"{max_bytes} {url}"
    cached = None if fresh else srv.fetch_cache.get(key, srv.clock())
    if cached is not None:
        return cached.value
    # Requests for one document at once share one fetch (the first one's), so a burst of
    # users of a new client costs its host one request and holds one slot.
    flight, leader = srv.fetch_cache.board(key)
    if not leader:
        if not flight.done.wait(FETCH_TIMEOUT + 1):
            raise FetchError(f"{host} did not answer within {FETCH_TIMEOUT:g} seconds.")
        if flight.error is not None:
            raise FetchError(flight.error)
        return flight.value
    try:
        requester = requesting_address.get()
        with fetch_slot(f"for {address_group(requester)}" if requester else "",
                        FETCHES_PER_REQUESTER,
                        "Too many documents are being fetched for this address; try again "
                        "shortly."):  # fmt: skip
            if not FETCH_SLOTS.acquire(timeout=1):
                raise FetchError(
                    "Too many documents are being fetched at once; try again shortly."
                )
            try:
                flight.value, lifetime = _fetch(srv.fetch_policy, parts, max_bytes)
            finally:
                FETCH_SLOTS.release()
    except FetchError as err:
        flight.error = err.description
        raise
    finally:
        srv.fetch_cache.land(key)
        flight.done.set()
    if lifetime > 0:
        srv.fetch_cache.put(key, flight.value, srv.clock() + lifetime)
    return flight.value


def check_fetch_url(url: str) -> urllib.parse.SplitResult:
    """An absolute http(s) URL with a host, no userinfo and no fragment, in ASCII."""
    if len(url) > FETCH_URL_LENGTH or not url.isascii() or any(c in url for c in " \t\r\n\\"):
        raise FetchError("The URL is too long, or has characters a URL may not have.")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- a bad port raises here
    except ValueError:
        raise FetchError("The URL does not parse.") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise FetchError("The URL must be an absolute https URL.")
    if "@" in parts.netloc or parts.fragment or "#" in url:
        raise FetchError("The URL may not carry a username, password or fragment.")
    return parts


def _fetch(policy: FetchPolicy, parts: urllib.parse.SplitResult, max_bytes: int) -> tuple[Any, int]:
    deadline = time.monotonic() + FETCH_TIMEOUT
    host = cast(str, parts.hostname)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = resolve_checked(host, port, policy, deadline)
    if parts.scheme == "http" and not all(a.is_loopback and policy.allows(a) for a in addresses):
        raise FetchError("The URL must be an https URL.")
    tls = None
    if parts.scheme == "https":
        tls = ssl.create_default_context(cafile=policy.ca_file)
    target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    last_error = "it could not be reached"
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        with fetch_slot(fetch_target_key(address), FETCHES_PER_ADDRESS,
                        f"{host} is being fetched from already; try again shortly."):  # fmt: skip
            found = _fetch_from(host, port, address, tls, target, max_bytes, deadline)
        if found is not None:
            return found
        last_error = "it did not answer"
    raise FetchError(f"The document at {host} could not be fetched: {last_error}.")


# The address on whose behalf this thread fetches: the requesting client's, as the WSGI
# layer resolved it behind trusted proxies (_behind_proxies), for every request it
# handles; "" outside a request (the command line), where no per-requester cap applies.
# A context variable rather than a parameter, so that every fetch a request causes
# (find_client's metadata documents, a client's jwks_uri) counts, whoever calls it.
requesting_address: contextvars.ContextVar[str] = contextvars.ContextVar(
    "codeflow_requesting_address", default=""
)
# Fetches under way, by "to <address group>" and "for <requesting address group>".
_FETCHING: collections.Counter[str] = collections.Counter()
_FETCHING_LOCK = threading.Lock()


def fetch_target_key(address: IPAddress) -> str:
    """The fetch_slot key of the fetches to ``address``: its address_group, an IPv6 /56
    (a host answers from any address of its /64, a site's /56 or /48 costs it nothing)."""
    return f"to {address_group(str(address))}"


@contextlib.contextmanager
def fetch_slot(key: str, limit: int, refusal: str) -> Iterator[None]:
    """Hold one of ``key``'s ``limit`` fetches at once for the block, else FetchError
    ``refusal`` at once (not queued: a slot is held for up to FETCH_TIMEOUT). No key: no
    limit."""
    if not key:
        yield
        return
    with _FETCHING_LOCK:
        if _FETCHING[key] >= limit:
            raise FetchError(refusal)
        _FETCHING[key] += 1
    try:
        yield
    finally:
        with _FETCHING_LOCK:
            _FETCHING[key] -= 1
            if not _FETCHING[key]:
                del _FETCHING[key]


def _fetch_from(
    host: str, port: int, address: IPAddress, tls: ssl.SSLContext | None, target: str,
    max_bytes: int, deadline: float,
) -> tuple[Any, int] | None:  # fmt: skip
    """One GET of ``target`` from ``address``: the document, None if the address did not
    answer (the next may), FetchError for anything else."""
    remaining = deadline - time.monotonic()
    connection = _PinnedConnection(host, port, address, tls, remaining)
    # The deadline holds for the whole exchange: at it, the socket is shut, and the
    # read under way (headers or body, however slowly they drip) fails.
    timer = threading.Timer(remaining, connection.cut)
    timer.start()
    response = None
    try:
        connection.request("GET", target, headers={
            "Accept": "application/json", "User-Agent": f"codeflow/{__version__}",
            "Accept-Encoding": "identity",
        })  # fmt: skip
        response = connection.getresponse()
        return _read_document(host, response, max_bytes, deadline)
    except ssl.SSLCertVerificationError:
        raise FetchError(f"{host}'s TLS certificate could not be verified.") from None
    except (OSError, http.client.HTTPException):
        if time.monotonic() >= deadline:
            raise FetchError(
                f"{host} did not answer within {FETCH_TIMEOUT:g} seconds."
            ) from None
        return None
    finally:
        timer.cancel()
        if response is not None:
            response.close()  # it owns the socket once the connection handed it over
        connection.close()


def _read_document(
    host: str, response: http.client.HTTPResponse, max_bytes: int, deadline: float
) -> tuple[Any, int]:
    if 300 <= response.status < 400:
        raise FetchError(f"{host} answered with a redirect (HTTP {response.status}); "
                         "redirects are not followed: use the document's own URL.")  # fmt: skip
    if response.status != 200:
        raise FetchError(f"{host} answered HTTP {response.status} instead of the document.")
    ctype = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
    if ctype != "application/json" and not re.fullmatch(r"application/[\w.+-]+\+json", ctype):
        what = ctype[:60] or "no content type"
        raise FetchError(f"{host} answered {what}, not application/json.")
    length = response.getheader("Content-Length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise FetchError(f"The document at {host} is larger than {max_bytes} bytes.")
    body = bytearray()
    while len(body) <= max_bytes:
        chunk = response.read1(16 * 1024)
        if not chunk:
            break
        body += chunk
    # A read cut at the deadline (see _fetch) ends like the body's end: tell them apart.
    if time.monotonic() >= deadline:
        raise FetchError(f"{host} did not answer within {FETCH_TIMEOUT:g} seconds.")
    if len(body) > max_bytes:
        raise FetchError(f"The document at {host} is larger than {max_bytes} bytes.")
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # deep nesting is RecursionError
        raise FetchError(f"The document at {host} is not JSON.") from None
    return value, cache_lifetime(response.getheader("Cache-Control"))


def cache_lifetime(cache_control: str | None) -> int:
    """RFC 9111 §5.2.2: the seconds a response may be reused: none for no-store or no-cache
    (§5.2.2.5, §5.2.2.4), max-age (§5.2.2.1) within FETCH_CACHE_MIN..FETCH_CACHE_MAX, and
    FETCH_CACHE_DEFAULT without either."""
    lifetime = FETCH_CACHE_DEFAULT
    for directive in (cache_control or "").lower().split(","):
        name, _, value = directive.strip().partition("=")
        if name in ("no-store", "no-cache"):
            return 0
        if name == "max-age" and value.strip('"').isdigit():
            lifetime = min(max(int(value.strip('"')), FETCH_CACHE_MIN), FETCH_CACHE_MAX)
    return lifetime


@dataclass(frozen=True)
class Cached:
    value: Any
    expires_at: float


class FetchCache:
    """Fetched documents by URL (and size limit), until their HTTP lifetime ends
    (cache_lifetime); at most FETCH_CACHE_ENTRIES, the one that expires first going first.
    Values are JSON values the caller must not change."""

    def __init__(self, entries: int = FETCH_CACHE_ENTRIES) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, Cached] = {}
        self._flights: dict[str, FetchCache.Flight] = {}
        self._limit = entries

    def get(self, url: str, now: float) -> Cached | None:
        with self._lock:
            cached = self._entries.get(url)
            if cached is not None and cached.expires_at <= now:
                del self._entries[url]
                return None
            return cached

    def put(self, url: str, value: Any, expires_at: float) -> None:
        with self._lock:
            self._entries[url] = Cached(value, expires_at)
            if len(self._entries) > self._limit:
                first = min(self._entries, key=lambda u: self._entries[u].expires_at)
                del self._entries[first]

    @dataclass
    class Flight:
        """A fetch under way, which later requests for the same document wait for."""

        done: threading.Event = field(default_factory=threading.Event)
        value: Any = None
        error: str | None = None

    def board(self, url: str) -> tuple[FetchCache.Flight, bool]:
        """The fetch of ``url`` under way, and whether the caller is to make it (the
        first), or to wait for it."""
        with self._lock:
            flight = self._flights.get(url)
            if flight is not None:
                return flight, False
            flight = self._flights[url] = FetchCache.Flight()
            return flight, True

    def land(self, url: str) -> None:
        with self._lock:
            self._flights.pop(url, None)



###############################################################################
# Clients that register themselves: Client ID Metadata Documents, RFC 7591, 7592
###############################################################################

# Two ways for a client the operator never heard of to take part (the MCP authorization
# specification's "Client Registration" asks an authorization server for one of them):
#
# - A Client ID Metadata Document (draft-ietf-oauth-client-id-metadata-document): the
#   client_id is an https URL, and the JSON document there is the client's metadata. It is
#   fetched (fetch_json_document, with its SSRF defences) when the client is named, and
#   never stored: the document is the registration, and its host may change it.
# - Dynamic Client Registration (RFC 7591): the client POSTs its metadata to the
#   registration endpoint and gets a client_id (and a secret, for a confidential client),
#   plus a registration access token to read, update and delete the registration (RFC
#   7592). Such clients are stored like the operator's, marked REGISTERED_DYNAMICALLY.
#
# Both are off unless the operator turns them on (Server's client_id_metadata_documents
# and registration; codeflow serve's --client-id-metadata-documents and --registration).
# Neither kind is vouched for by anyone: the consent page shows the name the client gives
# itself as such, with the host that receives the answer, and never skips consent on
# first use (a consent given is reused by the same rule as for every client:
# client_identified). Self-registered clients always use PKCE (RFC 9700 §2.1.1).

REGISTERED_DYNAMICALLY = "dynamic"  # Client.registration of an RFC 7591 registration
REGISTERED_BY_DOCUMENT = "metadata_document"  # of a Client ID Metadata Document's client
RegistrationPolicy: TypeAlias = Literal["off", "open", "token"]
REGISTRATION_POLICIES: tuple[RegistrationPolicy, ...] = ("off", "open", "token")
CLIENT_METADATA_MAX_BYTES = 16 * 1024  # a client's metadata is well under 2 KiB
MAX_REDIRECT_URIS = 20
MAX_METADATA_STRING = 1000  # characters in a name, URI or other metadata value
# An open registration endpoint must not let anyone fill storage: from one address (an
# IPv6 /56, address_group), REGISTRATION_BURST registrations, then one more each
# REGISTRATION_INTERVAL; and, from everywhere together, no more than the server's
# max_registered_clients (MAX_REGISTERED_CLIENTS) self-registered clients at a time.
# An address's budget is in storage (Storage.spend_budget, under REGISTRATION_BUDGET and
# its address group), so that the nodes and worker processes sharing a store share it:
# were it per process, N of them would take N times as many.
REGISTRATION_BURST = 10
REGISTRATION_INTERVAL = 360
REGISTRATION_BUDGET = "registration:"
# A self-registered client nobody has used (no consent, no token, no code under way) is
# removed by the purge once it is this old, so that registrations made and dropped do not
# hold max_registered_clients for ever and close registration. A day: a client registers
# right before it sends its first user to sign in (the MCP flow), and a user who does not
# finish today can start again; a client once consented to is kept. Holding the limit
# full then takes max_registered_clients registrations a day, from max / (REGISTRATION_BURST
# + 86400 / REGISTRATION_INTERVAL) = 40 address groups (IPv6 /56s) registering all day.
UNUSED_REGISTRATION_SECONDS = 24 * 3600
# RFC 7591 §2 / OIDC Registration §2 members this server takes, beside those it maps to
# Client fields; others are ignored (RFC 7591 §2: "The authorization server MUST ignore
# any client metadata sent by the client that it does not understand").
ECHOED_STRINGS = ("client_uri", "logo_uri", "tos_uri", "policy_uri", "software_id",
                  "software_version", "scope")  # fmt: skip
# Members whose promise this server cannot keep for a client it does not know: refused
# with a reason rather than ignored, so the client does not believe them honoured.
REFUSED_METADATA = {
    "jwks": "client keys (private_key_jwt) are not supported for self-registered clients",
    "jwks_uri": "client keys (private_key_jwt) are not supported for self-registered clients",
    "sector_identifier_uri": "pairwise subjects are not supported",
    "request_uris": "request objects are not supported",
    "backchannel_logout_uri": "back-channel logout is not offered to self-registered clients",
    "frontchannel_logout_uri": "front-channel logout is not offered to self-registered clients",
    "id_token_encrypted_response_alg": "encrypted ID tokens are not supported",
    "userinfo_encrypted_response_alg": "encrypted userinfo is not supported",
    "userinfo_signed_response_alg": "signed userinfo is not supported",
}
# RFC 3986 §3.1 scheme syntax; schemes a redirect must never use (script, local files).
URI_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")
# RFC 3986 §2: a URI's characters: unreserved, reserved, and percent-encoded octets (ASCII
# only; an IRI, RFC 3987, is not a URI).
URI_CHARACTERS = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")
UNSAFE_SCHEMES = frozenset(("javascript", "data", "vbscript", "file", "about", "blob",
                            "filesystem", "ftp", "ws", "wss"))  # fmt: skip
SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")  # RFC 6749 §3.3 scope-token


def find_client(srv: Server, client_id: str, *, quiet: bool = False) -> Client | None:
    """The client ``client_id`` names: one registered (by the operator or RFC 7591), or,
    with Client ID Metadata Documents on, the one the document at that URL describes.
    FetchError if that document cannot be had or is not acceptable; None instead with
    ``quiet`` (for the endpoints where such a client is simply unknown)."""
    client = srv.storage.get_client(client_id)
    if client is not None or not srv.client_id_metadata_documents:
        return client
    if not client_id.startswith(("https://", "http://")):
        return None
    try:
        return metadata_document_client(srv, client_id)
    except FetchError:
        if quiet:
            return None
        raise


def metadata_document_client(srv: Server, client_id: str) -> Client:
    """CIMD §4: fetch the client's metadata from its client_id URL and check it."""
    check_client_id_url(client_id)
    document = fetch_json_document(
        srv, client_id, max_bytes=CLIENT_METADATA_MAX_BYTES, hosts=srv.client_id_metadata_hosts
    )
    if not isinstance(document, dict):
        raise FetchError("The client metadata document is not a JSON object.")
    # CIMD §4.1: the document "MUST contain a client_id property whose value MUST match
    # the URL of the document using simple string comparison".
    if document.get("client_id") != client_id:
        raise FetchError("The client metadata document's client_id is not its own URL.")
    # CIMD §4.1: "the token_endpoint_auth_method property MUST NOT include
    # client_secret_post, client_secret_basic, client_secret_jwt, or any other method
    # based around a shared symmetric secret"; "client_secret and client_secret_expires_at
    # MUST NOT be used". With no other method offered here, that leaves none.
    for member in ("client_secret", "client_secret_expires_at"):
        if document.get(member) is not None:
            raise FetchError(f"A client metadata document may not carry {member}.")
    if document.get("token_endpoint_auth_method", "none") != "none":
        raise FetchError(
            "A client metadata document's token_endpoint_auth_method must be none: a "
            "document cannot share a secret."
        )
    try:
        fields = client_metadata(document, secret=False)
    except OAuthError as err:
        raise FetchError(
            f"The client metadata document is not acceptable: {err.description}"
        ) from None
    return Client(client_id=client_id, registration=REGISTERED_BY_DOCUMENT, **fields)


def check_client_id_url(client_id: str) -> None:
    """CIMD §3: a client identifier URL "MUST have an https scheme", "MUST contain a path
    component", "MUST NOT contain single-dot or double-dot path segments", "MUST NOT
    contain a fragment component" and "MUST NOT contain a username or password"."""
    parts = check_fetch_url(client_id)
    if parts.path in ("", "/"):
        raise FetchError("A client_id URL must have a path, such as /client.json.")
    if any(segment in (".", "..") for segment in parts.path.split("/")):
        raise FetchError("A client_id URL may not have . or .. path segments.")


def client_metadata(
    metadata: dict[str, Any], *, secret: bool, vouched: bool = False
) -> dict[str, Any]:
    """RFC 7591 §2: check client metadata and return the Client fields it makes, with
    ``registered_metadata`` (what RFC 7591 §3.2.1 echoes back). ``secret``: whether the
    client may authenticate with a secret (RFC 7591 registration: yes; a metadata
    document: no). ``vouched``: whether the operator vouched for the registration (it
    came with an initial access token), which client_credentials needs. Raises
    InvalidRedirectUri or InvalidClientMetadata (RFC 7591 §3.2.2).
    A member whose value is null counts as absent (RFC 7592 §2.2 treats omitted members as
    null; some client libraries send every member, unset ones as null)."""
    metadata = {name: value for name, value in metadata.items() if value is not None}
    for member, reason in REFUSED_METADATA.items():
        if member in metadata:
            raise InvalidClientMetadata(f"{member}: {reason}.")
    # RFC 7591 §2: "If unspecified or omitted, the default is client_secret_basic".
    default = "client_secret_basic" if secret else "none"
    method = metadata.get("token_endpoint_auth_method", default)
    methods = ("none", "client_secret_basic", "client_secret_post") if secret else ("none",)
    if method not in methods:
        raise InvalidClientMetadata(
            f"token_endpoint_auth_method must be one of {', '.join(methods)}."
        )
    application_type = metadata.get("application_type", "web")
    if application_type not in ("web", "native"):  # OIDC Registration §2
        raise InvalidClientMetadata("application_type must be web or native.")
    # RFC 7591 §2: grant_types defaults to authorization_code, response_types to code;
    # §2.1: the two must agree.
    grant_types = _string_list(metadata, "grant_types", ["authorization_code"])
    allowed = {"authorization_code", "refresh_token"}
    # RFC 6749 §4.4: confidential clients only, acting on their own behalf on resources
    # "previously arranged with the authorization server": with no user to consent, a
    # client anyone registered (open registration) would mint tokens for any resource.
    if method != "none" and vouched:
        allowed.add("client_credentials")
    unsupported = [g for g in grant_types if g not in allowed]
    if unsupported or not grant_types:
        unvouched = " (client_credentials needs an initial access token)" if (
            method != "none" and not vouched and "client_credentials" in unsupported
        ) else ""  # fmt: skip
        raise InvalidClientMetadata(
            f"grant_types may list only {', '.join(sorted(allowed))} for this client"
            f"{unvouched}."
        )
    response_types = _string_list(metadata, "response_types", ["code"])
    if any(r != "code" for r in response_types):
        raise InvalidClientMetadata("response_types may only be code (no implicit grant).")
    if ("authorization_code" in grant_types) != ("code" in response_types):
        raise InvalidClientMetadata(
            "grant_types authorization_code and response_types code go together (RFC 7591 2.1)."
        )
    redirect_uris = _string_list(metadata, "redirect_uris", [])
    if "authorization_code" in grant_types and not redirect_uris:
        raise InvalidRedirectUri("redirect_uris is required for the authorization code grant.")
    if len(redirect_uris) > MAX_REDIRECT_URIS:
        raise InvalidRedirectUri(f"At most {MAX_REDIRECT_URIS} redirect_uris.")
    for uri in redirect_uris:
        check_registered_redirect_uri(uri, native=application_type == "native")
    logout_uris = _string_list(metadata, "post_logout_redirect_uris", [])
    for uri in logout_uris:
        check_registered_redirect_uri(uri, native=application_type == "native")
    name = metadata.get("client_name", "")
    if not isinstance(name, str) or len(name) > 100 or not name.isprintable():
        raise InvalidClientMetadata("client_name must be a printable string of 100 characters.")
    alg = metadata.get("id_token_signed_response_alg", "RS256")
    if alg not in SIGNING_ALGS:
        raise InvalidClientMetadata(
            f"id_token_signed_response_alg must be one of {', '.join(SIGNING_ALGS)}."
        )
    if metadata.get("subject_type", "public") != "public":
        raise InvalidClientMetadata("subject_type must be public.")
    echoed: dict[str, Any] = {
        "redirect_uris": redirect_uris, "token_endpoint_auth_method": method,
        "grant_types": grant_types, "response_types": response_types,
        "application_type": application_type, "id_token_signed_response_alg": alg,
    }  # fmt: skip
    if name:
        echoed["client_name"] = name
    if logout_uris:
        echoed["post_logout_redirect_uris"] = logout_uris
    for member in ECHOED_STRINGS:
        value = metadata.get(member)
        if value is None:
            continue
        if not (isinstance(value, str) and len(value) <= MAX_METADATA_STRING
                and value.isprintable()):  # fmt: skip
            raise InvalidClientMetadata(f"{member} must be a printable string.")
        # Shown or linked, never fetched by this server: https, or http on loopback for a
        # developer's machine, like redirect URIs.
        if member.endswith("_uri") and not logout_uri_ok(value):
            raise InvalidClientMetadata(f"{member} must be an https URL (http on loopback).")
        if member == "scope" and not all(SCOPE_TOKEN.fullmatch(s) for s in split_scope(value)):
            raise InvalidClientMetadata("scope must be scope tokens (RFC 6749 3.3).")
        echoed[member] = value
    contacts = _string_list(metadata, "contacts", [])
    if contacts:
        echoed["contacts"] = contacts
    return {
        "redirect_uris": tuple(redirect_uris),
        "name": name,
        # The registered scope is echoed, not a cap: a self-registered client may ask for
        # any scope the server offers, and the user consents to each.
        "scopes": DEFAULT_SCOPES,
        "grant_types": tuple(grant_types),
        "require_pkce": True,
        "id_token_signed_response_alg": alg,
        "post_logout_redirect_uris": tuple(logout_uris),
        "registered_metadata": echoed,
    }


def _string_list(metadata: dict[str, Any], member: str, default: list[str]) -> list[str]:
    value = metadata.get(member, default)
    # Printable: no control characters, and no lone surrogates, which JSON can carry but
    # UTF-8 (and so storage) cannot.
    if not isinstance(value, list) or len(value) > MAX_REDIRECT_URIS or not all(
        isinstance(v, str) and 0 < len(v) <= MAX_METADATA_STRING and v.isprintable()
        for v in value
    ):
        error = InvalidRedirectUri if member == "redirect_uris" else InvalidClientMetadata
        raise error(
            f"{member} must be an array of at most {MAX_REDIRECT_URIS} printable strings."
        )
    return list(dict.fromkeys(value))


def check_registered_redirect_uri(uri: str, *, native: bool) -> None:
    """A redirect URI a client registers for itself (RFC 7591 §2 redirect_uris):

    - RFC 6749 §3.1.2: absolute, no fragment; RFC 3986 §2: ASCII URI characters only,
      and a host name without percent-encoding, so that the host the consent page shows
      is the one a browser goes to (its URL parser ends a host at a backslash and
      decodes %-escapes in it; an IRI's non-ASCII host may be a homograph);
    - https; or http on a loopback address (127.0.0.1, [::1], or localhost, which only
      this machine answers: RFC 8252 §7.3 for native apps, a developer's web app too);
    - a native app (OIDC Registration §2 application_type) may also use a private-use
      scheme (RFC 8252 §7.1), never one that runs script or reads files."""
    try:
        parts = urllib.parse.urlsplit(uri)
        parts.port  # noqa: B018 -- a bad port raises here
    except ValueError:
        raise InvalidRedirectUri(f"redirect URI does not parse: {uri[:80]}") from None
    if not uri.isprintable() or " " in uri or "#" in uri or not URI_SCHEME.fullmatch(parts.scheme):
        raise InvalidRedirectUri(f"redirect URI must be absolute, without fragment: {uri[:80]}")
    if not URI_CHARACTERS.fullmatch(uri):
        raise InvalidRedirectUri(
            "redirect URI must be a URI of ASCII characters (RFC 3986 2; a host name in "
            f"punycode): {uri[:80]!a}"
        )
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if "%" in parts.netloc:
            raise InvalidRedirectUri(f"redirect URI's host may not be percent-encoded: {uri[:80]}")
        if not parts.hostname or "@" in parts.netloc:
            raise InvalidRedirectUri(f"redirect URI must have a host and no userinfo: {uri[:80]}")
        loopback = parts.hostname in (*LOOPBACK_HOSTS, "localhost")
        if scheme == "http" and not loopback:
            raise InvalidRedirectUri(
                f"redirect URI must be https (http only on a loopback address): {uri[:80]}"
            )
        return
    if not native or scheme in UNSAFE_SCHEMES:
        raise InvalidRedirectUri(
            f"redirect URI scheme {scheme[:20]} is not allowed "
            "(https, http on loopback, or a native app's private-use scheme)."
        )


# -- RFC 7591: the registration endpoint ----------------------------------------------


def registration_access(srv: Server, authorization: str | None) -> None:
    """RFC 7591 §3: with the ``token`` policy, "the client ... MUST present [an initial
    access token] as a Bearer token" (RFC 6750 §2.1), one the operator configured."""
    if srv.registration == "off":
        raise OAuthError("Client registration is not enabled on this server.",
                         error="access_denied", status=403)  # fmt: skip
    if srv.registration == "open":
        return
    presented = token_hash(bearer_token(authorization, None))
    if not any(hmac.compare_digest(presented, h) for h in srv.registration_token_hashes):
        raise InvalidToken("The initial access token is not valid.")


def register_client(
    srv: Server, body: bytes, authorization: str | None, address: str = ""
) -> dict[str, Any]:
    """RFC 7591 §3.1: register a client from its metadata (a JSON object) and answer
    §3.2.1's client information response: the client_id, a client_secret (once, only its
    hash is kept) for a confidential client, the RFC 7592 registration access token and
    registration_client_uri, and the metadata as registered."""
    registration_access(srv, authorization)
    metadata = json_object(body)
    group = REGISTRATION_BUDGET + address_group(address)
    wait = math.ceil(srv.storage.spend_budget(
        group, srv.clock(), REGISTRATION_INTERVAL, REGISTRATION_BURST
    ))  # fmt: skip
    if wait:
        raise TooManyAttempts(f"Too many registrations from this address; try in {wait} s.", wait)
    if srv.storage.count_clients(REGISTERED_DYNAMICALLY) >= srv.max_registered_clients:
        raise TooManyAttempts("This server holds as many registered clients as it may.", 3600)
    fields = client_metadata(metadata, secret=True, vouched=srv.registration == "token")
    client_id = "dcr_" + secrets.token_urlsafe(16)
    refuse_shared_subject(srv.storage, client_id)
    public = fields["registered_metadata"]["token_endpoint_auth_method"] == "none"  # noqa: S105
    secret = None if public else new_secret()
    access_token = new_secret()
    issued_at = int(srv.clock())
    fields["registered_metadata"]["client_id_issued_at"] = issued_at
    client = Client(
        client_id=client_id,
        secret_hash=hash_password(secret, hashing=srv.password_hashing) if secret else None,
        registration=REGISTERED_DYNAMICALLY,
        registration_token_hash=token_hash(access_token),
        **fields,
    )
    checked_registration(client)
    srv.storage.add_client(client)
    audit("client.registered", client=client_id, address=address, public=int(client.public),
          name=client.name or None)  # fmt: skip
    return client_information(srv, client, secret, access_token)


def checked_registration(client: Client) -> None:
    """The checks every client passes (check_client), as RFC 7591 §3.2.2 errors."""
    try:
        check_client(client, public=client.public)
    except ValueError as err:
        raise InvalidClientMetadata(str(err)) from None


def client_information(
    srv: Server, client: Client, secret: str | None, access_token: str | None
) -> dict[str, Any]:
    """RFC 7591 §3.2.1 / RFC 7592 §3: the registration as the client sees it."""
    body: dict[str, Any] = {"client_id": client.client_id, **client.registered_metadata}
    if secret is not None:
        body["client_secret"] = secret
    if not client.public:
        body["client_secret_expires_at"] = 0  # RFC 7591 §3.2.1: REQUIRED; 0: never
    if access_token is not None:
        body["registration_access_token"] = access_token
    body["registration_client_uri"] = registration_client_uri(srv, client.client_id)
    return body


def registration_client_uri(srv: Server, client_id: str) -> str:
    return f"{srv.issuer}{REGISTRATION_PATH}/{urllib.parse.quote(client_id, safe='')}"


def json_object(body: bytes) -> dict[str, Any]:
    """RFC 7591 §3.1: the request is "a JSON document" whose top level is an object."""
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # deep nesting is RecursionError
        raise InvalidClientMetadata("The request body is not JSON (RFC 7591 3.1).") from None
    if not isinstance(value, dict):
        raise InvalidClientMetadata("The client metadata must be a JSON object.")
    return value


# -- RFC 7592: reading, updating and deleting a registration ----------------------------


def registered_client(srv: Server, client_id: str, authorization: str | None) -> Client:
    """RFC 7592 §2: the client whose registration access token this is. "If the client
    does not exist on this server, the server MUST respond with HTTP 401 Unauthorized",
    as for a wrong token: the answer does not tell which client_ids exist."""
    presented = token_hash(bearer_token(authorization, None))
    client = srv.storage.get_client(client_id)
    stored = client.registration_token_hash if client is not None else None
    if client is None or stored is None or not hmac.compare_digest(presented, stored):
        raise InvalidToken("The registration access token is not valid for this client.")
    return client


def read_registration(srv: Server, client_id: str, authorization: str | None) -> dict[str, Any]:
    """RFC 7592 §2.1: the client's current registration (its secret is not shown again:
    only its hash is kept)."""
    return client_information(srv, registered_client(srv, client_id, authorization), None, None)


def update_registration(
    srv: Server, client_id: str, body: bytes, authorization: str | None, address: str = ""
) -> dict[str, Any]:
    """RFC 7592 §2.2: replace the client's metadata with the request's whole: "Omitted
    fields MUST be treated as null or empty values by the server". The request "MUST
    include all client metadata fields", the client_id among them, and a client_secret,
    if sent, must be the current one. A client that starts using a secret gets a new one
    (returned once); one that stops loses it."""
    client = registered_client(srv, client_id, authorization)
    metadata = json_object(body)
    if metadata.get("client_id") != client_id:
        raise InvalidRequest("The request's client_id must be the registration's (RFC 7592 2.2).")
    for member in ("registration_access_token", "registration_client_uri",
                   "client_secret_expires_at", "client_id_issued_at"):  # fmt: skip
        if member in metadata:
            raise InvalidRequest(f"{member} may not be sent in an update (RFC 7592 2.2).")
    given_secret = metadata.get("client_secret")
    if given_secret is not None and not (
        isinstance(given_secret, str) and check_client_secret(srv, client, given_secret, address)
    ):
        raise InvalidRequest("client_secret is not this client's (RFC 7592 2.2).")
    # client_credentials is kept by a client the operator vouched for, never added by an
    # update: the registration access token is the client's, not the operator's.
    vouched = srv.registration == "token" and "client_credentials" in client.grant_types
    fields = client_metadata(metadata, secret=True, vouched=vouched)
    fields["registered_metadata"]["client_id_issued_at"] = client.registered_metadata.get(
        "client_id_issued_at"
    )
    public = fields["registered_metadata"]["token_endpoint_auth_method"] == "none"  # noqa: S105
    secret = new_secret() if not public and client.public else None
    secret_hash = None if public else client.secret_hash
    if secret is not None:
        secret_hash = hash_password(secret, hashing=srv.password_hashing)
    updated = replace(client, secret_hash=secret_hash, **fields)
    checked_registration(updated)
    srv.storage.add_client(updated)
    audit("client.registration_changed", client=client_id, address=address)
    # RFC 8252 §8.6, RFC 6819 §5.2.3.5: a consent answers later requests without a page
    # only while the redirect URI proves which client asks. Codes that may now go to a
    # new place, or be redeemed without the secret, end what users granted before (a
    # leaked registration access token must not inherit their consent): each is asked
    # again.
    if set(updated.redirect_uris) - set(client.redirect_uris) or (
        updated.public and not client.public
    ):
        for grant in srv.list_grants(client_id=client_id):
            srv.revoke_grant(grant.username, client_id)
        audit("client.grants_ended", client=client_id, reason="redirect or authentication")
    return client_information(srv, updated, secret, None)


def delete_registration(
    srv: Server, client_id: str, authorization: str | None, address: str = ""
) -> None:
    """RFC 7592 §2.3: deprovision the client; its grants, tokens and codes go with it."""
    registered_client(srv, client_id, authorization)
    srv.storage.remove_client(client_id)
    audit("client.registration_deleted", client=client_id, address=address)


###############################################################################
# Client authentication: RFC 6749 §2.3, RFC 7523 §2.2 ##########################
###############################################################################


# RFC 7523 §2.2: "The value of the client_assertion_type parameter MUST be ..."
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# The parameters that carry a client's credentials in a request's body (RFC 6749 §2.3.1,
# RFC 7523 §2.2), never kept with the request they authenticate.
CLIENT_CREDENTIAL_PARAMS = frozenset(("client_secret", "client_assertion",
                                      "client_assertion_type"))  # fmt: skip


def authenticate_client(
    srv: Server, params: dict[str, str], authorization: str | None, address: str = ""
) -> Client:
    """Identify the client of a token, introspection or revocation request: every
    client-authenticated endpoint calls this one function.

    Methods: client_secret_basic (RFC 6749 §2.3.1, preferred), client_secret_post,
    private_key_jwt (RFC 7523 §2.2, OIDC Core §9) for clients registered with keys, and
    none for public clients, which only name themselves with ``client_id``.
    """
    if "client_assertion" in params or "client_assertion_type" in params:
        return authenticate_with_assertion(srv, params, authorization, address)
    if authorization and authorization[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
            raw_id, raw_secret = decoded.split(":", 1)
        except (ValueError, UnicodeDecodeError):
            raise InvalidClient("Malformed HTTP Basic credentials.", basic=True) from None
        # RFC 6749 §2.3.1: the id and secret are form-urlencoded before Basic encoding.
        client_id = urllib.parse.unquote_plus(raw_id)
        secret: str | None = urllib.parse.unquote_plus(raw_secret)
        # RFC 6749 §2.3: "The client MUST NOT use more than one authentication method."
        if "client_secret" in params:
            raise InvalidRequest("Use either HTTP Basic or client_secret, not both.")
        if params.get("client_id", client_id) != client_id:
            raise InvalidClient("client_id does not match the Basic credentials.", basic=True)
        basic = True
    else:
        if "client_id" not in params:
            raise InvalidClient("Client authentication is required.")
        client_id, secret, basic = params["client_id"], params.get("client_secret"), False

    try:
        client = find_client(srv, client_id)
    except FetchError as err:
        raise InvalidClient(f"The client metadata document cannot be used: {err.description}",
                            basic=basic) from None  # fmt: skip
    if client is not None and client.public:
        if secret is not None:
            raise InvalidClient("A public client has no secret.", basic=basic)
        return client
    # From here on an unknown client_id is answered exactly as a confidential client's
    # missing or wrong secret, throttling included, so that the answers do not list the
    # client_ids that exist (RFC 6749 §5.2 names both "invalid_client"). Timing is not made
    # equal: a client_id is not a secret (RFC 6749 §2.2), and hashing a secret for every
    # unknown client_id would let anyone make the server burn memory-hard hashes.
    if secret is None:
        audit("client_auth.failed", client=client_id, address=address, reason="no secret")
        raise InvalidClient("Client authentication failed.", basic=basic)
    # Wrong secrets are not counted against the client (that would let anyone lock it
    # out); only the scrypt runs they cost are bounded (SecretChecks).
    # An unknown client_id spends the same budget of secret checks as a wrong secret, and
    # runs no scrypt (its stand-in's hash is no scrypt hash).
    standin = client or Client(client_id, secret_hash=NO_PASSWORD)
    if not check_client_secret(srv, standin, secret, address) or client is None:
        audit("client_auth.failed", client=client_id, address=address, reason="wrong secret")
        raise InvalidClient("Client authentication failed.", basic=basic)
    return client


def authenticate_with_assertion(
    srv: Server, params: dict[str, str], authorization: str | None, address: str = ""
) -> Client:
    """RFC 7523 §2.2 private_key_jwt (OIDC Core §9): the client signs a JWT with a key
    whose public half it registered. REQUIRED: client_assertion_type (jwt-bearer) and
    client_assertion; OPTIONAL: client_id, which must then be the assertion's.

    The assertion (RFC 7523 §3): ``iss`` and ``sub`` the client_id; ``aud`` the issuer;
    ``exp`` in the future, at most MAX_CLIENT_ASSERTION_LIFETIME ahead; ``jti`` used once
    (kept in storage until ``exp``, beside DPoP's, under its own key); signed with an
    asymmetric alg by one of the client's keys. On ``aud``: RFC 7523 §3 asks for "a value
    that identifies the authorization server", and OIDC Core §9 once suggested the token
    endpoint URL; but a client that takes the token endpoint (or any endpoint) from a
    hostile server's metadata can be made to sign an assertion for our token endpoint that
    the hostile server then replays here ("audience injection", the reason for the OIDC
    Core errata of 2025 and draft-ietf-oauth-rfc7523bis). The issuer identifier cannot be
    borrowed that way (RFC 8414 §3.3: a client checks the issuer of the metadata it
    fetched), so it is the one value accepted, alone: oauth4webapi and openid-client send
    exactly that; a library that sends the token endpoint URL is told to send the issuer.
    """
    # RFC 6749 §2.3: "The client MUST NOT use more than one authentication method in each
    # request."
    if (authorization and authorization[:6].lower() == "basic ") or "client_secret" in params:
        raise InvalidRequest("Use one client authentication method: an assertion or a secret.")
    claimed = params.get("client_id")

    def failed(reason: str, description: str = "Client authentication failed.") -> InvalidClient:
        audit("client_auth.failed", client=claimed, address=address, reason=reason)
        return InvalidClient(description)

    if params.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
        raise failed("assertion type", f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}.")
    assertion = params.get("client_assertion")
    if assertion is None:
        raise failed("no assertion", "client_assertion is required.")
    try:
        header = jwt.get_unverified_header(assertion)
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise failed("malformed assertion", "The client assertion is not a JWT.") from None
    # RFC 7523 §3 #1, #2; OIDC Core §9: iss and sub are both the client_id.
    client_id = unverified.get("sub")
    if not isinstance(client_id, str) or unverified.get("iss") != client_id:
        raise failed("assertion iss/sub", "The assertion's iss and sub must be the client_id.")
    if claimed is not None and claimed != client_id:
        raise failed("assertion client_id", "client_id is not the client assertion's sub.")
    claimed = client_id
    client = srv.storage.get_client(client_id)
    # An unknown client_id is answered as a client without keys: the same invalid_client.
    if client is None or not client.keyed:
        raise failed("no keys")
    alg = header.get("alg")
    if alg not in CLIENT_KEY_ALGS:
        raise failed("assertion alg", f"The client assertion's alg must be one of "
                                      f"{' '.join(CLIENT_KEY_ALGS)}.")  # fmt: skip
    kid = header.get("kid")
    try:
        claims = verified_assertion(srv, client, assertion, alg, kid)
    except FetchError as err:
        description = f"The client's keys could not be fetched: {err.description}"
        raise failed("jwks_uri", description) from None
    if claims is None:
        raise failed("assertion signature",
                      "The client assertion is not signed by a registered key.")  # fmt: skip
    aud = claims["aud"]
    if isinstance(aud, list) and len(aud) == 1:
        aud = aud[0]
    if aud != srv.issuer:
        raise failed("assertion aud", f"The client assertion's aud must be the issuer, "
                                      f"{srv.issuer}, alone.")  # fmt: skip
    now = srv.clock()
    exp, jti = claims["exp"], claims["jti"]
    if isinstance(exp, bool) or not isinstance(exp, int | float) or not math.isfinite(exp):
        raise failed("assertion exp", "The client assertion's exp must be a number.")
    if exp <= now:
        raise failed("assertion expired", "The client assertion has expired.")
    if exp > now + MAX_CLIENT_ASSERTION_LIFETIME:
        raise failed("assertion exp", f"The client assertion's exp may be at most "
                                      f"{MAX_CLIENT_ASSERTION_LIFETIME} s ahead.")  # fmt: skip
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or value > now + CLOCK_SKEW
        ):  # fmt: skip
            raise failed(f"assertion {name}", f"The client assertion's {name} is not valid yet.")
    if not (isinstance(jti, str) and 0 < len(jti) <= 256):
        raise failed("assertion jti", "The client assertion's jti must be 1 to 256 characters.")
    # RFC 7523 §3 #7: "The authorization server MAY ensure that JWTs are not replayed by
    # maintaining the set of used jti values for the length of time for which the JWT
    # would be considered valid based on the applicable exp instant." OIDC Core §9: the
    # jti "MUST only be used once". After the signature, so only the client fills it.
    if not srv.storage.remember_jti(token_hash(f"client_assertion\0{client_id}\0{jti}"), exp, now):
        raise failed("assertion replayed", "This client assertion was used before.")
    return client


def verified_assertion(
    srv: Server, client: Client, assertion: str, alg: str, kid: Any
) -> dict[str, Any] | None:
    """The claims of ``assertion`` if one of the client's keys that may sign with ``alg``
    (the one named ``kid``, if any) verifies it; else None. Keys from a jwks_uri are
    fetched again, bypassing the cache, when none verifies (the client rotated its keys),
    at most once a JWKS_REFETCH_INTERVAL per client, so that bad assertions cannot make
    this server hammer the client's host. FetchError if they cannot be had."""
    for fresh in (False, True):
        if fresh and not srv.jwks_refetches.allow(client.client_id, srv.clock()):
            return None
        keys = [k for k in client_keys(srv, client, fresh=fresh)
                if alg in jwk_algs(k) and (kid is None or k.get("kid") == kid)]  # fmt: skip
        for jwk in keys:
            try:
                key = public_jwk(jwk, alg, "client key")
                return verify_client_jwt(
                    assertion, key, alg, ["iss", "sub", "aud", "exp", "jti"], "client assertion"
                )
            except ValueError:
                continue
        if client.jwks_uri is None:
            return None
    return None


def client_keys(srv: Server, client: Client, *, fresh: bool = False) -> list[dict[str, Any]]:
    """The public keys a client registered (RFC 7591 §2): its ``jwks``, or the JWK Set at
    its ``jwks_uri`` through the one hardened fetch (``fresh``: not from the cache)."""
    jwks: Any = client.jwks
    if client.jwks_uri is not None:
        jwks = fetch_json_document(srv, client.jwks_uri, fresh=fresh)
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    return [k for k in keys if isinstance(k, dict)] if isinstance(keys, list) else []


# RFC 7517 §5 keys fetched from a client's jwks_uri again (past the cache) when an
# assertion names a key they lack: at most once this often per client.
JWKS_REFETCH_INTERVAL = 60


class RefetchLimiter:
    """When each client's keys were last fetched past the cache, so that a refetch per
    client happens at most once a JWKS_REFETCH_INTERVAL (bounded: the oldest go first)."""

    def __init__(self, entries: int = FETCH_CACHE_ENTRIES) -> None:
        self._last: dict[str, float] = {}
        self._entries = entries
        self._lock = threading.Lock()

    def allow(self, client_id: str, now: float) -> bool:
        with self._lock:
            if now - self._last.get(client_id, -math.inf) < JWKS_REFETCH_INTERVAL:
                return False
            self._last.pop(client_id, None)
            if len(self._last) >= self._entries:
                del self._last[next(iter(self._last))]
            self._last[client_id] = now
            return True


def check_client_secret(srv: Server, client: Client, secret: str, address: str = "") -> bool:
    """Verify a client secret against its scrypt hash, within the budget of scrypt runs
    of this client at ``address`` (SecretChecks; TooManyAttempts beyond it).

    A verified secret's SHA-256 is cached in this process, so a busy client pays
    the memory-hard KDF once rather than on every token request, and a wrong secret
    sent after it costs no KDF at all.
    """
    stored = client.secret_hash
    if stored is None:
        return False
    digest = hashlib.sha256(secret.encode("utf-8")).digest()
    key = (client.client_id, stored)
    cached = srv.verified_secrets.get(key)
    if cached is not None:
        return hmac.compare_digest(cached, digest)

    def verify() -> bool:
        if stored.startswith(FAST_HASH_SCHEME + "$"):
            srv.transcript.note_convenience(f"client {client.client_id!r}: {FAST_HASH_NOTE}")
        if not verify_password(secret, stored, hashing=srv.password_hashing):
            return False
        srv.verified_secrets[key] = digest
        return True

    return srv.secret_checks.run(client, address, digest, verify)


###############################################################################
# Sender-constrained tokens: DPoP (RFC 9449) ##################################
###############################################################################

# RFC 9449 §1: a client proves, with each request, that it holds a private key: a DPoP
# proof is a JWT it signs for that one request (method and URI) and time. Tokens issued
# on such a request are bound to the key (cnf.jkt, its RFC 7638 thumbprint), so that a
# stolen token is worth nothing without the key. The server checks proofs at the token
# endpoint (§5) and at userinfo, its own resource (§7); resource servers check them with
# the JWT's cnf.jkt or introspection's (§6), as codeflow_sdk's BearerValidator does.
#
# Replay (§11.1): a proof is good for DPOP_PROOF_WINDOW seconds either side of its iat,
# and its jti is remembered in storage (shared by every process of the server) as long
# as that, so that each proof is used once. Nonces (§8) are off unless the server asks
# for them (``Server(dpop_nonces=True)``): with the window and the jti cache, a proof
# that leaks is spent or stale within a minute, and a client whose key was stolen outright
# is lost either way; a nonce narrows what an attacker who can run code beside the key
# (XSS) signs in advance, at the price of a round trip for every client on its first
# request and after each nonce's lifetime. A nonce is the server's signature on a time
# (no storage): every process sharing the store's key accepts it.

DPOP_TYP = "dpop+jwt"  # RFC 9449 §4.2
# RFC 7638 §3.2: the required members of each key type, the ones its thumbprint hashes.
THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"),
                      "OKP": ("crv", "kty", "x")}  # fmt: skip
# RFC 7517 §9.2, RFC 7518 §6.2.2, §6.3.2, RFC 8037 §2: the members of private keys.
PRIVATE_KEY_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
# RFC 3986 §2.3: unreserved characters, which percent-encoding normalization decodes.
UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


@dataclass(frozen=True)
class DPoPRequest:
    """What of an HTTP request its DPoP proof is checked against (RFC 9449 §4.3): the
    ``DPoP`` header (None if absent; several fields arrive joined by commas), the method,
    and the URL the client reached the endpoint at, as discovery gives it."""

    proof: str | None
    method: str
    url: str


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 §3: the base64url SHA-256 of the key's required members, in lexicographic
    order, as JSON without whitespace."""
    members = {name: jwk[name] for name in THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def access_token_hash(access_token: str) -> str:
    """RFC 9449 §4.2 ath: the base64url SHA-256 of the ASCII access token."""
    return b64url(hashlib.sha256(access_token.encode("ascii", "replace")).digest())


def public_jwk(jwk: Any, alg: str, owner: str) -> Any:
    """The public key of the JWK ``jwk`` for ``alg`` (PyJWT parses it: kty, crv and
    coordinates that fit ``alg``), else ValueError saying why. A private key, or a
    symmetric one, is refused (RFC 9449 §4.3 #7: "does not contain a private key")."""
    if not isinstance(jwk, dict):
        raise ValueError(f"{owner}: the key is not a JSON object")
    if any(name in jwk for name in PRIVATE_KEY_MEMBERS):
        raise ValueError(f"{owner}: the key has private members; send the public key only")
    members = THUMBPRINT_MEMBERS.get(jwk.get("kty"))  # type: ignore[arg-type]
    if members is None or not all(isinstance(jwk.get(name), str) for name in members):
        raise ValueError(f"{owner}: the key is not an RSA, EC or OKP public key")
    try:
        return jwt.PyJWK(jwk, alg).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError) as err:
        raise ValueError(f"{owner}: the key does not fit {alg}: {str(err)[:80]}") from None


def verify_client_jwt(
    token: str, key: Any, alg: str, required: list[str], owner: str
) -> dict[str, Any]:
    """The claims of the JWS ``token`` signed by ``key`` with ``alg`` (PyJWT checks the
    signature, and refuses RSA keys under 2048 bits); ValueError if it does not verify.
    Times are the caller's to check, against the server's clock."""
    try:
        return jwt.decode(
            token, key, algorithms=[alg],
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                     "verify_aud": False, "verify_iss": False, "require": required,
                     "enforce_minimum_key_length": True},
        )  # fmt: skip
    except jwt.PyJWTError as err:
        raise ValueError(f"{owner}: {str(err)[:100]}") from None


def normalized_url(uri: str) -> str | None:
    """RFC 9449 §4.3 #9: the URI without query and fragment, after RFC 3986 §6.2.2
    syntax-based (case, percent-encoding) and §6.2.3 scheme-based (default port, empty
    path) normalization; None if it is not an absolute http(s) URI."""
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = host + (f":{port}" if port not in (None, {"http": 80, "https": 443}[scheme]) else "")

    def percent(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in UNRESERVED else match.group(0).upper()

    path = re.sub(r"%([0-9A-Fa-f]{2})", percent, parts.path) or "/"
    return f"{scheme}://{netloc}{path}"


def new_dpop_nonce(srv: Server) -> str:
    """RFC 9449 §8: a nonce for the client's next proofs; its characters are §8.1's
    NQCHAR (base64url and dots)."""
    return srv.signer.dumps({}, "dpop-nonce", DPOP_NONCE_LIFETIME)


def check_dpop_proof(
    srv: Server,
    dpop: DPoPRequest,
    *,
    access_token: str | None = None,
    bound_to: str | None = None,
    status: int = 400,
) -> str:
    """RFC 9449 §4.3: check the request's DPoP proof and return the thumbprint (RFC 7638)
    of its key. At a resource (``status`` 401), ``access_token`` is the token presented
    with it (§4.3 #12: ``ath``) and ``bound_to`` the thumbprint the token is bound to.
    InvalidDPoPProof, or UseDPoPNonce, says what is wrong."""

    def invalid(description: str) -> InvalidDPoPProof:
        return InvalidDPoPProof(description, status=status)

    proof = dpop.proof
    # §4.3 #1, #2: "not more than one DPoP HTTP request header field", a single JWT.
    if proof is None:
        raise invalid("A DPoP proof is required (the DPoP header, RFC 9449 4).")
    if "," in proof or len(proof) > MAX_DPOP_PROOF:
        raise invalid("Send one DPoP header with one proof JWT.")
    try:
        header = jwt.get_unverified_header(proof)
    except jwt.PyJWTError:
        raise invalid("The DPoP proof is not a JWT.") from None
    # §4.3 #4, #5: typ dpop+jwt; alg asymmetric and supported.
    if header.get("typ") != DPOP_TYP:
        raise invalid("The DPoP proof's typ must be dpop+jwt.")
    alg = header.get("alg")
    if alg not in CLIENT_KEY_ALGS:
        raise invalid(f"The DPoP proof's alg must be one of {' '.join(CLIENT_KEY_ALGS)}.")
    # §4.3 #6, #7: the signature verifies with the header's jwk, a public key.
    try:
        key = public_jwk(header.get("jwk"), alg, "DPoP proof jwk")
        claims = verify_client_jwt(proof, key, alg, ["jti", "htm", "htu", "iat"], "DPoP proof")
    except ValueError as err:
        raise invalid(str(err)) from None
    jti, htm, htu, iat = (claims.get(name) for name in ("jti", "htm", "htu", "iat"))
    if not (isinstance(jti, str) and 0 < len(jti) <= 256):
        raise invalid("The DPoP proof's jti must be a string of 1 to 256 characters.")
    # §4.3 #8, #9: the method and the URI, without query and fragment, normalized.
    if htm != dpop.method:
        raise invalid(f"The DPoP proof's htm must be {dpop.method}.")
    if not isinstance(htu, str) or normalized_url(htu) != normalized_url(dpop.url):
        raise invalid(f"The DPoP proof's htu must be {dpop.url}.")
    # §4.3 #11: "the creation time of the JWT ... is within an acceptable window".
    now = srv.clock()
    if isinstance(iat, bool) or not isinstance(iat, int | float) or not math.isfinite(iat):
        raise invalid("The DPoP proof's iat must be a number.")
    if abs(now - iat) > DPOP_PROOF_WINDOW:
        raise invalid(f"The DPoP proof's iat is more than {DPOP_PROOF_WINDOW} s from now.")
    # §4.3 #10, §8: the nonce the server gave, when it asks for one.
    if srv.dpop_nonces:
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or srv.signer.loads(nonce, "dpop-nonce") is None:
            raise UseDPoPNonce(
                "Sign the DPoP proof with the nonce in the DPoP-Nonce header (RFC 9449 8).",
                new_dpop_nonce(srv), status=status,
            )  # fmt: skip
    # §4.3 #12: at a resource, the proof covers this token, and its key is the token's.
    if access_token is not None:
        ath = claims.get("ath")
        if not isinstance(ath, str) or not hmac.compare_digest(
            ath.encode("ascii", "replace"), access_token_hash(access_token).encode()
        ):
            raise invalid("The DPoP proof's ath is not the hash of this access token.")
    jkt = jwk_thumbprint(header["jwk"])
    if bound_to is not None and not hmac.compare_digest(jkt, bound_to):
        raise DPoPBoundToken("The access token is bound to another DPoP key.")
    # §11.1: each proof once; remembered while its iat is within the window.
    key_id = token_hash(f"dpop\0{jkt}\0{jti}")
    if not srv.storage.remember_jti(key_id, iat + DPOP_PROOF_WINDOW, now):
        raise invalid("This DPoP proof was used before; sign a new one for each request.")
    return jkt


###############################################################################
# PKCE: RFC 7636 §4 ############################################################
###############################################################################

# RFC 7636 §4.1: code_verifier = high-entropy cryptographic random STRING using the
# unreserved characters [A-Z] / [a-z] / [0-9] / "-" / "." / "_" / "~", 43 to 128 long.
CODE_VERIFIER_RE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
# RFC 7636 §4.2: S256 challenge = BASE64URL(SHA256(verifier)): always 43 characters.
S256_CHALLENGE_RE = re.compile(r"[A-Za-z0-9_\-]{43}")


def s256(code_verifier: str) -> str:
    """RFC 7636 §4.2: code_challenge = BASE64URL-ENCODE(SHA256(ASCII(code_verifier)))."""
    return b64url(hashlib.sha256(code_verifier.encode("ascii")).digest())


def check_pkce(code: AuthorizationCode, code_verifier: str | None) -> None:
    """RFC 7636 §4.6: compare the verifier with the challenge bound to the code."""
    if code.code_challenge is None:
        # OAuth 2.1 §7.5.1: a verifier for a code issued without a challenge is a downgrade.
        if code_verifier is not None:
            raise InvalidGrant("This code was issued without a code_challenge.")
        return
    if code_verifier is None:
        raise InvalidGrant("code_verifier is required for this code.")
    if not CODE_VERIFIER_RE.fullmatch(code_verifier):
        raise InvalidGrant("code_verifier must be 43-128 unreserved characters (RFC 7636 4.1).")
    if not hmac.compare_digest(s256(code_verifier), code.code_challenge):
        raise InvalidGrant("code_verifier does not match the code_challenge.")


###############################################################################
# Resource indicators: RFC 8707 ################################################
###############################################################################

# A client names the APIs its token is for with ``resource`` (§2), at the authorization
# endpoint (§2.1) and the token endpoint (§2.2). The token's audience is those resources
# (RFC 9068 §3 aud), and its scopes are theirs: a resource's scopes may be asked for with
# it, and the consent page shows which API the app reaches with which of its scopes.
# Without ``resource`` nothing changes: the client's scopes, the default audience.


def requested_resources(
    srv: Server, client: Client, params: dict[str, str]
) -> tuple[Resource, ...]:
    """RFC 8707 §2: the registered resources named by ``resource`` (one value of
    space-separated URIs, as single_params keeps them); one the server does not know, or
    the client may not ask for, is invalid_target."""
    return known_resources(srv.storage, split_scope(params.get("resource")), client)


def known_resources(
    storage: Storage, uris: Iterable[str], client: Client | None = None
) -> tuple[Resource, ...]:
    """The registered resources of ``uris``, each one ``client`` may ask for (its
    ``resources``, if it lists some); else invalid_target."""
    found = []
    for uri in uris:
        resource = storage.get_resource(uri)
        if resource is None:
            raise InvalidTarget(f"Unknown resource: {uri[:100]}")
        if client is not None and client.resources and uri not in client.resources:
            raise InvalidTarget(f"This client may not ask for the resource {uri[:100]}")
        found.append(resource)
    return tuple(found)


def resource_scopes(resources: Iterable[Resource]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(s for r in resources for s in r.scopes))


def allowed_scope(
    client: Client, resources: tuple[Resource, ...], requested: tuple[str, ...]
) -> tuple[str, ...]:
    """The scope of a request for the user's grant: what it asks for, else the resources'
    scopes (the client's own without resources); each scope the client's or one of the
    resources' (a client's registered scopes do not cap a resource's). InvalidScope else."""
    offered = resource_scopes(resources)
    scope = requested or offered or client.scopes
    unknown = [s for s in scope if s not in client.scopes and s not in offered]
    if unknown:
        raise InvalidScope(f"Scope not allowed for this client: {' '.join(unknown)}.")
    return scope


def narrowed_scope(
    scope: tuple[str, ...], granted: Iterable[Resource], audience: tuple[Resource, ...]
) -> tuple[str, ...]:
    """The scope of an access token for ``audience``, a part of the ``granted`` resources
    (RFC 8707 §2.2): a resource's scopes only for that resource; the rest (openid, the
    client's own) as granted."""
    for_audience = set(resource_scopes(audience))
    others = set(resource_scopes(granted)) - for_audience
    return tuple(s for s in scope if s not in others)


def audience_claim(srv: Server, audience: Iterable[str]) -> str | list[str]:
    """RFC 9068 §3, RFC 7662 §2.2 aud: the resource, the list of several, or without
    resources the server's default audience."""
    uris = list(audience)
    if not uris:
        return srv.access_token_audience
    return uris[0] if len(uris) == 1 else uris


###############################################################################
# Authorization endpoint: RFC 6749 §4.1.1, §4.1.2 ##############################
###############################################################################


@dataclass(frozen=True)
class AuthorizationRequest:
    """A validated authorization request; ``params`` is what the browser sent."""

    client: Client
    redirect_uri: str
    redirect_uri_given: bool
    scope: tuple[str, ...]
    state: str | None
    response_mode: str  # one of RESPONSE_MODES
    acr_values: tuple[str, ...]  # OIDC Core §3.1.2.1, in order of preference
    claims: dict[str, Any]  # OIDC Core §5.5, checked by claims_request
    code_challenge: str | None
    nonce: str | None
    login_hint: str | None
    prompt: frozenset[str]
    max_age: int | None
    params: dict[str, str]
    # Where the request goes on after a sign-in, and the salt of its forms' signed request
    # (see resume_url): "authorize" (RFC 6749 §4.1.1), "pushed" (a request the client
    # pushed, RFC 9126), "device" (the /device page, RFC 8628 §3.3).
    purpose: str = "authorize"
    resources: tuple[Resource, ...] = ()  # RFC 8707 §2.1
    dpop_jkt: str | None = None  # RFC 9449 §10: the DPoP key the code will be bound to


def authorize(srv: Server, pairs: list[tuple[str, str]], browser: Browser) -> Redirect | Page:
    """The authorization endpoint: the first step of the flow (RFC 6749 §4.1.1).

    Answers with the login page, the consent page, or a redirect to the client
    carrying a code or an error. A request by ``request_uri`` is the one its client
    pushed (RFC 9126 §4), whose parameters replace the browser's.
    """
    pairs, pushed = pushed_request(srv, pairs)
    client, redirect_uri, given = trusted_redirect(srv, pairs)
    states = [value for name, value in pairs if name == "state"]
    state = states[0] if len(states) == 1 else None  # a repeated state is not echoed
    try:
        params = single_params(pairs)
        areq = validate_authorization_request(srv, client, redirect_uri, given, params, pushed)
        return continue_authorization(srv, areq, browser)
    except OAuthError as err:
        # RFC 9700 §4.11.2: an erroneous or silent (prompt=none) request must not make this
        # server bounce the browser, unasked, to a redirect URI it does not trust: a client
        # that registered itself chose its own. The user reads what went wrong and decides.
        if client.unverified:
            onward = cast(Redirect, error_redirect(srv, redirect_uri, state, err))
            return error_page(err, onward=onward.location)
        return error_redirect(srv, redirect_uri, state, err, response_mode_of(pairs))


def response_mode_of(pairs: list[tuple[str, str]]) -> str:
    """The response mode to answer in, also when the request is refused for another reason:
    the one it asks for if we support it, else query (OAuth 2.0 Multiple Response Type
    Encoding Practices §2.1: the default for response_type=code)."""
    modes = [value for name, value in pairs if name == "response_mode"]
    return modes[0] if len(modes) == 1 and modes[0] in RESPONSE_MODES else "query"


def _only(pairs: list[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in pairs if k == name]
    if len(values) > 1:
        raise UntrustedRequest(f"The {name} parameter is repeated (RFC 6749 section 3.1).")
    return values[0] if values else None


def trusted_redirect(srv: Server, pairs: list[tuple[str, str]]) -> tuple[Client, str, bool]:
    """Find the client and the redirect_uri to answer to, or raise UntrustedRequest.

    RFC 6749 §4.1.2.1: "If the request fails due to a missing, invalid, or mismatching
    redirection URI, or if the client identifier is missing or invalid, the
    authorization server SHOULD inform the resource owner of the error and MUST NOT
    automatically redirect the user-agent to the invalid redirection URI."
    """
    client_id = _only(pairs, "client_id")
    if client_id is None:
        raise UntrustedRequest("The request has no client_id.")
    try:
        client = find_client(srv, client_id)
    except FetchError as err:
        raise UntrustedRequest(
            f"The client's metadata document cannot be used: {err.description}"
        ) from None
    if client is None:
        raise UntrustedRequest("The client_id is not a registered client.")
    given = _only(pairs, "redirect_uri")
    if given is None:
        # RFC 6749 §3.1.2.3: may be omitted only when exactly one URI is registered.
        if len(client.redirect_uris) != 1:
            raise UntrustedRequest("The request has no redirect_uri.")
        return client, client.redirect_uris[0], False
    for registered in client.redirect_uris:
        if redirect_uri_matches(registered, given, native=client.public):
            return client, given, True
    raise UntrustedRequest("The redirect_uri is not registered for this client.")


def validate_authorization_request(
    srv: Server,
    client: Client,
    redirect_uri: str,
    given: bool,
    params: dict[str, str],
    pushed: bool = False,
) -> AuthorizationRequest:
    """RFC 6749 §4.1.1 with RFC 7636 §4.3: check everything after the redirect is trusted.

    REQUIRED: response_type=code, client_id, code_challenge (+ code_challenge_method=S256)
    unless the client opted out of PKCE. OPTIONAL: redirect_uri, scope, state; from
    OIDC Core §3.1.2.1 nonce, prompt, max_age, login_hint, ui_locales (accepted; the
    pages are in English); RFC 8707 §2.1 resource, repeatable. Unrecognised parameters
    are ignored (RFC 6749 §3.1). ``pushed``: the client pushed the request (RFC 9126
    §2.1), which the PAR endpoint checks here too.
    """
    if "request" in params:
        raise RequestNotSupported("Request objects are not supported.")
    if "request_uri" in params:
        raise RequestUriNotSupported("request_uri is not supported.")
    response_type = params.get("response_type")
    if response_type is None:
        raise InvalidRequest("response_type is required.")
    if response_type != "code":
        # OAuth 2.1 §4.1.1 and RFC 9700 §2.1.2: no implicit grant.
        raise UnsupportedResponseType("Only response_type=code is supported.")
    if "authorization_code" not in client.grant_types:
        raise UnauthorizedClient("This client may not use the authorization code grant.")
    # RFC 9126 §5: with require_pushed_authorization_requests, "the authorization server
    # only accepts authorization request data via the pushed authorization request method".
    if not pushed and (
        srv.require_pushed_authorization_requests or client.require_pushed_authorization_requests
    ):
        raise InvalidRequest(
            "This client must push its authorization requests to the pushed authorization "
            "request endpoint first (RFC 9126)."
        )
    # OAuth 2.0 Multiple Response Type Encoding Practices §2.1: response_mode "Informs the
    # Authorization Server of the mechanism to be used for returning Authorization Response
    # parameters"; one we cannot honour is refused, not silently replaced.
    response_mode = params.get("response_mode", "query")
    if response_mode not in RESPONSE_MODES:
        raise InvalidRequest(
            f"response_mode {response_mode[:40]} is not supported: use query or form_post."
        )

    resources = requested_resources(srv, client, params)
    scope = allowed_scope(client, resources, split_scope(params.get("scope")))

    # OIDC Core §3.1.2.1: "If this parameter contains none with any other value, an
    # error is returned."
    prompt = frozenset(split_scope(params.get("prompt"))) & set(PROMPT_VALUES)
    if "none" in prompt and len(split_scope(params.get("prompt"))) > 1:
        raise InvalidRequest("prompt=none cannot be combined with other values.")
    max_age = params.get("max_age")
    if max_age is not None and not (max_age.isascii() and max_age.isdigit()):
        raise InvalidRequest("max_age must be a non-negative integer of seconds.")

    challenge = params.get("code_challenge")
    method = params.get("code_challenge_method")
    if challenge is None:
        if method is not None:
            raise InvalidRequest("code_challenge_method was sent without a code_challenge.")
        # RFC 7636 §4.4.1 and RFC 9700 §2.1.1: PKCE is required of public clients, and
        # of every client that has not opted out.
        if client.public or client.require_pkce:
            raise InvalidRequest("code_challenge is required (PKCE, RFC 7636).")
        srv.transcript.note_relaxation(
            client.client_id, "require_pkce=False: an authorization request without PKCE"
        )
    else:
        # RFC 7636 §4.3: a missing method means "plain", which RFC 9700 §2.1.1 rules out.
        if method != "S256":
            raise InvalidRequest("code_challenge_method must be S256.")
        if not S256_CHALLENGE_RE.fullmatch(challenge):
            raise InvalidRequest("code_challenge must be 43 base64url characters (RFC 7636 4.2).")
    # RFC 9449 §10: dpop_jkt, "the JWK SHA-256 Thumbprint ... of the proof-of-possession
    # key" the code is to be redeemed with: base64url of 32 bytes, 43 characters.
    dpop_jkt = params.get("dpop_jkt")
    if dpop_jkt is not None and not S256_CHALLENGE_RE.fullmatch(dpop_jkt):
        raise InvalidRequest("dpop_jkt must be a JWK SHA-256 thumbprint (RFC 9449 10).")

    return AuthorizationRequest(
        client=client,
        redirect_uri=redirect_uri,
        redirect_uri_given=given,
        scope=scope,
        state=params.get("state"),
        response_mode=response_mode,
        acr_values=split_scope(params.get("acr_values")),
        claims=claims_request(params.get("claims")),
        code_challenge=challenge,
        nonce=params.get("nonce"),
        login_hint=params.get("login_hint"),
        prompt=prompt,
        max_age=int(max_age) if max_age is not None else None,
        params=params,
        purpose="pushed" if pushed else "authorize",
        resources=resources,
        dpop_jkt=dpop_jkt,
    )


def claims_request(value: str | None) -> dict[str, Any]:
    """OIDC Core §5.5: the claims parameter, "a JSON object listing the requested Claims":
    its id_token and userinfo members, each an object of claim names to null (a voluntary
    claim) or an object (§5.5.1: essential, a boolean; value; values, an array; acr's
    values are strings). Other members are ignored; anything malformed is refused."""
    if value is None:
        return {}
    try:
        request = json.loads(value)
    except ValueError:
        raise InvalidRequest("claims must be a JSON object (OIDC Core 5.5).") from None
    if not isinstance(request, dict):
        raise InvalidRequest("claims must be a JSON object (OIDC Core 5.5).")
    checked: dict[str, Any] = {}
    for member in ("id_token", "userinfo"):
        wanted = request.get(member)
        if wanted is None:
            continue
        if not isinstance(wanted, dict):
            raise InvalidRequest(f"claims.{member} must be a JSON object (OIDC Core 5.5).")
        for name, spec in wanted.items():
            if spec is not None and not _claim_spec_ok(name, spec):
                raise InvalidRequest(
                    f"claims.{member}.{name[:40]} must be null or an object with essential "
                    "(a boolean), value or values (an array) (OIDC Core 5.5.1)."
                )
        checked[member] = wanted
    return checked


def _claim_spec_ok(name: str, spec: Any) -> bool:
    """OIDC Core §5.5.1: an object whose essential is a boolean and values an array; acr's
    value and values are strings (Authentication Context Class References)."""
    if not isinstance(spec, dict):
        return False
    values = spec.get("values", [])
    if not isinstance(spec.get("essential", False), bool) or not isinstance(values, list):
        return False
    return name != "acr" or (
        isinstance(spec.get("value", ""), str) and all(isinstance(v, str) for v in values)
    )


def requested_value(areq: AuthorizationRequest, claim: str) -> list[str]:
    """The values the claims parameter asks the ID token's ``claim`` to have (§5.5.1
    value, values), if it asks for particular ones."""
    spec = areq.claims.get("id_token", {}).get(claim)
    if not isinstance(spec, dict):
        return []
    if isinstance(spec.get("value"), str):
        return [spec["value"]]
    return [v for v in spec.get("values", []) if isinstance(v, str)]


def consent_scopes(areq: AuthorizationRequest) -> tuple[str, ...]:
    """What the user consents to: the scopes asked for, and the scope of each claim asked
    for on its own (OIDC Core §5.5) that the client may ask for, so that the consent page
    shows every kind of data the client gets.

    A resource's scopes are the resource's (RFC 8707): consenting to "read" of one API is
    no consent to "read" of another. So each resource asked for is an item of its own
    (its URI: the app may reach that API), and each of its scopes is "URI scope" (a scope
    has no space, RFC 6749 §3.3, so such an item is no plain scope)."""
    extra = [
        CLAIM_SCOPE[name]
        for member in areq.claims.values()
        for name in member
        if CLAIM_SCOPE.get(name) in areq.client.scopes
    ]
    owned = set(resource_scopes(areq.resources))
    plain = [s for s in (*areq.scope, *extra) if s not in owned]
    per_resource = [
        item
        for r in areq.resources
        for item in (r.uri, *(f"{r.uri} {s}" for s in areq.scope if s in r.scopes))
    ]
    return tuple(dict.fromkeys((*plain, *per_resource)))


def continue_authorization(
    srv: Server, areq: AuthorizationRequest, browser: Browser
) -> Redirect | Page:
    """Decide the next step: log in, ask consent, or issue the code.

    OIDC Core §3.1.2.1: with prompt=none "the Authorization Server MUST NOT display any
    authentication or consent user interface pages"; it answers login_required or
    consent_required instead.
    """
    # OIDC Core §3.1.2.1: with a sub value in the claims parameter, "the Authorization
    # Server MUST only send a positive response if the End-User identified by that sub
    # value has an active session with the Authorization Server or has been Authenticated
    # as a result of the request".
    subs = requested_value(areq, "sub")
    sub = subs[0] if subs else None
    approve_as = srv.auto_approve
    if approve_as is not None:
        if areq.login_hint and srv.storage.get_user(areq.login_hint):
            approve_as = areq.login_hint
        if sub is not None:
            if srv.storage.get_user(sub) is None:
                raise LoginRequired("No user has the sub the client asks for.")
            approve_as = sub
        return issue_code(srv, areq, approve_as, int(srv.clock()))
    session = browser.session
    # OIDC Core §3.1.2.1 max_age: past it, "the OP MUST attempt to actively
    # re-authenticate the End-User"; max_age=0 is equivalent to prompt=login.
    too_old = areq.max_age is not None and (
        areq.max_age == 0
        or (session is not None and srv.clock() - session.auth_time > areq.max_age)
    )
    # A session exists only for a user who still exists with the same credentials
    # (read_session checks that).
    if session is None or "login" in areq.prompt or too_old:
        if "none" in areq.prompt:
            raise LoginRequired("The user is not signed in.")
        return login_page(srv, areq, browser)
    if sub is not None and sub != session.username:
        if "none" in areq.prompt:
            raise LoginRequired("The signed-in user is not the one the client asks for.")
        return login_page(srv, areq, browser, ANOTHER_ACCOUNT_ASKED)
    if needs_second_factor(areq) and "mfa" not in session.amr:
        return ask_second_factor(srv, areq, browser, session.username)
    remembered = client_identified(areq.client, areq.redirect_uri) and set(
        consent_scopes(areq)
    ) <= srv.storage.get_consent(
        session.username, areq.client.client_id, consent_binding(areq.client)
    )
    if remembered and "consent" not in areq.prompt:
        return issue_code(srv, areq, session.username, session.auth_time, session.amr, session.sid)
    if "none" in areq.prompt:
        raise ConsentRequired("The user has not consented to this request.")
    return consent_page(srv, areq, browser)


def needs_second_factor(areq: AuthorizationRequest) -> bool:
    """OIDC Core §3.1.2.1: acr_values lists the classes the client accepts, "in order of
    preference"; it asks for a second factor when it names the multi-factor class and not
    the password one. Values we do not know are ignored (acr_values is a voluntary claim).
    So does the claims parameter's acr when essential (OIDC Core §5.5.1.1)."""
    if ACR_MFA in areq.acr_values and ACR_PASSWORD not in areq.acr_values:
        return True
    acr = areq.claims.get("id_token", {}).get("acr")
    essential = isinstance(acr, dict) and acr.get("essential") is True
    values = requested_value(areq, "acr")
    return essential and ACR_MFA in values and ACR_PASSWORD not in values


def ask_second_factor(
    srv: Server, areq: AuthorizationRequest, browser: Browser, username: str
) -> Page:
    """A signed-in user whose session has no second factor, for a request that asks for
    one: sign in again, with the TOTP code or a passkey; a user who has none is told so."""
    user = srv.storage.get_user(username)
    if user is not None and has_second_factor(srv, user):
        if "none" in areq.prompt:
            raise LoginRequired("The client asks for a second factor: the user must sign in.")
        return login_page(srv, areq, browser, SECOND_FACTOR_ASKED)
    if "none" in areq.prompt:
        raise UnmetAuthenticationRequirements("The user has no second factor.")
    return no_second_factor_page(srv, areq, browser)


def issue_code(
    srv: Server,
    areq: AuthorizationRequest,
    username: str,
    auth_time: int,
    amr: tuple[str, ...] = (),
    sid: str | None = None,
) -> Redirect | Page:
    """RFC 6749 §4.1.2: a short-lived, single-use code bound to the request, and to how the
    user signed in (``amr``, RFC 8176; none for auto-approve), for the ID token; ``sid``:
    the login session it was issued in (Front-Channel Logout §3), none for auto-approve."""
    code = new_secret()
    srv.storage.save_code(
        AuthorizationCode(
            code_hash=token_hash(code),
            client_id=areq.client.client_id,
            username=username,
            redirect_uri=areq.redirect_uri,
            redirect_uri_required=areq.redirect_uri_given,
            scope=areq.scope,
            code_challenge=areq.code_challenge,
            nonce=areq.nonce,
            auth_time=auth_time,
            expires_at=srv.clock() + srv.code_lifetime,
            amr=amr,
            acr=acr_of(amr),
            claims_request=areq.claims,
            sid=sid or None,
            resources=tuple(r.uri for r in areq.resources),
            dpop_jkt=areq.dpop_jkt,
        )
    )
    params = {"code": code}
    if areq.state is not None:
        params["state"] = areq.state  # RFC 6749 §4.1.2: REQUIRED if present in the request
    audit("code.issued", user=username, client=areq.client.client_id)
    return authorization_response(srv, areq.redirect_uri, params, areq.response_mode)


def acr_of(amr: tuple[str, ...]) -> str | None:
    """OIDC Core §2 acr: the class that a sign-in by the methods ``amr`` meets."""
    if "mfa" in amr:
        return ACR_MFA
    return ACR_PASSWORD if "pwd" in amr else None


def authorization_response(
    srv: Server, redirect_uri: str, params: dict[str, str], response_mode: str = "query"
) -> Redirect | Page:
    """RFC 9207 §2: "the authorization server MUST include the iss parameter" in every
    authorization response, success or error. On the redirect's query (RFC 6749 §4.1.2), or
    with form_post as a form the browser POSTs to the redirect URI (Form Post Response
    Mode §2)."""
    params = {**params, "iss": srv.issuer}
    if response_mode == "form_post":
        return form_post_page(redirect_uri, params)
    return Redirect(add_query(redirect_uri, params))


def error_redirect(
    srv: Server,
    areq_redirect: str,
    state: str | None,
    err: OAuthError,
    response_mode: str = "query",
) -> Redirect | Page:
    """RFC 6749 §4.1.2.1: error, error_description and the client's state, in the response
    mode of the request."""
    params = err.to_json()
    if state is not None:
        params["state"] = state
    return authorization_response(srv, areq_redirect, params, response_mode)


def client_identified(client: Client, redirect_uri: str) -> bool:
    """Whether the redirect URI of a request proves which client asks, so that a consent
    given before may answer it without a page.

    RFC 8252 §8.6: "Authorization servers SHOULD NOT process authorization requests
    automatically without user consent or interaction, except when the identity of the
    client can be assured", previous approvals included (RFC 6819 §4.2.3, §5.2.3.5). A
    confidential client proves itself when it redeems the code (RFC 6749 §4.1.3), and
    only the host of an https redirect URI receives the code. A public client's loopback
    URI (any port, RFC 8252 §7.3; a fixed port is free whenever the app is not running)
    or private-use scheme (§7.1) can be answered by any process on the device, with a
    PKCE pair of its own: such consent is neither stored nor reused.
    """
    return not client.public or urllib.parse.urlsplit(redirect_uri).scheme == "https"


def consent_binding(client: Client) -> str:
    """What a remembered consent is bound to (Storage.save_consent's ``bound_to``): for a
    Client ID Metadata Document's client, the redirect URIs its document listed when the
    user consented. Its host may change the document at any time, and nothing is stored
    to compare with: a document that now sends codes elsewhere gets a consent page again
    (RFC 8252 §8.6, RFC 6819 §5.2.3.5), as an RFC 7592 update that adds a redirect URI
    ends the users' grants (update_registration). "" for every other client."""
    if client.registration != REGISTERED_BY_DOCUMENT:
        return ""
    uris = json.dumps(sorted(client.redirect_uris), separators=(",", ":"))
    return "redirect_uris " + hashlib.sha256(uris.encode()).hexdigest()


###############################################################################
# Pushed authorization requests: RFC 9126 ######################################
###############################################################################

# RFC 9126 §1: the client sends the authorization request to the server directly,
# authenticated, and the browser carries only a request_uri that names it. The request's
# parameters then come from the client, never from the browser: none can be altered on
# the way, nor read from the URL. The request is checked at the PAR endpoint as the
# authorization endpoint would check it, and stored (so that every node sharing the store
# finds it), for PUSHED_REQUEST_LIFETIME and one use.
#
# Once the authorization endpoint has taken it, the request goes on through the login and
# consent pages, whose forms carry it signed (purpose "pushed", see resume_url), and back
# to the authorization endpoint after a sign-in as a request_uri of ours that holds it
# signed (RESUME_URI_PREFIX): that proves it was pushed, which a request with plain
# parameters cannot, so require_pushed_authorization_requests holds on every step.

RESUME_URI_PREFIX = "urn:codeflow:pushed:"  # a pushed request going on after a sign-in


def pushed_authorization_request(
    srv: Server,
    params: dict[str, str],
    authorization: str | None,
    address: str = "",
    dpop: DPoPRequest | None = None,
) -> dict[str, Any]:
    """RFC 9126 §2: the PAR endpoint. The client authenticates as at the token endpoint
    (§2: "the rules for client authentication as defined in [RFC6749] for token endpoint
    requests ... apply"), and sends the authorization request's parameters (§2.1), which
    are validated as the authorization endpoint would (§2.1: "The AS MUST validate the
    pushed request as it would an authorization request sent to the authorization
    endpoint"). Answers §2.2's request_uri and expires_in (with 201, set by the route);
    errors as JSON (§2.3). ``dpop``: the request's DPoP proof, if any (RFC 9449 §10.1)."""
    client = authenticate_client(srv, params, authorization, address)
    # RFC 9126 §2.1: "The request_uri authorization request parameter MUST NOT be provided".
    if "request_uri" in params:
        raise InvalidRequest("request_uri cannot be pushed (RFC 9126 section 2.1).")
    # RFC 9449 §10.1: a DPoP proof with the pushed request binds the code to its key, as
    # dpop_jkt does; with both, "the authorization server MUST ... ensure they match".
    if dpop is not None and dpop.proof is not None:
        jkt = check_dpop_proof(srv, dpop)
        if params.setdefault("dpop_jkt", jkt) != jkt:
            raise InvalidDPoPProof("dpop_jkt is not the thumbprint of the DPoP proof's key.")
    # The client's credentials (a secret, or RFC 7523 §2.2's assertion) are not part of the
    # request and are not kept: they would be stored, and shown to the browser after it.
    params = {k: v for k, v in params.items() if k not in CLIENT_CREDENTIAL_PARAMS}
    params["client_id"] = client.client_id
    _, redirect_uri, given = trusted_redirect(srv, list(params.items()))
    validate_authorization_request(srv, client, redirect_uri, given, params, pushed=True)
    # After a sign-in the request goes on signed in one parameter (resume_url): refused
    # now, with a clear error, if it would not fit there.
    if len(RESUME_URI_PREFIX + srv.signer.request(params, "pushed")) > MAX_PARAM_LENGTH:
        raise InvalidRequest(f"The pushed request is too large: at most about "
                             f"{MAX_PARAM_LENGTH} bytes in all.")  # fmt: skip
    request_uri = REQUEST_URI_PREFIX + new_secret()
    srv.storage.save_pushed_request(
        PushedRequest(
            request_uri_hash=token_hash(request_uri),
            client_id=client.client_id,
            params=params,
            expires_at=srv.clock() + PUSHED_REQUEST_LIFETIME,
        )
    )
    audit("request.pushed", client=client.client_id)
    return {"request_uri": request_uri, "expires_in": PUSHED_REQUEST_LIFETIME}


def pushed_request(
    srv: Server, pairs: list[tuple[str, str]]
) -> tuple[list[tuple[str, str]], bool]:
    """The parameters of an authorization request, and whether its client pushed them.

    RFC 9126 §4: with a request_uri the PAR endpoint issued, the pushed parameters are the
    request, "the authorization server MUST ensure that the client_id ... matches", and the
    other parameters sent to the authorization endpoint are ignored; the request_uri is
    used once. A request_uri that is neither ours is left to the authorization request's
    own checks (OIDC Core §6: request_uri_not_supported). Errors here come before a
    redirect_uri is known, so they are a page, never a redirect (RFC 6749 §4.1.2.1).
    """
    request_uri = _only(pairs, "request_uri")
    if request_uri is None or not request_uri.startswith((REQUEST_URI_PREFIX, RESUME_URI_PREFIX)):
        return pairs, False
    client_id = _only(pairs, "client_id")
    if client_id is None:
        raise UntrustedRequest("The request has no client_id (RFC 9126 section 4).")
    if request_uri.startswith(REQUEST_URI_PREFIX):
        pushed = srv.storage.consume_pushed_request(token_hash(request_uri))
        if pushed is None or pushed.expires_at <= srv.clock():
            raise UntrustedRequest(
                "The request_uri is unknown, expired or already used: the application must "
                "push its request again (RFC 9126 section 4)."
            )
        owner, params = pushed.client_id, pushed.params
    else:
        resumed = srv.signer.request_params(request_uri.removeprefix(RESUME_URI_PREFIX), "pushed")
        if resumed is None:
            raise FormExpired("Go back to the application and start again.")
        owner, params = resumed.get("client_id", ""), resumed
    if not hmac.compare_digest(owner.encode(), client_id.encode()):
        raise UntrustedRequest("The request_uri was pushed by another client (RFC 9126 section 4).")
    return request_pairs(params), True


###############################################################################
# Login and consent ##########################################################
###############################################################################


# The purposes of the requests a login form can continue (AuthorizationRequest.purpose).
RESUMABLE = ("authorize", "pushed", "device")


def resume_request(srv: Server, form: dict[str, str], browser: Browser) -> AuthorizationRequest:
    """Check a login, consent or device form's CSRF token and recover the request it
    continues, checked anew."""
    found = [(purpose, srv.signer.request_params(form.get("request"), purpose))
             for purpose in RESUMABLE]  # fmt: skip
    purpose, params = next(((p, v) for p, v in found if v is not None), ("", None))
    if params is None or not srv.signer.check_csrf(form.get("csrf_token"), browser):
        raise FormExpired("Start signing in again.", restart_url(srv, form))
    if purpose == "device":
        return device_request(srv, params)
    pairs = list(params.items())
    client, redirect_uri, given = trusted_redirect(srv, pairs)
    pushed = purpose == "pushed"
    return validate_authorization_request(srv, client, redirect_uri, given, params, pushed)


def resume_url(
    srv: Server, areq: AuthorizationRequest, params: dict[str, str] | None = None
) -> str:
    """Where the request goes on after a sign-in, or from a link on its pages, with
    ``params`` (its own unless given): the authorization endpoint; for a request its client
    pushed, the parameters signed, since they may not come from the browser (RFC 9126 §4,
    see "Pushed authorization requests"); for the device page, /device with the user code."""
    params = areq.params if params is None else params
    if areq.purpose == "device":
        return f"{srv.issuer}{DEVICE_PATH}?{urllib.parse.urlencode(params)}"
    if areq.purpose == "pushed":
        signed = RESUME_URI_PREFIX + srv.signer.request(params, "pushed")
        return authorize_url(srv, {"client_id": areq.client.client_id, "request_uri": signed})
    return authorize_url(srv, params)


def restart_url(
    srv: Server, form: dict[str, str], path: str = AUTHORIZE_PATH, purpose: str = "authorize"
) -> str | None:
    """Where an expired form's request began, if the form still carries one we signed:
    that first request is safe to make again, since it is checked anew. A device form's
    begins again at the /device page; a pushed request's only at its client, which must
    push it again (RFC 9126 §4: a request_uri is short-lived)."""
    params = srv.signer.request_params(form.get("request"), purpose, expired=True)
    if purpose == "authorize" and srv.signer.request_params(form.get("request"), "device",
                                                            expired=True):  # fmt: skip
        return srv.issuer + DEVICE_PATH
    return f"{srv.issuer}{path}?{urllib.parse.urlencode(request_pairs(params))}" if params else None


def login(srv: Server, form: dict[str, str], browser: Browser) -> Redirect | Page:
    """Check a username and password, then a TOTP code for users who enrolled one; on
    success, send the browser back to the authorization endpoint."""
    areq = resume_request(srv, form, browser)
    if form.get("cancel") == "yes":  # no_second_factor_page's way back to the client
        err = UnmetAuthenticationRequirements("The user has no second factor.")
        return error_redirect(srv, areq.redirect_uri, areq.state, err, areq.response_mode)
    if "pending" in form:
        return second_factor(srv, areq, form, browser)
    if "credential" in form and passkeys_offered(srv):  # a passkey, without a password
        found = check_passkey(srv, form, browser, None)
        if found is None:
            return login_page(srv, areq, browser, PASSKEY_REFUSED)
        return signed_in(srv, areq, found[0], browser, found[1])
    username = form.get("username", "")
    user, wait = check_password(srv, username, form.get("password", ""), browser,
                                client=areq.client.client_id)  # fmt: skip
    if wait:
        page = login_page(srv, areq, browser, throttled_message(wait), 429, username)
        return replace(page, retry_after=wait)
    if user is None:
        message = "Wrong username or password. Check both and try again."
        return login_page(srv, areq, browser, message, username=username)
    if has_second_factor(srv, user):
        audit("second_factor.required", user=user.username, client=areq.client.client_id,
              address=browser.address)  # fmt: skip
        return otp_page(srv, areq, browser, user)
    if needs_second_factor(areq):
        return no_second_factor_page(srv, areq, browser)
    return signed_in(srv, areq, user, browser, AMR_PASSWORD)


def check_password(
    srv: Server, username: str, password: str, browser: Browser, *, client: str | None = None
) -> tuple[User | None, int]:
    """The user whose password this is, or None (audited login.failed); or, when guessing
    on the account is throttled (NIST SP 800-63B §5.2.2, see "Throttling"), the seconds to
    wait (audited login.throttled), the password unchecked. An unknown username costs as
    much as a wrong password and is throttled alike, so answers do not tell which names
    exist. ``client``: for the audit events, the client signing in to, if any."""
    # What was typed as a username may be a password typed in the wrong field: logged short.
    who = {"user": username[:64], "client": client, "address": browser.address}
    trusted = username in browser.devices
    with srv.login_limiter.attempt(
        f"password:{username}", browser.address, user=username, trusted=trusted
    ) as attempt:
        if attempt.wait:
            audit("login.throttled", **who)
            return None, attempt.wait
        user = srv.storage.get_user(username)
        stored = user.password_hash if user and user.password_hash != NO_PASSWORD else None
        hashing = srv.password_hashing
        attempt.ok = (
            verify_password(password, stored or dummy_hash(hashing), hashing=hashing)
            and stored is not None
        )
        if stored is not None and stored.startswith(FAST_HASH_SCHEME + "$"):
            srv.transcript.note_convenience(f"user {username!r}: {FAST_HASH_NOTE}")
    if not attempt.ok or user is None:
        audit("login.failed", **who)
        return None, 0
    return user, 0


PASSKEY_REFUSED = "That passkey cannot sign you in. Try again, or use your password."


def throttled_message(wait: int) -> str:
    return (
        "Too many failed sign-in attempts. For your safety, signing in is paused: "
        f"try again in {in_words(wait)}."
    )


def pending_sign_in(srv: Server, form: dict[str, str], browser: Browser) -> User | None:
    """The user of a pending sign-in (the password was right a moment ago), for the second
    factor step; None if it expired, or the user changed since: a new password (or a
    sign-out everywhere) voids it (RFC 9700 §4.14.2 spirit)."""
    username, checked = srv.signer.pending_user(form.get("pending"), browser) or ("", "")
    user = srv.storage.get_user(username) if username else None
    if user is None or not has_second_factor(srv, user):
        return None
    return user if checked == credentials_fingerprint(user) else None


def second_factor(
    srv: Server, areq: AuthorizationRequest, form: dict[str, str], browser: Browser
) -> Redirect | Page:
    """RFC 6238: check the TOTP code (or a recovery code) of a user whose password was
    right a moment ago."""
    user = pending_sign_in(srv, form, browser)
    if user is None:
        raise FormExpired(
            "This sign-in has expired. Start signing in again.",
            resume_url(srv, areq),
            OTP_LIFETIME,
        )
    if "credential" in form:
        found = check_passkey(srv, form, browser, user)
        if found is None:
            return otp_page(srv, areq, browser, user, PASSKEY_REFUSED)
        return signed_in(srv, areq, user, browser, found[1])
    amr, wait, message = check_second_factor(srv, user, form, browser,
                                             client=areq.client.client_id)  # fmt: skip
    if amr is None:
        page = otp_page(srv, areq, browser, user, message, 429 if wait else 200)
        return replace(page, retry_after=wait)
    return signed_in(srv, areq, user, browser, amr)


def check_second_factor(
    srv: Server, user: User, form: dict[str, str], browser: Browser, *, client: str | None = None
) -> tuple[tuple[str, ...] | None, int, str]:
    """Check the second factor of ``user``: the form's TOTP code ``otp`` (RFC 6238), or one
    of the user's recovery codes ``recovery_code`` (NIST SP 800-63B §5.1.2 look-up secrets,
    used once). Returns the sign-in's amr (RFC 8176: both are one-time passwords, "otp")
    on success; else None, the seconds to wait if throttled, and what to tell the user.
    Both kinds are throttled on the same count (see "Throttling failed sign-ins")."""
    who = {"user": user.username, "client": client, "address": browser.address}
    secret = user.totp_secret
    if secret is None:  # pending_sign_in found one: it was removed since
        return None, 0, "This account has no authenticator app now. Start signing in again."
    recovery = form.get("recovery_code")
    trusted = user.username in browser.devices
    with srv.login_limiter.attempt(
        f"otp:{user.username}", browser.address, user=user.username, trusted=trusted
    ) as attempt:
        if attempt.wait:
            audit("second_factor.throttled", **who)
            wait = attempt.wait
            return None, wait, f"Too many wrong codes. Try again in {in_words(wait)}."
        if recovery is not None:
            attempt.ok = srv.storage.consume_recovery_code(
                user.username, recovery_code_hash(user.username, recovery)
            )
            step = None
        else:
            step = totp_step(secret, form.get("otp", ""), srv.clock())
            # A code used once is a failure too (RFC 6238 §5.2).
            attempt.ok = step is not None and srv.storage.record_totp_step(user.username, step)
    if recovery is not None:
        if not attempt.ok:
            audit("second_factor.failed", **who, kind="recovery_code")
            return None, 0, "That recovery code is not right, or it was used before."
        audit("account.recovery_code_used", **who,
              left=srv.storage.recovery_codes_left(user.username))  # fmt: skip
        return AMR_PASSWORD_AND_OTP, 0, ""
    if step is None:
        audit("second_factor.failed", **who)
        return None, 0, "That code is not right. Try again."
    if not attempt.ok:
        audit("second_factor.replayed", **who)
        return None, 0, "That code was already used. Wait for the next one."
    return AMR_PASSWORD_AND_OTP, 0, ""


def in_words(seconds: int) -> str:
    """A wait as a person reads it: "30 seconds", "2 minutes" (rounded up)."""
    if seconds < 60:
        return f"{seconds} second{'s' * (seconds != 1)}"
    minutes = math.ceil(seconds / 60)
    return f"{minutes} minute{'s' * (minutes != 1)}"


def totp_step(secret: str, otp: str, now: float) -> int | None:
    """The time step whose code ``otp`` is, allowing one step of clock drift either way
    (RFC 6238 §5.2: "at most one time step is allowed as the network delay")."""
    totp = pyotp.TOTP(secret)
    otp = otp.replace(" ", "")
    current = int(now) // totp.interval
    for step in (current, current - 1, current + 1):
        if hmac.compare_digest(totp.generate_otp(step).encode(), otp.encode()):
            return step
    return None


def signed_in(
    srv: Server,
    areq: AuthorizationRequest,
    user: User,
    browser: Browser,
    amr: tuple[str, ...],
) -> Redirect:
    """Start the login session of ``user``, as its credentials were checked, signed in by
    the methods ``amr`` (RFC 8176), and go back to the authorization endpoint."""
    session = start_session(srv, user, browser, amr)
    audit("login.succeeded", user=user.username, client=areq.client.client_id,
          address=browser.address, amr=" ".join(amr))  # fmt: skip
    remember_address(srv, user, browser)
    # The user has just signed in: prompt=login and max_age are satisfied, and must not
    # send the browser round again.
    params = dict(areq.params)
    params.pop("max_age", None)
    prompt = " ".join(p for p in split_scope(params.pop("prompt", None)) if p != "login")
    if prompt:
        params["prompt"] = prompt
    return Redirect(resume_url(srv, areq, params), session=session)


def remember_address(srv: Server, user: User, browser: Browser) -> None:
    """A sign-in completed from the browser's address: one of the user's known ones for
    throttling, for both kinds of secret (see "Throttling failed sign-ins")."""
    srv.login_limiter.remember(user, browser.address)


def consent(srv: Server, form: dict[str, str], browser: Browser) -> Redirect | Page:
    """Record the user's decision and answer the client (RFC 6749 §4.1.2, §4.1.2.1)."""
    areq = resume_request(srv, form, browser)
    if areq.purpose == "device":  # a device request is decided on the /device page
        raise UntrustedRequest("This form belongs to the device page.")
    session = browser.session
    if session is None:
        return login_page(srv, areq, browser, "Your sign-in has expired. Sign in again.")
    decision = form.get("decision")
    if decision == "deny":
        audit("consent.denied", user=session.username, client=areq.client.client_id)
        denied = AccessDenied("The user denied the request.")
        return error_redirect(srv, areq.redirect_uri, areq.state, denied, areq.response_mode)
    if decision != "approve":
        raise UntrustedRequest("The form's decision must be approve or deny.")
    if client_identified(areq.client, areq.redirect_uri):
        srv.storage.save_consent(
            session.username, areq.client.client_id, consent_scopes(areq), srv.clock(),
            consent_binding(areq.client),
        )
    audit("consent.granted", user=session.username, client=areq.client.client_id,
          scope=" ".join(areq.scope))  # fmt: skip
    return issue_code(srv, areq, session.username, session.auth_time, session.amr, session.sid)


def authorize_url(srv: Server, params: dict[str, str]) -> str:
    return f"{srv.issuer}{AUTHORIZE_PATH}?{urllib.parse.urlencode(request_pairs(params))}"


###############################################################################
# The user's account: password, second factor, apps, sessions ##################
###############################################################################

# /account lets users manage their own sign-in (README "Your account"). It has its own
# sign-in (the same checks and throttling as the login page, without an authorization
# request), and every form the same CSRF token and same-origin check as login and consent.
# Changing the second factor asks for a recent sign-in, as max_age does (OIDC Core
# §3.1.2.1): whoever sits at a browser someone left signed in for hours must not be able
# to swap the authenticator app for their own. 15 minutes is long enough to sign in, find
# the phone, scan the QR code and type the first code; a password change asks for the
# current password instead, which is that re-authentication.
ACCOUNT_REAUTH_AGE = 15 * 60
# NIST SP 800-63B §5.1.1.2: "Memorized secrets SHALL be at least 8 characters in length if
# chosen by the subscriber"; "at least 64 characters" SHOULD be allowed (MAX_PARAM_LENGTH).
MIN_PASSWORD_LENGTH = 8
RECOVERY_CODES = 10  # NIST SP 800-63B §5.1.2 look-up secrets, each 80 random bits
RECOVERY_CODE_BYTES = 10

# NIST SP 800-63B §5.1.1.2: "the list MAY include, but is not limited to: Passwords
# obtained from previous breach corpuses. Dictionary words. Repetitive or sequential
# characters (e.g. 'aaaaaa', '1234abcd'). Context-specific words, such as the name of the
# service, the username". The most common passwords of at least MIN_PASSWORD_LENGTH
# characters in public breach corpora (shorter ones fail the length rule already), lower
# case; kept in this module so that it stays self-contained. Repetition, sequences, the
# username and the service's name are checked by rule (password_problem).
COMMON_PASSWORDS = frozenset("""
password password1 password12 password123 password1234 passw0rd p@ssw0rd p@ssword
12345678 123456789 1234567890 12345678910 0123456789 987654321 9876543210 87654321
11111111 00000000 22222222 88888888 99999999 12341234 11223344 12344321 69696969
qwertyuiop qwertyui qwerty123 qwerty1234 qwerty12 1q2w3e4r 1q2w3e4r5t 1qaz2wsx
zaq12wsx zaq1zaq1 qazwsxedc 1qazxsw2 q1w2e3r4 q1w2e3r4t5 asdfghjk asdfghjkl
zxcvbnm1 abcd1234 abc12345 abcdefgh a1b2c3d4 1234qwer 123qweasd qweasdzxc
iloveyou iloveyou1 iloveyou2 sunshine sunshine1 football football1 baseball
baseball1 basketball princess princess1 welcome1 welcome123 trustno1 superman
superman1 whatever whatever1 starwars computer michelle jennifer letmein1
letmein123 admin123 administrator changeme changeme1 mustang1 shadow12 monkey12
dragon12 master12 charlie1 jordan23 liverpool chocolate butterfly michael1 maverick
internet samsung1 blink182 pokemon1 freedom1 secret123 hello123 helloworld
whatever! football! 1password firebird iloveyou! sunflower flower123 jessica1
ashley12 matthew1 andrew12 justin12 thomas12 robert12 daniel12 danielle
jonathan midnight november december elephant dolphins pineapple spiderman
batman12 pass1234 pass12345 test1234 test12345 testtest 1234abcd abcd12345
lovelove loveme12 mylove12 babygirl babygirl1 angel123 summer123 winter123
autumn123 spring123 summer2024 summer2025 winter2024 winter2025 welcome2024
welcome2025 password2024 password2025 football123 monkey123 dragon123 master123
killer123 soccer123 hockey123 jordan123 hunter123 buster123 tigger123 ginger123
purple123 orange123 yellow123 silver123 golden123 diamond1 cookie123 cheese123
banana123 chelsea1 arsenal1 manchester barcelona qwerty11 zxcvbnm123 asdf1234
asdfasdf qwerqwer 1qaz2wsx3edc 123123123 123321123 147258369 159753456 741852963
147852369 789456123 456123789 963852741 google123 facebook yahoo123 linkedin
microsoft apple123 netflix1 youtube1 instagram twitter1 codeflow codeflow1
""".split())


def password_problem(password: str, username: str) -> str | None:
    """Why ``password`` may not be chosen (NIST SP 800-63B §5.1.1.2), or None. The rules
    are the ones §5.1.1.2 names: length, and not a common, repetitive, sequential or
    context-specific one; §5.1.1.2 "SHOULD NOT impose other composition rules"."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"Choose a password of at least {MIN_PASSWORD_LENGTH} characters."
    lowered = password.lower()
    if lowered in COMMON_PASSWORDS:
        return "That password is one of the most common ones, which attackers try first."
    if len(set(lowered)) <= 2:
        return "That password repeats the same characters. Choose a less predictable one."
    runs = ("0123456789", "abcdefghijklmnopqrstuvwxyz", "qwertyuiopasdfghjklzxcvbnm")
    if any(lowered in run or lowered in run[::-1] for run in runs):
        return "That password is a run of keys in order. Choose a less predictable one."
    if username and username.lower() in lowered:
        return "Your password may not contain your username."
    return None


def new_recovery_code() -> str:
    """A recovery code: 80 random bits in base32, as four groups of four (RFC 4648 §6)."""
    raw = base64.b32encode(secrets.token_bytes(RECOVERY_CODE_BYTES)).decode("ascii")
    return "-".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def recovery_code_hash(username: str, code: str) -> str:
    """What storage keeps of a recovery code: the SHA-256 of the user's name and the code
    as typed, less spaces, dashes and case. 80 random bits need no slow hash (NIST SP
    800-63B §5.1.2.1 asks a salted hash of secrets with less than 112 bits of entropy
    stored only where guessing offline is otherwise cheap; 2^80 SHA-256 is not)."""
    normal = re.sub(r"[\s-]", "", code).upper()
    return hashlib.sha256(f"{username}\0{normal}".encode()).hexdigest()


def account_url(srv: Server, path: str = "", **query: str) -> str:
    """An absolute URL of the account area (ACCOUNT_PATH + ``path``)."""
    url = f"{srv.issuer}{ACCOUNT_PATH}{path}"
    return f"{url}?{urllib.parse.urlencode(query)}" if query else url


def account(srv: Server, query: dict[str, str], browser: Browser) -> Redirect | Page:
    """GET /account: the overview, or the account's sign-in page for a browser without a
    login session."""
    session = browser.session
    user = srv.storage.get_user(session.username) if session is not None else None
    if session is None or user is None:
        return Redirect(account_url(srv, "/login"))
    return account_page(srv, browser, session, user, ACCOUNT_NOTICES.get(query.get("done", "")))


def account_form(srv: Server, form: dict[str, str], browser: Browser) -> Session | Redirect:
    """The login session a form of the account area acts for, after its CSRF check (RFC
    6749 §10.12: the token is bound to the browser and to this session); a redirect to the
    account's sign-in page when the browser has none (signed out meanwhile)."""
    if browser.session is None:
        return Redirect(account_url(srv, "/login"))
    if not srv.signer.check_csrf(form.get("csrf_token"), browser):
        raise FormExpired("Open your account page and try again.", account_url(srv))
    return browser.session


def recently_signed_in(srv: Server, session: Session) -> bool:
    """Whether the session's sign-in is recent enough to change the second factor
    (ACCOUNT_REAUTH_AGE, as max_age: OIDC Core §3.1.2.1)."""
    return srv.clock() - session.auth_time <= ACCOUNT_REAUTH_AGE


def ask_reauthentication(srv: Server, session: Session, change: str) -> Redirect:
    audit("account.reauth_required", user=session.username, change=change)
    return Redirect(account_url(srv, "/login", reauth="yes"))


def account_login(srv: Server, form: dict[str, str], browser: Browser) -> Redirect | Page:
    """POST /account/login: the password, then the second factor of users who have one,
    checked and throttled as on the login page (check_password, check_second_factor); on
    success a new login session, and back to the account page."""
    if not srv.signer.check_csrf(form.get("csrf_token"), browser):
        raise FormExpired("Start signing in again.", account_url(srv, "/login"))
    if "pending" in form:
        user = pending_sign_in(srv, form, browser)
        if user is None:
            raise FormExpired("This sign-in has expired. Start signing in again.",
                              account_url(srv, "/login"), OTP_LIFETIME)  # fmt: skip
        if "credential" in form:
            found = check_passkey(srv, form, browser, user)
            if found is None:
                return account_otp_page(srv, browser, user, PASSKEY_REFUSED)
            return account_signed_in(srv, user, browser, found[1])
        amr, wait, message = check_second_factor(srv, user, form, browser)
        if amr is None:
            page = account_otp_page(srv, browser, user, message, 429 if wait else 200)
            return replace(page, retry_after=wait)
        return account_signed_in(srv, user, browser, amr)
    if "credential" in form and passkeys_offered(srv):  # a passkey, without a password
        found = check_passkey(srv, form, browser, None)
        if found is None:
            return account_login_page(srv, browser, PASSKEY_REFUSED)
        return account_signed_in(srv, found[0], browser, found[1])
    username = form.get("username", "")
    user, wait = check_password(srv, username, form.get("password", ""), browser)
    if wait:
        page = account_login_page(srv, browser, throttled_message(wait), 429, username)
        return replace(page, retry_after=wait)
    if user is None:
        message = "Wrong username or password. Check both and try again."
        return account_login_page(srv, browser, message, username=username)
    if has_second_factor(srv, user):
        audit("second_factor.required", user=user.username, address=browser.address)
        return account_otp_page(srv, browser, user)
    return account_signed_in(srv, user, browser, AMR_PASSWORD)


def account_signed_in(
    srv: Server, user: User, browser: Browser, amr: tuple[str, ...]
) -> Redirect:
    session = start_session(srv, user, browser, amr)
    audit("login.succeeded", user=user.username, address=browser.address,
          amr=" ".join(amr), to="account")  # fmt: skip
    remember_address(srv, user, browser)
    return Redirect(account_url(srv), session=session)


def change_password(srv: Server, form: dict[str, str], browser: Browser) -> Redirect | Page:
    """POST /account/password: the current password (checked and throttled as a sign-in),
    and a new one that NIST SP 800-63B §5.1.1.2 allows. Every other session of the user
    ends, as do refresh tokens issued under the old password (Server.set_password); this
    browser gets a new session."""
    session = account_form(srv, form, browser)
    if isinstance(session, Redirect):
        return session
    user, wait = check_password(srv, session.username, form.get("current_password", ""),
                                browser, client=None)  # fmt: skip
    if wait:
        page = account_overview(srv, browser, session, throttled_message(wait), 429)
        return replace(page, retry_after=wait)
    if user is None:
        audit("account.password_refused", user=session.username, reason="current_password")
        message = "Your current password is not right. Nothing was changed."
        return account_overview(srv, browser, session, message, 400, field="current_password")
    problem = password_problem(form.get("new_password", ""), user.username)
    if problem is not None:
        audit("account.password_refused", user=user.username, reason="policy")
        return account_overview(srv, browser, session, problem + " Nothing was changed.", 400,
                                field="new_password")  # fmt: skip
    user = srv.set_password(user.username, form["new_password"])
    audit("account.password_changed", user=user.username, address=browser.address)
    new = start_session(srv, user, browser, session.amr, session.auth_time)
    return Redirect(account_url(srv, done="password"), session=new)


def account_overview(
    srv: Server, browser: Browser, session: Session, message: str, status: int,
    field: str = "",
) -> Page:
    """The account page again, saying what was wrong with a form (``message``; its
    ``field`` marked invalid), with ``status``."""
    user = srv.storage.get_user(session.username)
    if user is None:
        raise FormExpired("Sign in again.", account_url(srv, "/login"))
    return account_page(srv, browser, session, user, None, message, status, field)


def change_totp(srv: Server, form: dict[str, str], browser: Browser) -> Redirect | Page:
    """POST /account/totp, after a recent sign-in: ``step=start`` shows a new secret (RFC
    6238) as a QR code and as text; ``step=confirm`` turns it on once the app's first code
    is right, with new recovery codes shown once; ``step=remove`` turns the second factor
    off and deletes the recovery codes. A change ends the user's other sessions and
    refresh tokens (Server.set_totp); this browser gets a new session."""
    session = account_form(srv, form, browser)
    if isinstance(session, Redirect):
        return session
    step = form.get("step")
    if step not in ("start", "confirm", "remove"):
        raise InvalidRequest("step must be start, confirm or remove.")
    if not recently_signed_in(srv, session):
        return ask_reauthentication(srv, session, "totp")
    user = srv.storage.get_user(session.username)
    if user is None:
        return Redirect(account_url(srv, "/login"))
    if step == "start":
        return totp_enrol_page(srv, browser, session, pyotp.random_base32())
    if step == "remove":
        user = srv.set_totp(user.username, None)
        srv.storage.set_recovery_codes(user.username, ())
        audit("account.totp_removed", user=user.username, address=browser.address)
        new = start_session(srv, user, browser, session.amr, session.auth_time)
        return Redirect(account_url(srv, done="totp-removed"), session=new)
    payload = srv.signer.loads(form.get("enrol"), "totp-enrol")
    if not payload or payload.get("s") != session.sid or not isinstance(payload.get("k"), str):
        raise FormExpired("Start setting up the app again.", account_url(srv))
    secret = payload["k"]
    totp = totp_step(secret, form.get("otp", ""), srv.clock())
    if totp is None:
        message = "That code is not right. Check the app and type the code it shows now."
        return totp_enrol_page(srv, browser, session, secret, message, 400)
    user = srv.set_totp(user.username, secret)
    # The code that confirmed the app cannot sign anyone in afterwards (RFC 6238 §5.2).
    srv.storage.record_totp_step(user.username, totp)
    audit("account.totp_enrolled", user=user.username, address=browser.address)
    codes = give_recovery_codes(srv, user.username)
    new = start_session(srv, user, browser, session.amr, session.auth_time)
    return replace(recovery_codes_page(srv, codes, enrolled=True), session=new)


def new_recovery_codes(srv: Server, form: dict[str, str], browser: Browser) -> Redirect | Page:
    """POST /account/recovery-codes, after a recent sign-in: a new set of recovery codes,
    shown once; the old ones stop working (NIST SP 800-63B §5.1.2)."""
    session = account_form(srv, form, browser)
    if isinstance(session, Redirect):
        return session
    if not recently_signed_in(srv, session):
        return ask_reauthentication(srv, session, "recovery_codes")
    user = srv.storage.get_user(session.username)
    if user is None or not user.totp_secret:
        raise InvalidRequest("Recovery codes go with an authenticator app: set one up first.")
    return recovery_codes_page(srv, give_recovery_codes(srv, user.username))


def give_recovery_codes(srv: Server, username: str) -> list[str]:
    """New recovery codes for the user, replacing any before; returned to be shown once,
    stored only as hashes."""
    codes = [new_recovery_code() for _ in range(RECOVERY_CODES)]
    srv.storage.set_recovery_codes(username, [recovery_code_hash(username, c) for c in codes])
    audit("account.recovery_codes_created", user=username, count=len(codes))
    return codes


def revoke_app(srv: Server, form: dict[str, str], browser: Browser) -> Redirect | Page:
    """POST /account/apps: end what the user granted the client ``client_id``: its consent,
    every token (a refresh token fails from now on) and unredeemed code (RFC 7009 §2.1,
    Server.revoke_grant)."""
    session = account_form(srv, form, browser)
    if isinstance(session, Redirect):
        return session
    client_id = form.get("client_id")
    if client_id is None:
        raise InvalidRequest("Which app? The form names none.")
    if srv.revoke_grant(session.username, client_id):
        audit("account.app_revoked", user=session.username, client=client_id,
              address=browser.address)  # fmt: skip
    return Redirect(account_url(srv, done="app"))


def end_sessions(srv: Server, form: dict[str, str], browser: Browser) -> Redirect | Page:
    """POST /account/sessions: sign out one of the user's sessions (``session``, its handle
    on the account page) or, with ``all=others``, every one but this browser's."""
    session = account_form(srv, form, browser)
    if isinstance(session, Redirect):
        return session
    if form.get("all") == "others":
        count = srv.storage.delete_login_sessions(session.username, keep=session.sid)
        audit("account.sessions_ended", user=session.username, count=count,
              address=browser.address)  # fmt: skip
        return Redirect(account_url(srv, done="sessions"))
    handle = form.get("session", "")
    sessions = srv.storage.list_login_sessions(session.username, srv.clock())
    # compare_digest takes str only when ASCII; the form's handle may be any text.
    given = handle.encode("utf-8", "surrogatepass")
    found = [s for s in sessions
             if hmac.compare_digest(session_handle(srv, s.sid).encode(), given)]  # fmt: skip
    if not found:
        return Redirect(account_url(srv, done="session"))  # ended meanwhile
    srv.storage.delete_login_sessions(session.username, found[0].sid)
    audit("account.session_ended", user=session.username, address=browser.address,
          this_browser=int(found[0].sid == session.sid))  # fmt: skip
    if found[0].sid == session.sid:
        return Redirect(account_url(srv, "/login"), signed_out=True)
    return Redirect(account_url(srv, done="session"))


def session_handle(srv: Server, sid: str) -> str:
    """How the account page names a session in its forms: a MAC of the sid, so that the
    page never shows one (a sid is in the ID tokens relying parties receive)."""
    return srv.signer.mac("account-session\0" + sid)[:22]


ACCOUNT_NOTICES = {
    "password": "Your password was changed. Your other sessions were signed out.",
    "totp-removed": "The authenticator app was removed, and your recovery codes with it.",
    "app": "The app's access was revoked. It must ask you again to get it back.",
    "session": "That session was signed out.",
    "sessions": "All your other sessions were signed out.",
    "passkey": "The passkey was added.",
    "passkey-removed": "The passkey was removed.",
}


###############################################################################
# Passkeys: WebAuthn Level 2 ##################################################
###############################################################################

# Passkeys (README "Your account") are WebAuthn credentials, checked with the `webauthn`
# library (the optional extra "passkeys"; without it, or without Server(passkeys=True), no
# page offers them). A user registers one on the account page; then it is the second
# factor after the password, and, where the user allowed it and the authenticator verified
# the user (WebAuthn §6.2.3, a PIN or biometric), a sign-in of its own. The pages offer it
# progressively: a button that only their one script (allowed by hash) shows, when the
# browser has WebAuthn's JSON helpers; without JavaScript, the password form works as ever.
#
# Ceremonies are stateless until they end: the options carry a random challenge, and a
# signed state binds it to this browser (its CSRF cookie's id), to the login session (or
# the pending sign-in) it is for, and to its kind; the state expires with the form. The
# challenge is used once (Storage.use_webauthn_challenge, WebAuthn §13.4.3). The relying
# party ID is the issuer's host (WebAuthn §5.1.3: a registrable domain of the origin, so an
# IP address cannot be one: passkeys need the issuer to be a name, such as localhost).

PASSKEY_TIMEOUT = 5 * 60 * 1000  # WebAuthn §5.4 timeout, in milliseconds
PASSKEY_NAME_LENGTH = 60


def passkeys_offered(srv: Server) -> bool:
    """Whether this server offers passkeys: asked for, and the library is there."""
    if not srv.passkeys:
        return False
    try:
        import webauthn  # noqa: F401 -- optional (extra "passkeys")
    except ImportError:
        return False
    return True


def rp_id(srv: Server) -> str:
    """WebAuthn §5.1.3 / §13.4.9: the relying party ID, the issuer's host."""
    return urllib.parse.urlsplit(srv.issuer).hostname or ""


def ceremony_state(
    srv: Server, browser: Browser, kind: str, challenge: bytes, username: str = ""
) -> str:
    """The signed state of a ceremony: its challenge, bound to this browser, its session
    and ``kind`` ("create", "2fa" for ``username``'s pending sign-in, "signin")."""
    sid = browser.session.sid if browser.session else ""
    payload = {"c": b64url(challenge), "k": kind, "b": browser.csrf, "s": sid, "u": username}
    return srv.signer.dumps(payload, "webauthn", FORM_LIFETIME)


def ceremony_challenge(
    srv: Server, form: dict[str, str], browser: Browser, kind: str, username: str = ""
) -> bytes | None:
    """The challenge of the form's ceremony, if its state was made for this browser,
    session, kind (and user) and the challenge was not used before; else None."""
    payload = srv.signer.loads(form.get("state"), "webauthn")
    sid = browser.session.sid if browser.session else ""
    if (
        not payload
        or payload.get("k") != kind
        or not hmac.compare_digest(str(payload.get("b")), browser.csrf)
        or (kind == "create" and payload.get("s") != sid)
        or payload.get("u") != username
    ):
        return None
    challenge = str(payload.get("c", ""))
    if not srv.storage.use_webauthn_challenge(token_hash(challenge), float(payload["e"])):
        return None
    return base64.urlsafe_b64decode(challenge + "==")


def user_handle(user: User) -> bytes:
    """WebAuthn §14.6.1: a user handle that is no personal information: a hash of the
    subject (credentials are found by their id here, never by this handle)."""
    return hashlib.sha256(f"codeflow-user\0{user.subject}".encode()).digest()[:16]


def registration_options(srv: Server, browser: Browser, user: User) -> tuple[str, str]:
    """WebAuthn §5.4: the options to create a passkey for ``user`` (JSON), and its state.
    A discoverable credential is preferred (it can sign in without a username), the
    user's passkeys are excluded (§5.4.3: not registered twice)."""
    import webauthn
    from webauthn.helpers import structs

    challenge = secrets.token_bytes(32)
    options = webauthn.generate_registration_options(
        rp_id=rp_id(srv), rp_name=f"codeflow {rp_id(srv)}", user_name=user.username,
        user_id=user_handle(user), challenge=challenge, timeout=PASSKEY_TIMEOUT,
        authenticator_selection=structs.AuthenticatorSelectionCriteria(
            resident_key=structs.ResidentKeyRequirement.PREFERRED,
            user_verification=structs.UserVerificationRequirement.PREFERRED,
        ),
        exclude_credentials=descriptors(srv.storage.list_passkeys(user.username)),
    )  # fmt: skip
    state = ceremony_state(srv, browser, "create", challenge)
    return webauthn.options_to_json(options), state


def authentication_options(
    srv: Server, browser: Browser, user: User | None = None
) -> tuple[str, str]:
    """WebAuthn §5.5: the options to sign in with a passkey, and the state. For ``user``'s
    second factor, that user's passkeys; else (a sign-in without a password) any
    discoverable one, with the user verified (§6.2.3)."""
    import webauthn
    from webauthn.helpers import structs

    challenge = secrets.token_bytes(32)
    allowed = descriptors(srv.storage.list_passkeys(user.username)) if user else []
    verification = (
        structs.UserVerificationRequirement.PREFERRED if user
        else structs.UserVerificationRequirement.REQUIRED
    )  # fmt: skip
    options = webauthn.generate_authentication_options(
        rp_id=rp_id(srv), challenge=challenge, timeout=PASSKEY_TIMEOUT,
        allow_credentials=allowed, user_verification=verification,
    )  # fmt: skip
    state = ceremony_state(srv, browser, "2fa" if user else "signin", challenge,
                           user.username if user else "")  # fmt: skip
    return webauthn.options_to_json(options), state


def descriptors(passkeys: Iterable[Passkey]) -> list[Any]:
    """WebAuthn §5.8.3: the credential descriptors of ``passkeys``."""
    from webauthn.helpers import structs

    return [
        structs.PublicKeyCredentialDescriptor(
            id=base64.urlsafe_b64decode(p.credential_id + "=="),
            transports=[structs.AuthenticatorTransport(t) for t in p.transports
                        if t in structs.AuthenticatorTransport._value2member_map_],
        )
        for p in passkeys
    ]  # fmt: skip


def credential_id_of(form: dict[str, str]) -> str:
    """The ``id`` of the form's credential (WebAuthn §5.1, PublicKeyCredential.toJSON())."""
    try:
        credential = json.loads(form.get("credential", ""))
    except ValueError:
        return ""
    found = credential.get("id") if isinstance(credential, dict) else None
    return found if isinstance(found, str) else ""


def check_passkey(
    srv: Server, form: dict[str, str], browser: Browser, user: User | None
) -> tuple[User, tuple[str, ...]] | None:
    """WebAuthn §7.2: verify the form's assertion: the second factor of ``user`` (its pending
    sign-in), or without ``user`` a sign-in without a password, which needs a passkey the
    user allowed for it and a verified user. Returns the user and the sign-in's amr (RFC
    8176 §2: ``hwk`` for a key bound to its device, ``swk`` for a synced one; with the
    password ``pwd`` and ``mfa``; alone ``user``, and ``mfa`` since the authenticator
    verified the user), or None (audited passkey.failed)."""
    import webauthn
    from webauthn.helpers import exceptions

    kind, name = ("2fa", user.username) if user else ("signin", "")
    challenge = ceremony_challenge(srv, form, browser, kind, name)
    passkey = srv.storage.get_passkey(credential_id_of(form))
    holder = srv.storage.get_user(passkey.username) if passkey else None
    who = {"user": name or (passkey.username if passkey else None), "address": browser.address}
    if (
        challenge is None or passkey is None or holder is None
        or (user is not None and holder.username != user.username)
        or (user is None and not passkey.passwordless)
    ):  # fmt: skip
        audit("passkey.failed", **who)
        return None
    try:
        verified = webauthn.verify_authentication_response(
            credential=form["credential"], expected_challenge=challenge,
            expected_rp_id=rp_id(srv), expected_origin=web_origin(srv.issuer) or "",
            credential_public_key=base64.urlsafe_b64decode(passkey.public_key + "=="),
            credential_current_sign_count=passkey.sign_count,
            require_user_verification=user is None,
        )  # fmt: skip
    except (exceptions.WebAuthnException, ValueError, KeyError, TypeError):
        audit("passkey.failed", **who)
        return None
    if not srv.storage.record_passkey_use(passkey.credential_id, verified.new_sign_count,
                                          srv.clock()):  # fmt: skip
        audit("passkey.failed", **who, reason="sign_count")
        return None
    key = "swk" if passkey.backed_up else "hwk"
    amr = ("pwd", key, "mfa") if user else (key, "user", "mfa")
    audit("passkey.used", user=holder.username, address=browser.address, amr=" ".join(amr))
    return holder, amr


def change_passkeys(srv: Server, form: dict[str, str], browser: Browser) -> Redirect | Page:
    """POST /account/passkeys, after a recent sign-in: ``step=create`` registers the
    form's new credential (WebAuthn §7.1), ``step=remove`` deletes the passkey
    ``credential_id``."""
    session = account_form(srv, form, browser)
    if isinstance(session, Redirect):
        return session
    if not passkeys_offered(srv):
        raise InvalidRequest("This server does not offer passkeys.")
    if not recently_signed_in(srv, session):
        return ask_reauthentication(srv, session, "passkeys")
    step = form.get("step")
    if step == "remove":
        if srv.storage.delete_passkey(session.username, form.get("credential_id", "")):
            audit("passkey.removed", user=session.username, address=browser.address)
        return Redirect(account_url(srv, done="passkey-removed"))
    if step != "create":
        raise InvalidRequest("step must be create or remove.")
    import webauthn
    from webauthn.helpers import exceptions

    challenge = ceremony_challenge(srv, form, browser, "create")
    if challenge is None:
        raise FormExpired("Open your account page and add the passkey again.", account_url(srv))
    passwordless = form.get("passwordless") == "yes"
    try:
        verified = webauthn.verify_registration_response(
            credential=form.get("credential", ""), expected_challenge=challenge,
            expected_rp_id=rp_id(srv), expected_origin=web_origin(srv.issuer) or "",
            require_user_verification=passwordless,
        )  # fmt: skip
    except (exceptions.WebAuthnException, ValueError, KeyError, TypeError):
        return account_overview(srv, browser, session, "That passkey could not be added: it "
                                "did not verify you. Try again, or another one.", 400)  # fmt: skip
    name = (form.get("name") or "Passkey").strip()[:PASSKEY_NAME_LENGTH] or "Passkey"
    # WebAuthn §5.2.1.1 getTransports(): a list of strings; anything else is no hint.
    response = json.loads(form["credential"]).get("response")
    transports = response.get("transports") if isinstance(response, dict) else None
    saved = srv.storage.save_passkey(Passkey(
        credential_id=b64url(verified.credential_id), username=session.username,
        public_key=b64url(verified.credential_public_key), sign_count=verified.sign_count,
        name=name, created_at=srv.clock(), passwordless=passwordless,
        backed_up=verified.credential_backed_up,
        transports=tuple(t for t in transports if isinstance(t, str))[:8]
        if isinstance(transports, list) else (),
    ))  # fmt: skip
    # WebAuthn Level 2 §7.1 step 22: "Check that the credentialId is not yet registered to
    # any other user" (nor again to this one): an id is never handed over.
    if not saved:
        audit("passkey.failed", user=session.username, address=browser.address,
              reason="credential id registered")  # fmt: skip
        return account_overview(srv, browser, session, "That passkey is already registered. "
                                "Nothing was changed.", 400)  # fmt: skip
    audit("passkey.registered", user=session.username, address=browser.address,
          passwordless=int(passwordless))  # fmt: skip
    return Redirect(account_url(srv, done="passkey"))


def has_second_factor(srv: Server, user: User) -> bool:
    """A TOTP app, or (where passkeys are offered) a passkey."""
    return bool(user.totp_secret) or (
        passkeys_offered(srv) and bool(srv.storage.list_passkeys(user.username))
    )


###############################################################################
# Device authorization grant: RFC 8628 #########################################
###############################################################################

# RFC 8628 §1: a device without a browser (a TV, a command-line tool) asks for a device
# code and a user code (§3.1, §3.2); the user types the user code on the /device page in
# a browser (§3.3), signs in there as at the authorization endpoint (password, TOTP) and
# approves or denies the request; meanwhile the device polls the token endpoint with the
# device code (§3.4, §3.5). The user code is the one secret a person types, so it is
# short (§6.1: 8 characters of 20, about 34.5 bits), short-lived (DEVICE_CODE_LIFETIME),
# used once, and its guesses are throttled (§5.1) by the sign-in throttle: per address,
# and across all addresses (the account-wide gates of "Throttling failed sign-ins", under
# the one key USER_CODE_THROTTLE). A right code is not counted as a success there, since
# a success would reset the counts and anyone can make codes of their own to interleave
# with guesses; a signed-in user's browser passes the account-wide gates (its sign-in was
# throttled already), so guessing from elsewhere cannot keep it waiting, and its own
# wrong codes count against its user rather than its address (one account, many
# addresses, is still one guesser).
# What the page shows (the client's name, the scopes, the code to compare with the
# device's) is what §5.4 asks for against remote phishing: the user confirms, always, even
# when verification_uri_complete brought the code (§3.3.1).

USER_CODE_THROTTLE = "device:user_code"  # one throttle key for every user code (§5.1)


def device_authorization(
    srv: Server, params: dict[str, str], authorization: str | None, address: str = ""
) -> dict[str, Any]:
    """RFC 8628 §3.1: the device authorization endpoint. REQUIRED: client_id (for a
    public client; a confidential one authenticates as at the token endpoint: §3.1 "the
    client authentication requirements of Section 3.2.1 of [RFC6749] apply"). OPTIONAL:
    scope; RFC 8707 §2.1 resource, as in an authorization request. Answers §3.2's
    device_code, user_code, verification_uri,
    verification_uri_complete, expires_in and interval. An OpenID client's ``nonce`` is
    kept for its ID token (no OpenID specification defines one for this grant; echoing it
    costs nothing and lets a client that sends one check it). With auto-approve (a test
    convenience), the request is approved at once as that user: the first poll gets the
    tokens."""
    client = authenticate_client(srv, params, authorization, address)
    if DEVICE_CODE_GRANT not in client.grant_types:
        raise UnauthorizedClient("This client may not use the device authorization grant.")
    resources = requested_resources(srv, client, params)
    scope = allowed_scope(client, resources, split_scope(params.get("scope")))
    device_code = new_secret()
    now = srv.clock()
    for _ in range(5):  # a clash of user codes is one in billions: make another
        user_code = new_user_code()
        device = DeviceAuthorization(
            device_code_hash=token_hash(device_code),
            user_code_hash=token_hash(user_code),
            client_id=client.client_id,
            scope=scope,
            expires_at=now + DEVICE_CODE_LIFETIME,
            nonce=params.get("nonce"),
            resources=tuple(r.uri for r in resources),
        )
        if srv.auto_approve is not None:
            device = replace(device, status="approved", username=srv.auto_approve,
                             auth_time=int(now))  # fmt: skip
        if srv.storage.save_device_authorization(device):
            break
    else:
        raise OAuthError("No free user code; try again.", error="temporarily_unavailable",
                         status=503)  # fmt: skip
    audit("device.code_issued", client=client.client_id, scope=" ".join(scope))
    shown = show_user_code(user_code)
    verification_uri = srv.issuer + DEVICE_PATH
    return {
        "device_code": device_code,
        "user_code": shown,
        "verification_uri": verification_uri,
        # RFC 8628 §3.3.1: the code in the URI, for a QR code or a link; the page still
        # asks the user to confirm.
        "verification_uri_complete": add_query(verification_uri, {"user_code": shown}),
        "expires_in": DEVICE_CODE_LIFETIME,
        "interval": DEVICE_POLL_INTERVAL,
    }


def new_user_code() -> str:
    """RFC 8628 §6.1: USER_CODE_LENGTH random characters of USER_CODE_ALPHABET."""
    return "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))


def show_user_code(code: str) -> str:
    """RFC 8628 §6.1: "BDWP-HQPK": two halves, easier to read and type."""
    half = USER_CODE_LENGTH // 2
    return f"{code[:half]}-{code[half:]}"


def normal_user_code(typed: str) -> str | None:
    """The user code a person typed, as it was made; None if it cannot be one. RFC 8628
    §6.1: "the characters ... MAY be case-insensitive" and "dashes and other punctuation
    ... MAY be ignored"; spaces too."""
    code = re.sub(r"[\s\-]", "", typed).upper()
    ok = len(code) == USER_CODE_LENGTH and all(c in USER_CODE_ALPHABET for c in code)
    return code if ok else None


def find_device(srv: Server, typed: str) -> DeviceAuthorization | None:
    """The pending, unexpired request of a user code, if there is one."""
    code = normal_user_code(typed)
    device = srv.storage.get_device_authorization(token_hash(code)) if code else None
    if device is None or device.status != "pending" or device.expires_at <= srv.clock():
        return None
    return device


def device_request(srv: Server, params: dict[str, str]) -> AuthorizationRequest:
    """A device request as the login pages continue it (purpose "device"): the client,
    the scope and the user code (in ``params``) of the pending request it names."""
    device = find_device(srv, params.get("user_code", ""))
    client = srv.storage.get_client(device.client_id) if device else None
    if device is None or client is None:
        raise FormExpired(
            "This code has expired or was used. Start again on your device.",
            srv.issuer + DEVICE_PATH,
        )
    return AuthorizationRequest(
        client=client, redirect_uri=srv.issuer + DEVICE_PATH, redirect_uri_given=False,
        scope=device.scope, state=None, response_mode="query", acr_values=(), claims={},
        code_challenge=None, nonce=None, login_hint=None,
        prompt=frozenset(split_scope(params.get("prompt"))) & {"login"}, max_age=None,
        params=params, purpose="device", resources=known_resources(srv.storage, device.resources),
    )  # fmt: skip


def device_page_step(srv: Server, params: dict[str, str], browser: Browser) -> Page:
    """RFC 8628 §3.3: the /device page. Without a code, the form to type it; with one
    (typed, or from verification_uri_complete), checked under the throttle, then the
    sign-in (as at the authorization endpoint: login_page and its TOTP step) and the
    confirmation with the client's name and the scopes."""
    typed = params.get("user_code")
    if typed is None:
        return user_code_page(srv)
    # A signed-in browser passes the account-wide gates (its sign-in was throttled), and
    # its wrong codes count against its user wherever it sends them from: one account's
    # session cookie sent from ever new addresses would otherwise guess without end.
    trusted = browser.session is not None
    who = f"user:{browser.session.username}" if browser.session else browser.address
    with srv.login_limiter.attempt(USER_CODE_THROTTLE, who, trusted=trusted) as attempt:
        if attempt.wait:
            audit("device.user_code_throttled", address=browser.address)
            message = f"Too many wrong codes. Try again in {in_words(attempt.wait)}."
            return replace(user_code_page(srv, message, 429, typed), retry_after=attempt.wait)
        device = find_device(srv, typed)
        attempt.ok = None if device is not None else False
    if device is None:
        audit("device.user_code_failed", address=browser.address)
        message = "That code is not right, or it has expired. Check the code your device shows."
        return user_code_page(srv, message, 200, typed)
    asked = {"user_code": show_user_code(normal_user_code(typed) or "")}
    if params.get("prompt") == "login":  # "Not you?" on the confirmation
        asked["prompt"] = "login"
    areq = device_request(srv, asked)
    if browser.session is None or "login" in areq.prompt:
        return login_page(srv, areq, browser)
    return device_confirm_page(srv, areq, browser)


def device_decision(srv: Server, form: dict[str, str], browser: Browser) -> Page:
    """The user's answer on the /device page: the request is approved or denied once
    (RFC 8628 §6.1: "user codes ... SHOULD be single use"); the device learns it when it
    next polls (§3.5)."""
    areq = resume_request(srv, form, browser)
    if areq.purpose != "device":
        raise UntrustedRequest("This form does not belong to the device page.")
    session = browser.session
    if session is None:
        return login_page(srv, areq, browser, "Your sign-in has expired. Sign in again.")
    decision = form.get("decision")
    if decision not in ("approve", "deny"):
        raise UntrustedRequest("The form's decision must be approve or deny.")
    device = find_device(srv, areq.params["user_code"])
    decided = device is not None and srv.storage.decide_device_authorization(
        replace(device, status="approved" if decision == "approve" else "denied",
                username=session.username, auth_time=session.auth_time, amr=session.amr),
        srv.clock(),
    )  # fmt: skip
    if not decided:
        message = "This code was already used, or it has expired. Start again on your device."
        return user_code_page(srv, message, 400)
    who = {"user": session.username, "client": areq.client.client_id}
    if decision == "deny":
        audit("device.denied", **who)
        return device_done_page(areq, approved=False)
    audit("device.approved", **who, scope=" ".join(areq.scope))
    return device_done_page(areq, approved=True)


def device_code_grant(
    srv: Server, client: Client, params: dict[str, str], jkt: str | None
) -> dict[str, Any]:
    """RFC 8628 §3.4. REQUIRED: grant_type, device_code, client_id (a public client's;
    a confidential client authenticates). Until the user decides, §3.5's errors:
    authorization_pending, or slow_down for a poll sooner than the interval after the
    previous one (which grows the interval by DEVICE_SLOW_DOWN, remembered per device
    code in storage); then access_denied, or the tokens, once; expired_token after
    expires_in. Refresh tokens and the ID token come as in the code flow."""
    value = params.get("device_code")
    if value is None:
        raise InvalidRequest("device_code is required.")
    now = srv.clock()
    device = srv.storage.poll_device_authorization(token_hash(value), now, DEVICE_SLOW_DOWN)
    if device is None or not hmac.compare_digest(device.client_id.encode(),
                                                 client.client_id.encode()):  # fmt: skip
        raise InvalidGrant("The device_code is invalid.")
    # RFC 8628 §3.5 expired_token: "The "device_code" has expired, and the device
    # authorization session has concluded."
    if device.expires_at <= now:
        raise ExpiredToken("The device_code has expired: start again.")
    if device.status == "pending":
        # RFC 8628 §3.5 slow_down: "the interval MUST be increased by 5 seconds for this
        # and all subsequent requests."
        if device.polled_at is not None and now - device.polled_at < device.poll_interval:
            wait = device.poll_interval + DEVICE_SLOW_DOWN
            raise SlowDown(f"Polling too fast: wait {wait} seconds between requests.")
        raise AuthorizationPending("The user has not yet approved or denied the request.")
    if device.status == "denied":
        raise AccessDenied("The user denied the request.")
    redeemed = srv.storage.redeem_device_authorization(device.device_code_hash)
    if redeemed is None or redeemed.username is None:
        raise InvalidGrant("The device_code was already used.")
    user = srv.storage.get_user(redeemed.username)
    if user is None:
        raise InvalidGrant("The user of this grant no longer exists.")
    # RFC 8707 §2.2, as for a code: the access token for the resources asked for, or some.
    granted, audience = token_resources(srv, client, params, redeemed.resources)
    # OIDC Core §11, as for a code: a refresh token in an OpenID request means offline access.
    offline = "openid" not in redeemed.scope or "offline_access" in redeemed.scope
    body = issue_tokens(
        srv, client, user, redeemed.scope, family_id=redeemed.device_code_hash,
        refresh=offline, auth_time=redeemed.auth_time, nonce=redeemed.nonce,
        amr=redeemed.amr, acr=acr_of(redeemed.amr), granted=granted, audience=audience,
        jkt=jkt,
    )  # fmt: skip
    audit("device.redeemed", user=user.username, client=client.client_id)
    return body


###############################################################################
# Token endpoint: RFC 6749 §4.1.3, §5, §6, §4.4 ################################
###############################################################################


def token_endpoint(
    srv: Server,
    params: dict[str, str],
    authorization: str | None,
    address: str = "",
    dpop: DPoPRequest | None = None,
) -> dict[str, Any]:
    """Exchange a grant for tokens. Returns the RFC 6749 §5.1 response body.

    ``dpop``: the request's DPoP proof and where it was sent (RFC 9449 §5); with a proof,
    the tokens are bound to its key and the handler of the grant gets its thumbprint."""
    client = authenticate_client(srv, params, authorization, address)
    grant_type = params.get("grant_type")
    if grant_type is None:
        raise InvalidRequest("grant_type is required.")
    handler = GRANTS.get(grant_type)
    if handler is None:
        raise UnsupportedGrantType(f"Unsupported grant_type: {grant_type[:40]}.")
    if grant_type not in client.grant_types:
        raise UnauthorizedClient(f"This client may not use the {grant_type} grant.")
    # Checked before the grant, so that a bad proof does not burn a code; after the
    # client, so that only its requests reach the replay cache. RFC 9449 §5.2
    # dpop_bound_access_tokens: "the authorization server MUST reject token requests from
    # this client that do not contain the DPoP header".
    jkt = None
    if dpop is not None and (dpop.proof is not None or client.dpop_bound_access_tokens):
        jkt = check_dpop_proof(srv, dpop)
    elif client.dpop_bound_access_tokens:
        raise InvalidDPoPProof("This client's tokens are DPoP-bound: send a DPoP proof.")
    return handler(srv, client, params, jkt)


def authorization_code_grant(
    srv: Server, client: Client, params: dict[str, str], jkt: str | None
) -> dict[str, Any]:
    """RFC 6749 §4.1.3. REQUIRED: grant_type, code, code_verifier (RFC 7636 §4.5) when a
    challenge was sent; redirect_uri when it was in the authorization request. OPTIONAL:
    resource (RFC 8707 §2.2), some of the resources the code was authorized for. ``jkt``:
    the thumbprint of the request's DPoP key, if it had a proof (RFC 9449 §5)."""
    code_value = params.get("code")
    if code_value is None:
        raise InvalidRequest("code is required.")
    # The code is consumed first and checked after: a code that fails a check stays burned.
    code_hash = token_hash(code_value)
    taken = srv.storage.consume_code(code_hash)
    if taken is None:
        # RFC 6749 §4.1.2: "If an authorization code is used more than once, the
        # authorization server MUST deny the request and SHOULD revoke (when possible)
        # all tokens previously issued based on that authorization code."
        if srv.storage.revoke_family(code_hash):
            audit("code.replayed", client=client.client_id)
        raise InvalidGrant("The code is invalid, expired or already used.")
    code, user = taken
    if code.expires_at <= srv.clock():
        raise InvalidGrant("The code has expired.")
    # RFC 6749 §4.1.3: "ensure that the authorization code was issued to the
    # authenticated confidential client, or if the client is public, ensure that the
    # code was issued to "client_id" in the request"
    if not hmac.compare_digest(code.client_id.encode(), client.client_id.encode()):
        raise InvalidGrant("The code was issued to another client.")
    # RFC 6749 §4.1.3: redirect_uri is required if it was in the authorization request,
    # "and their values MUST be identical".
    redirect_uri = params.get("redirect_uri")
    if (
        code.redirect_uri_required or redirect_uri is not None
    ) and redirect_uri != code.redirect_uri:
        raise InvalidGrant("redirect_uri does not match the authorization request.")
    check_pkce(code, params.get("code_verifier"))
    # RFC 9449 §10: "the authorization server MUST ensure that the JWK thumbprint of the
    # DPoP proof's public key matches the dpop_jkt value" of the authorization request.
    if code.dpop_jkt is not None and (jkt is None or not hmac.compare_digest(jkt, code.dpop_jkt)):
        raise InvalidDPoPProof("The code is bound to another DPoP key (dpop_jkt).")
    if code.code_challenge is None:
        srv.transcript.note_relaxation(
            client.client_id, "require_pkce=False: a code redeemed without code_verifier"
        )
    if user is None:
        raise InvalidGrant("The user of this code no longer exists.")
    granted, audience = token_resources(srv, client, params, code.resources)
    # OIDC Core §11: in an OpenID request, a refresh token means offline access, which
    # the user must have granted with the offline_access scope.
    offline = "openid" not in code.scope or "offline_access" in code.scope
    body = issue_tokens(
        srv, client, user, code.scope, family_id=code_hash, refresh=offline,
        auth_time=code.auth_time, nonce=code.nonce, amr=code.amr, acr=code.acr,
        claims_request=code.claims_request, sid=code.sid, granted=granted, audience=audience,
        jkt=jkt,
    )  # fmt: skip
    audit("code.redeemed", user=code.username, client=client.client_id)
    return body


def token_resources(
    srv: Server, client: Client, params: dict[str, str], granted_uris: tuple[str, ...]
) -> tuple[tuple[Resource, ...], tuple[Resource, ...]]:
    """RFC 8707 §2.2: the resources of a grant, and those the access token is for: the
    ones ``resource`` names, which must be among the granted ones (so a refresh may
    narrow the audience and never widen it: invalid_target); all granted ones without it."""
    try:
        granted = known_resources(srv.storage, granted_uris)
    except InvalidTarget:
        raise InvalidTarget("A resource of this grant is no longer registered.") from None
    asked = split_scope(params.get("resource"))
    beyond = [uri for uri in asked if uri not in granted_uris]
    if beyond:
        raise InvalidTarget(f"This grant is not for the resource {beyond[0][:100]}")
    return granted, tuple(r for r in granted if r.uri in asked) if asked else granted


def refresh_token_grant(
    srv: Server, client: Client, params: dict[str, str], jkt: str | None
) -> dict[str, Any]:
    """RFC 6749 §6. REQUIRED: grant_type, refresh_token. OPTIONAL: scope, which may
    narrow the grant but never widen it; resource (RFC 8707 §2.2), which may narrow the
    access token's audience to some of the grant's resources. A refresh token bound to a
    DPoP key (a public client's, RFC 9449 §5) is good only with a proof of that key,
    ``jkt``."""
    value = params.get("refresh_token")
    if value is None:
        raise InvalidRequest("refresh_token is required.")
    old, user = srv.storage.get_token_and_user(token_hash(value)) or (None, None)
    if old is None or old.kind != "refresh" or old.client_id != client.client_id:
        raise InvalidGrant("The refresh token is invalid.")
    if old.revoked:
        # RFC 9700 §4.14.2: reuse of a rotated refresh token means one of the two
        # holders is an attacker; revoke the whole grant.
        srv.storage.revoke_family(old.family_id)
        audit("refresh.reuse_detected", user=old.username, client=client.client_id)
        raise InvalidGrant("The refresh token was already used; this grant is revoked.")
    if not old.active(srv.clock()):
        raise InvalidGrant("The refresh token has expired.")
    # RFC 9449 §5: for a public client's bound refresh token, "the authorization server
    # MUST ... ensure that the DPoP proof ... uses the same key".
    if old.jkt is not None and (jkt is None or not hmac.compare_digest(jkt, old.jkt)):
        raise InvalidDPoPProof("The refresh token is bound to another DPoP key.")
    if old.username is not None and user is None:
        srv.storage.revoke_family(old.family_id)
        raise InvalidGrant("The user of this grant no longer exists.")
    scope = split_scope(params.get("scope")) or old.scope
    # RFC 6749 §6: "The requested scope MUST NOT include any scope not originally granted"
    if not set(scope) <= set(old.scope):
        raise InvalidScope("The requested scope exceeds the original grant.")
    granted, audience = token_resources(srv, client, params, old.audience)
    # OIDC Core §12.2: an ID token again, for the same user, as of the original sign-in.
    body = issue_tokens(
        srv, client, user, scope, family_id=old.family_id, refresh=True,
        auth_time=old.auth_time, amr=old.amr, acr=old.acr, rotating=old,
        claims_request=old.claims_request, sid=old.sid, granted=granted, audience=audience,
        jkt=jkt,
    )  # fmt: skip
    audit("refresh.rotated", user=old.username, client=client.client_id)
    return body


def client_credentials_grant(
    srv: Server, client: Client, params: dict[str, str], jkt: str | None
) -> dict[str, Any]:
    """RFC 6749 §4.4.2. REQUIRED: grant_type. OPTIONAL: scope; resource (RFC 8707 §2.2).

    No user consents here, so the client's registered scopes cap what it gets, with a
    resource too (of the client's scopes, the resource's by default)."""
    # RFC 6749 §4.4: "The client credentials grant type MUST only be used by
    # confidential clients."
    if client.public:
        raise UnauthorizedClient("Public clients may not use client_credentials.")
    audience = requested_resources(srv, client, params)
    offered = [s for s in client.scopes if s in resource_scopes(audience)]
    scope = split_scope(params.get("scope")) or tuple(offered) or client.scopes
    unknown = [s for s in scope if s not in client.scopes]
    if unknown:
        raise InvalidScope(f"Scope not allowed for this client: {' '.join(unknown)}.")
    # RFC 6749 §4.4.3: "A refresh token SHOULD NOT be included."
    return issue_tokens(
        srv, client, None, scope, family_id=new_secret(), refresh=False, audience=audience,
        jkt=jkt,
    )  # fmt: skip


def token_exchange_grant(
    srv: Server, client: Client, params: dict[str, str], jkt: str | None
) -> dict[str, Any]:
    """RFC 8693 §2.1, delegation (§1.1): a resource server trades the access token a user's
    app gave it (its audience is a resource this client serves, ``Resource.client_id``)
    for a token to a downstream resource that the client's ``token_exchange`` policy
    names, with the same scope or less, and an act claim naming this client (§4.1).

    REQUIRED: grant_type, subject_token, subject_token_type (access_token, the only type
    we issue to be exchanged). OPTIONAL: resource and audience (§2.1: the target; here a
    registered resource URI either way, at least one), scope, requested_token_type
    (access_token, or jwt when the token will be one). actor_token is not taken: the
    authenticated client is the actor.
    """
    # RFC 8693 §2.2.2: "If the request itself is not valid or if either the subject_token
    # or actor_token are invalid for any reason, or are unacceptable based on policy, the
    # invalid_request error code MUST be used."
    if client.public:
        raise UnauthorizedClient("Token exchange needs a confidential client.")
    value, token_type = params.get("subject_token"), params.get("subject_token_type")
    if value is None or token_type is None:
        raise InvalidRequest("subject_token and subject_token_type are required.")
    if token_type != ACCESS_TOKEN_TYPE:
        raise InvalidRequest(f"subject_token_type must be {ACCESS_TOKEN_TYPE}.")
    if "actor_token" in params or "actor_token_type" in params:
        raise InvalidRequest("actor_token is not supported: the authenticated client acts.")
    subject, user = srv.storage.get_token_and_user(token_hash(value)) or (None, None)
    if subject is None or subject.kind != "access" or not subject.active(srv.clock()):
        raise InvalidRequest("The subject_token is not an active access token.")
    if user is None:
        raise InvalidRequest("The subject_token is not a user's token.")
    served = {r.uri for r in srv.storage.list_resources() if r.client_id == client.client_id}
    if not served & set(subject.audience):
        raise InvalidRequest("The subject_token is not for a resource this client serves.")
    # RFC 8693 §2.2.2: "If the authorization server is unwilling or unable to issue a
    # token for any target service indicated by the resource or audience parameters, the
    # invalid_target error code SHOULD be used."
    uris = split_scope(" ".join(filter(None, (params.get("resource"), params.get("audience")))))
    if not uris:
        raise InvalidTarget("Name the downstream resource with resource or audience.")
    refused = [uri for uri in uris if uri not in client.token_exchange]
    if refused:
        raise InvalidTarget(f"This client may not exchange tokens for {refused[0][:100]}")
    audience = known_resources(srv.storage, uris)
    offered = set(resource_scopes(audience))
    scope = split_scope(params.get("scope")) or tuple(s for s in subject.scope if s in offered)
    if not scope:
        raise InvalidScope("No scope of the subject_token is one of the target's.")
    beyond = [s for s in scope if s not in subject.scope or (offered and s not in offered)]
    if beyond:
        raise InvalidScope(f"Scope beyond the subject_token or the target: {' '.join(beyond)}.")
    jwt_format = any(r.access_token_jwt for r in audience) or client.access_token_jwt
    requested = params.get("requested_token_type", ACCESS_TOKEN_TYPE)
    if requested not in (ACCESS_TOKEN_TYPE, JWT_TOKEN_TYPE) or (
        requested == JWT_TOKEN_TYPE and not jwt_format
    ):
        raise InvalidRequest(f"requested_token_type {requested[:80]} cannot be issued here.")
    # RFC 8693 §4.1: "A chain of delegation can be expressed by nesting one act claim
    # within another": this client acts for whoever the subject token's actor acted for.
    actor: dict[str, Any] = {"sub": client.client_id}
    if subject.actor:
        actor["act"] = subject.actor
    # In the subject's family: what ends that grant (a refresh token's reuse, code replay)
    # ends the exchanged token too; and it lives no longer than the subject token, so that
    # exchanging again and again never outlives the user's grant.
    body = issue_tokens(
        srv, client, user, scope, family_id=subject.family_id, refresh=False,
        auth_time=subject.auth_time, amr=subject.amr, acr=subject.acr, audience=audience,
        actor=actor, not_after=subject.expires_at, jkt=jkt,
    )  # fmt: skip
    body.pop("id_token", None)
    # RFC 8693 §2.2.1: issued_token_type is REQUIRED; token_type "Bearer" for an access token.
    body["issued_token_type"] = requested
    audit("token.exchanged", client=client.client_id, user=user.username,
          resource=" ".join(uris))  # fmt: skip
    return body


# A grant's handler: the server, the authenticated client, the request's parameters, and
# the thumbprint of its DPoP key (RFC 9449 §5) when it had a proof, to bind tokens to.
GrantHandler = Callable[[Server, Client, dict[str, str], str | None], dict[str, Any]]
GRANTS: dict[str, GrantHandler] = {
    "authorization_code": authorization_code_grant,
    "refresh_token": refresh_token_grant,
    "client_credentials": client_credentials_grant,
    TOKEN_EXCHANGE: token_exchange_grant,
    DEVICE_CODE_GRANT: device_code_grant,
}


def issue_tokens(
    srv: Server,
    client: Client,
    user: User | None,
    scope: tuple[str, ...],
    *,
    family_id: str,
    refresh: bool,
    auth_time: int | None = None,
    nonce: str | None = None,
    claims: dict[str, Any] | None = None,
    rotating: Token | None = None,
    amr: tuple[str, ...] = (),
    acr: str | None = None,
    claims_request: dict[str, Any] | None = None,
    sid: str | None = None,
    granted: tuple[Resource, ...] | None = None,
    audience: tuple[Resource, ...] = (),
    actor: dict[str, Any] | None = None,
    not_after: float | None = None,
    jkt: str | None = None,
    stored_user: bool = True,
) -> dict[str, Any]:
    """Mint the tokens of a grant and build the RFC 6749 §5.1 response.

    RFC 8707: the access token is for the resources ``audience`` (none: the default
    audience), the refresh token for every resource ``granted`` (``audience`` if None),
    which a refresh may narrow. A resource's settings choose the access token's format
    (a JWT if any of them, or the client, asks for one) and lifetime (the shortest).
    ``actor``: the act claim of a token exchange (RFC 8693 §4.1), whose access token
    expires by ``not_after`` (the subject token's expiry) at the latest.

    With ``jkt``, the thumbprint of a DPoP key, the access token is bound to it
    (``token_type`` DPoP, RFC 9449 §5), and so is a public client's refresh token: a
    confidential client's refresh tokens are bound to its credentials already (§5).

    With ``rotating``, the refresh token being used (RFC 6749 §6), its successor and the
    new access token are saved in the same atomic step that revokes it. An ID token is
    added for a user when the scope has ``openid``: after the user authenticated at
    ``auth_time`` (OIDC Core §3.1.3.3), or on a refresh (§12.2, without a nonce).
    ``user`` is None for client_credentials. The tokens are stored only while ``user`` is
    the stored user (``Storage.save_token``'s holder), unless ``stored_user`` is False: a
    record made up for a name no user has (``Server.issue_tokens``, a test's convenience).
    """
    now = srv.clock()
    username = user.username if user is not None else None
    granted = audience if granted is None else granted
    access_scope = narrowed_scope(scope, granted, audience) if audience else scope
    lifetime = min(
        [r.access_token_lifetime for r in audience if r.access_token_lifetime is not None],
        default=srv.access_token_lifetime,
    )
    if not_after is not None:
        lifetime = max(1, min(lifetime, int(not_after - now)))
    uris = tuple(r.uri for r in audience)
    access = (
        jwt_access_token(srv, client, user, access_scope, auth_time, uris, lifetime, actor, jkt)
        if client.access_token_jwt or any(r.access_token_jwt for r in audience)
        else new_secret()
    )
    tokens = [
        Token(
            token_hash(access), "access", client.client_id, username, access_scope,
            issued_at=now, expires_at=now + lifetime, family_id=family_id,
            auth_time=auth_time, amr=amr, acr=acr, claims_request=claims_request or {}, sid=sid,
            audience=uris, actor=actor or {}, jkt=jkt,
        )
    ]  # fmt: skip
    body: dict[str, Any] = {
        "access_token": access,
        "token_type": "DPoP" if jkt is not None else "Bearer",
        "expires_in": lifetime,
        "scope": " ".join(access_scope),
    }
    if refresh and "refresh_token" in client.grant_types:
        value = new_secret()
        # RFC 6749 §6: a new refresh token's scope "MUST be identical" to the old one's;
        # RFC 8707 §2.2: and so are its resources, whatever this access token is for.
        kept = rotating.scope if rotating is not None else scope
        resources = rotating.audience if rotating is not None else tuple(r.uri for r in granted)
        tokens.append(
            Token(
                token_hash(value), "refresh", client.client_id, username, kept,
                issued_at=now, expires_at=now + srv.refresh_token_lifetime, family_id=family_id,
                auth_time=auth_time, amr=amr, acr=acr, claims_request=claims_request or {}, sid=sid,
                audience=resources, jkt=jkt if client.public else None,
            )
        )  # fmt: skip
        body["refresh_token"] = value
    if rotating is None:
        # RFC 9700 §4.14.2, OIDC Core §2: a user removed, or whose credentials changed,
        # since the grant was checked gets no tokens from it (the refresh's rotation fails
        # then by itself: both revoke or delete the refresh token).
        if not srv.storage.save_token(*tokens, holder=user if stored_user else None):
            raise InvalidGrant("The user of this grant was removed or changed credentials.")
    elif not srv.storage.rotate_refresh_token(rotating.token_hash, *tokens):
        srv.storage.revoke_family(family_id)  # lost a race with another use: that is reuse
        audit("refresh.reuse_detected", user=username, client=client.client_id)
        raise InvalidGrant("The refresh token was already used; this grant is revoked.")
    if "openid" in scope and user is not None:
        body["id_token"] = id_token(
            srv, client, user, scope, auth_time, nonce, access, claims, amr, acr,
            (claims_request or {}).get("id_token", {}), sid,
        )  # fmt: skip
    return body


###############################################################################
# OpenID Connect: signing keys, ID tokens, userinfo, logout #####################
###############################################################################


# kid -> parsed private key, shared by every Server of the process (keys are immutable).
_PARSED_KEYS: dict[str, Any] = {}


def new_signing_key(alg: str, now: float) -> SigningKey:
    """A fresh key pair: RSA 2048 for RS256, P-256 for ES256 (RFC 7518 §3.3, §3.4)."""
    private = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if alg == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    key = SigningKey(kid=secrets.token_urlsafe(12), alg=alg, private_pem=pem, created_at=now)
    _PARSED_KEYS[key.kid] = private
    return key


def signing_key(srv: Server, alg: str = "RS256") -> SigningKey:
    """The key of ``alg`` that signs now, kept in storage so that processes sharing a
    store share keys. A rotated-in key is published (in every node's JWKS) before any node
    signs with it: of the live keys, the newest that has been in storage for
    ``srv.cache_seconds`` signs, the staleness bound of every node's cached keys (see
    CachedStorage), so the key it replaces signs meanwhile. A store's first key of an alg
    signs at once, as none other could; behind a cache the first keys are made together,
    one of each alg, so that a node whose cache has one has all (and publishes all)."""
    now = srv.clock()

    def live() -> list[SigningKey]:  # newest first
        return [
            k for k in srv.storage.signing_keys()
            if k.alg == alg and (k.expires_at is None or k.expires_at > now)
        ]  # fmt: skip

    keys = live()
    if not any(k.expires_at is None for k in keys):
        for each in SIGNING_ALGS if srv.cache_seconds else (alg,):
            srv.storage.get_or_add_signing_key(new_signing_key(each, now))
        keys = live()
    for key in keys:
        if key.created_at + srv.cache_seconds <= now:
            return key
    return keys[-1]


def private_key(key: SigningKey) -> Any:
    """The parsed key, parsed once per process. Keys come from our own storage, so
    cryptography's RSA consistency check (~60 ms a key) is skipped."""
    parsed = _PARSED_KEYS.get(key.kid)
    if parsed is None:
        parsed = serialization.load_pem_private_key(
            key.private_pem.encode(), password=None, unsafe_skip_rsa_key_validation=True
        )
        _PARSED_KEYS[key.kid] = parsed
    return parsed


def our_signing_key(srv: Server, kid: Any) -> SigningKey | None:
    """Our key that a JWT's ``kid`` (RFC 7515 §4.1.4) names, if any. One this process's
    cached keys lack may be newer than they are (CACHE_SECONDS): then the keys are read
    from storage again, as OIDC Core §10.1.1 has a verifier do "when it sees an unfamiliar
    kid value", within CachedStorage's bound on such re-reads."""
    key = next((k for k in srv.storage.signing_keys() if k.kid == kid), None)
    if key is None and isinstance(srv.storage, CachedStorage):
        key = next((k for k in srv.storage.reread_signing_keys() if k.kid == kid), None)
    return key


def rotate_signing_keys(srv: Server) -> list[SigningKey]:
    """Publish new keys, which sign once every node has them (``srv.cache_seconds``
    later, see signing_key; at once without caches). The old keys sign until then and
    stay in the JWKS until the longest-lived token they signed has expired, then
    purge_expired drops them."""
    now = srv.clock()
    lifetime = max(srv.id_token_lifetime, srv.access_token_lifetime)
    retire_until = now + srv.cache_seconds + lifetime
    new = [new_signing_key(alg, now) for alg in SIGNING_ALGS]
    for key in new:
        srv.storage.rotate_signing_key(key, retire_until)
        audit("key.rotated", kid=key.kid, alg=key.alg)
    return new


def sign(srv: Server, claims: dict[str, Any], alg: str, typ: str = "JWT") -> str:
    """A JWS with the current key of ``alg``; RFC 7515 §4.1.4 ``kid`` in every header."""
    key = signing_key(srv, alg)
    return jwt.encode(
        claims, private_key(key), algorithm=alg, headers={"kid": key.kid, "typ": typ}
    )


def half_hash(value: str) -> str:
    """OIDC Core §3.3.2.11 at_hash: the left half of the SHA-256 of the token, base64url.

    SHA-256 is the hash of both RS256 and ES256."""
    return b64url(hashlib.sha256(value.encode("ascii")).digest()[:16])


def id_token(
    srv: Server,
    client: Client,
    user: User,
    scope: tuple[str, ...],
    auth_time: int | None,
    nonce: str | None,
    access_token: str,
    claims: dict[str, Any] | None = None,
    amr: tuple[str, ...] = (),
    acr: str | None = None,
    requested: dict[str, Any] | None = None,
    sid: str | None = None,
) -> str:
    """OIDC Core §2 and §3.1.3.6: the ID token of a code flow, or of a refresh (§12.2).

    REQUIRED: iss, sub, aud, exp, iat; auth_time (we always send it when known, so max_age
    works, §3.1.2.1); nonce when the request had one ("the Claim Value MUST be the value of
    the nonce parameter sent in the Authentication Request"); at_hash (OPTIONAL in the
    code flow, sent so that clients can bind the access token); amr and acr when the user
    signed in on our pages (OIDC Core §2, RFC 8176 §2). Then the user's claims
    that ``scope`` releases (§5.4), as userinfo answers them: §2 "ID Tokens MAY contain
    other Claims", and relying parties read the user from the ID token. A client with
    ``minimal_id_token`` gets them from userinfo only. Claims ``requested`` on their own
    for the ID token (OIDC Core §5.5) come too. ``claims``: more, from
    ``Server.issue_tokens``. ``sid``: the login session of the sign-in (Front-Channel
    Logout §3, Back-Channel Logout §2.4), so that a logout token or frame can name it.
    """
    now = int(srv.clock())
    released = {} if client.minimal_id_token else scope_claims(user, scope)
    body: dict[str, Any] = {
        **released,
        **individual_claims(user, client, requested or {}),
        **(claims or {}),
        "iss": srv.issuer,
        "sub": user.subject,  # OIDC Core §2: locally unique and never reassigned
        "aud": client.client_id,
        "exp": now + srv.id_token_lifetime,
        "iat": now,
        "at_hash": half_hash(access_token),
    }
    if auth_time is not None:
        body["auth_time"] = auth_time
    if amr:
        body["amr"] = list(amr)
    if acr is not None:
        body["acr"] = acr
    if nonce is not None:
        body["nonce"] = nonce
    if sid is not None:
        body["sid"] = sid
    # A test may have scripted this token's claims (Server.next_claims).
    body.update(srv.scripted_claims.take(user.username))
    return sign(srv, body, client.id_token_signed_response_alg)


def jwt_access_token(
    srv: Server,
    client: Client,
    user: User | None,
    scope: tuple[str, ...],
    auth_time: int | None,
    audience: tuple[str, ...] = (),
    lifetime: int | None = None,
    actor: dict[str, Any] | None = None,
    jkt: str | None = None,
) -> str:
    """RFC 9068 §2.2: a JWT access token. REQUIRED: iss, exp, aud, sub, client_id, iat,
    jti; typ "at+jwt" (§2.1). For client_credentials, sub is the client (§2.2). §3: aud is
    the resources asked for (RFC 8707), else "a default resource indicator". RFC 8693
    §4.1: act, the party acting for sub, in a token from token exchange. Bound to a DPoP
    key, it says which: RFC 9449 §6.1 ``cnf`` with ``jkt``."""
    now = int(srv.clock())
    body: dict[str, Any] = {
        "iss": srv.issuer,
        "exp": now + (srv.access_token_lifetime if lifetime is None else lifetime),
        "aud": audience_claim(srv, audience),
        "sub": user.subject if user is not None else client.client_id,
        "client_id": client.client_id,
        "iat": now,
        "jti": secrets.token_urlsafe(16),
        "scope": " ".join(scope),
    }
    if auth_time is not None:
        body["auth_time"] = auth_time
    if actor:
        body["act"] = actor
    if jkt is not None:
        body["cnf"] = {"jkt": jkt}
    return sign(srv, body, "RS256", typ="at+jwt")


def jwks(srv: Server) -> dict[str, Any]:
    """RFC 7517 §5: every key that may still verify a live token, current ones first."""
    keys = []
    now = srv.clock()
    signing_key(srv, "RS256")  # a fresh server publishes its key before it signs anything
    for key in srv.storage.signing_keys():
        if key.expires_at is not None and key.expires_at <= now:
            continue
        public = private_key(key).public_key()
        algorithms = jwt.algorithms
        algorithm = algorithms.RSAAlgorithm if key.alg == "RS256" else algorithms.ECAlgorithm
        jwk = json.loads(algorithm.to_jwk(public))
        keys.append({**jwk, "kid": key.kid, "alg": key.alg, "use": "sig"})
    return {"keys": keys}


def presented_token(authorization: str | None, form: dict[str, str] | None) -> tuple[str, bool]:
    """The access token of a request to a resource, and whether it came with the DPoP
    scheme: RFC 6750 §2.1 (Authorization: Bearer) or §2.2 (form body), or RFC 9449 §7.1
    (Authorization: DPoP); one method only."""
    header = None
    scheme = ""
    if authorization is not None:
        scheme, _, header = authorization.partition(" ")
        scheme = scheme.lower()
        if scheme not in ("bearer", "dpop") or not header.strip():
            raise InvalidToken("Use the Authorization: Bearer or DPoP scheme.")
        header = header.strip()
    body = (form or {}).get("access_token")
    if header is not None and body is not None:
        # RFC 6750 §2: "Clients MUST NOT use more than one method to transmit the token"
        raise InvalidRequest("Send the access token one way only.")
    token = header or body
    if token is None:
        raise MissingToken("An access token is required.")
    return token, scheme == "dpop"


def bearer_token(authorization: str | None, form: dict[str, str] | None) -> str:
    """RFC 6750 §2.1 (Authorization: Bearer) or §2.2 (form body), one method only: for
    tokens that are never bound to a key (registration tokens)."""
    token, with_dpop = presented_token(authorization, form)
    if with_dpop:
        raise InvalidToken("Use the Authorization: Bearer scheme.")
    return token


def userinfo(
    srv: Server,
    authorization: str | None,
    form: dict[str, str] | None,
    dpop: DPoPRequest | None = None,
) -> dict[str, Any]:
    """OIDC Core §5.3: the claims of the access token's user, as its scopes allow (§5.4).
    A DPoP-bound token comes with the DPoP scheme and a proof of its key (RFC 9449 §7),
    checked against ``dpop``, the request's."""
    value, with_dpop = presented_token(authorization, form)
    token, user = srv.storage.get_token_and_user(token_hash(value)) or (None, None)
    if token is None or token.kind != "access" or not token.active(srv.clock()):
        raise InvalidToken("The access token is invalid, expired or revoked.")
    if token.jkt is not None:
        # RFC 9449 §7.2: a resource server "MUST NOT grant access to the resource unless
        # a DPoP proof is received" for a DPoP-bound token presented as a Bearer token.
        if not with_dpop:
            raise DPoPBoundToken(
                "This access token is DPoP-bound: send it with Authorization: DPoP and a "
                "DPoP proof (RFC 9449 7)."
            )
        where = dpop or DPoPRequest(None, "GET", srv.issuer + USERINFO_PATH)
        check_dpop_proof(srv, where, access_token=value, bound_to=token.jkt, status=401)
    elif with_dpop:
        raise InvalidToken("This access token is not DPoP-bound: send it as a Bearer token.")
    # Removing a client deletes its tokens; this also refuses one that a token request
    # racing the removal saved after it (RFC 6750 §3.1: "invalid for other reasons").
    client = find_client(srv, token.client_id, quiet=True)
    if client is None:
        raise InvalidToken("The token's client no longer exists.")
    # RFC 8707 §1: a token asked for a resource is for that resource alone, so that the
    # API it was given to cannot use it here to read the user's claims. The client has
    # them in its ID token; a token without resource is the one for userinfo.
    if token.audience:
        raise InvalidToken("The access token is for another resource (RFC 8707).")
    if token.username is None or "openid" not in token.scope:
        raise InsufficientScope("The access token was not issued with the openid scope.")
    if user is None:
        raise InvalidToken("The token's user no longer exists.")
    requested = individual_claims(user, client, token.claims_request.get("userinfo", {}))
    # OIDC Core §5.3.2: "The sub Claim MUST always be returned in the UserInfo Response."
    return {**scope_claims(user, token.scope), **requested, "sub": user.subject}


def scope_claims(user: User, scope: tuple[str, ...]) -> dict[str, Any]:
    """OIDC Core §5.4: the user's claims that the scope values ask for."""
    allowed = {c for value in scope for c in SCOPE_CLAIMS.get(value, ())}
    return {k: v for k, v in user.claims.items() if k in allowed}


def individual_claims(user: User, client: Client, requested: dict[str, Any]) -> dict[str, Any]:
    """OIDC Core §5.5: the user's claims that the claims parameter asks for on their own,
    those whose scope the client may ask for (the consent page showed that scope, see
    consent_scopes). §5.5.1: the rest are not returned, and that is no error."""
    return {
        name: user.claims[name]
        for name in requested
        if name in user.claims and CLAIM_SCOPE.get(name) in client.scopes
    }


def verify_id_token_hint(srv: Server, hint: str) -> dict[str, Any]:
    """An ID token we issued, whatever its expiry (RP-Initiated Logout §2: "the OP need
    not be the one to check ... expired" tokens are acceptable hints)."""
    try:
        header = jwt.get_unverified_header(hint)
        if header.get("typ") != "JWT":  # an RFC 9068 access token (at+jwt) is no ID token
            raise jwt.InvalidTokenError("not an ID token")
        key = our_signing_key(srv, header.get("kid"))
        if key is None:
            raise jwt.InvalidTokenError("not signed with a key of ours")
        # Time does not matter for a hint; PyJWT's iat check would use the wall clock.
        return jwt.decode(
            hint,
            private_key(key).public_key(),
            algorithms=[key.alg],
            issuer=srv.issuer,
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                     "verify_aud": False, "require": ["aud", "sub"]},
        )  # fmt: skip
    except jwt.InvalidTokenError:
        raise UntrustedRequest("id_token_hint is not an ID token issued here.") from None


def end_session(
    srv: Server, params: dict[str, str], browser: Browser, *, confirmed: bool
) -> Redirect | Page:
    """OpenID Connect RP-Initiated Logout 1.0 §2-§3: end the login session.

    OPTIONAL: id_token_hint, client_id, post_logout_redirect_uri, state, ui_locales.
    Without a valid id_token_hint the user confirms first (§2: "the OP SHOULD ask the
    End-User whether to log out"), so that another site cannot sign the user out.
    """
    session = browser.session
    client_id = params.get("client_id")
    hinted = None
    if "id_token_hint" in params:
        hinted = verify_id_token_hint(srv, params["id_token_hint"])
        aud = hinted["aud"] if isinstance(hinted["aud"], str) else hinted["aud"][0]
        if client_id is not None and client_id != aud:
            raise UntrustedRequest("client_id does not match the id_token_hint.")
        client_id = aud
    client = srv.storage.get_client(client_id) if client_id else None
    target = params.get("post_logout_redirect_uri")
    # §3: the URI "MUST have been previously registered with the OP"; exact match.
    if target is not None and (client is None or target not in client.post_logout_redirect_uris):
        raise UntrustedRequest("post_logout_redirect_uri is not registered for this client.")
    # A hint for another user than the signed-in one proves nothing about this session; nor
    # does one of a removed user of the same name (OIDC Core §2: sub is never reassigned).
    user = srv.storage.get_user(session.username) if session is not None else None
    vouched = hinted is not None and user is not None and hinted["sub"] == user.subject
    if session is not None and not vouched and not confirmed:
        return logout_page(srv, params, client, browser)
    frames: list[str] = []
    if session is not None:
        # The cookie is deleted too, but a copy of it must not outlive the logout: the
        # login session it names goes from storage (read_session finds none).
        srv.storage.delete_login_sessions(session.username, session.sid)
        if user is not None:
            frames = tell_clients(srv, session, user, client)
    # RFC 9700 §4.11.2: the server redirects by itself only to a URI it trusts. A client
    # that registered itself chose its URIs alone (anyone could make this endpoint bounce
    # visitors to any site): unless an ID token of the signed-in user vouches for the
    # request, the page links there, naming the host, and the user follows or not.
    follow = client is None or not client.unverified or vouched
    if target is not None:
        state = params.get("state")
        target = add_query(target, {"state": state} if state else {})
        if not frames and follow:
            return Redirect(target, signed_out=True)
    return signed_out_page(frames, target, follow=follow)


# OIDC Back-Channel Logout 1.0 §2.4: the event a Logout Token carries, and its JWT type.
BACKCHANNEL_LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
LOGOUT_TOKEN_TYPE = "logout+jwt"  # noqa: S105 -- a JWT type, no secret
LOGOUT_TOKEN_LIFETIME = 120  # §2.4 exp: only to be checked on receipt, so short
BACKCHANNEL_TIMEOUT = 5  # seconds a relying party has to answer a logout token (§2.8)
# Seconds between the attempts to deliver a Logout Token an RP did not take (a 5xx, or no
# answer): an RP restarting for a few seconds still hears of the logout. The thread is
# per process: a codeflow stopped meanwhile drops what it had left to send.
BACKCHANNEL_RETRY_DELAYS: tuple[float, ...] = (1, 5, 25)


def tell_clients(srv: Server, session: Session, user: User, asking: Client | None) -> list[str]:
    """Tell the clients of the session that the user signed out: each client the user has
    a grant with, and the one asking. Back-channel ones get a Logout Token now, from
    another thread (Back-Channel Logout §2.5); front-channel ones are framed by the
    signed-out page, whose frame URLs are returned (Front-Channel Logout §2)."""
    ids = {grant.client_id for grant in srv.storage.list_grants(srv.clock(), user.username)}
    if asking is not None:
        ids.add(asking.client_id)
    frames = []
    for client_id in sorted(ids):
        client = srv.storage.get_client(client_id)
        if client is None:
            continue
        if client.backchannel_logout_uri is not None:
            token = logout_token(srv, client, user, session.sid)
            threading.Thread(
                target=post_logout_token, daemon=True,
                args=(client.client_id, client.backchannel_logout_uri, token),
                name=f"codeflow-backchannel-logout-{client_id}",
            ).start()  # fmt: skip
        if client.frontchannel_logout_uri is not None:
            # Front-Channel Logout §3: "the OP renders <iframe src="frontchannel_logout_uri
            # ?iss=...&sid=...">"; sent always, not only when the client requires them.
            query = {"iss": srv.issuer, "sid": session.sid} if session.sid else {}
            frames.append(add_query(client.frontchannel_logout_uri, query))
    return frames


def logout_token(srv: Server, client: Client, user: User, sid: str) -> str:
    """OIDC Back-Channel Logout 1.0 §2.4: iss, aud, iat, exp, jti, events REQUIRED; "A
    Logout Token MUST contain either a sub or a sid Claim, and MAY contain both" (both,
    when the session has a sid); "A nonce Claim MUST NOT be present". Signed as the
    client's ID tokens, typed "logout+jwt" so that it cannot pass for an ID token."""
    now = int(srv.clock())
    claims: dict[str, Any] = {
        "iss": srv.issuer,
        "aud": client.client_id,
        "iat": now,
        "exp": now + LOGOUT_TOKEN_LIFETIME,
        "jti": new_secret(),
        "events": {BACKCHANNEL_LOGOUT_EVENT: {}},
        "sub": user.subject,
    }
    if sid:
        claims["sid"] = sid
    return sign(srv, claims, client.id_token_signed_response_alg, typ=LOGOUT_TOKEN_TYPE)


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A 3xx is an answer, not a new address to send to: following it would let a relying
    party's host make this server request any URL it reaches (server-side request
    forgery), as fetch_json_document refuses to for the same reason."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_NO_REDIRECTS = urllib.request.build_opener(_RefuseRedirects)


def post_logout_token(client_id: str, uri: str, token: str) -> None:
    """Back-Channel Logout §2.5: "The OP uses an HTTP POST to the registered back-channel
    logout URI to send the Logout Token", as the form parameter logout_token. §2.8: a
    failure is the relying party's to deal with; it is logged, never raised, and never
    keeps the user waiting (this runs in its own thread, with a short timeout). A 5xx or
    no answer may be passing, so the same token is sent again after each of
    BACKCHANNEL_RETRY_DELAYS; a 4xx is the RP's final word ("If the logout request was
    invalid or failed, the RP MUST respond with HTTP 400"); so is a 3xx, which is never
    followed (§2.5: the token goes to "the registered back-channel logout URI")."""
    # check_client allows https, or http on loopback, only.
    request = urllib.request.Request(  # noqa: S310
        uri,
        data=urllib.parse.urlencode({"logout_token": token}).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        method="POST",
    )
    for delay in (*BACKCHANNEL_RETRY_DELAYS, None):
        try:
            with _NO_REDIRECTS.open(request, timeout=BACKCHANNEL_TIMEOUT) as answer:
                audit("logout.backchannel_sent", client=client_id, status=answer.status)
                return
        except urllib.error.HTTPError as err:
            audit("logout.backchannel_failed", client=client_id, status=err.code)
            if err.code < 500:
                return
        except (OSError, ValueError) as err:
            audit("logout.backchannel_failed", client=client_id, reason=str(err))
        if delay is not None:
            time.sleep(delay)


def logout(srv: Server, form: dict[str, str], browser: Browser) -> Redirect | Page:
    """A POST to the logout endpoint: the relying party's logout request (RP-Initiated
    Logout §2), or the user confirming the logout page's form."""
    if "csrf_token" not in form:
        return end_session(srv, form, browser, confirmed=False)
    if not srv.signer.check_csrf(form["csrf_token"], browser):
        raise FormExpired("Sign out again.", restart_url(srv, form, LOGOUT_PATH, "logout"))
    params = srv.signer.request_params(form.get("request"), "logout") or {}
    return end_session(srv, params, browser, confirmed=form.get("confirm") == "yes")


###############################################################################
# Introspection (RFC 7662), revocation (RFC 7009), discovery (RFC 8414) ########
###############################################################################


def introspect(
    srv: Server, params: dict[str, str], authorization: str | None, address: str = ""
) -> dict[str, Any]:
    """RFC 7662 §2.1: "the endpoint MUST also require some form of authorization";
    we require a confidential client.

    RFC 7662 §4: the server "SHOULD require protected resources to be specifically
    authorized to call the introspection endpoint". A client that a registered resource
    names as its server (``Resource.client_id``) introspects only if the resource allows it
    (``introspection``), and sees as active only the access tokens whose audience is one
    of its resources. Any other confidential client may introspect any access token, and
    its own refresh tokens, as before resources were registrations: no narrower rule
    would keep those resource servers working. A client that registered itself (RFC
    7591) is no resource server anyone vouched for: it sees only its own tokens. The
    answer's aud (§2.2) is the token's.
    """
    client = authenticate_client(srv, params, authorization, address)
    if client.public:
        raise InvalidClient("Introspection needs a confidential client.")
    served = [r for r in srv.storage.list_resources() if r.client_id == client.client_id]
    if served and not any(r.introspection for r in served):
        raise UnauthorizedClient("The resources of this client may not use introspection.")
    value = params.get("token")
    if value is None:
        raise InvalidRequest("token is required.")
    token, user = srv.storage.get_token_and_user(token_hash(value)) or (None, None)
    if token is not None and token.client_id != client.client_id:
        # RFC 7662 §2.2: a token the caller "is not allowed to introspect" is inactive to it.
        # §4: only "protected resources ... specifically authorized": one the operator
        # registered, never a client that anyone could register (open RFC 7591).
        mine = {r.uri for r in served if r.introspection}
        if client.unverified or (served and (token.kind != "access"
                                             or not mine & set(token.audience))):  # fmt: skip
            return {"active": False}
    # RFC 7662 §2.2: an unknown, expired or revoked token is just {"active": false}, and
    # so is one the caller "is not allowed to introspect": another client's refresh
    # token (only resource servers need access tokens), or a token whose user or client
    # was removed.
    if (
        token is None
        or not token.active(srv.clock())
        or (token.kind == "refresh" and token.client_id != client.client_id)
        or (token.username is not None and user is None)
        or (
            token.client_id != client.client_id
            and find_client(srv, token.client_id, quiet=True) is None
        )
    ):
        return {"active": False}
    body: dict[str, Any] = {
        "active": True,
        "scope": " ".join(token.scope),
        "client_id": token.client_id,
        "exp": int(token.expires_at),
        "iat": int(token.issued_at),
        "iss": srv.issuer,
        # RFC 9449 §6.2: a DPoP-bound token's type is DPoP, and cnf names its key.
        "token_type": (
            "refresh_token" if token.kind == "refresh" else "DPoP" if token.jkt else "Bearer"
        ),
    }
    if token.kind == "access":
        body["aud"] = audience_claim(srv, token.audience)  # RFC 8707, RFC 9068 §3
    if token.actor:
        body["act"] = token.actor  # RFC 8693 §2.2.1, §4.1
    if token.jkt is not None:
        body["cnf"] = {"jkt": token.jkt}
    if user is not None:
        body["sub"] = user.subject  # OIDC Core §2: the sub of the user's ID tokens
        body["username"] = user.username  # RFC 7662 §2.2: "Human-readable identifier"
    return body


def revoke(
    srv: Server, params: dict[str, str], authorization: str | None, address: str = ""
) -> None:
    """RFC 7009 §2.1. REQUIRED: token. OPTIONAL: token_type_hint (we find either kind)."""
    client = authenticate_client(srv, params, authorization, address)
    value = params.get("token")
    if value is None:
        raise InvalidRequest("token is required.")
    token = srv.storage.get_token(token_hash(value))
    # RFC 7009 §2.2: "invalid tokens do not cause an error response".
    if token is None:
        return
    # RFC 7009 §2.1: if the token was not issued to this client, "the request is refused
    # and the client is informed of the error".
    if token.client_id != client.client_id:
        raise UnauthorizedClient("This token was not issued to this client.")
    if token.kind == "refresh":
        # RFC 7009 §2.1: revoking a refresh token SHOULD revoke the grant's access tokens.
        srv.storage.revoke_family(token.family_id)
    else:
        srv.storage.revoke_token(token.token_hash)
    audit("token.revoked", client=client.client_id, user=token.username, kind=token.kind)


def oauth_metadata(srv: Server, internal: bool = False) -> dict[str, Any]:
    """RFC 8414 §2 and OIDC Discovery 1.0 §3: what this server supports, and nothing it
    does not. One document serves both well-known paths, so they cannot disagree.

    ``internal``: the document was asked for on ``srv.internal_url``, so the back-channel
    endpoints are listed there; the browser-facing ones and the issuer stay public."""
    auth_methods = ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"]
    back = srv.internal_url if internal and srv.internal_url else srv.issuer
    return {
        "issuer": srv.issuer,
        "authorization_endpoint": srv.issuer + AUTHORIZE_PATH,
        "token_endpoint": back + TOKEN_PATH,
        "userinfo_endpoint": back + USERINFO_PATH,
        "jwks_uri": back + JWKS_PATH,
        "end_session_endpoint": srv.issuer + LOGOUT_PATH,
        "device_authorization_endpoint": back + DEVICE_AUTHORIZATION_PATH,  # RFC 8628 §4
        "pushed_authorization_request_endpoint": back + PAR_PATH,  # RFC 9126 §5
        "require_pushed_authorization_requests": srv.require_pushed_authorization_requests,
        "introspection_endpoint": back + INTROSPECT_PATH,
        "revocation_endpoint": back + REVOKE_PATH,
        "scopes_supported": ["openid", "offline_access", *SCOPE_CLAIMS],
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce",
                             "at_hash", "amr", "acr", "sid",
                             *(c for claims in SCOPE_CLAIMS.values() for c in claims)],
        "acr_values_supported": list(ACR_VALUES),
        "response_types_supported": ["code"],
        "response_modes_supported": list(RESPONSE_MODES),
        "grant_types_supported": list(GRANT_TYPES),
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": list(SIGNING_ALGS),
        "token_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_methods_supported": auth_methods[:3],
        "revocation_endpoint_auth_methods_supported": auth_methods,
        # RFC 8414 §2: the algs of private_key_jwt's assertions (RFC 7523), asymmetric only.
        "token_endpoint_auth_signing_alg_values_supported": list(CLIENT_KEY_ALGS),
        "introspection_endpoint_auth_signing_alg_values_supported": list(CLIENT_KEY_ALGS),
        "revocation_endpoint_auth_signing_alg_values_supported": list(CLIENT_KEY_ALGS),
        "code_challenge_methods_supported": ["S256"],
        # RFC 9449 §5.1: the JWS algorithms of the DPoP proofs the server accepts.
        "dpop_signing_alg_values_supported": list(CLIENT_KEY_ALGS),
        "prompt_values_supported": list(PROMPT_VALUES),
        "authorization_response_iss_parameter_supported": True,
        "claims_parameter_supported": True,
        "request_parameter_supported": False,
        "request_uri_parameter_supported": False,
        # Back-Channel Logout §2.1, Front-Channel Logout §3: logout tokens and frames, both
        # with the session's sid.
        "backchannel_logout_supported": True,
        "backchannel_logout_session_supported": True,
        "frontchannel_logout_supported": True,
        "frontchannel_logout_session_supported": True,
        # RFC 8707: resource is honoured at the authorization and token endpoints. RFC 8414
        # registers no member for it; this one is what MCP clients and other servers use
        # (RFC 8414 §2: "Additional authorization server metadata parameters MAY also be
        # used").
        "resource_indicators_supported": True,
        # RFC 7591 §3 and the Client ID Metadata Document draft §5: only when enabled.
        **({"registration_endpoint": back + REGISTRATION_PATH}
           if srv.registration != "off" else {}),
        **({"client_id_metadata_document_supported": True}
           if srv.client_id_metadata_documents else {}),
    }  # fmt: skip


###############################################################################
# Pages: every HTML the server renders #######################################
###############################################################################


STYLE = """
*{box-sizing:border-box}
body{font:16px/1.5 system-ui,sans-serif;background:#f4f5f7;color:#1d2330;margin:0;padding:1rem}
main{max-width:27rem;margin:2rem auto;background:#fff;padding:2rem;border-radius:8px;
box-shadow:0 1px 4px #0002}main:has(.wide){max-width:52rem}
.brand{margin:0 0 1rem;font-size:.9rem;font-weight:700;letter-spacing:.04em;color:#4a5468}
h1{font-size:1.5rem;line-height:1.25;margin:0 0 .75rem}h2{font-size:1.15rem;margin:1.5rem 0 .5rem}
a{color:#1f4fd1}label{display:block;margin-top:1rem;font-weight:600}
input{width:100%;padding:.6rem;font:inherit;border:1px solid #8a93a6;border-radius:4px;
margin-top:.25rem}input[aria-invalid=true]{border-color:#a4161a}
.actions{display:flex;flex-wrap:wrap;gap:.75rem;margin-top:1.5rem;align-items:center}
button,a.button{padding:.6rem 1.2rem;font:inherit;font-weight:600;border-radius:4px;
border:2px solid #1f4fd1;background:#1f4fd1;color:#fff;cursor:pointer;display:inline-block;
text-decoration:none;min-height:2.75rem}button:hover,a.button:hover{background:#173ea6}
button.secondary,a.secondary{background:#fff;color:#1f4fd1}button.secondary:hover{background:#eef2fd}
:focus-visible{outline:3px solid #1d2330;outline-offset:2px}
.error{color:#a4161a;background:#fdecea;border-left:4px solid #a4161a;padding:.5rem .75rem;
font-weight:600;border-radius:0 4px 4px 0}.muted{color:#4a5468;font-size:.95rem}
.warning{color:#5c3d00;background:#fff4d6;border-left:4px solid #a86f00;padding:.5rem .75rem;
border-radius:0 4px 4px 0}
ul.scopes{padding-left:1.2rem}ul.scopes li{margin:.3rem 0}.hint{margin:.1rem 0 0}
code,pre{background:#eef0f4;padding:.1rem .3rem;border-radius:3px;font-size:.9em;
overflow-wrap:anywhere}dl.params dt{margin-top:.75rem;font-weight:600}
dl.params dd{margin:.2rem 0 0 1rem}
pre{padding:.75rem;white-space:pre-wrap;word-break:break-all;overflow-wrap:anywhere}
.ok{color:#1b6b2f;font-weight:600}.bad{color:#a4161a;font-weight:600}
nav.steps ol{display:flex;flex-wrap:wrap;gap:.25rem 1.25rem;list-style:none;padding:0}
.step{border-top:1px solid #d5d9e2;margin-top:1.5rem}.spec{font-size:.95rem}
ul.items{list-style:none;padding:0}ul.items li{border-top:1px solid #d5d9e2;padding:.75rem 0}
ul.codes{columns:2;font-size:1.05rem}figure.qr{background:#fff;padding:.75rem;margin:1rem 0;
display:inline-block;border-radius:4px}figure.qr svg{width:12rem;height:12rem;display:block}
summary{cursor:pointer;margin-top:1.5rem;color:#1f4fd1;font-weight:600}
label.check{font-weight:400}label.check input{width:auto;margin:0 .5rem 0 0}
[hidden]{display:none!important}
.steps-panel:not(:has(.step:target)) .step:not(:first-child){display:none}
.steps-panel:has(.step:target) .step:not(:target){display:none}
@media (max-width:32rem){body{padding:0}main{margin:0;border-radius:0;box-shadow:none;
padding:1.25rem;min-height:100vh}.actions>*{flex:1 1 100%;text-align:center}}
:root{color-scheme:light dark}
@media (prefers-color-scheme:dark){body{background:#14171f;color:#e6e8ee}
main{background:#1d212b;box-shadow:0 1px 4px #0006}.brand,.muted{color:#b4bac8}a{color:#8fb0ff}
input{background:#14171f;color:#e6e8ee;border-color:#7d869b}
input[aria-invalid=true]{border-color:#ff8a80}button,a.button{background:#2f5bd8;border-color:#2f5bd8;color:#fff}
button:hover,a.button:hover{background:#2449b5}
button.secondary,a.secondary{background:transparent;color:#8fb0ff;border-color:#8fb0ff}
button.secondary:hover{background:#2a2f3b}:focus-visible{outline-color:#e6e8ee}
.error{color:#ffb4b0;background:#3a1d20;border-color:#ff8a80}code,pre{background:#2a2f3b}
.ok{color:#7ee2a0}.bad{color:#ffb4b0}.step,ul.items li{border-color:#3a4050}
summary{color:#8fb0ff}}
""".strip()



def sha256_base64(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


STYLE_HASH = sha256_base64(STYLE)



def content_security_policy(script: str = "", frames: Iterable[str] = ()) -> str:
    """RFC 9700 §4.16: pages must not be framed (clickjacking); the CSP allows our own style
    and, on a page that has one, its own inline script, by hash (CSP Level 3 §2.3.1), and
    on the signed-out page the relying parties' origins it frames (frame-src)."""
    allowed = f"script-src 'sha256-{sha256_base64(script)}'; " if script else ""
    framed = " ".join(frames)
    if framed:
        allowed += f"frame-src {framed}; "
    return (
        f"default-src 'none'; style-src 'sha256-{STYLE_HASH}'; {allowed}"
        "frame-ancestors 'none'; base-uri 'none'"
    )


SECURITY_HEADERS = (
    ("X-Frame-Options", "DENY"),
    ("Content-Security-Policy", content_security_policy()),
    ("X-Content-Type-Options", "nosniff"),
    # same-origin, not no-referrer: a browser sends "Origin: null" on a POST from a page
    # with no-referrer, and refuse_cross_site needs the real one from browsers that send
    # no Fetch Metadata; other origins still get no Referer, so no URL of ours leaks.
    ("Referrer-Policy", "same-origin"),
)

esc = html.escape
BRAND = '<p class="brand">codeflow</p>'


def client_label(client: Client) -> str:
    return esc(client.name or client.client_id)


def _hidden_fields(
    srv: Server, browser: Browser, params: dict[str, str], purpose: str = "authorize"
) -> str:
    """Every form carries a CSRF token and the signed request it continues."""
    request = srv.signer.request(params, purpose)
    return (
        f'<input type="hidden" name="csrf_token" value="{esc(srv.signer.csrf_token(browser))}">'
        f'<input type="hidden" name="request" value="{esc(request)}">'
    )


def _alert(message: str) -> str:
    return f'<p class="error" id="form-error" role="alert">{esc(message)}</p>' if message else ""


def _password_fields(typed: str, message: str) -> str:
    """The username and password fields of a sign-in form. After an error the alert
    describes both fields; with a known username, the cursor starts in the password."""
    invalid = ' aria-invalid="true" aria-describedby="form-error"' if message else ""
    user_focus, password_focus = ("", " autofocus") if typed else (" autofocus", "")
    return f"""<label for="username">Username</label>
<input id="username" name="username" autocomplete="username" autocapitalize="none"
 spellcheck="false" required{user_focus}{invalid} value="{esc(typed)}">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password"
 required{password_focus}{invalid}>"""


def _otp_field(pending: str, message: str) -> str:
    """The second-factor step's code field, with the pending sign-in it continues."""
    invalid = ' aria-invalid="true" aria-describedby="form-error otp-help"' if message else (
        ' aria-describedby="otp-help"'
    )
    return f"""<input type="hidden" name="pending" value="{esc(pending)}">
<label for="otp">Authentication code</label>
<p class="muted hint" id="otp-help">The 6-digit code your authenticator app shows now.</p>
<input id="otp" name="otp" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9 ]*"
 maxlength="8" required autofocus{invalid}>"""


def _recovery_form(action: str, hidden: str, pending: str) -> str:
    """NIST SP 800-63B §5.1.2: a recovery code instead of the app's code, in a form of its
    own behind a disclosure (no JavaScript), so that the code field above stays required."""
    return f"""<details><summary>Lost your authenticator app? Use a recovery code</summary>
<form method="post" action="{action}">{hidden}
<input type="hidden" name="pending" value="{esc(pending)}">
<label for="recovery_code">Recovery code</label>
<input id="recovery_code" name="recovery_code" autocomplete="off" autocapitalize="characters"
 spellcheck="false" required>
<div class="actions"><button type="submit" class="secondary">Use recovery code</button></div>
</form></details>"""


# The one script of pages that offer passkeys (allowed by its hash, CSP Level 3 §2.3.1):
# it shows each passkey button only where the browser has WebAuthn and its JSON helpers
# (WebAuthn Level 3 §5.1.9-§5.1.10), runs the ceremony on a click, and posts the form with
# the credential as JSON. Without it the buttons stay hidden and the forms around them work.
PASSKEY_SCRIPT = """for (const form of document.querySelectorAll("form[data-passkey]")) {
  const PKC = window.PublicKeyCredential;
  if (!PKC || !PKC.parseCreationOptionsFromJSON || !PKC.parseRequestOptionsFromJSON) continue;
  const button = form.querySelector("[data-passkey-button]");
  const status = form.querySelector("[data-passkey-status]");
  button.hidden = false;
  for (const note of document.querySelectorAll("[data-passkey-fallback]")) note.hidden = true;
  button.addEventListener("click", async () => {
    const options = JSON.parse(form.dataset.options);
    try {
      const credential = form.dataset.passkey === "create"
        ? await navigator.credentials.create({publicKey: PKC.parseCreationOptionsFromJSON(options)})
        : await navigator.credentials.get({publicKey: PKC.parseRequestOptionsFromJSON(options)});
      form.elements.credential.value = JSON.stringify(credential.toJSON());
      form.submit();
    } catch (error) {
      status.hidden = false;
      status.textContent = "The passkey did not work (" + error.name + "). Try again.";
    }
  });
}"""


def _passkey_form(
    action: str, hidden: str, kind: str, options: str, state: str, label: str, extra: str = ""
) -> str:
    """A form whose button (shown by PASSKEY_SCRIPT) runs a WebAuthn ceremony of ``kind``
    ("create" or "get") with ``options`` and posts the credential with its ``state``."""
    return f"""<form method="post" action="{action}" data-passkey="{kind}"
 data-options="{esc(options)}">{hidden}<input type="hidden" name="state" value="{esc(state)}">
<input type="hidden" name="credential" value="">{extra}
<p class="error" role="alert" data-passkey-status hidden></p>
<div class="actions"><button type="button" class="secondary" data-passkey-button hidden>{label}
</button></div></form>"""


def with_passkeys(page: Page, forms: str) -> Page:
    """``page``, with the script that runs its passkey ``forms`` if it has any."""
    return replace(page, script=PASSKEY_SCRIPT) if forms else page


def passwordless_form(srv: Server, browser: Browser, action: str, hidden: str) -> str:
    """The sign-in page's "Sign in with a passkey", where passkeys are offered."""
    if not passkeys_offered(srv):
        return ""
    options, state = authentication_options(srv, browser)
    return _passkey_form(action, hidden, "get", options, state, "Sign in with a passkey")


def second_factor_forms(
    srv: Server, browser: Browser, user: User, action: str, hidden: str, pending: str,
    message: str,
) -> tuple[str, str]:
    """The second-factor step's forms: the TOTP code and a recovery code, for a user with an
    app; and the user's passkeys (``second``, with its script)."""
    forms = ""
    if user.totp_secret:
        forms = f"""<form method="post" action="{action}">{hidden}
{_otp_field(pending, message)}
<div class="actions"><button type="submit">Verify</button></div></form>
{_recovery_form(action, hidden, pending)}"""
    if not (passkeys_offered(srv) and srv.storage.list_passkeys(user.username)):
        return forms, ""
    options, state = authentication_options(srv, browser, user)
    pending_field = f'<input type="hidden" name="pending" value="{esc(pending)}">'
    fallback = "" if user.totp_secret else (
        '<p class="muted" data-passkey-fallback>Confirming with a passkey needs JavaScript in '
        "this browser.</p>"
    )
    return forms, fallback + _passkey_form(action, hidden + pending_field, "get", options, state,
                                           "Use your passkey")  # fmt: skip


def login_page(
    srv: Server,
    areq: AuthorizationRequest,
    browser: Browser,
    message: str = "",
    status: int = 200,
    username: str | None = None,
) -> Page:
    typed = username if username is not None else areq.login_hint or ""
    hidden = _hidden_fields(srv, browser, areq.params, areq.purpose)
    body = f"""{BRAND}<h1>Sign in</h1>
<p>to continue to <strong>{client_label(areq.client)}</strong></p>{_alert(message)}
<form method="post" action="login">{hidden}
{_password_fields(typed, message)}
<div class="actions"><button type="submit">Sign in</button></div></form>"""
    passkey = passwordless_form(srv, browser, "login", hidden)
    return with_passkeys(Page("Sign in", body + passkey, status), passkey)


def otp_page(
    srv: Server,
    areq: AuthorizationRequest,
    browser: Browser,
    user: User,
    message: str = "",
    status: int = 200,
) -> Page:
    pending = srv.signer.pending(user, browser)
    hidden = _hidden_fields(srv, browser, areq.params, areq.purpose)
    forms, passkey = second_factor_forms(srv, browser, user, "login", hidden, pending, message)
    title = "Enter your code" if user.totp_secret else "Confirm it is you"
    body = f"""{BRAND}<h1>{title}</h1>
<p>Signing in as <strong>{esc(user.username)}</strong> to continue to
<strong>{client_label(areq.client)}</strong>.</p>{_alert(message)}{forms}{passkey}
<p><a href="{esc(resume_url(srv, areq))}">Start over</a></p>"""
    return with_passkeys(Page(title, body, status), passkey)


SECOND_FACTOR_ASKED = "This app asks for your authentication code too. Sign in again."


def no_second_factor_page(srv: Server, areq: AuthorizationRequest, browser: Browser) -> Page:
    """The client asks for a second factor (acr_values) and the user has none; the button
    tells the client so (unmet_authentication_requirements)."""
    app = client_label(areq.client)
    body = f"""{BRAND}<h1>A second factor is needed</h1>
<p class="error" role="alert"><strong>{app}</strong> asks you to confirm who you are with a
second factor: a code from an authenticator app. Your account has no second factor, so you
cannot continue to {app} this way.</p>
<p>Set up an authenticator app on <a href="{ACCOUNT_PATH}">your account page</a> (or ask
your administrator to), then try again.</p>
<form method="post" action="login">{_hidden_fields(srv, browser, areq.params, areq.purpose)}
<div class="actions"><button type="submit" name="cancel" value="yes">Back to {app}</button>
</div></form>"""
    return Page("A second factor is needed", body, 403)


ANOTHER_ACCOUNT_ASKED = "This app asks for another account. Sign in as that user."


def consent_label(item: str) -> str:
    """A stored consent item (consent_scopes) as people read it: a scope in words, an API
    by its URI, an API's scope as "scope at URI"."""
    uri, _, scope = item.partition(" ")
    return f"{scope} at {uri}" if scope else SCOPE_WORDS.get(item, item)


def consent_items(areq: AuthorizationRequest, items: Iterable[str]) -> str:
    """The list items of consent_scopes ``items``: each plain scope in words; each API
    (RFC 8707 resource) the app will reach, by name and URI, with its scopes under it."""
    items = list(items)
    uris = {r.uri for r in areq.resources}
    html_items = [
        f"<li>{esc(SCOPE_WORDS.get(s, s))} <code>{esc(s)}</code></li>"
        for s in items
        if " " not in s and s not in uris
    ]
    for r in areq.resources:
        scopes = [item.partition(" ")[2] for item in items if item.startswith(r.uri + " ")]
        if r.uri not in items and not scopes:
            continue
        inner = "".join(f"<li><code>{esc(scope)}</code></li>" for scope in scopes)
        name = f"<strong>{esc(r.name)}</strong> " if r.name else ""
        html_items.append(
            f'<li class="resource">Use the API {name}<code>{esc(r.uri)}</code> as you'
            + (f'<ul class="scopes">{inner}</ul>' if inner else "")
            + "</li>"
        )
    return "".join(html_items)


def consent_page(srv: Server, areq: AuthorizationRequest, browser: Browser) -> Page:
    """The consent page: what the app asks for. When the user already allowed part of it
    (a step-up for a larger scope, RFC 6750 §3.1 insufficient_scope), only what is new
    is asked, and the rest is listed as already allowed."""
    username = browser.session.username if browser.session else ""
    asked = consent_scopes(areq)
    granted = (
        srv.storage.get_consent(username, areq.client.client_id, consent_binding(areq.client))
        if username and client_identified(areq.client, areq.redirect_uri)
        else frozenset()
    )
    new = [item for item in asked if item not in granted] or list(asked)
    already = [item for item in asked if item not in new]
    items = consent_items(areq, new)
    before = (
        '<p class="muted">You already allowed it to:</p>'
        f'<ul class="scopes granted">{consent_items(areq, already)}</ul>'
        if already
        else ""
    )
    # "Not you?" starts the same request over with a fresh sign-in (OIDC Core §3.1.2.1).
    switch = resume_url(srv, areq, {**areq.params, "prompt": "login"})
    back_to = urllib.parse.urlsplit(areq.redirect_uri).netloc or areq.redirect_uri
    asks = "also asks to" if already else "asks to"
    body = f"""{BRAND}<h1>Allow access?</h1>{unverified_notice(areq.client, back_to)}
<p><strong>{client_label(areq.client)}</strong> {asks}:</p><ul class="scopes">{items}</ul>{before}
<p>Signed in as <strong>{esc(username)}</strong>.
<a href="{esc(switch)}">Not you? Sign in as someone else</a></p>
<form method="post" action="consent">{_hidden_fields(srv, browser, areq.params, areq.purpose)}
<div class="actions">
<button type="submit" name="decision" value="approve">Allow</button>
<button type="submit" name="decision" value="deny" class="secondary">Deny</button></div></form>
<p class="muted">Either way, you go back to <strong>{esc(back_to)}</strong>.</p>"""
    return Page("Allow access?", body)


def user_code_page(srv: Server, message: str = "", status: int = 200, typed: str = "") -> Page:
    """RFC 8628 §3.3: where the user types the code the device shows. A GET form: it only
    shows the request the code names, which the user then confirms."""
    invalid = ' aria-invalid="true" aria-describedby="form-error code-help"' if message else (
        ' aria-describedby="code-help"'
    )
    body = f"""{BRAND}<h1>Connect a device</h1>{_alert(message)}
<form method="get" action="device">
<label for="user_code">Code</label>
<p class="muted hint" id="code-help">The code your device or app shows, such as
<code>BDWP-HQPK</code>. Upper or lower case, with or without the dash.</p>
<input id="user_code" name="user_code" autocomplete="off" autocapitalize="characters"
 spellcheck="false" maxlength="20" required autofocus{invalid} value="{esc(typed)}">
<div class="actions"><button type="submit">Continue</button></div></form>"""
    return Page("Connect a device", body, status)


def device_confirm_page(srv: Server, areq: AuthorizationRequest, browser: Browser) -> Page:
    """RFC 8628 §5.4 (remote phishing): the client's name, what it asks for and the code
    to compare with the device's, and an explicit Allow or Deny."""
    items = consent_items(areq, consent_scopes(areq))
    switch = resume_url(srv, areq, {**areq.params, "prompt": "login"})
    username = browser.session.username if browser.session else ""
    body = f"""{BRAND}<h1>Allow a device?</h1>
<p><strong>{client_label(areq.client)}</strong>, on a device, asks to:</p>
<ul class="scopes">{items}</ul>
<p>Check that your device shows this code:
<strong><code>{esc(areq.params["user_code"])}</code></strong></p>
<p>Signed in as <strong>{esc(username)}</strong>.
<a href="{esc(switch)}">Not you? Sign in as someone else</a></p>
<form method="post" action="device">{_hidden_fields(srv, browser, areq.params, "device")}
<div class="actions">
<button type="submit" name="decision" value="approve">Allow</button>
<button type="submit" name="decision" value="deny" class="secondary">Deny</button></div></form>
<p class="muted">Allow only a device you are setting up yourself, right now. If someone
sent you this code, choose Deny.</p>"""
    return Page("Allow a device?", body)


def device_done_page(areq: AuthorizationRequest, approved: bool) -> Page:
    app = client_label(areq.client)
    if approved:
        body = f"""{BRAND}<h1>Device connected</h1>
<p role="status"><strong>{app}</strong> is connected. Go back to your device: it continues
by itself in a few seconds.</p><p>You can close this page.</p>"""
        return Page("Device connected", body)
    body = f"""{BRAND}<h1>Request denied</h1>
<p role="status"><strong>{app}</strong> was not given access. Your device will say so.</p>
<p>You can close this page.</p>"""
    return Page("Request denied", body)
def unverified_notice(client: Client, back_to: str) -> str:
    """For a client that described itself (see "Clients that register themselves"): its
    name is only what it says, so say so, with where its description comes from and the
    host the answer goes to, which no client can fake."""
    if not client.unverified:
        return ""
    if client.registration == REGISTERED_BY_DOCUMENT:
        home = urllib.parse.urlsplit(client.client_id).netloc
        source = f"describes itself in a document at <strong>{esc(home)}</strong>"
    else:
        source = "registered itself with this server"
    return f"""
<p class="warning" role="note"><strong>Unverified app.</strong> This app {source}; no one
has checked that it is what its name says. Your answer goes to
<strong>{esc(back_to)}</strong>. Allow only if you started this from an app you trust.</p>"""


def error_page(err: OAuthError, onward: str | None = None) -> Page:
    """The page of an error that is not sent back to the client; with ``onward``, the
    error response a client that registered itself would have had, as a link the user
    may follow (RFC 9700 §4.11.2), naming its host."""
    if isinstance(err, FormExpired):
        again = (
            f'<div class="actions"><a class="button" href="{esc(err.restart)}">Start again</a>'
            "</div>"
            if err.restart
            else "<p>Go back to the application you came from and start again there.</p>"
        )
        body = f"""{BRAND}<h1>This form has expired</h1>
<p class="error" role="alert">This form has expired, or it came from another browser.
Nothing was changed.</p>
<p>For your safety, this form only works for {err.lifetime // 60} minutes, in the browser
that opened it. {esc(err.description)}</p>{again}"""
        return Page("Form expired", body, err.status)
    body = f"""{BRAND}<h1>This request cannot be completed</h1>
<p class="error" role="alert">{esc(err.description)}</p>
<p>For your safety you were not sent back to the application. Go back to it and try
again; if this keeps happening, tell its developers this error code:
<code>{esc(err.error)}</code>.</p>"""
    if onward is not None:
        host = urllib.parse.urlsplit(onward).netloc or onward
        body += f"""
<p class="muted">The application registered itself; no one has checked where it sends
you. Go on to it only if you trust <strong>{esc(host)}</strong>.</p>
<div class="actions"><a class="button secondary" href="{esc(onward)}">Go on to
{esc(host)}</a></div>"""
    return Page("Error", body, err.status)


def unavailable_page(err: StorageUnavailable) -> Page:
    """RFC 9110 §15.6.4: the 503 page while storage is down. The user's request was not
    handled, so reloading the page later sends it again, whole."""
    body = f"""{BRAND}<h1>Temporarily unavailable</h1>
<p class="error" role="alert">Sign-in is temporarily unavailable. Nothing was changed.</p>
<p>Wait a few seconds and reload this page to try again; if this keeps happening, tell the
people who run this server this error code: <code>{esc(err.error)}</code>.</p>"""
    return Page("Temporarily unavailable", body, err.status, retry_after=err.retry_after)


# Form Post Response Mode §2: the form is "auto-submitted in the User Agent".
FORM_POST_SCRIPT = "document.forms[0].submit()"


def form_post_page(redirect_uri: str, params: dict[str, str]) -> Page:
    """OAuth 2.0 Form Post Response Mode §2: the authorization response "encoded as HTML form
    values that are auto-submitted in the User Agent ... The action attribute of the form
    MUST be the Client's Redirection URI. The method of the form attribute MUST be POST."
    Its one script submits it; without JavaScript, the user's click on the button does."""
    fields = "".join(
        f'<input type="hidden" name="{esc(name)}" value="{esc(value)}">'
        for name, value in params.items()
    )
    body = f"""{BRAND}<h1>Returning to the application</h1>
<form method="post" action="{esc(redirect_uri)}">{fields}
<p>If the application does not open by itself, continue here.</p>
<div class="actions"><button type="submit">Continue</button></div></form>"""
    return Page("Returning to the application", body, script=FORM_POST_SCRIPT)


# Seconds the signed-out page waits, after its front-channel frames loaded, before it goes
# on to the relying party: time for a frame's own script, if it has one, to finish.
FORWARD_DELAY = 2


def signed_out_page(
    frames: Iterable[str] = (), target: str | None = None, *, follow: bool = True
) -> Page:
    """The end of a logout. Front-Channel Logout §2: the relying parties' logout pages
    ``frames``, each in an iframe, which the page's CSP allows by exact origin and nothing
    else; no script: they load as the page does. With ``target``, the link back to the
    relying party (RP-Initiated Logout §3), which the page also follows by itself once the
    frames have loaded (FORWARD_DELAY): the frames stopped it being a redirect. Without
    ``follow`` (a target the server does not trust), only the link, with its host."""
    frames = tuple(frames)
    iframes = "".join(
        f'<iframe src="{esc(uri)}" title="Signing out of an application" width="0" '
        'height="0" hidden></iframe>'
        for uri in frames
    )
    told = (
        "The applications you used here have been told that you signed out."
        if frames
        else "Applications you used may keep you signed in until you sign out of them too."
    )
    host = urllib.parse.urlsplit(target).netloc if target is not None else ""
    back = (
        "<p>You can close this page.</p>" if target is None
        else f'<div class="actions"><a class="button" href="{esc(target)}">Return to the '
        "application</a></div>" if follow
        else f'<div class="actions"><a class="button secondary" href="{esc(target)}">Go on '
        f"to {esc(host or target)}</a></div><p class=\"muted\">An app that registered "
        "itself asked to send you there; no one has checked it.</p>"
    )  # fmt: skip
    body = f"""{BRAND}<h1>You are signed out</h1>
<p role="status">You are no longer signed in here. {told}</p>{back}{iframes}"""
    origins = tuple(dict.fromkeys(o for o in map(web_origin, frames) if o is not None))
    return Page("Signed out", body, signed_out=True, frames=origins,
                forward=target if follow else None)  # fmt: skip


def logout_page(
    srv: Server, params: dict[str, str], client: Client | None, browser: Browser
) -> Page:
    asker = f" from <strong>{client_label(client)}</strong>" if client else ""
    body = f"""{BRAND}<h1>Sign out?</h1><p>A request{asker} asks to sign you out.</p>
<form method="post" action="logout">{_hidden_fields(srv, browser, params, "logout")}
<div class="actions"><button type="submit" name="confirm" value="yes">Sign out</button></div>
</form><p class="muted">Did not ask for this? Close this page: you stay signed in.</p>"""
    return Page("Sign out?", body)


def _account_hidden(srv: Server, browser: Browser) -> str:
    """An account form's CSRF token, bound to the browser and its login session."""
    return f'<input type="hidden" name="csrf_token" value="{esc(srv.signer.csrf_token(browser))}">'


def account_login_page(
    srv: Server,
    browser: Browser,
    message: str = "",
    status: int = 200,
    username: str | None = None,
    reauth: bool = False,
) -> Page:
    typed = username if username is not None else (
        browser.session.username if browser.session else ""
    )
    intro = (
        "<p>To change how you sign in, confirm it is you: sign in again.</p>"
        if reauth
        else "<p>to manage your account</p>"
    )
    action, hidden = f"{ACCOUNT_PATH}/login", _account_hidden(srv, browser)
    body = f"""{BRAND}<h1>Sign in</h1>{intro}{_alert(message)}
<form method="post" action="{action}">{hidden}
{_password_fields(typed, message)}
<div class="actions"><button type="submit">Sign in</button></div></form>"""
    passkey = passwordless_form(srv, browser, action, hidden)
    return with_passkeys(Page("Sign in", body + passkey, status), passkey)


def account_otp_page(
    srv: Server, browser: Browser, user: User, message: str = "", status: int = 200
) -> Page:
    pending = srv.signer.pending(user, browser)
    hidden = _account_hidden(srv, browser)
    action = f"{ACCOUNT_PATH}/login"
    forms, passkey = second_factor_forms(srv, browser, user, action, hidden, pending, message)
    title = "Enter your code" if user.totp_secret else "Confirm it is you"
    body = f"""{BRAND}<h1>{title}</h1>
<p>Signing in as <strong>{esc(user.username)}</strong> to manage your account.</p>
{_alert(message)}{forms}{passkey}<p><a href="{action}">Start over</a></p>"""
    return with_passkeys(Page(title, body, status), passkey)


def when(seconds: float | None) -> str:
    """A time as the account page shows it (UTC, to the minute)."""
    if seconds is None:
        return "an unknown time"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(seconds))


def browser_label(user_agent: str) -> str:
    """A User-Agent as a person names it: "Firefox on Linux"; only a hint (it is the
    browser's own claim), beside the address and times."""
    names = (("Edg/", "Edge"), ("Firefox/", "Firefox"), ("Chrome/", "Chrome"),
             ("Safari/", "Safari"), ("curl/", "curl"), ("python-requests", "Python"))  # fmt: skip
    systems = (("Android", "Android"), ("iPhone", "iOS"), ("iPad", "iPadOS"),
               ("Windows", "Windows"), ("Mac OS X", "macOS"), ("Linux", "Linux"))  # fmt: skip
    name = next((label for mark, label in names if mark in user_agent), "A browser")
    system = next((label for mark, label in systems if mark in user_agent), "")
    return f"{name} on {system}" if system else name


def account_page(
    srv: Server,
    browser: Browser,
    session: Session,
    user: User,
    notice: str | None = None,
    message: str = "",
    status: int = 200,
    field: str = "",
) -> Page:
    """The account overview: password, second factor, connected apps, sessions."""
    hidden = _account_hidden(srv, browser)
    done = f'<p class="ok" role="status">{esc(notice)}</p>' if notice else ""

    def invalid(name: str) -> str:
        return ' aria-invalid="true"' if field == name else ""

    password = f"""<section aria-labelledby="password-heading">
<h2 id="password-heading">Password</h2>
<form method="post" action="{ACCOUNT_PATH}/password">{hidden}
<label for="current_password">Current password</label>
<input id="current_password" name="current_password" type="password"
 autocomplete="current-password" required{invalid("current_password")}>
<label for="new_password">New password</label>
<p class="muted hint" id="new-password-help">At least {MIN_PASSWORD_LENGTH} characters; a long
phrase is good. Common passwords are refused.</p>
<input id="new_password" name="new_password" type="password" autocomplete="new-password"
 minlength="{MIN_PASSWORD_LENGTH}" required aria-describedby="new-password-help"
 {invalid("new_password")}>
<div class="actions"><button type="submit">Change password</button></div></form></section>"""

    totp_action = f"{ACCOUNT_PATH}/totp"
    if user.totp_secret:
        left = srv.storage.recovery_codes_left(user.username)
        second = f"""<p>An authenticator app is set up: you enter its code after your password.
You have <strong>{left}</strong> unused recovery code{"s" * (left != 1)}.</p>
<form method="post" action="{totp_action}">{hidden}<div class="actions">
<button type="submit" name="step" value="start" class="secondary">Replace the app</button>
<button type="submit" name="step" value="remove" class="secondary">Remove the app</button>
</div></form>
<form method="post" action="{ACCOUNT_PATH}/recovery-codes">{hidden}<div class="actions">
<button type="submit" class="secondary">Make new recovery codes</button></div></form>"""
    else:
        second = f"""<p>Add an authenticator app, so that a password alone cannot sign you in.</p>
<form method="post" action="{totp_action}">{hidden}<div class="actions">
<button type="submit" name="step" value="start">Set up an authenticator app</button>
</div></form>"""

    apps = []
    for grant in srv.list_grants(user.username):
        client = srv.storage.get_client(grant.client_id)
        label = client_label(client) if client else esc(grant.client_id)
        # A name a client gave itself may be another app's (see unverified_notice).
        label += " (unverified)" if client is not None and client.unverified else ""
        scopes = ", ".join(esc(consent_label(s)) for s in sorted(grant.scopes or ()))
        allowed = f"Allowed: {scopes}. " if scopes else ""
        since = f"Since {when(grant.consented_at)}." if grant.consented_at else (
            "Signed in without a consent page."
        )
        apps.append(f"""<li><strong>{label}</strong>
<p class="muted hint">{allowed}{since}</p>
<form method="post" action="{ACCOUNT_PATH}/apps">{hidden}
<input type="hidden" name="client_id" value="{esc(grant.client_id)}">
<button type="submit" class="secondary" aria-label="Revoke access for {label}">Revoke
access</button></form></li>""")
    apps_html = (
        f'<ul class="items">{"".join(apps)}</ul>' if apps
        else "<p>No app has access to your account.</p>"
    )

    passkeys = passkeys_section(srv, browser, user, hidden)
    sessions = []
    for each in srv.storage.list_login_sessions(user.username, srv.clock()):
        this = each.sid == session.sid
        name = "This browser" if this else esc(browser_label(each.user_agent))
        sessions.append(f"""<li><strong>{name}</strong>
<p class="muted hint">Signed in {when(each.created_at)}; last used {when(each.last_used_at)}
from <code>{esc(each.address or "an unknown address")}</code>.</p>
<form method="post" action="{ACCOUNT_PATH}/sessions">{hidden}
<input type="hidden" name="session" value="{session_handle(srv, each.sid)}">
<button type="submit" class="secondary" aria-label="Sign out {name}, signed in
{when(each.created_at)}">Sign out</button></form></li>""")
    body = f"""{BRAND}<div class="wide"><h1>Your account</h1>
<p>Signed in as <strong>{esc(user.username)}</strong>.
<a href="{LOGOUT_PATH}">Sign out</a></p>{done}{_alert(message)}
{password}
<section aria-labelledby="second-heading"><h2 id="second-heading">Two-factor sign-in</h2>
{second}</section>{passkeys}
<section aria-labelledby="apps-heading"><h2 id="apps-heading">Connected apps</h2>
{apps_html}</section>
<section aria-labelledby="sessions-heading"><h2 id="sessions-heading">Sessions</h2>
<ul class="items">{"".join(sessions)}</ul>
<form method="post" action="{ACCOUNT_PATH}/sessions">{hidden}
<div class="actions"><button type="submit" name="all" value="others" class="secondary">Sign
out all other sessions</button></div></form></section></div>"""
    return with_passkeys(Page("Your account", body, status), passkeys)


def passkeys_section(srv: Server, browser: Browser, user: User, hidden: str) -> str:
    """The account page's passkeys (WebAuthn), where the server offers them: each with a
    Remove button, and the form that adds one (its button needs JavaScript)."""
    if not passkeys_offered(srv):
        return ""
    items = []
    for passkey in srv.storage.list_passkeys(user.username):
        name = esc(passkey.name)
        used = f"last used {when(passkey.last_used_at)}" if passkey.last_used_at else "not used yet"
        kind = "synced between your devices" if passkey.backed_up else "kept on one device"
        alone = " It signs you in without a password too." if passkey.passwordless else ""
        items.append(f"""<li><strong>{name}</strong>
<p class="muted hint">Added {when(passkey.created_at)}, {used}; {kind}.{alone}</p>
<form method="post" action="{ACCOUNT_PATH}/passkeys">{hidden}
<input type="hidden" name="credential_id" value="{esc(passkey.credential_id)}">
<button type="submit" name="step" value="remove" class="secondary"
 aria-label="Remove the passkey {name}">Remove</button></form></li>""")
    listed = f'<ul class="items">{"".join(items)}</ul>' if items else "<p>No passkeys yet.</p>"
    options, state = registration_options(srv, browser, user)
    extra = f"""<input type="hidden" name="step" value="create">
<label for="passkey_name">Name of the new passkey</label>
<input id="passkey_name" name="name" maxlength="{PASSKEY_NAME_LENGTH}" value="Passkey">
<label class="check"><input type="checkbox" name="passwordless" value="yes"> Also sign in
with it alone, without a password</label>"""
    add = _passkey_form(f"{ACCOUNT_PATH}/passkeys", hidden, "create", options, state,
                        "Add a passkey", extra)  # fmt: skip
    return f"""<section aria-labelledby="passkeys-heading"><h2 id="passkeys-heading">Passkeys</h2>
<p>A passkey confirms it is you with this device's screen lock or a security key. After
your password it stands in for a code; it can also sign you in on its own.</p>{listed}
<p class="muted" data-passkey-fallback>Adding a passkey needs JavaScript in this browser.</p>
{add}</section>"""


def totp_enrol_page(
    srv: Server,
    browser: Browser,
    session: Session,
    secret: str,
    message: str = "",
    status: int = 200,
) -> Page:
    """Enrol an authenticator app (RFC 6238): the otpauth URI (Google Authenticator Key URI
    Format) as a QR code in inline SVG, when the optional qrcode library is installed, and
    always the secret as text, for apps without a camera or people who cannot scan."""
    label = f"codeflow {urllib.parse.urlsplit(srv.issuer).netloc}"
    uri = pyotp.TOTP(secret).provisioning_uri(name=session.username, issuer_name=label)
    svg = qr_svg(uri)
    qr = (
        f'<figure class="qr" role="img" aria-label="QR code of the key below">{svg}</figure>'
        if svg else ""
    )
    enrol = srv.signer.dumps({"k": secret, "s": session.sid}, "totp-enrol", FORM_LIFETIME)
    grouped = " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))
    invalid = ' aria-invalid="true" aria-describedby="form-error otp-help"' if message else (
        ' aria-describedby="otp-help"'
    )
    scan = "Scan this QR code with the app, or type" if svg else "Type"
    body = f"""{BRAND}<h1>Set up an authenticator app</h1>{_alert(message)}
<ol><li>Open your authenticator app and add an account.</li>
<li>{scan} this key: <code id="totp-key">{esc(grouped)}</code></li>
<li>Enter the 6-digit code the app then shows.</li></ol>{qr}
<form method="post" action="{ACCOUNT_PATH}/totp">{_account_hidden(srv, browser)}
<input type="hidden" name="enrol" value="{esc(enrol)}">
<label for="otp">Code from the app</label>
<p class="muted hint" id="otp-help">Your sign-ins will ask for it from now on.</p>
<input id="otp" name="otp" inputmode="numeric" autocomplete="one-time-code" pattern="[0-9 ]*"
 maxlength="8" required autofocus{invalid}>
<div class="actions"><button type="submit" name="step" value="confirm">Turn on</button>
<a href="{ACCOUNT_PATH}">Cancel</a></div></form>"""
    return Page("Set up an authenticator app", body, status)


def qr_svg(data: str) -> str:
    """``data`` as a QR code in SVG, to inline in a page (no script, no image fetched: the
    CSP allows neither); "" without the optional qrcode library, whose pure-Python SVG
    factory makes it."""
    try:
        import qrcode.image.svg  # optional, as for the CLI's TOTP enrolment
    except ImportError:
        return ""
    image = qrcode.make(data, image_factory=qrcode.image.svg.SvgPathImage, border=2)
    svg: str = image.to_string(encoding="unicode")
    return svg[svg.index("<svg") :]


def recovery_codes_page(srv: Server, codes: list[str], *, enrolled: bool = False) -> Page:
    """NIST SP 800-63B §5.1.2: the recovery codes, shown this once (storage keeps hashes)."""
    items = "".join(f"<li><code>{esc(code)}</code></li>" for code in codes)
    first = (
        '<p class="ok" role="status">The authenticator app is on: sign-ins ask for its '
        "code from now on.</p>" if enrolled else ""
    )
    body = f"""{BRAND}<h1>Save your recovery codes</h1>{first}
<p>If you lose your authenticator app, each of these codes signs you in once, in place of
its code. Keep them somewhere safe, such as a password manager: <strong>this is the only
time they are shown</strong>. Codes you had before no longer work.</p>
<ul class="codes">{items}</ul>
<div class="actions"><a class="button" href="{ACCOUNT_PATH}">Back to your account</a></div>"""
    return Page("Save your recovery codes", body)


def home_page(srv: Server) -> Page:
    demo = (
        "<p>New to the flow? The demo client walks you through it, step by step.</p>"
        f'<div class="actions"><a class="button" href="{DEMO_PATH}">Try the demo</a></div>'
        if srv.demo
        else ""
    )
    return Page(
        "codeflow",
        f"{BRAND}<h1>An OAuth 2.1 and OpenID Connect server</h1><p>Issuer: "
        f"<code>{esc(srv.issuer)}</code></p><p>Metadata: "
        f'<a href="{OAUTH_METADATA_PATH}">{OAUTH_METADATA_PATH}</a></p>{demo}',
    )


def page_document(page: Page) -> str:
    """The whole HTML document of a page, in the one style every page shares."""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(page.title)} · codeflow</title><style>{STYLE}</style>"
        # HTML §4.2.5.3: a refresh comes due once the document, frames included, "has
        # completely loaded", and then after the given seconds; it needs no script.
        + (
            f'<meta http-equiv="refresh" content="{FORWARD_DELAY}; url={esc(page.forward)}">'
            if page.forward
            else ""
        )
        + "</head>"
        f"<body><main>{page.body}</main>"
        + (f"<script>{page.script}</script>" if page.script else "")
        + "</body></html>"
    )


###############################################################################
# The demo client: the whole flow in a browser ###############################
###############################################################################

DEMO_PATH = "/demo"
DEMO_CALLBACK_PATH = "/demo/callback"
DEMO_CLIENT_ID = "demo-app"
DEMO_USER, DEMO_PASSWORD = "alice", "wonderland"
DEMO_SCOPE = "openid profile offline_access"
DEMO_COOKIE = "codeflow_demo"  # the demo client's own: a random id its values derive from

RFC6749 = "https://www.rfc-editor.org/rfc/rfc6749"
RFC7636 = "https://www.rfc-editor.org/rfc/rfc7636"
RFC9207 = "https://www.rfc-editor.org/rfc/rfc9207"
RFC6750 = "https://www.rfc-editor.org/rfc/rfc6750"
OIDC_CORE = "https://openid.net/specs/openid-connect-core-1_0.html"


def add_demo(srv: Server) -> None:
    """Register the demo client (public, PKCE) at this issuer and the demo user."""
    srv.add_client(
        DEMO_CLIENT_ID,
        redirect_uris=[srv.issuer + DEMO_CALLBACK_PATH],
        name="codeflow demo app",
        scopes=DEFAULT_SCOPES,
    )
    if srv.storage.get_user(DEMO_USER) is None:
        srv.add_user(DEMO_USER, DEMO_PASSWORD, claims={"name": "Alice Liddell"})


def _demo_value(srv: Server, purpose: str, demo_id: str) -> str:
    # The demo client keeps no server-side state: its state, nonce and PKCE verifier are
    # derived from its own cookie (DEMO_COOKIE), so the callback can recompute them.
    return srv.signer.mac(f"{purpose}:{demo_id}")


def _spec(*refs: tuple[str, str]) -> str:
    """Links to the sections a step follows: (label, URL) pairs."""
    links = ", ".join(f'<a href="{esc(url)}">{esc(label)}</a>' for label, url in refs)
    return f'<p class="spec">Spec: {links}</p>'


def _json(value: Any) -> str:
    return f"<pre>{esc(json.dumps(value, indent=2, ensure_ascii=False))}</pre>"


def _params(rows: Iterable[tuple[str, str, str]]) -> str:
    """Parameters as a list that reads on a phone too: name, value, what it is for."""
    items = "".join(
        f'<dt><code>{esc(k)}</code></dt><dd><code>{esc(v)}</code><br><span class="muted">'
        f"{esc(why)}</span></dd>"
        for k, v, why in rows
    )
    return f'<dl class="params">{items}</dl>'


def _utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def _check(ok: bool, what: str) -> str:
    mark = '<span class="ok">✓ passed</span>' if ok else '<span class="bad">✗ failed</span>'
    return f"<li>{mark}: {what}</li>"


DEMO_STEPS = (
    ("request", "1. Authorization request"),
    ("signin", "2. Sign in and consent"),
    ("callback", "3. Callback"),
    ("token-request", "4. Token request"),
    ("token-response", "5. Token response"),
    ("id-token", "6. ID token"),
    ("userinfo", "7. UserInfo"),
)


def _steps_nav(linked: bool) -> str:
    """The steps, as links once the callback page holds them all (from step 3 on)."""
    items = "".join(
        f'<li><a href="#{anchor}">{esc(label)}</a></li>'
        if linked and anchor not in ("request", "signin")
        else f"<li>{esc(label)}</li>"
        for anchor, label in DEMO_STEPS
    )
    return f'<nav class="steps" aria-label="Steps of the flow"><ol>{items}</ol></nav>'


def _step(anchor: str, title: str, content: str, next_anchor: str | None) -> str:
    names = {a: label.split(". ", 1)[1] for a, label in DEMO_STEPS}
    anchors = [a for a, _ in DEMO_STEPS]
    previous = anchors[anchors.index(anchor) - 1]
    back = (
        f'<a href="#{previous}">Back: {esc(names[previous])}</a>'
        if previous not in ("request", "signin")
        else ""
    )
    forward = (
        f'<a class="button" href="#{next_anchor}">Next: {esc(names[next_anchor])}</a>'
        if next_anchor
        else ""
    )
    actions = f'<div class="actions">{forward}{back}</div>' if forward or back else ""
    return (
        f'<section class="step" id="{anchor}" aria-labelledby="{anchor}-h">'
        f'<h2 id="{anchor}-h">{esc(title)}</h2>{content}{actions}</section>'
    )


def demo_page(srv: Server, demo_id: str) -> Page:
    """Step 1 of the flow, as a client app does it: build the authorization request."""
    state, verifier = _demo_value(srv, "state", demo_id), _demo_value(srv, "verifier", demo_id)
    nonce = _demo_value(srv, "nonce", demo_id)
    params = {
        "response_type": "code",
        "client_id": DEMO_CLIENT_ID,
        "redirect_uri": srv.issuer + DEMO_CALLBACK_PATH,
        "scope": DEMO_SCOPE,
        "state": state,
        "nonce": nonce,
        "code_challenge": s256(verifier),
        "code_challenge_method": "S256",
    }
    why = {
        "response_type": "ask for an authorization code (the only response type here)",
        "client_id": "who asks: the demo app, a public client (no secret)",
        "redirect_uri": "where to send the answer; must match a registered URI exactly",
        "scope": "what the app asks for: an ID token, the profile, a refresh token",
        "state": "a random value the callback must see again: stops forged callbacks",
        "nonce": "a random value the ID token must carry: ties the token to this request",
        "code_challenge": "SHA-256 of a secret verifier; only this app can redeem the code",
        "code_challenge_method": "S256: the challenge is BASE64URL(SHA256(verifier))",
    }
    url = authorize_url(srv, params)
    # The button comes first, on the first screen of a desktop and of a phone; the
    # request it sends is explained below it, for whoever wants to read before clicking.
    body = f"""{BRAND}<div class="wide"><h1>The authorization code flow, step by step</h1>
<p>This page plays a client app, the <em>codeflow demo app</em>. Start the flow, sign in
as <code>{DEMO_USER}</code> with password <code>{DEMO_PASSWORD}</code>, and follow it as
it happens: each step shows what goes over the wire and links to the section of the
specification it follows.</p>
<div class="actions"><a class="button" href="{esc(url)}">Start the flow</a></div>
{_steps_nav(False)}
<section class="step" aria-labelledby="request-h"><h2 id="request-h">1. The authorization
request</h2>
<p>The app sends your browser to the authorization endpoint <code>{AUTHORIZE_PATH}</code>
with these query parameters:</p>{_params((k, v, why[k]) for k, v in params.items())}
<p>The PKCE <code>code_verifier</code> stays with the app (shown here so you can check
the challenge): <code>{esc(verifier)}</code></p>
<p>The whole URL:</p><pre>{esc(url)}</pre>
{_spec(("RFC 6749 §4.1.1", f"{RFC6749}#section-4.1.1"),
       ("RFC 7636 §4.1-4.3 (PKCE)", f"{RFC7636}#section-4.1"),
       ("OIDC Core §3.1.2.1", f"{OIDC_CORE}#AuthRequest"))}</section>
<section class="step" aria-labelledby="signin-h"><h2 id="signin-h">2. Sign in and
consent</h2>
<p>When you start the flow (the button above), you sign in at the authorization endpoint,
as <code>{DEMO_USER}</code> with password <code>{DEMO_PASSWORD}</code>, and allow the app
what it asks. The app never sees your password.</p>
{_spec(("RFC 6749 §4.1.1", f"{RFC6749}#section-4.1.1"),
       ("OIDC Core §3.1.2.3", f"{OIDC_CORE}#Authenticates"),
       ("OIDC Core §3.1.2.4", f"{OIDC_CORE}#Consent"))}</section>
</div>"""
    return Page("Demo: the authorization request", body, cookies=((DEMO_COOKIE, demo_id),))


def demo_finish(srv: Server, params: dict[str, str], demo_id: str) -> Page:
    """Steps 3 to 7, as the app's server does them when the browser comes back: check
    the callback, redeem the code, read the ID token, ask the userinfo endpoint."""
    again = f'<div class="actions"><a class="button" href="{DEMO_PATH}">Start again</a></div>'
    callback_spec = _spec(
        ("RFC 6749 §4.1.2", f"{RFC6749}#section-4.1.2"),
        ("RFC 6749 §10.12 (state)", f"{RFC6749}#section-10.12"),
        ("RFC 9207 §2.4 (iss)", f"{RFC9207}#section-2.4"),
    )
    received = _json(params)
    state_ok = params.get("state") == _demo_value(srv, "state", demo_id)
    iss_ok = params.get("iss") == srv.issuer
    checks = (
        "<ul>"
        + _check(state_ok, "<code>state</code> is the one this browser's request carried")
        + _check(iss_ok, f"<code>iss</code> is this issuer, <code>{esc(srv.issuer)}</code>")
        + "</ul>"
    )
    if not (state_ok and iss_ok) or "error" in params:
        if "error" in params and state_ok and iss_ok:
            title, what = "The authorization failed", (
                "The authorization server answered with an error instead of a code "
                f'(<a href="{RFC6749}#section-4.1.2.1">RFC 6749 §4.1.2.1</a>):'
            )
            status = 200
        else:
            title, what = (
                ("State mismatch", "The callback's state is not ours: the demo stops here.")
                if not state_ok
                else ("Wrong issuer", "The callback's iss is not this issuer: the demo stops.")
            )
            status = 400
        body = f"""{BRAND}<div class="wide"><h1>{esc(title)}</h1>{_steps_nav(False)}
<p>{what}</p>{received}{checks}{callback_spec}{again}</div>"""
        return Page(f"Demo: {title}", body, status)

    request = {
        "grant_type": "authorization_code",
        "code": params.get("code", ""),
        "redirect_uri": srv.issuer + DEMO_CALLBACK_PATH,
        "client_id": DEMO_CLIENT_ID,
        "code_verifier": _demo_value(srv, "verifier", demo_id),
    }
    try:
        result = token_endpoint(srv, request, None)
    except OAuthError as err:
        result = err.to_json()
    wire = (
        f"POST {TOKEN_PATH} HTTP/1.1\nHost: {urllib.parse.urlsplit(srv.issuer).netloc}\n"
        "Content-Type: application/x-www-form-urlencoded\n\n"
        + urllib.parse.urlencode(request).replace("&", "\n&")
    )
    steps = [
        _step(
            "callback",
            "3. The callback",
            f"""<p>After you allowed access, the authorization server sent your browser back
to the app's <code>redirect_uri</code> with these query parameters:</p>{received}
<p>Before using the code, the app checks:</p>{checks}{callback_spec}""",
            "token-request",
        ),
        _step(
            "token-request",
            "4. The token request",
            f"""<p>The app's server, not your browser, redeems the code at the token
endpoint. It proves it is the app that started the flow with the PKCE
<code>code_verifier</code>; the token endpoint checks that its SHA-256 is the
<code>code_challenge</code> of step 1.</p><pre>{esc(wire)}</pre>
{_spec(("RFC 6749 §4.1.3", f"{RFC6749}#section-4.1.3"),
       ("RFC 7636 §4.5-4.6", f"{RFC7636}#section-4.5"),
       ("OIDC Core §3.1.3.1", f"{OIDC_CORE}#TokenRequest"))}""",
            "token-response",
        ),
    ]
    if "error" in result:
        steps.append(_step(
            "token-response",
            "5. The token response: an error",
            f"""<p>The token endpoint refused the code. A code works once: reloading the
callback sends it again, and the server then also revokes what the code issued.</p>
{_json(result)}{_spec(("RFC 6749 §5.2", f"{RFC6749}#section-5.2"),
                      ("RFC 6749 §4.1.2", f"{RFC6749}#section-4.1.2"))}{again}""",
            None,
        ))  # fmt: skip
    else:
        steps.extend(_token_steps(srv, result, demo_id, again))
    body = f"""{BRAND}<div class="wide"><h1>The authorization code flow, step by step</h1>
{_steps_nav(True)}<div class="steps-panel">{"".join(steps)}</div></div>"""
    return Page("Demo: the flow, step by step", body)


def _token_steps(
    srv: Server, result: dict[str, Any], demo_id: str, again: str
) -> list[str]:
    """Steps 5 to 7: the token response, the ID token it carries, the userinfo answer."""
    id_token = result.get("id_token", "")
    try:
        info: dict[str, Any] = userinfo(srv, "Bearer " + result.get("access_token", ""), None)
    except OAuthError as err:
        info = err.to_json()
    host = urllib.parse.urlsplit(srv.issuer).netloc
    wire = f"GET {USERINFO_PATH} HTTP/1.1\nHost: {host}\nAuthorization: Bearer "
    shown = {**result, "id_token": id_token[:24] + "…"} if id_token else result
    # A user may edit the request of step 1: without offline_access there is no refresh
    # token, and without openid no ID token (OIDC Core §3.1.2.1) and no userinfo.
    carries = ["an access token for APIs"]
    if "refresh_token" in result:
        carries.append("a refresh token (the app asked for <code>offline_access</code>)")
    if id_token:
        carries.append("an ID token (shortened here; step 6 decodes it)")
    listed = ", ".join(carries[:-1]) + " and " + carries[-1] if len(carries) > 1 else carries[0]
    ending = (
        "That is the whole flow. The app would now start its own session for "
        f"<strong>{esc(str(info['sub']))}</strong>."
        if "sub" in info
        else "Without an ID token or userinfo, the app has not learnt who signed in."
    )
    return [
        _step(
            "token-response",
            "5. The token response",
            f"""<p>The token endpoint answers with JSON, never cached
(<code>Cache-Control: no-store</code>): {listed}.</p>{_json(shown)}
{_spec(("RFC 6749 §5.1", f"{RFC6749}#section-5.1"),
       ("OIDC Core §3.1.3.3", f"{OIDC_CORE}#TokenResponse"))}""",
            "id-token",
        ),
        _step("id-token", "6. The ID token", _id_token_step(srv, id_token, demo_id), "userinfo"),
        _step(
            "userinfo",
            "7. The UserInfo answer",
            f"""<p>With the access token, the app asks the userinfo endpoint for the claims
its scopes allow (here <code>profile</code>):</p>
<pre>{esc(wire)}…</pre>
<p>and receives:</p>{_json(info)}
{_spec(("OIDC Core §5.3", f"{OIDC_CORE}#UserInfo"),
       ("RFC 6750 §2.1", f"{RFC6750}#section-2.1"))}
<p>{ending}</p>{again}""",
            None,
        ),
    ]


def _id_token_step(srv: Server, id_token: str, demo_id: str) -> str:
    """Step 6: the ID token decoded and checked, or why there is none."""
    if not id_token:
        return f"""<p>The token response has no ID token: the request's scope did not include
<code>openid</code>, so this was a plain OAuth flow, not an OpenID Connect sign-in, and
the app learns nothing from it about who signed in.</p>
{_spec(("OIDC Core §3.1.2.1", f"{OIDC_CORE}#AuthRequest"))}"""
    # Decoded to be shown whatever the checks find; the checks below are the client's
    # (OIDC Core §3.1.3.7), the signature against the JWKS first, each shown as passed or
    # failed rather than stopping at the first failure.
    header = jwt.get_unverified_header(id_token)
    claims = jwt.decode(id_token, options={"verify_signature": False})
    aud = claims.get("aud")
    now = srv.clock()
    kid = esc(str(header.get("kid")))
    checks = (
        "<ul>"
        + _check(
            _signature_verifies(srv, id_token, header),
            f'the signature, with the key <code>{kid}</code> of the issuer\'s <a href="'
            f'{esc(srv.issuer + JWKS_PATH)}">JWKS</a> (the public keys any client fetches)',
        )
        + _check(claims.get("iss") == srv.issuer, "<code>iss</code> is the issuer")
        + _check(
            aud == DEMO_CLIENT_ID or (isinstance(aud, list) and DEMO_CLIENT_ID in aud),
            "<code>aud</code> names this app",
        )
        + _check(
            claims.get("exp", 0) > now,
            f"<code>exp</code> is in the future: {_utc(claims.get('exp', 0))}",
        )
        + _check(
            claims.get("nonce") == _demo_value(srv, "nonce", demo_id),
            "<code>nonce</code> is the one step 1 sent",
        )
        + "</ul>"
    )
    return f"""<p>The ID token is a signed JWT that says who signed in, for which app, and
when. As sent, it is three base64url parts, <em>header.claims.signature</em>:</p>
<pre>{esc(id_token)}</pre><p>Its header:</p>{_json(header)}<p>Its claims:</p>{_json(claims)}
<p>The app validates it before trusting it:</p>{checks}
{_spec(("OIDC Core §2", f"{OIDC_CORE}#IDToken"),
       ("OIDC Core §3.1.3.7", f"{OIDC_CORE}#IDTokenValidation"))}"""


def _signature_verifies(srv: Server, id_token: str, header: dict[str, Any]) -> bool:
    """OIDC Core §3.1.3.7 (6): "The Client MUST validate the signature of all other ID
    Tokens according to JWS [JWS] using the algorithm specified in the JWT alg Header
    Parameter. The Client MUST use the keys provided by the Issuer." The key is the JWKS
    entry the header's kid names, in the document the JWKS endpoint serves."""
    if our_signing_key(srv, header.get("kid")) is None:  # §10.1.1: a new kid, read again
        return False
    entries = [k for k in jwks(srv)["keys"] if k["kid"] == header.get("kid")]
    if len(entries) != 1 or header.get("alg") not in SIGNING_ALGS:
        return False
    try:
        key = jwt.PyJWK.from_dict(entries[0]).key
        # Only the signature here: the claims have checks of their own on the page.
        jwt.decode(id_token, key, algorithms=[header["alg"]], options={
            "verify_exp": False, "verify_iat": False, "verify_nbf": False,
            "verify_aud": False, "verify_iss": False,
        })  # fmt: skip
    except jwt.PyJWTError:
        return False
    return True


###############################################################################
# The WSGI app: the only place that touches bottle ############################
###############################################################################

# Each route adapts one HTTP request to one protocol function above and turns what it
# returns (a Redirect, a Page, a JSON body) or raises (an OAuthError) into a response.

WSGIApp = Callable[..., Iterable[bytes]]
Request: TypeAlias = Any  # bottle.BaseRequest; bottle has no annotations to check against
ErrorKind = Literal["page", "redirect", "json", "bearer", "dpop"]


def build_wsgi(srv: Server) -> WSGIApp:
    """The app and its layers, outermost first: the client address behind proxies, the
    access log, the transcript (when recording), the fault plan and test-mode control
    surface (see "A fake IdP"), security headers, the routes."""
    app = _with_faults(srv, _secure_headers(build_app(srv), https=srv.secure_cookies))
    app = _recording(srv, app) if srv.transcript.enabled else app
    return _behind_proxies(srv, _access_log(app))


def build_app(srv: Server) -> bottle.Bottle:
    """The routes: paths and methods to the endpoint functions below."""
    app = bottle.Bottle()

    def answer(kind: ErrorKind, respond: Callable[[], bottle.HTTPResponse]) -> Callable[[], Any]:
        """The route's callback: ``respond``, or 503 if storage is down at any point of it
        (reading the session cookie, the CORS origins, the endpoint itself)."""

        def callback(**_url_args: str) -> bottle.HTTPResponse:  # read via request.url_args
            try:
                return respond()
            except StorageUnavailable as err:
                return error_response(srv, err, kind)

        return callback

    def browser(path: str, methods: list[str], step: BrowserStep) -> None:
        app.route(path, methods, answer("page", lambda: browser_response(srv, bottle.request,
                                                                         step)))  # fmt: skip

    def api(path: str, handler: ApiHandler, cors: bool = True) -> None:
        app.post(path)(answer("json", lambda: api_response(srv, bottle.request, handler, cors)))

    def get(path: str, handler: Callable[[Server, Request], bottle.HTTPResponse]) -> None:
        app.get(path)(answer("json", lambda: handler(srv, bottle.request)))

    def preflight(path: str, methods: str, any_origin: bool = False) -> None:
        app.route(path, ["OPTIONS"], answer("json", lambda: preflight_response(
            srv, bottle.request, methods, any_origin)))  # fmt: skip

    browser(AUTHORIZE_PATH, ["GET", "POST"], authorization_endpoint)
    browser(LOGIN_PATH, ["POST"], login_endpoint)
    browser(CONSENT_PATH, ["POST"], consent_endpoint)
    api(TOKEN_PATH, lambda srv, params, authorization, address: token_endpoint(
        srv, params, authorization, address, dpop_request(srv, bottle.request, TOKEN_PATH)))
    api(DEVICE_AUTHORIZATION_PATH, device_authorization, cors=False)
    # RFC 9126 §2.2: "the authorization server MUST return ... HTTP status code 201".
    app.post(PAR_PATH)(answer("json", lambda: created(api_response(
        srv, bottle.request, lambda srv, params, authorization, address:
        pushed_authorization_request(srv, params, authorization, address,
                                     dpop_request(srv, bottle.request, PAR_PATH)),
        cors=True))))  # fmt: skip
    browser(DEVICE_PATH, ["GET", "POST"], device_endpoint)
    api(INTROSPECT_PATH, introspect, cors=False)
    api(REVOKE_PATH, revoke)
    get(OAUTH_METADATA_PATH, metadata_endpoint)
    get(OIDC_METADATA_PATH, metadata_endpoint)
    get(JWKS_PATH, jwks_endpoint)
    get(HEALTH_PATH, health_endpoint)
    app.route(USERINFO_PATH, ["GET", "POST"],
              answer("json", lambda: userinfo_endpoint(srv, bottle.request)))  # fmt: skip
    # CORS (Fetch §3.2): the endpoints a browser app calls answer preflights; the pages
    # and introspection have none, so a preflight to them fails (405, no CORS headers).
    for path in (OAUTH_METADATA_PATH, OIDC_METADATA_PATH, JWKS_PATH):
        preflight(path, "GET", any_origin=True)
    preflight(TOKEN_PATH, "POST")
    preflight(PAR_PATH, "POST")
    preflight(REVOKE_PATH, "POST")
    preflight(USERINFO_PATH, "GET, POST")
    # RFC 7591 §3, RFC 7592 §2: JSON in and out, any origin (no cookie is ever used: the
    # policy, or the registration access token, is the whole of the access control).
    app.route(REGISTRATION_PATH, ["POST"],
              answer("json", lambda: registration_endpoint(srv, bottle.request)))
    app.route(REGISTRATION_PATH + "/<client_id>", ["GET", "PUT", "DELETE"],
              answer("json", lambda: registration_endpoint(srv, bottle.request)))
    app.route(REGISTRATION_PATH, ["OPTIONS"], answer("json", lambda: preflight_response(
        srv, bottle.request, "POST", any_origin=True)))
    app.route(REGISTRATION_PATH + "/<client_id>", ["OPTIONS"],
              answer("json", lambda: preflight_response(
                  srv, bottle.request, "GET, PUT, DELETE", any_origin=True)))  # fmt: skip
    browser(LOGOUT_PATH, ["GET", "POST"], logout_endpoint)
    browser(ACCOUNT_PATH, ["GET"], account_endpoint)
    browser(ACCOUNT_PATH + "/login", ["GET", "POST"], account_login_endpoint)
    for path, step in ACCOUNT_FORMS.items():
        browser(ACCOUNT_PATH + path, ["POST"], account_form_endpoint(step))
    browser("/", ["GET"], home_endpoint)
    browser(DEMO_PATH, ["GET"], demo_endpoint)
    browser(DEMO_CALLBACK_PATH, ["GET"], demo_callback_endpoint)
    app.default_error_handler = plain_error
    return app


# -- Reading requests -----------------------------------------------------------


def read_body(request: Request) -> bytes:
    raw = request.environ.get("CONTENT_LENGTH") or "0"
    if not (raw.isascii() and raw.isdigit()):  # RFC 9110 §8.6: Content-Length = 1*DIGIT
        raise InvalidRequest("Content-Length is not a number.")
    length = int(raw)
    if length > MAX_BODY:
        raise PayloadTooLarge(f"The request body is larger than {MAX_BODY} bytes.")
    return request.environ["wsgi.input"].read(length) if length > 0 else b""


def form_pairs(request: Request) -> list[tuple[str, str]]:
    """RFC 6749 §4.1.3: POST bodies are application/x-www-form-urlencoded."""
    ctype = request.environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise InvalidRequest("Content-Type must be application/x-www-form-urlencoded.")
    return parse_pairs(read_body(request))


def query_pairs(request: Request) -> list[tuple[str, str]]:
    # PEP 3333 hands the query string over as latin-1; these are the original bytes.
    return parse_pairs(request.environ.get("QUERY_STRING", "").encode("latin-1"))


def cookie_name(srv: Server, name: str) -> str:
    return HOST_PREFIX + name if srv.secure_cookies else name


def cookie_values(srv: Server, request: Request, name: str) -> list[str]:
    """Every value of our cookie ``name`` in the Cookie header, read by hand: the stdlib's
    parser (which bottle uses) fails on the whole header for one malformed cookie, which
    any page that can set a cookie for this host could plant. A name may come more than
    once, one of them planted with another Path or Domain (RFC 6265 §5.4)."""
    wanted, found = cookie_name(srv, name), []
    for part in request.environ.get("HTTP_COOKIE", "").split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key == wanted and value.strip():
            found.append(value.strip())
    return found


def cookie_value(srv: Server, request: Request, name: str) -> str | None:
    """Our cookie ``name`` if it came once; sent twice it counts as absent (no guessing
    which is ours: a session planted beside the user's would sign the user in as the
    attacker, RFC 9700 §4.4)."""
    found = cookie_values(srv, request, name)
    return found[0] if len(found) == 1 else None


def read_browser(srv: Server, request: Request) -> Browser:
    """The Browser of a request, from its cookies: a new browser id (CSRF cookie) unless
    it has one the server signed."""
    # The first browser id we signed: a planted one of ours is harmless, since forms are
    # bound to the session too (see "Browser state").
    ours = [v for v in cookie_values(srv, request, CSRF_COOKIE) if srv.signer.loads(v, "browser")]
    csrf = ours[0] if ours else srv.signer.browser_id()
    # REMOTE_ADDR is the client's own, as resolved through trusted proxies (_behind_proxies).
    address = request.environ.get("REMOTE_ADDR", "")
    session = read_session(srv, cookie_value(srv, request, SESSION_COOKIE), address)
    device = srv.signer.loads(cookie_value(srv, request, DEVICE_COOKIE), "device")
    names = device.get("u") if device else None
    devices = frozenset(str(n) for n in names) if isinstance(names, list) else frozenset()
    agent = request.environ.get("HTTP_USER_AGENT", "")[:USER_AGENT_LENGTH]
    return Browser(csrf, session, address, devices, agent)


def endpoint_url(srv: Server, request: Request, path: str) -> str:
    """The URL of our endpoint ``path`` as the client reached it, as discovery lists it:
    on ``srv.internal_url`` when the request came there, else the issuer's (the public
    URL, whatever proxies forwarded it; oauth_metadata lists the same two)."""
    internal = bool(srv.internal_url) and (
        request.urlparts.netloc == urllib.parse.urlsplit(srv.internal_url).netloc
    )
    return (srv.internal_url if internal and srv.internal_url else srv.issuer) + path


def dpop_request(srv: Server, request: Request, path: str) -> DPoPRequest:
    """The request's DPoP header (several fields come joined by commas, PEP 3333), its
    method and the URL of our endpoint ``path`` it was sent to (RFC 9449 §4.3 #8, #9)."""
    return DPoPRequest(
        request.environ.get("HTTP_DPOP"), request.method, endpoint_url(srv, request, path)
    )


def refuse_cross_site(srv: Server, request: Request) -> None:
    """A form of ours is posted from our own origin (RFC 9700 §4.4; Fetch Metadata).

    ``Sec-Fetch-Site`` must be ``same-origin`` (``none``: the user's own action). It is
    ``same-site`` for a page on another port or a sibling subdomain, which is refused
    too. A browser that sends no Fetch Metadata sends ``Origin`` on a POST: it must be
    the issuer's. A request with neither is no browser's cross-site form (non-browser
    clients, such as codeflow_sdk's headless login, send neither), so it may go on."""
    site = request.environ.get("HTTP_SEC_FETCH_SITE")
    origin = request.environ.get("HTTP_ORIGIN")
    if site is not None:
        if site not in ("same-origin", "none"):
            raise CrossSiteRequest(f"This form was sent from another site ({site[:20]}).")
    elif origin is not None and origin != web_origin(srv.issuer):
        raise CrossSiteRequest("This form was sent from another origin.")


# -- The client behind reverse proxies (RFC 7239) ------------------------------------
#
# Behind a reverse proxy every request comes from the proxy's address, and the client's
# is in a header the proxy adds: Forwarded (RFC 7239) or X-Forwarded-For. Anyone can send
# those headers too (RFC 7239 §8.1), so they count only from a proxy the operator named
# in ``trusted_proxies``; from anyone else they are dropped. Each proxy appends the
# address it saw (RFC 7239 §4), so the client is the right-most address that is not
# itself a trusted proxy: whatever a client writes to the left of it is never read.

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# The forwarding headers bottle or this module would believe (bottle reads X-Forwarded-
# Proto and -Host from anyone), as PEP 3333 environ keys.
FORWARDED_HEADERS = (
    "HTTP_FORWARDED", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_HOST"
)  # fmt: skip
# RFC 7239 §4: forwarded-pair = token "=" value; value = token / quoted-string (RFC 7230).
TCHARS = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
FORWARDED_PAIR = re.compile(rf'[ \t]*({TCHARS})=({TCHARS}|"(?:[^"\\]|\\.)*")[ \t]*(;|,|$)')


def proxy_networks(
    cidrs: Iterable[str] | str, setting: str = "trusted_proxies"
) -> tuple[IPNetwork, ...]:
    """The ``trusted_proxies`` setting (or another list of networks, ``setting``):
    addresses or CIDR networks, checked at once."""
    networks = []
    for cidr in [cidrs] if isinstance(cidrs, str) else cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr, strict=False))
        except (TypeError, ValueError):
            raise ValueError(f"{setting}: {cidr!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def is_trusted_proxy(srv: Server, address: str) -> bool:
    ip = ip_address(address) if srv.trusted_proxies else None
    return ip is not None and any(ip in network for network in srv.trusted_proxies)


def forwarded_elements(value: str) -> list[dict[str, str]] | None:
    """RFC 7239 §4: ``Forwarded = 1#forwarded-element``, each element ``;``-separated
    pairs, names case-insensitive; None if the header does not parse."""
    elements: list[dict[str, str]] = [{}]
    pos = 0
    while pos < len(value):
        match = FORWARDED_PAIR.match(value, pos)
        if match is None:
            return None
        name, raw, separator = match.groups()
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        elements[-1][name.lower()] = raw
        if separator == ",":
            elements.append({})
        pos = match.end()
    return elements


def node_address(node: str) -> str:
    """RFC 7239 §6: ``node = nodename [ ":" node-port ]``: an IP address without its port
    (IPv6 in brackets), in its normal form; "unknown" or an obfuscated name as sent."""
    host = node
    if node.startswith("["):
        host = node[1:].partition("]")[0]
    elif node.count(":") == 1:
        host = node.partition(":")[0]
    ip = ip_address(host)
    return str(ip) if ip is not None else node


def forwarded_client(srv: Server, environ: dict[str, Any]) -> tuple[str, str]:
    """The client's address and scheme: from a trusted proxy, RFC 7239 §5.2's ``for`` and
    §5.4's ``proto`` of the right-most Forwarded element whose address is not a trusted
    proxy (or X-Forwarded-For, with the right-most X-Forwarded-Proto); else the peer's."""
    peer, scheme = environ.get("REMOTE_ADDR", ""), environ.get("wsgi.url_scheme", "http")
    if not is_trusted_proxy(srv, peer):
        return peer, scheme
    forwarded, x_forwarded_for = environ.get("HTTP_FORWARDED"), environ.get("HTTP_X_FORWARDED_FOR")
    if forwarded and x_forwarded_for:
        # A proxy writes one of them and passes the other on from the client; which is
        # which cannot be told, so neither is believed: the proxy's own address counts.
        return peer, scheme
    if forwarded:
        hops = forwarded_elements(forwarded) or []
    else:
        proto = environ.get("HTTP_X_FORWARDED_PROTO", "").rpartition(",")[2].strip()
        nodes = (x_forwarded_for or "").split(",")
        hops = [{"for": node.strip(), "proto": proto} for node in nodes]
    client = None
    for hop in reversed(hops):
        client = hop
        if not hop.get("for"):
            return peer, scheme  # an element without an address: nothing to go on
        if not is_trusted_proxy(srv, node_address(hop["for"])):
            break
    if client is None:
        return peer, scheme
    proto = client.get("proto", "").lower()
    return node_address(client["for"]), proto if proto in ("http", "https") else scheme


# -- CORS: which browser apps may read an answer (Fetch §3.2) ----------------------
#
# A page may read a cross-origin answer only when it carries Access-Control-Allow-Origin
# with the page's origin (or "*"). Discovery and the JWKS are public documents: any origin.
# The token, userinfo and revocation answers are a client's: only the origins of that
# client's registration (cors_origins). Credentials (cookies) are never allowed, so a page
# can never use the browser's login session here; the pages that use it (authorize,
# login, consent, logout) and introspection (for resource servers) answer no CORS at all.
# A preflight names no client, so it admits an origin that any client allows; the answer
# itself is shared only with the origins of the client it is about.

CORS_ALLOW_HEADERS = "Authorization, Content-Type, DPoP"  # DPoP: RFC 9449 §4.1
# Not CORS-safelisted, and needed by the app: RFC 6750 §3's challenge, RFC 9110's wait,
# RFC 9449 §8's nonce.
CORS_EXPOSE_HEADERS = "WWW-Authenticate, Retry-After, DPoP-Nonce"
CORS_MAX_AGE = "600"  # seconds a browser may cache a preflight's answer


def cors_origins(client: Client) -> frozenset[str]:
    """The web origins whose pages may read this client's answers: its ``allowed_origins``
    and, for a public client, the origins of its http(s) redirect URIs, where the browser
    app that receives the code runs. A confidential client's redirect URIs are its server's,
    which needs no CORS; its browser front end is listed in ``allowed_origins``."""
    derived = (web_origin(uri) for uri in client.redirect_uris) if client.public else ()
    return frozenset(client.allowed_origins) | {o for o in derived if o is not None}


def cors_allowed(srv: Server, origin: str, client_id: str | None) -> bool:
    """Whether ``origin`` may read an answer about ``client_id``; about no known client
    (a preflight, an unknown token), whether any registered client allows it. A client of
    a metadata document is known by its document (cached since the request fetched it)."""
    client = find_client(srv, client_id, quiet=True) if client_id else None
    if client is not None:
        return origin in cors_origins(client)
    return any(origin in cors_origins(c) for c in srv.storage.list_clients())


def cors_headers(srv: Server, request: Request, client_id: str | None) -> dict[str, str]:
    """Fetch §3.2.3: the CORS headers of an answer about ``client_id``. Fetch §3.2: "If
    CORS protocol requirements are more complicated than setting
    `Access-Control-Allow-Origin` to `*` or a static origin, `Vary` is to be used"."""
    headers = {"Vary": "Origin"}
    origin = request.environ.get("HTTP_ORIGIN")
    if origin and cors_allowed(srv, origin, client_id):
        headers["Access-Control-Allow-Origin"] = origin
        headers["Access-Control-Expose-Headers"] = CORS_EXPOSE_HEADERS
    return headers


def claimed_client_id(params: dict[str, str], authorization: str | None) -> str | None:
    """The client a token or revocation request names (HTTP Basic or ``client_id``),
    before it is authenticated: enough to choose whose origins may read the answer, which
    says nothing of any other client."""
    if authorization and authorization[:6].lower() == "basic ":
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode()
            return urllib.parse.unquote_plus(decoded.partition(":")[0])
    return params.get("client_id")


def preflight_response(
    srv: Server, request: Request, methods: str, any_origin: bool
) -> bottle.HTTPResponse:
    """Fetch §3.2.2, §3.2.3: the answer to a CORS-preflight request (OPTIONS with
    Access-Control-Request-Method): the methods and headers the endpoint takes, for an
    origin that may call it. Without Access-Control-Allow-Origin the browser stops there."""
    headers = {"Cache-Control": "no-store"}
    origin = request.environ.get("HTTP_ORIGIN")
    if any_origin:
        headers["Access-Control-Allow-Origin"] = "*"
    else:
        headers.update(cors_headers(srv, request, None))
        headers.pop("Access-Control-Expose-Headers", None)
    if origin and "Access-Control-Allow-Origin" in headers:
        headers.update({
            "Access-Control-Allow-Methods": methods,
            "Access-Control-Allow-Headers": CORS_ALLOW_HEADERS,
            "Access-Control-Max-Age": CORS_MAX_AGE,
        })  # fmt: skip
        headers.pop("Cache-Control")
    return bottle.HTTPResponse(status=204, **headers)


# -- Writing responses ----------------------------------------------------------


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> bottle.HTTPResponse:
    # RFC 6749 §5.1: "Cache-Control: no-store" and "Pragma: no-cache" on token responses.
    return bottle.HTTPResponse(
        json.dumps(body),
        status,
        {
            "Content-Type": "application/json",
            "Cache-Control": "no-store",
            "Pragma": "no-cache",
            **(headers or {}),
        },
    )


def page_response(page: Page) -> bottle.HTTPResponse:
    headers = {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"}
    if page.retry_after:
        headers["Retry-After"] = str(page.retry_after)
    if page.script or page.frames:  # the page's own CSP, allowing its script or frames
        headers["Content-Security-Policy"] = content_security_policy(page.script, page.frames)
    return bottle.HTTPResponse(page_document(page), page.status, headers)


def redirect_response(redirect: Redirect, method: str = "GET") -> bottle.HTTPResponse:
    # RFC 9700 §4.12: answer a form POST with 303, so the browser drops the body.
    status = 303 if method == "POST" else 302
    return bottle.HTTPResponse(
        status=status, Location=redirect.location, **{"Cache-Control": "no-store"}
    )


def error_response(
    srv: Server,
    err: OAuthError | StorageUnavailable,
    kind: ErrorKind,
    redirect: tuple[str, str | None, str] | None = None,
) -> bottle.HTTPResponse:
    """The one place an OAuthError or StorageUnavailable becomes a response, in the form
    its endpoint owes:

    - ``page``: an HTML page, never a redirect: the client or redirect_uri is not
      trusted (RFC 6749 §4.1.2.1), or the request came from a page of ours;
    - ``redirect``: back to the client's trusted ``redirect`` (redirect_uri, state,
      response_mode), with error, error_description, state and iss (RFC 6749 §4.1.2.1,
      RFC 9207), on the query or as a form_post page;
    - ``json``: RFC 6749 §5.2, with ``WWW-Authenticate`` where a client used HTTP Basic;
    - ``bearer``: RFC 6750 §3, whose errors always carry ``WWW-Authenticate: Bearer``;
      ``dpop``: the same for a request that used the DPoP scheme (RFC 9449 §7.1). An
      error about DPoP itself (its ``challenge``) is always a DPoP challenge.

    StorageUnavailable is 503 with Retry-After (RFC 9110 §15.6.4): a page for a browser,
    never a redirect (the request was not handled, and reloading the page retries it
    whole), JSON ``temporarily_unavailable`` for the rest. It is logged here, once.
    """
    if isinstance(err, StorageUnavailable):
        log.warning("codeflow: storage unavailable, answering 503: %s", err.description)
        if kind in ("page", "redirect"):
            return page_response(unavailable_page(err))
        return json_response(err.to_json(), err.status, {"Retry-After": str(err.retry_after)})
    if kind == "page":
        return page_response(error_page(err))
    if kind == "redirect" and redirect is not None:
        answer = error_redirect(srv, redirect[0], redirect[1], err, redirect[2])
        return redirect_response(answer) if isinstance(answer, Redirect) else page_response(answer)
    headers = {}
    if isinstance(err, UseDPoPNonce):
        headers["DPoP-Nonce"] = err.nonce  # RFC 9449 §8, §9
    if kind in ("bearer", "dpop"):
        # RFC 6750 §3, RFC 9449 §7.1: the challenge of the scheme the error is about, and
        # for DPoP the algorithms its proofs may use.
        scheme = err.challenge or ("DPoP" if kind == "dpop" else "Bearer")
        challenge = f'{scheme} realm="codeflow"'
        if scheme == "DPoP":
            challenge += f', algs="{" ".join(CLIENT_KEY_ALGS)}"'
        if not isinstance(err, MissingToken):
            challenge += f', error="{err.error}", error_description="{err.description}"'
        headers["WWW-Authenticate"] = challenge
    elif isinstance(err, InvalidClient) and err.basic:
        # RFC 6749 §5.2: 401 and "MUST include the WWW-Authenticate response header"
        headers["WWW-Authenticate"] = 'Basic realm="codeflow", charset="UTF-8"'
    elif isinstance(err, TooManyAttempts):
        headers["Retry-After"] = str(err.retry_after)
    return json_response(err.to_json(), err.status, headers)


def browser_response(srv: Server, request: Request, step: BrowserStep) -> bottle.HTTPResponse:
    """A browser-facing endpoint: its Page or Redirect, with the cookies it changes; an
    error is a page (the protocol already turned trusted-redirect errors into Redirects)."""
    browser = read_browser(srv, request)
    try:
        result = step(srv, request, browser)
    except OAuthError as err:
        result = error_page(err)
    if isinstance(result, Redirect):
        response = redirect_response(result, request.method)
    else:
        response = page_response(result)
    cookie = {"httponly": True, "samesite": "lax", "secure": srv.secure_cookies, "path": "/"}
    csrf = browser.csrf
    if result.signed_out:
        response.delete_cookie(cookie_name(srv, SESSION_COOKIE), **cookie)
    elif result.session is not None:
        value = srv.signer.session_cookie(result.session)
        response.set_cookie(cookie_name(srv, SESSION_COOKIE), value, **cookie)
        device = srv.signer.dumps(
            {"u": sorted(browser.with_device(result.session.username))}, "device",
            DEVICE_LIFETIME,
        )  # fmt: skip
        response.set_cookie(cookie_name(srv, DEVICE_COOKIE), device, max_age=DEVICE_LIFETIME,
                            **cookie)  # fmt: skip
        csrf = srv.signer.browser_id()  # a new browser id at sign-in: see "Browser state"
    if csrf != cookie_value(srv, request, CSRF_COOKIE):
        response.set_cookie(cookie_name(srv, CSRF_COOKIE), csrf, **cookie)
    for name, value in result.cookies if isinstance(result, Page) else ():
        response.set_cookie(cookie_name(srv, name), value, **cookie)
    return response


def api_response(
    srv: Server, request: Request, handler: ApiHandler, cors: bool = False
) -> bottle.HTTPResponse:
    """A back-channel endpoint: form in, JSON out, errors as RFC 6749 §5.2 JSON; with
    ``cors``, readable by the browser apps of the client the request names."""
    authorization = request.environ.get("HTTP_AUTHORIZATION")
    params: dict[str, str] = {}
    try:
        params = single_params(form_pairs(request))
        body = handler(srv, params, authorization, request.environ.get("REMOTE_ADDR", ""))
        response = json_response(body if body is not None else {})
        if srv.dpop_nonces and "HTTP_DPOP" in request.environ:
            # RFC 9449 §8.2: a fresh nonce with each answer, so the client never waits.
            response.set_header("DPoP-Nonce", new_dpop_nonce(srv))
    except OAuthError as err:
        response = error_response(srv, err, "json")
    if cors:
        client_id = claimed_client_id(params, authorization)
        for name, value in cors_headers(srv, request, client_id).items():
            response.set_header(name, value)
    return response


def created(response: bottle.HTTPResponse) -> bottle.HTTPResponse:
    """A success as 201 Created (RFC 9110 §15.3.2), an error as it was."""
    if response.status_code == 200:
        response.status = 201
    return response


def plain_error(error: bottle.HTTPError) -> str:
    # bottle's own errors (404, 405): short, HTML-escaped.
    return f"<!doctype html><title>{error.status}</title><h1>{esc(error.status)}</h1>"


def _behind_proxies(srv: Server, app: WSGIApp) -> WSGIApp:
    """Put the client's own address and scheme in REMOTE_ADDR and wsgi.url_scheme: from a
    trusted proxy, the ones it forwards (forwarded_client); from anyone else, drop the
    forwarding headers, so that nothing behind this layer (bottle included) believes them.
    """

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if is_trusted_proxy(srv, environ.get("REMOTE_ADDR", "")):
            address, scheme = forwarded_client(srv, environ)
            environ = {**environ, "REMOTE_ADDR": address, "wsgi.url_scheme": scheme}
            environ.pop("HTTP_X_FORWARDED_PROTO", None)  # bottle would prefer it
        elif any(name in environ for name in FORWARDED_HEADERS):
            environ = {k: v for k, v in environ.items() if k not in FORWARDED_HEADERS}
        # The fetches this request causes count against its address (fetch_slot).
        token = requesting_address.set(environ.get("REMOTE_ADDR", "") or "unknown")
        try:
            return app(environ, start_response)
        finally:
            requesting_address.reset(token)

    return wsgi


def _secure_headers(app: WSGIApp, https: bool = False) -> WSGIApp:
    """Add the anti-framing and no-sniff headers to every response (RFC 9700 §4.16), and
    refuse a path that is not UTF-8 (bottle would drop its bad bytes and serve the rest).

    On an https issuer, HSTS too (RFC 6797). CSP has no form-action: browsers apply it to
    the redirect after the consent form, which goes to the client's own origin."""
    secure_headers = SECURITY_HEADERS + (
        (("Strict-Transport-Security", "max-age=31536000"),) if https else ()
    )

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            present = {name.lower() for name, _ in headers}
            extra = [h for h in secure_headers if h[0].lower() not in present]
            return start_response(status, headers + extra, exc_info)

        try:
            environ.get("PATH_INFO", "").encode("latin-1").decode("utf-8")
        except UnicodeError:
            start("400 Bad Request", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"The request path is not UTF-8."]
        return app(environ, start)

    return wsgi


def _access_log(app: WSGIApp) -> WSGIApp:
    """One line per request on the ``codeflow.access`` logger: method, path (never the
    query, which may carry a code), status, duration and client address."""

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not access_log.isEnabledFor(logging.INFO):
            return app(environ, start_response)
        started = time.perf_counter()
        statuses: list[str] = []

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            statuses.append(status)
            return start_response(status, headers, exc_info)

        try:
            return app(environ, start)
        finally:
            line = {
                "method": re.sub(r"[^A-Z]", "?", environ.get("REQUEST_METHOD", "")[:16]),
                # Printable only, so that a path cannot forge a line of its own.
                "path": re.sub(r"[^\x21-\x7e]", "?", environ.get("PATH_INFO", "")[:200]),
                "status": int(statuses[-1].split(" ", 1)[0]) if statuses else 500,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "address": environ.get("REMOTE_ADDR", ""),
            }
            access_log.info("%(method)s %(path)s %(status)s %(duration_ms)sms %(address)s",
                            line, extra=line)  # fmt: skip

    return wsgi


def send(response: bottle.HTTPResponse, start_response: Callable[..., Any]) -> list[bytes]:
    """Answer with ``response`` from a WSGI layer outside bottle (faults, control)."""
    body = response.body if isinstance(response.body, bytes) else str(response.body).encode()
    headers = [(k, v) for k, v in response.headerlist if k.lower() != "content-length"]
    start_response(response.status_line, [*headers, ("Content-Length", str(len(body)))])
    return [body]


# -- The endpoints ----------------------------------------------------------------

BrowserStep = Callable[[Server, Request, Browser], "Redirect | Page"]
ApiHandler = Callable[[Server, dict[str, str], str | None, str], "dict[str, Any] | None"]


def authorization_endpoint(srv: Server, request: Request, browser: Browser) -> Redirect | Page:
    # RFC 6749 §3.1: the endpoint MUST support GET and MAY support POST.
    pairs = form_pairs(request) if request.method == "POST" else query_pairs(request)
    return authorize(srv, pairs, browser)


def login_endpoint(srv: Server, request: Request, browser: Browser) -> Redirect | Page:
    refuse_cross_site(srv, request)
    return login(srv, single_params(form_pairs(request)), browser)


def consent_endpoint(srv: Server, request: Request, browser: Browser) -> Redirect | Page:
    refuse_cross_site(srv, request)
    return consent(srv, single_params(form_pairs(request)), browser)


def device_endpoint(srv: Server, request: Request, browser: Browser) -> Redirect | Page:
    # RFC 8628 §3.3: the page with the user code (GET, its form too); the decision (POST).
    if request.method == "GET":
        params = single_params(query_pairs(request))
        # RFC 8628 §5.1: only a page the user loads checks a code (Fetch Metadata
        # Sec-Fetch-Dest). An image or frame another site points here would spend its
        # visitors' checks, guessing with their browsers or holding the throttle shut.
        destination = request.environ.get("HTTP_SEC_FETCH_DEST")
        if destination not in (None, "document"):
            params.pop("user_code", None)
        return device_page_step(srv, params, browser)
    refuse_cross_site(srv, request)
    return device_decision(srv, single_params(form_pairs(request)), browser)


def logout_endpoint(srv: Server, request: Request, browser: Browser) -> Redirect | Page:
    # RP-Initiated Logout §2: "The OP MUST support the use of the HTTP GET and POST".
    if request.method == "GET":
        return end_session(srv, single_params(query_pairs(request)), browser, confirmed=False)
    form = single_params(form_pairs(request))
    if "csrf_token" in form:  # our confirmation form, not a relying party's request
        refuse_cross_site(srv, request)
    return logout(srv, form, browser)


def account_endpoint(srv: Server, request: Request, browser: Browser) -> Redirect | Page:
    return account(srv, single_params(query_pairs(request)), browser)


def account_login_endpoint(srv: Server, request: Request, browser: Browser) -> Redirect | Page:
    if request.method == "GET":
        reauth = single_params(query_pairs(request)).get("reauth") == "yes"
        return account_login_page(srv, browser, reauth=reauth)
    refuse_cross_site(srv, request)
    return account_login(srv, single_params(form_pairs(request)), browser)


AccountStep = Callable[[Server, dict[str, str], Browser], "Redirect | Page"]
# The account area's forms, by path under ACCOUNT_PATH.
ACCOUNT_FORMS: dict[str, AccountStep] = {
    "/password": change_password,
    "/totp": change_totp,
    "/recovery-codes": new_recovery_codes,
    "/apps": revoke_app,
    "/sessions": end_sessions,
    "/passkeys": change_passkeys,
}


def account_form_endpoint(step: AccountStep) -> BrowserStep:
    """A form of the account area: from our own origin only (RFC 9700 §4.4)."""

    def endpoint(srv: Server, request: Request, browser: Browser) -> Redirect | Page:
        refuse_cross_site(srv, request)
        return step(srv, single_params(form_pairs(request)), browser)

    return endpoint


# Public documents: any page may read them (Fetch §3.2.3 "*"; no credentials).
ANY_ORIGIN = {"Access-Control-Allow-Origin": "*"}


def registration_endpoint(srv: Server, request: Request) -> bottle.HTTPResponse:
    """RFC 7591 §3: POST registers a client (201); RFC 7592 §2: GET, PUT and DELETE on a
    registration_client_uri read, replace and delete it, with its registration access
    token. Errors are RFC 7591 §3.2.2 JSON; a bad token is RFC 6750 §3's 401."""
    authorization = request.environ.get("HTTP_AUTHORIZATION")
    address = request.environ.get("REMOTE_ADDR", "")
    client_id = request.url_args.get("client_id")
    try:
        body = b""
        if request.method in ("POST", "PUT"):
            ctype = request.environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                raise InvalidRequest("Content-Type must be application/json (RFC 7591 3.1).")
            body = read_body(request)
        if client_id is None:
            registered = register_client(srv, body, authorization, address)
            response = json_response(registered, 201)
        elif request.method == "GET":
            response = json_response(read_registration(srv, client_id, authorization))
        elif request.method == "PUT":
            changed = update_registration(srv, client_id, body, authorization, address)
            response = json_response(changed)
        else:
            delete_registration(srv, client_id, authorization, address)
            response = bottle.HTTPResponse(status=204, **{"Cache-Control": "no-store"})
    except OAuthError as err:
        response = error_response(srv, err, "bearer" if isinstance(err, InvalidToken) else "json")
    for name, value in ANY_ORIGIN.items():
        response.set_header(name, value)
    return response


def metadata_endpoint(srv: Server, request: Request) -> bottle.HTTPResponse:
    internal = endpoint_url(srv, request, "") != srv.issuer
    return bottle.HTTPResponse(
        json.dumps(oauth_metadata(srv, internal)), 200,
        {"Content-Type": "application/json", **ANY_ORIGIN},
    )  # fmt: skip


def jwks_endpoint(srv: Server, request: Request) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(
        json.dumps(jwks(srv)), 200, {"Content-Type": "application/jwk-set+json", **ANY_ORIGIN}
    )


def health_endpoint(srv: Server, request: Request) -> bottle.HTTPResponse:
    """For load balancers and monitoring: 200 when storage answers a read, else 503 with
    Retry-After (RFC 9110 §15.6.4)."""
    try:
        srv.storage.get_client("")
    except StorageUnavailable as err:  # down for now: one line, no traceback
        log.warning("codeflow: health check: storage unavailable: %s", err.description)
        retry_after = err.retry_after
    except Exception:  # whatever else the backend raises, the answer is "not healthy"
        log.exception("codeflow: health check: storage does not answer")
        retry_after = STORAGE_RETRY_AFTER
    else:
        return json_response({"status": "ok"})
    return json_response({"status": "unavailable"}, 503, {"Retry-After": str(retry_after)})


def userinfo_endpoint(srv: Server, request: Request) -> bottle.HTTPResponse:
    # OIDC Core §5.3.1: "The UserInfo Endpoint MUST support the use of the HTTP GET
    # and HTTP POST methods".
    authorization = request.environ.get("HTTP_AUTHORIZATION")
    form = None
    dpop = dpop_request(srv, request, USERINFO_PATH)
    try:
        has_body = request.environ.get("CONTENT_LENGTH") not in (None, "", "0")
        form = single_params(form_pairs(request)) if has_body else None
        response = json_response(userinfo(srv, authorization, form, dpop))
        if srv.dpop_nonces and dpop.proof is not None:
            response.set_header("DPoP-Nonce", new_dpop_nonce(srv))  # RFC 9449 §8.2
    except OAuthError as err:
        scheme = (authorization or "").partition(" ")[0].lower()
        response = error_response(srv, err, "dpop" if scheme == "dpop" else "bearer")
    # The answer is about the access token's client; only a browser's request (with
    # Origin) costs the second look-up.
    client_id = None
    if request.environ.get("HTTP_ORIGIN"):
        with contextlib.suppress(OAuthError):
            token = srv.storage.get_token(token_hash(presented_token(authorization, form)[0]))
            client_id = token.client_id if token is not None else None
    for name, value in cors_headers(srv, request, client_id).items():
        response.set_header(name, value)
    return response


def home_endpoint(srv: Server, request: Request, browser: Browser) -> Page:
    return home_page(srv)


def demo_endpoint(srv: Server, request: Request, browser: Browser) -> Redirect | Page:
    if not srv.demo:
        raise bottle.HTTPError(404, "Not found")
    if request.urlparts.netloc != urllib.parse.urlsplit(srv.issuer).netloc:
        # Opened as localhost instead of the issuer's 127.0.0.1, say: cookies would
        # not follow the flow, so start over on the issuer's own host.
        return Redirect(srv.issuer + DEMO_PATH)
    demo_id = cookie_value(srv, request, DEMO_COOKIE) or ""
    return demo_page(srv, demo_id if 16 <= len(demo_id) <= 64 else secrets.token_urlsafe(16))


def demo_callback_endpoint(srv: Server, request: Request, browser: Browser) -> Page:
    if not srv.demo:
        raise bottle.HTTPError(404, "Not found")
    demo_id = cookie_value(srv, request, DEMO_COOKIE) or ""
    return demo_finish(srv, single_params(query_pairs(request)), demo_id)


###############################################################################
# A fake IdP for test suites: scripted claims, fault plan, transcript #########
###############################################################################

# Test conveniences are explicit opt-ins that announce themselves (DESIGN "Defaults"):
# the fault plan acts only when a test fills it, the transcript records only when
# asked, and the HTTP control surface exists only in test mode. They live in this module,
# not in codeflow_sdk, so that `codeflow serve --test-mode` and this file copied alone
# have them, and the SDK keeps speaking only the wire protocol. The protocol asks them
# through two narrow doors: ScriptedClaims.take (id_token) and Transcript.note_relaxation.
CONTROL_PREFIX = "/_codeflow/"
REDACTED = "[redacted]"
# Parameters and JSON members whose values are secrets, never written to a transcript.
SECRET_NAMES = frozenset({
    "password", "client_secret", "code", "code_verifier", "access_token", "refresh_token",
    "id_token", "token", "otp", "id_token_hint", "csrf_token", "pending",
    "device_code", "user_code", "verification_uri_complete",  # RFC 8628 §3.2
    "registration_access_token",  # RFC 7592 §3
    "subject_token", "actor_token",  # RFC 8693 §2.1
    "client_assertion",  # RFC 7523 §2.2
    "current_password", "new_password", "recovery_code", "enrol", "credential",  # /account
})  # fmt: skip
SECRET_HEADERS = frozenset({"authorization", "cookie", "set-cookie"})
FAULT_ENDPOINTS = {
    "authorize": (AUTHORIZE_PATH,),
    "login": (LOGIN_PATH,),
    "consent": (CONSENT_PATH,),
    "token": (TOKEN_PATH,),
    "introspect": (INTROSPECT_PATH,),
    "revoke": (REVOKE_PATH,),
    "userinfo": (USERINFO_PATH,),
    "jwks": (JWKS_PATH,),
    "logout": (LOGOUT_PATH,),
    "discovery": (OAUTH_METADATA_PATH, OIDC_METADATA_PATH),
}
# The ID token of the token response, wrong in one way each (OIDC Core §3.1.3.7 lists
# the checks a client must make; each of these fails exactly one of them).
TOKEN_FAULTS = ("bad_signature", "wrong_iss", "wrong_aud", "expired", "unknown_kid")
FAULT_KINDS = ("oauth_error", "http_500", "delay", "malformed_json", *TOKEN_FAULTS)
MAX_FAULT_DELAY = 300  # seconds: longer than any client timeout worth testing
MAX_PENDING_FAULTS = 100  # a plan longer than any test needs cannot grow without bound
# The demo's pages show, as text, secrets of the flow they play: its PKCE verifier (/demo),
# and the code, token request and tokens (/demo/callback); the account pages that set up
# the second factor show a new TOTP key and recovery codes. They are recorded without
# their body, so that nothing they show, now or after an edit, reaches a transcript.
UNRECORDED_BODIES = (DEMO_PATH, DEMO_CALLBACK_PATH, ACCOUNT_PATH + "/totp",
                     ACCOUNT_PATH + "/recovery-codes")  # fmt: skip


class ScriptedClaims:
    """Claims a test put into the next ID tokens (Server.next_claims), used once each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[tuple[str | None, dict[str, Any]]] = []

    def add(self, claims: dict[str, Any], username: str | None = None) -> None:
        with self._lock:
            self._queue.append((username, dict(claims)))

    def take(self, username: str) -> dict[str, Any]:
        """The first claims queued for ``username`` or for anyone, removed; else none."""
        if not self._queue:
            return {}
        with self._lock:
            for i, (who, claims) in enumerate(self._queue):
                if who is None or who == username:
                    del self._queue[i]
                    return claims
        return {}


@dataclass
class Fault:
    """One entry of a fault plan: the next ``times`` calls of ``endpoint`` go wrong."""

    endpoint: str
    kind: str
    times: int = 1
    error: str = "server_error"  # for oauth_error: the RFC 6749 §5.2 / §4.1.2.1 code
    status: int = 400  # for oauth_error
    description: str = "Injected by the codeflow fault plan."
    delay: float = 1.0  # seconds, for delay

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class FaultPlan:
    """What goes wrong next: ``srv.faults.add(endpoint="token", kind="http_500")``.

    Kinds: ``oauth_error`` (an OAuth error response with ``error`` and ``status``;
    at the authorization endpoint a redirect to the client, RFC 6749 §4.1.2.1),
    ``http_500``, ``delay`` (``delay`` seconds, then the real answer),
    ``malformed_json``, and for the token endpoint an ID token wrong in one way:
    ``bad_signature``, ``wrong_iss``, ``wrong_aud``, ``expired``, ``unknown_kid``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(
        self,
        endpoint: str,
        kind: str = "oauth_error",
        times: int = 1,
        *,
        error: str = "server_error",
        status: int | None = None,
        description: str = "Injected by the codeflow fault plan.",
        delay: float = 1.0,
    ) -> Fault:
        # Every field is checked here, types included (JSON over HTTP may send any): a
        # fault that could not be answered as planned would be a 500 when it fires.
        if not isinstance(endpoint, str) or endpoint not in FAULT_ENDPOINTS:
            raise ValueError(f"endpoint must be one of {sorted(FAULT_ENDPOINTS)}")
        if not isinstance(kind, str) or kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {FAULT_KINDS}")
        if kind in TOKEN_FAULTS and endpoint != "token":
            raise ValueError(f"{kind} alters the ID token of the token endpoint only")
        if not _is_int(times) or times < 1:
            raise ValueError("times must be a positive integer")
        if isinstance(delay, bool) or not isinstance(delay, int | float):
            raise ValueError(f"delay must be a number of seconds, 0 to {MAX_FAULT_DELAY}")
        if not 0 <= delay <= MAX_FAULT_DELAY:
            raise ValueError(f"delay must be 0 to {MAX_FAULT_DELAY} seconds")
        if not isinstance(error, str) or not ERROR_CODE_RE.fullmatch(error):
            raise ValueError("error must be an RFC 6749 error code, such as invalid_grant")
        if status is None:
            status = 401 if error in ("invalid_client", "invalid_token") else 400
        if not _is_int(status) or not 400 <= status <= 599:
            raise ValueError("status must be an integer HTTP status, 400 to 599")
        if not isinstance(description, str):
            raise ValueError("description must be a string")
        fault = Fault(endpoint, kind, times, error, status, description, float(delay))
        with self._lock:
            if len(self._faults) >= MAX_PENDING_FAULTS:
                raise ValueError(
                    f"the fault plan holds at most {MAX_PENDING_FAULTS} pending faults: let "
                    "them fire, or clear the plan (faults.clear(), DELETE /_codeflow/faults)"
                )
            self._faults.append(fault)
        return fault

    def take(self, endpoint: str) -> Fault | None:
        """The fault for this call of ``endpoint``, counted down, or None."""
        with self._lock:
            for fault in self._faults:
                if fault.endpoint == endpoint:
                    fault.times -= 1
                    if fault.times == 0:
                        self._faults.remove(fault)
                    return replace(fault, times=1)
        return None

    @property
    def pending(self) -> list[Fault]:
        with self._lock:
            return [replace(f) for f in self._faults]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def __bool__(self) -> bool:
        return bool(self._faults)


# RFC 6749 §5.2: error = 1*( %x20-21 / %x23-5B / %x5D-7E ); we keep to the usual codes.
ERROR_CODE_RE = re.compile(r"[a-z_]{1,64}")


def _is_int(value: Any) -> bool:
    """An integer, and not a bool (which Python counts as one, and JSON does not)."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class Exchange:
    """One request and its response, as a transcript keeps it (secrets redacted)."""

    method: str
    path: str
    params: dict[str, str]
    request_headers: dict[str, str]
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    relaxations: list[str] = field(default_factory=list)
    fault: str | None = None
    conveniences: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Transcript:
    """Every request the server handled and its response, secrets redacted.

    Recorded only when the server was made with ``transcript=True`` or
    ``test_mode=True``; a list of Exchange for assertions, ``dump(path)`` for a file.
    It keeps the last ``limit`` exchanges (a ring buffer: a server left running in test
    mode must not grow for ever); ``dropped`` counts the older ones it let go.
    """

    def __init__(self, enabled: bool = False, limit: int = TRANSCRIPT_LIMIT) -> None:
        if not _is_int(limit) or limit < 1:
            raise ValueError("transcript_limit must be a positive integer")
        self.enabled = enabled
        self.limit = limit
        self.dropped = 0
        self._lock = threading.Lock()
        self._exchanges: collections.deque[Exchange] = collections.deque(maxlen=limit)
        self._local = threading.local()  # the Exchange being recorded on this thread

    @property
    def current(self) -> Exchange | None:
        """The exchange of the request this thread is answering, while it is recorded."""
        return getattr(self._local, "exchange", None)

    @current.setter
    def current(self, exchange: Exchange | None) -> None:
        self._local.exchange = exchange

    def note_relaxation(self, client_id: str, what: str) -> None:
        """Name a relaxation of the strict defaults that a client's registration allowed
        and the current request just used (logged even when nothing is recorded)."""
        if self.current is not None:
            self.current.relaxations.append(f"client {client_id!r}: {what}")
        log.info("codeflow: client %r used a relaxation: %s", client_id, what)

    def note_convenience(self, what: str) -> None:
        """Name a test convenience of the server (fast password hashing) that the current
        request used: the transcript says what a production server would do otherwise."""
        if self.current is not None:
            self.current.conveniences.append(what)

    def record(self, exchange: Exchange) -> None:
        with self._lock:
            if len(self._exchanges) == self.limit:
                self.dropped += 1
            self._exchanges.append(exchange)

    def _list(self) -> list[Exchange]:
        with self._lock:
            return list(self._exchanges)

    def __iter__(self) -> Iterator[Exchange]:
        return iter(self._list())

    def __len__(self) -> int:
        return len(self._exchanges)

    def __getitem__(self, index: int) -> Exchange:
        return self._list()[index]

    def find(self, path: str | None = None, method: str | None = None) -> list[Exchange]:
        """The exchanges of a path (and method), oldest first."""
        return [
            e for e in self
            if (path is None or e.path == path) and (method is None or e.method == method)
        ]  # fmt: skip

    @property
    def relaxations(self) -> list[str]:
        """Every relaxation of the strict defaults that a request used, in order."""
        return [r for e in self for r in e.relaxations]

    @property
    def conveniences(self) -> list[str]:
        """Every test convenience of the server that a request used, in order."""
        return [c for e in self for c in e.conveniences]

    def clear(self) -> None:
        with self._lock:
            self._exchanges.clear()
            self.dropped = 0

    def to_json(self) -> list[dict[str, Any]]:
        return [e.to_json() for e in self]

    def dump(self, path: str) -> None:
        """Write the transcript as a JSON array of exchanges."""
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, indent=1)


def _redact_pairs(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    return {k: REDACTED if k in SECRET_NAMES else v for k, v in pairs}


def _redact_location(location: str) -> str:
    parts = urllib.parse.urlsplit(location)
    if not parts.query:
        return location
    pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = urllib.parse.urlencode(_redact_pairs(pairs))
    return urllib.parse.urlunsplit(parts._replace(query=query))


# A page's hidden fields that hold secrets: a form's CSRF token, a form_post page's code.
_HIDDEN_SECRET_RE = re.compile(rf'(name="(?:{"|".join(sorted(SECRET_NAMES))})" value=")[^"]*')


def _redacted_body(body: bytes, content_type: str) -> Any:
    text = body.decode("utf-8", "replace")
    if content_type.startswith("application/json") or content_type.endswith("+json"):
        try:
            value = json.loads(text)
        except ValueError:
            return text
        if isinstance(value, dict):
            return {k: REDACTED if k in SECRET_NAMES else v for k, v in value.items()}
        return value
    return _HIDDEN_SECRET_RE.sub(r"\1" + REDACTED, text)


def _start_exchange(environ: dict[str, Any]) -> Exchange:
    """Read what the request carries, leaving its body readable for the app."""
    query = environ.get("QUERY_STRING", "")
    pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, errors="replace")
    raw = environ.get("CONTENT_LENGTH") or "0"
    ctype = environ.get("CONTENT_TYPE", "")
    if raw.isascii() and raw.isdigit() and 0 < int(raw) <= MAX_BODY:
        body = environ["wsgi.input"].read(int(raw))
        environ["wsgi.input"] = io.BytesIO(body)
        if ctype.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
            text = body.decode("latin-1")
            pairs += urllib.parse.parse_qsl(text, keep_blank_values=True, errors="replace")
    headers = {
        name[5:].replace("_", "-").title(): value
        for name, value in environ.items()
        if name.startswith("HTTP_")
    }
    if ctype:
        headers["Content-Type"] = ctype
    headers = {k: REDACTED if k.lower() in SECRET_HEADERS else v for k, v in headers.items()}
    return Exchange(
        environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""),
        _redact_pairs(pairs), headers,
    )  # fmt: skip


def _recording(srv: Server, app: WSGIApp) -> WSGIApp:
    """Record every exchange in ``srv.transcript``; the answer itself is untouched."""

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith(CONTROL_PREFIX):
            return app(environ, start_response)
        exchange = _start_exchange(environ)
        answered: list[Any] = []

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answered[:] = [status, headers]
            return start_response(status, headers, exc_info)

        srv.transcript.current = exchange
        try:
            result = app(environ, start)
            try:
                body = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        finally:
            srv.transcript.current = None
        status, headers = answered or ["0", []]
        exchange.status = int(status.split(" ", 1)[0])
        exchange.headers = {
            name: REDACTED if name.lower() in SECRET_HEADERS
            else _redact_location(value) if name.lower() == "location" else value
            for name, value in headers
        }  # fmt: skip
        ctype = next((v for n, v in headers if n.lower() == "content-type"), "")
        exchange.body = (
            REDACTED
            if exchange.path in UNRECORDED_BODIES
            else _redacted_body(body, ctype.lower())
        )
        srv.transcript.record(exchange)
        return [body]

    return wsgi


def _with_faults(srv: Server, app: WSGIApp) -> WSGIApp:
    """Answer the next calls of an endpoint as ``srv.faults`` plans; in test mode, also
    serve the HTTP control surface under /_codeflow/."""
    endpoints = {path: name for name, paths in FAULT_ENDPOINTS.items() for path in paths}

    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if srv.test_mode and path.startswith(CONTROL_PREFIX):
            return _control(srv, environ, start_response)
        if not srv.faults or path not in endpoints:
            return app(environ, start_response)
        fault = srv.faults.take(endpoints[path])
        if fault is None:
            return app(environ, start_response)
        if srv.transcript.current is not None:
            srv.transcript.current.fault = fault.kind
        log.info("codeflow: injecting fault %s at %s", fault.kind, path)
        return _inject(srv, fault, app, environ, start_response)

    return wsgi


def _inject(
    srv: Server,
    fault: Fault,
    app: WSGIApp,
    environ: dict[str, Any],
    start_response: Callable[..., Any],
) -> Iterable[bytes]:
    if fault.kind == "delay":
        time.sleep(fault.delay)  # real time: the client's own timeouts are under test
        return app(environ, start_response)
    if fault.kind == "http_500":
        body, status, ctype = b"Internal Server Error (injected)", 500, "text/plain"
        return send(bottle.HTTPResponse(body, status, {"Content-Type": ctype}), start_response)
    if fault.kind == "malformed_json":
        body, ctype = b'{"access_token": "2YotnF', "application/json"
        return send(bottle.HTTPResponse(body, 200, {"Content-Type": ctype}), start_response)
    if fault.kind != "oauth_error":
        return _wrong_id_token(srv, fault, app, environ, start_response)
    err = OAuthError(fault.description, error=fault.error, status=fault.status)
    if fault.endpoint in ("login", "consent", "logout"):  # pages, as the browser expects
        return send(error_response(srv, err, "page"), start_response)
    if fault.endpoint == "userinfo":
        return send(error_response(srv, err, "bearer"), start_response)
    if fault.endpoint != "authorize":
        return send(error_response(srv, err, "json"), start_response)
    # RFC 6749 §4.1.2.1: the error goes back to a trusted redirect_uri, else a page.
    try:
        pairs = parse_pairs(environ.get("QUERY_STRING", "").encode("latin-1"))
        _, redirect_uri, _ = trusted_redirect(srv, pairs)
        state = _only(pairs, "state")
    except OAuthError:
        return send(error_response(srv, err, "page"), start_response)
    back = (redirect_uri, state, response_mode_of(pairs))
    return send(error_response(srv, err, "redirect", back), start_response)


def _wrong_id_token(
    srv: Server,
    fault: Fault,
    app: WSGIApp,
    environ: dict[str, Any],
    start_response: Callable[..., Any],
) -> Iterable[bytes]:
    """Let the token endpoint answer, then alter its ID token in the one chosen way."""
    answered: list[Any] = []

    def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        answered[:] = [status, headers]
        return lambda data: None

    result = app(environ, start)
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):
            result.close()
    status, headers = answered
    try:
        tokens = json.loads(body)
    except ValueError:
        tokens = None
    if isinstance(tokens, dict) and "id_token" in tokens:
        tokens["id_token"] = alter_id_token(srv, tokens["id_token"], fault.kind)
        body = json.dumps(tokens).encode()
    headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
    start_response(status, [*headers, ("Content-Length", str(len(body)))])
    return [body]


def alter_id_token(srv: Server, token: str, kind: str) -> str:
    """An ID token issued here, made wrong in one way (one of TOKEN_FAULTS)."""
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    alg, kid = header["alg"], header["kid"]
    now = int(srv.clock())
    if kind == "bad_signature":
        head, payload, signature = token.split(".")
        raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
        raw[len(raw) // 2] ^= 0x01
        return f"{head}.{payload}.{b64url(bytes(raw))}"
    if kind == "wrong_iss":
        claims["iss"] = srv.issuer + "/not-the-issuer"
    elif kind == "wrong_aud":
        claims["aud"] = "not-" + str(claims["aud"])
    elif kind == "expired":
        # Well past the usual minutes of clock-skew leeway.
        claims["exp"] = now - 3600
        claims["iat"] = claims["auth_time"] = now - 3600 - srv.id_token_lifetime
    elif kind == "unknown_kid":
        kid = "unknown-" + secrets.token_urlsafe(8)
    key = next(k for k in srv.storage.signing_keys() if k.kid == header["kid"])
    return jwt.encode(
        claims, private_key(key), algorithm=alg, headers={"kid": kid, "typ": "JWT"}
    )


def _control(
    srv: Server, environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    """The test-mode control surface: POST/GET/DELETE /_codeflow/faults (a JSON fault:
    ``{"endpoint": "token", "kind": "http_500", "times": 1}``), GET /_codeflow/transcript."""
    path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
    try:
        _check_control_request(srv, environ, method)
        status, value = _control_answer(srv, path, method, environ)
    except OAuthError as err:
        return send(error_response(srv, err, "json"), start_response)
    return send(json_response(value, status), start_response)


def _check_control_request(srv: Server, environ: dict[str, Any], method: str) -> None:
    """Refuse what a web page can send, so that a page open in the developer's browser
    cannot plan faults (a 300 s delay on every token call), clear them, or read the
    transcript: it is a request from a script, or from the server's own origin.

    A page may POST text/plain or a form to any origin with no CORS preflight (Fetch
    "CORS-safelisted request-header"); a JSON body needs one, and nothing here answers
    it. Browsers also name the page: Origin (RFC 6454 §7.2, sent with every cross-origin
    request but a simple GET) and Sec-Fetch-Site (Fetch Metadata); another port of the
    same host is "same-site" yet another origin, so only "same-origin" and "none" (typed
    by the user) pass.
    """
    own = {o for base in (srv.issuer, srv.internal_url) if base and (o := web_origin(base))}
    # DNS rebinding: a page of the attacker's own name, resolved to 127.0.0.1, is
    # "same-origin" with itself; the Host it sends names it. Our names, and loopback by
    # name or number, are all that may ask.
    names = {urllib.parse.urlsplit(base).hostname for base in own}
    names |= {"localhost", "127.0.0.1", "::1"}
    try:
        asked = urllib.parse.urlsplit("//" + environ.get("HTTP_HOST", "")).hostname
    except ValueError:
        asked = None
    if asked not in names:
        raise InvalidRequest("Control requests must name this server as Host.", status=403)
    origin = environ.get("HTTP_ORIGIN")
    if origin is not None and origin.strip().lower() not in own:
        raise InvalidRequest(f"Control requests from {origin[:80]!r} are refused.", status=403)
    if environ.get("HTTP_SEC_FETCH_SITE", "none") not in ("same-origin", "none"):
        raise InvalidRequest("Control requests from another site are refused.", status=403)
    ctype = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if method == "POST" and ctype != "application/json":
        raise InvalidRequest("A fault is sent as Content-Type: application/json.", status=415)


def _control_answer(
    srv: Server, path: str, method: str, environ: dict[str, Any]
) -> tuple[int, Any]:
    if path == CONTROL_PREFIX + "transcript" and method == "GET":
        return 200, srv.transcript.to_json()
    if path != CONTROL_PREFIX + "faults":
        raise InvalidRequest("Not found.", status=404)
    if method == "GET":
        return 200, [f.to_json() for f in srv.faults.pending]
    if method == "DELETE":
        srv.faults.clear()
        return 200, []
    if method != "POST":
        raise InvalidRequest("GET, POST, DELETE", status=405)
    raw = environ.get("CONTENT_LENGTH") or "0"
    length = int(raw) if raw.isascii() and raw.isdigit() else 0
    try:
        spec = json.loads(environ["wsgi.input"].read(min(length, MAX_BODY)) or b"{}")
        if not isinstance(spec, dict):
            raise TypeError("a fault is a JSON object")
        fault = srv.faults.add(**spec)
    except (ValueError, TypeError) as err:
        raise InvalidRequest(str(err)) from None
    return 201, fault.to_json()


###############################################################################
# Running it: servers ##########################################################
###############################################################################


# Limits for serving: this protocol's requests are small and sent in one go, so a client
# that holds a connection without sending is gone or an attacker (slowloris). Beyond them,
# a server facing the internet belongs behind a reverse proxy (README "Secure defaults").
MAX_HEADER = 32 * 1024  # request line and headers: an authorization URL with room to spare
IDLE_TIMEOUT = 10  # seconds a connection may send nothing (mid-request or between requests)
CLEANUP_INTERVAL = 2  # seconds between waitress's sweeps for idle connections
MAX_CONNECTIONS = 1000  # open connections under waitress, which reads them without a thread
MAX_THREADS = 200  # open connections under the stdlib fallback, a thread each
SERVER_THREADS = 8  # waitress's threads that run requests once they are fully read
FILE_RESERVE = 64  # file descriptors kept for storage, logs and the listening socket
THREAD_IDLE = 30  # seconds a handler thread waits for the next connection before it ends


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """The stdlib fallback, and Server.running()'s server: a thread per open connection,
    at most MAX_THREADS at once.

    A thread done with its connection waits THREAD_IDLE seconds for the next one instead
    of ending: in a test suite, where a client and the server share one process, starting
    a thread for each connection (and waiting for it to be scheduled) cost as much as
    answering the request (issue 17).
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # socketserver's 5 resets connections of a burst of clients

    def __init__(
        self,
        server_address: tuple[str, int],
        handler: Callable[..., socketserver.BaseRequestHandler],
        bind_and_activate: bool = True,
    ) -> None:
        super().__init__(server_address, handler, bind_and_activate)
        self._slots = threading.BoundedSemaphore(MAX_THREADS)
        self._wakeup = socket.socketpair()  # stop() writes, serve_until_stopped() wakes
        self._connections: queue.SimpleQueue[tuple[Any, Any] | None] = queue.SimpleQueue()
        self._handlers = threading.Lock()  # guards the two counts below
        self._idle = 0  # threads waiting for a connection that none has been promised
        self._alive = 0  # handler threads, busy or idle

    def serve_until_stopped(self) -> None:
        """Serve until stop() is called. serve_forever polls for its shutdown flag (every
        0.05 s as Server.running() used it), so every stop waited up to a poll; here the
        loop sleeps in one select() on the listening socket and the wakeup socket, and a
        stop ends it at once."""
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wakeup[0], selectors.EVENT_READ)
            while all(key.fileobj is self for key, _ in selector.select()):
                self.handle_request()  # a connection is waiting: accepted without a wait

    def stop(self) -> None:
        """End serve_until_stopped(), from any thread."""
        self._wakeup[1].send(b"\0")

    def server_close(self) -> None:
        super().server_close()
        for end in self._wakeup:
            end.close()
        with self._handlers:
            handlers = self._alive
        for _ in range(handlers):  # each ends after the connection it may be handling
            self._connections.put(None)

    def process_request(self, request: Any, client_address: Any) -> None:
        # At the limit a new connection waits for a slot, as under waitress's
        # connection_limit; IDLE_TIMEOUT frees the slots of clients that send nothing.
        if not self._slots.acquire(timeout=IDLE_TIMEOUT + 1):
            self.shutdown_request(request)
            return
        with self._handlers:
            start = self._idle == 0
            if start:
                self._alive += 1
            else:
                self._idle -= 1  # promised to one of the idle threads
        if start:
            try:
                threading.Thread(target=self._handle_connections, daemon=True).start()
            except BaseException:
                with self._handlers:
                    self._alive -= 1
                self._slots.release()
                raise
        self._connections.put((request, client_address))

    def _handle_connections(self) -> None:
        """A handler thread: one connection after another, until idle THREAD_IDLE s."""
        while True:
            try:
                job = self._connections.get(timeout=THREAD_IDLE)
            except queue.Empty:
                with self._handlers:
                    if self._idle == 0:
                        continue  # a connection was promised to an idle thread: stay
                    self._idle -= 1
                    self._alive -= 1
                return
            if job is None:  # server_close()
                return
            self.process_request_thread(*job)
            with self._handlers:
                self._idle += 1

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class QuietHandler(WSGIRequestHandler):
    timeout = IDLE_TIMEOUT  # a client that stops sending mid-request frees its thread

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        line: bytes = getattr(self, "raw_requestline", b"")  # set by handle(), untyped
        size = len(line) + sum(len(k) + len(v) + 4 for k, v in self.headers.items())
        if size > MAX_HEADER:
            # RFC 6585 §5: 431 Request Header Fields Too Large, as waitress answers.
            self.send_error(431, f"The request line and headers exceed {MAX_HEADER} bytes.")
            return False
        return True

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def connection_limit(held: int = 0) -> int:
    """MAX_CONNECTIONS, or fewer where the process may not open that many files (raising
    its soft limit first): waitress stops accepting at its limit, but at the file limit
    it would fail every accept instead, in a busy loop. ``held``: file descriptors the
    process keeps open beyond FILE_RESERVE's (a worker's WorkerTurns sockets)."""
    try:
        import resource
    except ImportError:  # not on Unix
        return MAX_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    reserve = FILE_RESERVE + held
    wanted = MAX_CONNECTIONS + reserve
    if soft != resource.RLIM_INFINITY and soft < wanted:
        raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, soft - reserve))


def serve(
    app: Callable[..., Iterable[bytes]],
    host: str,
    port: int,
    sock: socket.socket | None = None,
    join: Callable[[BaseWSGIServer, dict[int, Any]], None] | None = None,
    held: int = 0,
) -> None:
    """Serve until Ctrl-C: with waitress when installed, else a threaded stdlib server;
    either way within the limits above. ``sock``: a socket already listening (a worker's,
    see serve_workers) instead of ``host`` and ``port``; ``join``: called with waitress's
    server and its socket map before it runs (a worker's WorkerTurns.join); ``held``: the
    file descriptors that come with it (WorkerTurns.files), kept out of the connection
    limit. The stdlib server has no such hook: its workers accept as they race to."""
    try:
        from waitress.server import create_server
    except ImportError:
        if sock is None:
            httpd = make_server(host, port, app, ThreadingWSGIServer, QuietHandler)
        else:
            httpd = ThreadingWSGIServer((host, port), QuietHandler, bind_and_activate=False)
            httpd.socket.close()
            httpd.socket = sock
            httpd.server_name, httpd.server_port = host, sock.getsockname()[1]
            httpd.setup_environ()
            httpd.set_app(app)
        try:
            httpd.serve_forever()
        finally:
            httpd.server_close()
    else:
        where: dict[str, Any] = {"sockets": [sock]} if sock else {"host": host, "port": port}
        socket_map: dict[int, Any] = {}
        server = create_server(
            app, socket_map, **where, threads=SERVER_THREADS, ident="codeflow",
            # waitress allows a 1 GiB body, read (and spooled to disk) before the app sees
            # it; at MAX_BODY it answers 413 as soon as Content-Length says more.
            max_request_body_size=MAX_BODY,
            max_request_header_size=MAX_HEADER,
            # Its defaults (100 connections, closed after 120 s idle) let 100 half-sent
            # requests keep every other client out for minutes.
            connection_limit=connection_limit(held),
            channel_timeout=IDLE_TIMEOUT,
            cleanup_interval=CLEANUP_INTERVAL,
            asyncore_use_poll=True,  # select() cannot watch file descriptors past 1023
            # Forwarding headers are believed from trusted proxies only, by _behind_proxies;
            # waitress must pass them on for it to read (its own clearing knows no CIDRs).
            clear_untrusted_proxy_headers=False,
        )  # fmt: skip
        if join is not None:  # one socket, so one BaseWSGIServer (no MultiSocketServer)
            join(cast("BaseWSGIServer", server), socket_map)
        server.run()


def _stop_with_parent(parent: int) -> None:
    """A worker must not outlive its parent (killed with SIGKILL, say, which it cannot
    catch to stop its workers): on Linux, ask the kernel for SIGTERM when the parent
    dies (prctl PR_SET_PDEATHSIG); elsewhere the socket's owner is gone with the parent's
    supervisor anyway."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request was made
        raise KeyboardInterrupt


class WorkerTurns:
    """Which pre-forked worker accepts the next connection: one holding the fewest.

    Workers that race to accept on one listening socket split a few long-lived keep-alive
    connections (RFC 9112 §9.3; a benchmark's load threads, a reverse proxy's upstream
    pool) by luck, 74/26 or 88/12, and each stays with its worker for its life. So each
    worker publishes how many connections it holds (waitress's ``active_channels``) in a
    table that all share, and listens (its server's ``readable()`` for the listening
    socket) only while it holds no more than any live worker: ties listen, so a worker
    holding the fewest always does, and no connection waits on a busy worker while
    another has room. waitress's connection_limit still stops a worker at its limit.

    A worker re-reads the table only at its loop's next turn (any event on its sockets,
    else waitress's one-second loop timeout). So one that stopped listening would miss
    its turn while idle: a worker whose accept leaves it no longer among the fewest wakes
    those that are (a byte on their wakeup socket). The byte is sent after the count is
    written, and read before the table is re-read, so a woken worker sees the new count.
    A count that falls needs no wake: its own worker re-reads at once, and another that
    should stop listening may take one connection more before it notices. A worker also
    notes when its loop last turned (at least once a second); a count older than STALE
    seconds is ignored, so a worker that hangs (or is stopped) with the fewest does not
    keep the others from accepting.

    Made in the parent before forking, so every worker and every replacement shares it:
    an anonymous shared mapping (two 64-bit ints a worker, by index) and a socket pair a worker.
    """

    EMPTY = -1  # a slot with no worker in it: not started yet, or dead
    STALE = 3  # seconds: a worker's loop turns at least once a second (waitress's timeout)

    def __init__(self, workers: int) -> None:
        self._memory = mmap.mmap(-1, workers * 16)  # MAP_SHARED: forked workers see writes
        table = memoryview(self._memory).cast("q")
        # By worker index: how many connections it holds, and when its loop last turned
        # (whole seconds of CLOCK_MONOTONIC, one clock for all processes). 64 bits: the
        # clock may be past 2**31 s (a time namespace's offset, a restored checkpoint).
        self.counts, self.turned = table[:workers], table[workers:]
        for index in range(workers):
            self.counts[index] = self.EMPTY
        self._wakeups = [socket.socketpair() for _ in range(workers)]
        self.files = 2 * workers  # every process inherits both ends of every pair
        for _, end in self._wakeups:
            end.setblocking(False)  # a full buffer means a wake is pending already

    def wake(self, index: int) -> None:
        with contextlib.suppress(OSError):
            self._wakeups[index][1].send(b"\0")

    def vacate(self, index: int) -> None:
        """In the parent, when worker ``index`` has died: its last count must not keep
        the others from listening until its replacement runs."""
        self.counts[index] = self.EMPTY
        for other in range(len(self.counts)):
            self.wake(other)

    def fewest(self) -> int:
        """The fewest connections a live worker holds. In a worker there is one, its own,
        if it wrote its count and turn just before asking (readable, handle_accept): a
        count written at the loop's previous turn is stale after a pause longer than
        STALE (every worker frozen together), and min() of nothing would fail the
        accept, on which waitress closes the listening socket for good."""
        now = int(time.monotonic())
        return min(count for count, turned in zip(self.counts, self.turned, strict=True)
                   if count != self.EMPTY and now - turned <= self.STALE)  # fmt: skip

    def join(self, index: int, server: BaseWSGIServer, socket_map: dict[int, Any]) -> None:
        """In worker ``index``, before waitress runs ``server``: take turns at accepting."""
        from waitress import wasyncore

        counts, turned = self.counts, self.turned
        # types-waitress types active_channels as one channel; it is waitress's dict of
        # the open connections, by file descriptor.
        channels = cast("dict[int, Any]", server.active_channels)
        listening, accept = server.readable, server.handle_accept

        def note() -> int:
            """Publish this worker's count and turn (fewest() needs both fresh); the count."""
            held = len(channels)
            counts[index], turned[index] = held, int(time.monotonic())
            return held

        def readable() -> bool:  # at each turn of waitress's loop
            held = note()
            # listening() first: it also sweeps idle connections, and stops at the limit.
            return listening() and held <= self.fewest()

        def handle_accept() -> None:
            before = len(channels)
            accept()
            held = note()
            fewest = self.fewest()
            if before < held and fewest < held:
                for other, count in enumerate(counts):
                    if count == fewest:
                        self.wake(other)

        class Wakeup(wasyncore.dispatcher):
            """Ends the worker's wait for events, so that it re-reads the table."""

            def writable(self) -> bool:
                return False

            def handle_read(self) -> None:
                with contextlib.suppress(OSError):
                    self.recv(4096)

        # Instance attributes rather than a subclass: waitress's create_server builds
        # the server, and wasyncore calls these two through the instance.
        server.readable = readable  # type: ignore[method-assign]
        server.handle_accept = handle_accept  # type: ignore[method-assign]
        Wakeup(self._wakeups[index][0], socket_map)
        note()  # none held yet: a replacement starts afresh
        for other in range(len(counts)):
            if other != index:
                self.wake(other)  # those listening with more stop: this one holds none


def serve_workers(srv: Server, host: str, port: int, workers: int) -> None:
    """Serve with ``workers`` pre-forked processes on one listening socket, so that every
    core answers requests (one process's GIL would leave the others idle). Each worker
    runs serve() and takes connections in turn with the others (WorkerTurns); the parent
    purges expired records, restarts a worker that dies, and on SIGINT or SIGTERM stops
    them all. Workers share only storage: it must be one all
    processes open (SQLite, PostgreSQL), which main checks."""
    sock = socket.create_server((host, port), backlog=128)
    turns = WorkerTurns(workers)
    pids: dict[int, int] = {}  # each worker's index in turns

    def start_worker(index: int) -> None:
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker: serve until told to stop, then leave at once
            code = 0
            try:
                _stop_with_parent(parent)
                serve(srv.wsgi, host, port, sock, functools.partial(turns.join, index),
                      turns.files)  # fmt: skip
            except KeyboardInterrupt:
                pass
            except BaseException:
                log.exception("codeflow: worker %d failed", os.getpid())
                code = 1
            logging.shutdown()  # os._exit runs no exit handlers: write what is queued
            os._exit(code)
        pids[pid] = index

    try:
        for index in range(workers):
            start_worker(index)
        purge_forever(srv)  # after forking: a fork copies no thread
        while pids:
            pid, status = os.wait()
            index = pids.pop(pid)
            turns.vacate(index)
            log.error("codeflow: worker %d exited (%d); starting another", pid, status)
            time.sleep(1)  # a worker that cannot start must not spin the machine
            start_worker(index)
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        sock.close()


###############################################################################
# Configuration and CLI #######################################################
###############################################################################


def open_storage(url: str) -> Storage:
    """The storage a URL names: ``memory``, or ``SCHEME://...``, opened by the backend
    module ``codeflow_storage.SCHEME`` (or one registered under the entry-point group
    ``codeflow.storage``), whose ``from_url(url)`` parses the URL's own options.
    codeflow imports no backend: a new one needs no edit here. A plain path is a SQLite
    file. ValueError says what is wrong with a URL."""
    if url == "memory":
        return MemoryStorage()
    if "://" not in url:  # a plain file path: the SQLite file there
        url = "sqlite:///" + os.path.expanduser(url)
    scheme = url.partition("://")[0]
    if not re.fullmatch(r"[a-z][a-z0-9+.-]*", scheme):
        raise ValueError(f"unknown storage URL {url!r}: use memory, sqlite:///path or a path")
    module = scheme.replace("+", "_").replace(".", "_").replace("-", "_")
    found = importlib.metadata.entry_points(group="codeflow.storage", name=scheme)
    try:
        backend = next(iter(found)).load() if found else importlib.import_module(
            f"codeflow_storage.{module}"
        )
    except ModuleNotFoundError as err:
        if err.name in ("codeflow_storage", f"codeflow_storage.{module}"):
            raise ValueError(f"no storage backend for {scheme}:// URLs") from None
        raise ValueError(
            f"{scheme} storage needs {err.name}: pip install 'codeflow[{scheme}]'"
        ) from None
    return cast(Storage, backend.from_url(url))


# The config file and storage (README "Config file and storage"): the config file declares
# clients and users, storage keeps everything else. A record remembers the declaration that
# made it (``declared``: the entry, hashed like a password, since it holds one), so that a
# restart applies an entry only when it is new or was edited. What changed in storage
# since (a second factor a user enrolled, say) is never rewritten by a restart; the CLI
# refuses to edit declared records; and every replacement is logged.


# The types of the config file's keys: TOML has numbers, dates and booleans where a
# string belongs, and a wrong one must stop `serve` at once, not make a 500 later.
CLIENT_KEYS: dict[str, type] = {
    "client_id": str, "client_secret": str, "redirect_uris": list, "name": str,
    "scopes": list, "grant_types": list, "require_pkce": bool,
    "id_token_signed_response_alg": str, "access_token_jwt": bool,
    "post_logout_redirect_uris": list, "allowed_origins": list, "minimal_id_token": bool,
    "backchannel_logout_uri": str, "backchannel_logout_session_required": bool,
    "frontchannel_logout_uri": str, "frontchannel_logout_session_required": bool,
    "require_pushed_authorization_requests": bool,
    "resources": list, "token_exchange": list,
    "jwks": dict, "jwks_uri": str, "dpop_bound_access_tokens": bool,
}  # fmt: skip
USER_KEYS: dict[str, type] = {"username": str, "password": str, "claims": dict,
                              "totp_secret": str}  # fmt: skip
RESOURCE_KEYS: dict[str, type] = {
    "uri": str, "scopes": list, "name": str, "access_token_jwt": bool,
    "access_token_lifetime": int, "introspection": bool, "client_id": str,
}  # fmt: skip
TYPE_NAMES = {str: "a string", bool: "true or false", list: "a list of strings", dict: "a table",
              int: "a whole number"}  # fmt: skip


def config_entries(
    config: dict[str, Any], table: str, types: dict[str, type]
) -> list[dict[str, Any]]:
    """The ``[[table]]`` entries of a config file, each key of the type ``types`` names
    (lists of strings for lists); else ValueError naming the entry and the key."""
    entries = config.get(table, [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"{table} must be an array of tables: [[{table}]]")
    for i, entry in enumerate(entries, 1):
        for key, value in entry.items():
            expected = types.get(key)
            if expected is None:
                continue
            if (
                isinstance(value, expected)
                and (not isinstance(value, list) or all(isinstance(v, str) for v in value))
                and (expected is bool or not isinstance(value, bool))  # TOML true is no number
            ):
                continue
            # A secret of the wrong type is still a secret: name its type only.
            secret = key in SECRET_NAMES or "secret" in key
            got = type(value).__name__ if secret else repr(value)[:60]
            raise ValueError(
                f"[[{table}]] entry {i}: {key} must be {TYPE_NAMES[expected]}, not {got}"
            )
    return entries


def load_config(srv: Server, config: dict[str, Any]) -> None:
    """Apply the ``[[resources]]``, ``[[clients]]`` and ``[[users]]`` of a TOML config file
    to storage."""
    resources = {r["uri"]: r for r in config_entries(config, "resources", RESOURCE_KEYS)}
    clients = {c["client_id"]: c for c in config_entries(config, "clients", CLIENT_KEYS)}
    users = {u["username"]: u for u in config_entries(config, "users", USER_KEYS)}
    for uri, entry in resources.items():
        stored_resource = srv.storage.get_resource(uri)
        if _declaration_is_current(srv, entry, stored_resource, "resource", uri):
            continue
        srv.add_resource(
            uri,
            scopes=entry.get("scopes", []),
            name=entry.get("name", ""),
            access_token_jwt=entry.get("access_token_jwt", True),
            access_token_lifetime=entry.get("access_token_lifetime"),
            introspection=entry.get("introspection", True),
            client_id=entry.get("client_id"),
            declared=_declaration(srv, entry),
        )
    for client_id, entry in clients.items():
        stored_client = srv.storage.get_client(client_id)
        if _declaration_is_current(srv, entry, stored_client, "client", client_id):
            continue
        srv.add_client(
            client_id,
            client_secret=entry.get("client_secret"),
            redirect_uris=entry.get("redirect_uris", []),
            name=entry.get("name", ""),
            scopes=entry.get("scopes", DEFAULT_SCOPES),
            grant_types=entry.get("grant_types", DEFAULT_GRANT_TYPES),
            require_pkce=entry.get("require_pkce", True),
            id_token_signed_response_alg=entry.get("id_token_signed_response_alg", "RS256"),
            access_token_jwt=entry.get("access_token_jwt", False),
            post_logout_redirect_uris=entry.get("post_logout_redirect_uris", []),
            allowed_origins=entry.get("allowed_origins", []),
            minimal_id_token=entry.get("minimal_id_token", False),
            backchannel_logout_uri=entry.get("backchannel_logout_uri"),
            backchannel_logout_session_required=entry.get(
                "backchannel_logout_session_required", False
            ),
            frontchannel_logout_uri=entry.get("frontchannel_logout_uri"),
            frontchannel_logout_session_required=entry.get(
                "frontchannel_logout_session_required", False
            ),
            require_pushed_authorization_requests=entry.get(
                "require_pushed_authorization_requests", False
            ),
            resources=entry.get("resources", []),
            token_exchange=entry.get("token_exchange", []),
            jwks=entry.get("jwks"),
            jwks_uri=entry.get("jwks_uri"),
            dpop_bound_access_tokens=entry.get("dpop_bound_access_tokens", False),
            declared=_declaration(srv, entry),
        )
    for username, entry in users.items():
        stored_user = srv.storage.get_user(username)
        if _declaration_is_current(srv, entry, stored_user, "user", username):
            continue
        totp_secret = entry.get("totp_secret")
        if stored_user is not None and stored_user.totp_secret and not totp_secret:
            # No entry drops a second factor silently; to remove it, take the user out
            # of the file and use `codeflow user totp disable`.
            log.warning("codeflow: user %r keeps the second factor enrolled in storage", username)
            totp_secret = stored_user.totp_secret
        password, claims = entry.get("password"), entry.get("claims", {})
        declared = _declaration(srv, entry)
        if stored_user is None:
            srv.add_user(username, password, claims=claims, totp_secret=totp_secret,
                         declared=declared)  # fmt: skip
            continue
        user = srv._user_record(username, password, claims, totp_secret, declared)
        if totp_secret == stored_user.totp_secret and (
            verify_password(password, stored_user.password_hash, hashing=srv.password_hashing)
            if password is not None else stored_user.password_hash == NO_PASSWORD
        ):  # fmt: skip
            # The same credentials (the entry's claims, say, were edited): nothing ends
            # that new ones would end, and the record keeps its record_id (the sessions'
            # credentials_fingerprint) and password hash.
            srv.storage.add_user(replace(stored_user, claims=user.claims, declared=declared))
            if user.claims != stored_user.claims:
                audit("user.changed", user=username, changed="claims")
        else:
            # New credentials from the file end what the old ones granted, as
            # Server.set_password does (RFC 9700 §4.14.2): one write, the revocation with it.
            srv._change_credentials(user)
    # Declared before, and no longer: kept (an edit of a file deletes nobody), now the CLI's.
    for r in srv.storage.list_resources():
        if r.declared and r.uri not in resources:
            log.warning("codeflow: resource %r is no longer in the config file: it stays in "
                        "storage, managed with the CLI from now on", r.uri)  # fmt: skip
            srv.storage.add_resource(replace(r, declared=""))
    for c in srv.storage.list_clients():
        if c.declared and c.client_id not in clients:
            log.warning("codeflow: client %r is no longer in the config file: it stays in "
                        "storage, managed with the CLI from now on", c.client_id)  # fmt: skip
            srv.storage.add_client(replace(c, declared=""))
    for u in srv.storage.list_users():
        if u.declared and u.username not in users:
            log.warning("codeflow: user %r is no longer in the config file: it stays in "
                        "storage, managed with the CLI from now on", u.username)  # fmt: skip
            srv.storage.add_user(replace(u, declared=""))


def _declaration(srv: Server, entry: dict[str, Any]) -> str:
    # Hashed as the server hashes passwords: a declaration a test server made fast is not
    # current on a production server, which so applies the entry again, with scrypt.
    entry_json = json.dumps(entry, sort_keys=True, default=str)
    return hash_password(entry_json, hashing=srv.password_hashing)


def _declaration_is_current(
    srv: Server,
    entry: dict[str, Any],
    record: Client | User | Resource | None,
    kind: str,
    name: str,
) -> bool:
    """True when ``record`` was made from this very entry: leave storage as it is."""
    if record is None:
        return False
    if not record.declared:
        log.warning("codeflow: %s %r was made outside the config file and is now declared in the "
                    "config file: the config file's entry replaces it", kind, name)  # fmt: skip
        return False
    entry_json = json.dumps(entry, sort_keys=True, default=str)
    if verify_password(entry_json, record.declared, hashing=srv.password_hashing):
        return True
    log.warning("codeflow: %s %r changed in the config file: applying its new entry", kind, name)
    return False


def refuse_declared(record: Client | User | Resource) -> None:
    """The CLI edits no record the config file declares (a restart would undo the edit,
    or the edit would silently override the file): ValueError saying where to change it."""
    if record.declared:
        raise ValueError(
            f"{named(record)} is declared in the config file: change it there, or take it "
            "out of the config file to manage it here"
        )


def named(record: Client | User | Resource) -> str:
    """A client or user as a message names it: "client 'wiki'", "user 'alice'"."""
    if isinstance(record, Client):
        return f"client {record.client_id!r}"
    if isinstance(record, Resource):
        return f"resource {record.uri!r}"
    return f"user {record.username!r}"


class JsonLogFormatter(logging.Formatter):
    """``--log-format json``: one JSON object a line, with the time, level, logger and
    message, and an audit event's name and fields or an access line's."""

    ACCESS_FIELDS = ("method", "path", "status", "duration_ms", "address")

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if hasattr(record, "event"):
            line.update({"event": record.event, **getattr(record, "fields", {})})
        line.update({k: getattr(record, k) for k in self.ACCESS_FIELDS if hasattr(record, k)})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


LOG_INTERVAL = 0.1  # s between the writes of a LogWriter: lines show at most this late
LOG_BACKLOG = 10_000  # lines queued at most: the thread that logs one more writes them


class LogWriter(logging.Handler):
    """Log lines to a stream, LOG_INTERVAL s at a time. A request's thread formats its lines
    and queues them; a writer thread writes what has queued in one go. A line written by
    the request's own thread (logging.StreamHandler) is a write and a flush per line, under
    a lock all threads share: each a system call during which another thread takes the GIL
    and after which this one waits to get it back, which under load was most of what the
    access and audit lines cost. Lines keep their order; memory stays bounded (past
    LOG_BACKLOG lines the logging thread writes them itself, and waits as it did for a
    stream that blocks); what is queued is written when logging shuts down (at exit); and
    a worker forked by ``serve --workers`` starts a writer of its own at its first line."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self._lines: collections.deque[str] = collections.deque()  # append, popleft: atomic
        self._writing = threading.Lock()  # one write at a time, so that lines keep order
        self._started = False  # the writer thread (of this process: see _forked)
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        # A fork copies no thread, and may copy _writing held by the parent's writer mid-
        # write: the child starts afresh, and its first line starts its own writer. The
        # parent's queued lines are the parent's to write.
        self._writing = threading.Lock()
        self._lines = collections.deque()
        self._started = False

    def handle(self, record: logging.LogRecord) -> bool:
        # Handler.handle holds the handler's lock around emit; queueing a line needs none.
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
            if not self._started:
                self._start()
            self._lines.append(line)
            if len(self._lines) >= LOG_BACKLOG:
                self.flush()
        except Exception:
            self.handleError(record)

    def _start(self) -> None:
        with self._writing:
            if self._started:
                return
            writer = threading.Thread(target=self._write, name="codeflow-log", daemon=True)
            writer.start()
            self._started = True

    def _write(self) -> None:
        while True:
            time.sleep(LOG_INTERVAL)
            self.flush()

    def flush(self) -> None:
        """Write what is queued (the writer thread; a full queue; logging.shutdown at exit)."""
        with self._writing:
            lines = self._lines
            batch = [lines.popleft() for _ in range(len(lines))]
            if batch:
                with contextlib.suppress(OSError, ValueError):  # a closed stream loses them
                    self.stream.write("".join(batch))
                    self.stream.flush()


def configure_logging(level: str = "INFO", form: str = "text") -> None:
    """Log to stderr (where systemd's journal and container runtimes collect it)."""
    # What no line of codeflow's shows, no record need look up (the logging HOWTO's
    # "Optimization"): the caller's file and line (a walk up the stack) and the thread's
    # and process's names. This is the CLI's own process; an app embedding codeflow keeps
    # its logging as it set it up.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonLogFormatter() if form == "json" else logging.Formatter("%(message)s")
    )
    handler.name = "codeflow"  # for log_in_background to find
    logging.basicConfig(level=level.upper(), handlers=[handler])


def log_in_background() -> None:
    """``serve``, once it starts serving: configure_logging's lines are written by a
    LogWriter from then on (its docstring says why). Until then each line is written at
    once, in order with what the CLI prints on stderr. A no-op if configure_logging made
    no handler or it was replaced (an app or a test set up logging its own way)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if handler.name == "codeflow" and isinstance(handler, logging.StreamHandler):
            writer = LogWriter(handler.stream)
            writer.setFormatter(handler.formatter)
            writer.name = handler.name
            root.addHandler(writer)
            root.removeHandler(handler)
            return


PURGE_INTERVAL = 10 * 60  # how often `serve` deletes expired records, off the request path


def purge_forever(
    srv: Server, interval: float = PURGE_INTERVAL, stop: threading.Event | None = None
) -> threading.Thread:
    """Start a daemon thread that purges expired records every interval, until ``stop``."""
    stopped = stop or threading.Event()

    def loop() -> None:
        while not stopped.wait(interval):
            try:
                purged = srv.purge()
                log.debug("codeflow: purged %d expired records", purged)
            except Exception:  # the purge must never take the server down
                log.exception("codeflow: purge failed")

    thread = threading.Thread(target=loop, name="codeflow-purge", daemon=True)
    thread.start()
    return thread


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codeflow", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"codeflow {__version__}")
    store = argparse.ArgumentParser(add_help=False)
    store.add_argument("--config", type=argparse.FileType("rb"), help="TOML config file")
    store.add_argument(
        "--storage",
        help="memory (serve's default), sqlite:////abs/path.db, a file path, or postgresql://...",
    )
    store.add_argument("--issuer", help="public base URL (serve: default http://HOST:PORT)")
    store.add_argument("--log-format", choices=("text", "json"), default="text",
                       help="log lines as text or as JSON objects")  # fmt: skip
    store.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                       default="info", help="the least severe level logged")  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)

    def command(group: Any, name: str, run: Command, help: str) -> argparse.ArgumentParser:
        cmd: argparse.ArgumentParser = group.add_parser(name, parents=[store], help=help)
        cmd.set_defaults(run=run)
        return cmd

    def password(cmd: argparse.ArgumentParser) -> None:
        cmd.add_argument("--password-stdin", action="store_true",
                         help="read the password from the first line of stdin")  # fmt: skip

    def replace_flag(cmd: argparse.ArgumentParser, what: str) -> None:
        cmd.add_argument("--replace", action="store_true", help=f"replace an existing {what}")

    serve_cmd = commands.add_parser("serve", parents=[store], help="run the authorization server")
    serve_cmd.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve_cmd.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve_cmd.add_argument("--workers", type=int, default=1, metavar="N",
                           help="worker processes (more than 1 needs SQLite or PostgreSQL)")
    serve_cmd.add_argument("--demo", action="store_true", help="add a demo client and user")
    serve_cmd.add_argument("--auto-approve", metavar="USER", help="approve every request as USER")
    serve_cmd.add_argument(
        "--test-mode", action="store_true",
        help="fake IdP for tests: faults over HTTP, a transcript (never in production)",
    )  # fmt: skip
    serve_cmd.add_argument(
        "--password-hashing", choices=PASSWORD_HASHINGS, default="scrypt",
        help="fast: test-only hashes of passwords and secrets, no scrypt (needs --test-mode)",
    )  # fmt: skip
    serve_cmd.add_argument(
        "--internal-url", help="base URL of the back-channel endpoints (discovery asked there)"
    )
    serve_cmd.add_argument(
        "--trusted-proxy", action="append", default=[], dest="trusted_proxies", metavar="CIDR",
        help="a reverse proxy whose X-Forwarded-For / Forwarded is believed (repeatable)",
    )  # fmt: skip
    # Clients that register themselves (RFC 7591; Client ID Metadata Documents): off unless
    # asked for. Each option has a config-file key of the same name (underscores).
    serve_cmd.add_argument(
        "--registration", choices=REGISTRATION_POLICIES,
        help="RFC 7591 dynamic client registration: off (default), open, or token (an "
        "initial access token, --registration-token or registration_tokens in --config)",
    )  # fmt: skip
    serve_cmd.add_argument(
        "--registration-token", action="append", default=[], dest="registration_tokens",
        metavar="TOKEN", help="an initial access token for --registration token (repeatable; "
        "prefer the config file: a command line is visible to other users)",
    )  # fmt: skip
    serve_cmd.add_argument(
        "--client-id-metadata-documents", action="store_true", default=None,
        help="accept https client_ids whose metadata document the server fetches",
    )  # fmt: skip
    serve_cmd.add_argument(
        "--client-id-metadata-host", action="append", default=[], metavar="HOST",
        dest="client_id_metadata_hosts",
        help="fetch client metadata documents only from this host (repeatable)",
    )  # fmt: skip
    serve_cmd.add_argument(
        "--fetch-allow-network", action="append", default=[], metavar="CIDR",
        dest="fetch_allowed_networks",
        help="a network the server may fetch documents from though not public, http on "
        "loopback (repeatable; test suites: 127.0.0.0/8; never an internal network)",
    )  # fmt: skip
    serve_cmd.add_argument(
        "--fetch-ca-file", metavar="PATH", help="a CA file to trust when fetching documents"
    )
    serve_cmd.add_argument(
        "--passkeys", action="store_true", default=None,
        help="offer passkeys (WebAuthn) on the account and login pages (extra 'passkeys')",
    )  # fmt: skip
    serve_cmd.add_argument(
        "--require-pushed-authorization-requests", action="store_true", default=None,
        help="every client's authorization requests only through the PAR endpoint (RFC 9126)",
    )  # fmt: skip
    serve_cmd.add_argument(
        "--dpop-nonces", action="store_true", default=None,
        help="DPoP proofs must carry a nonce the server gave (RFC 9449 8)",
    )  # fmt: skip

    client = commands.add_parser("client", help="manage clients").add_subparsers(
        dest="action", required=True
    )
    add = command(client, "add", client_add, "register a client")
    add.add_argument("client_id")
    add.add_argument("--public", action="store_true", help="no secret: a public client (PKCE)")
    add.add_argument("--no-pkce", action="store_true", help="let a confidential client skip PKCE")
    replace_flag(add, "client (and print a new secret)")
    update = command(client, "update", client_update, "change a client's settings")
    update.add_argument("client_id")
    for cmd in (add, update):
        cmd.add_argument("--redirect-uri", action="append", dest="redirect_uris",
                         help="a redirect URI (repeatable; update: replaces the list)")
        cmd.add_argument("--post-logout-redirect-uri", action="append",
                         dest="post_logout_redirect_uris",
                         help="where logout may return (repeatable)")
        cmd.add_argument("--allowed-origin", action="append", dest="allowed_origins",
                         help="a web origin (https://app.example) whose pages may call the "
                         "token, userinfo and revocation endpoints: CORS (repeatable)")
        cmd.add_argument("--name", help="the name users see on the consent page")
        cmd.add_argument("--scope", action="append", dest="scopes",
                         help="a scope it may ask for (repeatable)")
        cmd.add_argument("--grant-type", action="append", dest="grant_types",
                         help=f"a grant it may use (repeatable): {', '.join(GRANT_TYPES)}")
        cmd.add_argument("--jwt-access-tokens", action=argparse.BooleanOptionalAction,
                         help="RFC 9068 JWT access tokens instead of opaque ones")
        cmd.add_argument("--minimal-id-token", action=argparse.BooleanOptionalAction,
                         help="ID tokens without user claims (userinfo has them)")
        cmd.add_argument("--backchannel-logout-uri", metavar="URI",
                         help="where a logout token is POSTed when the user signs out (OIDC "
                         "Back-Channel Logout): https, or http on loopback; update: '' "
                         "removes it")
        cmd.add_argument("--backchannel-logout-session-required",
                         action=argparse.BooleanOptionalAction,
                         help="the app needs sid in logout tokens (they always carry it)")
        cmd.add_argument("--frontchannel-logout-uri", metavar="URI",
                         help="the app's page that the signed-out page frames, with iss and "
                         "sid (OIDC Front-Channel Logout): https, or http on loopback; "
                         "update: '' removes it")
        cmd.add_argument("--frontchannel-logout-session-required",
                         action=argparse.BooleanOptionalAction,
                         help="the app needs iss and sid on that page (always sent)")
        cmd.add_argument("--require-pushed-authorization-requests",
                         action=argparse.BooleanOptionalAction,
                         help="its authorization requests only through the PAR endpoint "
                         "(RFC 9126)")  # fmt: skip
        cmd.add_argument("--resource", action="append", dest="resources", metavar="URI",
                         help="a resource (RFC 8707) it may ask tokens for; none: any "
                         "(repeatable; update: replaces the list)")
        cmd.add_argument("--token-exchange", action="append", dest="token_exchange",
                         metavar="URI", help="a resource it may get tokens for by token "
                         "exchange, RFC 8693 (repeatable; update: replaces the list)")  # fmt: skip
        cmd.add_argument("--dpop-bound-access-tokens", action=argparse.BooleanOptionalAction,
                         help="every token request must carry a DPoP proof (RFC 9449)")
        cmd.add_argument("--jwks", metavar="FILE", type=argparse.FileType("rb"),
                         help="a JSON file with the client's public keys (a JWK Set): it "
                         "authenticates with private_key_jwt, no secret (RFC 7523)")
        cmd.add_argument("--jwks-uri", metavar="URL",
                         help="where the client publishes its keys (private_key_jwt)")  # fmt: skip
    update.add_argument("--pkce", action=argparse.BooleanOptionalAction,
                        help="require PKCE (--no-pkce: a confidential client may skip it)")
    command(client, "rotate-secret", client_rotate_secret,
            "give a confidential client a new secret").add_argument("client_id")  # fmt: skip
    command(client, "list", client_list, "list clients")
    command(client, "remove", client_remove, "remove a client").add_argument("client_id")

    resource = commands.add_parser(
        "resource", help="manage resources: the APIs tokens are for (RFC 8707)"
    ).add_subparsers(dest="action", required=True)
    add = command(resource, "add", resource_add, "register a resource (an API)")
    replace_flag(add, "resource")
    update = command(resource, "update", resource_update, "change a resource's settings")
    for cmd in (add, update):
        cmd.add_argument("uri", help="its resource indicator: an absolute URI, no fragment")
        cmd.add_argument("--scope", action="append", dest="scopes",
                         help="a scope it defines (repeatable; update: replaces the list)")
        cmd.add_argument("--name", help="the name users see on the consent page")
        cmd.add_argument("--jwt-access-tokens", action=argparse.BooleanOptionalAction,
                         help="RFC 9068 JWT access tokens (the default) or opaque ones")
        cmd.add_argument("--access-token-lifetime", type=int, metavar="SECONDS",
                         help="how long its access tokens live (default: the server's)")
        cmd.add_argument("--client", metavar="CLIENT_ID",
                         help="the confidential client its server authenticates as "
                         "(update: '' removes it)")
        cmd.add_argument("--introspection", action=argparse.BooleanOptionalAction,
                         help="whether that client may introspect its tokens (default: yes)")
    command(resource, "list", resource_list, "list resources")
    command(resource, "remove", resource_remove, "remove a resource").add_argument("uri")

    user = commands.add_parser("user", help="manage users").add_subparsers(
        dest="action", required=True
    )
    add = command(user, "add", user_add, "add a user")
    add.add_argument("username")
    password(add)
    add.add_argument("--totp", action="store_true", help="enrol a TOTP second factor")
    replace_flag(add, "user (claims, password and TOTP)")
    update = command(user, "update", user_update, "change a user's claims")
    update.add_argument("username")
    update.add_argument("--unset-claim", action="append", default=[], metavar="NAME",
                        help="remove a claim (repeatable)")  # fmt: skip
    for cmd in (add, update):
        cmd.add_argument("--claim", action="append", default=[], metavar="NAME=VALUE",
                         help="a claim, such as name=Alice (repeatable)")  # fmt: skip
    passwd = command(user, "passwd", user_passwd, "change a user's password")
    passwd.add_argument("username")
    password(passwd)
    totp = user.add_parser("totp", help="TOTP second factor").add_subparsers(
        dest="totp_action", required=True
    )
    enable = command(totp, "enable", user_totp_enable, "enrol a user's TOTP (RFC 6238)")
    enable.add_argument("username")
    replace_flag(enable, "TOTP secret")
    command(totp, "disable", user_totp_disable, "remove a user's TOTP").add_argument("username")
    command(user, "list", user_list, "list users")
    command(user, "remove", user_remove, "remove a user").add_argument("username")
    sessions = user.add_parser("sessions", help="a user's login sessions").add_subparsers(
        dest="sessions_action", required=True
    )
    command(sessions, "revoke", user_sessions_revoke,
            "sign a user out everywhere (apps keep their grants: see grants revoke)",
            ).add_argument("username")  # fmt: skip

    grants = commands.add_parser("grants", help="what users granted clients").add_subparsers(
        dest="action", required=True
    )
    listing = command(grants, "list", grants_list,
                      "one line per user and client: consented scopes, when consented "
                      "(unknown if not recorded; - if no consent), active access and "
                      "refresh tokens")  # fmt: skip
    listing.add_argument("--user", help="only this user's grants")
    listing.add_argument("--client", help="only the grants to this client")
    revoke = command(grants, "revoke", grants_revoke,
                     "end a user's grant to a client: its consent, tokens and codes")
    revoke.add_argument("--user", required=True, help="the user who granted it")
    revoke.add_argument("--client", required=True, help="the client it was granted to")

    command(commands, "purge", purge, "delete expired codes, tokens, keys")
    keys = commands.add_parser("keys", help="manage signing keys").add_subparsers(
        dest="action", required=True
    )
    command(keys, "rotate", keys_rotate, "sign with new keys from now on")
    command(keys, "list", keys_list, "list the signing keys (kid, alg, state)")
    backup = command(commands, "backup", backup_storage, "copy the live database to a file")
    backup.add_argument("file", help="the copy to write (it must not exist)")
    return parser


# The management commands: each opens the store (main does) and calls one Server method.
# A ValueError is the operator's mistake: main prints it on one line and exits with 2.
Command = Callable[["Server", argparse.Namespace], None]


def client_add(srv: Server, args: argparse.Namespace) -> None:
    _may_replace(srv.storage.get_client(args.client_id), args.replace,
                 "`codeflow client update` or `client rotate-secret`")  # fmt: skip
    grants = args.grant_types or DEFAULT_GRANT_TYPES
    if "authorization_code" in grants and not args.redirect_uris:
        raise ValueError("an authorization-code client needs at least one --redirect-uri")
    jwks = read_jwks(args.jwks)
    keyed = jwks is not None or args.jwks_uri is not None
    secret = None if args.public or keyed else secrets.token_urlsafe(32)
    srv.add_client(
        args.client_id,
        client_secret=secret,
        redirect_uris=args.redirect_uris or (),
        post_logout_redirect_uris=args.post_logout_redirect_uris or (),
        allowed_origins=args.allowed_origins or (),
        name=args.name or "",
        scopes=args.scopes or DEFAULT_SCOPES,
        grant_types=grants,
        require_pkce=not args.no_pkce,
        access_token_jwt=bool(args.jwt_access_tokens),
        minimal_id_token=bool(args.minimal_id_token),
        backchannel_logout_uri=args.backchannel_logout_uri or None,
        backchannel_logout_session_required=bool(args.backchannel_logout_session_required),
        frontchannel_logout_uri=args.frontchannel_logout_uri or None,
        frontchannel_logout_session_required=bool(args.frontchannel_logout_session_required),
        require_pushed_authorization_requests=bool(args.require_pushed_authorization_requests),
        resources=args.resources or (),
        token_exchange=args.token_exchange or (),
        jwks=jwks,
        jwks_uri=args.jwks_uri,
        dpop_bound_access_tokens=bool(args.dpop_bound_access_tokens),
    )
    print(f"client_id: {args.client_id}")
    if secret is not None:
        print(f"client_secret: {secret}  (shown once; only its hash is stored)")


def client_update(srv: Server, args: argparse.Namespace) -> None:
    _existing_client(srv, args.client_id)
    given = {
        "redirect_uris": args.redirect_uris,
        "post_logout_redirect_uris": args.post_logout_redirect_uris,
        "allowed_origins": args.allowed_origins,
        "name": args.name,
        "scopes": args.scopes,
        "grant_types": args.grant_types,
        "access_token_jwt": args.jwt_access_tokens,
        "minimal_id_token": args.minimal_id_token,
        "require_pkce": args.pkce,
        "backchannel_logout_session_required": args.backchannel_logout_session_required,
        "frontchannel_logout_session_required": args.frontchannel_logout_session_required,
        "require_pushed_authorization_requests": args.require_pushed_authorization_requests,
        "resources": args.resources,
        "token_exchange": args.token_exchange,
        "dpop_bound_access_tokens": args.dpop_bound_access_tokens,
        "jwks": read_jwks(args.jwks),
        "jwks_uri": args.jwks_uri,
    }
    changes: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    for setting in ("backchannel_logout_uri", "frontchannel_logout_uri"):
        uri = getattr(args, setting)
        if uri is not None:
            changes[setting] = uri or None  # '' removes it
    if not changes:
        raise ValueError("nothing to change: see `codeflow client update --help`")
    srv.update_client(args.client_id, **changes)


def read_jwks(file: io.BufferedReader | None) -> dict[str, Any] | None:
    """The JWK Set in the JSON file ``--jwks`` names (checked by add_client)."""
    if file is None:
        return None
    with file:
        try:
            jwks = json.load(file)
        except (ValueError, UnicodeDecodeError) as err:
            raise ValueError(f"{file.name}: not JSON: {err}") from None
    if not isinstance(jwks, dict):
        raise ValueError(f'{file.name}: a JWK Set is a JSON object: {{"keys": [...]}}')
    return jwks


def client_rotate_secret(srv: Server, args: argparse.Namespace) -> None:
    _existing_client(srv, args.client_id)
    secret = srv.rotate_client_secret(args.client_id)
    print(f"client_secret: {secret}  (shown once; the old secret no longer works)")


def client_list(srv: Server, args: argparse.Namespace) -> None:
    for c in srv.storage.list_clients():
        kind = "public" if c.public else "confidential"
        if c.registration == REGISTERED_DYNAMICALLY:
            kind += ", registered itself"  # RFC 7591: `client remove` deprovisions it
        print(f"{c.client_id}\t{kind}\t{c.name}\t{' '.join(c.redirect_uris)}")


def client_remove(srv: Server, args: argparse.Namespace) -> None:
    _existing_client(srv, args.client_id)
    if not srv.remove_client(args.client_id):
        raise ValueError(f"no client {args.client_id!r}")


def resource_add(srv: Server, args: argparse.Namespace) -> None:
    _may_replace(srv.storage.get_resource(args.uri), args.replace, "another URI")
    srv.add_resource(
        args.uri,
        scopes=args.scopes or (),
        name=args.name or "",
        access_token_jwt=args.jwt_access_tokens is not False,
        access_token_lifetime=args.access_token_lifetime,
        introspection=args.introspection is not False,
        client_id=args.client,
    )
    print(f"resource: {args.uri}")


def resource_update(srv: Server, args: argparse.Namespace) -> None:
    resource = srv.storage.get_resource(args.uri)
    if resource is None:
        raise ValueError(f"no resource {args.uri!r}")
    refuse_declared(resource)
    given = {
        "scopes": args.scopes,
        "name": args.name,
        "access_token_jwt": args.jwt_access_tokens,
        "access_token_lifetime": args.access_token_lifetime,
        "introspection": args.introspection,
    }
    changes: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    if args.client is not None:
        changes["client_id"] = args.client or None  # '' removes it
    if not changes:
        raise ValueError("nothing to change: see `codeflow resource update --help`")
    srv.update_resource(args.uri, **changes)


def resource_list(srv: Server, args: argparse.Namespace) -> None:
    for r in srv.list_resources():
        kind = "jwt" if r.access_token_jwt else "opaque"
        print(f"{r.uri}\t{kind}\t{r.name}\t{' '.join(r.scopes)}\t{r.client_id or '-'}")


def resource_remove(srv: Server, args: argparse.Namespace) -> None:
    resource = srv.storage.get_resource(args.uri)
    if resource is None:
        raise ValueError(f"no resource {args.uri!r}")
    refuse_declared(resource)
    srv.remove_resource(args.uri)


def user_add(srv: Server, args: argparse.Namespace) -> None:
    _may_replace(srv.storage.get_user(args.username), args.replace,
                 "`codeflow user update`, `user passwd` or `user totp`")  # fmt: skip
    claims = _claims(args.claim)
    totp_secret = pyotp.random_base32() if args.totp else None
    srv.add_user(args.username, _read_password(args), claims=claims, totp_secret=totp_secret)
    if totp_secret:
        _print_totp(srv, args.username, totp_secret)


def user_update(srv: Server, args: argparse.Namespace) -> None:
    _existing_user(srv, args.username)
    claims = _claims(args.claim)
    if not claims and not args.unset_claim:
        raise ValueError("nothing to change: see `codeflow user update --help`")
    user = srv.set_claims(args.username, claims)
    kept = {k: v for k, v in user.claims.items() if k not in args.unset_claim}
    srv.set_claims(args.username, kept, merge=False)


def user_passwd(srv: Server, args: argparse.Namespace) -> None:
    _existing_user(srv, args.username)
    srv.set_password(args.username, _read_password(args))


def user_totp_enable(srv: Server, args: argparse.Namespace) -> None:
    user = _existing_user(srv, args.username)
    if user.totp_secret and not args.replace:
        raise ValueError(
            f"{args.username!r} already has a TOTP authenticator; add --replace for a new one"
        )
    totp_secret = pyotp.random_base32()
    srv.set_totp(args.username, totp_secret)
    _print_totp(srv, args.username, totp_secret)


def user_totp_disable(srv: Server, args: argparse.Namespace) -> None:
    _existing_user(srv, args.username)
    srv.set_totp(args.username, None)


def user_list(srv: Server, args: argparse.Namespace) -> None:
    for u in srv.storage.list_users():
        print(u.username)


def user_remove(srv: Server, args: argparse.Namespace) -> None:
    _existing_user(srv, args.username)
    if not srv.remove_user(args.username):
        raise ValueError(f"no user {args.username!r}")


def user_sessions_revoke(srv: Server, args: argparse.Namespace) -> None:
    srv.revoke_sessions(args.username)


def grants_list(srv: Server, args: argparse.Namespace) -> None:
    for g in srv.list_grants(args.user, args.client):
        scopes, when = "-", "-"  # tokens issued without a consent page (auto-approve)
        if g.scopes is not None:
            # A resource's scope is stored as "URI scope" (consent_scopes): shown scope@URI.
            scopes = " ".join(sorted("@".join(reversed(s.split(" ", 1))) for s in g.scopes))
            # A consent stored before codeflow recorded consent times has none.
            when = "unknown" if g.consented_at is None else time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(g.consented_at)
            )  # fmt: skip
        print(f"{g.username}\t{g.client_id}\t{scopes}\t{when}\t"
              f"{g.access_tokens} access\t{g.refresh_tokens} refresh")  # fmt: skip


def grants_revoke(srv: Server, args: argparse.Namespace) -> None:
    if not srv.revoke_grant(args.user, args.client):
        raise ValueError(f"no grant of user {args.user!r} to client {args.client!r}")


def keys_rotate(srv: Server, args: argparse.Namespace) -> None:
    for key in srv.rotate_keys():
        # It signs once every node's cache has it (see signing_key).
        signs_from = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                   time.gmtime(key.created_at + srv.cache_seconds))
        print(f"new {key.alg} signing key: kid {key.kid}, published now, signs from {signs_from}")


def keys_list(srv: Server, args: argparse.Namespace) -> None:
    if not srv.storage.signing_keys():
        print("no signing keys yet: the first is made when the server first signs", file=sys.stderr)
    keys = srv.storage.signing_keys()
    algs = {k.alg for k in keys if k.expires_at is None}
    signing = {signing_key(srv, alg).kid for alg in algs}
    for key in keys:  # newest first
        made = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(key.created_at))
        # A rotated-in key is published a while before it signs (see signing_key).
        state = (
            "signing" if key.kid in signing
            else "published, signs from " + time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(key.created_at + srv.cache_seconds))
            if key.expires_at is None
            else "published until " + time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                    time.gmtime(key.expires_at))
        )  # fmt: skip
        print(f"{key.kid}\t{key.alg}\t{made}\t{state}")


def backup_storage(srv: Server, args: argparse.Namespace) -> None:
    backup = getattr(srv.storage, "backup", None)
    if backup is None:
        raise ValueError("this storage has no backup: back up its database with its own tools")
    backup(args.file)
    print(f"backed up to {args.file}")


def purge(srv: Server, args: argparse.Namespace) -> None:
    print(f"purged {srv.purge()} expired records")


def _may_replace(
    existing: Client | User | Resource | None, replace: bool, instead: str
) -> None:
    """`add` replaces nothing silently: a name that exists needs --replace, and a record
    the config file declares is never replaced from here."""
    if existing is None:
        return
    if not replace:
        raise ValueError(f"{named(existing)} already exists; use {instead}, or add --replace")
    refuse_declared(existing)


def _existing_client(srv: Server, client_id: str) -> Client:
    """The client a command is to change: it exists, and the config file does not own it."""
    client = srv.storage.get_client(client_id)
    if client is None:
        raise ValueError(f"no client {client_id!r}")
    refuse_declared(client)
    return client


def _claims(pairs: list[str]) -> dict[str, str]:
    bad = [p for p in pairs if "=" not in p or not p.split("=", 1)[0]]
    if bad:
        raise ValueError(f"--claim takes NAME=VALUE, not {bad[0]!r}")
    return dict(p.split("=", 1) for p in pairs)


def _existing_user(srv: Server, username: str) -> User:
    """The user a command is to change: it exists, and the config file does not own it."""
    user = srv.storage.get_user(username)
    if user is None:
        raise ValueError(f"no user {username!r}")
    refuse_declared(user)
    return user


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        if not password:
            raise ValueError("no password on stdin (an empty line or none)")
        return password
    if not sys.stdin.isatty():
        raise ValueError("no terminal to ask for the password on: use --password-stdin")
    password = getpass.getpass("Password: ")
    if password != getpass.getpass("Again: "):
        raise ValueError("the passwords differ")
    return password


def _print_totp(srv: Server, username: str, secret: str) -> None:
    """Show the otpauth:// URI (Google Authenticator Key URI Format) to enrol an app."""
    label = f"codeflow {urllib.parse.urlsplit(srv.issuer).netloc}"
    uri = pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=label)
    print(f"TOTP for {username}: add this to an authenticator app (shown once):\n{uri}")
    try:
        import qrcode  # optional: a QR code when the library is there
    except ImportError:
        return
    code = qrcode.QRCode(border=1)
    code.add_data(uri)
    code.print_ascii(invert=True)


def _stop(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def self_registration_options(
    args: argparse.Namespace, config: dict[str, Any], parser: argparse.ArgumentParser
) -> dict[str, Any]:
    """The Server options of clients that register themselves, from the command line or
    else the config file (keys named as the options)."""
    options: dict[str, Any] = {}
    lists = ("registration_tokens", "client_id_metadata_hosts", "fetch_allowed_networks")
    for key in lists:
        value = getattr(args, key) or config.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            parser.error(f"bad config: {key} must be a list of strings")
        options[key] = value
    for key, kind in (("registration", str), ("client_id_metadata_documents", bool),
                      ("fetch_ca_file", str)):  # fmt: skip
        value = getattr(args, key)
        value = config.get(key) if value is None else value
        if value is not None and not isinstance(value, kind):
            parser.error(f"bad config: {key} must be a {kind.__name__}")
        if value is not None:
            options[key] = value
    return options


def main(argv: list[str] | None = None) -> int:
    """The ``codeflow`` command: a thin layer over Server and its storage."""
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        config = tomllib.load(args.config) if args.config else {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        parser.error(f"{args.config.name}: {err}")
    for key in ("issuer", "storage"):
        if key in config and not isinstance(config[key], str):
            parser.exit(2, f"codeflow: error: bad config: {key} must be a string\n")
    storage_url = args.storage or config.get("storage", "memory")
    if args.command != "serve":
        if storage_url == "memory":
            parser.exit(2, f"codeflow: error: {args.command} needs persistent storage: "
                           "--storage PATH (or storage in --config)\n")  # fmt: skip
        try:
            args.run(Server(args.issuer or config.get("issuer"), open_storage(storage_url)), args)
        except ValueError as err:
            parser.exit(2, f"codeflow: error: {err}\n")
        return 0

    host_for_url = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host  # noqa: S104
    issuer = args.issuer or config.get("issuer") or f"http://{host_for_url}:{args.port}"
    if args.workers < 1 or (args.workers > 1 and storage_url == "memory"):
        parser.exit(2, "codeflow: error: --workers above 1 needs shared storage (--storage "
                       "PATH): each worker's memory would be its own\n")  # fmt: skip
    proxies = args.trusted_proxies or config.get("trusted_proxies", [])
    if not isinstance(proxies, list) or not all(isinstance(p, str) for p in proxies):
        parser.error("bad config: trusted_proxies must be a list of CIDR strings")
    passkeys = args.passkeys if args.passkeys is not None else config.get("passkeys", False)
    if not isinstance(passkeys, bool):
        parser.error("bad config: passkeys must be true or false")
    require_par = args.require_pushed_authorization_requests or config.get(
        "require_pushed_authorization_requests", False
    )
    if not isinstance(require_par, bool):
        parser.error("bad config: require_pushed_authorization_requests must be true or false")
    dpop_nonces = args.dpop_nonces or config.get("dpop_nonces", False)
    if not isinstance(dpop_nonces, bool):
        parser.error("bad config: dpop_nonces must be true or false")
    if args.password_hashing == "fast" and not args.test_mode:  # noqa: S105 -- a mode
        # Fast hashes are a test convenience; a production server must not make them.
        parser.error("--password-hashing fast is for test suites: it needs --test-mode")
    registering = self_registration_options(args, config, parser)
    try:
        srv = Server(issuer, open_storage(storage_url), auto_approve=args.auto_approve,
                     demo=args.demo, test_mode=args.test_mode, internal_url=args.internal_url,
                     trusted_proxies=proxies, passkeys=passkeys, dpop_nonces=dpop_nonces,
                     require_pushed_authorization_requests=require_par,
                     password_hashing=args.password_hashing, **registering)  # fmt: skip
    except ValueError as err:
        parser.exit(2, f"codeflow: error: {err}\n")
    try:
        load_config(srv, config)
    except KeyError as err:
        parser.error(f"bad config: a [[resources]], [[clients]] or [[users]] entry has no {err}")
    except (TypeError, ValueError) as err:
        parser.error(f"bad config: {err}")
    print(f"codeflow: serving {srv.issuer} (metadata at {srv.issuer}{OAUTH_METADATA_PATH})")
    if args.demo:
        print(f"Demo: open {srv.issuer}{DEMO_PATH} in a browser, click 'Start the flow',")
        print(f"      sign in as {DEMO_USER} / {DEMO_PASSWORD}, allow access, and see the tokens.")
    if args.auto_approve:
        print(f"WARNING: --auto-approve: every request is approved as {args.auto_approve!r}.")
    if args.test_mode:
        print(f"WARNING: --test-mode: faults can be injected at {srv.issuer}{CONTROL_PREFIX}faults"
              " and every request is recorded. Never use this in production.")  # fmt: skip
    if args.password_hashing == "fast":  # noqa: S105 -- a mode, not a password
        print("WARNING: --password-hashing fast: passwords and client secrets get test-only "
              "hashes, which a server without it refuses.")  # fmt: skip
    if srv.registration != "off":
        print(f"Registration ({srv.registration}): {srv.issuer}{REGISTRATION_PATH} (RFC 7591).")
    if srv.fetch_policy.allowed_networks:
        print("WARNING: --fetch-allow-network: the server fetches documents from "
              f"{', '.join(map(str, srv.fetch_policy.allowed_networks))} for anyone who "
              "names them; never an internal network in production.")  # fmt: skip
    print("Press Ctrl-C to stop.", flush=True)
    log_in_background()
    # Ctrl-C and SIGTERM both stop cleanly, even where a parent shell left SIGINT ignored.
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _stop)
    try:
        if args.workers > 1:
            serve_workers(srv, args.host, args.port, args.workers)
        else:
            purge_forever(srv)
            serve(srv.wsgi, args.host, args.port)
    except KeyboardInterrupt:
        pass
    except OSError as err:
        logging.shutdown()  # what was logged first comes first
        print(f"codeflow: cannot serve on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 1
    print("codeflow: stopped.")
    return 0


if __name__ == "__main__":
    # `python codeflow.py`: let `import codeflow` (the storage package does it) find this
    # module rather than load a second copy with its own classes.
    sys.modules.setdefault("codeflow", sys.modules[__name__])
    sys.exit(main())

