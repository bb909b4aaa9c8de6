"""The SDK's resource-server side against a live codeflow: BearerValidator (RFC 9068 JWT
access tokens checked locally, opaque ones through RFC 7662 introspection), the WSGI
middleware and the bottle plugin (RFC 6750 §3 answers).

The validator talks to codeflow over a socket; the middleware and the plugin are called
in-process through wsgiref.validate, where the wire between browser and API does not
matter but WSGI conformance does.
"""

from __future__ import annotations

import base64
import json
import time
import wsgiref.util
import wsgiref.validate
from collections.abc import Callable, Iterable
from typing import Any

import bottle
import jwt
import pytest
from codeflow_sdk import (
    ENVIRON_KEY,
    AccessToken,
    BearerValidator,
    BottleBearer,
    Client,
    InsufficientScopeError,
    InvalidTokenError,
    TokenError,
    require_bearer,
)
from requests.structures import CaseInsensitiveDict
from sdk_support import (
    CONFIDENTIAL,
    INTROSPECTOR,
    INTROSPECTOR_SECRET,
    JWT_CLIENT,
    JWT_SECRET,
    REDIRECT,
    SECRET,
    IdP,
    free_port,
    rogue_key,
)

import codeflow

pytestmark = pytest.mark.http

INTROSPECT, JWKS = "/introspect", "/jwks"


def jwt_validator(idp: IdP, **options: Any) -> BearerValidator:
    """Local validation of RFC 9068 tokens; codeflow's default audience is its issuer."""
    return BearerValidator(idp.url, audience=idp.url, **options)


def introspecting_validator(idp: IdP, **options: Any) -> BearerValidator:
    return BearerValidator(
        idp.url,
        introspection_client_id=INTROSPECTOR,
        introspection_client_secret=INTROSPECTOR_SECRET,
        **options,
    )


def jwt_token(idp: IdP, scope: str = "openid api:read", user: str | None = "alice") -> str:
    return idp.srv.issue_tokens(user, JWT_CLIENT, scope)["access_token"]


def opaque_token(idp: IdP, scope: str = "openid api:read") -> dict:
    return idp.srv.issue_tokens("alice", CONFIDENTIAL, scope)


def at_claims(idp: IdP, **changes: object) -> dict:
    """Valid RFC 9068 §2.2 claims; None removes one."""
    now = int(time.time())
    claims = {"iss": idp.url, "aud": idp.url, "sub": "alice", "client_id": JWT_CLIENT,
              "exp": now + 600, "iat": now, "jti": "j1", "scope": "api:read"}  # fmt: skip
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


# -- JWT access tokens: RFC 9068 ----------------------------------------------------------


def test_jwt_access_token_is_validated_locally(idp: IdP) -> None:
    """RFC 9068 §4: a JWT access token is validated with the provider's keys, iss, aud and
    exp, without asking the provider about the token (no introspection)."""
    validator = jwt_validator(idp)
    record = validator.validate(jwt_token(idp))
    assert (record.sub, record.client_id, record.scopes, record.source) == (
        "alice", JWT_CLIENT, ("openid", "api:read"), "jwt",
    )  # fmt: skip
    # A token the SDK's own Client got over the wire (RFC 6749 §4.4, RFC 9068 §2.2: sub
    # is the client itself).
    tokens = Client(idp.url, JWT_CLIENT, JWT_SECRET).client_credentials("api:write")
    record = validator.validate(tokens.access_token, "api:write")
    assert (record.sub, record.scopes) == (JWT_CLIENT, ("api:write",))
    assert idp.wire.hits[INTROSPECT] == 0


@pytest.mark.parametrize(("late", "ok"), [(3600 + 30, True), (3600 + 61, False)])
def test_expired_jwt_access_token_is_rejected(idp: IdP, late: int, ok: bool) -> None:
    """RFC 9068 §4: "The current time MUST be before the time represented by the exp
    claim", with a 60 s leeway for clock skew; the validator's clock seam moves time."""
    token = jwt_token(idp)
    validator = jwt_validator(idp, clock=lambda: time.time() + late)
    if ok:
        validator.validate(token)
    else:
        with pytest.raises(InvalidTokenError, match="expired") as caught:
            validator.validate(token)
        assert (caught.value.error, caught.value.status) == ("invalid_token", 401)


def test_jwt_access_token_for_another_audience_is_rejected(idp: IdP) -> None:
    """RFC 9068 §4: "The JWT access token MUST be rejected if aud does not contain a
    resource indicator of the current resource server as a valid audience."""
    with pytest.raises(InvalidTokenError, match="audience"):
        BearerValidator(idp.url, audience="https://other-api.example").validate(jwt_token(idp))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"iss": "https://other.example"}, "issuer"),
        ({"aud": None}, "aud"),
        ({"exp": None}, "exp"),
        ({"sub": None}, "sub"),
        ({"client_id": None}, "client_id"),
        ({"iat": int(time.time()) + 3600}, "future"),
    ],
    ids=["iss", "no-aud", "no-exp", "no-sub", "no-client_id", "iat-future"],
)
def test_jwt_access_token_claims_are_checked(idp: IdP, changes: dict, message: str) -> None:
    """RFC 9068 §4: iss MUST exactly match the issuer; RFC 9068 §2.2: iss, exp, aud, sub,
    client_id and iat are REQUIRED. The tokens are signed with the provider's real key."""
    token = idp.sign(at_claims(idp, **changes), typ="at+jwt")
    with pytest.raises(InvalidTokenError, match=message):
        jwt_validator(idp).validate(token)


@pytest.mark.parametrize(
    ("typ", "ok"),
    [("at+jwt", True), ("application/at+jwt", True), ("AT+JWT", True), ("JWT", False),
     (None, False)],
)  # fmt: skip
def test_typ_must_be_at_jwt(idp: IdP, typ: str | None, ok: bool) -> None:
    """RFC 9068 §4: resource servers "MUST verify that the typ header value is at+jwt or
    application/at+jwt and reject tokens carrying any other type value" (media types are
    case-insensitive, RFC 7515 §4.1.9)."""
    key = codeflow.signing_key(idp.srv, "RS256")
    header = {"kid": key.kid, "typ": typ}  # typ None: PyJWT leaves the header out
    token = jwt.encode(at_claims(idp), codeflow.private_key(key), algorithm="RS256", headers=header)
    if ok:
        assert jwt_validator(idp).validate(token).sub == "alice"
    else:
        with pytest.raises(InvalidTokenError, match="typ"):
            jwt_validator(idp).validate(token)


def test_id_token_is_not_an_access_token(idp: IdP) -> None:
    """RFC 9068 §4 (typ) and OIDC Core §2: an ID token (typ JWT, aud the client) presented
    as a bearer token is refused."""
    id_token = idp.srv.issue_tokens("alice", JWT_CLIENT, "openid")["id_token"]
    with pytest.raises(InvalidTokenError):
        jwt_validator(idp).validate(id_token)
    with pytest.raises(InvalidTokenError):
        BearerValidator(idp.url, audience=JWT_CLIENT).validate(id_token)


def test_forged_jwt_access_tokens_are_rejected(idp: IdP) -> None:
    """RFC 9068 §4: the resource server "MUST validate the signature of all incoming JWT
    access tokens", "MUST reject any JWT in which the value of alg is none" and "MUST use
    the keys provided by the authorization server"."""
    validator = jwt_validator(idp)
    header, payload, signature = jwt_token(idp).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    wider = base64.urlsafe_b64encode(
        json.dumps({**claims, "scope": "api:read api:write admin"}).encode()
    ).rstrip(b"=").decode()
    kid = jwt.get_unverified_header(jwt_token(idp))["kid"]
    forged = [
        f"{header}.{wider}.{signature}",
        jwt.encode(claims, rogue_key(), algorithm="RS256", headers={"kid": kid, "typ": "at+jwt"}),
        jwt.encode(claims, None, algorithm="none", headers={"kid": kid, "typ": "at+jwt"}),
        jwt.encode(claims, "s" * 32, algorithm="HS256", headers={"kid": kid, "typ": "at+jwt"}),
    ]
    for token in forged:
        with pytest.raises(InvalidTokenError):
            validator.validate(token)


def test_key_rotation_and_unknown_kids_at_the_resource_server(idp: IdP) -> None:
    """RFC 7517 §5 / RFC 9068 §4: a token signed with a key rotated in after the JWKS was
    cached is accepted after one refetch; a kid the provider never published is refused
    after one refetch, and does not cause another within the refetch interval."""
    validator = jwt_validator(idp)
    validator.validate(jwt_token(idp))
    assert idp.wire.hits[JWKS] == 1
    idp.srv.rotate_keys()
    validator.validate(jwt_token(idp))
    assert idp.wire.hits[JWKS] == 2
    rogue = jwt.encode(at_claims(idp), rogue_key(), algorithm="RS256",
                       headers={"kid": "rogue", "typ": "at+jwt"})  # fmt: skip
    fresh = jwt_validator(idp)
    fresh.validate(jwt_token(idp))
    assert idp.wire.hits[JWKS] == 3
    for _ in range(2):
        with pytest.raises(InvalidTokenError, match="'rogue'"):
            fresh.validate(rogue)
    assert idp.wire.hits[JWKS] == 4


def test_missing_scope_is_insufficient_scope(idp: IdP) -> None:
    """RFC 6750 §3.1 insufficient_scope: "The request requires higher privileges than
    provided by the access token" (403); the error names the scope needed. The validator's
    required_scopes apply to every token."""
    token = jwt_token(idp, "openid api:read")
    with pytest.raises(InsufficientScopeError) as caught:
        jwt_validator(idp).validate(token, "api:read api:write")
    assert (caught.value.status, caught.value.scope) == (403, "api:read api:write")
    with pytest.raises(InsufficientScopeError) as caught:
        jwt_validator(idp, required_scopes="api:write").validate(token)
    assert caught.value.scope == "api:write"
    assert jwt_validator(idp, required_scopes=["api:read"]).validate(token).has_scopes("openid")


# -- Opaque tokens: RFC 7662 ----------------------------------------------------------------


def test_opaque_token_is_introspected_and_cached(idp: IdP) -> None:
    """RFC 7662 §2.1: an opaque token is sent to the introspection endpoint by an
    authenticated client; §4: the answer may be cached briefly ("the protected resource
    MAY cache the response"), so a second call does not ask again."""
    validator = introspecting_validator(idp)
    token = opaque_token(idp)["access_token"]
    record = validator.validate(token, "api:read")
    assert (record.sub, record.client_id, record.source) == ("alice", CONFIDENTIAL, "introspection")
    validator.validate(token)
    assert idp.wire.hits[INTROSPECT] == 1


def test_revoked_opaque_token_is_refused_once_the_cache_expires(idp: IdP) -> None:
    """RFC 7009 §2 and RFC 7662 §2.2: a revoked token is "active": false, so 401; a cached
    positive answer lives at most cache_seconds (RFC 7662 §4: the cache trades freshness
    for load), after which the revocation shows."""
    clock = [time.time()]
    validator = introspecting_validator(idp, cache_seconds=30, clock=lambda: clock[0])
    token = opaque_token(idp)["access_token"]
    validator.validate(token)
    Client(idp.url, CONFIDENTIAL, SECRET, REDIRECT).revoke(token)
    validator.validate(token)  # still cached
    clock[0] += 31
    with pytest.raises(InvalidTokenError, match="not active"):
        validator.validate(token)
    with pytest.raises(InvalidTokenError):
        introspecting_validator(idp).validate(token)


def test_expired_opaque_token_is_refused(idp: IdP) -> None:
    """RFC 7662 §2.2: an expired token is not active; RFC 6750 §3.1 invalid_token."""
    token = opaque_token(idp)["access_token"]
    idp.clock.advance(3601)
    with pytest.raises(InvalidTokenError):
        introspecting_validator(idp).validate(token)


def test_refresh_token_is_not_a_bearer_token(idp: IdP) -> None:
    """RFC 7662 §2.2 token_type: a refresh token (active, but not an access token) does not
    authorize requests to a resource."""
    refresh = opaque_token(idp, "openid offline_access")["refresh_token"]
    # Rejected either way: the introspecting API may not see another client's refresh
    # token (RFC 7662 §2.2: active false), and none is a bearer token.
    with pytest.raises(InvalidTokenError, match=r"not (an access token|active)"):
        introspecting_validator(idp).validate(refresh)


def test_introspection_failure_is_not_an_invalid_token(idp: IdP) -> None:
    """RFC 7662 §2.3: a failed client authentication is an RFC 6749 §5.2 error about the
    resource server, not about the token: TokenError, never a 401 for the caller."""
    validator = BearerValidator(idp.url, introspection_client_id=INTROSPECTOR,
                                introspection_client_secret="wrong")  # fmt: skip
    with pytest.raises(TokenError) as caught:
        validator.validate(opaque_token(idp)["access_token"])
    assert caught.value.error == "invalid_client"


def test_validator_modes(idp: IdP) -> None:
    """RFC 9068 §4 needs an audience to check; RFC 7662 needs credentials: a validator
    needs one. With only an audience an opaque token is invalid; with only introspection
    a JWT access token is introspected (RFC 7662 covers any token the provider issued)."""
    with pytest.raises(ValueError, match="audience"):
        BearerValidator(idp.url)
    with pytest.raises(InvalidTokenError):
        jwt_validator(idp).validate(opaque_token(idp)["access_token"])
    assert introspecting_validator(idp).validate(jwt_token(idp)).source == "introspection"


@pytest.mark.parametrize("token", ["", "a b", "tök", "x" * 10 + "\n"])
def test_malformed_tokens_are_invalid(idp: IdP, token: str) -> None:
    """RFC 6750 §2.1: a bearer token is a b64token; anything else is invalid_token."""
    with pytest.raises(InvalidTokenError):
        introspecting_validator(idp).validate(token)
    assert idp.wire.hits[INTROSPECT] == 0


# -- The WSGI middleware and the bottle plugin: RFC 6750 §3 -------------------------------------


def call(
    app: Callable[..., Iterable[bytes]], path: str = "/", authorization: str | None = None
) -> tuple[str, CaseInsensitiveDict, bytes]:
    """One request through wsgiref.validate, in-process (header names in any case)."""
    environ: dict[str, Any] = {"PATH_INFO": path, "QUERY_STRING": "", "SCRIPT_NAME": ""}
    wsgiref.util.setup_testing_defaults(environ)
    if authorization is not None:
        environ["HTTP_AUTHORIZATION"] = authorization
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list, exc_info: Any = None) -> Callable:
        answer.update(status=status, headers=CaseInsensitiveDict(headers))
        return lambda data: None

    result = wsgiref.validate.validator(app)(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        result.close()  # type: ignore[attr-defined]
    return answer["status"], answer["headers"], body


def hello(environ: dict, start_response: Callable) -> list[bytes]:
    token: AccessToken = environ[ENVIRON_KEY]
    body = json.dumps({"sub": token.sub, "scopes": list(token.scopes)}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])  # fmt: skip
    return [body]


@pytest.mark.parametrize("authorization", [None, "", "Basic YWxpY2U6c2VjcmV0"])
def test_middleware_without_a_token_answers_401_without_error(
    idp: IdP, authorization: str | None
) -> None:
    """RFC 6750 §3.1: "If the request lacks any authentication information (e.g., the client
    was unaware that authentication is necessary or attempted using an unsupported
    authentication method), the resource server SHOULD NOT include an error code"."""
    app = require_bearer(hello, jwt_validator(idp), "api:read", realm="notes")
    status, headers, _ = call(app, authorization=authorization)
    assert status == "401 Unauthorized"
    assert headers["WWW-Authenticate"] == 'Bearer realm="notes"'


def test_middleware_invalid_token_answers_401_invalid_token(idp: IdP) -> None:
    """RFC 6750 §3.1 invalid_token: "The access token provided is expired, revoked,
    malformed, or invalid for other reasons. The resource SHOULD respond with the HTTP 401
    (Unauthorized) status code"; §3: the challenge carries error and error_description."""
    app = require_bearer(hello, jwt_validator(idp, clock=lambda: time.time() + 7200))
    status, headers, body = call(app, authorization="Bearer " + jwt_token(idp))
    assert status == "401 Unauthorized"
    assert headers["WWW-Authenticate"] == (
        'Bearer realm="api", error="invalid_token", error_description="The token has expired."'
    )
    assert json.loads(body)["error"] == "invalid_token"
    assert headers["Cache-Control"] == "no-store"


def test_middleware_malformed_request_answers_400(idp: IdP) -> None:
    """RFC 6750 §3.1 invalid_request: "The request is ... otherwise malformed. The resource
    server SHOULD respond with the HTTP 400 (Bad Request) status code"."""
    app = require_bearer(hello, jwt_validator(idp))
    for authorization in ("Bearer", "Bearer a b", 'Bearer "quoted"'):
        status, headers, _ = call(app, authorization=authorization)
        assert status == "400 Bad Request"
        assert 'error="invalid_request"' in headers["WWW-Authenticate"]


def test_middleware_missing_scope_answers_403_with_scope(idp: IdP) -> None:
    """RFC 6750 §3.1 insufficient_scope: "The resource server SHOULD respond with the HTTP
    403 (Forbidden) status code and MAY include the scope attribute with the scope
    necessary to access the protected resource"."""
    app = require_bearer(hello, jwt_validator(idp), "api:read api:write")
    status, headers, _ = call(app, authorization="Bearer " + jwt_token(idp, "openid api:read"))
    assert status == "403 Forbidden"
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="api", error="insufficient_scope", ')
    assert challenge.endswith(', scope="api:read api:write"')


def test_middleware_passes_a_valid_token_to_the_app(idp: IdP) -> None:
    """RFC 6750 §2.1: a request with Authorization: Bearer and a valid token reaches the
    app, which finds the validated token in the environ."""
    app = require_bearer(hello, introspecting_validator(idp), "api:read")
    status, _, body = call(app, authorization="bearer " + opaque_token(idp)["access_token"])
    assert status == "200 OK"
    assert json.loads(body) == {"sub": "alice", "scopes": ["openid", "api:read"]}


def test_middleware_answers_503_when_the_provider_is_unreachable() -> None:
    """RFC 7662 §2.1: an opaque token can only be judged by the introspection endpoint;
    when it cannot be reached the request is neither let through nor blamed on the token
    (503, not 401)."""
    nowhere = f"http://127.0.0.1:{free_port()}"
    validator = BearerValidator(nowhere, None, "api", "api-secret")
    status, _, body = call(require_bearer(hello, validator), authorization="Bearer abc")
    assert status == "503 Service Unavailable"
    assert json.loads(body)["error"] == "temporarily_unavailable"


def test_bottle_plugin_requires_scopes_per_route(idp: IdP) -> None:
    """RFC 6750 §3 through the bottle plugin: routes declare scope=, opt out with
    bearer=False, and receive the validated token as a keyword argument."""
    app = bottle.Bottle()
    app.install(BottleBearer(jwt_validator(idp), realm="notes"))

    @app.get("/health", bearer=False)
    def health() -> dict:
        return {"ok": True}

    @app.get("/notes", scope="api:read")
    def notes(token: AccessToken) -> dict:
        return {"for": token.sub}

    @app.get("/notes/<name>", scope="api:write")
    def note(name: str) -> dict:
        return {"name": name, "sub": bottle.request.environ[ENVIRON_KEY].sub}

    token = "Bearer " + jwt_token(idp, "openid api:read")
    assert call(app, "/health")[0] == "200 OK"
    status, headers, _ = call(app, "/notes")
    assert (status, headers["WWW-Authenticate"]) == ("401 Unauthorized", 'Bearer realm="notes"')
    status, _, body = call(app, "/notes", token)
    assert (status, json.loads(body)) == ("200 OK", {"for": "alice"})
    status, headers, _ = call(app, "/notes/one", token)
    assert status == "403 Forbidden" and 'scope="api:write"' in headers["WWW-Authenticate"]
    writer = "Bearer " + jwt_token(idp, "api:write")
    status, _, body = call(app, "/notes/one", writer)
    assert (status, json.loads(body)) == ("200 OK", {"name": "one", "sub": "alice"})
    status, headers, _ = call(app, "/notes", "Bearer not-a-jwt")
    assert status == "401 Unauthorized" and 'error="invalid_token"' in headers["WWW-Authenticate"]
