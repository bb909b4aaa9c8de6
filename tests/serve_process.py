"""Run ``codeflow serve`` as a real process on a free 127.0.0.1 port, on a SQLite file (or
any storage URL), for the multi-process, multi-node and crash tests. The process is always
killed when the block ends."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import codeflow_storage
import requests

import codeflow

CODEFLOW = Path(codeflow.__file__)
CLIENT_ID, CLIENT_SECRET = "confidential-app", "confidential-secret"
REDIRECT = "http://127.0.0.1:9000/callback"
USERNAME = "alice"
READY_TIMEOUT = 10.0

CONFIG = f"""
[[clients]]
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
redirect_uris = ["{REDIRECT}"]
grant_types = ["authorization_code", "refresh_token", "client_credentials"]
scopes = ["openid", "profile", "offline_access", "api:read"]

[[users]]
username = "{USERNAME}"
password = "alice-password"
claims = {{ name = "Alice" }}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(directory: Path) -> Path:
    config = directory / "codeflow.toml"
    config.write_text(CONFIG, encoding="utf-8")
    return config


@contextlib.contextmanager
def serving(
    db: Path | str, config: Path, *, issuer: str, log: Path, auto_approve: str | None = None
) -> Iterator[tuple[subprocess.Popen, str]]:
    """``python codeflow.py serve --storage sqlite:///DB`` (or ``--storage DB`` when DB is a
    storage URL) until the block ends; yields the process and its base URL once discovery
    answers."""
    port = free_port()
    storage = db if isinstance(db, str) else f"sqlite:///{db}"
    cmd = [sys.executable, str(CODEFLOW), "serve", "--storage", storage]
    cmd += ["--config", str(config), "--issuer", issuer, "--port", str(port)]
    if auto_approve:
        cmd += ["--auto-approve", auto_approve]
    # The child imports codeflow_storage from wherever these tests do.
    path = [str(CODEFLOW.parent), str(Path(codeflow_storage.__file__).parent.parent)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*path, os.environ.get("PYTHONPATH", "")])}
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)  # noqa: S603
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"codeflow serve exited:\n{log.read_text()}")
            try:
                if requests.get(base + "/.well-known/oauth-authorization-server", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"codeflow serve not ready in {READY_TIMEOUT}s:\n{log.read_text()}"
                )
            time.sleep(0.05)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def pkce_pair() -> tuple[str, str]:
    """A fresh (code_verifier, S256 code_challenge) per RFC 7636 §4.1-4.2."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
