"""The pages in a real headless Chromium (DESIGN "How we know it works"): the full flow
through examples/webapp.py with login, TOTP (RFC 6238) and consent; the login form by
keyboard alone; the plain pages for a wrong password, a rate-limited login and an expired
form; the demo's flow debugger end to end; logout (RP-Initiated Logout 1.0 §2); the
form_post response mode with and without JavaScript (Form Post Response Mode §2).

Driven by Playwright for Python against Debian's ``chromium`` (never a browser Playwright
downloads). Every page is screenshotted under tests/output/screenshots/ (git-ignored),
at a desktop and at a phone's width, for people to look at.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import time
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pyotp
import pytest
from codeflow_sdk import Client
from sdk_support import free_port, serving

import codeflow

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # pragma: no cover - the dev extra installs it
    sync_playwright = None

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.http,
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not importable"),
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)"),
]

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "tests" / "output" / "screenshots"
DESKTOP = {"width": 1024, "height": 768}
PHONE = {"width": 375, "height": 740}
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


@contextlib.contextmanager
def launched_chromium() -> Iterator[Browser]:
    """Debian's Chromium, as every browser test launches it (each module its own, for
    the module's tests)."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)  # only this run's pages
    with launched_chromium() as browser:
        yield browser


class Tab:
    """One browser context and page, recording console errors (a CSP violation shows up
    there: a page whose style was blocked would look broken)."""

    def __init__(
        self,
        browser: Browser,
        viewport: dict[str, int] = DESKTOP,
        color_scheme: str = "light",
        javascript: bool = True,
    ) -> None:
        self.context = browser.new_context(
            viewport=viewport, color_scheme=color_scheme, java_script_enabled=javascript
        )
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.errors: list[str] = []
        self.page.on("console", self._console)

    def _console(self, message: Any) -> None:
        # "Failed to load resource" is how Chromium logs any 4xx answer, such as an error
        # page's own status; what counts is the rest (a CSP violation: "Refused to ...").
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(f"{message.text} ({message.location.get('url')})")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(chromium: Browser) -> Iterator[Tab]:
    t = Tab(chromium)
    yield t
    t.close()


def screenshot(tab: Tab, name: str, *, phone: bool = True) -> None:
    """Save the page at desktop width, and again at a phone's width."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = tab.page
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)
    if phone:
        page.set_viewport_size(PHONE)
        page.screenshot(path=SCREENSHOTS / f"{name}-phone.png", full_page=True)
        # On a phone the card fills the screen: nothing wider than the viewport.
        assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        page.set_viewport_size(DESKTOP)


# WCAG 2.1 §1.4.3: text contrast at least 4.5:1 (3:1 for large text) against the colour
# behind it, found by walking up to the first element with an opaque background.
CONTRAST_FAILURES = """() => {
  const rgb = c => c.match(/[\\d.]+/g).map(Number);
  const lum = c => { const [r, g, b] = rgb(c).slice(0, 3).map(v => { v /= 255;
    return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  const background = e => { for (; e; e = e.parentElement) {
    const c = getComputedStyle(e).backgroundColor; if (rgb(c)[3] !== 0) return c; }
    return 'rgb(255,255,255)'; };
  const failures = [];
  for (const e of document.body.querySelectorAll('*')) {
    const text = [...e.childNodes].filter(n => n.nodeType === 3).map(n => n.data).join('').trim();
    if (!text || !e.getClientRects().length) continue;
    const s = getComputedStyle(e), size = parseFloat(s.fontSize);
    const large = size >= 24 || (size >= 18.66 && Number(s.fontWeight) >= 700);
    const [a, b] = [lum(s.color), lum(background(e))].sort((x, y) => y - x);
    const ratio = (a + 0.05) / (b + 0.05);
    if (ratio < (large ? 3 : 4.5)) failures.push(`${text.slice(0, 30)}: ${ratio.toFixed(2)}`);
  }
  return failures;
}"""


def assert_accessible(tab: Tab, title: str, scripts: int = 0) -> None:
    """What each page owes its users: English lang, one h1 naming the page, every field
    labelled, no script (but the ``scripts`` of a page that offers passkeys), our style
    applied (CSP by hash), text contrast (WCAG 2.1 §1.4.3), no console errors."""
    page = tab.page
    assert page.get_attribute("html", "lang") == "en"
    assert page.locator("h1").count() == 1
    assert title in page.locator("h1").inner_text()
    assert page.locator("script").count() == scripts
    unlabelled = page.evaluate(
        """[...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
        .filter(e => e.labels.length === 0).map(e => e.name)"""
    )
    assert unlabelled == []
    assert page.evaluate("getComputedStyle(document.querySelector('main')).maxWidth") != "none"
    assert page.evaluate("document.querySelector('meta[name=viewport]') !== null")
    assert page.evaluate(CONTRAST_FAILURES) == []
    assert tab.errors == []


def alert_text(page: Page) -> str:
    return page.locator('[role="alert"]').inner_text()


def submit(page: Page, button: str, *, exact: bool = False) -> Any:
    """Click a button (named ``button``, exactly if ``exact``) and wait for the page it
    leads to; return that response."""
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name=button, exact=exact).click()
    return navigation.value


# -- The provider and examples/webapp.py --------------------------------------------------


@contextlib.contextmanager
def webapp_with_provider(totp_secret: str | None = None) -> Iterator[tuple[codeflow.Server, str]]:
    """codeflow configured from examples/codeflow.toml (as tests/test_examples.py does) with
    examples/webapp.py in-process in front of it; alice gets a TOTP secret if one is given."""
    spec = importlib.util.spec_from_file_location("example_webapp", ROOT / "examples/webapp.py")
    assert spec is not None and spec.loader is not None
    webapp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(webapp)
    port = free_port()
    text = (ROOT / "examples" / "codeflow.toml").read_text()
    config = tomllib.loads(text.replace("127.0.0.1:5000", f"127.0.0.1:{port}"))
    if totp_secret is not None:
        config["users"][0]["totp_secret"] = totp_secret
    srv = codeflow.Server()
    with srv.running() as issuer:
        codeflow.load_config(srv, config)
        base = f"http://127.0.0.1:{port}"
        client = Client(issuer, "webapp", "webapp-secret", redirect_uri=f"{base}/callback")
        app = webapp.make_app(client, post_logout_redirect_uri=f"{base}/")
        with serving(app, port) as url:
            yield srv, url


def test_full_flow_with_login_totp_and_consent_through_the_webapp(tab: Tab) -> None:
    """OIDC Core §3.1 in a real browser through examples/webapp.py: the provider's login
    page names the app, a wrong password says so (and keeps the username), the TOTP step
    (RFC 6238) refuses a wrong code and takes the right one, consent lists the scopes in
    plain words, and the app greets alice; RP-Initiated Logout 1.0 §2: a logout request
    without an ID token asks first, then signs out."""
    secret = pyotp.random_base32()
    with webapp_with_provider(totp_secret=secret) as (srv, url):
        page = tab.page
        page.goto(url + "/")
        page.get_by_role("link", name="Log in with codeflow").click()
        page.wait_for_url(srv.issuer + "/authorize?**")
        assert "Example web app" in page.locator("main").inner_text()
        assert_accessible(tab, "Sign in")
        screenshot(tab, "01-login")

        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill("not-the-password")
        response = submit(page, "Sign in")
        assert response.status == 200
        assert "Wrong username or password" in alert_text(page)
        assert page.get_by_label("Username").input_value() == "alice"
        assert page.evaluate("document.activeElement.id") == "password"
        assert page.get_by_label("Password").get_attribute("aria-invalid") == "true"
        assert_accessible(tab, "Sign in")
        screenshot(tab, "02-login-wrong-password")

        page.get_by_label("Password").fill("wonderland")
        submit(page, "Sign in")
        assert page.evaluate("document.activeElement.id") == "otp"
        assert_accessible(tab, "Enter your code")
        screenshot(tab, "03-otp")

        totp = pyotp.TOTP(secret)
        wrong = f"{(int(totp.now()) + 1) % 1_000_000:06d}"
        wrong = wrong if wrong not in {totp.at(time.time() + d) for d in (-30, 0, 30)} else "000000"
        page.get_by_label("Authentication code").fill(wrong)
        submit(page, "Verify")
        assert "That code is not right" in alert_text(page)
        screenshot(tab, "04-otp-wrong-code", phone=False)

        page.get_by_label("Authentication code").fill(totp.now())
        submit(page, "Verify")
        assert_accessible(tab, "Allow access?")
        text = page.locator("main").inner_text()
        assert "Example web app" in text and "See your email address" in text
        assert "Signed in as alice" in text
        screenshot(tab, "05-consent")

        submit(page, "Allow")
        assert page.url == url + "/"
        assert "Hello, Alice Liddell" in page.locator("h1").inner_text()
        assert "alice@example.org" in page.content()

        # A logout request with no ID token (another site could send it): confirm first.
        page.goto(f"{srv.issuer}{codeflow.LOGOUT_PATH}?client_id=webapp")
        assert "Example web app" in page.locator("main").inner_text()
        assert_accessible(tab, "Sign out?")
        screenshot(tab, "06-logout-confirm")
        submit(page, "Sign out")
        assert_accessible(tab, "You are signed out")
        screenshot(tab, "07-signed-out")

        # Signed out at the provider: the app's next login asks for the password again.
        page.goto(url + "/login")
        assert page.locator("h1").inner_text() == "Sign in"


def test_login_form_by_keyboard_alone(tab: Tab) -> None:
    """The login and consent forms work without a mouse: the cursor starts in Username;
    Tab goes username, password, then the Sign in button, each with a visible focus
    ring; Enter submits; on the consent page Tab reaches Allow and Enter approves."""
    with webapp_with_provider() as (_, url):
        page = tab.page
        page.goto(url + "/login")
        assert page.evaluate("document.activeElement.id") == "username"
        page.keyboard.type("alice")
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.id") == "password"
        page.keyboard.type("wonderland")
        page.keyboard.press("Tab")
        focused = page.evaluate(
            "[document.activeElement.tagName, document.activeElement.textContent,"
            " getComputedStyle(document.activeElement).outlineStyle]"
        )
        assert focused == ["BUTTON", "Sign in", "solid"]
        screenshot(tab, "08-login-keyboard-focus", phone=False)
        page.keyboard.press("Shift+Tab")
        assert page.evaluate("document.activeElement.id") == "password"
        with page.expect_navigation():
            page.keyboard.press("Enter")
        assert page.locator("h1").inner_text() == "Allow access?"

        order = []
        for _ in range(6):
            page.keyboard.press("Tab")
            order.append(page.evaluate("document.activeElement.textContent.trim()"))
            if order[-1] == "Allow":
                break
        assert order[-1] == "Allow", order
        with page.expect_navigation():
            page.keyboard.press("Enter")
        page.wait_for_url(url + "/")
        assert "Hello, Alice Liddell" in page.locator("h1").inner_text()


def test_rate_limited_login_is_a_429_page_that_says_to_wait(tab: Tab) -> None:
    """DESIGN "failed logins rate-limited": after FAILURES_BEFORE_DELAY wrong passwords the
    next attempt is answered 429 with a plain message saying how long to wait."""
    with webapp_with_provider() as (_, url):
        page = tab.page
        page.goto(url + "/login")
        for _ in range(codeflow.FAILURES_BEFORE_DELAY):
            page.get_by_label("Username").fill("alice")
            page.get_by_label("Password").fill("guess")
            assert submit(page, "Sign in").status == 200
        page.get_by_label("Password").fill("wonderland")
        assert submit(page, "Sign in").status == 429
        message = alert_text(page)
        assert "Too many failed sign-in attempts" in message and "try again in" in message
        assert_accessible(tab, "Sign in")
        screenshot(tab, "09-login-rate-limited")


class WallClock:
    """Real time that a test can move forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_expired_form_and_error_pages(tab: Tab) -> None:
    """RFC 6749 §10.12: a login form past FORM_LIFETIME is refused with a 400 page that
    says "This form has expired" and leads back to a fresh login; RFC 6749 §4.1.2.1: an
    unknown client gets an error page, never a redirect."""
    clock = WallClock()
    srv = codeflow.Server(clock=clock)
    with srv.running() as issuer:
        srv.add_client("shop", client_secret="s", redirect_uris=["http://127.0.0.1:9/cb"],
                       name="Corner Shop", require_pkce=False)  # fmt: skip
        srv.add_user("alice", "wonderland")
        page = tab.page
        page.goto(f"{issuer}/authorize?response_type=code&client_id=shop&scope=openid")
        clock.offset += codeflow.FORM_LIFETIME + 1
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill("wonderland")
        assert submit(page, "Sign in").status == 400
        assert "This form has expired" in alert_text(page)
        assert_accessible(tab, "This form has expired")
        screenshot(tab, "10-error-form-expired")
        page.get_by_role("link", name="Start again").click()
        page.wait_for_url(issuer + "/authorize?**")
        assert "Corner Shop" in page.locator("main").inner_text()

        response = page.goto(f"{issuer}/authorize?response_type=code&client_id=nobody")
        assert response is not None and response.status == 400
        assert page.url.startswith(issuer)
        assert "not a registered client" in alert_text(page)
        assert_accessible(tab, "This request cannot be completed")
        screenshot(tab, "11-error")


def test_demo_flow_debugger_end_to_end(tab: Tab) -> None:
    """``codeflow serve --demo``: the flow debugger shows the authorization request
    (RFC 6749 §4.1.1, RFC 7636), then after login and consent one step at a time: the
    callback (§4.1.2, RFC 9207), the token request (§4.1.3) and response (§5.1), the
    decoded ID token (OIDC Core §2, every check passing) and the userinfo answer (OIDC
    Core §5.3), each linked to its section; reloading the callback shows the replayed
    code refused (RFC 6749 §4.1.2)."""
    srv = codeflow.Server(demo=True)
    with srv.running() as issuer:
        page = tab.page
        page.goto(issuer + "/")
        assert_accessible(tab, "OpenID Connect")
        screenshot(tab, "12-home", phone=False)
        page.get_by_role("link", name="Try the demo").click()
        page.wait_for_url(issuer + codeflow.DEMO_PATH)
        assert_accessible(tab, "step by step")
        request = page.locator("#request-h").locator("..")
        assert "code_challenge" in request.inner_text() and "nonce" in request.inner_text()
        links = page.eval_on_selector_all("a[href^='https://']", "as => as.map(a => a.href)")
        assert "https://www.rfc-editor.org/rfc/rfc6749#section-4.1.1" in links
        assert page.locator("a[href^='#']").count() == 0  # no step to jump to yet
        screenshot(tab, "13-demo-1-request")

        page.get_by_role("link", name="Start the flow").click()
        page.get_by_label("Username").fill(codeflow.DEMO_USER)
        page.get_by_label("Password").fill(codeflow.DEMO_PASSWORD)
        submit(page, "Sign in")
        submit(page, "Allow")
        assert page.url.startswith(issuer + codeflow.DEMO_CALLBACK_PATH + "?")
        assert_accessible(tab, "step by step")

        steps = ["callback", "token-request", "token-response", "id-token", "userinfo"]
        sections = {
            "callback": ("https://www.rfc-editor.org/rfc/rfc6749#section-4.1.2", "iss"),
            "token-request": ("https://www.rfc-editor.org/rfc/rfc6749#section-4.1.3",
                              "grant_type=authorization_code"),
            "token-response": ("https://www.rfc-editor.org/rfc/rfc6749#section-5.1",
                               "refresh_token"),
            "id-token": ("https://openid.net/specs/openid-connect-core-1_0.html#IDToken",
                         '"nonce"'),
            "userinfo": ("https://openid.net/specs/openid-connect-core-1_0.html#UserInfo",
                         "Alice Liddell"),
        }  # fmt: skip
        for number, step in enumerate(steps, start=3):
            # One step at a time: only this step's section is shown.
            shown = [s for s in steps if page.locator(f"#{s}").is_visible()]
            assert shown == [step]
            section = page.locator(f"#{step}")
            spec, text = sections[step]
            assert section.locator(f'a[href="{spec}"]').count() == 1
            assert text in section.inner_text()
            assert "✗" not in section.inner_text()
            screenshot(tab, f"{11 + number}-demo-{number}-{step}", phone=step == "id-token")
            if step != "userinfo":
                section.get_by_role("link", name=re.compile("^Next")).click()
        assert '"sub": "alice"' in page.locator("#userinfo").inner_text()
        page.locator("#userinfo").get_by_role("link", name="Back: ID token").click()
        assert page.locator("#id-token").is_visible() and not page.locator("#userinfo").is_visible()

        # RFC 6749 §4.1.2: a code works once; reloading the callback replays it.
        page.reload()
        refused = page.locator("#token-response").text_content() or ""
        assert "invalid_grant" in refused and "works once" in refused
        assert tab.errors == []


@pytest.mark.parametrize(
    "viewport", [{"width": 1280, "height": 800}, {"width": 390, "height": 844}],
    ids=["desktop-1280x800", "phone-390x844"],
)  # fmt: skip
def test_the_demos_start_button_is_above_the_fold(
    chromium: Browser, viewport: dict[str, int]
) -> None:
    """Issue 17 item 6: on /demo the flow's button is on the first screen, without
    scrolling, on a desktop and on a phone; the request's details follow below it."""
    srv = codeflow.Server(demo=True)
    with srv.running() as issuer:
        t = Tab(chromium, viewport)
        try:
            t.page.goto(issuer + codeflow.DEMO_PATH)
            button = t.page.get_by_role("link", name="Start the flow")
            box = button.bounding_box()
            assert box is not None and box["y"] >= 0
            assert box["y"] + box["height"] <= viewport["height"], box
            assert box["height"] >= 44  # a thumb's target
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            name = f"13-demo-above-the-fold-{viewport['width']}x{viewport['height']}.png"
            t.page.screenshot(path=SCREENSHOTS / name)
        finally:
            t.close()


def test_pages_on_a_phone(chromium: Browser) -> None:
    """The login page at a phone's width: the form fills the screen, nothing scrolls
    sideways, and the button is at least 44 px tall (a thumb's target)."""
    with webapp_with_provider() as (_, url):
        t = Tab(chromium, PHONE)
        try:
            t.page.goto(url + "/login")
            box = t.page.get_by_role("button", name="Sign in").bounding_box()
            assert box is not None and box["height"] >= 44 and box["width"] > PHONE["width"] / 2
            assert t.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        finally:
            t.close()


def test_pages_in_dark_mode(chromium: Browser) -> None:
    """With the system in dark mode (prefers-color-scheme) the pages turn dark and keep
    their contrast: the login page with its error, and the consent page."""
    with webapp_with_provider() as (_, url):
        t = Tab(chromium, color_scheme="dark")
        try:
            page = t.page
            page.goto(url + "/login")
            assert page.evaluate("getComputedStyle(document.body).backgroundColor") == (
                "rgb(20, 23, 31)"
            )
            page.get_by_label("Username").fill("alice")
            page.get_by_label("Password").fill("nope")
            submit(page, "Sign in")
            assert_accessible(t, "Sign in")
            screenshot(t, "19-dark-login-wrong-password", phone=False)
            page.get_by_label("Password").fill("wonderland")
            submit(page, "Sign in")
            page.get_by_role("button", name="Deny").focus()
            assert_accessible(t, "Allow access?")
            screenshot(t, "20-dark-consent", phone=False)
        finally:
            t.close()


def test_a_page_on_another_port_cannot_plant_the_csrf_cookie_and_consent(tab: Tab) -> None:
    """RFC 6749 §10.12: the server "MUST implement CSRF protection"; RFC 9700 §4.4, by
    cookie tossing: a page on another port of the same host shares the provider's cookies
    (cookies ignore ports). Before the victim ever visits the provider, it plants a CSRF
    cookie that the attacker got from the provider; the victim signs in; then the page
    posts the attacker's consent form and signed request (offline_access, for the
    attacker's client) from the victim's signed-in browser. The provider refuses it, and
    the attacker's client never receives a code."""
    import requests
    from conftest import form_fields

    received: list[str] = []

    def attacker_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/cb":
            received.append(environ.get("QUERY_STRING", ""))
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"callback"]
        start_response("200 OK", [("Content-Type", "text/html")])
        return [ATTACK_PAGE.encode()]

    srv = codeflow.Server()
    with srv.running() as issuer, serving(attacker_app) as evil:
        srv.add_client("notes", redirect_uris=["http://127.0.0.1:9/cb"], name="Notes")
        srv.add_client("evil", redirect_uris=[evil + "/cb"], name="Notes (evil)")
        srv.add_user("alice", "wonderland")
        # The attacker gets a CSRF cookie, a form token and a signed request of its own.
        attacker = requests.Session()
        params = pkce_request("evil", evil + "/cb", scope="openid offline_access")
        login = attacker.get(f"{issuer}/authorize", params=params, timeout=10)
        fields = form_fields(login.text)
        cookie = attacker.cookies.get(codeflow.CSRF_COOKIE)
        assert cookie and fields["csrf_token"] and fields["request"]
        attack = urlencode({"cookie": cookie, "action": f"{issuer}/consent", **fields})
        page = tab.page
        page.goto(f"{evil}/plant#{attack}")
        # The victim signs in at the provider: a session, then the consent page for Notes.
        page.goto(f"{issuer}/authorize?" + urlencode(pkce_request("notes", "http://127.0.0.1:9/cb")))
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill("wonderland")
        submit(page, "Sign in")
        assert "Allow access?" in page.locator("main").inner_text()
        page.goto(f"{evil}/post#{attack}")
        page.wait_for_load_state("networkidle")
        assert received == [], f"the attacker's client got a code: {received}"
        assert page.url.startswith(issuer), page.url
        assert not srv.storage.get_consent("alice", "evil")


ATTACK_PAGE = """<!doctype html><body><form method="post" id="f"></form><script>
const p = new URLSearchParams(location.hash.slice(1));
if (location.pathname === "/plant") {
  document.cookie = "codeflow_csrf=" + p.get("cookie") + "; path=/";
} else {
  const f = document.getElementById("f");
  f.action = p.get("action");
  for (const [name, value] of [["csrf_token", p.get("csrf_token")],
                               ["request", p.get("request")], ["decision", "approve"]]) {
    const i = document.createElement("input");
    i.type = "hidden"; i.name = name; i.value = value; f.appendChild(i);
  }
  f.submit();
}
</script></body>"""


def pkce_request(client_id: str, redirect_uri: str, scope: str = "openid") -> dict[str, str]:
    import base64
    import hashlib
    import secrets

    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return {
        "response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
        "scope": scope, "state": "s", "code_challenge": challenge.rstrip(b"=").decode(),
        "code_challenge_method": "S256",
    }  # fmt: skip


# -- Form Post Response Mode ---------------------------------------------------------------


def form_post_client(received: list[dict[str, str]]) -> Any:
    """A client's redirect URI, /callback, that takes the POST and keeps what it got."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ["PATH_INFO"] != "/callback":  # the browser's /favicon.ico
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)).decode()
        received.append({"method": environ["REQUEST_METHOD"], **dict(parse_qsl(body))})
        start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
        return [b"<!doctype html><title>signed in</title><h1>Signed in</h1>"]

    return app


@pytest.mark.parametrize("javascript", [True, False], ids=["javascript", "no-javascript"])
def test_form_post_reaches_the_client_with_and_without_javascript(
    chromium: Browser, javascript: bool
) -> None:
    """OAuth 2.0 Form Post Response Mode §2: the response parameters "are encoded as HTML form
    values that are auto-submitted in the User Agent, and thus are transmitted via the HTTP
    POST method to the Client". With JavaScript the form submits itself under the page's CSP
    (no violation reported); without it, the user's click on Continue does. Either way the
    client receives a POST with code, state and iss."""
    received: list[dict[str, str]] = []
    tab = Tab(chromium, javascript=javascript)
    with serving(form_post_client(received)) as client_url:
        srv = codeflow.Server(auto_approve="alice")
        with srv.running() as issuer:
            callback = client_url + "/callback"
            srv.add_client("form-post-app", client_secret="s", redirect_uris=[callback])
            params = {"response_type": "code", "client_id": "form-post-app",
                      "redirect_uri": callback, "scope": "openid", "state": "xyz",
                      "response_mode": "form_post", "code_challenge_method": "S256",
                      "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"}  # fmt: skip
            url = f"{issuer}/authorize?{urlencode(params)}"
            try:
                page = tab.page
                if javascript:
                    with page.expect_navigation(url=callback):
                        page.goto(url)
                else:
                    page.goto(url)
                    screenshot(tab, "form-post-without-javascript")
                    with page.expect_navigation(url=callback):
                        page.get_by_role("button", name="Continue").click()
                assert page.locator("h1").inner_text() == "Signed in"
                assert tab.errors == []
            finally:
                tab.close()
    assert len(received) == 1
    assert received[0]["method"] == "POST"
    assert {"code", "state", "iss"} <= set(received[0]) and received[0]["state"] == "xyz"
