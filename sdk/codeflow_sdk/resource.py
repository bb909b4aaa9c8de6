"""The resource server: accept only requests with a valid bearer access token.

``BearerValidator`` checks RFC 9068 JWT access tokens locally (the provider's JWKS,
iss, aud, exp, scope) and opaque ones through RFC 7662 introspection, with a short
cache. A token bound to a DPoP key (``cnf.jkt``, RFC 9449 §6) is accepted only with the
DPoP scheme and a proof of that key for this request (§7). ``require_bearer`` (WSGI
middleware) and ``BottleBearer`` (a bottle plugin) put it in front of an application
and answer failures as RFC 6750 §3 says: 401 with ``WWW-Authenticate: Bearer`` (``DPoP``
for DPoP's failures, RFC 9449 §7.1), 403 ``insufficient_scope``, 400 ``invalid_request``.

A validator made with ``resource=`` (its RFC 8707 resource indicator) accepts only tokens
whose ``aud`` names it, and both helpers then serve its RFC 9728 protected-resource
metadata at ``/.well-known/oauth-protected-resource[/path]`` and point clients to it from
every 401 (``resource_metadata``, RFC 9728 §5.1).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import re
import threading
import time
import urllib.parse
import wsgiref.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import jwt

from ._wire import (
    JWKS_CACHE_SECONDS,
    JWKS_REFETCH_INTERVAL,
    LEEWAY,
    TIMEOUT,
    Form,
    Provider,
    audiences,
    check_times,
    is_number,
    post_authenticated,
    resource_metadata_url,
    split_scope,
)
from .dpop import DPOP_ALGS, ReplayCache, check_proof
from .errors import (
    InsufficientScopeError,
    InvalidDPoPProofError,
    InvalidRequestError,
    InvalidTokenError,
    OAuthError,
    TokenError,
)

__all__ = [
    "ENVIRON_KEY",
    "AccessToken",
    "BearerValidator",
    "BottleBearer",
    "bearer_token",
    "require_bearer",
]

log = logging.getLogger("codeflow_sdk")

ENVIRON_KEY = "codeflow.token"  # where the middleware and the plugin put the AccessToken
# RFC 9068 §4: resource servers "MUST verify that the typ header value is at+jwt or
# application/at+jwt and reject tokens carrying any other type value".
JWT_ACCESS_TOKEN_TYPES = ("at+jwt", "application/at+jwt")
INTROSPECTION_CACHE_SECONDS = 30  # how stale a revocation may go unnoticed
MAX_CACHE_ENTRIES = 4096
# RFC 6750 §2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
# RFC 6750 §3: error_description and scope use %x20-21 / %x23-5B / %x5D-7E only.
_NOT_QUOTABLE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


@dataclass(frozen=True)
class AccessToken:
    """A validated access token: who it is for, which client holds it, what it allows."""

    sub: str | None
    client_id: str | None
    scopes: tuple[str, ...]
    claims: dict[str, Any] = field(repr=False)  # the JWT's claims or the introspection body
    expires_at: float | None
    source: str  # "jwt" (RFC 9068, checked locally) or "introspection" (RFC 7662)
    # RFC 9449 §6: the thumbprint of the DPoP key the token is bound to (cnf.jkt), if any.
    jkt: str | None = None

    def has_scopes(self, scopes: str | Iterable[str]) -> bool:
        return set(split_scope(scopes)) <= set(self.scopes)


class DPoPRequired(InvalidTokenError):
    """RFC 9449 §7.2: a DPoP-bound token sent as a Bearer token (answered with a DPoP
    challenge), or a token not bound to any key sent with the DPoP scheme."""


class BearerValidator:
    """Validate bearer access tokens issued by ``issuer`` for this resource server.

    ``audience`` (the identifier the provider puts in ``aud`` for this API) turns on
    local validation of JWT access tokens; ``introspection_client_id`` and
    ``introspection_client_secret`` (a confidential client of the provider) turn on
    introspection of opaque ones. At least one is needed. ``required_scopes`` apply to
    every token; ``validate`` may ask for more. DPoP-bound tokens (RFC 9449) need a proof
    of their key: ``validate(..., scheme="DPoP", proof=..., method=..., url=...)``;
    ``replay_cache`` remembers the proofs seen (one per validator by default, in this
    process: see ReplayCache).

    ``resource``: this API's resource indicator (RFC 8707 §2, the http(s) URL clients
    name in ``resource``); it is then the audience, which every token must carry in
    ``aud``, JWT or introspected (RFC 9068 §4, RFC 7662 §2.2), and ``metadata()`` is its
    RFC 9728 protected-resource metadata, with ``scopes_supported`` and ``resource_name``.
    """

    def __init__(
        self,
        issuer: str,
        audience: str | None = None,
        introspection_client_id: str | None = None,
        introspection_client_secret: str | None = None,
        required_scopes: str | Iterable[str] = (),
        cache_seconds: float = INTROSPECTION_CACHE_SECONDS,
        *,
        clock: Callable[[], float] = time.time,
        leeway: float = LEEWAY,
        algorithms: Iterable[str] | None = None,
        timeout: float = TIMEOUT,
        jwks_cache_seconds: float = JWKS_CACHE_SECONDS,
        jwks_refetch_interval: float = JWKS_REFETCH_INTERVAL,
        resource: str | None = None,
        scopes_supported: str | Iterable[str] = (),
        resource_name: str | None = None,
        replay_cache: ReplayCache | None = None,
    ) -> None:
        if resource is not None:
            self.metadata_url: str | None = resource_metadata_url(resource)
            if audience not in (None, resource):
                raise ValueError("BearerValidator: the audience of a resource is its URI")
            audience = resource
        else:
            self.metadata_url = None
        self.resource = resource
        self.scopes_supported = split_scope(scopes_supported)
        self.resource_name = resource_name
        if audience is None and introspection_client_id is None:
            raise ValueError(
                "BearerValidator needs audience= (to check JWT access tokens) or "
                "introspection_client_id= (to introspect opaque ones), or both"
            )
        self.issuer = issuer
        self.audience = audience
        self.introspection_client_id = introspection_client_id
        self.introspection_client_secret = introspection_client_secret
        self.required_scopes = split_scope(required_scopes)
        self.cache_seconds = cache_seconds
        self.clock = clock
        self.leeway = leeway
        self.algorithms = tuple(algorithms) if algorithms is not None else None
        self.timeout = timeout
        self.provider = Provider(
            issuer,
            clock=clock,
            timeout=timeout,
            jwks_cache_seconds=jwks_cache_seconds,
            jwks_refetch_interval=jwks_refetch_interval,
        )
        self.replay_cache = replay_cache if replay_cache is not None else ReplayCache()
        self._cache: dict[str, tuple[float, AccessToken]] = {}
        self._cache_lock = threading.Lock()

    def validate(
        self,
        token: str,
        scopes: str | Iterable[str] = (),
        *,
        scheme: str = "Bearer",
        proof: str | None = None,
        method: str = "GET",
        url: str = "",
    ) -> AccessToken:
        """Return the validated token, or raise InvalidTokenError (401) or
        InsufficientScopeError (403). TokenError or DiscoveryError mean the provider
        could not be asked, not that the token is bad.

        ``scheme`` is the Authorization scheme the token came with. RFC 9449 §7.1: with
        ``DPoP``, ``proof`` is the request's DPoP header, checked against its ``method``
        and ``url`` (as the client addressed it) and the key the token is bound to
        (InvalidDPoPProofError); a DPoP-bound token sent as ``Bearer`` is refused (§7.2).
        """
        if not isinstance(token, str) or not _B64TOKEN.fullmatch(token):
            raise InvalidTokenError("The access token is malformed.")
        if self.audience is not None and _is_jws(token):
            record = self._validate_jwt(token)
        elif self.introspection_client_id is not None:
            record = self._introspect(token)
        else:
            raise InvalidTokenError("The access token is not a JWT access token.")
        if scheme.lower() == "dpop":
            if record.jkt is None:
                raise DPoPRequired("The access token is not DPoP-bound: send it as Bearer.")
            check_proof(
                proof, method=method, url=url, access_token=token, jkt=record.jkt,
                now=self.clock(), replay=self.replay_cache,
            )  # fmt: skip
        elif record.jkt is not None:
            # RFC 9449 §7.2: "the resource server MUST NOT grant access to the resource
            # unless a DPoP proof is received" for a DPoP-bound token.
            raise DPoPRequired("The access token is DPoP-bound: send it with the DPoP scheme.")
        needed = self.required_scopes + tuple(
            s for s in split_scope(scopes) if s not in self.required_scopes
        )
        missing = [s for s in needed if s not in record.scopes]
        if missing:
            raise InsufficientScopeError(
                f"The access token lacks the scope {' '.join(missing)}.", scope=" ".join(needed)
            )
        return record

    # -- JWT access tokens: RFC 9068 §4 ----------------------------------------

    def _validate_jwt(self, token: str) -> AccessToken:
        algs = self.algorithms or self.provider.signing_algs()
        _, claims = self.provider.verify(
            token, InvalidTokenError, algorithms=algs, typs=JWT_ACCESS_TOKEN_TYPES
        )
        # RFC 9068 §4: "The issuer identifier for the authorization server ... MUST
        # exactly match the value of the iss claim."
        if claims.get("iss") != self.issuer:
            raise InvalidTokenError("The access token was issued by another issuer.")
        # RFC 9068 §4: "The resource server MUST validate that the aud claim contains a
        # resource indicator value corresponding to an identifier the resource server
        # expects for itself. The JWT access token MUST be rejected if aud does not
        # contain a resource indicator of the current resource server as a valid audience."
        if self.audience not in audiences(claims, InvalidTokenError):
            raise InvalidTokenError("The access token is for another audience.")
        # RFC 9068 §4: "The current time MUST be before the time represented by the exp
        # claim."
        check_times(claims, self.clock(), self.leeway, InvalidTokenError)
        # RFC 9068 §2.2: sub and client_id are REQUIRED.
        sub, client_id = claims.get("sub"), claims.get("client_id")
        if not isinstance(sub, str) or not isinstance(client_id, str):
            raise InvalidTokenError("The access token has no sub or client_id.")
        scope = claims.get("scope", "")
        return AccessToken(
            sub=sub,
            client_id=client_id,
            scopes=split_scope(scope if isinstance(scope, str) else ""),
            claims=claims,
            expires_at=float(claims["exp"]),
            source="jwt",
            jkt=_confirmation(claims),
        )

    # -- Opaque tokens: RFC 7662 -------------------------------------------------

    def _introspect(self, token: str) -> AccessToken:
        key = hashlib.sha256(token.encode("ascii")).hexdigest()
        now = self.clock()
        with self._cache_lock:
            hit = self._cache.get(key)
        if hit is not None and now < hit[0]:
            return hit[1]
        # RFC 7662 §2.1: token REQUIRED, token_type_hint OPTIONAL; the caller is
        # authenticated (§2.1: "the endpoint MUST also require some form of authorization").
        form: Form = {"token": token, "token_type_hint": "access_token"}
        resp = post_authenticated(
            self.provider, "introspection_endpoint",
            self.introspection_client_id or "", self.introspection_client_secret, form,
            timeout=self.timeout, what="introspection endpoint",
        )  # fmt: skip
        body = resp.json_object(TokenError, "introspection response")
        # RFC 7662 §2.2: active is REQUIRED; false for an unknown, expired or revoked token.
        if body.get("active") is not True:
            raise InvalidTokenError("The access token is not active (expired or revoked).")
        # RFC 7662 §2.2 token_type: a refresh token is not an access token; RFC 9449 §6.2:
        # a DPoP-bound one is "DPoP".
        token_type = body.get("token_type")
        if isinstance(token_type, str) and token_type.lower() not in (
            "bearer", "access_token", "dpop"
        ):  # fmt: skip
            raise InvalidTokenError("The token is not an access token.")
        if "iss" in body and body["iss"] != self.issuer:
            raise InvalidTokenError("The access token was issued by another issuer.")
        # RFC 7662 §2.2 aud; RFC 8707: a resource requires its own name there, a bare
        # audience only when the provider says one.
        if self.audience is not None and ("aud" in body or self.resource is not None):
            if self.audience not in audiences(body, InvalidTokenError):
                raise InvalidTokenError("The access token is for another audience.")
        exp = body.get("exp")
        if is_number(exp) and now >= exp + self.leeway:
            raise InvalidTokenError("The access token has expired.")
        scope, sub, client_id = body.get("scope"), body.get("sub"), body.get("client_id")
        record = AccessToken(
            sub=sub if isinstance(sub, str) else None,
            client_id=client_id if isinstance(client_id, str) else None,
            scopes=split_scope(scope if isinstance(scope, str) else ""),
            claims=body,
            expires_at=float(exp) if is_number(exp) else None,
            source="introspection",
            jkt=_confirmation(body),
        )
        # RFC 9449 §6.2: a DPoP-bound token's introspection names its key in cnf.jkt; one
        # said to be DPoP without it could only be taken as a Bearer token, unbound.
        if record.jkt is None and isinstance(token_type, str) and token_type.lower() == "dpop":
            raise InvalidTokenError("The token is DPoP-bound, but its introspection names no "
                                    "key (cnf.jkt) to check a proof against.")  # fmt: skip
        until = now + self.cache_seconds
        if record.expires_at is not None:
            until = min(until, record.expires_at)
        with self._cache_lock:
            if len(self._cache) >= MAX_CACHE_ENTRIES:
                self._cache = {k: v for k, v in self._cache.items() if now < v[0]}
                while len(self._cache) >= MAX_CACHE_ENTRIES:
                    del self._cache[next(iter(self._cache))]
            self._cache[key] = (until, record)
        return record


    # -- Protected-resource metadata: RFC 9728 §2 ----------------------------------

    @property
    def metadata_path(self) -> str | None:
        """The path the metadata is served at (RFC 9728 §3.1), if this is a resource."""
        if self.metadata_url is None:
            return None
        return urllib.parse.urlsplit(self.metadata_url).path

    def metadata(self) -> dict[str, Any]:
        """RFC 9728 §2: resource (REQUIRED), authorization_servers, scopes_supported,
        bearer_methods_supported (the Authorization header only: RFC 6750 §2.1),
        resource_name."""
        if self.resource is None:
            raise ValueError("protected-resource metadata needs BearerValidator(resource=...)")
        body: dict[str, Any] = {
            "resource": self.resource,
            "authorization_servers": [self.issuer],
            "bearer_methods_supported": ["header"],
        }
        if self.scopes_supported:
            body["scopes_supported"] = list(self.scopes_supported)
        if self.resource_name:
            body["resource_name"] = self.resource_name
        return body


def _confirmation(claims: dict[str, Any]) -> str | None:
    """RFC 9449 §6: the ``jkt`` of a token's ``cnf`` (RFC 7800 §3.1), if it is bound."""
    cnf = claims.get("cnf")
    if cnf is None:
        return None
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    if not isinstance(jkt, str) or not jkt:
        # A confirmation we do not understand binds the token to something we cannot check.
        raise InvalidTokenError("The access token's cnf has no jkt this server can check.")
    return jkt


def _is_jws(token: str) -> bool:
    """RFC 7515 §7.1: three base64url parts, the first a JSON header with an alg."""
    if token.count(".") != 2:
        return False
    try:
        return "alg" in jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return False


###############################################################################
# RFC 6750: reading the token and answering failures ##########################
###############################################################################


def bearer_token(authorization: str | None) -> str | None:
    """RFC 6750 §2.1: the token of an ``Authorization: Bearer <token>`` header, or None
    when the request carries no bearer credentials at all."""
    presented = _presented(authorization)
    return presented[1] if presented is not None and presented[0] == "Bearer" else None


def _presented(authorization: str | None) -> tuple[str, str] | None:
    """The scheme ("Bearer" or "DPoP", RFC 9449 §7.1) and token of an Authorization
    header; None without one of those schemes."""
    if not authorization:
        return None
    scheme, _, rest = authorization.strip().partition(" ")
    if scheme.lower() not in ("bearer", "dpop"):
        return None
    scheme = "DPoP" if scheme.lower() == "dpop" else "Bearer"
    token = rest.strip()
    if not _B64TOKEN.fullmatch(token):
        raise InvalidRequestError(f"The Authorization header is not '{scheme} <token>'.")
    return scheme, token


def _quoted(value: str) -> str:
    return '"' + _NOT_QUOTABLE.sub("", value) + '"'


def challenge(
    err: OAuthError | None,
    realm: str,
    resource_metadata: str | None = None,
    scope: str = "",
    scheme: str = "Bearer",
) -> str:
    """The RFC 6750 §3 ``WWW-Authenticate`` value for ``err`` (None: no token was sent);
    a DPoP challenge (RFC 9449 §7.1, with ``algs``) for a request with the DPoP scheme
    and for DPoP's own failures.

    RFC 6750 §3.1: "If the request lacks any authentication information (e.g., the
    client was unaware that authentication is necessary or attempted using an
    unsupported authentication method), the resource server SHOULD NOT include an
    error code or other error information." RFC 9728 §5.1: ``resource_metadata``, the
    URL of the resource's metadata, tells the client where to find its authorization
    server; with it, a 401 names the ``scope`` the request needs (RFC 6750 §3: the scope
    attribute "MAY" be in any challenge), which is what an MCP client asks for.
    """
    if isinstance(err, InvalidDPoPProofError | DPoPRequired):
        scheme = "DPoP"
    parts = [f"realm={_quoted(realm)}"]
    if scheme == "DPoP":
        parts.append(f"algs={_quoted(' '.join(DPOP_ALGS))}")
    if resource_metadata is not None:
        parts.append(f"resource_metadata={_quoted(resource_metadata)}")
    if err is not None:
        parts.append(f"error={_quoted(err.error)}")
        if err.description:
            parts.append(f"error_description={_quoted(err.description)}")
    if isinstance(err, InsufficientScopeError) and err.scope:
        parts.append(f"scope={_quoted(err.scope)}")
    elif resource_metadata is not None and scope:
        parts.append(f"scope={_quoted(scope)}")
    return f"{scheme} " + ", ".join(parts)


def error_response(
    err: OAuthError | None,
    realm: str,
    resource_metadata: str | None = None,
    scope: str = "",
    scheme: str = "Bearer",
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, JSON body) for a refused request."""
    if err is None:
        status, body = 401, {"error_description": "A bearer access token is required."}
    else:
        status = err.status or 401
        body = {"error": err.error, "error_description": err.description}
    headers = {
        "Content-Type": "application/json",
        "Cache-Control": "no-store",
        "WWW-Authenticate": challenge(err, realm, resource_metadata, scope, scheme),
    }
    return status, headers, json.dumps(body).encode()


def metadata_response(validator: BearerValidator) -> tuple[int, dict[str, str], bytes]:
    """RFC 9728 §3.2: the metadata as application/json with 200. Public, like a
    provider's discovery document: any origin may read it (browser-based clients)."""
    headers = {
        "Content-Type": "application/json",
        "Cache-Control": "max-age=300",
        "Access-Control-Allow-Origin": "*",
    }
    return 200, headers, json.dumps(validator.metadata()).encode()


_UNAVAILABLE = (
    503,
    {"Content-Type": "application/json", "Cache-Control": "no-store", "Retry-After": "5"},
    b'{"error": "temporarily_unavailable", '
    b'"error_description": "The access token cannot be checked right now."}',
)

_BEARER_ERRORS = (
    InvalidRequestError, InvalidTokenError, InsufficientScopeError, InvalidDPoPProofError
)  # fmt: skip


def request_url(environ: dict[str, Any], base_url: str | None) -> str:
    """The URL a request was sent to, without query, as the client addressed it (RFC 9449
    §4.3 #9 htu): ``base_url`` (the app's public URL, behind a proxy) and the path within
    the app; else the request's own scheme, Host and path."""
    if base_url is None:
        return wsgiref.util.request_uri(environ, include_query=False)
    return base_url.rstrip("/") + urllib.parse.quote(environ.get("PATH_INFO", ""))


def _check(
    validator: BearerValidator,
    environ: dict[str, Any],
    scopes: tuple[str, ...],
    realm: str,
    base_url: str | None = None,
) -> AccessToken | tuple[int, dict[str, str], bytes]:
    """The validated token, or the response that refuses the request."""
    needed = " ".join(dict.fromkeys((*validator.required_scopes, *scopes)))
    scheme = "Bearer"
    try:
        presented = _presented(environ.get("HTTP_AUTHORIZATION"))
        if presented is None:
            return error_response(None, realm, validator.metadata_url, needed)
        scheme, token = presented
        return validator.validate(
            token, scopes, scheme=scheme, proof=environ.get("HTTP_DPOP"),
            method=environ.get("REQUEST_METHOD", "GET"), url=request_url(environ, base_url),
        )  # fmt: skip
    except _BEARER_ERRORS as err:
        return error_response(err, realm, validator.metadata_url, needed, scheme)
    except OAuthError:
        # The provider could not be asked (introspection or JWKS): neither the token's
        # fault nor a reason to let it through.
        log.warning("codeflow_sdk: cannot validate the access token", exc_info=True)
        return _UNAVAILABLE


_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            405: "Method Not Allowed", 503: "Service Unavailable"}  # fmt: skip


def require_bearer(
    app: Callable[..., Iterable[bytes]],
    validator: BearerValidator,
    scopes: str | Iterable[str] = (),
    *,
    realm: str = "api",
    base_url: str | None = None,
) -> Callable[..., Iterable[bytes]]:
    """WSGI middleware: pass only requests whose bearer token is valid and has ``scopes``;
    the app finds the AccessToken at ``environ["codeflow.token"]``. For a validator with
    a ``resource``, GET of its metadata path answers the RFC 9728 metadata, no token
    needed. ``base_url``: the app's URL as clients reach it, which DPoP proofs name (RFC
    9449 §4.3 #9), when a proxy in front changes the scheme or host; default: the
    request's."""
    needed = split_scope(scopes)

    def middleware(
        environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        result: AccessToken | tuple[int, dict[str, str], bytes]
        if validator.metadata_path is not None and path == validator.metadata_path:
            if environ.get("REQUEST_METHOD") in ("GET", "HEAD"):
                result = metadata_response(validator)
            else:
                result = 405, {"Allow": "GET, HEAD", "Content-Type": "text/plain"}, b""
        else:
            result = _check(validator, environ, needed, realm, base_url)
        if isinstance(result, AccessToken):
            environ[ENVIRON_KEY] = result
            return app(environ, start_response)
        status, headers, body = result
        headers = {**headers, "Content-Length": str(len(body))}
        start_response(f"{status} {_REASONS[status]}", list(headers.items()))
        return [body]

    return middleware


class BottleBearer:
    """A bottle plugin (plugin API 2) that requires a valid bearer token on every route.

    Routes add scopes with ``@app.get("/notes", scope="notes:read")`` and opt out with
    ``bearer=False``. A callback with a parameter named ``token`` (``keyword``)
    receives the AccessToken; it is also at ``bottle.request.environ["codeflow.token"]``.
    Installed with a validator that has a ``resource``, it adds the route of its RFC 9728
    metadata.
    ``base_url``: as for ``require_bearer``.
    """

    name = "codeflow_bearer"
    api = 2

    def __init__(
        self,
        validator: BearerValidator,
        scopes: str | Iterable[str] = (),
        *,
        realm: str = "api",
        keyword: str = "token",
        base_url: str | None = None,
    ) -> None:
        self.validator = validator
        self.scopes = split_scope(scopes)
        self.realm = realm
        self.keyword = keyword
        self.base_url = base_url

    def setup(self, app: Any) -> None:
        """Bottle calls this on ``app.install(plugin)``: serve the metadata (RFC 9728 §3)."""
        import bottle  # a dependency of the bottle helper only

        path = self.validator.metadata_path
        if path is None:
            return

        def metadata() -> Any:
            status, headers, body = metadata_response(self.validator)
            return bottle.HTTPResponse(body, status, headers)

        app.route(path, ["GET"], metadata, bearer=False)

    def apply(self, callback: Callable[..., Any], route: Any) -> Callable[..., Any]:
        import bottle  # a dependency of the bottle helper only

        if route.config.get("bearer", True) is False:
            return callback
        needed = self.scopes + split_scope(route.config.get("scope"))
        # Not route.get_callback_args(): bottle 0.13's unwrapping loops forever on a
        # closure whose cells hold no callable.
        try:
            inject = self.keyword in inspect.signature(route.callback).parameters
        except (TypeError, ValueError):
            inject = False

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            environ = bottle.request.environ
            result = _check(self.validator, environ, needed, self.realm, self.base_url)
            if not isinstance(result, AccessToken):
                status, headers, body = result
                raise bottle.HTTPResponse(body, status, headers)
            bottle.request.environ[ENVIRON_KEY] = result
            if inject:
                kwargs[self.keyword] = result
            return callback(*args, **kwargs)

        return functools.update_wrapper(wrapper, callback)
