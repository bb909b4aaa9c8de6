"""The peer: a minimal Authlib + Flask authorization server doing codeflow's flow, on
Authlib's public API only, as its documentation and example OIDC server build one.

- authorization code grant with PKCE (``CodeChallenge(required=True)``) and OpenID
  Connect (``OpenIDCode``): an RS256 ID token with nonce and at_hash, signed with a
  2048-bit key imported once (as codeflow parses its key once);
- refresh token grant, rotating the refresh token (``INCLUDE_NEW_REFRESH_TOKEN``) as
  codeflow does; without an ID token on refresh (one signature per flow against
  codeflow's two: codeflow answers a refresh with an ID token, OIDC Core §12.2), or with
  ``refresh_id_token=True`` with one as codeflow (Authlib's ``OpenIDToken`` extension on
  the refresh grant, the same key and claims): the like-for-like rows;
- RFC 7662 introspection (``IntrospectionEndpoint``), RFC 9207 ``iss``
  (``IssuerParameter``); client_secret_basic everywhere;
- the user is approved at once, as codeflow's ``auto_approve``.

Two stores: plain dicts, and SQLAlchemy with Authlib's own model mixins and helpers
(``authlib.integrations.sqla_oauth2``), either on a SQLite file in WAL mode with
synchronous=NORMAL like codeflow's SQLite backend by default, or on PostgreSQL through
psycopg 3 (``postgresql+psycopg``, the driver codeflow's backend uses) in a schema of its
own, at PostgreSQL's default READ COMMITTED isolation (codeflow's backend runs
SERIALIZABLE transactions). Where Authlib asks for a hook codeflow has no
counterpart for (``exists_nonce``), the peer does the cheapest correct thing, so the
comparison is with Authlib at its best.

Run as a script, it serves the peer under waitress (test_bench_nodes.py's HTTP rows):

    python bench_peer.py PORT [--refresh-id-token] [POSTGRESQL_URL SCHEMA]

on dicts, or on SQLAlchemy in SCHEMA of the PostgreSQL database at POSTGRESQL_URL;
``--refresh-id-token`` answers a refresh with an ID token too. It also serves its public
key at ``/jwks`` (outside Authlib, untimed), so the benchmark can check the signatures of
its ID tokens over HTTP once, as it checks codeflow's.

Differences that remain, by design of each: Authlib keeps tokens and the client secret
in clear (codeflow keeps SHA-256 hashes, and a scrypt hash of the secret whose check is
cached per process); Authlib looks a code up and deletes it in two steps (codeflow
consumes it in one atomic step).
"""

from __future__ import annotations

import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import flask
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.integrations.sqla_oauth2 import (
    OAuth2AuthorizationCodeMixin,
    OAuth2ClientMixin,
    OAuth2TokenMixin,
    create_query_client_func,
    create_query_token_func,
    create_save_token_func,
)
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants, list_to_scope, scope_to_list
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9207 import IssuerParameter
from authlib.oidc.core import UserInfo
from authlib.oidc.core.grants import OpenIDCode, OpenIDToken
from authlib.oidc.core.models import AuthorizationCodeMixin
from bench_flow import CLIENT_ID, CLIENT_SECRET, REDIRECT, USERNAME
from joserfc.jwk import RSAKey
from sqlalchemy import Column, ForeignKey, Integer, String, create_engine, event, text
from sqlalchemy.orm import DeclarativeBase, scoped_session, sessionmaker

ISSUER = "https://127.0.0.1:8001"  # Authlib refuses plain http unless told otherwise
SCOPES = "openid profile email offline_access"
GRANT_TYPES = ["authorization_code", "refresh_token"]


###############################################################################
# Dict storage ##################################################################
###############################################################################


@dataclass
class DictUser:
    id: int
    username: str
    name: str

    def get_user_id(self) -> int:
        return self.id


@dataclass
class DictClient(ClientMixin):
    client_id: str
    client_secret: str
    redirect_uris: list[str]
    scope: str
    grant_types: list[str]
    response_types: list[str] = field(default_factory=lambda: ["code"])
    token_endpoint_auth_method: str = "client_secret_basic"

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uris[0]

    def get_allowed_scope(self, scope: str) -> str:
        allowed = set(self.scope.split())
        return list_to_scope([s for s in scope_to_list(scope) or [] if s in allowed])

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(self.client_secret, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return endpoint != "token" or method == self.token_endpoint_auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type in self.response_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass
class DictCode(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    user_id: int
    nonce: str | None
    auth_time: int
    code_challenge: str | None
    code_challenge_method: str | None

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def is_expired(self) -> bool:
        return self.auth_time + 300 < time.time()


@dataclass
class DictToken(TokenMixin):
    client_id: str
    user_id: int
    token_type: str
    access_token: str
    scope: str
    expires_in: int
    refresh_token: str | None = None
    issued_at: int = field(default_factory=lambda: int(time.time()))
    revoked: bool = False

    def check_client(self, client: ClientMixin) -> bool:
        return self.client_id == client.get_client_id()

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return self.issued_at + self.expires_in < time.time()

    def is_revoked(self) -> bool:
        return self.revoked


class DictStore:
    """The peer's storage on dicts (one process, one thread at a time in the bench)."""

    def __init__(self) -> None:
        self.users = {1: DictUser(1, USERNAME, "Alice")}
        self.clients = {
            CLIENT_ID: DictClient(CLIENT_ID, CLIENT_SECRET, [REDIRECT], SCOPES, GRANT_TYPES)
        }
        self.codes: dict[str, DictCode] = {}
        self.access: dict[str, DictToken] = {}
        self.refresh: dict[str, DictToken] = {}

    def user_by_name(self, username: str) -> DictUser | None:
        return next((u for u in self.users.values() if u.username == username), None)

    def user(self, user_id: int) -> DictUser | None:
        return self.users.get(user_id)

    def query_client(self, client_id: str) -> DictClient | None:
        return self.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        item = DictToken(client_id=request.client.client_id, user_id=request.user.id, **token)
        self.access[item.access_token] = item
        if item.refresh_token:
            self.refresh[item.refresh_token] = item

    def query_token(self, token: str, hint: str | None) -> DictToken | None:
        if hint == "refresh_token":
            return self.refresh.get(token)
        return self.access.get(token) or self.refresh.get(token)

    def save_code(self, code: DictCode) -> None:
        self.codes[code.code] = code

    def query_code(self, code: str, client_id: str) -> DictCode | None:
        item = self.codes.get(code)
        if item and item.client_id == client_id and not item.is_expired():
            return item
        return None

    def delete_code(self, code: DictCode) -> None:
        self.codes.pop(code.code, None)

    def revoke(self, token: DictToken) -> None:
        token.revoked = True

    def close(self) -> None:
        pass


###############################################################################
# SQLAlchemy storage (Authlib's mixins and helpers) ############################
###############################################################################


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "user"
    id = Column(Integer, primary_key=True)
    username = Column(String(40), unique=True, nullable=False)
    name = Column(String(80))

    def get_user_id(self) -> int:
        return self.id


class Client(Base, OAuth2ClientMixin):
    __tablename__ = "oauth2_client"
    id = Column(Integer, primary_key=True)


class Code(Base, OAuth2AuthorizationCodeMixin):
    __tablename__ = "oauth2_code"
    id = Column(Integer, primary_key=True)
    user_id = Column(Integer, ForeignKey("user.id", ondelete="CASCADE"))


class Token(Base, OAuth2TokenMixin):
    __tablename__ = "oauth2_token"
    id = Column(Integer, primary_key=True)
    user_id = Column(Integer, ForeignKey("user.id", ondelete="CASCADE"))


class SQLStore:
    """The peer's storage on SQLAlchemy, a session per request (as Flask-SQLAlchemy
    scopes it): on the SQLite file at ``path``, or, given ``url`` (``postgresql://...``)
    and ``schema``, on PostgreSQL with every table in that schema (created if missing)."""

    def __init__(self, path: str = "", *, url: str = "", schema: str = "") -> None:
        if url:
            # psycopg 3, as codeflow's PostgreSQL backend; the tables in a schema of their
            # own, which every connection of the engine's pool searches first.
            self.engine = create_engine(
                url.replace("postgresql://", "postgresql+psycopg://", 1),
                connect_args={"options": f"-c search_path={schema}"},
            )
            with self.engine.begin() as conn:
                conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        else:
            self.engine = create_engine(f"sqlite:///{path}")

            @event.listens_for(self.engine, "connect")
            def pragmas(conn: Any, record: Any) -> None:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")

        Base.metadata.create_all(self.engine)
        self.session = scoped_session(sessionmaker(self.engine))
        self.query_client = create_query_client_func(self.session, Client)
        self.save_token = create_save_token_func(self.session, Token)
        self.query_token = create_query_token_func(self.session, Token)
        session = self.session()
        session.add(User(id=1, username=USERNAME, name="Alice"))
        client = Client(client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
        client.set_client_metadata({
            "redirect_uris": [REDIRECT], "scope": SCOPES, "grant_types": GRANT_TYPES,
            "response_types": ["code"], "token_endpoint_auth_method": "client_secret_basic",
        })  # fmt: skip
        session.add(client)
        session.commit()
        self.session.remove()

    def user_by_name(self, username: str) -> User | None:
        return self.session.query(User).filter_by(username=username).first()

    def user(self, user_id: int) -> User | None:
        return self.session.get(User, user_id)

    def save_code(self, code: DictCode) -> None:
        self.session.add(Code(**vars(code)))
        self.session.commit()

    def query_code(self, code: str, client_id: str) -> Code | None:
        item = self.session.query(Code).filter_by(code=code, client_id=client_id).first()
        if item and not item.is_expired():
            return item
        return None

    def delete_code(self, code: Code) -> None:
        self.session.delete(code)
        self.session.commit()

    def revoke(self, token: Token) -> None:
        token.refresh_token_revoked_at = int(time.time())
        self.session.add(token)
        self.session.commit()

    def close(self) -> None:
        self.session.remove()
        self.engine.dispose()


###############################################################################
# The server #################################################################
###############################################################################


def create_app(
    store: DictStore | SQLStore, key: RSAKey, kid: str, issuer: str = ISSUER,
    refresh_id_token: bool = False,
) -> flask.Flask:  # fmt: skip
    """The Flask app of the peer over ``store``, signing ID tokens with ``key``, as
    ``issuer``; with ``refresh_id_token``, a refresh is answered with an ID token too."""

    class CodeGrant(grants.AuthorizationCodeGrant):
        TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic"]

        def save_authorization_code(self, code: str, request: Any) -> None:
            data = request.payload.data
            store.save_code(DictCode(
                code=code, client_id=request.client.client_id,
                redirect_uri=request.payload.redirect_uri, scope=request.payload.scope,
                user_id=request.user.id, nonce=data.get("nonce"), auth_time=int(time.time()),
                code_challenge=data.get("code_challenge"),
                code_challenge_method=data.get("code_challenge_method"),
            ))  # fmt: skip

        def query_authorization_code(self, code: str, client: ClientMixin) -> Any:
            return store.query_code(code, client.client_id)

        def delete_authorization_code(self, authorization_code: Any) -> None:
            store.delete_code(authorization_code)

        def authenticate_user(self, authorization_code: Any) -> Any:
            return store.user(authorization_code.user_id)

    class IDToken(OpenIDToken):
        """How the ID token is signed and what it claims, at the code exchange and (on
        the refresh grant) at a refresh."""

        def resolve_client_private_key(self, client: Any) -> RSAKey:
            return key

        def get_client_algorithm(self, client: Any) -> str:
            return "RS256"

        def get_encode_header(self, client: Any) -> dict[str, str]:
            return {"alg": "RS256", "kid": kid}

        def get_client_claims(self, client: Any) -> dict[str, Any]:
            return {"iss": issuer, "aud": [client.get_client_id()]}

        def generate_user_info(self, user: Any, scope: str) -> UserInfo:
            return UserInfo(sub=user.username)  # codeflow's ID token has no profile claims

    class OpenID(IDToken, OpenIDCode):
        def exists_nonce(self, nonce: str, request: Any) -> bool:
            return False  # the nonce is the client's replay check; codeflow keeps no list

    class RefreshGrant(grants.RefreshTokenGrant):
        TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic"]
        INCLUDE_NEW_REFRESH_TOKEN = True  # rotate, as codeflow does

        def authenticate_refresh_token(self, refresh_token: str) -> Any:
            token = store.query_token(refresh_token, "refresh_token")
            if token is not None and not token.is_revoked() and not token.is_expired():
                return token
            return None

        def authenticate_user(self, refresh_token: Any) -> Any:
            return store.user(refresh_token.user_id)

        def revoke_old_credential(self, refresh_token: Any) -> None:
            store.revoke(refresh_token)

    class Introspection(IntrospectionEndpoint):
        CLIENT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic"]

        def query_token(self, token: str, token_type_hint: str | None) -> Any:
            return store.query_token(token, token_type_hint)

        def check_permission(self, token: Any, client: Any, request: Any) -> bool:
            return token.check_client(client)

        def introspect_token(self, token: Any) -> dict[str, Any]:
            user = store.user(token.user_id)
            return {
                "active": True,
                "client_id": token.client_id,
                "token_type": token.token_type,
                "username": user.username,
                "sub": user.username,
                "scope": token.get_scope(),
                "iss": issuer,
                "exp": token.issued_at + token.expires_in,
                "iat": token.issued_at,
            }

    class Issuer(IssuerParameter):
        def get_issuer(self) -> str:
            return issuer

    app = flask.Flask("codeflow_bench_peer")
    app.config["OAUTH2_REFRESH_TOKEN_GENERATOR"] = True
    server = AuthorizationServer(app, query_client=store.query_client, save_token=store.save_token)
    server.register_grant(CodeGrant, [CodeChallenge(required=True), OpenID(require_nonce=False)])
    # OIDC Core §12.2: Authlib's extension for an ID token at a refresh, as codeflow's.
    server.register_grant(RefreshGrant, [IDToken()] if refresh_id_token else [])
    server.register_endpoint(Introspection)
    server.register_extension(Issuer())

    @app.get("/authorize")
    def authorize() -> Any:
        request = server.create_oauth2_request(None)
        grant = server.get_authorization_grant(request)
        return server.create_authorization_response(
            request, grant_user=store.user_by_name(USERNAME), grant=grant
        )

    @app.post("/token")
    def issue_token() -> Any:
        return server.create_token_response()

    @app.post("/introspect")
    def introspect() -> Any:
        return server.create_endpoint_response(Introspection.ENDPOINT_NAME)

    @app.get("/jwks")
    def jwks() -> Any:  # for the benchmark's untimed signature check, not Authlib's
        return {"keys": [{**key.as_dict(private=False), "kid": kid, "alg": "RS256"}]}

    if isinstance(store, SQLStore):
        app.teardown_appcontext(lambda exc: store.session.remove())
    return app


def main(argv: list[str]) -> None:
    """Serve the peer under waitress on 127.0.0.1:PORT, with waitress's 8 threads as
    codeflow serve has, until killed (see the module docstring)."""
    import waitress

    refresh_id_token = "--refresh-id-token" in argv
    port_arg, *where = [arg for arg in argv if arg != "--refresh-id-token"]
    port = int(port_arg)
    store = SQLStore(url=where[0], schema=where[1]) if where else DictStore()
    key = RSAKey.generate_key(2048, private=True)
    # The issuer is the http URL the load client knows; waitress tells the app the scheme
    # is https (url_scheme), as behind a TLS-terminating proxy, because Authlib refuses
    # plain http (its insecure-transport check) and the benchmark has no certificate.
    app = create_app(store, key, "peer-key", f"http://127.0.0.1:{port}", refresh_id_token)
    print("serving", flush=True)
    waitress.serve(app, host="127.0.0.1", port=port, threads=8, url_scheme="https", _quiet=True)


if __name__ == "__main__":
    main(sys.argv[1:])
