"""jwt.Decode: a time claim that is not a NumericDate makes the token invalid.

RFC 7519 §2 defines ``exp`` and ``nbf`` as JSON numbers. A token whose ``exp`` is the string
``"9999999999"``, a boolean, null, an object, or a number that is not finite (``NaN`` and
``Infinity`` are accepted by Python's JSON parser) has no expiry anyone can rely on: it must not
read as valid. Tokens are signed with real keys (an HMAC secret, an EC key in a JWK set) so the
signature verifies and only the claim decides.
"""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from authz_server.cel import jwt as jwt_lib

SECRET = "a-shared-secret-of-decent-length-32b"
NOT_NUMERIC_DATES = [
    "9999999999",
    "0",
    "soon",
    True,
    False,
    None,
    [9999999999],
    {"at": 9999999999},
    float("nan"),
    float("inf"),
]


@pytest.fixture(autouse=True)
def _fresh_cache():
    jwt_lib.clear_cache()
    yield
    jwt_lib.clear_cache()


def _ec_keyset() -> tuple[ec.EllipticCurvePrivateKey, dict]:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk["kid"] = "ec"
    return key, {"keys": [jwk]}


def _rsa_keyset() -> tuple[rsa.RSAPrivateKey, dict]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk["kid"] = "rsa"
    return key, {"keys": [jwk]}


EC_KEY, EC_SET = _ec_keyset()
RSA_KEY, RSA_SET = _rsa_keyset()


def _decode_all(claims: dict) -> list[bool]:
    """``Valid`` for the same claims signed three ways: HS256 secret, ES256 and RS256 key sets."""
    hs = jwt.encode(claims, SECRET, algorithm="HS256")
    es = jwt.encode(claims, EC_KEY, algorithm="ES256", headers={"kid": "ec"})
    rs = jwt.encode(claims, RSA_KEY, algorithm="RS256", headers={"kid": "rsa"})
    return [
        jwt_lib.decode_with_secret(hs, SECRET).Valid,
        jwt_lib.decode_with_keys(es, EC_SET).Valid,
        jwt_lib.decode_with_keys(rs, RSA_SET).Valid,
    ]


def test_numeric_time_claims_still_decide_validity():
    now = int(time.time())
    assert _decode_all({"sub": "a", "exp": now + 600, "nbf": now - 600}) == [True] * 3
    assert _decode_all({"sub": "a", "exp": float(now + 600)}) == [True] * 3
    assert _decode_all({"sub": "a", "exp": now - 10}) == [False] * 3
    assert _decode_all({"sub": "a"}) == [True] * 3


@pytest.mark.parametrize("value", NOT_NUMERIC_DATES, ids=repr)
def test_a_non_numeric_exp_makes_the_token_invalid(value):
    assert _decode_all({"sub": "a", "exp": value}) == [False] * 3


@pytest.mark.parametrize("value", NOT_NUMERIC_DATES, ids=repr)
def test_a_non_numeric_nbf_makes_the_token_invalid(value):
    assert _decode_all({"sub": "a", "nbf": value, "exp": int(time.time()) + 600}) == [False] * 3


def test_policies_see_the_token_as_invalid(cel_eval):
    token = jwt.encode({"sub": "a", "exp": "9999999999"}, SECRET, algorithm="HS256")
    assert cel_eval(f'jwt.Decode("{token}", "{SECRET}").Valid') is False
    assert cel_eval(f'jwt.Decode("{token}", "{SECRET}").Claims.sub') == "a"
