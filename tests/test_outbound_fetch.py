"""Outbound fetches of URLs that others choose (codeflow.fetch_json_document): the SSRF
and resource defences, each against a real host on 127.0.0.1.

The draft Client ID Metadata Document §6 (Security Considerations, "Server-Side Request
Forgery") and RFC 9700 §4.x ask an authorization server that fetches a URL a client chose
to refuse internal addresses and bound what a hostile host can make it do; RFC 9111
§5.2.2 says how long an answer may be reused.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Clock
from document_hosts import (
    DocumentHost,
    delayed,
    document_host,
    drip,
    huge,
    json_body,
    make_pki,
    redirect_to,
)

import codeflow

LOOPBACK = ["127.0.0.0/8", "::1/128"]
DOC = {"hello": "world"}


@pytest.fixture
def host() -> Iterator[DocumentHost]:
    with document_host() as running:
        running.routes["/doc"] = json_body(DOC)
        yield running


def server(clock: Clock | None = None, **options: object) -> codeflow.Server:
    return codeflow.Server(clock=clock or Clock(), **options)  # type: ignore[arg-type]


def refused(srv: codeflow.Server, url: str, **options: object) -> str:
    with pytest.raises(codeflow.FetchError) as caught:
        codeflow.fetch_json_document(srv, url, **options)  # type: ignore[arg-type]
    return caught.value.description


def test_loopback_host_allowed_by_the_operator_is_fetched(host: DocumentHost) -> None:
    """A test suite's loopback host, allowed explicitly (fetch_allowed_networks), is
    fetched over plain http, with the Host header of the URL."""
    srv = server(fetch_allowed_networks=LOOPBACK)
    assert codeflow.fetch_json_document(srv, host.url("/doc")) == DOC
    assert host.host_headers == [f"127.0.0.1:{host.port}"]


def test_loopback_address_refused_without_the_allowance(host: DocumentHost) -> None:
    """SSRF: a literal loopback address is never fetched unless allowed; nothing is sent."""
    description = refused(server(), host.url("/doc"))
    assert "not public" in description
    assert host.hits == {}


def test_name_resolving_to_loopback_refused_after_dns(host: DocumentHost) -> None:
    """SSRF: the check is on the addresses a name resolves to: ``localhost`` (a name that
    resolves to 127.0.0.1) is refused, and nothing reaches the host."""
    description = refused(server(), host.url("/doc", host="localhost"))
    assert "localhost resolves to an address that is not public" in description
    assert host.hits == {}


def test_name_resolved_once_and_connection_made_to_the_checked_address(
    host: DocumentHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name is resolved once; a resolver that would answer a private
    address the second time is never asked again, and the socket goes to the address that
    was checked, while the Host header keeps the name."""
    answers = iter(["127.0.0.1", "10.9.9.9"])
    asked: list[str] = []
    real = socket.getaddrinfo

    def rebinding(name: str, port: object, *args: object, **kwargs: object) -> list:  # type: ignore[type-arg]
        if name != "rebind.test":
            return real(name, port, *args, **kwargs)  # type: ignore[arg-type]
        asked.append(name)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (next(answers), port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    srv = server(fetch_allowed_networks=["127.0.0.0/8"])
    assert codeflow.fetch_json_document(srv, host.url("/doc", host="rebind.test")) == DOC
    assert asked == ["rebind.test"]
    assert host.host_headers == [f"rebind.test:{host.port}"]


def test_one_private_address_among_public_ones_refuses_the_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A name that resolves to a public and a private address is refused whole: which one
    a connection would use is not the attacker's to choose, nor ours to guess."""
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", 443)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", 443)),
    ])  # fmt: skip
    assert "not public" in refused(server(), "https://mixed.test/doc")


@pytest.mark.parametrize(
    "address",
    ["10.0.0.1", "172.16.0.1", "192.168.1.1", "127.0.0.1", "169.254.169.254", "0.0.0.0",  # noqa: S104
     "100.64.0.1", "224.0.0.1", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1",
     "fc00::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1",
     "2002:a00:1::1", "2001:0:4136:e378:8000:63bf:f5ff:fffe"],
)  # fmt: skip
def test_special_purpose_addresses_are_not_public(address: str) -> None:
    """RFC 6890: private, loopback, link-local, shared (RFC 6598), multicast, reserved and
    unspecified addresses, and IPv6 forms that carry such an IPv4 address (IPv4-mapped,
    NAT64, 6to4, Teredo), are not public."""
    assert not codeflow.public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_public(address: str) -> None:
    assert codeflow.public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "url",
    ["ftp://example.com/doc", "file:///etc/passwd", "https://user:pw@example.com/doc",
     "https://example.com/doc#frag", "/relative", "https:///nohost", "https://exa mple.com/",
     "https://example.com:99999/doc", "https://bücher.example/doc"],
)  # fmt: skip
def test_urls_that_are_not_absolute_https_are_refused(url: str) -> None:
    """Only absolute http(s) URLs with a host, without userinfo or fragment, in ASCII."""
    refused(server(), url)


def test_plain_http_refused_to_an_allowed_network_that_is_not_loopback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Plain http only to loopback: an allowed private network still needs https."""
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.1.2.3", 80))])  # fmt: skip
    srv = server(fetch_allowed_networks=["10.0.0.0/8"])
    assert "https" in refused(srv, "http://internal.test/doc")


def test_redirect_loop_refused_at_the_first_redirect(host: DocumentHost) -> None:
    """No redirect is followed: a host that redirects (here, to itself forever) gets one
    request and a clear error."""
    host.routes["/loop"] = redirect_to(host.url("/loop"))
    description = refused(server(fetch_allowed_networks=LOOPBACK), host.url("/loop"))
    assert "redirect" in description
    assert host.hits == {"/loop": 1}


def test_redirect_to_an_internal_address_is_not_followed(host: DocumentHost) -> None:
    host.routes["/out"] = redirect_to("http://169.254.169.254/latest/meta-data/")
    assert "redirect" in refused(server(fetch_allowed_networks=LOOPBACK), host.url("/out"))


@pytest.mark.parametrize("declare_length", [True, False])
def test_ten_megabytes_refused_without_reading_them(
    host: DocumentHost, declare_length: bool
) -> None:
    """Size limit: a 10 MB answer is refused, by its Content-Length or, streamed without
    one, as soon as max_bytes have come."""
    host.routes["/big"] = huge(10 * 1024 * 1024, declare_length=declare_length)
    started = time.monotonic()
    description = refused(server(fetch_allowed_networks=LOOPBACK), host.url("/big"))
    assert f"larger than {codeflow.FETCH_MAX_BYTES} bytes" in description
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("in_headers", [True, False])
def test_slow_drip_cut_off_at_the_deadline(
    host: DocumentHost, in_headers: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Time limit: a host that sends a byte every 0.2 s (never long enough for a socket
    timeout) is cut off when the fetch's one deadline passes, in the headers or the body."""
    monkeypatch.setattr(codeflow, "FETCH_TIMEOUT", 1.0)
    host.routes["/slow"] = drip(in_headers=in_headers)
    started = time.monotonic()
    description = refused(server(fetch_allowed_networks=LOOPBACK), host.url("/slow"))
    elapsed = time.monotonic() - started
    assert "did not answer within 1 seconds" in description
    assert 0.9 < elapsed < 2.5


def test_wrong_content_type_refused(host: DocumentHost) -> None:
    host.routes["/html"] = json_body(b"<html></html>", ctype="text/html")
    description = refused(server(fetch_allowed_networks=LOOPBACK), host.url("/html"))
    assert "text/html, not application/json" in description


def test_json_subtype_accepted(host: DocumentHost) -> None:
    host.routes["/sub"] = json_body(DOC, ctype="application/jwk-set+json")
    srv = server(fetch_allowed_networks=LOOPBACK)
    assert codeflow.fetch_json_document(srv, host.url("/sub")) == DOC


def test_body_that_is_not_json_refused(host: DocumentHost) -> None:
    host.routes["/bad"] = json_body(b"{not json", ctype="application/json")
    assert "not JSON" in refused(server(fetch_allowed_networks=LOOPBACK), host.url("/bad"))


def test_deeply_nested_json_refused(host: DocumentHost) -> None:
    """A small document nested 50,000 deep (which overflows json's recursion) is refused
    like any other that is not JSON, not an error of the server."""
    host.routes["/deep"] = json_body(b"[" * 50_000, ctype="application/json")
    assert "not JSON" in refused(server(fetch_allowed_networks=LOOPBACK), host.url("/deep"))


def test_error_status_refused(host: DocumentHost) -> None:
    assert "HTTP 404" in refused(server(fetch_allowed_networks=LOOPBACK), host.url("/none"))


def test_unreachable_host_refused(host: DocumentHost) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    url = f"http://127.0.0.1:{port}/doc"
    assert "could not be fetched" in refused(server(fetch_allowed_networks=LOOPBACK), url)


def test_trusted_hosts_allowlist(host: DocumentHost) -> None:
    """An allowlist of trusted hosts: any other host is refused before any connection."""
    srv = server(fetch_allowed_networks=LOOPBACK)
    description = refused(srv, host.url("/doc"), hosts=["docs.example.com"])
    assert "not one of the hosts" in description
    assert host.hits == {}
    assert codeflow.fetch_json_document(srv, host.url("/doc"), hosts=["127.0.0.1"]) == DOC


def test_max_age_honoured_within_bounds(host: DocumentHost, clock: Clock) -> None:
    """RFC 9111 §5.2.2.1 max-age: the document is reused until it is stale, then fetched
    again."""
    host.routes["/cached"] = json_body(DOC, headers={"Cache-Control": "public, max-age=600"})
    srv = server(clock, fetch_allowed_networks=LOOPBACK)
    for _ in range(3):
        codeflow.fetch_json_document(srv, host.url("/cached"))
    assert host.hits["/cached"] == 1
    clock.advance(599)
    codeflow.fetch_json_document(srv, host.url("/cached"))
    assert host.hits["/cached"] == 1
    clock.advance(2)
    codeflow.fetch_json_document(srv, host.url("/cached"))
    assert host.hits["/cached"] == 2


def test_max_age_bounded(host: DocumentHost, clock: Clock) -> None:
    """A year's max-age is cut to FETCH_CACHE_MAX; max-age=0 is raised to FETCH_CACHE_MIN."""
    host.routes["/year"] = json_body(DOC, headers={"Cache-Control": "max-age=31536000"})
    host.routes["/zero"] = json_body(DOC, headers={"Cache-Control": "max-age=0"})
    srv = server(clock, fetch_allowed_networks=LOOPBACK)
    for path in ("/year", "/zero"):
        codeflow.fetch_json_document(srv, host.url(path))
        codeflow.fetch_json_document(srv, host.url(path))
    assert host.hits == {"/year": 1, "/zero": 1}
    clock.advance(codeflow.FETCH_CACHE_MIN + 1)
    codeflow.fetch_json_document(srv, host.url("/zero"))
    clock.advance(codeflow.FETCH_CACHE_MAX)
    codeflow.fetch_json_document(srv, host.url("/year"))
    assert host.hits == {"/year": 2, "/zero": 2}


@pytest.mark.parametrize("directive", ["no-store", "no-cache", "private, no-store"])
def test_no_store_not_cached(host: DocumentHost, directive: str) -> None:
    """RFC 9111 §5.2.2.5 no-store, §5.2.2.4 no-cache: fetched every time."""
    host.routes["/fresh"] = json_body(DOC, headers={"Cache-Control": directive})
    srv = server(fetch_allowed_networks=LOOPBACK)
    codeflow.fetch_json_document(srv, host.url("/fresh"))
    codeflow.fetch_json_document(srv, host.url("/fresh"))
    assert host.hits["/fresh"] == 2


def test_fresh_skips_the_cache(host: DocumentHost) -> None:
    srv = server(fetch_allowed_networks=LOOPBACK)
    codeflow.fetch_json_document(srv, host.url("/doc"))
    codeflow.fetch_json_document(srv, host.url("/doc"), fresh=True)
    assert host.hits["/doc"] == 2


def test_https_verified_for_the_name_while_connecting_to_the_checked_address(
    tmp_path: Path,
) -> None:
    """TLS: the certificate is checked for the URL's host name (SNI), though the socket
    goes to the address resolved and checked before."""
    ca_file, tls = make_pki(tmp_path, ("localhost",))
    with document_host(tls) as tls_host:
        tls_host.routes["/doc"] = json_body(DOC)
        srv = server(fetch_allowed_networks=LOOPBACK, fetch_ca_file=ca_file)
        url = tls_host.url("/doc", host="localhost")
        assert codeflow.fetch_json_document(srv, url) == DOC
        # The same host by address: the certificate names localhost, not 127.0.0.1.
        assert "certificate" in refused(srv, tls_host.url("/doc"))
        # Without the test CA the certificate is not trusted.
        assert "certificate" in refused(server(fetch_allowed_networks=LOOPBACK), url)


def test_bad_allowed_network_setting_refused() -> None:
    with pytest.raises(ValueError, match="fetch_allowed_networks"):
        server(fetch_allowed_networks=["not-a-network"])


def in_parallel(count: int, call: Callable[[], object]) -> list[object]:
    """``call()`` from ``count`` threads at once; each one's result or exception."""
    results: list[object] = [None] * count
    start = threading.Barrier(count)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = call()
        except Exception as err:
            results[i] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_requests_for_one_document_share_one_fetch(host: DocumentHost) -> None:
    """A burst of requests for a document not yet cached costs its host one request:
    the others wait for the first one's answer."""
    host.routes["/burst"] = delayed(DOC, 0.5)
    srv = server(fetch_allowed_networks=LOOPBACK)
    results = in_parallel(6, lambda: codeflow.fetch_json_document(srv, host.url("/burst")))
    assert results == [DOC] * 6
    assert host.hits == {"/burst": 1}


def test_one_slow_address_holds_few_of_the_fetch_slots(
    host: DocumentHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow host (under any number of URLs or names) is fetched from at most
    FETCHES_PER_ADDRESS times at once; one more is refused at once, not queued."""
    monkeypatch.setattr(codeflow, "FETCH_TIMEOUT", 1.5)
    for i in range(3):
        host.routes[f"/slow{i}"] = drip(in_headers=True)
    srv = server(fetch_allowed_networks=LOOPBACK)
    urls = iter(host.url(f"/slow{i}") for i in range(3))
    lock = threading.Lock()

    def fetch() -> object:
        with lock:
            url = next(urls)
        return codeflow.fetch_json_document(srv, url)

    started = time.monotonic()
    results = in_parallel(3, fetch)
    descriptions = sorted(str(r) for r in results)
    assert sum("is being fetched from already" in d for d in descriptions) == 1, descriptions
    assert sum("did not answer within" in d for d in descriptions) == 2, descriptions
    assert time.monotonic() - started < 3


def test_one_requester_cannot_hold_every_fetch_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """CIMD §6 (Security Considerations: a metadata fetch is a request the attacker
    chooses), RFC 6819 §4.4.1.11-style resource exhaustion: with slow document hosts on
    nine addresses (each under the per-address cap), one attacker behind a trusted proxy
    held all FETCHES_AT_ONCE slots, and everyone else's Client ID Metadata Document
    client failed with "too many documents". Fetches are now also capped per requesting
    address (FETCHES_PER_REQUESTER, the address the proxy forwards, as the login throttle
    sees it): the attacker's others are refused at once, and another user's client is
    fetched meanwhile."""
    from wsgi_client import WSGIClient

    monkeypatch.setattr(codeflow, "FETCH_TIMEOUT", 1.5)
    srv = server(fetch_allowed_networks=LOOPBACK, client_id_metadata_documents=True,
                 trusted_proxies=["10.0.0.1"])  # fmt: skip
    with contextlib.ExitStack() as stack:
        slow = [stack.enter_context(document_host(address=f"127.0.0.{i}")) for i in range(1, 10)]
        for host in slow:
            host.routes["/client.json"] = drip(in_headers=True)
        good = stack.enter_context(document_host(address="127.0.0.20"))
        good_id = good.url("/client.json")
        good.routes["/client.json"] = json_body({
            "client_id": good_id, "redirect_uris": ["http://127.0.0.1/cb"],
            "token_endpoint_auth_method": "none"})  # fmt: skip
        requests = [(h.url("/client.json"), "203.0.113.9", 0.0) for h in slow]
        requests.append((good_id, "198.51.100.7", 0.4))  # once the attacker's are under way
        queue = iter(requests)
        lock = threading.Lock()

        def authorize() -> tuple[str, int, str]:
            with lock:
                client_id, forwarded_for, wait = next(queue)
            time.sleep(wait)
            r = WSGIClient(srv.wsgi).get("/authorize", params={
                "response_type": "code", "client_id": client_id,
                "redirect_uri": "http://127.0.0.1/cb", "state": "s",
                "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
                "code_challenge_method": "S256"},
                REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=forwarded_for)  # fmt: skip
            return client_id, r.status, r.text

        results = in_parallel(len(requests), authorize)
    answers = {client_id: (status, text) for client_id, status, text in results}  # type: ignore[misc]
    status, text = answers.pop(good_id)
    assert status in (200, 302, 303) and "fetched" not in text, (status, text[:500])
    refused_now = [t for _, t in answers.values() if "fetched for this address" in t]
    timed_out = [t for _, t in answers.values() if "did not answer within" in t]
    assert len(refused_now) == 9 - codeflow.FETCHES_PER_REQUESTER, [t[:200] for t in timed_out]
    assert len(timed_out) == codeflow.FETCHES_PER_REQUESTER
    assert all(s == 400 for s, _ in answers.values()), [s for s, _ in answers.values()]


def test_the_per_address_cap_counts_an_ipv6_56_as_one_address() -> None:
    """A host with an IPv6 /64 (or the /56 a site is given) answers from as many
    addresses as it likes: FETCHES_PER_ADDRESS counts per address group (address_group:
    an IPv6 /56, an IPv4 address), so slow names on fresh addresses of one /56 hold no
    more slots than one address."""
    held = [codeflow.fetch_target_key(ipaddress.ip_address(f"2001:db8:0:{i:x}::{i}"))
            for i in range(0x10, 0x10 + codeflow.FETCHES_PER_ADDRESS)]  # fmt: skip
    with contextlib.ExitStack() as stack:
        for key in held:
            stack.enter_context(codeflow.fetch_slot(key, codeflow.FETCHES_PER_ADDRESS, "busy"))
        with pytest.raises(codeflow.FetchError):
            stack.enter_context(codeflow.fetch_slot(
                codeflow.fetch_target_key(ipaddress.ip_address("2001:db8:0:ff::7")),
                codeflow.FETCHES_PER_ADDRESS, "busy"))  # fmt: skip
        other = codeflow.fetch_target_key(ipaddress.ip_address("2001:db8:0:100::1"))  # next /56
        with codeflow.fetch_slot(other, codeflow.FETCHES_PER_ADDRESS, "busy"):
            pass
    assert codeflow.fetch_target_key(ipaddress.ip_address("192.0.2.1")) != (
        codeflow.fetch_target_key(ipaddress.ip_address("192.0.2.2"))
    )
