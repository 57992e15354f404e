"""Access token verification (RFC 9068, RFC 8725), cheapest checks first (identity.md §8).

Before any key is touched: the compact format, ``iss`` naming a configured issuer, ``typ``
(``at+jwt``; plain ``JWT`` only where the issuer allows it), ``alg`` in the issuer's allow-list,
a ``kid``, and ``exp``, so garbage and stale tokens cost no signature check and cannot drive key
refetches. Then the key (by ``kid`` among that issuer's keys only; header URLs such as ``jku``,
``x5u`` or an embedded ``jwk`` are never used), whose own algorithm must match, and the
signature. Then ``aud``, ``nbf``/``iat``, the RFC 9068 claims, ``scope``/``scp``, ``act``, ``cnf``.

A verified token is cached by the SHA-256 of its bytes until it expires. So is a refusal decided
with a key (a bad signature, a wrong audience, a claim), in a small cache of its own: it saves a
signature check when a token is sent again, and a flood of distinct bad tokens only turns that
small cache over, never the verified tokens'. An expired token is remembered there too, without
a key (it can only stay expired): a stale token retried saves its parse and the claims' checks.
Another refusal decided before any key (the format, the issuer, ``typ``, ``alg``) is not
remembered: it costs a parse, about what a cache entry would save. A cached verdict is used only
while the key that produced it (if any) is still published.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from authz_server.identity.cache import LruCache
from authz_server.identity.config import IssuerConfig
from authz_server.identity.errors import VerificationFailed
from authz_server.identity.jwks import KeyStore
from authz_server.identity.jws import CompactJws, JwsFormatError, b64url_encode, is_number, parse
from authz_server.identity.model import Identity, Method, Reason, freeze

MAX_TOKEN = 16384
MAX_KID = 256
DEFAULT_CACHE_SIZE = 4096
# Refusals decided with a key: enough for the few bad tokens a misconfigured client repeats.
REFUSED_CACHE_SIZE = 256
_EXPIRED = "the token has expired"
_AT_JWT = frozenset({"at+jwt", "application/at+jwt"})
_PLAIN_JWT = frozenset({"jwt", "application/jwt"})


@dataclass(frozen=True, slots=True)
class AccessToken:
    """The verified content of an access token. ``jkt`` and ``x5t`` are its ``cnf`` bindings
    ("" when unbound); ``ath`` is the DPoP ``ath`` a proof for it must carry."""

    issuer: str
    subject: str
    client_id: str
    audiences: tuple[str, ...]
    scopes: tuple[str, ...]
    claims: Mapping[str, Any]
    actor: str
    jkt: str
    x5t: str
    ath: str
    expires_at: float
    not_before: float | None
    issued_at: float | None
    skew: float
    # The Identity of this token presented as Bearer with no peer certificate: the common
    # request, answered without building a new value.
    identity: Identity


@dataclass(frozen=True, slots=True)
class _Verdict:
    """A remembered outcome for one token. ``key_thumbprint`` names the key it depends on
    ("" for a refusal decided before any key was looked up); the verdict holds only while
    that key is still published."""

    issuer: str
    kid: str
    key_thumbprint: str
    token: AccessToken | None = None
    reason: Reason = Reason.MALFORMED
    detail: str = ""


def _fail(reason: Reason, detail: str) -> VerificationFailed:
    return VerificationFailed(reason, detail)


def check_times(token: AccessToken, now: float) -> None:
    """``exp``, ``nbf`` and ``iat`` against ``now`` with the issuer's skew."""
    if now > token.expires_at + token.skew:
        raise _fail(Reason.EXPIRED, _EXPIRED)
    if token.not_before is not None and now + token.skew < token.not_before:
        raise _fail(Reason.EXPIRED, "the token is not valid yet (nbf)")
    if token.issued_at is not None and now + token.skew < token.issued_at:
        raise _fail(Reason.EXPIRED, "the token was issued in the future (iat)")


class AccessTokenVerifier:
    """Verifies access tokens of the configured issuers with keys from a :class:`KeyStore`.
    ``clock`` gives wall-clock seconds (token times are Unix times).

    Outcomes are remembered per token (by the SHA-256 of its bytes) in two bounded caches, one
    for verified tokens and a smaller one for refusals decided with a key, so a flood of
    distinct bad tokens cannot evict the good ones nor hold more than the small cache.
    """

    def __init__(
        self,
        issuers: Mapping[str, IssuerConfig],
        keys: KeyStore,
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self._issuers = dict(issuers)
        self._keys = keys
        self._clock = clock
        self._verified: LruCache[bytes, _Verdict] = LruCache(cache_size)
        self._refused: LruCache[bytes, _Verdict] = LruCache(min(cache_size, REFUSED_CACHE_SIZE))

    def verify(self, token: str) -> AccessToken:
        """The verified token, or :class:`VerificationFailed` with the first failed check."""
        if len(token) > MAX_TOKEN:
            raise _fail(Reason.MALFORMED, "the token is too long")
        try:
            digest = hashlib.sha256(token.encode("ascii")).digest()
        except UnicodeEncodeError:
            raise _fail(Reason.MALFORMED, "the token is not a compact JWS") from None
        now = self._clock()
        for cache in (self._verified, self._refused):
            verdict = cache.get(digest)
            if verdict is None:
                continue
            if self._still_holds(verdict):
                if verdict.token is None:
                    raise _fail(verdict.reason, verdict.detail)
                check_times(verdict.token, now)
                return verdict.token
            cache.discard(digest)
        return self._verify(token, digest, now)

    def _still_holds(self, verdict: _Verdict) -> bool:
        if not verdict.key_thumbprint:
            return True
        key_set = self._keys.key_set(verdict.issuer)
        key = key_set.keys.get(verdict.kid) if key_set is not None else None
        return key is not None and key.thumbprint == verdict.key_thumbprint

    def _verify(self, token: str, digest: bytes, now: float) -> AccessToken:
        try:
            jws = parse(token)
        except JwsFormatError as exc:
            raise _fail(Reason.MALFORMED, f"the token is not a compact JWS ({exc})") from None
        header, claims = jws.header, jws.payload
        if "crit" in header:
            raise _fail(Reason.MALFORMED, "the token names critical header extensions")
        iss = claims.get("iss")
        if not isinstance(iss, str):
            raise _fail(Reason.MALFORMED, "the token has no iss claim")
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise _fail(Reason.WRONG_ISSUER, "the issuer is not configured")
        typ = header.get("typ")
        typ = typ.lower() if isinstance(typ, str) else ""
        rfc9068 = typ in _AT_JWT
        if not rfc9068 and not (issuer.allow_plain_jwt and typ in _PLAIN_JWT):
            raise _fail(Reason.MALFORMED, "the token's typ is not at+jwt")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in issuer.algorithms:
            raise _fail(Reason.ALGORITHM_NOT_ALLOWED, "the token's alg is not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > MAX_KID:
            raise _fail(Reason.UNKNOWN_KEY, "the token names no usable kid")
        exp = claims.get("exp")
        if not is_number(exp):
            raise _fail(Reason.MALFORMED, "the token's exp is missing or not a number")
        if now > exp + issuer.clock_skew:
            # Remembered: time only moves on, so an expired token stays refused (an agent
            # retrying with a stale token sends the same one again and again).
            self._refused.put(digest, _Verdict(iss, kid, "", None, Reason.EXPIRED, _EXPIRED))
            raise _fail(Reason.EXPIRED, _EXPIRED)
        key_set = self._keys.key_set(iss)
        if key_set is None:
            raise VerificationFailed(
                Reason.KEYS_UNAVAILABLE, "the issuer's keys have not arrived", unavailable=True
            )
        key = key_set.keys.get(kid)
        if key is None:
            self._keys.request_refetch(iss)
            raise _fail(Reason.UNKNOWN_KEY, "no key of the issuer has this kid")
        if not key.accepts(alg):
            raise _fail(Reason.ALGORITHM_NOT_ALLOWED, "the token's alg does not fit its key")
        try:
            if not key.verify(alg, jws.signing_input, jws.signature):
                raise _fail(Reason.BAD_SIGNATURE, "the signature does not verify")
            verified = self._claims(token, jws, issuer, rfc9068, float(exp))
        except VerificationFailed as failed:
            # Decided with this key: remembered for as long as the key is published.
            refusal = _Verdict(iss, kid, key.thumbprint, None, failed.reason, failed.detail)
            self._refused.put(digest, refusal)
            raise
        self._verified.put(digest, _Verdict(iss, kid, key.thumbprint, verified))
        check_times(verified, now)
        return verified

    def _claims(
        self, token: str, jws: CompactJws, issuer: IssuerConfig, rfc9068: bool, exp: float
    ) -> AccessToken:
        claims = jws.payload
        audiences = _audiences(claims.get("aud"))
        if not any(aud in issuer.audiences for aud in audiences):
            raise _fail(Reason.WRONG_AUDIENCE, "the token's aud names no configured audience")
        nbf = claims.get("nbf")
        if "nbf" in claims and not is_number(nbf):
            raise _fail(Reason.MALFORMED, "the token's nbf is not a number")
        iat = claims.get("iat")
        if not is_number(iat):
            raise _fail(Reason.MALFORMED, "the token's iat is missing or not a number")
        subject = _string(claims, "sub", required=True)
        client_id = _string(claims, "client_id", required=rfc9068)
        if not rfc9068 and not client_id:
            client_id = _string(claims, "azp", required=False)
        _string(claims, "jti", required=rfc9068)
        jkt, x5t = _confirmation(claims)
        scopes, frozen, actor = _scopes(claims), freeze(claims), _actor(claims)
        return AccessToken(
            issuer=issuer.issuer,
            subject=subject,
            client_id=client_id,
            audiences=audiences,
            scopes=scopes,
            claims=frozen,
            actor=actor,
            jkt=jkt,
            x5t=x5t,
            ath=b64url_encode(hashlib.sha256(token.encode("ascii")).digest()) if jkt else "",
            expires_at=exp,
            not_before=None if nbf is None else float(nbf),
            issued_at=float(iat),
            skew=issuer.clock_skew,
            identity=Identity(
                authenticated=True,
                method=Method.BEARER,
                issuer=issuer.issuer,
                subject=subject,
                client_id=client_id,
                audiences=audiences,
                scopes=scopes,
                claims=frozen,
                actor=actor,
            ),
        )


def _string(claims: Mapping[str, Any], name: str, *, required: bool) -> str:
    # A claim present with another type (null included) is malformed, even where optional.
    if name not in claims and not required:
        return ""
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise _fail(Reason.MALFORMED, f"the token's {name} is missing or not a string")
    return value


def _audiences(aud: Any) -> tuple[str, ...]:
    if aud is None:
        raise _fail(Reason.WRONG_AUDIENCE, "the token has no aud")
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return tuple(aud)
    raise _fail(Reason.MALFORMED, "the token's aud is not a string or a list of strings")


def _scopes(claims: Mapping[str, Any]) -> tuple[str, ...]:
    # scope (RFC 8693 §4.2) wins; scp (a list, or a string in some providers) otherwise.
    scp: tuple[str, ...] = ()
    if "scp" in claims:
        value = claims["scp"]
        if isinstance(value, str):
            scp = tuple(value.split())
        elif isinstance(value, list) and all(isinstance(s, str) for s in value):
            scp = tuple(value)
        else:
            raise _fail(Reason.MALFORMED, "the token's scp is not a string or a list of strings")
    if "scope" not in claims:
        return scp
    if not isinstance(claims["scope"], str):
        raise _fail(Reason.MALFORMED, "the token's scope is not a string")
    return tuple(claims["scope"].split())


def _actor(claims: Mapping[str, Any]) -> str:
    # RFC 8693 §4.1: the outermost act is the current actor; nested ones are history.
    if "act" not in claims:
        return ""
    act = claims["act"]
    if not isinstance(act, dict):
        raise _fail(Reason.MALFORMED, "the token's act is not an object")
    sub = act.get("sub", "")
    if not isinstance(sub, str):
        raise _fail(Reason.MALFORMED, "the token's act.sub is not a string")
    return sub


def _confirmation(claims: Mapping[str, Any]) -> tuple[str, str]:
    if "cnf" not in claims:
        return "", ""
    cnf = claims["cnf"]
    if not isinstance(cnf, dict):
        raise _fail(Reason.MALFORMED, "the token's cnf is not an object")
    found = []
    for name in ("jkt", "x5t#S256"):
        value = cnf.get(name)
        if name in cnf and (not isinstance(value, str) or not value):
            raise _fail(Reason.MALFORMED, f"the token's cnf.{name} is not a non-empty string")
        found.append(value or "")
    return found[0], found[1]
