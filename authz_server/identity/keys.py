"""Public verification keys from JWKs, the algorithms each may verify, and RFC 7638 thumbprints.

One algorithm family per key (RFC 8725 §3.1): a JWK's ``alg`` binds it to exactly that
algorithm; without one, the key type and curve decide (RSA: RS*/PS*, an EC curve: its one ES
algorithm, an Edwards curve: EdDSA). Shared secrets (``kty: oct``) and JWKs carrying private
members are refused outright, so HMAC with a public key (the classic algorithm confusion) cannot
happen. Signatures are checked by PyJWT's algorithm objects on ``cryptography`` keys.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import Algorithm, get_default_algorithms

from authz_server.identity.errors import InvalidKey
from authz_server.identity.jws import JwsFormatError, b64url_decode, b64url_encode

ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_RSA_ALGORITHMS = frozenset(a for a in ASYMMETRIC_ALGORITHMS if a[:2] in ("RS", "PS"))
_EC_ALGORITHM = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_EC_SIZE = {"P-256": 32, "P-384": 48, "P-521": 66}
_OKP_CURVES = frozenset({"Ed25519", "Ed448"})
PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
MIN_RSA_BITS = 2048
_B64URL = re.compile(r"[A-Za-z0-9_-]+")

_ALGORITHMS: dict[str, Algorithm] = {
    name: alg for name, alg in get_default_algorithms().items() if name in ASYMMETRIC_ALGORITHMS
}


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A public key ready to verify signatures. ``algorithm`` is the JWK's ``alg`` ("" when the
    JWK named none); ``thumbprint`` is its RFC 7638 SHA-256 thumbprint."""

    kid: str
    kty: str
    curve: str
    algorithm: str
    key: Any
    thumbprint: str

    def accepts(self, alg: str) -> bool:
        """Whether a signature made with ``alg`` may be checked with this key."""
        if self.algorithm:
            return alg == self.algorithm
        if self.kty == "RSA":
            return alg in _RSA_ALGORITHMS
        if self.kty == "EC":
            return _EC_ALGORITHM.get(self.curve) == alg
        return self.kty == "OKP" and alg == "EdDSA"

    def verify(self, alg: str, signing_input: bytes, signature: bytes) -> bool:
        """Check a signature; False for any mismatch, never an exception."""
        algorithm = _ALGORITHMS.get(alg)
        if algorithm is None or not self.accepts(alg):
            return False
        try:
            return bool(algorithm.verify(signing_input, self.key, signature))
        except (ValueError, TypeError):
            return False


def _member(jwk: Mapping[str, Any], name: str) -> str:
    value = jwk.get(name)
    if not isinstance(value, str) or _B64URL.fullmatch(value) is None:
        raise InvalidKey(f"member {name!r} is missing or not base64url")
    return value


def required_members(jwk: Mapping[str, Any]) -> dict[str, str]:
    kty = jwk.get("kty")
    if kty == "RSA":
        return {"e": _member(jwk, "e"), "kty": "RSA", "n": _member(jwk, "n")}
    if kty in ("EC", "OKP"):
        crv = jwk.get("crv")
        if not isinstance(crv, str) or crv not in (_EC_SIZE if kty == "EC" else _OKP_CURVES):
            raise InvalidKey(f"unsupported {kty} curve")
        members = {"crv": crv, "kty": kty, "x": _member(jwk, "x")}
        if kty == "EC":
            members["y"] = _member(jwk, "y")
        return members
    if kty == "oct":
        raise InvalidKey("symmetric keys (kty oct) are not accepted")
    raise InvalidKey("unsupported or missing kty")


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint, base64url: the required members as received, sorted, no
    whitespace. Raises :class:`InvalidKey` when a required member is missing or malformed."""
    canonical = json.dumps(required_members(jwk), separators=(",", ":"), sort_keys=True)
    return b64url_encode(hashlib.sha256(canonical.encode("utf-8")).digest())


def _decode(value: str) -> bytes:
    try:
        return b64url_decode(value)
    except JwsFormatError:
        raise InvalidKey("member is not base64url") from None


def _public_key(members: Mapping[str, str]) -> Any:
    kty = members["kty"]
    try:
        if kty == "RSA":
            n = int.from_bytes(_decode(members["n"]), "big")
            e = int.from_bytes(_decode(members["e"]), "big")
            if n.bit_length() < MIN_RSA_BITS:
                raise InvalidKey(f"RSA key shorter than {MIN_RSA_BITS} bits")
            return rsa.RSAPublicNumbers(e, n).public_key()
        if kty == "EC":
            crv = members["crv"]
            x, y = _decode(members["x"]), _decode(members["y"])
            if len(x) != _EC_SIZE[crv] or len(y) != _EC_SIZE[crv]:
                raise InvalidKey("EC coordinates of the wrong length")
            curve = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}[crv]()
            numbers = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
            )
            return numbers.public_key()
        x = _decode(members["x"])
        if members["crv"] == "Ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(x)
        return ed448.Ed448PublicKey.from_public_bytes(x)
    except InvalidKey:
        raise
    except (ValueError, TypeError, OverflowError):
        raise InvalidKey(f"not a valid {kty} public key") from None


def key_from_jwk(jwk: Any) -> VerificationKey:
    """Build a verification key from one JWK (a mapping). Refuses private members, symmetric
    keys, short RSA keys, points off the curve and an ``alg`` that does not fit the key."""
    if not isinstance(jwk, Mapping):
        raise InvalidKey("a JWK must be a JSON object")
    if jwk.get("kty") == "oct":
        raise InvalidKey("symmetric keys (kty oct) are not accepted")
    if PRIVATE_MEMBERS & jwk.keys():
        raise InvalidKey("the JWK holds private key members")
    members = required_members(jwk)
    kid = jwk.get("kid", "")
    if not isinstance(kid, str):
        raise InvalidKey("kid must be a string")
    alg = jwk.get("alg", "")
    if not isinstance(alg, str):
        raise InvalidKey("alg must be a string")
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True)
    key = VerificationKey(
        kid=kid,
        kty=members["kty"],
        curve=members.get("crv", ""),
        algorithm="",
        key=_public_key(members),
        thumbprint=b64url_encode(hashlib.sha256(canonical.encode("utf-8")).digest()),
    )
    if alg:
        if alg not in ASYMMETRIC_ALGORITHMS or not key.accepts(alg):
            raise InvalidKey("alg does not name an asymmetric algorithm fitting the key")
        key = VerificationKey(key.kid, key.kty, key.curve, alg, key.key, key.thumbprint)
    return key


def same_digest(a: str, b: str) -> bool:
    """Constant-time comparison of two ASCII digests (thumbprints, ``ath``)."""
    return hmac.compare_digest(a.encode("ascii", "replace"), b.encode("ascii", "replace"))


def parse_key_set(document: Any) -> tuple[dict[str, VerificationKey], list[tuple[int, str]]]:
    """The usable signing keys of a JWK set by ``kid``, and ``(index, reason)`` for each key
    refused. Keys meant for encryption (``use: enc``) are skipped silently; a key without a
    ``kid`` cannot be looked up and a repeated ``kid`` is ambiguous, so both are refused.
    Raises :class:`InvalidKey` when the document is not a JWK set at all."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise InvalidKey("a JWK set must be an object with a 'keys' list")
    keys: dict[str, VerificationKey] = {}
    refused: list[tuple[int, str]] = []
    seen: set[str] = set()
    for index, jwk in enumerate(document["keys"]):
        if isinstance(jwk, Mapping) and jwk.get("use", "sig") != "sig":
            continue
        try:
            key = key_from_jwk(jwk)
        except InvalidKey as exc:
            refused.append((index, str(exc)))
            continue
        if not key.kid:
            refused.append((index, "has no kid"))
        elif key.kid in seen:
            refused.append((index, "repeats a kid"))
            keys.pop(key.kid, None)
        else:
            keys[key.kid] = key
        seen.add(key.kid)
    return keys, refused
