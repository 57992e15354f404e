"""Kyverno's ``jwt`` and ``jwks`` libraries.

``jwt.Decode(token, key)`` verifies the signature with a shared secret (HS256/384/512), and
``jwt.Decode(token, keys)`` with a JWK set from ``jwks.Parse(json)``. The result is a ``jwt.Token``
message (``Claims``, a ``google.protobuf.Struct``, and ``Valid``), an object type as in Kyverno,
so ``cond ? jwt.Decode(...) : null`` type-checks; it is declared here in the default descriptor
pool, which the CEL runtime reads. a bad signature or a malformed token is an evaluation error,
while an expired or not-yet-valid token, or one whose ``exp``/``nbf`` is not a number (RFC 7519
NumericDate), only sets ``Valid`` to false, so a policy can choose how to answer (typically
401). Issuer and audience are not checked; policies do that.

``jwks.Fetch(url)`` returns the same key-set type as ``jwks.Parse``, but where Kyverno downloads
the set on every evaluation, this server never does network I/O while deciding: the loader
collects every ``jwks.Fetch`` URL (a string literal, checked at load), the identity stage fetches
them in the background like an issuer's keys, and the call reads the set last fetched for its
URL from the provider installed with :func:`serve_key_sets`. A URL whose keys have not arrived is
an evaluation error, so the policy's failurePolicy decides. A token naming a ``kid`` the fetched
set lacks asks the provider for an early refetch (rate-limited by the key store), so a rotated
key is seen about as soon as with Kyverno's per-call download.

Claim values become JSON-like CEL values with every number a double, as in Kyverno; list claims
such as an array ``aud`` work with both overloads (Kyverno's string-key overload fails on them).
"""

from __future__ import annotations

import functools
import json as _json
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jwt as _pyjwt
from cel_expr_python import cel
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

TOKEN_TYPE = "jwt.Token"


def _token_class() -> Any:
    pool = descriptor_pool.Default()
    try:
        descriptor = pool.FindMessageTypeByName(TOKEN_TYPE)
    except KeyError:
        file = descriptor_pb2.FileDescriptorProto(
            name="authz_server/cel/jwt_token.proto",
            package="jwt",
            syntax="proto3",
            dependency=["google/protobuf/struct.proto"],
        )
        message = file.message_type.add(name="Token")
        field = descriptor_pb2.FieldDescriptorProto
        message.field.add(
            name="Claims",
            number=1,
            type=field.TYPE_MESSAGE,
            label=field.LABEL_OPTIONAL,
            type_name=".google.protobuf.Struct",
        )
        message.field.add(name="Valid", number=2, type=field.TYPE_BOOL, label=field.LABEL_OPTIONAL)
        pool.Add(file)
        descriptor = pool.FindMessageTypeByName(TOKEN_TYPE)
    return message_factory.GetMessageClass(descriptor)


_STRUCT_REGISTERED = struct_pb2.Struct
Token = _token_class()

_HMAC = ["HS256", "HS384", "HS512"]
_BY_KEY_TYPE = {
    "RSA": ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"],
    "EC": ["ES256", "ES384", "ES512", "ES256K"],
    "OKP": ["EdDSA"],
}
_NO_TIME_CHECKS = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "require": [],
}


def _numeric_date(value: Any) -> float | None:
    """The claim as a NumericDate (RFC 7519 §2: a JSON number), or None when it is not one.

    A string such as ``"9999999999"``, a boolean, null, or a number that is not finite (Python's
    JSON parser accepts ``NaN`` and ``Infinity``) is not a time anyone can rely on.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class _Verified:
    """The claims of a token whose signature verified, as the two possible ``jwt.Token``
    messages; which one a call gets depends only on the clock (exp/nbf). A token whose ``exp``
    or ``nbf`` is present but not a NumericDate is never valid.

    The messages are built once and handed, shared, only to the CEL runtime, which copies them
    into its own values (the ``*_shared`` functions: the CEL overloads and the fast path's
    hoisted calls). Python callers of :func:`decode_with_secret` and :func:`decode_with_keys`
    get their own copy, so nothing they change reaches the next request.
    """

    __slots__ = ("exp", "invalid", "malformed", "nbf", "valid")

    def __init__(self, claims: Mapping[str, Any]) -> None:
        self.exp = _numeric_date(claims.get("exp"))
        self.nbf = _numeric_date(claims.get("nbf"))
        self.malformed = ("exp" in claims and self.exp is None) or (
            "nbf" in claims and self.nbf is None
        )
        # A Struct holds every number as a double, as Kyverno's claims do.
        self.valid = Token(Valid=True)
        self.valid.Claims.update(claims)
        self.invalid = Token(Valid=False)
        self.invalid.Claims.CopyFrom(self.valid.Claims)

    def token(self, now: float | None = None) -> Any:
        if self.malformed:
            return self.invalid
        now = time.time() if now is None else now
        if self.exp is not None and now >= self.exp:
            return self.invalid
        if self.nbf is not None and now < self.nbf:
            return self.invalid
        return self.valid


# Verifying a signature (and building the claims message) costs ~100 us, and an agent sends the
# same token on every request until it expires. A verification depends only on the token and the
# key, so its outcome is memoized; the clock-dependent part (``Valid``) is recomputed per call.
# Only successes are cached (lru_cache does not keep exceptions), so a token that failed is
# verified again next time and can never be remembered as valid. Oversized tokens bypass the
# cache so that 1024 entries stay a bounded amount of memory.
CACHE_SIZE = 1024
MAX_CACHED_TOKEN = 16 * 1024


def decode_with_secret(token: str, key: str) -> Any:
    """``jwt.Decode(token, key)``: a ``jwt.Token`` of the caller's own."""
    return _copy(decode_with_secret_shared(token, key))


def decode_with_secret_shared(token: str, key: str) -> Any:
    """:func:`decode_with_secret` returning the cached message itself: for the CEL runtime."""
    if len(token) > MAX_CACHED_TOKEN:
        return _verify_with_secret.__wrapped__(token, key).token()
    return _verify_with_secret(token, key).token()


def _copy(message: Any) -> Any:
    copy = Token()
    copy.CopyFrom(message)
    return copy


@functools.lru_cache(maxsize=CACHE_SIZE)
def _verify_with_secret(token: str, key: str) -> _Verified:
    try:
        claims = _pyjwt.decode(
            token,
            key.encode(),
            algorithms=_HMAC,
            options=_NO_TIME_CHECKS,  # type: ignore[arg-type]
        )
    except _pyjwt.PyJWTError as exc:
        raise ValueError(f"jwt.Decode: {_failure(exc)}") from None
    return _Verified(claims)


def decode_with_keys(token: str, keys: Mapping[str, Any]) -> Any:
    """``jwt.Decode(token, jwks.Parse(...))``: a ``jwt.Token`` of the caller's own."""
    return _copy(decode_with_keys_shared(token, keys))


def decode_with_keys_shared(token: str, keys: Mapping[str, Any]) -> Any:
    """:func:`decode_with_keys` returning the cached message itself: for the CEL runtime."""
    return _decode_with_canonical(token, _json.dumps(keys, sort_keys=True, default=str), None)


def _decode_with_canonical(token: str, canonical: str, url: str | None) -> Any:
    """Verify with the set whose canonical JSON is ``canonical``; a ``kid`` it lacks asks for an
    early refetch when the set came from ``jwks.Fetch`` (``url``, or found by its JSON: a set
    that went through CEL is a new object by then)."""
    verify = _verify_with_keys if len(token) <= MAX_CACHED_TOKEN else _verify_with_keys.__wrapped__
    try:
        return verify(token, canonical).token()
    except _UnknownKey:
        _request_refetch(url if url is not None else _fetched_urls.get(canonical))
        raise


class _UnknownKey(ValueError):
    """The token names a ``kid`` the set does not hold (it may have been rotated in since)."""


@functools.lru_cache(maxsize=CACHE_SIZE)
def _verify_with_keys(token: str, canonical: str) -> _Verified:
    keyset = _keyset(canonical)
    try:
        header = _pyjwt.get_unverified_header(token)
    except _pyjwt.PyJWTError as exc:
        raise ValueError(f"jwt.Decode: {_failure(exc)}") from None
    kid = header.get("kid")
    candidates = [k for k in keyset.keys if kid is None or k.key_id == kid]
    if not candidates:
        raise _UnknownKey("jwt.Decode: no matching key")
    try:
        last: Exception | None = None
        for jwk in candidates:
            algorithms = (
                [jwk.algorithm_name] if _has_alg(jwk) else _BY_KEY_TYPE.get(jwk.key_type, [])
            )
            try:
                claims = _pyjwt.decode(
                    token,
                    jwk.key,
                    algorithms=algorithms,
                    options=_NO_TIME_CHECKS,  # type: ignore[arg-type]
                )
            except _pyjwt.PyJWTError as exc:
                last = exc
                continue
            return _Verified(claims)
        raise last or _pyjwt.InvalidSignatureError("no key verified the token")
    except _pyjwt.PyJWTError as exc:
        raise ValueError(f"jwt.Decode: {_failure(exc)}") from None


def _failure(exc: Exception) -> str:
    """A fixed phrase for why a token failed. pyjwt's own text can quote the token's header
    (a ``kid``), and the message reaches the policy's error reason."""
    if isinstance(exc, _pyjwt.InvalidSignatureError):
        return "bad signature"
    if isinstance(exc, _pyjwt.InvalidAlgorithmError):
        return "algorithm not allowed"
    if isinstance(exc, _pyjwt.InvalidKeyError | _pyjwt.PyJWKError | _pyjwt.PyJWKSetError):
        return "no matching key"
    if isinstance(exc, _pyjwt.DecodeError):
        return "malformed token"
    return "invalid token"


def clear_cache() -> None:
    """Forget every verified token (tests; a key rotation needs nothing: the key is in the key)."""
    _verify_with_secret.cache_clear()
    _verify_with_keys.cache_clear()


def _has_alg(jwk: Any) -> bool:
    return "alg" in getattr(jwk, "_jwk_data", {})


@functools.lru_cache(maxsize=64)
def _keyset(canonical: str) -> Any:
    # Building key objects costs far more than verifying with them, and a policy passes the same
    # set on every request; the cache is a memo of a pure function, not shared state.
    try:
        keyset = _pyjwt.PyJWKSet.from_json(canonical)
    except _pyjwt.PyJWTError:
        raise ValueError("jwks: invalid key set") from None
    if any(k.key_type == "oct" for k in keyset.keys):
        raise ValueError("jwks: symmetric (oct) keys are not accepted in a key set")
    return keyset


def parse_keys(text: str) -> dict[str, Any]:
    try:
        data = _json.loads(text)
    except ValueError:
        raise ValueError("jwks.Parse: invalid key set") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError('jwks.Parse: expected a JWK set, {"keys": [...]}')
    _keyset(_json.dumps(data, sort_keys=True, default=str))
    return data


# -- jwks.Fetch ---------------------------------------------------------------------------------
#
# The one piece of process-wide state in the CEL libraries. The functions are declared once per
# process (the environments are cached and shared by every policy set), so the keys a
# ``jwks.Fetch`` call reads cannot travel with an environment or a program: the server installs a
# provider (:func:`serve_key_sets`) and every evaluation in the process reads through it. The
# provider does no I/O: it returns the JWK set document last fetched in the background for a URL
# (or None), and must be cheap and thread-safe, since it is called on every evaluation. Without
# one (a library user, ``authz-server test`` without keys) every ``jwks.Fetch`` is an error.

KeySetProvider = Callable[[str], Mapping[str, Any] | None]
RefetchRequest = Callable[[str], object]


@dataclass(frozen=True, slots=True)
class _Served:
    provider: KeySetProvider | None = None
    refetch: RefetchRequest | None = None


@dataclass(frozen=True, slots=True)
class _Fetched:
    """One URL's document as a policy gets it. ``document`` is the provider's object, compared
    by identity: a new fetch is a new object, so an unchanged one costs a dict lookup, never a
    re-serialisation. ``keys`` is the plain dict CEL receives (shared, never changed)."""

    document: Mapping[str, Any]
    keys: dict[str, Any]
    canonical: str
    # Why the set is unusable (pyjwt refuses it, or it holds an oct key); "" when usable.
    error: str


_served = _Served()
_fetched: dict[str, _Fetched] = {}
# The fetched sets' canonical JSON -> their URL, to ask for a refetch when a set reaches
# ``jwt.Decode`` through CEL (a new dict by then).
_fetched_urls: dict[str, str] = {}
_fetched_lock = threading.Lock()


def serve_key_sets(provider: KeySetProvider | None, refetch: RefetchRequest | None = None) -> None:
    """Install where ``jwks.Fetch(url)`` reads its keys (None: nowhere, every call fails).

    ``provider(url)`` returns the JWK set document last fetched for ``url``, or None while none
    has arrived; ``refetch(url)``, when given, asks for an early fetch after a token named a
    ``kid`` the set lacks (it must not wait: the fetch happens in the background).
    """
    global _served
    with _fetched_lock:
        _served = _Served(provider, refetch)
        _fetched.clear()
        _fetched_urls.clear()


def key_set_provider() -> KeySetProvider | None:
    """The installed provider (so its owner can uninstall only its own)."""
    return _served.provider


def fetch_keys(url: str) -> dict[str, Any]:
    """``jwks.Fetch(url)``: the set last fetched for ``url``, the same value for every call
    until the next fetch (shared with the CEL runtime, which copies it)."""
    return _fetched_set(url).keys


def decode_with_fetched_keys_shared(token: str, url: str) -> Any:
    """``jwt.Decode(token, jwks.Fetch(url))`` in one call, without building the set's CEL map
    (the fast path's hoisted form; the result is shared, as :func:`decode_with_keys_shared`)."""
    return _decode_with_canonical(token, _fetched_set(url).canonical, url)


def _fetched_set(url: str) -> _Fetched:
    served = _served
    document = served.provider(url) if served.provider is not None else None
    if document is None:
        raise ValueError(f"jwks.Fetch: keys for {url} not fetched yet")
    entry = _fetched.get(url)
    if entry is None or entry.document is not document:
        entry = _remember(url, document)
    if entry.error:
        raise ValueError(entry.error)
    return entry


def _remember(url: str, document: Mapping[str, Any]) -> _Fetched:
    keys = _plain(document)
    canonical = _json.dumps(keys, sort_keys=True, default=str)
    error = ""
    try:
        _keyset(canonical)
    except ValueError as exc:
        error = str(exc)
    entry = _Fetched(document, keys, canonical, error)
    with _fetched_lock:
        old = _fetched.get(url)
        if old is not None:
            _fetched_urls.pop(old.canonical, None)
        _fetched[url] = entry
        _fetched_urls[canonical] = url
    return entry


def _plain(value: Any) -> Any:
    """A JSON value of plain dicts and lists (the provider may hand out read-only views, which
    the CEL runtime refuses)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _request_refetch(url: str | None) -> None:
    refetch = _served.refetch
    if url is not None and refetch is not None:
        refetch(url)


def functions() -> list[cel.FunctionDecl]:
    t = cel.Type
    token = t(TOKEN_TYPE)
    keyset = t.Map(t.STRING, t.DYN)
    return [
        cel.FunctionDecl(
            "jwt.Decode",
            [
                cel.Overload(
                    "jwt_decode_string_key",
                    token,
                    [t.STRING, t.STRING],
                    impl=decode_with_secret_shared,
                ),
                cel.Overload(
                    "jwt_decode_jwk_set", token, [t.STRING, keyset], impl=decode_with_keys_shared
                ),
            ],
        ),
        cel.FunctionDecl(
            "jwks.Parse",
            [cel.Overload("jwks_parse_string", keyset, [t.STRING], impl=parse_keys)],
        ),
        cel.FunctionDecl(
            "jwks.Fetch",
            [cel.Overload("jwks_fetch_string", keyset, [t.STRING], impl=fetch_keys)],
        ),
    ]
