"""jwt.Decode / jwks.Parse and json.Unmarshal (kyverno-semantics §2.3, §2.4)."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from authz_server.cel import CelEvaluationError

SECRET = "a-shared-secret-of-decent-length-32b"


def _hs256(claims: dict, key: str = SECRET) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


def _decode(cel_eval, token: str) -> dict:
    claims = cel_eval(f'jwt.Decode("{token}", "{SECRET}").Claims')
    valid = cel_eval(f'jwt.Decode("{token}", "{SECRET}").Valid')
    return {"Claims": claims, "Valid": valid}


def test_token_is_an_object_type_that_can_be_null(cel_eval):
    token = _hs256({"sub": "a"})
    assert cel_eval(f'true ? jwt.Decode("{token}", "{SECRET}") : null').Valid is True


def test_valid_token_gives_claims_with_numbers_as_doubles(cel_eval):
    now = int(time.time())
    result = _decode(cel_eval, _hs256({"sub": "agent-7", "exp": now + 60, "n": 3}))
    assert result["Valid"] is True
    assert result["Claims"]["sub"] == "agent-7"
    assert result["Claims"]["exp"] == float(now + 60)
    assert isinstance(result["Claims"]["n"], float)


def test_expired_token_is_decoded_but_not_valid(cel_eval):
    result = _decode(cel_eval, _hs256({"sub": "a", "exp": int(time.time()) - 10}))
    assert result == {"Claims": result["Claims"], "Valid": False}
    assert result["Claims"]["sub"] == "a"


def test_not_yet_valid_token_is_decoded_but_not_valid(cel_eval):
    result = _decode(cel_eval, _hs256({"sub": "a", "nbf": int(time.time()) + 3600}))
    assert result["Valid"] is False


def test_bad_signature_is_an_evaluation_error(cel_eval):
    with pytest.raises(CelEvaluationError, match=r"jwt\.Decode"):
        _decode(cel_eval, _hs256({"sub": "a"}, key="another-secret-of-decent-length-32"))


def test_malformed_token_is_an_evaluation_error(cel_eval):
    with pytest.raises(CelEvaluationError, match=r"jwt\.Decode"):
        _decode(cel_eval, "not.a.token")


def test_policy_reads_fields_with_kyverno_names(cel_eval):
    token = _hs256({"tools": ["search", "read"], "exp": int(time.time()) + 60})
    assert cel_eval(
        f'cel.bind(t, jwt.Decode("{token}", "{SECRET}"), t.Valid && "read" in t.Claims.tools)'
    )


def _es256_keyset() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    jwk["kid"] = "k1"
    return key, json.dumps({"keys": [jwk]})


def test_decode_with_a_jwk_set(cel_eval):
    key, keyset = _es256_keyset()
    token = jwt.encode({"sub": "svc", "aud": ["a", "b"]}, key, "ES256", headers={"kid": "k1"})
    result = cel_eval(f"jwt.Decode({json.dumps(token)}, jwks.Parse({json.dumps(keyset)}))")
    assert result.Valid is True
    assert list(result.Claims["aud"]) == ["a", "b"]


def test_jwk_set_rejects_a_token_signed_by_another_key(cel_eval):
    _, keyset = _es256_keyset()
    other, _ = _es256_keyset()
    token = jwt.encode({"sub": "svc"}, other, "ES256", headers={"kid": "k1"})
    with pytest.raises(CelEvaluationError, match=r"jwt\.Decode"):
        cel_eval(f"jwt.Decode({json.dumps(token)}, jwks.Parse({json.dumps(keyset)}))")


def test_jwks_parse_rejects_what_is_not_a_key_set(cel_eval):
    with pytest.raises(CelEvaluationError, match="jwks"):
        cel_eval('jwks.Parse("{}")')


def test_json_unmarshal(cel_eval):
    assert cel_eval('json.Unmarshal("{\\"a\\": [1, {\\"b\\": true}]}")') == {
        "a": [1.0, {"b": True}]
    }
    assert cel_eval('json.Unmarshal("{\\"n\\": 1}").n == 1')


def test_json_unmarshal_invalid_is_an_error(cel_eval):
    with pytest.raises(CelEvaluationError, match=r"json\.Unmarshal"):
        cel_eval('json.Unmarshal("{")')
