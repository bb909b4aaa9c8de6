"""Sign in from a command line with the device authorization grant (RFC 8628).

With the provider running (``codeflow serve --config examples/codeflow.toml``)::

    python examples/device_login.py

It prints a code and where to type it; open that page in any browser (on a phone, say),
sign in as alice / wonderland and allow "Example CLI". The command, polling meanwhile,
then says who signed in. Only the standard library: discovery (RFC 8414) finds the
endpoints, the device asks for its codes (§3.1), waits as the provider says (§3.5:
``interval``, 5 s more on ``slow_down``) and gets its tokens (§3.4).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def post(url: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """POST a form; the status and the JSON answer (errors come as JSON too, RFC 6749 §5.2)."""
    data = urllib.parse.urlencode(form).encode()
    request = urllib.request.Request(url, data=data, method="POST")  # noqa: S310 -- http(s) URLs from discovery
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        with err:
            return err.code, json.load(err)


def get_json(url: str, token: str | None = None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        answer: dict[str, Any] = json.load(response)
        return answer


def device_login(issuer: str, client_id: str, scope: str) -> dict[str, Any]:
    """Run the device flow; return the token response, or raise SystemExit with why not."""
    metadata = get_json(issuer.rstrip("/") + "/.well-known/openid-configuration")
    status, codes = post(metadata["device_authorization_endpoint"],
                         {"client_id": client_id, "scope": scope})  # fmt: skip
    if status != 200:
        raise SystemExit(f"the provider refused: {codes.get('error')}: "
                         f"{codes.get('error_description', '')}")  # fmt: skip
    print(f"To sign in, open {codes['verification_uri']} and enter the code {codes['user_code']}")
    if "verification_uri_complete" in codes:
        print(f"(or open {codes['verification_uri_complete']})")
    print("Waiting for you to allow it...", flush=True)
    interval = int(codes.get("interval", 5))  # RFC 8628 §3.2: 5 if none is given
    deadline = time.monotonic() + int(codes["expires_in"])
    while time.monotonic() < deadline:
        time.sleep(interval)
        status, answer = post(metadata["token_endpoint"], {
            "grant_type": DEVICE_GRANT, "device_code": codes["device_code"],
            "client_id": client_id,
        })  # fmt: skip
        if status == 200:
            return answer
        error = answer.get("error")
        if error == "authorization_pending":
            continue
        if error == "slow_down":  # RFC 8628 §3.5: "increased by 5 seconds"
            interval += 5
            continue
        raise SystemExit(f"not signed in: {error}: {answer.get('error_description', '')}")
    raise SystemExit("not signed in: the code expired")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--issuer", default="http://127.0.0.1:8000")
    parser.add_argument("--client-id", default="example-cli")
    parser.add_argument("--scope", default="openid profile offline_access")
    args = parser.parse_args(argv)
    tokens = device_login(args.issuer, args.client_id, args.scope)
    metadata = get_json(args.issuer.rstrip("/") + "/.well-known/openid-configuration")
    user = get_json(metadata["userinfo_endpoint"], tokens["access_token"])
    print(f"Signed in as {user.get('name') or user['sub']}")
    print(json.dumps({"sub": user["sub"], "scope": tokens.get("scope"),
                      "refresh_token": "refresh_token" in tokens}), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
