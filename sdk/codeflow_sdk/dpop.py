"""DPoP (RFC 9449): proof-of-possession of a key, for both ends.

``DPoPKey`` is the client's key: it signs a proof (a ``dpop+jwt``) for each request
(§4.2), and its RFC 7638 thumbprint is what tokens are bound to (``cnf.jkt``, §6).
``check_proof`` is the resource server's check of a proof presented with a DPoP-bound
access token (§4.3, §7.1), used by ``BearerValidator``. JOSE is PyJWT's and
cryptography's; nothing here signs or verifies by hand.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import secrets
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from .errors import InvalidDPoPProofError

__all__ = ["DPOP_ALGS", "DPoPKey", "ReplayCache", "check_proof", "jwk_thumbprint"]

# RFC 9449 §4.3 #5: asymmetric algorithms only (RFC 7518 §3.1, RFC 8037 §3.1).
DPOP_ALGS = ("ES256", "ES384", "ES512", "EdDSA", "PS256", "PS384", "PS512",
             "RS256", "RS384", "RS512")  # fmt: skip
PROOF_WINDOW = 60  # seconds a proof's iat may be from now, either way (§11.1)
MAX_PROOF = 8192  # characters
# RFC 7638 §3.2: the members each key type's thumbprint hashes.
_THUMBPRINT_MEMBERS = {"RSA": ("e", "kty", "n"), "EC": ("crv", "kty", "x", "y"),
                       "OKP": ("crv", "kty", "x")}  # fmt: skip
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 §3: base64url SHA-256 of the required members, sorted, no whitespace."""
    members = {name: jwk[name] for name in _THUMBPRINT_MEMBERS[jwk["kty"]]}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("utf-8")).digest())


def access_token_hash(access_token: str) -> str:
    """RFC 9449 §4.2 ath: base64url SHA-256 of the ASCII access token."""
    return _b64url(hashlib.sha256(access_token.encode("ascii", "replace")).digest())


def normalized_url(uri: str) -> str | None:
    """RFC 9449 §4.3 #9: the URI without query and fragment, after RFC 3986 §6.2.2 and
    §6.2.3 normalization (case, percent-encoding, default port, empty path)."""
    try:
        parts = urllib.parse.urlsplit(uri)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    default = {"http": 80, "https": 443}[scheme]
    netloc = host + (f":{port}" if port not in (None, default) else "")

    def percent(match: re.Match[str]) -> str:
        char = chr(int(match.group(1), 16))
        return char if char in _UNRESERVED else match.group(0).upper()

    return f"{scheme}://{netloc}{re.sub(r'%([0-9A-Fa-f]{2})', percent, parts.path) or '/'}"


class DPoPKey:
    """A client's DPoP key pair (RFC 9449 §4.2). ``DPoPKey.generate()`` makes a P-256
    key (ES256); ``DPoPKey(private_key, alg)`` wraps one of cryptography's RSA, EC or
    Ed25519 private keys. Keep it for as long as the tokens bound to it live."""

    def __init__(self, private_key: Any, alg: str = "ES256") -> None:
        if alg not in DPOP_ALGS:
            raise ValueError(f"alg must be one of {', '.join(DPOP_ALGS)}")
        if isinstance(private_key, ec.EllipticCurvePrivateKey):
            algorithm: Any = jwt.algorithms.ECAlgorithm
        elif isinstance(private_key, rsa.RSAPrivateKey):
            algorithm = jwt.algorithms.RSAAlgorithm
        elif isinstance(private_key, ed25519.Ed25519PrivateKey):
            algorithm = jwt.algorithms.OKPAlgorithm
        else:
            raise TypeError("private_key must be an RSA, EC or Ed25519 private key")
        self.private_key = private_key
        self.alg = alg
        self.jwk: dict[str, Any] = json.loads(algorithm.to_jwk(private_key.public_key()))
        self.thumbprint = jwk_thumbprint(self.jwk)

    @classmethod
    def generate(cls, alg: str = "ES256") -> DPoPKey:
        """A new key for ``alg``: P-256, P-384 or P-521 for ES*, Ed25519 for EdDSA, RSA
        2048 for PS* and RS*."""
        curves: dict[str, ec.EllipticCurve] = {
            "ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()
        }  # fmt: skip
        if alg in curves:
            return cls(ec.generate_private_key(curves[alg]), alg)
        if alg == "EdDSA":
            return cls(ed25519.Ed25519PrivateKey.generate(), alg)
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048), alg)

    def proof(
        self,
        method: str,
        url: str,
        *,
        now: float,
        access_token: str | None = None,
        nonce: str | None = None,
    ) -> str:
        """RFC 9449 §4.2: a proof for one request: jti (random), htm, htu (``url``
        without query and fragment), iat; ath for an access token; the server's nonce."""
        parts = urllib.parse.urlsplit(url)
        claims: dict[str, Any] = {
            "jti": secrets.token_urlsafe(16),
            "htm": method,
            "htu": urllib.parse.urlunsplit(parts._replace(query="", fragment="")),
            "iat": int(now),
        }
        if access_token is not None:
            claims["ath"] = access_token_hash(access_token)
        if nonce is not None:
            claims["nonce"] = nonce
        headers = {"typ": "dpop+jwt", "jwk": self.jwk}
        return jwt.encode(claims, self.private_key, algorithm=self.alg, headers=headers)


class ReplayCache:
    """The jti of each proof seen, until its window ends (RFC 9449 §11.1), in this
    process: bounded by ``max_entries`` (expired ones go first; beyond that, a full cache
    refuses new proofs rather than forget live ones). Several processes serving one API
    each keep their own, so a proof can be replayed once per process within a minute;
    share one across threads, and pass your own (backed by shared storage) to close that."""

    def __init__(self, max_entries: int = 100_000) -> None:
        self.max_entries = max_entries
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, key: str, expires_at: float, now: float) -> bool:
        """Remember ``key`` until ``expires_at``; False if it is remembered already."""
        with self._lock:
            if self._seen.get(key, now) > now:
                return False
            if len(self._seen) >= self.max_entries:
                self._seen = {k: exp for k, exp in self._seen.items() if exp > now}
                if len(self._seen) >= self.max_entries:
                    return False
            self._seen[key] = expires_at
            return True


def check_proof(
    proof: str | None,
    *,
    method: str,
    url: str,
    access_token: str,
    jkt: str,
    now: float,
    replay: ReplayCache,
    algorithms: Iterable[str] = DPOP_ALGS,
    window: float = PROOF_WINDOW,
) -> None:
    """RFC 9449 §4.3 and §7.1: check the proof sent with the DPoP-bound ``access_token``
    (bound to the key of thumbprint ``jkt``) on a ``method`` request to ``url``; raise
    InvalidDPoPProofError, saying which check failed."""
    fail: Callable[[str], InvalidDPoPProofError] = InvalidDPoPProofError
    # §4.3 #1, #2: one header, one JWT.
    if not proof:
        raise fail("A DPoP proof is required with a DPoP-bound access token.")
    if "," in proof or len(proof) > MAX_PROOF:
        raise fail("Send one DPoP header with one proof JWT.")
    try:
        header = jwt.get_unverified_header(proof)
    except jwt.PyJWTError:
        raise fail("The DPoP proof is not a JWT.") from None
    # §4.3 #4, #5, #7: typ, an asymmetric alg, a public jwk.
    allowed = [a for a in algorithms if a in DPOP_ALGS]
    alg, jwk = header.get("alg"), header.get("jwk")
    if header.get("typ") != "dpop+jwt":
        raise fail("The DPoP proof's typ must be dpop+jwt.")
    if alg not in allowed:
        raise fail(f"The DPoP proof's alg must be one of {' '.join(allowed)}.")
    if not isinstance(jwk, dict):
        raise fail("The DPoP proof has no jwk.")
    members = _THUMBPRINT_MEMBERS.get(jwk.get("kty"))  # type: ignore[arg-type]
    if members is None or not all(isinstance(jwk.get(m), str) for m in members):
        raise fail("The DPoP proof's jwk is not an RSA, EC or OKP public key.")
    if any(m in jwk for m in _PRIVATE_MEMBERS):
        raise fail("The DPoP proof's jwk holds a private key.")
    # §4.3 #6: the signature, with the header's key (PyJWT).
    try:
        key = jwt.PyJWK(jwk, alg).key
        claims = jwt.decode(
            proof, key, algorithms=[alg],
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                     "verify_aud": False, "require": ["jti", "htm", "htu", "iat"],
                     "enforce_minimum_key_length": True},
        )  # fmt: skip
    except (jwt.PyJWTError, ValueError, TypeError) as err:
        raise fail(f"The DPoP proof does not verify: {str(err)[:80]}") from None
    jti, htm, htu, iat, ath = (claims.get(n) for n in ("jti", "htm", "htu", "iat", "ath"))
    if not (isinstance(jti, str) and 0 < len(jti) <= 256):
        raise fail("The DPoP proof's jti must be a string of 1 to 256 characters.")
    # §4.3 #8, #9: this request's method and URL.
    if htm != method:
        raise fail(f"The DPoP proof's htm must be {method}.")
    if not isinstance(htu, str) or normalized_url(htu) != normalized_url(url):
        raise fail(f"The DPoP proof's htu must be {url}.")
    # §4.3 #11: iat within the window.
    if isinstance(iat, bool) or not isinstance(iat, int | float) or not math.isfinite(iat):
        raise fail("The DPoP proof's iat must be a number.")
    if abs(now - iat) > window:
        raise fail("The DPoP proof is too old, or from the future.")
    # §4.3 #12: ath is this token's hash, and the key is the one the token is bound to.
    expected = access_token_hash(access_token)
    if not isinstance(ath, str) or not hmac.compare_digest(ath.encode("ascii", "replace"),
                                                           expected.encode()):  # fmt: skip
        raise fail("The DPoP proof's ath is not the hash of this access token.")
    if not hmac.compare_digest(jwk_thumbprint(jwk), jkt):
        raise fail("The DPoP proof is signed by another key than the token is bound to.")
    # §11.1: once.
    if not replay.add(hashlib.sha256(f"{jkt}\0{jti}".encode()).hexdigest(), iat + window, now):
        raise fail("This DPoP proof was used before.")
