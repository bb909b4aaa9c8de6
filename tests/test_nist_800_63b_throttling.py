"""Throttling failed sign-ins without locking anyone out (NIST SP 800-63B §5.2.2): each
attack of issue 12 (items 2 and 3) reproduced on the wire, and the policy that stops it.

In-process through the WSGI app, with the server's clock moved by the tests; the
concurrency tests run real threads against one app, with scrypt at its real cost so that
the checks overlap.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pyotp
import pytest
from conftest import (
    CONFIDENTIAL,
    PASSWORD,
    SECRET,
    USERNAME,
    Clock,
    form_fields,
    make_server,
    new_flow,
)
from wsgi_client import Response, WSGIClient, basic

import codeflow

PROXY = "10.0.0.2"
TOTP_SECRET = pyotp.random_base32()
DAY = 24 * 3600


def login_page(browser: WSGIClient, **headers: str) -> Response:
    r = browser.get("/authorize", params=new_flow().params, headers=headers)
    assert r.status == 200 and 'action="login"' in r.text, r.text
    return r


def sign_in(
    browser: WSGIClient, username: str = USERNAME, password: str = PASSWORD, **headers: str
) -> Response:
    """A fresh login form, filled in and sent: 303 signed in, 200 wrong, 429 refused."""
    page = login_page(browser, **headers)
    data = {**form_fields(page.text), "username": username, "password": password}
    return browser.post("/login", data=data, headers=headers)


def retry_after(r: Response) -> int:
    """RFC 9110 §10.2.3: the seconds a refused attempt must wait, from Retry-After."""
    assert r.status == 429, r.text
    return int(r.headers["retry-after"])


def wrong_code(clock: Clock) -> str:
    """A code that none of the accepted time steps has (RFC 6238 §5.2: one either side)."""
    totp = pyotp.TOTP(TOTP_SECRET)
    accepted = {totp.at(clock() + drift * totp.interval) for drift in (-1, 0, 1)}
    return next(c for c in (f"{n:06d}" for n in range(4)) if c not in accepted)


def send_code(browser: WSGIClient, otp: str, clock: Clock) -> Response:
    """The TOTP step after the right password (which the attacker of item 3 knows)."""
    r = sign_in(browser)
    assert r.status == 200 and 'name="otp"' in r.text, r.text
    return browser.post("/login", data={**form_fields(r.text), "otp": otp})


def guess_for_a_day(
    clock: Clock, attackers: list[Callable[[], Response]], checked: Callable[[Response], bool]
) -> int:
    """Play every attacker for a day, each trying again the moment its answer allows (its
    Retry-After); return how many guesses were checked. Stops early past the 1% budget."""
    end = clock() + DAY
    due = [clock()] * len(attackers)
    checks = 0
    while checks < 3334:
        when = min(due)
        if when >= end:
            break
        clock.advance(when - clock())
        i = due.index(when)
        r = attackers[i]()
        if checked(r):
            checks += 1
        else:
            assert r.status == 429, r.text
            due[i] = clock() + int(r.headers.get("retry-after", 60))
    return checks


###############################################################################
# Item 2 (a): a shared address, and the trusted_proxies setting ################
###############################################################################


def test_failed_logins_under_made_up_names_from_a_shared_address_lock_out_nobody(server):
    """NIST SP 800-63B §5.2.2: limits on failed attempts apply to "a single account"; an
    address that many users share (a reverse proxy codeflow was not told about) can be
    delayed on the accounts it guesses at, never on everyone's: after 50 failed logins
    under made-up names, alice signs in from the same address."""
    shared = WSGIClient(server.wsgi, remote_addr=PROXY)
    for i in range(50):
        assert sign_in(shared, f"nobody{i}", "guess").status == 200
    r = sign_in(WSGIClient(server.wsgi, remote_addr=PROXY))
    assert r.status == 303, r.text


###############################################################################
# Item 2 (b): no lock on an account for everyone ###############################
###############################################################################


def test_wrong_passwords_from_many_addresses_do_not_lock_out_the_user(server, clock):
    """NIST SP 800-63B §5.2.2: an attacker's failures must not deny the subscriber. While
    100 wrong passwords sent from 20 addresses keep a new address waiting, alice signs in
    at once from an address she signed in from before; and from a new address after at
    most MAX_ACCOUNT_DELAY, although the addresses whose guesses were checked go on
    guessing the moment they may."""
    home = WSGIClient(server.wsgi, remote_addr="198.51.100.7")
    assert sign_in(home).status == 303
    attackers = [WSGIClient(server.wsgi, remote_addr=f"192.0.2.{i + 1}") for i in range(20)]
    checked: set[int] = set()

    def attack() -> None:
        for i, attacker in enumerate(attackers):
            for _ in range(5):
                if sign_in(attacker, password="guess").status == 200:
                    checked.add(i)

    attack()
    assert sign_in(WSGIClient(server.wsgi, remote_addr="203.0.113.51")).status == 429
    assert sign_in(WSGIClient(server.wsgi, remote_addr="198.51.100.7")).status == 303

    attack()
    traveller = WSGIClient(server.wsgi, remote_addr="203.0.113.50")
    wait = retry_after(sign_in(traveller))
    assert wait <= codeflow.MAX_ACCOUNT_DELAY
    clock.advance(wait)
    for i in sorted(checked):
        sign_in(attackers[i], password="guess")
    assert sign_in(traveller).status == 303


###############################################################################
# Item 2 (c): client secrets ###################################################
###############################################################################


@pytest.mark.parametrize("endpoint", ["/token", "/introspect"])
def test_wrong_client_secrets_do_not_lock_out_the_client(server, endpoint):
    """RFC 6749 §2.3.1, NIST SP 800-63B §5.2.2: a client secret is high-entropy, so wrong
    ones are not counted against the client: after 100 wrong secrets from the attacker's
    address and 100 from the client's own, the client authenticates with its own secret."""
    data = {"grant_type": "client_credentials", "token": "x"}
    client = WSGIClient(server.wsgi, remote_addr="198.51.100.7")
    assert client.post(endpoint, data, headers=basic(CONFIDENTIAL, SECRET)).status == 200
    for address in ("192.0.2.9", "198.51.100.7"):
        attacker = WSGIClient(server.wsgi, remote_addr=address)
        for i in range(100):
            r = attacker.post(endpoint, data, headers=basic(CONFIDENTIAL, f"wrong{i}"))
            assert r.status in (401, 429)
    r = client.post(endpoint, data, headers=basic(CONFIDENTIAL, SECRET))
    assert r.status == 200, r.text


def test_wrong_client_secrets_on_a_fresh_process_do_not_lock_out_the_client(server):
    """NIST SP 800-63B §5.2.2: before the client's first request (nothing verified yet),
    100 wrong secrets from 20 other addresses leave its first request unaffected."""
    data = {"grant_type": "client_credentials"}
    for i in range(100):
        attacker = WSGIClient(server.wsgi, remote_addr=f"192.0.2.{i % 20 + 1}")
        attacker.post("/token", data, headers=basic(CONFIDENTIAL, f"wrong{i}"))
    client = WSGIClient(server.wsgi, remote_addr="198.51.100.7")
    assert client.post("/token", data, headers=basic(CONFIDENTIAL, SECRET)).status == 200


def test_memory_hard_secret_checks_are_bounded_per_client_and_address(server, clock):
    """RFC 6749 §10.10 spirit, RFC 6585 §4: each unverified secret costs an scrypt run, so
    one address gets SECRET_CHECK_BURST of them for a client, then one per
    SECRET_CHECK_INTERVAL; beyond that 429 with Retry-After, and no run."""
    attacker = WSGIClient(server.wsgi, remote_addr="192.0.2.9")
    data = {"grant_type": "client_credentials"}
    for i in range(codeflow.SECRET_CHECK_BURST):
        r = attacker.post("/token", data, headers=basic(CONFIDENTIAL, f"wrong{i}"))
        assert r.status == 401, r.text
    r = attacker.post("/token", data, headers=basic(CONFIDENTIAL, "wrong-again"))
    assert r.status == 429 and r.json()["error"] == "temporarily_unavailable"
    assert 0 < int(r.headers["retry-after"]) <= codeflow.SECRET_CHECK_INTERVAL
    clock.advance(codeflow.SECRET_CHECK_INTERVAL)
    assert attacker.post("/token", data, headers=basic(CONFIDENTIAL, "w")).status == 401


###############################################################################
# Item 2 (d): concurrent right answers, concurrent wrong guesses ###############
###############################################################################


def in_parallel(n: int, request: Callable[[], Response]) -> list[Response]:
    """``request`` from n threads at once, against one in-process app."""
    barrier = threading.Barrier(n)
    answers: list[Response] = []

    def run() -> None:
        barrier.wait()
        answers.append(request())

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


@pytest.fixture
def real_cost_hashes(monkeypatch):
    """Hash at scrypt's real cost (~50 ms) so that concurrent checks really overlap."""
    monkeypatch.setattr(codeflow, "SCRYPT_N", 2**14)


def test_concurrent_right_client_secrets_on_a_fresh_process_all_succeed(
    clock, real_cost_hashes
):
    """RFC 6749 §2.3.1: the right secret authenticates the client: 8 concurrent token
    requests with it, the first of a fresh process, all get tokens (no check is counted
    as failed while it is still running)."""
    server = make_server(clock)
    data = {"grant_type": "client_credentials"}

    def request() -> Response:
        client = WSGIClient(server.wsgi, remote_addr="198.51.100.7")
        return client.post("/token", data, headers=basic(CONFIDENTIAL, SECRET))

    statuses = [r.status for r in in_parallel(8, request)]
    assert statuses == [200] * 8


def test_concurrent_right_passwords_all_sign_in(clock, real_cost_hashes):
    """NIST SP 800-63B §5.2.2 counts failed attempts: 8 concurrent sign-ins with the
    right password from one address all succeed."""
    server = make_server(clock)
    browsers = [WSGIClient(server.wsgi) for _ in range(8)]
    pages = [login_page(b) for b in browsers]
    turn = iter(zip(browsers, pages, strict=True))
    lock = threading.Lock()

    def request() -> Response:
        with lock:
            browser, page = next(turn)
        data = {**form_fields(page.text), "username": USERNAME, "password": PASSWORD}
        return browser.post("/login", data=data)

    statuses = [r.status for r in in_parallel(8, request)]
    assert statuses == [303] * 8


def test_concurrent_wrong_passwords_get_no_more_checks_than_one_after_another(
    clock, real_cost_hashes
):
    """NIST SP 800-63B §5.2.2: guesses sent in parallel are no cheaper than one after
    another: of 20 concurrent wrong passwords from one address, FAILURES_BEFORE_DELAY are
    checked and the others refused with 429."""
    server = make_server(clock)
    browsers = [WSGIClient(server.wsgi) for _ in range(20)]
    pages = [login_page(b) for b in browsers]
    turn = iter(zip(browsers, pages, strict=True))
    lock = threading.Lock()

    def request() -> Response:
        with lock:
            browser, page = next(turn)
        data = {**form_fields(page.text), "username": USERNAME, "password": "guess"}
        return browser.post("/login", data=data)

    statuses = sorted(r.status for r in in_parallel(20, request))
    assert statuses.count(200) == codeflow.FAILURES_BEFORE_DELAY
    assert statuses.count(429) == 20 - codeflow.FAILURES_BEFORE_DELAY


###############################################################################
# Item 3: the guessing budget ##################################################
###############################################################################


def test_the_wait_doubles_with_each_failure_up_to_its_cap(server, clock):
    """NIST SP 800-63B §5.2.2: "wait following a failed attempt for a period of time that
    increases as the account approaches its maximum allowance (e.g., 30 seconds up to an
    hour)"; inside the wait even the right password is refused unchecked."""
    browser = WSGIClient(server.wsgi, remote_addr="198.51.100.7")
    for _ in range(codeflow.FAILURES_BEFORE_DELAY):
        assert sign_in(browser, password="guess").status == 200
    waits = []
    for _ in range(10):
        r = sign_in(browser)
        waits.append(retry_after(r))
        assert "Too many failed sign-in attempts" in r.text
        clock.advance(waits[-1])
        assert sign_in(browser, password="guess").status == 200
    delay = codeflow.FIRST_DELAY
    assert waits[:3] == [delay, 2 * delay, 4 * delay]
    assert max(waits) == waits[-1] == codeflow.MAX_DELAY
    clock.advance(codeflow.MAX_DELAY)
    assert sign_in(browser).status == 303


def test_a_day_of_totp_guessing_stays_well_under_one_percent(clock):
    """RFC 6238 §5.1, NIST SP 800-63B §5.2.2: an attacker who knows the password, guessing
    codes from 10 addresses of its own and from a new address for every further guess,
    gets N checks a day with N*3/10^6 well under 1% (3 codes are accepted, RFC 6238 §5.2);
    alice then signs in with her code from her own address at once."""
    server = make_server(clock)
    server.set_totp(USERNAME, TOTP_SECRET)
    home = WSGIClient(server.wsgi, remote_addr="198.51.100.7")
    r = send_code(home, pyotp.TOTP(TOTP_SECRET).at(clock()), clock)
    assert r.status == 303, r.text
    clock.advance(60)  # the next sign-in needs a new time step (RFC 6238 §5.2)
    fresh = iter(f"203.0.{n // 250}.{n % 250 + 1}" for n in range(100_000))

    def attacker(address: str | None) -> Callable[[], Response]:
        def guess() -> Response:
            browser = WSGIClient(server.wsgi, remote_addr=address or next(fresh))
            return send_code(browser, wrong_code(clock), clock)

        return guess

    attackers = [attacker(f"192.0.2.{i + 1}") for i in range(10)] + [attacker(None)]
    checks = guess_for_a_day(clock, attackers, lambda r: "That code is not right" in r.text)
    assert checks * 3 / 10**6 < 0.01
    assert checks < 500  # the arithmetic in codeflow's "Throttling": at most 352
    r = send_code(home, pyotp.TOTP(TOTP_SECRET).at(clock()), clock)
    assert r.status == 303, r.text


def test_a_day_of_password_guessing_is_bounded_and_the_user_still_signs_in(clock):
    """NIST SP 800-63B §5.2.2: "the verifier SHALL effectively limit the number of
    consecutive failed authentication attempts on a single account"; a day of guessing
    from 10 addresses and a new address per further guess gets fewer than 500 checks,
    and alice signs in from her own address meanwhile."""
    server = make_server(clock)
    assert sign_in(WSGIClient(server.wsgi, remote_addr="198.51.100.7")).status == 303
    fresh = iter(f"203.0.{n // 250}.{n % 250 + 1}" for n in range(100_000))

    def attacker(address: str | None) -> Callable[[], Response]:
        def guess() -> Response:
            browser = WSGIClient(server.wsgi, remote_addr=address or next(fresh))
            return sign_in(browser, password="guess")

        return guess

    attackers = [attacker(f"192.0.2.{i + 1}") for i in range(10)] + [attacker(None)]
    checks = guess_for_a_day(clock, attackers, lambda r: r.status == 200)
    assert checks < 500
    r = sign_in(WSGIClient(server.wsgi, remote_addr="198.51.100.7"))
    assert r.status == 303, r.text


def test_a_spray_of_names_keeps_the_throttle_bounded(server, monkeypatch):
    """NIST SP 800-63B §5.2.2 throttling, its memory bounded under a spray of made-up
    names: the process keeps an account's entry only while requests on it are under way,
    so none is left after the spray; MemoryStorage keeps at most 4 * THROTTLE_ENTRIES
    counts, dropping first what holds no wait, so the spray does not wash out the wait
    the sprayer is under."""
    monkeypatch.setattr(codeflow, "THROTTLE_ENTRIES", 50)
    sprayer = WSGIClient(server.wsgi, remote_addr="192.0.2.66")
    for _ in range(codeflow.FAILURES_BEFORE_DELAY):
        assert sign_in(sprayer, password="guess").status == 200
    for i in range(200):
        assert sign_in(sprayer, f"nobody{i}", "guess").status == 200
    assert server.login_limiter.size() == 0
    assert len(server.storage._failures) <= 4 * 50  # the counts, in MemoryStorage
    assert sign_in(sprayer).status == 429


def test_a_spray_of_registrations_does_not_wash_out_a_sign_in_wait(clock, monkeypatch):
    """NIST SP 800-63B §5.2.2 throttling, with RFC 7591 §3 open registration beside it: each
    address's registration budget is a count in storage too (Storage.spend_budget), and
    one spend from each of many addresses is a spray as a made-up name's one failure is.
    MemoryStorage, bounded, drops such counts before the counts a wait follows from, so a
    sprayer registering from a fresh IPv6 /56 each time (a /40 has 65,536 of them) does
    not wash out the wait its guesses are under."""
    monkeypatch.setattr(codeflow, "THROTTLE_ENTRIES", 50)
    srv = make_server(clock, registration="open")
    sprayer = WSGIClient(srv.wsgi, remote_addr="192.0.2.66")
    for _ in range(codeflow.FAILURES_BEFORE_DELAY):
        assert sign_in(sprayer, password="guess").status == 200
    for i in range(250):  # each spends its address's budget, then fails validation
        r = sprayer.request("POST", "/register", body=b"{}", REMOTE_ADDR=f"2001:db8:{i:x}::1",
                            headers={"Content-Type": "application/json"})  # fmt: skip
        assert r.status == 400, r.text
    assert len(srv.storage._failures) <= 4 * 50  # the counts, in MemoryStorage
    assert sign_in(sprayer).status == 429
