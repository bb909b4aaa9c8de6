"""OpenID Connect RP-Initiated Logout 1.0 §2, §3 (and §4 validation): the end_session
endpoint, id_token_hint, post_logout_redirect_uri registered per client, state echoed,
and the confirmation asked of the End-User.

In-process through wsgiref.validate with the test clock; "the session is ended" is
checked the way a relying party would see it: prompt=none answers login_required.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from conftest import ISSUER, REDIRECT, USERNAME, Clock, form_fields, new_flow, query_of
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from oidc_helpers import sign_in_for_tokens
from wsgi_client import Response, WSGIClient

import codeflow

RP, RP_SECRET = "rp-app", "rp-secret"
OTHER_RP = "other-rp"
LOGGED_OUT = "http://127.0.0.1:9000/logged-out"
OTHER_LOGGED_OUT = "http://127.0.0.1:9100/bye"
SESSION_COOKIE = codeflow.SESSION_COOKIE  # the name on an http issuer


@pytest.fixture
def server(clock: Clock) -> codeflow.Server:
    srv = codeflow.Server(issuer=ISSUER, clock=clock)
    srv.add_client(
        RP,
        client_secret=RP_SECRET,
        redirect_uris=[REDIRECT],
        post_logout_redirect_uris=[LOGGED_OUT, LOGGED_OUT + "?from=op"],
    )
    srv.add_client(
        OTHER_RP,
        client_secret="other-secret",
        redirect_uris=[REDIRECT],
        post_logout_redirect_uris=[OTHER_LOGGED_OUT],
    )
    srv.add_user(USERNAME, "alice-password", claims={"name": "Alice"})
    srv.add_user("bob", "bob-password")
    return srv


@pytest.fixture
def browser(server: codeflow.Server) -> WSGIClient:
    return WSGIClient(server.wsgi)


@pytest.fixture
def id_token(browser: WSGIClient) -> str:
    """Alice signs in to RP in ``browser`` (consenting to openid profile): her ID token."""
    tokens = sign_in_for_tokens(browser, RP, RP_SECRET, password="alice-password")
    assert session_alive(browser)
    return tokens["id_token"]


@pytest.fixture
def end_session_path(browser: WSGIClient) -> str:
    """The end_session_endpoint, found through discovery (RP-Initiated Logout §2.1)."""
    url = browser.get("/.well-known/openid-configuration").json()["end_session_endpoint"]
    assert url.startswith(ISSUER + "/")
    return url.removeprefix(ISSUER)


def session_alive(browser: WSGIClient) -> bool:
    """Ask as RP with prompt=none: a code means the session lives, login_required not."""
    r = browser.get("/authorize", params=new_flow(RP, prompt="none").params)
    assert r.status == 302, r.text
    q = query_of(r.location)
    if "code" in q:
        return True
    assert q["error"] == "login_required", q
    return False


def deletes_session_cookie(r: Response) -> bool:
    for raw in r.cookies_set:
        name, _, rest = raw.partition("=")
        if name == SESSION_COOKIE:
            value = rest.split(";")[0].strip('"')
            return value == "" or "max-age=-1" in raw.lower() or "max-age=0" in raw.lower()
    return False


def logout(browser: WSGIClient, path: str, method: str = "GET", **params: str) -> Response:
    if method == "GET":
        return browser.get(path, params=params)
    return browser.post(path, data=params)


def assert_error_page(r: Response) -> None:
    """RP-Initiated Logout §4: "If any of the validation procedures defined in this
    specification fail, the OP MUST NOT perform post-logout redirection"."""
    assert r.status == 400, r.text
    assert "location" not in r.headers
    assert r.headers["content-type"].startswith("text/html")
    assert not deletes_session_cookie(r)


def b64(data: bytes | dict) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


###############################################################################
# With a valid id_token_hint: RP-Initiated Logout §2, §3 #######################
###############################################################################


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_logout_with_hint_redirects_with_state_and_ends_the_session(
    browser, id_token, end_session_path, method
):
    """RP-Initiated Logout §2: "The OP MUST support the use of the HTTP GET and POST
    methods"; state: "If included in the logout request, the OP passes this value back to
    the RP using the state parameter when redirecting the User Agent back to the RP."
    """
    r = logout(
        browser,
        end_session_path,
        method,
        id_token_hint=id_token,
        post_logout_redirect_uri=LOGGED_OUT,
        state="af0ifjsldkj",
    )
    assert r.status in (302, 303), r.text
    assert r.location.split("?")[0] == LOGGED_OUT
    assert query_of(r.location) == {"state": "af0ifjsldkj"}
    assert deletes_session_cookie(r)
    assert not session_alive(browser)


def test_state_is_not_invented_when_absent(browser, id_token, end_session_path):
    """RP-Initiated Logout §2 state: "If included in the logout request, the OP passes
    this value back"; without one, the redirect carries none.
    """
    r = logout(
        browser, end_session_path, id_token_hint=id_token, post_logout_redirect_uri=LOGGED_OUT
    )
    assert r.status == 302
    assert r.location == LOGGED_OUT


def test_registered_uri_keeps_its_own_query(browser, id_token, end_session_path):
    """RP-Initiated Logout §3: the value MUST match a registered one exactly; RFC 6749
    §3.1.2 (for redirects in general): the query component "MUST be retained when adding
    additional query parameters".
    """
    uri = LOGGED_OUT + "?from=op"
    r = logout(
        browser, end_session_path, id_token_hint=id_token, post_logout_redirect_uri=uri, state="s"
    )
    assert r.status == 302
    assert query_of(r.location) == {"from": "op", "state": "s"}


def test_logout_with_hint_and_no_redirect_uri_shows_a_signed_out_page(
    browser, id_token, end_session_path
):
    """RP-Initiated Logout §3: "Post-logout redirection is only done when the logout is
    RP-initiated, in which case the redirection target is the post_logout_redirect_uri";
    without one the OP itself tells the user they are signed out.
    """
    r = logout(browser, end_session_path, id_token_hint=id_token)
    assert r.status == 200, r.text
    assert "location" not in r.headers
    assert "signed out" in r.text.lower()
    assert deletes_session_cookie(r)
    assert not session_alive(browser)


def test_client_id_matching_the_hint_is_accepted(browser, id_token, end_session_path):
    """RP-Initiated Logout §2 client_id: "When both client_id and id_token_hint are
    present, the OP MUST verify that the Client Identifier matches the one used when
    issuing the ID Token."
    """
    r = logout(
        browser,
        end_session_path,
        id_token_hint=id_token,
        client_id=RP,
        post_logout_redirect_uri=LOGGED_OUT,
    )
    assert r.status == 302
    assert not session_alive(browser)


def test_client_id_that_mismatches_the_hint_is_refused(browser, id_token, end_session_path):
    """RP-Initiated Logout §2 client_id: "the OP MUST verify that the Client Identifier
    matches the one used when issuing the ID Token."
    """
    r = logout(
        browser,
        end_session_path,
        id_token_hint=id_token,
        client_id=OTHER_RP,
        post_logout_redirect_uri=OTHER_LOGGED_OUT,
    )
    assert_error_page(r)
    assert session_alive(browser)


def test_an_expired_id_token_hint_is_still_accepted(browser, clock, id_token, end_session_path):
    """RP-Initiated Logout §2 id_token_hint: "The OP SHOULD accept ID Tokens when the RP
    identified by the ID Token's aud claim and/or sid claim has a current session or had a
    recent session at the OP, even when the exp time has passed."
    """
    exp = jwt.decode(id_token, options={"verify_signature": False})["exp"]
    clock.advance(exp - clock() + 60)
    assert clock() > exp
    r = logout(
        browser, end_session_path, id_token_hint=id_token, post_logout_redirect_uri=LOGGED_OUT,
        state="late",
    )  # fmt: skip
    assert r.status == 302, r.text
    assert query_of(r.location) == {"state": "late"}
    assert not session_alive(browser)


###############################################################################
# post_logout_redirect_uri must be registered: RP-Initiated Logout §3 ##########
###############################################################################

UNREGISTERED = {
    "unknown": "https://attacker.example/logged-out",
    "another client's": OTHER_LOGGED_OUT,
    "the login redirect_uri": REDIRECT,
    "with an extra query": LOGGED_OUT + "?next=https://attacker.example",
    "with a trailing slash": LOGGED_OUT + "/",
    "other case": LOGGED_OUT.upper(),
}


@pytest.mark.parametrize("uri", UNREGISTERED.values(), ids=UNREGISTERED.keys())
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_unregistered_post_logout_redirect_uri_gets_a_page_not_a_redirect(
    browser, id_token, end_session_path, uri, method
):
    """RP-Initiated Logout §3: "The OP also MUST NOT perform post-logout redirection if the
    post_logout_redirect_uri value supplied does not exactly match one of the previously
    registered post_logout_redirect_uris values."
    """
    r = logout(
        browser, end_session_path, method, id_token_hint=id_token, post_logout_redirect_uri=uri
    )
    assert_error_page(r)
    assert session_alive(browser)


def test_post_logout_redirect_uri_without_a_client_is_not_followed(browser, end_session_path):
    """RP-Initiated Logout §3: "if it [id_token_hint] is not supplied with
    post_logout_redirect_uri, the OP MUST NOT perform post-logout redirection unless the OP
    has other means of confirming the legitimacy of the post-logout redirection target."
    """
    r = logout(browser, end_session_path, post_logout_redirect_uri=LOGGED_OUT, state="s")
    assert_error_page(r)


###############################################################################
# Hints that are not our ID tokens: RP-Initiated Logout §2, §4 #################
###############################################################################


def _forged_hints(server: codeflow.Server, clock: Clock, genuine: str) -> dict[str, str]:
    header = jwt.get_unverified_header(genuine)
    claims = jwt.decode(genuine, options={"verify_signature": False})
    head, _, signature = genuine.split(".")
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        codeflow.private_key(codeflow.signing_key(server, "RS256"))
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    hs_head = b64({"alg": "HS256", "kid": header["kid"], "typ": "JWT"})
    hs_input = f"{hs_head}.{b64(claims)}".encode()
    other_issuer = codeflow.Server("http://other.example", server.storage, clock)
    return {
        "garbage": "not-a-jwt",
        "another key, same kid": jwt.encode(
            claims, attacker, algorithm="RS256", headers={"kid": header["kid"]}
        ),
        "alg none": f"{b64({'alg': 'none', 'kid': header['kid']})}.{b64(claims)}.",
        "HS256 keyed with our public key": hs_input.decode()
        + "."
        + b64(hmac.new(public_pem, hs_input, hashlib.sha256).digest()),
        "payload swapped": f"{head}.{b64({**claims, 'sub': 'bob'})}.{signature}",
        "another issuer, our key": other_issuer.issue_tokens(USERNAME, RP, "openid")["id_token"],
    }


@pytest.mark.parametrize(
    "kind",
    [
        "garbage",
        "another key, same kid",
        "alg none",
        "HS256 keyed with our public key",
        "payload swapped",
        "another issuer, our key",
    ],
)
def test_a_hint_that_is_not_our_id_token_is_refused(
    server, clock, browser, id_token, end_session_path, kind
):
    """RP-Initiated Logout §2 id_token_hint: "When an id_token_hint parameter is present,
    the OP MUST validate that it was the issuer of the ID Token."
    """
    hint = _forged_hints(server, clock, id_token)[kind]
    r = logout(browser, end_session_path, id_token_hint=hint, post_logout_redirect_uri=LOGGED_OUT)
    assert_error_page(r)
    r = logout(browser, end_session_path, id_token_hint=hint)
    assert_error_page(r)
    assert session_alive(browser)


def test_a_hint_is_judged_by_the_servers_clock_not_the_wall_clock():
    """RP-Initiated Logout §2 id_token_hint: "The OP SHOULD accept ID Tokens when the RP
    ... has a current session or had a recent session at the OP, even when the exp time
    has passed." Time is the server's (its clock= option), whatever the wall clock says.
    """
    clock = Clock(time.time() + 24 * 3600)  # a test clock set a day ahead
    srv = codeflow.Server(ISSUER, clock=clock)
    srv.add_client(RP, client_secret=RP_SECRET, redirect_uris=[REDIRECT],
                   post_logout_redirect_uris=[LOGGED_OUT])  # fmt: skip
    srv.add_user(USERNAME, "alice-password")
    browser = WSGIClient(srv.wsgi)
    hint = sign_in_for_tokens(browser, RP, RP_SECRET, password="alice-password")["id_token"]
    r = browser.get(
        "/logout", params={"id_token_hint": hint, "post_logout_redirect_uri": LOGGED_OUT}
    )
    assert r.status == 302, r.text
    assert not session_alive(browser)


def test_a_hint_for_another_user_asks_before_signing_out(
    server, browser, id_token, end_session_path
):
    """RP-Initiated Logout §2: "the OP MUST ask the End-User this question if an
    id_token_hint was not provided or if the supplied ID Token does not belong to the
    current OP session with the RP and/or currently logged in End-User."
    """
    bobs = server.issue_tokens("bob", RP, "openid")["id_token"]
    r = logout(browser, end_session_path, id_token_hint=bobs, post_logout_redirect_uri=LOGGED_OUT)
    assert not deletes_session_cookie(r)
    assert session_alive(browser)
    assert r.status == 200
    assert "csrf_token" in form_fields(r.text)


def test_a_hint_of_a_removed_user_asks_the_new_user_of_that_name(
    server, browser, id_token, end_session_path
):
    """RP-Initiated Logout §2: the OP MUST ask "if the supplied ID Token does not belong
    to the ... currently logged in End-User". Alice is removed and another alice added
    (OIDC Core §2: a sub is "never reassigned"); the old alice's ID token does not sign
    the new one out unasked."""
    server.remove_user(USERNAME)
    server.add_user(USERNAME, "another-password")
    sign_in_for_tokens(browser, RP, RP_SECRET, password="another-password")
    r = logout(browser, end_session_path, id_token_hint=id_token,
               post_logout_redirect_uri=LOGGED_OUT)  # fmt: skip
    assert not deletes_session_cookie(r)
    assert session_alive(browser)
    assert r.status == 200
    assert "csrf_token" in form_fields(r.text)


def test_a_jwt_access_token_is_not_an_id_token_hint(server, browser, id_token, end_session_path):
    """RP-Initiated Logout §2 id_token_hint: "ID Token previously issued by the OP to the
    RP"; RFC 9068 §2.1 types access tokens at+jwt precisely so that one kind of JWT is not
    taken for another. An access token is no hint, so the session is not ended unasked.
    """
    server.add_client("jwt-rp", client_secret="s", redirect_uris=[REDIRECT], access_token_jwt=True)
    access = server.issue_tokens(USERNAME, "jwt-rp", "openid")["access_token"]
    assert jwt.get_unverified_header(access)["typ"] == "at+jwt"
    r = logout(browser, end_session_path, id_token_hint=access)
    assert not deletes_session_cookie(r)
    assert session_alive(browser)


###############################################################################
# Without a hint: the End-User confirms. RP-Initiated Logout §2 ###############
###############################################################################


def test_without_a_hint_the_user_is_asked_first(browser, id_token, end_session_path):
    """RP-Initiated Logout §2: "the OP MUST ask the End-User this question if an
    id_token_hint was not provided"; until the End-User answers, nothing is ended.
    """
    r = logout(browser, end_session_path)
    assert r.status == 200, r.text
    assert "location" not in r.headers
    assert 'action="logout"' in r.text
    assert form_fields(r.text)["csrf_token"]
    assert r.headers["x-frame-options"] == "DENY"  # the button cannot be clickjacked
    assert not deletes_session_cookie(r)
    assert session_alive(browser)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_confirming_ends_the_session_and_redirects_with_state(
    browser, id_token, end_session_path, method
):
    """RP-Initiated Logout §2: "If the End-User says "yes", then the OP MUST log out the
    End-User"; the registered post_logout_redirect_uri of client_id is honoured, with
    state.
    """
    page = logout(
        browser, end_session_path, method, client_id=RP, post_logout_redirect_uri=LOGGED_OUT,
        state="xyz",
    )  # fmt: skip
    assert page.status == 200, page.text
    assert session_alive(browser)
    r = browser.post(end_session_path, data={**form_fields(page.text), "confirm": "yes"})
    assert r.status == 303, r.text
    assert r.location.split("?")[0] == LOGGED_OUT
    assert query_of(r.location) == {"state": "xyz"}
    assert deletes_session_cookie(r)
    assert not session_alive(browser)


def test_confirming_without_a_redirect_uri_shows_the_signed_out_page(
    browser, id_token, end_session_path
):
    """RP-Initiated Logout §2: "If the End-User says "yes", then the OP MUST log out the
    End-User"; with no post_logout_redirect_uri the OP shows that it is done.
    """
    page = logout(browser, end_session_path)
    r = browser.post(end_session_path, data={**form_fields(page.text), "confirm": "yes"})
    assert r.status == 200, r.text
    assert "signed out" in r.text.lower()
    assert deletes_session_cookie(r)
    assert not session_alive(browser)


def test_not_confirming_keeps_the_session(browser, id_token, end_session_path):
    """RP-Initiated Logout §2: the End-User is asked; only a "yes" logs them out."""
    page = logout(browser, end_session_path)
    r = browser.post(end_session_path, data=form_fields(page.text))
    assert not deletes_session_cookie(r)
    assert session_alive(browser)


@pytest.mark.parametrize("bad", ["forged", "another browser's", "expired"])
def test_confirming_with_a_bad_csrf_token_is_refused(
    server, clock, browser, id_token, end_session_path, bad
):
    """RP-Initiated Logout §6 (security): logout requests can be forged, which is why the
    End-User is asked; a confirmation whose CSRF token is not this browser's own, fresh
    token is refused (RFC 6749 §10.12 for forms the server issues).
    """
    page = logout(browser, end_session_path)
    fields = form_fields(page.text)
    if bad == "forged":
        fields["csrf_token"] = "forged-token"
    elif bad == "another browser's":
        other = WSGIClient(server.wsgi)
        sign_in_for_tokens(other, RP, RP_SECRET, password="alice-password")
        fields["csrf_token"] = form_fields(logout(other, end_session_path).text)["csrf_token"]
    else:
        clock.advance(codeflow.FORM_LIFETIME + 1)
    r = browser.post(end_session_path, data={**fields, "confirm": "yes"})
    assert_error_page(r)
    assert session_alive(browser)


def test_without_a_session_or_hint_there_is_nothing_to_confirm(browser, end_session_path):
    """RP-Initiated Logout §2: the question is whether to log out "of the OP as well"; with
    no session there is none to end, and the signed-out page is shown.
    """
    r = logout(browser, end_session_path)
    assert r.status == 200, r.text
    assert "signed out" in r.text.lower()


def test_a_copy_of_the_session_cookie_does_not_survive_logout(
    server, browser, id_token, end_session_path
):
    """RP-Initiated Logout §2: "If the End-User says "yes", then the OP MUST log out the
    End-User": the session ends at the OP, not just in this browser's cookie jar.
    """
    copy = dict(browser.cookies)
    r = logout(browser, end_session_path, id_token_hint=id_token)
    assert deletes_session_cookie(r)
    replay = WSGIClient(server.wsgi)
    replay.cookies.update(copy)
    assert not session_alive(replay)
