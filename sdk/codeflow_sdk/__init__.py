"""codeflow_sdk: an OAuth 2.1 / OpenID Connect client and resource-server toolkit.

It speaks only the wire protocol, so it works with any standards-compliant provider,
codeflow or another: metadata from OIDC Discovery 1.0 (or RFC 8414), keys from the
provider's RFC 7517 JWK Set. Dependencies: the standard library's HTTP client and PyJWT
with cryptography (JOSE); the bottle plugin needs bottle.

- ``Client``: the authorization code flow with PKCE (RFC 6749 §4.1, RFC 7636), the
  authorization response's ``iss`` (RFC 9207), ID token validation (OIDC Core
  §3.1.3.7), refresh (RFC 6749 §6), revocation (RFC 7009), userinfo (OIDC Core §5.3),
  client credentials (RFC 6749 §4.4) and RP-initiated logout; ``resource`` (RFC 8707)
  and the authorization server found from a resource's metadata (RFC 9728).
- ``BearerValidator``: JWT access tokens (RFC 9068) checked locally, opaque ones
  through introspection (RFC 7662); ``require_bearer`` (WSGI) and ``BottleBearer``
  (bottle) answer as RFC 6750 §3 says; with ``resource=``, the API's RFC 9728 metadata.
- DPoP (RFC 9449): ``Client(dpop_key=DPoPKey.generate())`` binds its tokens to a key
  and sends proofs; ``BearerValidator`` checks the proofs of DPoP-bound tokens (§7),
  remembering the ones seen in a ``ReplayCache``.

Every failure raises a subclass of ``OAuthError``, with ``error``, ``description`` and
``status``.

For test suites: ``codeflow_sdk.testing`` (a ``Clock`` tests move, and a headless login
helper that plays the user on the provider's forms over HTTP) and
``codeflow_sdk.pytest_plugin``, the fixtures that run codeflow as a fake identity
provider (registered by the ``pytest11`` entry point; the one part of the SDK that
imports codeflow, inside its fixtures).
"""

from .client import Client, LoginState, TokenSet, resource_metadata
from .dpop import DPoPKey, ReplayCache
from .errors import (
    AuthorizationError,
    DiscoveryError,
    IDTokenError,
    InsufficientScopeError,
    InvalidDPoPProofError,
    InvalidRequestError,
    InvalidTokenError,
    IssuerMismatch,
    OAuthError,
    StateMismatch,
    TokenError,
    UserinfoError,
)
from .resource import (
    ENVIRON_KEY,
    AccessToken,
    BearerValidator,
    BottleBearer,
    bearer_token,
    require_bearer,
)

__all__ = [
    "ENVIRON_KEY",
    "AccessToken",
    "AuthorizationError",
    "BearerValidator",
    "BottleBearer",
    "Client",
    "DPoPKey",
    "DiscoveryError",
    "IDTokenError",
    "InsufficientScopeError",
    "InvalidDPoPProofError",
    "InvalidRequestError",
    "InvalidTokenError",
    "IssuerMismatch",
    "LoginState",
    "OAuthError",
    "ReplayCache",
    "StateMismatch",
    "TokenError",
    "TokenSet",
    "UserinfoError",
    "bearer_token",
    "require_bearer",
    "resource_metadata",
]
