"""Properties: no malformed token, proof, certificate or header makes the verifier raise (reach
its last-resort handler) or verify, and whatever does verify satisfies every check."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from authz_server.identity import Identity, Method, Reason, Verifier
from authz_server.identity.spiffe import parse_spiffe_id
from authz_server.identity.urls import normalize_url
from tests.identity.helpers import (
    AUDIENCE,
    ISSUER,
    NOW,
    ath,
    compact,
    ec_key,
    proof,
    request,
    rsa_key,
    setup,
    token,
)

FAST = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
ISSUER_KEY = rsa_key("k1")
AGENT = ec_key("agent")
S = setup([ISSUER_KEY], mtls={"trustDomains": ["example.org"]})
BEARER = token(ISSUER_KEY)
BOUND = token(ISSUER_KEY, cnf={"jkt": AGENT.thumbprint()})
PROOF = proof(AGENT, BOUND)
# Single use is tested elsewhere; here hypothesis may replay an example's jti.
FRESH = Verifier(S.config, S.store, lambda key, ttl: True, clock=S.clock)

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
token_chars = st.sampled_from(B64URL + ".=+/ ,\t\u00e9\x00")


def no_crash(identity: Identity) -> Identity:
    assert isinstance(identity, Identity)
    assert identity.detail != "internal error"
    if not identity.authenticated:
        assert identity.error in set(Reason)
    return identity


@st.composite
def mutations(draw: st.DrawFn, text: str) -> str:
    kind = draw(st.sampled_from(["replace", "delete", "insert", "truncate", "swap"]))
    i = draw(st.integers(0, len(text) - 1))
    if kind == "replace":
        return text[:i] + draw(token_chars) + text[i + 1 :]
    if kind == "delete":
        return text[:i] + text[i + 1 :]
    if kind == "insert":
        return text[:i] + draw(token_chars) + text[i:]
    if kind == "truncate":
        return text[:i]
    j = draw(st.integers(0, len(text) - 1))
    chars = list(text)
    chars[i], chars[j] = chars[j], chars[i]
    return "".join(chars)


@FAST
@given(st.text(max_size=300), st.text(max_size=300) | st.none())
def test_arbitrary_headers_never_raise_or_verify(authorization: str, dpop: str | None) -> None:
    for value in (authorization, f"Bearer {authorization}", f"DPoP {authorization}"):
        assert not no_crash(S.verifier.verify(request(value, dpop))).authenticated


@FAST
@given(mutations(BEARER))
def test_a_mutated_token_never_verifies(mutated: str) -> None:
    assume(mutated.strip() != BEARER)  # surrounding whitespace is not part of the value
    assert not no_crash(S.verifier.verify(request(f"Bearer {mutated}"))).authenticated


@FAST
@given(mutations(PROOF))
def test_a_mutated_proof_never_verifies(mutated: str) -> None:
    assume(mutated.strip() != PROOF)
    identity = no_crash(S.verifier.verify(request(f"DPoP {BOUND}", mutated)))
    assert not identity.authenticated


@FAST
@given(mutations(BOUND))
def test_a_proof_never_verifies_for_a_mutated_token(mutated: str) -> None:
    assume(mutated.strip() != BOUND)
    fresh = proof(AGENT, BOUND)
    assert not no_crash(S.verifier.verify(request(f"DPoP {mutated}", fresh))).authenticated


def _holds_every_check(identity: Identity, header: dict[str, Any], claims: dict[str, Any]) -> None:
    assert header["typ"].lower() in ("at+jwt", "application/at+jwt")
    assert header["alg"] == "RS256" and header["kid"] == ISSUER_KEY.kid
    assert claims["iss"] == ISSUER
    aud = claims["aud"]
    assert AUDIENCE in ([aud] if isinstance(aud, str) else aud)
    assert claims["exp"] + 60 >= NOW and claims["iat"] <= NOW + 60
    assert claims.get("nbf", 0) <= NOW + 60
    assert isinstance(claims["sub"], str) and isinstance(claims["client_id"], str)
    assert "cnf" not in claims or "jkt" not in claims["cnf"]
    assert identity.subject == claims["sub"]


DELETE = object()
changes = json_values | st.just(DELETE)


def perturb(base: dict[str, Any], edits: dict[str, Any]) -> dict[str, Any]:
    result = dict(base)
    for name, value in edits.items():
        if value is DELETE:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def edits(names: list[str], special: dict[str, Any]) -> Any:
    """Up to three fields replaced by an arbitrary JSON value, a telling value, or removed."""
    values = {n: changes | st.sampled_from(special.get(n, [DELETE])) for n in names}
    return st.lists(st.sampled_from(names), max_size=3, unique=True).flatmap(
        lambda chosen: st.fixed_dictionaries({n: values[n] for n in chosen})
    )


TOKEN_HEADER = {"typ": "at+jwt", "alg": "RS256", "kid": "k1"}
TOKEN_CLAIMS = {
    "iss": ISSUER,
    "sub": "u",
    "aud": AUDIENCE,
    "client_id": "c",
    "iat": int(NOW),
    "exp": int(NOW) + 60,
    "jti": "j",
    "scope": "a b",
}
HEADER_SPECIAL = {
    "typ": ["JWT", "dpop+jwt", "AT+JWT", "application/at+jwt"],
    "alg": ["PS256", "none", "HS256", "ES256"],
    "kid": ["k2", ""],
}
CLAIM_SPECIAL = {
    "iss": [ISSUER + "/"],
    "aud": [[AUDIENCE, "x"], [], ["x"]],
    "exp": [int(NOW) - 61, int(NOW) - 59, True, "1"],
    "iat": [int(NOW) + 61, 1.5],
    "nbf": [int(NOW) + 61, int(NOW) + 59],
    "cnf": [{"jkt": AGENT.thumbprint()}, {"x5t#S256": "A"}],
    "act": [{"sub": "bot"}, {"sub": {"sub": "x"}}],
    "scp": [["a"], "a b"],
}


def _holds_every_check(identity: Identity, header: dict[str, Any], claims: dict[str, Any]) -> None:
    assert header["typ"].lower() in ("at+jwt", "application/at+jwt")
    assert header["alg"] == "RS256" and header["kid"] == ISSUER_KEY.kid
    assert "crit" not in header
    assert claims["iss"] == ISSUER
    aud = claims["aud"]
    assert AUDIENCE in ([aud] if isinstance(aud, str) else aud)
    for name in ("exp", "iat"):
        assert type(claims[name]) in (int, float)
    assert claims["exp"] + 60 >= NOW and claims["iat"] <= NOW + 60
    assert claims.get("nbf", 0) <= NOW + 60
    for name in ("sub", "client_id", "jti"):
        assert isinstance(claims[name], str) and claims[name]
    assert "jkt" not in claims.get("cnf", {}) and "x5t#S256" not in claims.get("cnf", {})
    assert identity.subject == claims["sub"] and identity.issuer == ISSUER


@FAST
@given(
    edits([*TOKEN_HEADER, "crit", "jku"], HEADER_SPECIAL),
    edits([*TOKEN_CLAIMS, "nbf", "cnf", "act", "scp"], CLAIM_SPECIAL),
)
def test_signed_tokens_verify_only_when_every_check_holds(
    header_edits: dict[str, Any], claim_edits: dict[str, Any]
) -> None:
    header = perturb(TOKEN_HEADER, header_edits)
    claims = perturb(TOKEN_CLAIMS, claim_edits)
    text = compact(json.dumps(header), json.dumps(claims), ISSUER_KEY, alg="RS256")
    identity = no_crash(S.verifier.verify(request(f"Bearer {text}")))
    event(f"authenticated={identity.authenticated}")
    if identity.authenticated:
        _holds_every_check(identity, header, claims)
    elif not header_edits and not claim_edits:
        raise AssertionError(identity.detail)


PROOF_SPECIAL = {
    "typ": ["DPoP+JWT", "jwt"],
    "alg": ["RS256", "none", "ES384"],
    "jwk": [AGENT.public_jwk(), ec_key("other").public_jwk()],
    "htm": ["GET", "post"],
    "htu": ["https://MCP.example.com:443/mcp?q", "https://mcp.example.com/mcp/"],
    "iat": [int(NOW) - 91, int(NOW) + 31, int(NOW) - 89],
    "ath": [ath(BEARER)],
}


@FAST
@given(
    edits(["typ", "alg", "jwk"], PROOF_SPECIAL),
    edits(["jti", "htm", "htu", "iat", "ath", "nonce"], PROOF_SPECIAL),
    st.uuids(),
)
def test_signed_proofs_verify_only_when_every_check_holds(
    header_edits: dict[str, Any], claim_edits: dict[str, Any], jti: Any
) -> None:
    header = perturb({"typ": "dpop+jwt", "alg": "ES256", "jwk": AGENT.public_jwk()}, header_edits)
    base = {
        "jti": str(jti),
        "htm": "POST",
        "htu": "https://mcp.example.com/mcp",
        "iat": int(NOW),
        "ath": ath(BOUND),
    }
    claims = perturb(base, claim_edits)
    text = compact(json.dumps(header), json.dumps(claims), AGENT, alg="ES256")
    identity = no_crash(FRESH.verify(request(f"DPoP {BOUND}", text)))
    event(f"authenticated={identity.authenticated}")
    if identity.authenticated:
        assert identity.method is Method.DPOP
        assert header["typ"].lower() == "dpop+jwt" and header["alg"] == "ES256"
        assert header["jwk"] == AGENT.public_jwk()
        assert claims["htm"] == "POST"
        assert normalize_url(claims["htu"]) == "https://mcp.example.com/mcp"
        assert type(claims["iat"]) in (int, float) and NOW - 90 <= claims["iat"] <= NOW + 30
        assert claims["ath"] == ath(BOUND)
        assert isinstance(claims["jti"], str) and 0 < len(claims["jti"]) <= 256
    elif not header_edits and not claim_edits:
        raise AssertionError(identity.detail)


@FAST
@given(st.text(max_size=400), st.text(max_size=100))
def test_arbitrary_certificates_and_principals_never_raise(pem: str, principal: str) -> None:
    for text in (pem, f"-----BEGIN CERTIFICATE-----\n{pem}\n-----END CERTIFICATE-----\n"):
        identity = no_crash(S.verifier.verify(request(certificate=text, principal=principal)))
        assert not identity.authenticated or identity.spiffe_id == principal


@FAST
@given(st.text(max_size=100))
def test_url_normalisation_is_total_and_idempotent(text: str) -> None:
    for url in (text, "https://mcp.example.com/" + text, "HTTP://" + text):
        normalized = normalize_url(url)
        if normalized is not None:
            assert normalize_url(normalized) == normalized


@FAST
@given(st.text(max_size=100))
def test_spiffe_parsing_is_total(text: str) -> None:
    for candidate in (text, "spiffe://example.org/" + text, "spiffe://" + text):
        parsed = parse_spiffe_id(candidate)
        if parsed is not None:
            assert str(parsed).lower() == candidate.lower()
