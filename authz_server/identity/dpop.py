"""DPoP proofs at the resource server: every check of RFC 9449 §4.3, then single use.

Order (identity.md §8 steps 5, 6 and 8): the proof's shape and header (``typ dpop+jwt``, an
asymmetric ``alg``, a public ``jwk`` without private members), the key's RFC 7638 thumbprint
against the token's ``cnf.jkt`` (constant time), the signature with that key, then the claims
(``jti``, ``htm``, ``htu``, ``iat`` window, ``ath``). Single use comes last, after the
certificate binding, so unauthenticated traffic cannot fill the replay store: the proof's
``jti`` is claimed once through an injected ``claim(key, ttl_seconds) -> bool`` (the shared
state store) for as long as the proof could pass the time check.

Keys built from proofs are cached by thumbprint (an agent reuses its key), so a proof costs one
signature check. Server nonces (§8, §9) are not issued, so a proof's ``nonce`` is not checked.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from authz_server.identity.cache import LruCache
from authz_server.identity.config import DpopConfig
from authz_server.identity.errors import InvalidKey, VerificationFailed
from authz_server.identity.jws import JwsFormatError, b64url_encode, is_number, parse
from authz_server.identity.jwt import AccessToken
from authz_server.identity.keys import (
    ASYMMETRIC_ALGORITHMS,
    PRIVATE_MEMBERS,
    VerificationKey,
    key_from_jwk,
    required_members,
    same_digest,
    thumbprint,
)
from authz_server.identity.model import Reason
from authz_server.identity.urls import normalize_url
from authz_server.request import Request

log = logging.getLogger(__name__)

# Duende's cap; an RSA-4096 proof is about 1.5 KB.
MAX_PROOF = 4000
# RFC 9449 §11.1: refuse oversized jti values (only a hash is stored).
MAX_JTI = 256
KEY_CACHE_SIZE = 1024
# Requests whose proof this process claimed (or saw refused as replayed), remembered so that
# the same request again is refused as replayed without a signature check: a replay is what an
# attacker can send at will, and it cost the most of any refusal (a signature, then the store).
USED_CACHE_SIZE = 4096

Claim = Callable[[str, float], bool]


@dataclass(frozen=True, slots=True)
class Proof:
    """A proof that passed every check but single use. ``replay_key`` is what is claimed in
    the store, for ``ttl`` seconds."""

    thumbprint: str
    replay_key: str
    ttl: float


def _invalid(detail: str) -> VerificationFailed:
    return VerificationFailed(Reason.DPOP_INVALID, detail)


def expected_htu(config: DpopConfig, request: Request) -> str | None:
    """The normalised URL a proof's ``htu`` must name: the configured origin (else the
    request's ``:scheme`` and ``:authority``) and the path without query; None when unknown."""
    path = request.path.partition("?")[0].partition("#")[0] or "/"
    if config.origin:
        return normalize_url(config.origin + path)
    if not request.scheme or not request.host:
        return None
    return normalize_url(f"{request.scheme}://{request.host}{path}")


class ProofVerifier:
    """Checks DPoP proofs against a verified access token. ``clock`` gives Unix seconds."""

    def __init__(
        self,
        config: DpopConfig,
        claim: Claim | None,
        *,
        clock: Callable[[], float] = time.time,
        key_cache_size: int = KEY_CACHE_SIZE,
        used_cache_size: int = USED_CACHE_SIZE,
    ) -> None:
        self._config = config
        self._claim = claim
        self._clock = clock
        self._keys: LruCache[str, VerificationKey] = LruCache(key_cache_size)
        self._used: LruCache[bytes, float] = LruCache(used_cache_size)

    @staticmethod
    def seen_key(proof: str, access_token: str, request: Request) -> bytes:
        """What makes :meth:`check` give the same answer again: the proof, the token it is
        bound to, and the parts of the request the proof names (method, and the URL's scheme,
        host and path). A digest, so the cache holds no credential."""
        parts = (proof, access_token, request.method, request.scheme, request.host, request.path)
        return hashlib.sha256("\0".join(parts).encode()).digest()

    def replayed(self, seen: bytes) -> bool:
        """Whether the request ``seen`` names was claimed here before and its proof is still
        within its lifetime. Then :meth:`check` would pass exactly as before (the same text
        against the same token, method and URL; ``iat`` still in its window) and :meth:`claim`
        would refuse it as replayed: the answer is known without either. Past the lifetime the
        full check answers (the proof is too old)."""
        expiry = self._used.get(seen)
        return expiry is not None and self._clock() < expiry

    def check(self, proof: str, request: Request, token: AccessToken) -> Proof:
        """Every §4.3 check but single use; :class:`VerificationFailed` (``dpop_invalid``)."""
        if len(proof) > MAX_PROOF:
            raise _invalid("the DPoP proof is too long")
        if "," in proof:
            raise _invalid("more than one DPoP header")
        try:
            jws = parse(proof)
        except JwsFormatError as exc:
            raise _invalid(f"the DPoP proof is not a compact JWT ({exc})") from None
        header, claims = jws.header, jws.payload
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() != "dpop+jwt":
            raise _invalid("the DPoP proof's typ is not dpop+jwt")
        if "crit" in header:
            raise _invalid("the DPoP proof names critical header extensions")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in ASYMMETRIC_ALGORITHMS:
            raise _invalid("the DPoP proof's alg is not an allowed asymmetric algorithm")
        key = self._key(header.get("jwk"))
        if not same_digest(key.thumbprint, token.jkt):
            raise _invalid("the DPoP key is not the key the token is bound to")
        if not key.accepts(alg):
            raise _invalid("the DPoP proof's alg does not fit its key")
        if not key.verify(alg, jws.signing_input, jws.signature):
            raise _invalid("the DPoP proof's signature does not verify")
        jti, htm, htu, iat = (claims.get(n) for n in ("jti", "htm", "htu", "iat"))
        if not isinstance(jti, str) or not jti:
            raise _invalid("the DPoP proof has no jti")
        if len(jti) > MAX_JTI:
            raise _invalid("the DPoP proof's jti is too long")
        if not isinstance(htm, str) or htm != request.method:
            raise _invalid("the DPoP proof's htm is not the request method")
        expected = expected_htu(self._config, request)
        if expected is None:
            raise _invalid("the request URL is unknown (configure dpop.origin)")
        if not isinstance(htu, str) or normalize_url(htu) != expected:
            raise _invalid("the DPoP proof's htu is not the request URL")
        if not is_number(iat):
            raise _invalid("the DPoP proof's iat is missing or not a number")
        now = self._clock()
        if iat > now + self._config.clock_skew:
            raise _invalid("the DPoP proof was issued in the future")
        if iat < now - self._config.max_age - self._config.clock_skew:
            raise _invalid("the DPoP proof is too old")
        ath = claims.get("ath")
        if not isinstance(ath, str) or not same_digest(ath, token.ath):
            raise _invalid("the DPoP proof's ath is not the hash of the access token")
        digest = hashlib.sha256(f"{key.thumbprint} {jti}".encode()).digest()
        ttl = iat + self._config.max_age + self._config.clock_skew - now
        return Proof(key.thumbprint, "dpop:" + b64url_encode(digest), max(ttl, 1.0))

    def claim(self, proof: Proof, seen: bytes | None = None) -> None:
        """Claim the proof's ``jti`` once: ``dpop_replayed`` when it was seen; a store that
        fails refuses the proof as unavailable (503), never lets it through. ``seen``
        (:meth:`seen_key`) is remembered once the store answered, claimed or replayed, until
        the proof's lifetime ends."""
        if self._claim is None:
            raise VerificationFailed(
                Reason.DPOP_INVALID, "no replay store is configured", unavailable=True
            )
        try:
            fresh = self._claim(proof.replay_key, proof.ttl)
        except Exception as exc:
            log.warning("DPoP replay store failed: %s", type(exc).__name__)
            raise VerificationFailed(
                Reason.DPOP_INVALID, "the replay store is unavailable", unavailable=True
            ) from None
        if seen is not None:
            self._used.put(seen, self._clock() + proof.ttl)
        if fresh is not True:
            raise VerificationFailed(Reason.DPOP_REPLAYED, "the DPoP proof was already used")

    def _key(self, jwk: object) -> VerificationKey:
        if not isinstance(jwk, dict):
            raise _invalid("the DPoP proof carries no jwk")
        if PRIVATE_MEMBERS & jwk.keys():
            raise _invalid("the DPoP proof's jwk holds private key members")
        try:
            print_ = thumbprint(jwk)
            key = self._keys.get(print_)
            if key is None:
                key = key_from_jwk(required_members(jwk))
                self._keys.put(print_, key)
        except InvalidKey:
            raise _invalid("the DPoP proof's jwk is not a usable public key") from None
        return key
