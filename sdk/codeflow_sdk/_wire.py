"""What the client and the resource server share: HTTP, client authentication, and one
provider's metadata and keys.

Nothing here knows any provider's internals: the metadata comes from OIDC Discovery 1.0
(or RFC 8414), the keys from the RFC 7517 JWK Set the metadata names.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.message import Message
from typing import Any, TypeGuard

import jwt

from .errors import DiscoveryError, IssuerMismatch, OAuthError, TokenError

USER_AGENT = "codeflow-sdk"
MAX_RESPONSE = 1024 * 1024  # no metadata, key set or token response needs more
TIMEOUT = 10.0  # seconds, per HTTP request
LEEWAY = 60  # seconds of clock skew tolerated on exp, iat, nbf and auth_time
JWKS_CACHE_SECONDS = 3600  # a fetched key set is trusted this long before a routine refetch
# A token with an unknown kid triggers a refetch at most this often, so that a stream of
# tokens with made-up kids cannot make us hammer the provider's jwks_uri.
JWKS_REFETCH_INTERVAL = 10.0
OIDC_WELL_KNOWN = "/.well-known/openid-configuration"
OAUTH_WELL_KNOWN = "/.well-known/oauth-authorization-server"
RESOURCE_WELL_KNOWN = "/.well-known/oauth-protected-resource"  # RFC 9728 §3
Form = dict[str, str | list[str]]  # a request body; a list is a repeated parameter
# RFC 7518 §3.1: "none" and the HMAC algorithms are never acceptable from a provider
# whose keys are public: HS* would verify with a public key used as a shared secret.
FORBIDDEN_ALGS = frozenset({"none", "HS256", "HS384", "HS512"})
# OIDC Core §3.1.3.6 at_hash: the hash of the JWS alg's hash function.
ALG_HASHES = {
    "RS256": hashlib.sha256, "PS256": hashlib.sha256, "ES256": hashlib.sha256,
    "RS384": hashlib.sha384, "PS384": hashlib.sha384, "ES384": hashlib.sha384,
    "RS512": hashlib.sha512, "PS512": hashlib.sha512, "ES512": hashlib.sha512,
    "EdDSA": hashlib.sha512,
}  # fmt: skip


###############################################################################
# HTTP ########################################################################
###############################################################################


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Back-channel endpoints answer directly; a redirect is an error, not a hop."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


@dataclass(frozen=True)
class Response:
    status: int
    headers: Message
    body: bytes

    def json_object(self, failure: type[OAuthError], what: str) -> dict[str, Any]:
        """The body as a JSON object, or ``failure``."""
        try:
            value = json.loads(self.body)
        except ValueError:
            raise failure(f"The {what} is not JSON (HTTP {self.status}).") from None
        if not isinstance(value, dict):
            raise failure(f"The {what} is not a JSON object.")
        return value


def request(
    method: str,
    url: str,
    failure: type[OAuthError],
    *,
    form: Mapping[str, str | list[str]] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> Response:
    """One HTTP exchange; any status is returned, a transport failure raises ``failure``."""
    # A list is a repeated parameter (RFC 8707 §2: several resource parameters).
    data = urllib.parse.urlencode(form, doseq=True).encode("ascii") if form is not None else None
    all_headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})}
    if data is not None:
        all_headers["Content-Type"] = "application/x-www-form-urlencoded"
    req = urllib.request.Request(url, data=data, headers=all_headers, method=method)  # noqa: S310 -- URLs come from the configured issuer and its metadata
    try:
        try:
            with _opener.open(req, timeout=timeout) as resp:
                return Response(resp.status, resp.headers, _read(resp, url, failure))
        except urllib.error.HTTPError as err:
            with err:
                body = _read(err, url, failure) if err.fp is not None else b""
                return Response(err.code, err.headers, body)
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise failure(f"Could not reach {url}: {reason}", error="temporarily_unavailable") from exc


def _read(resp: Any, url: str, failure: type[OAuthError]) -> bytes:
    body: bytes = resp.read(MAX_RESPONSE + 1)
    if len(body) > MAX_RESPONSE:
        raise failure(f"The response from {url} is larger than {MAX_RESPONSE} bytes.")
    return body


def error_from(resp: Response, failure: type[OAuthError], what: str) -> OAuthError:
    """RFC 6749 §5.2: an error response's ``error`` and ``error_description``, as ``failure``."""
    try:
        body = json.loads(resp.body)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        description = body.get("error_description")
        return failure(
            description if isinstance(description, str) else "",
            error=body["error"],
            status=resp.status,
            uri=body.get("error_uri") if isinstance(body.get("error_uri"), str) else None,
        )
    return failure(f"The {what} answered HTTP {resp.status}.", status=resp.status)


def authenticate(
    metadata: Mapping[str, Any],
    endpoint: str,
    client_id: str,
    client_secret: str | None,
    form: Form,
    headers: dict[str, str],
) -> None:
    """Add client authentication to a back-channel request (RFC 6749 §2.3.1).

    With a secret: HTTP Basic (client_secret_basic, RFC 8414 §2's default), or the body
    (client_secret_post) if the provider lists only that. Without one the client is
    public, and identifies itself with ``client_id`` in the body (RFC 6749 §3.2.1).
    """
    if client_secret is None:
        form["client_id"] = client_id
        return
    methods = metadata.get(f"{endpoint}_auth_methods_supported")
    if (
        isinstance(methods, list)
        and "client_secret_basic" not in methods
        and "client_secret_post" in methods
    ):
        form["client_id"], form["client_secret"] = client_id, client_secret
        return
    # RFC 6749 §2.3.1: "The client identifier is encoded using the
    # application/x-www-form-urlencoded encoding algorithm ... and the encoded value is
    # used as the username; the client password is encoded using the same algorithm".
    pair = f"{urllib.parse.quote_plus(client_id)}:{urllib.parse.quote_plus(client_secret)}"
    headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def post_authenticated(
    provider: Provider,
    endpoint: str,
    client_id: str,
    client_secret: str | None,
    form: Form,
    *,
    timeout: float,
    what: str,
) -> Response:
    """POST ``form`` to the provider's ``endpoint`` (a metadata name such as
    ``"token_endpoint"``) with client authentication (``authenticate``). An answer other
    than HTTP 200 raises the TokenError its body describes (``error_from``)."""
    headers: dict[str, str] = {}
    authenticate(provider.metadata(), endpoint, client_id, client_secret, form, headers)
    url = provider.endpoint(endpoint)
    resp = request("POST", url, TokenError, form=form, headers=headers, timeout=timeout)
    if resp.status != 200:
        raise error_from(resp, TokenError, what)
    return resp


###############################################################################
# Claims ######################################################################
###############################################################################


def is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def audiences(claims: Mapping[str, Any], failure: type[OAuthError]) -> list[str]:
    """RFC 7519 §4.1.3: aud is one string or an array of strings."""
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
        return aud
    raise failure("The token has no valid aud claim.")


def check_times(
    claims: Mapping[str, Any], now: float, leeway: float, failure: type[OAuthError]
) -> None:
    """RFC 7519 §4.1.4-§4.1.6: exp and iat are required numbers; the token must not be
    expired, nor issued (or valid from) in the future, give or take ``leeway``."""
    exp, iat, nbf = claims.get("exp"), claims.get("iat"), claims.get("nbf")
    if not is_number(exp):
        raise failure("The token has no valid exp claim.")
    if not is_number(iat):
        raise failure("The token has no valid iat claim.")
    # RFC 7519 §4.1.4: "the current date/time MUST be before the expiration date/time"
    if now >= exp + leeway:
        raise failure("The token has expired.")
    if iat > now + leeway:
        raise failure("The token was issued in the future (iat); check the clocks.")
    if nbf is not None and (not is_number(nbf) or nbf > now + leeway):
        raise failure("The token is not valid yet (nbf).")


def resource_metadata_url(resource: str) -> str:
    """RFC 9728 §3.1: where a resource's metadata is: the well-known suffix "inserted
    between the host component and the path and/or query components", after "any
    terminating slash (/) following the host component" is removed."""
    parts = urllib.parse.urlsplit(resource)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.fragment:
        raise ValueError(f"a resource must be an http(s) URL without fragment: {resource!r}")
    path = "" if parts.path == "/" else parts.path
    return urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc, RESOURCE_WELL_KNOWN + path, parts.query, "")
    )


def split_scope(scope: str | Iterable[str] | None) -> tuple[str, ...]:
    """RFC 6749 §3.3: scope is a space-delimited list; an iterable is taken as is."""
    if scope is None:
        return ()
    if isinstance(scope, str):
        return tuple(s for s in scope.split(" ") if s)
    return tuple(scope)


###############################################################################
# The provider: metadata and keys ##############################################
###############################################################################


class Provider:
    """One issuer's metadata (fetched once) and signing keys (cached, refetched when a
    token names a key we do not have). Thread-safe: one instance may serve every
    request of an application."""

    def __init__(
        self,
        issuer: str,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = TIMEOUT,
        jwks_cache_seconds: float = JWKS_CACHE_SECONDS,
        jwks_refetch_interval: float = JWKS_REFETCH_INTERVAL,
    ) -> None:
        self.issuer = issuer
        self.clock = clock
        self.timeout = timeout
        self.jwks_cache_seconds = jwks_cache_seconds
        self.jwks_refetch_interval = jwks_refetch_interval
        self._lock = threading.RLock()  # the key lookup reads the metadata under it
        self._metadata: dict[str, Any] | None = None
        self._keys: list[dict[str, Any]] | None = None
        self._keys_until = 0.0
        self._last_refetch: float | None = None

    # -- Discovery -----------------------------------------------------------

    def metadata(self) -> dict[str, Any]:
        """The provider's metadata, fetched on first use and kept for this instance."""
        with self._lock:
            if self._metadata is None:
                self._metadata = self._discover()
            return self._metadata

    def _discover(self) -> dict[str, Any]:
        # OIDC Discovery 1.0 §4: "any terminating / MUST be removed before appending
        # /.well-known/openid-configuration".
        base = self.issuer.rstrip("/")
        resp = request("GET", base + OIDC_WELL_KNOWN, DiscoveryError, timeout=self.timeout)
        if resp.status == 404:
            # RFC 8414 §3: a plain OAuth server; the well-known part goes before the path.
            parts = urllib.parse.urlsplit(base)
            url = f"{parts.scheme}://{parts.netloc}{OAUTH_WELL_KNOWN}{parts.path}"
            resp = request("GET", url, DiscoveryError, timeout=self.timeout)
        if resp.status != 200:
            raise DiscoveryError(
                f"The discovery document of {self.issuer} answered HTTP {resp.status}.",
                status=resp.status,
            )
        metadata = resp.json_object(DiscoveryError, "discovery document")
        # OIDC Discovery 1.0 §4.3: "The issuer value returned MUST be identical to the
        # Issuer URL that was used as the prefix to /.well-known/openid-configuration to
        # retrieve the configuration information." (RFC 8414 §3.3 says the same.)
        if metadata.get("issuer") != self.issuer:
            raise IssuerMismatch(
                f"The discovery document's issuer {metadata.get('issuer')!r} is not the "
                f"configured issuer {self.issuer!r}."
            )
        return metadata

    def endpoint(self, name: str) -> str:
        """An endpoint URL from the metadata, e.g. ``token_endpoint``."""
        url = self.metadata().get(name)
        if not isinstance(url, str) or not url:
            raise DiscoveryError(f"The provider's metadata has no {name}.")
        return url

    def signing_algs(self, name: str = "id_token_signing_alg_values_supported") -> list[str]:
        """The asymmetric JWS algorithms the provider advertises under ``name``.

        OIDC Discovery 1.0 §3 makes id_token_signing_alg_values_supported REQUIRED;
        RS256 is the default of OIDC Core §15.1 when it is missing.
        """
        algs = self.metadata().get(name)
        if not isinstance(algs, list):
            algs = ["RS256"]
        return [a for a in algs if isinstance(a, str) and a not in FORBIDDEN_ALGS]

    # -- Keys (RFC 7517) -----------------------------------------------------------

    def _fetch_keys(self) -> list[dict[str, Any]]:
        url = self.endpoint("jwks_uri")
        resp = request("GET", url, DiscoveryError, timeout=self.timeout)
        if resp.status != 200:
            raise DiscoveryError(f"The JWKS at {url} answered HTTP {resp.status}.")
        keys = resp.json_object(DiscoveryError, "JWK Set").get("keys")
        if not isinstance(keys, list):
            raise DiscoveryError("The JWK Set has no keys array (RFC 7517 §5).")
        # RFC 7517 §4.2, §4.3: a key meant for something other than verifying is skipped.
        return [
            k
            for k in keys
            if isinstance(k, dict)
            and k.get("use", "sig") == "sig"
            and "verify" in k.get("key_ops", ["verify"])
        ]

    def _find(self, kid: str | None, alg: str, refetch: bool) -> tuple[jwt.PyJWK | None, bool]:
        """The matching key, and whether the key set was (re)fetched to look."""
        with self._lock:
            now = self.clock()
            fetched = refetch or self._keys is None or now >= self._keys_until
            if fetched:
                self._keys = self._fetch_keys()
                self._keys_until = now + self.jwks_cache_seconds
            keys = self._keys or []
        return self._match(keys, kid, alg), fetched

    @staticmethod
    def _match(keys: list[dict[str, Any]], kid: str | None, alg: str) -> jwt.PyJWK | None:
        # OIDC Core §10.1: kid may be left out only when the set holds one key.
        candidates = [k for k in keys if k.get("kid") == kid] if kid is not None else keys
        if kid is None and len(candidates) != 1:
            return None
        for jwk_data in candidates:
            # RFC 7517 §4.4: a key that names its alg is for that alg only.
            if jwk_data.get("alg", alg) != alg:
                continue
            try:
                return jwt.PyJWK(jwk_data, algorithm=alg)
            except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
                continue  # a key of another type, or one this platform cannot use
        return None

    def key(self, kid: str | None, alg: str, failure: type[OAuthError]) -> jwt.PyJWK:
        """The provider's key ``kid`` for ``alg``. An unknown kid refetches the key set
        once (the provider may have rotated its keys, RFC 7517 §5 / OIDC Core §10.1.1),
        at most once per JWKS_REFETCH_INTERVAL."""
        key, fetched = self._find(kid, alg, refetch=False)
        if key is None and not fetched:
            with self._lock:
                now = self.clock()
                due = (
                    self._last_refetch is None
                    or now - self._last_refetch >= self.jwks_refetch_interval
                )
                if due:
                    self._last_refetch = now
            if due:
                key, _ = self._find(kid, alg, refetch=True)
        if key is None:
            raise failure(f"The provider has no {alg} signing key with kid {kid!r}.")
        return key

    def verify(
        self,
        token: str,
        failure: type[OAuthError],
        *,
        algorithms: Iterable[str],
        typs: Iterable[str] | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Verify a JWS signed by the provider; return its (header, claims).

        Claims are not checked here: each caller checks the ones its spec names.
        """
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise failure("The token is not a well-formed JWS.") from None
        alg = header.get("alg")
        allowed = [a for a in algorithms if a not in FORBIDDEN_ALGS]
        if not isinstance(alg, str) or alg not in allowed:
            raise failure(f"The token's alg {alg!r} is not one of {allowed}.")
        if "crit" in header:
            # RFC 7515 §4.1.11: extensions we do not understand make the JWS invalid.
            raise failure("The token uses critical header extensions (crit).")
        if typs is not None:
            typ = header.get("typ")
            # RFC 7515 §4.1.9: media type names are case-insensitive.
            if not isinstance(typ, str) or typ.lower() not in {t.lower() for t in typs}:
                raise failure(f"The token's typ {typ!r} is not one of {sorted(typs)}.")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise failure("The token's kid is not a string.")
        key = self.key(kid, alg, failure)
        try:
            payload = jwt.PyJWS().decode_complete(token, key, algorithms=[alg])["payload"]
        except jwt.PyJWTError:
            raise failure("The token's signature does not verify.") from None
        try:
            claims = json.loads(payload)
        except ValueError:
            raise failure("The token's payload is not JSON.") from None
        if not isinstance(claims, dict):
            raise failure("The token's payload is not a JSON object.")
        return header, claims
