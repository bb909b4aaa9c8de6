"""The SDK's exceptions: one base, ``OAuthError``, and one subclass per kind of failure.

Every exception carries ``error`` (the OAuth error code: the provider's own when it
sent one, RFC 6749 §4.1.2.1 and §5.2, RFC 6750 §3.1; otherwise a code this SDK names
for the check that failed), ``description`` (for people) and ``status`` (the HTTP
status involved, if any).
"""

from __future__ import annotations


class OAuthError(Exception):
    """Base of every SDK error."""

    error = "invalid_response"
    status: int | None = None

    def __init__(
        self,
        description: str = "",
        *,
        error: str | None = None,
        status: int | None = None,
        uri: str | None = None,
    ) -> None:
        if error is not None:
            self.error = error
        if status is not None:
            self.status = status
        self.description = description
        self.uri = uri  # RFC 6749 §4.1.2.1 error_uri, when the provider sent one
        super().__init__(f"{self.error}: {description}" if description else self.error)


class DiscoveryError(OAuthError):
    """The provider's metadata (OIDC Discovery 1.0, RFC 8414) or its JWKS (RFC 7517)
    could not be fetched or is not usable."""

    error = "invalid_configuration"


class IssuerMismatch(OAuthError):
    """An issuer identifier is not the configured one: in the discovery document
    (OIDC Discovery 1.0 §4.3, RFC 8414 §3.3) or in an authorization response's ``iss``
    (RFC 9207 §2.4)."""

    error = "invalid_issuer"


class AuthorizationError(OAuthError):
    """The authorization response is an error (RFC 6749 §4.1.2.1, e.g. access_denied)
    or is malformed."""

    error = "invalid_request"


class StateMismatch(AuthorizationError):
    """The authorization response's ``state`` is missing or not the one this login sent
    (RFC 6749 §10.12: CSRF against the redirection endpoint)."""

    error = "invalid_state"


class TokenError(OAuthError):
    """A token, revocation or introspection endpoint answered with an error
    (RFC 6749 §5.2) or with a response that is not a valid one (RFC 6749 §5.1)."""


class IDTokenError(OAuthError):
    """The ID token failed validation (OIDC Core §3.1.3.7)."""

    error = "invalid_id_token"


class UserinfoError(OAuthError):
    """The userinfo response is unusable, or is about another user (OIDC Core §5.3.4)."""


class InvalidRequestError(OAuthError):
    """RFC 6750 §3.1 invalid_request: the request carrying the token is malformed."""

    error = "invalid_request"
    status = 400


class InvalidTokenError(OAuthError):
    """RFC 6750 §3.1 invalid_token: the access token is expired, revoked, malformed or
    otherwise invalid."""

    error = "invalid_token"
    status = 401


class InsufficientScopeError(OAuthError):
    """RFC 6750 §3.1 insufficient_scope: the access token lacks a scope the resource
    requires. ``scope`` is the space-separated scope the resource requires."""

    error = "insufficient_scope"
    status = 403

    def __init__(self, description: str = "", *, scope: str = "", **kwargs: object) -> None:
        super().__init__(description, **kwargs)  # type: ignore[arg-type]
        self.scope = scope


class InvalidDPoPProofError(OAuthError):
    """RFC 9449 §7.1 invalid_dpop_proof: the DPoP proof sent with a DPoP-bound access
    token is missing or fails a check of §4.3 (answered with a DPoP challenge)."""

    error = "invalid_dpop_proof"
    status = 401
