"""jwt.Decode memoizes signature verification per (token, key), never the clock or a failure."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from authz_server.cel import CelEvaluationError
from authz_server.cel import jwt as jwt_lib

SECRET = "a-shared-secret-of-decent-length-32b"
OTHER = "another-secret-of-decent-length-32"


@pytest.fixture(autouse=True)
def _fresh_cache():
    jwt_lib.clear_cache()
    yield
    jwt_lib.clear_cache()


@pytest.fixture
def verifications(monkeypatch) -> list[str]:
    """Records every real signature verification."""
    calls: list[str] = []
    real = jwt_lib._pyjwt.decode

    def counting(token, *args, **kwargs):
        calls.append(token)
        return real(token, *args, **kwargs)

    monkeypatch.setattr(jwt_lib._pyjwt, "decode", counting)
    return calls


def _hs256(claims: dict, key: str = SECRET) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


def test_the_same_token_and_key_is_verified_once(verifications):
    token = _hs256({"sub": "a", "exp": int(time.time()) + 60})
    first = jwt_lib.decode_with_secret(token, SECRET)
    second = jwt_lib.decode_with_secret(token, SECRET)
    assert len(verifications) == 1
    assert first.Valid and second.Valid
    assert dict(second.Claims) == {"sub": "a", "exp": first.Claims["exp"]}


def test_validity_follows_the_clock_on_a_cached_token(monkeypatch):
    now = time.time()
    token = _hs256({"sub": "a", "exp": int(now) + 60, "nbf": int(now) - 60})
    assert jwt_lib.decode_with_secret(token, SECRET).Valid is True
    monkeypatch.setattr(jwt_lib.time, "time", lambda: now + 120)
    assert jwt_lib.decode_with_secret(token, SECRET).Valid is False
    monkeypatch.setattr(jwt_lib.time, "time", lambda: now - 3600)
    assert jwt_lib.decode_with_secret(token, SECRET).Valid is False
    monkeypatch.setattr(jwt_lib.time, "time", lambda: now)
    assert jwt_lib.decode_with_secret(token, SECRET).Valid is True


def test_a_failure_is_never_cached(verifications):
    forged = _hs256({"sub": "a"}, key=OTHER)
    for _ in range(2):
        with pytest.raises(ValueError, match=r"jwt\.Decode"):
            jwt_lib.decode_with_secret(forged, SECRET)
    assert len(verifications) == 2


def test_the_key_is_part_of_the_cache_key():
    token = _hs256({"sub": "a"})
    assert jwt_lib.decode_with_secret(token, SECRET).Valid
    with pytest.raises(ValueError, match=r"jwt\.Decode"):
        jwt_lib.decode_with_secret(token, OTHER)


def test_oversized_tokens_bypass_the_cache(verifications):
    token = _hs256({"sub": "a", "pad": "x" * jwt_lib.MAX_CACHED_TOKEN})
    jwt_lib.decode_with_secret(token, SECRET)
    jwt_lib.decode_with_secret(token, SECRET)
    assert len(verifications) == 2
    assert jwt_lib._verify_with_secret.cache_info().currsize == 0


def test_the_cache_is_bounded():
    assert jwt_lib._verify_with_secret.cache_info().maxsize == jwt_lib.CACHE_SIZE
    assert jwt_lib._verify_with_keys.cache_info().maxsize == jwt_lib.CACHE_SIZE


def test_cached_results_are_not_changed_by_evaluations(cel_eval):
    token = _hs256({"sub": "a", "tools": ["x"]})
    expression = f'jwt.Decode("{token}", "{SECRET}")'
    for _ in range(3):
        result = cel_eval(expression)
        assert (result.Valid, result.Claims["sub"], list(result.Claims["tools"])) == (
            True,
            "a",
            ["x"],
        )
        result.Claims["sub"] = "mutated by the caller"
    assert cel_eval(expression + ".Claims.sub") == "a"


def _es256() -> tuple[ec.EllipticCurvePrivateKey, dict]:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk["kid"] = "k1"
    return key, {"keys": [jwk]}


def test_key_set_verification_is_cached_per_set(verifications):
    key, keyset = _es256()
    _, other_set = _es256()
    token = jwt.encode({"sub": "svc"}, key, "ES256", headers={"kid": "k1"})
    assert jwt_lib.decode_with_keys(token, keyset).Valid
    assert jwt_lib.decode_with_keys(token, json.loads(json.dumps(keyset))).Valid
    assert len(verifications) == 1
    with pytest.raises(ValueError, match=r"jwt\.Decode"):
        jwt_lib.decode_with_keys(token, other_set)


def test_cel_error_for_a_bad_token_still_happens_after_a_good_one(cel_eval):
    good = _hs256({"sub": "a"})
    assert cel_eval(f'jwt.Decode("{good}", "{SECRET}").Valid')
    with pytest.raises(CelEvaluationError, match=r"jwt\.Decode"):
        cel_eval(f'jwt.Decode("{good[:-2]}xx", "{SECRET}").Valid')
