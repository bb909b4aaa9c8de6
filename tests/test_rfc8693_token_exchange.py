"""RFC 8693: token exchange for services (delegation, §1.1).

A resource server (a confidential client that a registered resource names as its server)
trades a user's access token whose audience is that resource for a token to a downstream
resource its ``token_exchange`` policy names: same scope or less, an ``act`` claim naming
it (§4.1), ``issued_token_type`` in the answer (§2.2.1); anything else is refused with
the RFC's error codes (§2.2.2). In-process through ``wsgiref.validate``; the delegated
token is verified with PyJWT against the published JWKS, and once over real HTTP by the
SDK's BearerValidator of the downstream API.
"""

from __future__ import annotations

import pytest
import requests
from codeflow_sdk import BearerValidator, InvalidTokenError
from conftest import CONFIDENTIAL, REDIRECT, SECRET, USERNAME, Clock, make_server, new_flow
from oidc_helpers import jwks_keys, verify_jwt
from wsgi_client import Response, WSGIClient, basic

import codeflow

EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
ORDERS, STOCK, BILLING = ("https://orders.example/api", "https://stock.example/api",
                          "https://billing.example/api")  # fmt: skip
SVC, SVC_SECRET = "orders-svc", "orders-svc-secret"
STOCK_SVC, STOCK_SECRET = "stock-svc", "stock-svc-secret"


def setup_services(srv: codeflow.Server) -> None:
    """orders-svc serves ORDERS and may call STOCK for the user; stock-svc serves STOCK and
    may call BILLING. Every API defines the read scope."""
    srv.add_resource(ORDERS, scopes=["read", "write"], client_id=SVC)
    srv.add_resource(STOCK, scopes=["read", "write"], client_id=STOCK_SVC)
    srv.add_resource(BILLING, scopes=["read"], access_token_jwt=False)
    srv.add_client(SVC, client_secret=SVC_SECRET, grant_types=[EXCHANGE],
                   token_exchange=[STOCK])  # fmt: skip
    srv.add_client(STOCK_SVC, client_secret=STOCK_SECRET, grant_types=[EXCHANGE],
                   token_exchange=[BILLING])  # fmt: skip


@pytest.fixture
def server(clock: Clock) -> codeflow.Server:
    srv = make_server(clock, auto_approve=USERNAME)
    setup_services(srv)
    return srv


@pytest.fixture
def wc(server: codeflow.Server) -> WSGIClient:
    return WSGIClient(server.wsgi)


def user_token(server: codeflow.Server, scope: str = "read write", resource: str = ORDERS) -> str:
    """The access token the user's app (CONFIDENTIAL) got for ``resource``."""
    return server.issue_tokens(USERNAME, CONFIDENTIAL, scope, resource=resource)["access_token"]


def exchange(wc: WSGIClient, subject: str, client: str = SVC, secret: str = SVC_SECRET,
             **params: str) -> Response:  # fmt: skip
    data = {"grant_type": EXCHANGE, "subject_token": subject, "subject_token_type": ACCESS,
            "resource": STOCK, **params}  # fmt: skip
    return wc.post("/token", {k: v for k, v in data.items() if v}, headers=basic(client, secret))


def refused(r: Response, error: str, status: int = 400) -> None:
    assert (r.status, r.json()["error"]) == (status, error), r.text
    assert r.headers["cache-control"] == "no-store"


# -- The exchange: §2.1, §2.2.1, §4.1 -------------------------------------------------------


def test_a_service_exchanges_a_users_token_for_a_downstream_one(
    server: codeflow.Server, wc: WSGIClient, clock: Clock
) -> None:
    """RFC 8693 §2.2.1: access_token, issued_token_type (REQUIRED), token_type, expires_in;
    the new token is for the downstream resource (aud), the same user (sub), held by the
    service (client_id), with act naming it (§4.1: "the acting party to whom authority
    has been delegated"); no refresh token, no ID token."""
    r = exchange(wc, user_token(server))
    assert r.status == 200, r.text
    body = r.json()
    assert body["issued_token_type"] == ACCESS and body["token_type"] == "Bearer"
    assert "refresh_token" not in body and "id_token" not in body
    assert body["scope"] == "read write"
    _, claims = verify_jwt(body["access_token"], jwks_keys(wc), audience=STOCK, now=clock.now)
    assert claims["aud"] == STOCK and claims["sub"] == USERNAME
    assert claims["client_id"] == SVC and claims["act"] == {"sub": SVC}


def test_the_scope_may_narrow_and_never_widen(server: codeflow.Server, wc: WSGIClient) -> None:
    """RFC 8693 §2.1 scope; the service gets the user's scope or less, never more."""
    subject = user_token(server, "read")
    r = exchange(wc, subject, scope="read")
    assert r.status == 200 and r.json()["scope"] == "read", r.text
    refused(exchange(wc, subject, scope="read write"), "invalid_scope")


def test_a_chain_of_delegation_nests_act(
    server: codeflow.Server, wc: WSGIClient, clock: Clock
) -> None:
    """RFC 8693 §4.1: "A chain of delegation can be expressed by nesting one act claim
    within another": stock-svc exchanges what orders-svc got, for BILLING (opaque: the
    act claim shows in introspection, §2.2.1 of RFC 7662 as extended by RFC 8693 §4.1)."""
    first = exchange(wc, user_token(server, "read")).json()["access_token"]
    r = exchange(wc, first, STOCK_SVC, STOCK_SECRET, resource=BILLING)
    assert r.status == 200, r.text
    info = wc.post("/introspect", {"token": r.json()["access_token"]},
                   headers=basic(CONFIDENTIAL, SECRET)).json()  # fmt: skip
    assert info["active"] and info["aud"] == BILLING and info["sub"] == USERNAME
    assert info["act"] == {"sub": STOCK_SVC, "act": {"sub": SVC}}


def test_the_exchanged_token_lives_no_longer_than_the_users(
    server: codeflow.Server, wc: WSGIClient, clock: Clock
) -> None:
    """Exchanging again and again never outlives the user's token: the new one expires by
    the subject token's expiry."""
    subject = user_token(server)
    clock.advance(server.access_token_lifetime - 100)
    body = exchange(wc, subject).json()
    assert 0 < body["expires_in"] <= 100
    clock.advance(101)
    refused(exchange(wc, subject), "invalid_request")


def test_ending_the_users_grant_ends_the_exchanged_token(
    server: codeflow.Server, wc: WSGIClient
) -> None:
    """RFC 6749 §4.1.2: a replayed code revokes what it issued; the delegated token belongs
    to that grant, so it goes too."""
    server.auto_approve = USERNAME
    flow = new_flow(CONFIDENTIAL, scope="read")
    r = wc.get("/authorize", params=[*flow.params.items(), ("resource", ORDERS)])
    code = dict(p.split("=", 1) for p in r.location.split("?", 1)[1].split("&"))["code"]
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
            "code_verifier": flow.verifier}  # fmt: skip
    subject = wc.post("/token", data, headers=basic(CONFIDENTIAL, SECRET)).json()["access_token"]
    delegated = exchange(wc, subject).json()["access_token"]
    assert wc.post("/token", data, headers=basic(CONFIDENTIAL, SECRET)).status == 400
    info = wc.post("/introspect", {"token": delegated}, headers=basic(CONFIDENTIAL, SECRET))
    assert info.json() == {"active": False}


# -- Refusals: §2.2.2 ---------------------------------------------------------------------


def test_without_the_policy_the_target_is_refused(server: codeflow.Server, wc: WSGIClient) -> None:
    """RFC 8693 §2.2.2: "If the authorization server is unwilling or unable to issue a
    token for any target service indicated by the resource or audience parameters, the
    invalid_target error code SHOULD be used": a resource not in the client's policy."""
    subject = user_token(server)
    refused(exchange(wc, subject, resource=BILLING), "invalid_target")
    refused(exchange(wc, subject, resource="https://unknown.example/"), "invalid_target")
    refused(exchange(wc, subject, resource=""), "invalid_target")  # no target at all
    server.update_client(SVC, token_exchange=[])
    refused(exchange(wc, subject), "invalid_target")


def test_audience_names_the_target_too(server: codeflow.Server, wc: WSGIClient) -> None:
    """RFC 8693 §2.1 audience: here a registered resource's URI, like resource."""
    r = exchange(wc, user_token(server), resource="", audience=STOCK)
    assert r.status == 200, r.text


def test_a_client_without_the_grant_is_unauthorized(
    server: codeflow.Server, wc: WSGIClient
) -> None:
    """RFC 6749 §5.2 unauthorized_client: the client's grant_types lack token exchange
    (CONFIDENTIAL serves no resource and has no policy either)."""
    r = exchange(wc, user_token(server), CONFIDENTIAL, SECRET)
    refused(r, "unauthorized_client")


def test_a_token_for_another_resource_is_unacceptable(
    server: codeflow.Server, wc: WSGIClient
) -> None:
    """RFC 8693 §2.2.2: a subject_token "unacceptable based on policy" is invalid_request:
    orders-svc may exchange only tokens whose audience is ORDERS, which it serves; a
    token without resources (the default audience) neither."""
    refused(exchange(wc, user_token(server, "read", STOCK)), "invalid_request")
    plain = server.issue_tokens(USERNAME, CONFIDENTIAL, "openid")["access_token"]
    refused(exchange(wc, plain), "invalid_request")


@pytest.mark.parametrize(
    "changes",
    [
        {"subject_token": "no-such-token"},
        {"subject_token": ""},
        {"subject_token_type": ""},
        {"subject_token_type": "urn:ietf:params:oauth:token-type:id_token"},
        {"subject_token_type": "urn:ietf:params:oauth:token-type:refresh_token"},
        {"requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"},
        {"requested_token_type": "urn:ietf:params:oauth:token-type:saml2"},
        {"actor_token": "x", "actor_token_type": ACCESS},
        {"actor_token_type": ACCESS},
    ],
)  # fmt: skip
def test_malformed_or_unsupported_requests_are_invalid_request(
    server: codeflow.Server, wc: WSGIClient, changes: dict[str, str]
) -> None:
    """RFC 8693 §2.2.2: "If the request itself is not valid or if either the subject_token
    or actor_token are invalid for any reason, or are unacceptable based on policy, the
    invalid_request error code MUST be used"; §2.1 token types validated."""
    refused(exchange(wc, user_token(server), **changes), "invalid_request")


def test_a_refresh_token_is_no_subject_token(server: codeflow.Server, wc: WSGIClient) -> None:
    """RFC 8693 §2.1: the subject token is an access token (its type says so); a refresh
    token sent as one is invalid_request."""
    issued = server.issue_tokens(USERNAME, CONFIDENTIAL, "offline_access read", resource=ORDERS)
    refused(exchange(wc, issued["refresh_token"]), "invalid_request")


def test_requested_token_type_jwt_only_for_jwt_tokens(
    server: codeflow.Server, wc: WSGIClient
) -> None:
    """RFC 8693 §3: ...:jwt names a JWT; a downstream API with opaque tokens cannot have one."""
    jwt_type = "urn:ietf:params:oauth:token-type:jwt"
    r = exchange(wc, user_token(server), requested_token_type=jwt_type)
    assert r.status == 200 and r.json()["issued_token_type"].endswith(":jwt"), r.text
    first = exchange(wc, user_token(server, "read")).json()["access_token"]
    r = exchange(wc, first, STOCK_SVC, STOCK_SECRET, resource=BILLING,
                 requested_token_type=jwt_type)  # fmt: skip
    refused(r, "invalid_request")


def test_the_policy_needs_the_grant_type() -> None:
    """A client with a token_exchange policy and no token-exchange grant is a mistake,
    refused at registration (config file and CLI alike)."""
    srv = codeflow.Server()
    with pytest.raises(ValueError, match="token-exchange"):
        srv.add_client("svc", client_secret="s", token_exchange=[STOCK])
    codeflow.load_config(srv, {"clients": [{"client_id": "svc", "client_secret": "s",
                                            "grant_types": [EXCHANGE],
                                            "token_exchange": [STOCK]}]})  # fmt: skip
    assert srv.storage.get_client("svc").token_exchange == (STOCK,)


# -- Over real HTTP: the downstream API accepts it, another refuses it -----------------------


def test_the_downstream_api_accepts_the_delegated_token_over_http() -> None:
    """RFC 9068 §4 at the downstream API: the SDK's validator for STOCK accepts the
    exchanged token; ORDERS' validator refuses it (its aud is STOCK alone)."""
    srv = codeflow.Server()
    with srv.running() as base:
        setup_services(srv)
        srv.add_client(CONFIDENTIAL, client_secret=SECRET, grant_types=["client_credentials"])
        srv.add_user(USERNAME, "pw")
        subject = srv.issue_tokens(USERNAME, CONFIDENTIAL, "read", resource=ORDERS)
        r = requests.post(base + "/token", auth=(SVC, SVC_SECRET), timeout=10, data={
            "grant_type": EXCHANGE, "subject_token": subject["access_token"],
            "subject_token_type": ACCESS, "resource": STOCK})  # fmt: skip
        assert r.status_code == 200, r.text
        delegated = r.json()["access_token"]
        token = BearerValidator(base, resource=STOCK).validate(delegated, "read")
        assert token.sub == USERNAME and token.client_id == SVC
        assert token.claims["act"] == {"sub": SVC}
        with pytest.raises(InvalidTokenError, match="another audience"):
            BearerValidator(base, resource=ORDERS).validate(delegated)
