"""pytest plugin: codeflow as a fake identity provider inside a test suite.

Installed with codeflow (entry point ``pytest11``), so its fixtures need no import:

- ``codeflow_server``: an in-process ``codeflow.Server`` (call its ``.wsgi``), on a
  ``codeflow_clock`` the test can move; new for each test.
- ``codeflow_live``: a server on a free 127.0.0.1 port, new for each test; ``.url`` is
  its base URL (and issuer), every other attribute is the Server's; it adds
  ``add_user_and_client(redirect_uri)`` and ``login(app_login_url, user=...)``.
- ``codeflow_session_server``, ``codeflow_session_live``: the same, shared by a session.
- ``codeflow_factory``: makes more servers with options (``live=True`` to serve them;
  ``self_registration=True`` for clients that register themselves, as MCP clients do).
- ``codeflow_documents``: an https host on 127.0.0.1 for the Client ID Metadata Documents
  of clients under test, whose CA the ``self_registration`` servers trust.
- ``codeflow_signing_key``: one RS256 key for every server of the session, so a server
  starts in milliseconds instead of generating an RSA key.

The servers run in test mode (fault plan over HTTP, transcript) with fast password
hashing on memory storage and ephemeral ports: nothing is shared between processes, so
pytest-xdist workers are safe.
codeflow is imported inside the fixtures, so loading the plugin costs nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from .testing import Clock, DocumentHost, HeadlessBrowser, Response

if TYPE_CHECKING:
    import codeflow


# Where a test suite's own client metadata documents are served (self_registration).
LOOPBACK_NETWORKS = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True)
class UserAndClient:
    """What ``add_user_and_client`` registered: give the client's side to the app under
    test (``issuer``, ``client_id``, ``client_secret``, ``redirect_uris``), the user's
    to the login (``username``, ``password``)."""

    issuer: str
    client_id: str
    client_secret: str | None
    redirect_uris: tuple[str, ...]
    username: str
    password: str


def add_user_and_client(
    server: Any,
    redirect_uris: str | Iterable[str],
    *,
    username: str = "alice",
    password: str = "wonderland",  # noqa: S107 -- a test IdP's fake password
    claims: dict[str, Any] | None = None,
    client_id: str = "app",
    client_secret: str | None = "app-secret",  # noqa: S107 -- a test IdP's fake secret
    **client_options: Any,
) -> UserAndClient:
    """Register a user and a confidential client on ``server`` (a codeflow.Server, or
    codeflow_live) in one call, with defaults a test can leave alone: alice / wonderland
    with a name and an email, and the client ``app`` / ``app-secret`` (``client_secret=
    None`` makes it public). ``client_options`` go to ``add_client`` (``scopes``,
    ``post_logout_redirect_uris``, ``access_token_jwt``, ...)."""
    uris = (redirect_uris,) if isinstance(redirect_uris, str) else tuple(redirect_uris)
    if claims is None:
        claims = {"name": "Alice Liddell", "email": "alice@example.org", "email_verified": True}
    server.add_user(username, password, claims=claims)
    server.add_client(client_id, client_secret=client_secret, redirect_uris=uris,
                      **client_options)  # fmt: skip
    return UserAndClient(server.issuer, client_id, client_secret, uris, username, password)


class LiveServer:
    """A running codeflow server: ``.url`` is its base URL, ``.server`` the Server, and
    every other attribute is the Server's (``add_user``, ``faults``, ``transcript``...).

    It remembers the passwords given to its ``add_user``, ``set_password`` and
    ``add_user_and_client``, so that ``login`` needs only the user's name."""

    def __init__(self, server: codeflow.Server, url: str) -> None:
        object.__setattr__(self, "server", server)
        object.__setattr__(self, "url", url)
        object.__setattr__(self, "_passwords", {})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.server, name, value)  # live.auto_approve = "bob" sets the server's

    def __repr__(self) -> str:
        return f"<codeflow live server {self.url}>"

    def add_user(self, username: str, password: str | None = None, **options: Any) -> Any:
        """``Server.add_user``, remembering the password for ``login``."""
        user = self.server.add_user(username, password, **options)
        self._passwords[username] = password or ""
        return user

    def set_password(self, username: str, password: str) -> Any:
        """``Server.set_password``, remembering the password for ``login``."""
        user = self.server.set_password(username, password)
        self._passwords[username] = password
        return user

    def add_user_and_client(
        self, redirect_uris: str | Iterable[str], **options: Any
    ) -> UserAndClient:
        """A user and a client in one call (see ``add_user_and_client``)."""
        return add_user_and_client(self, redirect_uris, **options)

    def login(
        self,
        app_login_url: str,
        user: str | None = None,
        password: str | None = None,
        *,
        browser: HeadlessBrowser | None = None,
        **options: Any,
    ) -> Response:
        """Sign ``user`` in through the app under test: open ``app_login_url``, follow
        the app's redirect to this provider, fill in its login (and TOTP, with
        ``totp_secret=``) and consent (``decision=``) forms, and follow the redirect back
        to the app and the app's own redirects; the page the app ends on
        (``codeflow_sdk.testing.Response``: ``url``, ``status``, ``headers``, ``text``).

        ``user`` defaults to the user added last through this object, ``password`` to
        the one it was given. Pass a ``HeadlessBrowser`` to keep its cookies (the app's
        session) for more requests, ``browser.open(url)``. Raises
        ``codeflow_sdk.testing.LoginError`` when the app does not send the browser here,
        or the provider refuses the user (a wrong password, say)."""
        if user is None:
            user = next(reversed(self._passwords), "")
        if password is None:
            password = self._passwords.get(user, "")
        return (browser or HeadlessBrowser()).app_login(
            app_login_url, user, password, provider=self.url, **options
        )


class _Documents:
    """The session's DocumentHost (codeflow_documents), started when a test first needs it:
    by the fixture, or by a server made with ``self_registration=True``, which trusts its CA."""

    def __init__(self) -> None:
        self.host: DocumentHost | None = None

    def get(self) -> DocumentHost:
        if self.host is None:
            self.host = DocumentHost()
            self.host.start()
        return self.host

    def close(self) -> None:
        if self.host is not None:
            self.host.close()


class _Factory:
    """Makes servers that share the session's signing key; stops the live ones after."""

    def __init__(self, key: Any, documents: _Documents) -> None:
        self._key = key
        self._documents = documents
        self._stack = contextlib.ExitStack()

    def __call__(self, *, live: bool = False, self_registration: bool = False,
                 **options: Any) -> Any:  # fmt: skip
        import codeflow

        if self_registration:
            # Clients that register themselves, as MCP clients do: RFC 7591 registration
            # open to all, and Client ID Metadata Documents served from this machine
            # (loopback document hosts, plain http allowed there).
            options.setdefault("registration", "open")
            options.setdefault("client_id_metadata_documents", True)
            options.setdefault("fetch_allowed_networks", LOOPBACK_NETWORKS)
            # MCP SDKs take only an https client_id URL: the session's DocumentHost serves
            # one on 127.0.0.1, under a CA that these servers, and no others, trust.
            options.setdefault("fetch_ca_file", self._documents.get().ca_file)
        options.setdefault("test_mode", True)
        options.setdefault("clock", Clock())
        # No fixture pays scrypt's tens of milliseconds per user, client and sign-in; the
        # hashes say they are test-only, and no production server accepts them.
        options.setdefault("password_hashing", "fast")
        srv = codeflow.Server(**options)
        # codeflow parses a key once per process, so sharing it makes a server cheap.
        srv.storage.get_or_add_signing_key(self._key)
        if not live:
            return srv
        url = self._stack.enter_context(srv.running())
        return LiveServer(srv, url)

    def close(self) -> None:
        self._stack.close()


@pytest.fixture(scope="session")
def codeflow_signing_key() -> Any:
    """One RS256 signing key for the session's servers (RSA generation is the slow part
    of a server's start); ES256 keys are cheap and made when first needed."""
    import codeflow

    return codeflow.new_signing_key("RS256", 0)


@pytest.fixture
def codeflow_clock() -> Iterator[Clock]:
    """The clock of ``codeflow_server`` and ``codeflow_live``: ``time.time()`` until the
    test calls ``advance``. ``codeflow_clock.patch_time()`` makes the app under test share
    it (time-machine), undone after the test."""
    clock = Clock()
    yield clock
    clock.restore_time()


@pytest.fixture(scope="session")
def _codeflow_documents() -> Iterator[_Documents]:
    documents = _Documents()
    yield documents
    documents.close()


@pytest.fixture
def codeflow_documents(_codeflow_documents: _Documents) -> DocumentHost:
    """The session's https host on 127.0.0.1 for Client ID Metadata Documents:
    ``codeflow_documents.publish_client("/my-app.json", [redirect_uri])`` returns a
    client_id that servers made with ``self_registration=True`` accept."""
    return _codeflow_documents.get()


@pytest.fixture
def codeflow_factory(
    codeflow_signing_key: Any, _codeflow_documents: _Documents
) -> Iterator[Callable[..., Any]]:
    """``codeflow_factory(live=False, **Server options)``: a new Server, or a LiveServer
    with ``live=True`` (stopped at the end of the test). ``self_registration=True``:
    clients may register themselves (RFC 7591, open) and use Client ID Metadata
    Documents served on 127.0.0.1 (over http, or https from ``codeflow_documents``)."""
    factory = _Factory(codeflow_signing_key, _codeflow_documents)
    yield factory
    factory.close()


@pytest.fixture
def codeflow_server(codeflow_factory: Callable[..., Any], codeflow_clock: Clock) -> Any:
    """An in-process codeflow.Server for this test; ``.wsgi`` is its WSGI app."""
    return codeflow_factory(clock=codeflow_clock)


@pytest.fixture
def codeflow_live(codeflow_factory: Callable[..., Any], codeflow_clock: Clock) -> LiveServer:
    """A codeflow server on a free 127.0.0.1 port for this test; ``.url`` is the issuer."""
    live: LiveServer = codeflow_factory(live=True, clock=codeflow_clock)
    return live


@pytest.fixture(scope="session")
def _codeflow_session_factory(
    codeflow_signing_key: Any, _codeflow_documents: _Documents
) -> Iterator[Callable[..., Any]]:
    factory = _Factory(codeflow_signing_key, _codeflow_documents)
    yield factory
    factory.close()


@pytest.fixture(scope="session")
def codeflow_session_server(_codeflow_session_factory: Callable[..., Any]) -> Any:
    """An in-process codeflow.Server shared by the whole session (wall clock)."""
    return _codeflow_session_factory()


@pytest.fixture(scope="session")
def codeflow_session_live(_codeflow_session_factory: Callable[..., Any]) -> LiveServer:
    """A codeflow server on a free 127.0.0.1 port shared by the whole session."""
    live: LiveServer = _codeflow_session_factory(live=True)
    return live
