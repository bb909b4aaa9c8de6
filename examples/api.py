"""A JSON API that requires a scope, protected with codeflow_sdk's BearerValidator.

With the provider running (``codeflow serve --config examples/codeflow.toml``)::

    python examples/api.py

then get a token and call it::

    TOKEN=$(curl -s -u notes-cli:notes-cli-secret -d grant_type=client_credentials \\
            -d scope=notes:read http://127.0.0.1:8000/token | python -c \\
            'import json, sys; print(json.load(sys.stdin)["access_token"])')
    curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:5001/notes

JWT access tokens (RFC 9068) are checked locally with the provider's keys; opaque ones
are introspected (RFC 7662) with the API's own client credentials. A request without a
token gets 401, with a token lacking the scope 403 (RFC 6750 §3).
"""

from __future__ import annotations

import argparse
import threading

import bottle
from codeflow_sdk import AccessToken, BearerValidator, BottleBearer


def make_app(validator: BearerValidator) -> bottle.Bottle:
    """The API: GET /notes needs notes:read, POST /notes needs notes:write."""
    app = bottle.Bottle()
    app.install(BottleBearer(validator, realm="notes"))
    notes: list[dict[str, str]] = [{"text": "Buy milk", "by": "alice"}]
    lock = threading.Lock()

    @app.get("/health", bearer=False)
    def health() -> dict:
        return {"ok": True}

    @app.get("/notes", scope="notes:read")
    def list_notes(token: AccessToken) -> dict:
        with lock:
            return {"notes": list(notes), "caller": token.sub or token.client_id}

    @app.post("/notes", scope="notes:write")
    def add_note(token: AccessToken) -> dict:
        body = bottle.request.json
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text:
            raise bottle.HTTPResponse({"error": "a JSON body with text is required"}, 400)
        note = {"text": text, "by": token.sub or token.client_id or ""}
        with lock:
            notes.append(note)
        bottle.response.status = 201
        return note

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--issuer", default="http://127.0.0.1:8000")
    parser.add_argument("--audience", help="the aud of JWT access tokens (default: issuer)")
    parser.add_argument("--client-id", default="notes-api", help="for introspection")
    parser.add_argument("--client-secret", default="notes-api-secret")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    args = parser.parse_args(argv)
    validator = BearerValidator(
        args.issuer,
        audience=args.audience or args.issuer,  # codeflow's default audience is its issuer
        introspection_client_id=args.client_id,
        introspection_client_secret=args.client_secret,
    )
    print(f"api: http://{args.host}:{args.port}/notes (provider {args.issuer})", flush=True)
    bottle.run(make_app(validator), host=args.host, port=args.port, quiet=True)


if __name__ == "__main__":
    main()
