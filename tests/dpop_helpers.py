"""A DPoP client made independently of codeflow (RFC 9449 §4.2): a key pair from
cryptography, proofs signed with PyJWT, thumbprints computed here (RFC 7638 §3), so that
the server's checks are tested against proofs it did not make."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"),
                      "OKP": ("crv", "kty", "x")}  # fmt: skip


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 §3.1: SHA-256 over the required members, sorted, no whitespace."""
    members = {name: jwk[name] for name in sorted(THUMBPRINT_MEMBERS[jwk["kty"]])}
    return b64url(hashlib.sha256(json.dumps(members, separators=(",", ":")).encode()).digest())


def ath(access_token: str) -> str:
    """RFC 9449 §4.2: base64url of the SHA-256 of the ASCII access token."""
    return b64url(hashlib.sha256(access_token.encode("ascii")).digest())


class DPoPKey:
    """A client's DPoP key pair and the proofs it signs."""

    def __init__(self, alg: str = "ES256") -> None:
        self.alg = alg
        if alg.startswith("ES"):
            curve = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}[alg]
            self.private: Any = ec.generate_private_key(curve())
            algorithm: Any = jwt.algorithms.ECAlgorithm
        elif alg == "EdDSA":
            self.private = ed25519.Ed25519PrivateKey.generate()
            algorithm = jwt.algorithms.OKPAlgorithm
        else:
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            algorithm = jwt.algorithms.RSAAlgorithm
        self.jwk: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        self.private_jwk: dict[str, Any] = json.loads(algorithm.to_jwk(self.private))
        self.jkt = thumbprint(self.jwk)

    def proof(
        self,
        htm: str,
        htu: str,
        iat: float,
        *,
        access_token: str | None = None,
        nonce: str | None = None,
        header: dict[str, Any] | None = None,
        claims: dict[str, Any] | None = None,
    ) -> str:
        """RFC 9449 §4.2: typ dpop+jwt, alg, jwk; jti, htm, htu, iat (and ath, nonce);
        ``header`` and ``claims`` override (None: leave out)."""
        body: dict[str, Any] = {"jti": secrets.token_urlsafe(12), "htm": htm, "htu": htu,
                                "iat": int(iat)}  # fmt: skip
        if access_token is not None:
            body["ath"] = ath(access_token)
        if nonce is not None:
            body["nonce"] = nonce
        body.update(claims or {})
        body = {k: v for k, v in body.items() if v is not None}
        headers = {"typ": "dpop+jwt", "jwk": self.jwk, **(header or {})}
        return jwt.encode(body, self.private, algorithm=self.alg, headers=headers)
