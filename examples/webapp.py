"""A web app that logs its users in with codeflow, or any OpenID Connect provider.

With the provider running (``codeflow serve --config examples/codeflow.toml``)::

    python examples/webapp.py

then open http://127.0.0.1:5000/ and log in as alice / wonderland. The app uses only
``codeflow_sdk``: "Log in" calls ``Client.start_login`` and keeps the returned
LoginState in the session; the callback hands the URL it was called with to
``Client.finish_login``; "Log out" ends the provider's session too (RP-Initiated
Logout 1.0), coming back to this app's home page.
"""

from __future__ import annotations

import argparse
import html
import secrets
import threading
from typing import Any

import bottle
from codeflow_sdk import Client, LoginState, OAuthError

SESSION_COOKIE = "webapp_session"


class Sessions:
    """Server-side sessions in memory, found by a random cookie; enough for an example
    (a real app would use its framework's session store)."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def get(self) -> dict[str, Any]:
        """This browser's session, made (and its cookie set) on first use."""
        sid = bottle.request.get_cookie(SESSION_COOKIE)
        with self._lock:
            if sid is not None and sid in self._data:
                return self._data[sid]
        return self.renew({})

    def renew(self, data: dict[str, Any]) -> dict[str, Any]:
        """Move ``data`` to a new session id: done at login, so that a session id planted
        before login is worth nothing after it (session fixation)."""
        old = bottle.request.get_cookie(SESSION_COOKIE)
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._data.pop(old or "", None)
            self._data[sid] = data
        # SameSite=Lax: the cookie comes along on the provider's redirect back (a top-level
        # GET), but not on another site's POST to /logout.
        bottle.response.set_cookie(SESSION_COOKIE, sid, httponly=True, samesite="lax", path="/")
        return data


def page(title: str, body: str, status: int = 200) -> bottle.HTTPResponse:
    document = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title></head><body><main>{body}</main></body></html>"
    )
    return bottle.HTTPResponse(document, status, {"Content-Type": "text/html; charset=utf-8"})


def claims_table(claims: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in sorted(claims.items())
    )
    return f"<table>{rows}</table>"


def make_app(client: Client, *, post_logout_redirect_uri: str | None = None) -> bottle.Bottle:
    """The web app, logging in through ``client`` (whose redirect_uri is this app's
    /callback)."""
    app = bottle.Bottle()
    sessions = Sessions()

    @app.get("/")
    def home() -> bottle.HTTPResponse:
        session = sessions.get()
        user = session.get("user")
        if user is None:
            link = '<a href="/login">Log in with codeflow</a>'
            return page("Welcome", f"<h1>Welcome</h1><p>{link}</p>")
        # OIDC Core §5.4: the profile and email scopes' claims come from the userinfo
        # endpoint; the ID token proves who signed in (sub) and when.
        userinfo = session.get("userinfo", {})
        name = html.escape(str(userinfo.get("name") or user.get("name") or user["sub"]))
        return page(
            "Signed in",
            f"<h1>Hello, {name}</h1>"
            f"<h2>ID token claims</h2>{claims_table(user)}"
            f"<h2>UserInfo</h2>{claims_table(userinfo)}"
            '<form method="post" action="/logout"><button type="submit">Log out</button></form>',
        )

    @app.get("/login")
    def login() -> None:
        url, record = client.start_login("openid profile email")
        sessions.get()["login"] = record.to_dict()
        bottle.redirect(url)

    @app.get("/callback")
    def callback() -> bottle.HTTPResponse:
        session = sessions.get()
        saved = session.pop("login", None)
        if saved is None:
            return page("Error", "<h1>No login in progress</h1><p><a href='/'>Home</a></p>", 400)
        try:
            tokens = client.finish_login(bottle.request.url, LoginState.from_dict(saved))
            userinfo = client.userinfo(tokens.access_token, expected_sub=tokens.sub)
        except OAuthError as err:
            return page(
                "Login failed",
                f"<h1>Login failed</h1><p><code>{html.escape(err.error)}</code>: "
                f"{html.escape(err.description)}</p><p><a href='/'>Home</a></p>",
                400,
            )
        sessions.renew({
            "user": tokens.id_token_claims, "id_token": tokens.id_token, "userinfo": userinfo,
        })  # fmt: skip
        bottle.redirect("/")

    @app.post("/logout")
    def logout() -> None:
        session = sessions.get()
        id_token = session.get("id_token")
        sessions.renew({})
        if id_token is None:
            bottle.redirect("/")
        # RP-Initiated Logout 1.0 §2: end the provider's session as well, then come back.
        bottle.redirect(client.logout_url(id_token, post_logout_redirect_uri), 303)

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issuer", default="http://127.0.0.1:8000")
    parser.add_argument("--client-id", default="webapp")
    parser.add_argument("--client-secret", default="webapp-secret")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args(argv)
    base = f"http://{args.host}:{args.port}"
    client = Client(args.issuer, args.client_id, args.client_secret, f"{base}/callback")
    print(f"webapp: open {base}/ (provider {args.issuer})", flush=True)
    bottle.run(make_app(client, post_logout_redirect_uri=f"{base}/"),
               host=args.host, port=args.port, quiet=True)  # fmt: skip


if __name__ == "__main__":
    main()
