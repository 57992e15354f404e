"""Kyverno's ``jwt`` and ``jwks`` libraries.

``jwt.Decode(token, key)`` verifies the signature with a shared secret (HS256/384/512), and
``jwt.Decode(token, keys)`` with a JWK set from ``jwks.Parse(json)``. The result is a ``jwt.Token``
message (``Claims``, a ``google.protobuf.Struct``, and ``Valid``), an object type as in Kyverno,
so ``cond ? jwt.Decode(...) : null`` type-checks; it is declared here in the default descriptor
pool, which the CEL runtime reads. a bad signature or a malformed token is an evaluation error,
while an expired or not-yet-valid token only sets ``Valid`` to false, so a policy can choose how
to answer (typically 401). Issuer and audience are not checked; policies do that.

Kyverno's ``jwks.Fetch(url)`` downloads the set on every evaluation; this server never does
network I/O while deciding, so the set is given inline (``jwks.Parse``), typically through a
policy variable. Claim values become JSON-like CEL values with every number a double, as in
Kyverno; list claims such as an array ``aud`` work with both overloads (Kyverno's string-key
overload fails on them).
"""

from __future__ import annotations

import functools
import json as _json
import time
from collections.abc import Mapping
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


def _token(claims: Mapping[str, Any], now: float | None = None) -> Any:
    now = time.time() if now is None else now
    valid = True
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if isinstance(exp, int | float) and not isinstance(exp, bool) and now >= exp:
        valid = False
    if isinstance(nbf, int | float) and not isinstance(nbf, bool) and now < nbf:
        valid = False
    token = Token(Valid=valid)
    # A Struct holds every number as a double, as Kyverno's claims do.
    token.Claims.update(claims)
    return token


def decode_with_secret(token: str, key: str) -> dict[str, Any]:
    try:
        claims = _pyjwt.decode(
            token,
            key.encode(),
            algorithms=_HMAC,
            options=_NO_TIME_CHECKS,  # type: ignore[arg-type]
        )
    except _pyjwt.PyJWTError as exc:
        raise ValueError(f"jwt.Decode: {exc}") from None
    return _token(claims)


def decode_with_keys(token: str, keys: Mapping[str, Any]) -> Any:
    keyset = _keyset(_json.dumps(keys, sort_keys=True, default=str))
    try:
        header = _pyjwt.get_unverified_header(token)
        kid = header.get("kid")
        candidates = [k for k in keyset.keys if kid is None or k.key_id == kid]
        if not candidates:
            raise _pyjwt.InvalidKeyError(f"no key in the set matches kid {kid!r}")
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
            return _token(claims)
        raise last or _pyjwt.InvalidSignatureError("no key verified the token")
    except _pyjwt.PyJWTError as exc:
        raise ValueError(f"jwt.Decode: {exc}") from None


def _has_alg(jwk: Any) -> bool:
    return "alg" in getattr(jwk, "_jwk_data", {})


@functools.lru_cache(maxsize=64)
def _keyset(canonical: str) -> Any:
    # Building key objects costs far more than verifying with them, and a policy passes the same
    # set on every request; the cache is a memo of a pure function, not shared state.
    try:
        keyset = _pyjwt.PyJWKSet.from_json(canonical)
    except _pyjwt.PyJWTError as exc:
        raise ValueError(f"jwks: {exc}") from None
    if any(k.key_type == "oct" for k in keyset.keys):
        raise ValueError("jwks: symmetric (oct) keys are not accepted in a key set")
    return keyset


def parse_keys(text: str) -> dict[str, Any]:
    try:
        data = _json.loads(text)
    except ValueError as exc:
        raise ValueError(f"jwks.Parse: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError('jwks.Parse: expected a JWK set, {"keys": [...]}')
    _keyset(_json.dumps(data, sort_keys=True, default=str))
    return data


def functions() -> list[cel.FunctionDecl]:
    t = cel.Type
    token = t(TOKEN_TYPE)
    keyset = t.Map(t.STRING, t.DYN)
    return [
        cel.FunctionDecl(
            "jwt.Decode",
            [
                cel.Overload(
                    "jwt_decode_string_key", token, [t.STRING, t.STRING], impl=decode_with_secret
                ),
                cel.Overload(
                    "jwt_decode_jwk_set", token, [t.STRING, keyset], impl=decode_with_keys
                ),
            ],
        ),
        cel.FunctionDecl(
            "jwks.Parse",
            [cel.Overload("jwks_parse_string", keyset, [t.STRING], impl=parse_keys)],
        ),
    ]
