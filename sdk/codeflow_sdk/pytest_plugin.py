"""pytest plugin: codeflow as a fake identity provider inside a test suite.

Installed with codeflow (entry point ``pytest11``), so its fixtures need no import:

- ``codeflow_server``: an in-process ``codeflow.Server`` (call its ``.wsgi``), on a
  ``codeflow_clock`` the test can move; new for each test.
- ``codeflow_live``: a server on a free 127.0.0.1 port, new for each test; ``.url`` is
  its base URL (and issuer), every other attribute is the Server's.
- ``codeflow_session_server``, ``codeflow_session_live``: the same, shared by a session.
- ``codeflow_factory``: makes more servers with options (``live=True`` to serve them).
- ``codeflow_signing_key``: one RS256 key for every server of the session, so a server
  starts in milliseconds instead of generating an RSA key.

The servers run in test mode (fault plan over HTTP, transcript) on memory storage and
ephemeral ports: nothing is shared between processes, so pytest-xdist workers are safe.
codeflow is imported inside the fixtures, so loading the plugin costs nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from .testing import Clock

if TYPE_CHECKING:
    import codeflow


class LiveServer:
    """A running codeflow server: ``.url`` is its base URL, ``.server`` the Server, and
    every other attribute is the Server's (``add_user``, ``faults``, ``transcript``...)."""

    def __init__(self, server: codeflow.Server, url: str) -> None:
        object.__setattr__(self, "server", server)
        object.__setattr__(self, "url", url)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.server, name, value)  # live.auto_approve = "bob" sets the server's

    def __repr__(self) -> str:
        return f"<codeflow live server {self.url}>"


class _Factory:
    """Makes servers that share the session's signing key; stops the live ones after."""

    def __init__(self, key: Any) -> None:
        self._key = key
        self._stack = contextlib.ExitStack()

    def __call__(self, *, live: bool = False, **options: Any) -> Any:
        import codeflow

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


@pytest.fixture
def codeflow_factory(codeflow_signing_key: Any) -> Iterator[Callable[..., Any]]:
    """``codeflow_factory(live=False, **Server options)``: a new Server, or a LiveServer
    with ``live=True`` (stopped at the end of the test)."""
    factory = _Factory(codeflow_signing_key)
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
def _codeflow_session_factory(codeflow_signing_key: Any) -> Iterator[Callable[..., Any]]:
    factory = _Factory(codeflow_signing_key)
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
