"""Access tokens: one test per check of identity.md's JWT list (J1-J10) and per reason code,
through the verifier, with real RSA, EC P-256 and Ed25519 keys."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from authz_server.identity import Identity, Method, Reason
from tests.identity.helpers import (
    AUDIENCE,
    ISSUER,
    NOW,
    JwksServer,
    b64,
    claims,
    compact,
    ec_key,
    ed_key,
    request,
    rsa_key,
    setup,
    setup_from,
    spec,
    token,
)


def bearer(s: Any, text: str) -> Identity:
    return s.verifier.verify(request(f"Bearer {text}"))


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {"rsa": rsa_key(), "ec": ec_key(), "ed": ed_key()}


@pytest.fixture
def s(keys: dict[str, Any]) -> Any:
    return setup(list(keys.values()))


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed"])
def test_a_valid_token_of_each_key_type_verifies(s: Any, keys: dict[str, Any], kind: str) -> None:
    identity = bearer(s, token(keys[kind]))
    assert identity.authenticated and identity.error == ""
    assert identity.method is Method.BEARER
    assert (identity.issuer, identity.subject, identity.client_id) == (ISSUER, "user-1", "agent-7")
    assert identity.audiences == (AUDIENCE,)
    assert identity.scopes == ("tools:read", "tools:call")
    assert identity.claims["sub"] == "user-1"


# J1: format


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t + ".",
        lambda t: t + ".e30",
        lambda t: t.rsplit(".", 1)[0],
        lambda t: t.replace("-", "+", 1) if "-" in t else t[:5] + "+" + t[6:],
        lambda t: t + "=",
        lambda t: t[:10] + " " + t[10:],
        lambda t: t[:10] + "é" + t[11:],
        lambda t: ".".join(t.split(".")[:2]) + "..",
        lambda t: "." + t,
    ],
    ids=[
        "trailing-dot",
        "four-parts",
        "two-parts",
        "plus",
        "padding",
        "space",
        "non-ascii",
        "empty-signature",
        "empty-header",
    ],
)
def test_j1_anything_but_three_base64url_segments_is_malformed(
    s: Any, keys: dict[str, Any], mangle: Any
) -> None:
    assert bearer(s, mangle(token(keys["ec"]))).error == Reason.MALFORMED


def test_j1_json_inside_must_be_an_object_without_duplicate_members(
    s: Any, keys: dict[str, Any]
) -> None:
    key = keys["ec"]
    header = json.dumps({"typ": "at+jwt", "alg": "ES256", "kid": key.kid})
    body = json.dumps(claims())
    duplicated = body[:-1] + ', "sub": "admin"}'
    assert bearer(s, compact(header, duplicated, key)).error == Reason.MALFORMED
    assert bearer(s, compact(header, "[1, 2]", key)).error == Reason.MALFORMED
    nan = body.replace('"exp": ', '"exp": NaN, "x": ')
    assert bearer(s, compact(header, nan, key)).error == Reason.MALFORMED


def test_j1_a_non_canonical_base64url_signature_is_malformed(s: Any, keys: dict[str, Any]) -> None:
    # An RSA-2048 signature's last base64url character has 4 spare bits: setting one gives a
    # different token with the same signature bytes.
    text = token(keys["rsa"])
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(text[-1])
    altered = text[:-1] + alphabet[last | 1]
    assert altered != text
    assert bearer(s, text).authenticated
    assert bearer(s, altered).error == Reason.MALFORMED


def test_critical_header_extensions_are_refused(s: Any, keys: dict[str, Any]) -> None:
    text = token(keys["ec"], header={"crit": ["exp"], "exp": 1})
    assert bearer(s, text).error == Reason.MALFORMED


# J2 and J10: typ


@pytest.mark.parametrize("typ", [None, "JWT", "jwt", "dpop+jwt", "JOSE", "at+jwt+x", 1])
def test_j2_typ_other_than_at_jwt_is_refused(s: Any, keys: dict[str, Any], typ: Any) -> None:
    assert bearer(s, token(keys["ec"], header={"typ": typ})).error == Reason.MALFORMED


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt"])
def test_j2_at_jwt_is_accepted_in_both_spellings(s: Any, keys: dict[str, Any], typ: str) -> None:
    assert bearer(s, token(keys["ec"], header={"typ": typ})).authenticated


def test_j2_plain_jwt_only_where_the_issuer_allows_it(keys: dict[str, Any]) -> None:
    plain = setup(list(keys.values()), issuer={"allowPlainJWT": True})
    text = token(keys["ec"], header={"typ": "JWT"})
    assert bearer(plain, text).authenticated
    assert bearer(setup(list(keys.values())), text).error == Reason.MALFORMED
    # still never an untyped token, nor another kind
    assert bearer(plain, token(keys["ec"], header={"typ": None})).error == Reason.MALFORMED
    assert bearer(plain, token(keys["ec"], header={"typ": "dpop+jwt"})).error == Reason.MALFORMED


# J3: alg


def test_j3_alg_none_is_refused(s: Any, keys: dict[str, Any]) -> None:
    header = {"typ": "at+jwt", "alg": "none", "kid": keys["ec"].kid}
    unsigned = compact(header, claims(), None).rsplit(".", 1)[0] + ".AA"
    assert bearer(s, unsigned).error == Reason.ALGORITHM_NOT_ALLOWED


def test_j3_hmac_with_the_public_key_as_secret_is_refused(s: Any, keys: dict[str, Any]) -> None:
    key = keys["rsa"]
    secret = key.public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    header = {"typ": "at+jwt", "alg": "HS256", "kid": key.kid}
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims()).encode())}"
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    assert bearer(s, f"{signing_input}.{b64(mac)}").error == Reason.ALGORITHM_NOT_ALLOWED


def test_j3_alg_outside_the_issuers_allow_list_is_refused(keys: dict[str, Any]) -> None:
    narrow = setup(list(keys.values()), issuer={"algorithms": ["ES256"]})
    assert bearer(narrow, token(keys["ec"])).authenticated
    assert bearer(narrow, token(keys["rsa"])).error == Reason.ALGORITHM_NOT_ALLOWED


def test_j3_alg_must_be_the_keys_own(keys: dict[str, Any]) -> None:
    # The JWK says RS256; a PS256 signature by the same key is refused although PS256 is allowed.
    s = setup([keys["rsa"]])
    assert bearer(s, token(keys["rsa"], header={"alg": "PS256"})).error == (
        Reason.ALGORITHM_NOT_ALLOWED
    )


def test_j3_without_alg_in_the_jwk_the_key_type_decides(keys: dict[str, Any]) -> None:
    rsa, ec = keys["rsa"], keys["ec"]
    raw = spec([])
    raw["issuers"][0]["jwks"] = {
        "inline": {"keys": [rsa.jwk(with_alg=False), ec.jwk(with_alg=False)]}
    }
    raw["issuers"][0]["algorithms"] = ["RS256", "PS256", "ES256", "ES384"]
    s = setup_from(raw)
    assert bearer(s, token(rsa, header={"alg": "PS256"})).authenticated
    # an RSA kid with an EC algorithm, and a P-256 key with ES384
    assert bearer(s, token(ec, header={"kid": rsa.kid})).error == Reason.ALGORITHM_NOT_ALLOWED
    assert bearer(s, token(ec, header={"alg": "ES384"})).error == Reason.ALGORITHM_NOT_ALLOWED


# J4: kid, jku, x5u, jwk


@pytest.mark.parametrize("kid", [None, "", 7, ["ec-1"], {"k": 1}, "k" * 257])
def test_j4_a_missing_or_unusable_kid_is_an_unknown_key(
    s: Any, keys: dict[str, Any], kid: Any
) -> None:
    assert bearer(s, token(keys["ec"], header={"kid": kid})).error == Reason.UNKNOWN_KEY


def test_j4_keys_named_by_the_token_are_never_fetched_or_used(s: Any) -> None:
    attacker = ec_key("attacker")
    evil = JwksServer([attacker])
    try:
        via_jku = token(attacker, header={"jku": evil.url, "x5u": evil.url})
        via_jwk = token(attacker, header={"jwk": attacker.public_jwk()})
        assert bearer(s, via_jku).error == Reason.UNKNOWN_KEY
        assert bearer(s, via_jwk).error == Reason.UNKNOWN_KEY
        assert evil.hits == 0
    finally:
        evil.close()


# J5: iss


@pytest.mark.parametrize(
    "iss", ["https://evil.example.com", ISSUER + "/", ISSUER.upper(), " " + ISSUER]
)
def test_j5_iss_must_equal_a_configured_issuer_exactly(
    s: Any, keys: dict[str, Any], iss: str
) -> None:
    assert bearer(s, token(keys["ec"], iss=iss)).error == Reason.WRONG_ISSUER


def test_j5_a_non_string_or_missing_iss_is_malformed(s: Any, keys: dict[str, Any]) -> None:
    assert bearer(s, token(keys["ec"], iss=None)).error == Reason.MALFORMED
    assert bearer(s, token(keys["ec"], iss=[ISSUER])).error == Reason.MALFORMED


def test_j5_keys_of_another_issuer_are_not_used(keys: dict[str, Any]) -> None:
    other = ec_key("other-issuers-key")
    raw = spec([keys["ec"]])
    raw["issuers"].append(
        {
            "issuer": "https://other.example.com",
            "audiences": [AUDIENCE],
            "jwks": {"inline": {"keys": [other.jwk()]}},
        }
    )
    s = setup_from(raw)
    # signed by the other issuer's key, claiming to come from ours
    assert bearer(s, token(other)).error == Reason.UNKNOWN_KEY
    assert bearer(s, token(other, iss="https://other.example.com")).authenticated


# J6: signature


def test_j6_a_tampered_payload_fails_the_signature(s: Any, keys: dict[str, Any]) -> None:
    for key in keys.values():
        header_b64, _, signature = token(key).split(".")
        forged = b64(json.dumps(claims(sub="admin")).encode())
        assert bearer(s, f"{header_b64}.{forged}.{signature}").error == Reason.BAD_SIGNATURE


def test_j6_a_signature_by_another_key_with_the_same_kid_fails(
    s: Any, keys: dict[str, Any]
) -> None:
    impostor = ec_key(keys["ec"].kid)
    assert bearer(s, token(impostor)).error == Reason.BAD_SIGNATURE


def test_j6_a_signature_of_the_wrong_length_fails(s: Any, keys: dict[str, Any]) -> None:
    signing_input = token(keys["ec"]).rsplit(".", 1)[0]
    assert bearer(s, signing_input + "." + b64(b"\1" * 63)).error == Reason.BAD_SIGNATURE


# J7: aud


def test_j7_aud_must_contain_a_configured_audience(s: Any, keys: dict[str, Any]) -> None:
    key = keys["ec"]
    assert bearer(s, token(key, aud="https://other.example.com/mcp")).error == (
        Reason.WRONG_AUDIENCE
    )
    assert bearer(s, token(key, aud=None)).error == Reason.WRONG_AUDIENCE
    assert bearer(s, token(key, aud=[])).error == Reason.WRONG_AUDIENCE
    both = bearer(s, token(key, aud=["https://other.example.com", AUDIENCE]))
    assert both.authenticated and both.audiences == ("https://other.example.com", AUDIENCE)
    assert bearer(s, token(key, aud=[AUDIENCE, 7])).error == Reason.MALFORMED


# J8: exp, nbf, iat with the configured skew (60 s)


def test_j8_exp_with_skew(s: Any, keys: dict[str, Any]) -> None:
    key = keys["ec"]
    assert bearer(s, token(key, exp=NOW - 59)).authenticated
    assert bearer(s, token(key, exp=NOW - 61)).error == Reason.EXPIRED


def test_j8_nbf_with_skew(s: Any, keys: dict[str, Any]) -> None:
    key = keys["ec"]
    assert bearer(s, token(key, nbf=NOW + 59)).authenticated
    assert bearer(s, token(key, nbf=NOW + 61)).error == Reason.EXPIRED


def test_j8_iat_in_the_future_with_skew(s: Any, keys: dict[str, Any]) -> None:
    key = keys["ec"]
    assert bearer(s, token(key, iat=NOW + 59)).authenticated
    assert bearer(s, token(key, iat=NOW + 61)).error == Reason.EXPIRED


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        (claim, value)
        for claim in ("exp", "nbf", "iat")
        for value in ("1800000300", True, None, [1], {"t": 1}, 1e400)
        if not (claim == "nbf" and value is None)  # nbf is optional
    ],
)
def test_j8_a_non_numeric_time_claim_is_malformed(
    s: Any, keys: dict[str, Any], claim: str, value: Any
) -> None:
    assert bearer(s, token(keys["ec"], **{claim: value})).error == Reason.MALFORMED


def test_j8_a_cached_token_expires_with_the_clock(s: Any, keys: dict[str, Any]) -> None:
    text = token(keys["ec"], exp=NOW + 100)
    assert bearer(s, text).authenticated
    s.clock.advance(161)
    assert bearer(s, text).error == Reason.EXPIRED


def test_j8_the_skew_is_per_issuer(keys: dict[str, Any]) -> None:
    strict = setup(list(keys.values()), issuer={"clockSkew": "0s"})
    assert bearer(strict, token(keys["ec"], exp=NOW - 1)).error == Reason.EXPIRED


# J9: the claims RFC 9068 requires


@pytest.mark.parametrize("claim", ["sub", "client_id", "iat", "jti"])
def test_j9_rfc9068_claims_are_required(s: Any, keys: dict[str, Any], claim: str) -> None:
    assert bearer(s, token(keys["ec"], **{claim: None})).error == Reason.MALFORMED


def test_j9_plain_jwt_tokens_may_name_the_client_in_azp(keys: dict[str, Any]) -> None:
    plain = setup(list(keys.values()), issuer={"allowPlainJWT": True})
    text = token(keys["ec"], header={"typ": "JWT"}, client_id=None, azp="spa", jti=None)
    identity = bearer(plain, text)
    assert identity.authenticated and identity.client_id == "spa"
    assert bearer(plain, token(keys["ec"], header={"typ": "JWT"}, sub=None)).error == (
        Reason.MALFORMED
    )


# Claims exposed to policies


def test_scp_and_act(s: Any, keys: dict[str, Any]) -> None:
    key = keys["ec"]
    assert bearer(s, token(key, scope=None, scp=["a", "b"])).scopes == ("a", "b")
    assert bearer(s, token(key, scope=None, scp="a b")).scopes == ("a", "b")
    assert bearer(s, token(key, scope=None)).scopes == ()
    assert bearer(s, token(key, scope="  a   b ")).scopes == ("a", "b")
    assert bearer(s, token(key, scope=["a"])).error == Reason.MALFORMED
    nested = {"sub": "agent-b", "act": {"sub": "agent-a"}}
    assert bearer(s, token(key, act=nested)).actor == "agent-b"
    assert bearer(s, token(key, act="agent-b")).error == Reason.MALFORMED
    assert bearer(s, token(key, act={"sub": 5})).error == Reason.MALFORMED


@pytest.mark.parametrize("claim", ["nbf", "cnf", "act", "scope", "scp", "client_id", "sub"])
def test_a_claim_present_as_null_is_malformed(s: Any, keys: dict[str, Any], claim: str) -> None:
    key = keys["ec"]
    header = {"typ": "at+jwt", "alg": "ES256", "kid": key.kid}
    body = json.dumps({**claims(), claim: None})
    assert bearer(s, compact(header, body, key)).error == Reason.MALFORMED


def test_cnf_members_must_be_strings(s: Any, keys: dict[str, Any]) -> None:
    assert bearer(s, token(keys["ec"], cnf="x")).error == Reason.MALFORMED
    assert bearer(s, token(keys["ec"], cnf={"jkt": ""})).error == Reason.MALFORMED
    assert bearer(s, token(keys["ec"], cnf={"x5t#S256": 1})).error == Reason.MALFORMED


def test_claims_are_frozen(s: Any, keys: dict[str, Any]) -> None:
    identity = bearer(s, token(keys["ec"], groups=["a"], extra={"k": [1, {"z": 2}]}))
    assert identity.claims["groups"] == ("a",)
    with pytest.raises(TypeError):
        identity.claims["sub"] = "admin"  # type: ignore[index]
    with pytest.raises(TypeError):
        identity.claims["extra"]["k"][1]["z"] = 3  # type: ignore[index]


def test_the_rfc7638_thumbprint_example() -> None:
    from authz_server.identity.keys import thumbprint

    # RFC 7638 §3.1
    jwk = {
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tS"
        "oc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65Y"
        "GjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdk"
        "t-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDK"
        "gw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_base64_helper_matches_the_standard_library() -> None:
    assert b64(b"\xff\xfe") == base64.urlsafe_b64encode(b"\xff\xfe").decode().rstrip("=")
