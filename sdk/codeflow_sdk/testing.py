"""Test helpers that speak only HTTP: a controllable clock and a headless browser.

Nothing here imports codeflow: ``HeadlessBrowser`` completes an authorization request
against any provider whose login and consent forms use codeflow's stable field names
(DESIGN "login, consent": ``username``, ``password``, ``otp``, ``decision``; hidden
``csrf_token``, ``request``, ``pending``), with a cookie jar and no JavaScript.
"""

from __future__ import annotations

import html
import http.cookiejar
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

__all__ = ["Clock", "HeadlessBrowser", "LoginError", "headless_login"]


class Clock:
    """A clock for ``codeflow.Server(clock=...)`` (or the SDK's ``clock=``) that a test moves.

    ``Clock()`` follows the wall clock plus an offset, so a live server stays in step with
    real clients; ``Clock(start)`` stands still at ``start`` until moved. ``advance``
    jumps ahead (past a token's expiry, say) in both cases.
    """

    def __init__(self, start: float | None = None) -> None:
        self._frozen = start
        self._offset = 0.0

    def __call__(self) -> float:
        base = self._frozen if self._frozen is not None else time.time()
        return base + self._offset

    def advance(self, seconds: float) -> None:
        self._offset += seconds

    def set(self, now: float) -> None:
        """Jump to ``now`` (and stay there if the clock is frozen)."""
        self._offset += now - self()


class LoginError(Exception):
    """The provider did not send the browser back to the client: ``page`` is its answer."""

    def __init__(self, message: str, page: str = "") -> None:
        super().__init__(message)
        self.page = page


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)"')
_ACTION = re.compile(r'<form method="post" action="([^"]*)"')
_ALERT = re.compile(r'class="error"[^>]*>(.*?)</p>', re.S)
MAX_STEPS = 10  # authorize, login, (TOTP), authorize again, consent: never more than this


class HeadlessBrowser:
    """A cookie-keeping HTTP client that plays the user on the provider's pages.

    One instance is one browser: its provider session survives between logins, as
    single sign-on does in a real browser.
    """

    def __init__(self, timeout: float = 10.0) -> None:
        self.cookies = http.cookiejar.CookieJar()
        self._opener = urllib.request.build_opener(
            _NoRedirects, urllib.request.HTTPCookieProcessor(self.cookies)
        )
        self.timeout = timeout

    def _fetch(self, url: str, form: dict[str, str] | None = None) -> tuple[int, str, str]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(url, data=data)  # noqa: S310 -- http(s) from the test
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.status, response.headers.get("Location", ""), _text(response)
        except urllib.error.HTTPError as err:
            with err:
                return err.code, err.headers.get("Location", ""), _text(err)

    def login(
        self,
        authorize_url: str,
        username: str = "",
        password: str = "",
        *,
        totp_secret: str | None = None,
        otp: str | None = None,
        decision: str = "approve",
        clock: Callable[[], float] = time.time,
    ) -> str:
        """Open ``authorize_url``, sign in (with a TOTP code from ``totp_secret``, or
        ``otp``, if asked), answer the consent page with ``decision``, and return the
        URL the provider redirects to: the client's callback with code or error
        (RFC 6749 §4.1.2), not yet fetched. Raises LoginError when it stays on a page.
        """
        origin = _origin(authorize_url)
        url, form = authorize_url, None
        for _ in range(MAX_STEPS):
            status, location, page = self._fetch(url, form)
            if status in (301, 302, 303, 307, 308):
                target = urllib.parse.urljoin(url, location)
                if _origin(target) != origin:
                    return target  # the redirect back to the client
                url, form = target, None
                continue
            fields = {
                name: html.unescape(value) for name, value in _HIDDEN.findall(page)
            }  # fmt: skip
            action = _ACTION.search(page)
            if status != 200 or action is None:
                summary = _alert(page) or _summary(page)
                raise LoginError(f"the provider answered {status}: {summary}", page)
            if form is not None and form.get("username") and _alert(page):
                raise LoginError(f"sign-in failed: {_alert(page)}", page)
            url = urllib.parse.urljoin(url, html.unescape(action.group(1)))
            if "pending" in fields:  # RFC 6238: the second factor
                if form is not None and "otp" in form:
                    raise LoginError(f"the TOTP code was refused: {_alert(page)}", page)
                form = {**fields, "otp": otp or _totp(totp_secret, clock)}
            elif 'name="password"' in page:
                if form is not None and "password" in form:
                    raise LoginError(f"sign-in failed: {_alert(page)}", page)
                form = {**fields, "username": username, "password": password}
            elif 'name="decision"' in page:
                form = {**fields, "decision": decision}
            else:
                raise LoginError("a form this helper does not know", page)
        raise LoginError(f"no redirect to the client after {MAX_STEPS} steps")


def headless_login(
    authorize_url: str,
    username: str = "",
    password: str = "",
    *,
    totp_secret: str | None = None,
    otp: str | None = None,
    decision: str = "approve",
    clock: Callable[[], float] = time.time,
) -> str:
    """``HeadlessBrowser().login(...)`` in a fresh browser: the client's callback URL."""
    return HeadlessBrowser().login(
        authorize_url, username, password, totp_secret=totp_secret, otp=otp,
        decision=decision, clock=clock,
    )  # fmt: skip


def _text(response: Any) -> str:
    body: bytes = response.read(1024 * 1024)
    return body.decode("utf-8", "replace")


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.netloc


def _alert(page: str) -> str:
    """The page's error message, if it shows one."""
    found = _ALERT.search(page)
    return html.unescape(" ".join(found.group(1).split())) if found else ""


def _summary(page: str) -> str:
    main = page.split("<main>", 1)[-1]
    return html.unescape(" ".join(re.sub(r"<[^>]+>", " ", main).split()))[:300]


def _totp(secret: str | None, clock: Callable[[], float]) -> str:
    if secret is None:
        raise LoginError("the provider asks for a TOTP code: pass totp_secret= or otp=")
    import pyotp  # RFC 6238; only needed for users with a second factor

    return pyotp.TOTP(secret).at(clock())
