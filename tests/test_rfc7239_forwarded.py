"""Client addresses behind reverse proxies (RFC 7239, and X-Forwarded-For likewise): the
``trusted_proxies`` setting, under which the address a trusted proxy forwards is the
one failed sign-ins are counted against (NIST SP 800-63B §5.2.2), and the forwarding
headers of anyone else are ignored.

In-process through the WSGI app, with the server's clock moved by the tests.
"""

from __future__ import annotations

import pytest
from conftest import ISSUER, PASSWORD, USERNAME, form_fields, make_server, new_flow
from wsgi_client import Response, WSGIClient

import codeflow

PROXY = "10.0.0.2"
INTERNAL = "http://idp:8000"


def sign_in(browser: WSGIClient, password: str = PASSWORD, **headers: str) -> Response:
    """A fresh login form, filled in and sent: 303 signed in, 200 wrong, 429 refused."""
    page = browser.get("/authorize", params=new_flow().params, headers=headers)
    assert 'action="login"' in page.text, page.text
    data = {**form_fields(page.text), "username": USERNAME, "password": password}
    return browser.post("/login", data=data, headers=headers)


def retry_after(r: Response) -> int:
    """RFC 9110 §10.2.3: the seconds a refused attempt must wait, from Retry-After."""
    assert r.status == 429, r.text
    return int(r.headers["retry-after"])


def test_behind_a_trusted_proxy_each_client_is_throttled_at_its_own_address(clock):
    """RFC 7239 §5.2, NIST SP 800-63B §5.2.2: behind a trusted proxy the client address is
    the one the proxy forwards, so the attacker's guesses delay the attacker's address and
    not the real user's, although both reach codeflow from the proxy."""
    server = make_server(clock, trusted_proxies=["10.0.0.0/24"])
    attacker = WSGIClient(server.wsgi, remote_addr=PROXY)
    for _ in range(codeflow.FAILURES_BEFORE_DELAY):
        r = sign_in(attacker, password="guess", **{"X-Forwarded-For": "192.0.2.66"})
        assert r.status == 200
    r = sign_in(attacker, **{"X-Forwarded-For": "192.0.2.66"})
    assert retry_after(r) == codeflow.FIRST_DELAY
    user = WSGIClient(server.wsgi, remote_addr=PROXY)
    r = sign_in(user, **{"Forwarded": 'for="[2001:db8:cafe::17]:4711";proto=https'})
    assert r.status == 303, r.text


def test_forwarded_addresses_from_an_untrusted_peer_are_ignored(clock):
    """RFC 7239 §8.1: the header "cannot be relied upon to be correct, as it may be
    modified ... by every node on the way to the server, including the client making the
    request"; only the configured proxies are believed. An attacker that names a new
    address in every request is still throttled at its own."""
    server = make_server(clock, trusted_proxies=["10.0.0.0/24"])
    attacker = WSGIClient(server.wsgi, remote_addr="192.0.2.66")
    for i in range(codeflow.FAILURES_BEFORE_DELAY):
        spoof = {"X-Forwarded-For": f"198.51.100.{i}", "Forwarded": f"for=203.0.113.{i}"}
        assert sign_in(attacker, password="guess", **spoof).status == 200
    r = sign_in(attacker, **{"X-Forwarded-For": "198.51.100.99"})
    assert retry_after(r) == codeflow.FIRST_DELAY


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, (PROXY, "http")),
        ({"HTTP_X_FORWARDED_FOR": "192.0.2.43"}, ("192.0.2.43", "http")),
        # RFC 7239 §4: each proxy appends; the right-most address not itself a trusted
        # proxy is the client, whatever the client wrote to the left of it.
        ({"HTTP_X_FORWARDED_FOR": "1.2.3.4, 192.0.2.43, 10.0.0.7"}, ("192.0.2.43", "http")),
        ({"HTTP_X_FORWARDED_FOR": "10.0.0.9, 10.0.0.7"}, ("10.0.0.9", "http")),
        (
            {"HTTP_X_FORWARDED_FOR": "192.0.2.43", "HTTP_X_FORWARDED_PROTO": "https"},
            ("192.0.2.43", "https"),
        ),
        # RFC 7239 §4's examples, parameter names case-insensitive.
        ({"HTTP_FORWARDED": 'For="[2001:db8:cafe::17]:4711"'}, ("2001:db8:cafe::17", "http")),
        (
            {"HTTP_FORWARDED": "for=192.0.2.60;proto=https;by=203.0.113.43"},
            ("192.0.2.60", "https"),
        ),
        ({"HTTP_FORWARDED": "for=192.0.2.43, for=198.51.100.17"}, ("198.51.100.17", "http")),
        ({"HTTP_FORWARDED": 'for="_gazonk"'}, ("_gazonk", "http")),
        # Unparsable, or both headers at once (one of them from the client, but which?):
        # the proxy's own address, which nobody can choose.
        ({"HTTP_FORWARDED": 'for="192.0.2.1'}, (PROXY, "http")),
        (
            {"HTTP_FORWARDED": "for=192.0.2.1", "HTTP_X_FORWARDED_FOR": "192.0.2.2"},
            (PROXY, "http"),
        ),
    ],
)
def test_the_client_address_and_scheme_behind_a_trusted_proxy(headers, expected):
    """RFC 7239 §5.2 (for), §5.4 (proto); X-Forwarded-For likewise: from a trusted proxy
    the right-most forwarded address that is not a trusted proxy, and its scheme."""
    server = codeflow.Server(trusted_proxies=["10.0.0.0/24"])
    environ = {"REMOTE_ADDR": PROXY, "wsgi.url_scheme": "http", **headers}
    assert codeflow.forwarded_client(server, environ) == expected
    untrusted = {**environ, "REMOTE_ADDR": "192.0.2.66"}
    assert codeflow.forwarded_client(server, untrusted) == ("192.0.2.66", "http")


def test_trusted_proxies_must_be_networks():
    """A trusted_proxies entry that is no CIDR is refused when the server is made."""
    with pytest.raises(ValueError, match="trusted_proxies"):
        codeflow.Server(trusted_proxies=["proxy.example"])


def test_forwarded_host_and_proto_count_only_from_a_trusted_proxy():
    """RFC 7239 §8.1: X-Forwarded-Host from anyone but a trusted proxy does not make
    discovery (RFC 8414 §3) list the internal endpoints; from a trusted proxy it does."""
    server = codeflow.Server(issuer=ISSUER, internal_url=INTERNAL, trusted_proxies=[PROXY])
    spoof = {"X-Forwarded-Host": "idp:8000", "X-Forwarded-Proto": "http"}
    stranger = WSGIClient(server.wsgi, remote_addr="192.0.2.66")
    meta = stranger.get(codeflow.OAUTH_METADATA_PATH, headers=spoof).json()
    assert meta["token_endpoint"] == ISSUER + codeflow.TOKEN_PATH
    proxy = WSGIClient(server.wsgi, remote_addr=PROXY)
    meta = proxy.get(codeflow.OAUTH_METADATA_PATH, headers=spoof).json()
    assert meta["token_endpoint"] == INTERNAL + codeflow.TOKEN_PATH
