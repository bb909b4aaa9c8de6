"""The relying party: log a user in with the authorization code flow and use the tokens.

``Client.start_login`` builds the authorization request (RFC 6749 §4.1.1, PKCE per
RFC 7636 §4.1-§4.3, OIDC Core §3.1.2.1 nonce); ``Client.finish_login`` checks the
authorization response (state, RFC 9207 ``iss``, errors), redeems the code
(RFC 6749 §4.1.3) and validates the ID token (OIDC Core §3.1.3.7). ``refresh``,
``revoke``, ``userinfo`` and ``client_credentials`` cover RFC 6749 §6, RFC 7009,
OIDC Core §5.3 and RFC 6749 §4.4. With a ``dpop_key`` every token request carries a
DPoP proof, so that the tokens are bound to the key (RFC 9449 §5), and ``userinfo`` and
``request`` present them with proofs (§7), retrying once with the server's nonce (§8, §9).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from ._wire import (
    ALG_HASHES,
    JWKS_CACHE_SECONDS,
    JWKS_REFETCH_INTERVAL,
    LEEWAY,
    TIMEOUT,
    Form,
    Provider,
    Response,
    audiences,
    authenticate,
    check_times,
    error_from,
    is_number,
    post_authenticated,
    request,
    resource_metadata_url,
    split_scope,
)
from .dpop import DPoPKey
from .errors import (
    AuthorizationError,
    DiscoveryError,
    IDTokenError,
    InsufficientScopeError,
    InvalidTokenError,
    IssuerMismatch,
    OAuthError,
    StateMismatch,
    TokenError,
    UserinfoError,
)

__all__ = ["Client", "LoginState", "TokenSet", "resource_metadata"]

# The parameters start_login sets itself; passing them as extras would undo a check.
RESERVED_PARAMS = frozenset({
    "response_type", "client_id", "redirect_uri", "scope", "state", "nonce",
    "code_challenge", "code_challenge_method", "resource", "dpop_jkt",
})  # fmt: skip
# RFC 6750 §3: auth-param = token "=" ( token / quoted-string )
_AUTH_PARAM = re.compile(r'([A-Za-z0-9_\-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _same(a: str, b: str) -> bool:
    """A constant-time string comparison, for values an attacker may probe."""
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


###############################################################################
# Records #####################################################################
###############################################################################


@dataclass(frozen=True)
class LoginState:
    """What a login must remember between ``start_login`` and ``finish_login``.

    Keep it in the user's session (server-side, or in a signed and encrypted cookie):
    ``to_dict()`` gives plain JSON types, ``LoginState.from_dict()`` reads them back.
    """

    state: str  # RFC 6749 §10.12: binds the response to this browser
    nonce: str | None  # OIDC Core §3.1.2.1: binds the ID token to this login
    code_verifier: str  # RFC 7636 §4.1: binds the code to this client instance
    redirect_uri: str  # RFC 6749 §4.1.3: sent again when redeeming the code
    scope: str = ""
    max_age: int | None = None  # OIDC Core §3.1.2.1: checked against auth_time
    # RFC 8707 §2: the resources asked for, space-separated, sent again to the token
    # endpoint (§2.2); "" for none.
    resource: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LoginState:
        """The inverse of ``to_dict``; raises ValueError on anything else."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = data.get(f.name)
            optional = f.name in ("nonce", "max_age")
            wanted = int if f.name == "max_age" else str
            if value is None and optional:
                values[f.name] = None
            elif value is None and f.name == "resource":  # kept by an older version
                values[f.name] = ""
            elif isinstance(value, wanted) and not isinstance(value, bool):
                values[f.name] = value
            else:
                raise ValueError(f"LoginState.from_dict: {f.name} is missing or not {wanted}")
        return cls(**values)


@dataclass(frozen=True)
class TokenSet:
    """A validated token response (RFC 6749 §5.1), with the ID token's claims."""

    access_token: str = field(repr=False)  # tokens are secrets: kept out of logs
    token_type: str
    expires_at: float | None  # from expires_in, on the client's clock
    scope: tuple[str, ...]
    refresh_token: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)
    id_token_claims: dict[str, Any] = field(default_factory=dict)
    response: dict[str, Any] = field(default_factory=dict, repr=False)  # the raw body

    @property
    def sub(self) -> str | None:
        """The user's subject identifier (OIDC Core §2), when there is an ID token."""
        return self.id_token_claims.get("sub")


###############################################################################
# The client ##################################################################
###############################################################################


class Client:
    """An OAuth 2.1 / OpenID Connect client of one provider, found by discovery.

    ``client_secret=None`` makes a public client (PKCE only, RFC 6749 §2.1). ``clock``
    is the time source for every expiry check; tests may pass their own. One
    instance may serve every request of an application: it caches the provider's
    metadata and keys, and keeps no per-login state (that is the ``LoginState``).
    ``dpop_key`` (a ``DPoPKey``) binds the tokens to that key (RFC 9449): keep the key
    as long as the tokens; the client remembers each server's latest DPoP nonce.
    """

    def __init__(
        self,
        issuer: str,
        client_id: str,
        client_secret: str | None = None,
        redirect_uri: str | None = None,
        *,
        clock: Callable[[], float] = time.time,
        leeway: float = LEEWAY,
        timeout: float = TIMEOUT,
        jwks_cache_seconds: float = JWKS_CACHE_SECONDS,
        jwks_refetch_interval: float = JWKS_REFETCH_INTERVAL,
        resource: str | Iterable[str] | None = None,
        dpop_key: DPoPKey | None = None,
    ) -> None:
        self.issuer = issuer
        # RFC 8707 §2: the resources every request names unless a call names others.
        self.resource = _resources(resource)
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uri = redirect_uri
        self.clock = clock
        self.leeway = leeway
        self.timeout = timeout
        self.provider = Provider(
            issuer,
            clock=clock,
            timeout=timeout,
            jwks_cache_seconds=jwks_cache_seconds,
            jwks_refetch_interval=jwks_refetch_interval,
        )
        self.dpop_key = dpop_key
        self._dpop_nonces: dict[str, str] = {}  # origin -> its latest DPoP-Nonce (§8)

    @classmethod
    def for_resource(
        cls,
        resource: str,
        client_id: str,
        client_secret: str | None = None,
        redirect_uri: str | None = None,
        *,
        issuer: str | None = None,
        **options: Any,
    ) -> Client:
        """A client of the authorization server that the protected resource ``resource``
        names in its RFC 9728 metadata (the first of its ``authorization_servers``, or
        ``issuer`` if given, which must be among them), asking tokens for that resource
        (RFC 8707). Raises DiscoveryError when the metadata cannot be had, does not name
        this resource, or names no (or not that) authorization server.

        The resource chooses where its users sign in (RFC 9728 §7, security
        considerations): a client that knows which server it trusts passes ``issuer``,
        and a resource naming another is refused.
        """
        metadata = resource_metadata(resource, timeout=options.get("timeout", TIMEOUT))
        servers = metadata.get("authorization_servers")
        if not isinstance(servers, list) or not all(isinstance(s, str) for s in servers):
            servers = []
        if issuer is not None and issuer not in servers:
            raise DiscoveryError(f"The metadata of {resource} does not name {issuer}.")
        chosen = issuer or (servers[0] if servers else None)
        if chosen is None:
            raise DiscoveryError(f"The metadata of {resource} names no authorization server.")
        return cls(chosen, client_id, client_secret, redirect_uri, resource=resource,
                   **options)  # fmt: skip

    @property
    def metadata(self) -> dict[str, Any]:
        """The provider's discovery document, fetched once (OIDC Discovery 1.0 §4)."""
        return self.provider.metadata()

    # -- The authorization request: RFC 6749 §4.1.1 ---------------------------

    def start_login(
        self,
        scope: str = "openid profile email",
        *,
        redirect_uri: str | None = None,
        resource: str | Iterable[str] | None = None,
        **extra: str | int | None,
    ) -> tuple[str, LoginState]:
        """Return the URL to send the browser to, and the LoginState to keep.

        ``extra`` adds request parameters such as ``prompt``, ``login_hint`` or
        ``max_age`` (OIDC Core §3.1.2.1); ``None`` values are left out. ``resource``:
        the APIs the token is for (RFC 8707 §2.1; default: the Client's).
        """
        redirect_uri = redirect_uri or self.redirect_uri
        if not redirect_uri:
            raise ValueError("start_login needs a redirect_uri (on the Client or the call)")
        reserved = RESERVED_PARAMS & extra.keys()
        if reserved:
            raise ValueError(f"start_login sets {sorted(reserved)} itself")
        # RFC 7636 §4.1: a code_verifier is 43-128 unreserved characters of high entropy;
        # 48 random bytes give 64. §4.2: code_challenge = BASE64URL(SHA256(verifier)).
        code_verifier = secrets.token_urlsafe(48)
        challenge = b64url(hashlib.sha256(code_verifier.encode("ascii")).digest())
        state = secrets.token_urlsafe(24)
        nonce = secrets.token_urlsafe(24) if "openid" in split_scope(scope) else None
        resources = _resources(resource) if resource is not None else self.resource
        params: dict[str, str | list[str]] = {
            "response_type": "code",
            "client_id": self.client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if nonce is not None:
            params["nonce"] = nonce
        if self.dpop_key is not None:
            # RFC 9449 §10: the code is bound to the key, so that only this client's proof
            # redeems it.
            params["dpop_jkt"] = self.dpop_key.thumbprint
        params.update({k: str(v) for k, v in extra.items() if v is not None})
        if resources:
            params["resource"] = list(resources)
        max_age = extra.get("max_age")
        record = LoginState(
            state=state,
            nonce=nonce,
            code_verifier=code_verifier,
            redirect_uri=redirect_uri,
            scope=scope,
            max_age=int(max_age) if max_age is not None else None,
            resource=" ".join(resources),
        )
        return _with_query(self.provider.endpoint("authorization_endpoint"), params), record

    # -- The authorization response: RFC 6749 §4.1.2 --------------------------

    def finish_login(self, callback_url: str, record: LoginState) -> TokenSet:
        """Check the authorization response at ``callback_url`` (the full URL the browser
        came back to, or just its query string), redeem its code, validate the ID token.

        Raises StateMismatch, IssuerMismatch, AuthorizationError (the provider's error
        response), TokenError (the token endpoint's) or IDTokenError.
        """
        params = _callback_params(callback_url)
        # RFC 6749 §10.12: the client "MUST implement CSRF protection for its redirection
        # URI"; state "MUST contain a non-guessable value" bound to the user-agent.
        state = params.get("state")
        if state is None or not _same(state, record.state):
            raise StateMismatch("The response's state is not the one this login sent.")
        # RFC 9207 §2.4: "Clients MUST reject authorization responses without the iss
        # parameter from authorization servers that do support the iss parameter" and, if
        # iss "does not match the expected issuer identifier, clients MUST reject the
        # authorization response and MUST NOT proceed with the authorization grant".
        iss = params.get("iss")
        if iss is None:
            if self.metadata.get("authorization_response_iss_parameter_supported") is True:
                raise IssuerMismatch("The response has no iss, which this provider sends.")
        elif iss != self.issuer:
            raise IssuerMismatch(f"The response comes from {iss!r}, not {self.issuer!r}.")
        if "error" in params:
            # RFC 6749 §4.1.2.1: error REQUIRED, error_description and error_uri OPTIONAL.
            raise AuthorizationError(
                params.get("error_description", ""),
                error=params["error"],
                uri=params.get("error_uri"),
            )
        code = params.get("code")
        if not code:
            raise AuthorizationError("The response has neither a code nor an error.")
        # RFC 6749 §4.1.3 with RFC 7636 §4.5: code, redirect_uri and code_verifier.
        form: Form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": record.redirect_uri,
            "code_verifier": record.code_verifier,
        }
        if record.resource:
            form["resource"] = record.resource.split(" ")  # RFC 8707 §2.2
        body = self._token_request(form)
        tokens = self._token_set(body, split_scope(record.scope))
        if record.nonce is not None and tokens.id_token is None:
            # OIDC Core §3.1.3.3: the token response of an openid request has an id_token.
            raise IDTokenError("The token response has no id_token, though openid was asked.")
        if tokens.id_token is None:
            return tokens
        claims = self.validate_id_token(
            tokens.id_token,
            nonce=record.nonce,
            max_age=record.max_age,
            access_token=tokens.access_token,
        )
        return replace(tokens, id_token_claims=claims)

    # -- The ID token: OIDC Core §3.1.3.7 -------------------------------------

    def validate_id_token(
        self,
        id_token: str,
        *,
        nonce: str | None = None,
        max_age: int | None = None,
        access_token: str | None = None,
        expected_sub: str | None = None,
    ) -> dict[str, Any]:
        """Validate an ID token per OIDC Core §3.1.3.7 and return its claims.

        The signature is checked with the provider's keys (one refetch if its kid is
        unknown), with an alg the provider advertises and never none or HS*.
        """
        algs = self.provider.signing_algs("id_token_signing_alg_values_supported")
        header, claims = self.provider.verify(id_token, IDTokenError, algorithms=algs)
        # §3.1.3.7 2: "The Issuer Identifier for the OpenID Provider ... MUST exactly
        # match the value of the iss (issuer) Claim."
        if claims.get("iss") != self.issuer:
            raise IDTokenError(f"The ID token's iss {claims.get('iss')!r} is not the issuer.")
        # §3.1.3.7 3: "The Client MUST validate that the aud (audience) Claim contains its
        # client_id value registered at the Issuer".
        auds = audiences(claims, IDTokenError)
        if self.client_id not in auds:
            raise IDTokenError("The ID token was issued to another client (aud).")
        azp = claims.get("azp")
        # §3.1.3.7 4: "If the ID Token contains multiple audiences, the Client SHOULD
        # verify that an azp Claim is present"; we require it.
        if len(auds) > 1 and azp is None:
            raise IDTokenError("The ID token has several audiences and no azp.")
        # §3.1.3.7 5: "If an azp (authorized party) Claim is present, the Client SHOULD
        # verify that its client_id is the Claim Value."
        if azp is not None and azp != self.client_id:
            raise IDTokenError("The ID token's azp is another client.")
        # OIDC Core §2: sub is REQUIRED, "a case-sensitive string".
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise IDTokenError("The ID token has no sub.")
        if expected_sub is not None and sub != expected_sub:
            # OIDC Core §12.2: a refreshed ID token's sub "MUST be the same".
            raise IDTokenError("The ID token is about another user (sub).")
        # §3.1.3.7 9, 10: "The current time MUST be before the time represented by the
        # exp Claim"; iat may reject tokens "issued too far away from the current time".
        now = self.clock()
        check_times(claims, now, self.leeway, IDTokenError)
        # §3.1.3.7 11: "If a nonce value was sent in the Authentication Request, a nonce
        # Claim MUST be present and its value checked to verify that it is the same value
        # as the one that was sent".
        if nonce is not None:
            got = claims.get("nonce")
            if not isinstance(got, str) or not _same(got, nonce):
                raise IDTokenError("The ID token's nonce is not the one this login sent.")
        # §3.1.3.7 13: "If the max_age request parameter was used, the Client SHOULD check
        # the auth_time Claim value and request re-authentication if it determines too
        # much time has elapsed since the last End-User authentication."
        if max_age is not None:
            auth_time = claims.get("auth_time")
            if not is_number(auth_time):
                raise IDTokenError("max_age was requested but the ID token has no auth_time.")
            if now > auth_time + max_age + self.leeway:
                raise IDTokenError("The user signed in longer ago than max_age allows.")
        # §3.2.2.9 / §3.3.2.11: at_hash is the left half of the access token's hash.
        at_hash = claims.get("at_hash")
        if at_hash is not None and access_token is not None:
            digest = ALG_HASHES.get(header["alg"], hashlib.sha256)(access_token.encode())
            expected = b64url(digest.digest()[: digest.digest_size // 2])
            if not isinstance(at_hash, str) or not _same(at_hash, expected):
                raise IDTokenError("The ID token's at_hash does not match the access token.")
        return claims

    # -- Other grants: RFC 6749 §6, §4.4 ----------------------------------------

    def refresh(
        self,
        refresh_token: str,
        *,
        scope: str | None = None,
        expected_sub: str | None = None,
        resource: str | Iterable[str] | None = None,
    ) -> TokenSet:
        """RFC 6749 §6: new tokens for a refresh token, optionally for a narrower scope,
        and (RFC 8707 §2.2) for some of the grant's resources (default: the Client's).

        If the provider rotates refresh tokens the result has the new one; otherwise
        it carries the one given ("the client MUST discard the old refresh token" only
        when a new one is issued). A refreshed ID token is validated, and with
        ``expected_sub`` it must be about the same user (OIDC Core §12.2).
        """
        form: Form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if scope is not None:
            form["scope"] = scope
        self._add_resource(form, resource)
        tokens = self._token_set(self._token_request(form), split_scope(scope))
        if tokens.refresh_token is None:
            tokens = replace(tokens, refresh_token=refresh_token)
        if tokens.id_token is None:
            return tokens
        claims = self.validate_id_token(
            tokens.id_token, access_token=tokens.access_token, expected_sub=expected_sub
        )
        return replace(tokens, id_token_claims=claims)

    def client_credentials(
        self, scope: str | None = None, *, resource: str | Iterable[str] | None = None
    ) -> TokenSet:
        """RFC 6749 §4.4: a token for the client itself (confidential clients only), for
        ``resource`` (RFC 8707 §2.2; default: the Client's)."""
        form: Form = {"grant_type": "client_credentials"}
        if scope is not None:
            form["scope"] = scope
        self._add_resource(form, resource)
        return self._token_set(self._token_request(form), split_scope(scope))

    # -- Revocation: RFC 7009 ----------------------------------------------------

    def revoke(self, token: str, token_type_hint: str | None = None) -> None:
        """RFC 7009 §2.1: revoke an access or refresh token. Revoking a token the provider
        does not know is not an error (§2.2)."""
        form: Form = {"token": token}
        if token_type_hint is not None:
            form["token_type_hint"] = token_type_hint
        # RFC 7009 §2.2: "The authorization server responds with HTTP status code 200 if
        # the token has been revoked successfully or if the client submitted an invalid
        # token." Any other status raises.
        post_authenticated(
            self.provider, "revocation_endpoint", self.client_id, self.client_secret, form,
            timeout=self.timeout, what="revocation endpoint",
        )  # fmt: skip

    # -- UserInfo: OIDC Core §5.3 ------------------------------------------------

    def userinfo(
        self, access_token: str | TokenSet, *, expected_sub: str | None = None
    ) -> dict[str, Any]:
        """OIDC Core §5.3: the user's claims. With ``expected_sub`` (the ID token's sub),
        a response about another user is rejected (§5.3.4). A TokenSet's token goes as
        its token_type says; a bare token with the DPoP scheme if this client has a key."""
        url = self.provider.endpoint("userinfo_endpoint")
        # OIDC Core §5.3.1: the access token is sent "using the Authorization header
        # field" (RFC 6750 §2.1; RFC 9449 §7.1 for a DPoP-bound one).
        resp = self.request("GET", url, access_token, failure=UserinfoError)
        if resp.status in (400, 401, 403):
            raise _bearer_error(resp)
        if resp.status != 200:
            message = f"The userinfo endpoint answered HTTP {resp.status}."
            raise UserinfoError(message, status=resp.status)
        ctype = resp.headers.get_content_type()
        if ctype != "application/json":
            raise UserinfoError(f"The userinfo response is {ctype}, not JSON.")
        claims = resp.json_object(UserinfoError, "userinfo response")
        sub = claims.get("sub")
        # OIDC Core §5.3.2: "The sub (subject) Claim MUST always be returned".
        if not isinstance(sub, str) or not sub:
            raise UserinfoError("The userinfo response has no sub.")
        # OIDC Core §5.3.4: "The sub Claim in the UserInfo Response MUST be verified to
        # exactly match the sub Claim in the ID Token; if they do not match, the UserInfo
        # Response values MUST NOT be used."
        if expected_sub is not None and sub != expected_sub:
            raise UserinfoError("The userinfo response is about another user.", error="invalid_sub")
        return claims

    # -- Protected resources: RFC 6750 §2.1, RFC 9449 §7 ----------------------------

    def request(
        self,
        method: str,
        url: str,
        access_token: str | TokenSet,
        *,
        form: Form | None = None,
        headers: Mapping[str, str] | None = None,
        failure: type[OAuthError] = OAuthError,
    ) -> Response:
        """Call a protected resource with the access token (any status is returned;
        ``failure`` is raised if the server cannot be reached). A DPoP-bound token goes
        with ``Authorization: DPoP`` and a proof with its ``ath`` (RFC 9449 §7.1); asked
        for a nonce (§9: 401 with ``error="use_dpop_nonce"``), the request is sent once
        more with it."""
        token, bound = _token_and_binding(access_token, self.dpop_key is not None)
        scheme = "DPoP" if bound else "Bearer"
        for attempt in range(2):
            sent = {**(headers or {}), "Authorization": f"{scheme} {token}"}
            resp = self._send(method, url, failure, form=form, headers=sent,
                              access_token=token if bound else None)  # fmt: skip
            if not (bound and attempt == 0 and _nonce_asked(resp)):
                return resp
        return resp

    def _send(
        self,
        method: str,
        url: str,
        failure: type[OAuthError],
        *,
        form: Form | None,
        headers: Mapping[str, str],
        access_token: str | None = None,
    ) -> Response:
        """One request; with this client's key, a DPoP proof for it (RFC 9449 §4.2) with
        the server's latest nonce, and the nonce of its answer remembered (§8.2)."""
        if self.dpop_key is None:
            return request(method, url, failure, form=form, headers=headers,
                           timeout=self.timeout)  # fmt: skip
        origin = _origin(url)
        proof = self.dpop_key.proof(method, url, now=self.clock(), access_token=access_token,
                                    nonce=self._dpop_nonces.get(origin))  # fmt: skip
        resp = request(method, url, failure, form=form, headers={**headers, "DPoP": proof},
                       timeout=self.timeout)  # fmt: skip
        nonce = resp.headers.get("DPoP-Nonce")
        if nonce:
            self._dpop_nonces[origin] = nonce
        return resp

    # -- Logout: OpenID Connect RP-Initiated Logout 1.0 --------------------------

    def logout_url(
        self,
        id_token_hint: str | None = None,
        post_logout_redirect_uri: str | None = None,
        state: str | None = None,
    ) -> str:
        """RP-Initiated Logout 1.0 §2: where to send the browser to end its session at
        the provider, then come back to ``post_logout_redirect_uri`` (registered)."""
        params = {
            "id_token_hint": id_token_hint,
            "client_id": self.client_id,
            "post_logout_redirect_uri": post_logout_redirect_uri,
            "state": state,
        }
        return _with_query(
            self.provider.endpoint("end_session_endpoint"),
            {k: v for k, v in params.items() if v is not None},
        )

    # -- The token endpoint: RFC 6749 §5 -----------------------------------------

    def _add_resource(self, form: Form, resource: str | Iterable[str] | None) -> None:
        resources = _resources(resource) if resource is not None else self.resource
        if resources:
            form["resource"] = list(resources)

    def _token_request(self, form: Form) -> dict[str, Any]:
        # A failure raises with RFC 6749 §5.2's error, error_description, error_uri.
        if self.dpop_key is None:
            resp = post_authenticated(
                self.provider, "token_endpoint", self.client_id, self.client_secret, form,
                timeout=self.timeout, what="token endpoint",
            )  # fmt: skip
            return resp.json_object(TokenError, "token response")
        url = self.provider.endpoint("token_endpoint")
        for attempt in range(2):
            body, headers = dict(form), dict[str, str]()
            authenticate(self.provider.metadata(), "token_endpoint", self.client_id,
                         self.client_secret, body, headers)  # fmt: skip
            resp = self._send("POST", url, TokenError, form=body, headers=headers)
            # RFC 9449 §8: "use_dpop_nonce": send the request again, with the nonce.
            if not (attempt == 0 and _nonce_asked(resp)):
                break
        if resp.status != 200:
            raise error_from(resp, TokenError, "token endpoint")
        return resp.json_object(TokenError, "token response")

    def _token_set(self, body: dict[str, Any], requested: tuple[str, ...]) -> TokenSet:
        """RFC 6749 §5.1: check a successful token response and read it."""
        access_token = body.get("access_token")
        if not isinstance(access_token, str) or not access_token:
            raise TokenError("The token response has no access_token.")
        token_type = body.get("token_type")
        # RFC 6749 §7.1: "The client MUST NOT use an access token if it does not
        # understand the token type." Token type names are case-insensitive (§5.1); DPoP
        # (RFC 9449 §5) is understood by a client with a key, Bearer by every client.
        understood = ("bearer", "dpop") if self.dpop_key is not None else ("bearer",)
        if not isinstance(token_type, str) or token_type.lower() not in understood:
            raise TokenError(f"The token_type {token_type!r} is not one this client can use.")
        expires_in = body.get("expires_in")
        if isinstance(expires_in, str) and expires_in.isdigit():
            expires_in = int(expires_in)  # some providers send a string
        expires_at = self.clock() + expires_in if is_number(expires_in) else None
        # RFC 6749 §5.1: scope is "OPTIONAL, if identical to the scope requested".
        scope = body.get("scope")
        scopes = split_scope(scope) if isinstance(scope, str) else requested
        refresh_token = body.get("refresh_token")
        id_token = body.get("id_token")
        return TokenSet(
            access_token=access_token,
            token_type=token_type,
            expires_at=expires_at,
            scope=scopes,
            refresh_token=refresh_token if isinstance(refresh_token, str) else None,
            id_token=id_token if isinstance(id_token, str) else None,
            response=body,
        )


###############################################################################
# Helpers #####################################################################
###############################################################################


def _resources(resource: str | Iterable[str] | None) -> tuple[str, ...]:
    """RFC 8707 §2: one resource URI or several."""
    if resource is None:
        return ()
    return (resource,) if isinstance(resource, str) else tuple(resource)


def resource_metadata(
    resource: str, *, metadata_url: str | None = None, timeout: float = TIMEOUT
) -> dict[str, Any]:
    """A protected resource's RFC 9728 metadata, from its well-known URL (§3.1), or from
    ``metadata_url`` (the ``resource_metadata`` of its 401, §5.1). §3.3: "The resource
    value returned MUST be identical to the protected resource's resource identifier
    value into which the well-known URI path suffix was inserted to create the URL used
    to retrieve the metadata. If these values are not identical, the data contained in
    the response MUST NOT be used." Raises DiscoveryError."""
    url = metadata_url or resource_metadata_url(resource)
    resp = request("GET", url, DiscoveryError, timeout=timeout)
    if resp.status != 200:
        raise DiscoveryError(
            f"The metadata of {resource} answered HTTP {resp.status}.", status=resp.status
        )
    metadata = resp.json_object(DiscoveryError, "protected-resource metadata")
    if metadata.get("resource") != resource:
        raise DiscoveryError(
            f"The metadata at {url} is for {str(metadata.get('resource'))[:100]!r}, not for "
            f"{resource!r} (RFC 9728 3.3): not used."
        )
    return metadata


def _with_query(url: str, params: Mapping[str, str | list[str]]) -> str:
    """RFC 6749 §3.1: an endpoint URI's own query "MUST be retained when adding
    additional query parameters"."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.urlencode(params, doseq=True)
    return urllib.parse.urlunsplit(
        parts._replace(query=f"{parts.query}&{query}" if parts.query else query)
    )


def _callback_params(callback_url: str) -> dict[str, str]:
    """The authorization response's parameters, each at most once (RFC 6749 §3.1:
    "Request and response parameters MUST NOT be included more than once")."""
    if "://" in callback_url or callback_url.startswith("/"):
        query = urllib.parse.urlsplit(callback_url).query
    else:
        query = callback_url.removeprefix("?")
    params: dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if name in params:
            raise AuthorizationError(f"The response repeats the {name} parameter.")
        params[name] = value
    return params


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _token_and_binding(access_token: str | TokenSet, has_key: bool) -> tuple[str, bool]:
    """The token, and whether it goes with the DPoP scheme (RFC 9449 §7.1)."""
    if isinstance(access_token, TokenSet):
        bound = access_token.token_type.lower() == "dpop"
        if bound and not has_key:
            raise ValueError("a DPoP-bound token needs the Client's dpop_key")
        return access_token.access_token, bound
    return access_token, has_key


def _nonce_asked(resp: Response) -> bool:
    """RFC 9449 §8 (400 ``use_dpop_nonce`` from the token endpoint) or §9 (401 with a
    DPoP challenge ``error="use_dpop_nonce"`` from a resource), with a DPoP-Nonce."""
    if not resp.headers.get("DPoP-Nonce") or resp.status not in (400, 401):
        return False
    if 'error="use_dpop_nonce"' in resp.headers.get("WWW-Authenticate", ""):
        return True
    try:
        return resp.json_object(OAuthError, "error").get("error") == "use_dpop_nonce"
    except OAuthError:
        return False


def _bearer_error(resp: Response) -> OAuthError:
    """RFC 6750 §3: the error in a resource's ``WWW-Authenticate: Bearer`` challenge."""
    challenge = resp.headers.get("WWW-Authenticate", "")
    attrs = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _AUTH_PARAM.finditer(challenge)
    }
    error = attrs.get("error")
    description = attrs.get("error_description", "")
    if error is None:
        try:
            body = resp.json_object(UserinfoError, "error response")
        except OAuthError:
            body = {}
        error = body.get("error") if isinstance(body.get("error"), str) else None
        description = description or str(body.get("error_description", ""))
    if error == "insufficient_scope":
        return InsufficientScopeError(description, scope=attrs.get("scope", ""))
    if error in ("invalid_token", "invalid_dpop_proof") or (error is None and resp.status == 401):
        return InvalidTokenError(description, error=error)
    return UserinfoError(description, error=error, status=resp.status)

