"""PKCE: RFC 7636 §4, as tightened by RFC 9700 §2.1.1 and OAuth 2.1 §7.5.1 (S256 only,
required of public clients and, by default, of every client).

In-process through the WSGI app (wsgiref.validate), plus one flow on a real socket.
"""

from __future__ import annotations

import base64
import hashlib

import pytest
import requests
from conftest import (
    CONFIDENTIAL,
    ISSUER,
    PUBLIC,
    REDIRECT,
    SECRET,
    Clock,
    browser_authorize,
    make_server,
    new_flow,
    pkce_pair,
    query_of,
)
from wsgi_client import Response, WSGIClient

import codeflow

BASIC = "Basic " + base64.b64encode(f"{CONFIDENTIAL}:{SECRET}".encode()).decode()

# RFC 7636 Appendix B: the example verifier and its S256 challenge.
APPENDIX_B_VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
APPENDIX_B_CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
APPENDIX_B_OCTETS = [
    116, 24, 223, 180, 151, 153, 224, 37, 79, 250, 96, 125, 216, 173, 187, 186,
    22, 212, 37, 77, 105, 214, 191, 240, 91, 88, 5, 88, 83, 132, 141, 121,
]  # fmt: skip
UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"


@pytest.fixture
def auto(clock: Clock) -> codeflow.Server:
    """A server that approves every request at once as alice: PKCE is all that is tested."""
    srv = make_server(clock, auto_approve="alice")
    srv.add_client(
        "legacy-app",
        client_secret="legacy-secret",
        redirect_uris=[REDIRECT],
        require_pkce=False,
    )
    return srv


@pytest.fixture
def browser(auto: codeflow.Server) -> WSGIClient:
    return WSGIClient(auto.wsgi)


def challenge_of(verifier: str) -> str:
    """RFC 7636 §4.2, computed here rather than by codeflow."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize(browser: WSGIClient, params: dict[str, str]) -> dict[str, str]:
    r = browser.get("/authorize", params=params)
    assert r.status == 302, r.text
    assert r.location.startswith(REDIRECT + "?")
    return query_of(r.location)


def assert_invalid_request(browser: WSGIClient, params: dict[str, str]) -> dict[str, str]:
    q = authorize(browser, params)
    assert q["error"] == "invalid_request"
    assert q["error_description"]
    assert q["state"] == params["state"]
    assert q["iss"] == ISSUER
    assert "code" not in q
    return q


def redeem(
    browser: WSGIClient,
    code: str,
    verifier: str | None,
    client_id: str = PUBLIC,
    authorization: str | None = None,
) -> Response:
    data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT}
    if verifier is not None:
        data["code_verifier"] = verifier
    headers = {}
    if authorization is None:
        data["client_id"] = client_id
    else:
        headers["Authorization"] = authorization
    return browser.post("/token", data=data, headers=headers)


def assert_invalid_grant(r: Response) -> None:
    assert r.status == 400, r.text
    assert r.json()["error"] == "invalid_grant"
    assert "access_token" not in r.json()
    assert r.headers["cache-control"] == "no-store"


###############################################################################
# The transformation: RFC 7636 §4.2 and Appendix B ############################
###############################################################################


def test_s256_matches_the_appendix_b_example():
    """RFC 7636 §4.2: "code_challenge = BASE64URL-ENCODE(SHA256(ASCII(code_verifier)))";
    Appendix B: the verifier dBjftJeZ4CVP-... yields E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM.
    """
    assert list(base64.urlsafe_b64decode(APPENDIX_B_VERIFIER + "=")) == APPENDIX_B_OCTETS
    assert codeflow.s256(APPENDIX_B_VERIFIER) == APPENDIX_B_CHALLENGE


def test_appendix_b_pair_completes_a_flow(browser):
    """RFC 7636 §4.6: the server "verifies it by calculating the code challenge from the
    received "code_verifier" and comparing it with the previously associated
    "code_challenge""; the Appendix B pair is such a pair.
    """
    flow = new_flow(PUBLIC, code_challenge=APPENDIX_B_CHALLENGE)
    q = authorize(browser, flow.params)
    r = redeem(browser, q["code"], APPENDIX_B_VERIFIER)
    assert r.status == 200, r.text
    assert r.json()["token_type"] == "Bearer"


@pytest.mark.parametrize(
    "verifier",
    [UNRESERVED[:43], (UNRESERVED * 2)[:128], "-._~" * 11],
    ids=["43 characters", "128 characters", "only punctuation"],
)
def test_any_verifier_of_43_to_128_unreserved_characters_is_accepted(browser, verifier):
    """RFC 7636 §4.1: code-verifier = 43*128unreserved, with unreserved = ALPHA / DIGIT /
    "-" / "." / "_" / "~".
    """
    flow = new_flow(PUBLIC, code_challenge=challenge_of(verifier))
    q = authorize(browser, flow.params)
    assert redeem(browser, q["code"], verifier).status == 200


def test_metadata_advertises_only_s256():
    """RFC 8414 §2: code_challenge_methods_supported lists the methods the server
    supports; RFC 7636 §4.2: "S256" is "Mandatory To Implement (MTI) on the server", and
    plain is not offered.
    """
    r = WSGIClient(make_server().wsgi).get("/.well-known/oauth-authorization-server")
    assert r.json()["code_challenge_methods_supported"] == ["S256"]


###############################################################################
# The authorization request: RFC 7636 §4.3, §4.4.1 ############################
###############################################################################


def test_public_client_must_send_a_code_challenge(browser):
    """RFC 7636 §4.4.1: "If the server requires Proof Key for Code Exchange (PKCE) by
    OAuth public clients and the client does not send the "code_challenge" in the
    request, the authorization endpoint MUST return the authorization error response
    with the "error" value set to "invalid_request"."
    """
    flow = new_flow(PUBLIC, code_challenge=None, code_challenge_method=None)
    q = assert_invalid_request(browser, flow.params)
    assert "code_challenge" in q["error_description"]


def test_confidential_client_must_send_a_code_challenge_by_default(browser):
    """RFC 9700 §2.1.1: "For confidential clients, the use of PKCE [RFC7636] is
    RECOMMENDED"; codeflow requires it of every client that did not opt out (DESIGN.md),
    answering as RFC 7636 §4.4.1 says: "invalid_request".
    """
    flow = new_flow(CONFIDENTIAL, code_challenge=None, code_challenge_method=None)
    assert_invalid_request(browser, flow.params)


def test_confidential_client_that_opted_out_may_omit_pkce(browser):
    """RFC 7636 §4.4.1 applies where "the server requires" PKCE; RFC 9700 §2.1.1 lets a
    confidential client use the nonce or another protection instead. Without a challenge
    the code is redeemed without a verifier.
    """
    flow = new_flow("legacy-app", code_challenge=None, code_challenge_method=None)
    q = authorize(browser, flow.params)
    assert "code" in q
    basic = "Basic " + base64.b64encode(b"legacy-app:legacy-secret").decode()
    r = redeem(browser, q["code"], None, authorization=basic)
    assert r.status == 200, r.text


def test_confidential_client_that_opted_out_is_still_held_to_a_challenge_it_sends(browser):
    """RFC 7636 §4.5/§4.6: once a code_challenge is sent, the token request must carry the
    matching "code_verifier"; opting out of the requirement does not weaken it.
    """
    flow = new_flow("legacy-app")
    q = authorize(browser, flow.params)
    basic = "Basic " + base64.b64encode(b"legacy-app:legacy-secret").decode()
    assert_invalid_grant(redeem(browser, q["code"], None, authorization=basic))


def test_public_client_cannot_opt_out_of_pkce():
    """RFC 9700 §2.1.1: "Public clients MUST use PKCE [RFC7636] to this end"; registering
    a public client that skips it is refused.
    """
    with pytest.raises(ValueError, match="PKCE"):
        make_server().add_client("spa", redirect_uris=[REDIRECT], require_pkce=False)


@pytest.mark.parametrize("client_id", [PUBLIC, CONFIDENTIAL])
@pytest.mark.parametrize(
    "method",
    ["plain", None, "s256", "S512", "sha256"],
    ids=["plain", "missing (means plain)", "lower-case s256", "S512", "sha256"],
)
def test_only_the_s256_method_is_accepted(browser, client_id, method):
    """RFC 7636 §4.3: code_challenge_method "Defaults to "plain" if not present in the
    request"; RFC 9700 §2.1.1: "Clients SHOULD use PKCE code challenge methods that do
    not expose the PKCE verifier in the authorization request". codeflow accepts only
    the exact, case-sensitive "S256"; anything else is invalid_request (§4.4.1).
    """
    flow = new_flow(client_id, code_challenge_method=method)
    assert_invalid_request(browser, flow.params)


def test_plain_challenge_equal_to_the_verifier_is_refused(browser):
    """RFC 7636 §4.2: plain is "code_challenge = code_verifier"; RFC 9700 §2.1.1 / OAuth 2.1:
    the server only accepts S256, since plain is visible to whoever sees the request.
    """
    flow = new_flow(PUBLIC, code_challenge=UNRESERVED[:43], code_challenge_method="plain")
    assert_invalid_request(browser, flow.params)


@pytest.mark.parametrize("client_id", [PUBLIC, "legacy-app"])
def test_code_challenge_method_without_a_challenge_is_refused(browser, client_id):
    """RFC 7636 §4.3: code_challenge is the REQUIRED parameter and the method only
    qualifies it; a method alone is a malformed request (RFC 6749 §4.1.2.1 invalid_request).
    """
    flow = new_flow(client_id, code_challenge=None, code_challenge_method="S256")
    assert_invalid_request(browser, flow.params)


@pytest.mark.parametrize(
    "challenge",
    [
        APPENDIX_B_CHALLENGE[:42],
        APPENDIX_B_CHALLENGE + "A",
        APPENDIX_B_CHALLENGE + "=",
        APPENDIX_B_CHALLENGE[:-1] + "+",
        APPENDIX_B_CHALLENGE[:-1] + "/",
        APPENDIX_B_CHALLENGE[:-1] + ".",
        APPENDIX_B_CHALLENGE[:-1] + " ",
        "x" * 128,
    ],
    ids=["42 chars", "44 chars", "padding", "plus", "slash", "dot", "space", "128 chars"],
)
def test_malformed_s256_challenge_is_refused(browser, challenge):
    """RFC 7636 §4.2: the S256 challenge is BASE64URL-ENCODE of a SHA-256 digest, which is
    always 43 characters of the base64url alphabet without padding (Appendix A);
    anything else is invalid_request (§4.4.1).
    """
    flow = new_flow(PUBLIC, code_challenge=challenge)
    assert_invalid_request(browser, flow.params)


def test_the_challenge_is_bound_to_the_code_in_storage(auto, browser):
    """RFC 7636 §4.4: "the server MUST associate the "code_challenge" and
    "code_challenge_method" values with the authorization code"; storage keeps the code
    only as a hash (RFC 6749 §10.3 spirit).
    """
    flow = new_flow(PUBLIC)
    code = authorize(browser, flow.params)["code"]
    taken = auto.storage.consume_code(codeflow.token_hash(code))
    assert taken is not None
    stored = taken[0]
    assert stored.code_challenge == flow.params["code_challenge"]
    assert stored.code_hash != code
    assert auto.storage.consume_code(code) is None


###############################################################################
# The token request: RFC 7636 §4.5, §4.6 #######################################
###############################################################################


def test_right_verifier_gets_tokens(browser):
    """RFC 7636 §4.6: "If the values are equal, the token endpoint MUST continue processing
    as normal (as defined by OAuth 2.0 [RFC6749])."
    """
    flow = new_flow(PUBLIC)
    q = authorize(browser, flow.params)
    r = redeem(browser, q["code"], flow.verifier)
    assert r.status == 200, r.text
    assert r.json()["access_token"]


BAD_VERIFIERS = {
    "wrong verifier": lambda good: pkce_pair()[0],
    "missing verifier": lambda good: None,
    "42 characters": lambda good: good[:42],
    "129 characters": lambda good: (good * 3)[:129],
    "reserved character": lambda good: good[:-1] + "+",
    "non-ASCII": lambda good: good[:-1] + "\u00e9",
    "the challenge itself": lambda good: challenge_of(good),
}


@pytest.mark.parametrize("client_id", [PUBLIC, CONFIDENTIAL])
@pytest.mark.parametrize("bad", BAD_VERIFIERS.values(), ids=BAD_VERIFIERS.keys())
def test_bad_verifier_is_invalid_grant_and_burns_the_code(auto, browser, client_id, bad):
    """RFC 7636 §4.6: "If the values are not equal, an error response indicating
    "invalid_grant" as described in Section 5.2 of [RFC6749] MUST be returned."
    The code is single use (RFC 6749 §4.1.2): a retry with the right verifier fails too.
    """
    flow = new_flow(client_id)
    code = authorize(browser, flow.params)["code"]
    auth = BASIC if client_id == CONFIDENTIAL else None
    assert_invalid_grant(redeem(browser, code, bad(flow.verifier), client_id, auth))
    assert_invalid_grant(redeem(browser, code, flow.verifier, client_id, auth))
    assert auto.storage.consume_code(codeflow.token_hash(code)) is None


def test_verifier_for_a_code_issued_without_a_challenge_is_invalid_grant(auto, browser):
    """RFC 9700 §2.1.1 (OAuth 2.1 §7.5.1): "Authorization servers MUST mitigate PKCE
    downgrade attacks by ensuring that a token request containing a code_verifier
    parameter is accepted only if a code_challenge parameter was present in the
    authorization request."
    """
    flow = new_flow("legacy-app", code_challenge=None, code_challenge_method=None)
    code = authorize(browser, flow.params)["code"]
    basic = "Basic " + base64.b64encode(b"legacy-app:legacy-secret").decode()
    assert_invalid_grant(redeem(browser, code, flow.verifier, authorization=basic))
    assert_invalid_grant(redeem(browser, code, None, authorization=basic))


def test_verifier_of_another_flow_is_invalid_grant(browser):
    """RFC 7636 §1: the verifier proves that the client redeeming the code is the one that
    started this flow; RFC 7636 §4.6: not equal means "invalid_grant".
    """
    first, second = new_flow(PUBLIC), new_flow(PUBLIC)
    code = authorize(browser, first.params)["code"]
    authorize(browser, second.params)
    assert_invalid_grant(redeem(browser, code, second.verifier))


###############################################################################
# On the wire ##################################################################
###############################################################################


@pytest.mark.http
def test_on_the_wire_wrong_verifier_burns_the_code(live):
    """RFC 7636 §4.6: a mismatch "MUST" be invalid_grant; RFC 6749 §4.1.2: the code is
    single use, so the right verifier cannot rescue it. Over real HTTP, through the
    login and consent pages.
    """
    _, base = live
    flow = new_flow(PUBLIC)
    q = browser_authorize(base, flow)
    data = {
        "grant_type": "authorization_code",
        "client_id": PUBLIC,
        "code": q["code"],
        "redirect_uri": REDIRECT,
    }
    wrong = requests.post(
        base + "/token", data={**data, "code_verifier": pkce_pair()[0]}, timeout=10
    )
    assert wrong.status_code == 400
    assert wrong.json()["error"] == "invalid_grant"
    right = requests.post(
        base + "/token", data={**data, "code_verifier": flow.verifier}, timeout=10
    )
    assert right.status_code == 400
    assert right.json()["error"] == "invalid_grant"
