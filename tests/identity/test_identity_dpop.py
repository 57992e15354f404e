"""DPoP (RFC 9449): one test per item of the §4.3 check list, the scheme rules and single use."""

from __future__ import annotations

from typing import Any

import pytest

from authz_server.identity import Identity, Method, Reason, Verifier
from tests.identity.helpers import (
    NOW,
    ORIGIN,
    Checked,
    MemoryClaims,
    SigningKey,
    ath,
    compact,
    count_signatures,
    ec_key,
    ed_key,
    proof,
    request,
    rsa_key,
    setup,
    token,
)


@pytest.fixture(scope="module")
def issuer_key() -> SigningKey:
    return rsa_key()


@pytest.fixture(scope="module")
def agent() -> SigningKey:
    return ec_key("agent")


@pytest.fixture
def s(issuer_key: SigningKey) -> Any:
    return setup([issuer_key])


def bound(issuer_key: SigningKey, agent: SigningKey, **claims: Any) -> str:
    return token(issuer_key, cnf={"jkt": agent.thumbprint()}, **claims)


def dpop(s: Any, access_token: str, proof_text: str | None, **kwargs: Any) -> Identity:
    return s.verifier.verify(request(f"DPoP {access_token}", proof_text, **kwargs))


@pytest.mark.parametrize("make", [ec_key, ed_key, rsa_key], ids=["ES256", "EdDSA", "RS256"])
def test_a_valid_proof_of_each_key_type(s: Any, issuer_key: SigningKey, make: Any) -> None:
    agent = make("agent")
    access = bound(issuer_key, agent)
    identity = dpop(s, access, proof(agent, access))
    assert identity.authenticated, identity.detail
    assert identity.method is Method.DPOP
    assert identity.key_thumbprint == agent.thumbprint()
    assert len(s.claims.calls) == 1


# 1. at most one DPoP header


def test_1_two_dpop_headers_are_refused(s: Any, issuer_key: SigningKey, agent: SigningKey) -> None:
    access = bound(issuer_key, agent)
    joined = proof(agent, access) + "," + proof(agent, access)
    assert dpop(s, access, joined).error == Reason.DPOP_INVALID
    assert s.claims.calls == []


# 2. a single well-formed JWT


@pytest.mark.parametrize("text", ["x", "a.b", "a.b.c.d", "e30.e30.", "e30.e30.AA AA"])
def test_2_a_proof_that_is_not_a_compact_jwt_is_refused(
    s: Any, issuer_key: SigningKey, agent: SigningKey, text: str
) -> None:
    assert dpop(s, bound(issuer_key, agent), text).error == Reason.DPOP_INVALID


def test_2_an_oversized_proof_is_refused(s: Any, issuer_key: SigningKey, agent: SigningKey) -> None:
    access = bound(issuer_key, agent)
    big = proof(agent, access, padding="x" * 4000)
    assert dpop(s, access, big).error == Reason.DPOP_INVALID


# 3. every required claim


@pytest.mark.parametrize("claim", ["jti", "htm", "htu", "iat", "ath"])
def test_3_every_required_claim_must_be_present(
    s: Any, issuer_key: SigningKey, agent: SigningKey, claim: str
) -> None:
    access = bound(issuer_key, agent)
    assert dpop(s, access, proof(agent, access, **{claim: None})).error == Reason.DPOP_INVALID


def test_3_an_oversized_jti_is_refused(s: Any, issuer_key: SigningKey, agent: SigningKey) -> None:
    access = bound(issuer_key, agent)
    assert dpop(s, access, proof(agent, access, jti="j" * 257)).error == Reason.DPOP_INVALID
    assert dpop(s, access, proof(agent, access, jti="j" * 256)).authenticated


# 4. typ


@pytest.mark.parametrize("typ", [None, "JWT", "at+jwt", "dpop"])
def test_4_typ_must_be_dpop_jwt(
    s: Any, issuer_key: SigningKey, agent: SigningKey, typ: str | None
) -> None:
    access = bound(issuer_key, agent)
    assert dpop(s, access, proof(agent, access, header={"typ": typ})).error == (Reason.DPOP_INVALID)


# 5. alg: asymmetric, supported, fitting the key


@pytest.mark.parametrize("alg", ["none", "HS256", "ES384", "RS256", "ES256K"])
def test_5_alg_must_be_asymmetric_and_fit_the_key(
    s: Any, issuer_key: SigningKey, agent: SigningKey, alg: str
) -> None:
    access = bound(issuer_key, agent)
    assert dpop(s, access, proof(agent, access, header={"alg": alg})).error == Reason.DPOP_INVALID


def test_5_a_real_es384_signature_by_a_p256_key_is_refused(
    s: Any, issuer_key: SigningKey, agent: SigningKey
) -> None:
    # ECDSA with SHA-384 on P-256 verifies cryptographically; RFC 7518 binds ES384 to P-384.
    access = bound(issuer_key, agent)
    header = {"typ": "dpop+jwt", "alg": "ES384", "jwk": agent.public_jwk()}
    body = {"jti": "j", "htm": "POST", "htu": f"{ORIGIN}/mcp", "iat": int(NOW), "ath": ath(access)}
    assert dpop(s, access, compact(header, body, agent, alg="ES384")).error == Reason.DPOP_INVALID


# 6. signature with the jwk's key


def test_6_the_signature_must_verify_with_the_jwk(
    s: Any, issuer_key: SigningKey, agent: SigningKey
) -> None:
    access = bound(issuer_key, agent)
    thief = ec_key("thief")
    # the thief signs, but names the agent's public key (whose thumbprint the token binds)
    forged = compact(
        {"typ": "dpop+jwt", "alg": "ES256", "jwk": agent.public_jwk()},
        {"jti": "j1", "htm": "POST", "htu": f"{ORIGIN}/mcp", "iat": int(NOW), "ath": ath(access)},
        thief,
    )
    assert dpop(s, access, forged).error == Reason.DPOP_INVALID
    assert s.claims.calls == []


def test_6_a_proof_without_a_usable_jwk_is_refused(
    s: Any, issuer_key: SigningKey, agent: SigningKey
) -> None:
    access = bound(issuer_key, agent)
    for jwk in (None, "key", {"kty": "EC", "crv": "P-256"}, {"kty": "oct", "k": "AAAA"}):
        assert dpop(s, access, proof(agent, access, header={"jwk": jwk})).error == (
            Reason.DPOP_INVALID
        )


# 7. no private key material


def test_7_a_jwk_with_private_members_is_refused(
    s: Any, issuer_key: SigningKey, agent: SigningKey
) -> None:
    from jwt.algorithms import ECAlgorithm

    access = bound(issuer_key, agent)
    private = ECAlgorithm.to_jwk(agent.private, as_dict=True)
    assert "d" in private
    assert dpop(s, access, proof(agent, access, header={"jwk": private})).error == (
        Reason.DPOP_INVALID
    )


# 8. htm


@pytest.mark.parametrize("htm", ["GET", "post", "POST "])
def test_8_htm_must_be_the_request_method(
    s: Any, issuer_key: SigningKey, agent: SigningKey, htm: str
) -> None:
    access = bound(issuer_key, agent)
    assert dpop(s, access, proof(agent, access, htm=htm)).error == Reason.DPOP_INVALID


# 9. htu


@pytest.mark.parametrize(
    "htu",
    [
        "https://other.example.com/mcp",
        "https://mcp.example.com/other",
        "http://mcp.example.com/mcp",
        "https://mcp.example.com:8443/mcp",
        "https://mcp.example.com/MCP",
        "https://mcp.example.com/mcp/",
        "mcp.example.com/mcp",
        "/mcp",
    ],
)
def test_9_htu_must_be_the_request_url(
    s: Any, issuer_key: SigningKey, agent: SigningKey, htu: str
) -> None:
    access = bound(issuer_key, agent)
    assert dpop(s, access, proof(agent, access, url=htu)).error == Reason.DPOP_INVALID


@pytest.mark.parametrize(
    "htu",
    [
        "https://mcp.example.com/mcp?session=1",
        "https://mcp.example.com/mcp#frag",
        "HTTPS://MCP.EXAMPLE.COM/mcp",
        "https://mcp.example.com:443/mcp",
        "https://mcp.example.com/%6Dcp",
        "https://mcp.example.com/a/../mcp",
    ],
)
def test_9_htu_is_compared_after_normalisation(
    s: Any, issuer_key: SigningKey, agent: SigningKey, htu: str
) -> None:
    access = bound(issuer_key, agent)
    assert dpop(s, access, proof(agent, access, url=htu), path="/mcp?x=1").authenticated


def test_9_without_an_origin_the_request_scheme_and_authority_count(
    issuer_key: SigningKey, agent: SigningKey
) -> None:
    s = setup([issuer_key], dpop={"mode": "optional"})
    access = bound(issuer_key, agent)
    url = "http://127.0.0.1:8080/mcp"
    ok = request(
        f"DPoP {access}", proof(agent, access, url=url), scheme="http", host="127.0.0.1:8080"
    )
    assert s.verifier.verify(ok).authenticated
    other = request(f"DPoP {access}", proof(agent, access, url=url), scheme="http", host="evil")
    assert s.verifier.verify(other).error == Reason.DPOP_INVALID
    unknown = request(f"DPoP {access}", proof(agent, access, url=url), scheme="", host="")
    assert s.verifier.verify(unknown).error == Reason.DPOP_INVALID


def test_9_the_configured_origin_wins_over_the_request(
    s: Any, issuer_key: SigningKey, agent: SigningKey
) -> None:
    # behind TLS termination the request may say http and an internal host
    access = bound(issuer_key, agent)
    inside = request(f"DPoP {access}", proof(agent, access), scheme="http", host="mcp.internal:80")
    assert s.verifier.verify(inside).authenticated


# 11. creation time within the window (maxAge 60 s, future skew 30 s)


def test_11_iat_within_max_age_and_skew(s: Any, issuer_key: SigningKey, agent: SigningKey) -> None:
    access = bound(issuer_key, agent)
    assert dpop(s, access, proof(agent, access, iat=int(NOW) - 89)).authenticated
    assert dpop(s, access, proof(agent, access, iat=int(NOW) - 91)).error == Reason.DPOP_INVALID
    assert dpop(s, access, proof(agent, access, iat=int(NOW) + 29)).authenticated
    assert dpop(s, access, proof(agent, access, iat=int(NOW) + 31)).error == Reason.DPOP_INVALID
    for bad in ("1800000000", True, None):
        assert dpop(s, access, proof(agent, access, iat=bad)).error == Reason.DPOP_INVALID


# 12a. ath


def test_12a_ath_must_hash_the_presented_token(
    s: Any, issuer_key: SigningKey, agent: SigningKey
) -> None:
    access = bound(issuer_key, agent)
    other = bound(issuer_key, agent)
    assert dpop(s, access, proof(agent, other)).error == Reason.DPOP_INVALID
    assert dpop(s, access, proof(agent, access, ath=ath(access) + "A")).error == (
        Reason.DPOP_INVALID
    )


# 12b. the proof key is the key the token is bound to


def test_12b_the_proof_key_must_be_the_bound_key(s: Any, issuer_key: SigningKey) -> None:
    agent, thief = ec_key("agent"), ec_key("thief")
    access = bound(issuer_key, agent)
    assert dpop(s, access, proof(thief, access)).error == Reason.DPOP_INVALID
    assert s.claims.calls == []


# The scheme against the binding (RFC 9449 §7.1, §7.2)


def test_a_dpop_bound_token_sent_as_bearer_is_refused(
    s: Any, issuer_key: SigningKey, agent: SigningKey
) -> None:
    access = bound(issuer_key, agent)
    with_proof = request(f"Bearer {access}", proof(agent, access))
    assert s.verifier.verify(with_proof).error == Reason.DPOP_REQUIRED
    assert s.verifier.verify(request(f"Bearer {access}")).error == Reason.DPOP_REQUIRED


def test_mode_required_refuses_unbound_tokens(issuer_key: SigningKey, agent: SigningKey) -> None:
    strict = setup([issuer_key], dpop={"mode": "required", "origin": ORIGIN})
    assert strict.verifier.verify(request(f"Bearer {token(issuer_key)}")).error == (
        Reason.DPOP_REQUIRED
    )
    access = bound(issuer_key, agent)
    assert dpop(strict, access, proof(agent, access)).authenticated


def test_the_dpop_scheme_needs_a_bound_token_and_a_proof(
    s: Any, issuer_key: SigningKey, agent: SigningKey
) -> None:
    unbound = token(issuer_key)
    assert dpop(s, unbound, proof(agent, unbound)).error == Reason.DPOP_INVALID
    assert dpop(s, bound(issuer_key, agent), None).error == Reason.DPOP_REQUIRED


def test_mode_disabled_refuses_the_dpop_scheme(issuer_key: SigningKey, agent: SigningKey) -> None:
    off = setup([issuer_key], dpop={"mode": "disabled"})
    access = bound(issuer_key, agent)
    assert dpop(off, access, proof(agent, access)).error == Reason.DPOP_INVALID
    assert off.verifier.verify(request(f"Bearer {token(issuer_key)}")).authenticated


@pytest.mark.parametrize("scheme", ["dpop", "DPOP", "DPoP"])
def test_the_scheme_is_case_insensitive(
    s: Any, issuer_key: SigningKey, agent: SigningKey, scheme: str
) -> None:
    access = bound(issuer_key, agent)
    assert s.verifier.verify(request(f"{scheme} {access}", proof(agent, access))).authenticated


# Single use


def test_a_replayed_proof_is_refused(s: Any, issuer_key: SigningKey, agent: SigningKey) -> None:
    access = bound(issuer_key, agent)
    text = proof(agent, access)
    assert dpop(s, access, text).authenticated
    assert dpop(s, access, text).error == Reason.DPOP_REPLAYED
    assert dpop(s, access, proof(agent, access)).authenticated


def test_the_replay_entry_lives_as_long_as_the_proof_could_pass(
    s: Any, issuer_key: SigningKey, agent: SigningKey
) -> None:
    access = bound(issuer_key, agent)
    dpop(s, access, proof(agent, access, iat=int(NOW) - 20))
    ((key, ttl),) = s.claims.calls
    # iat + maxAge (60) + skew (30) - now
    assert ttl == pytest.approx(70)
    assert key.startswith("dpop:") and len(key) < 64


def test_a_failing_replay_store_refuses_as_unavailable(
    issuer_key: SigningKey, agent: SigningKey
) -> None:
    s = setup([issuer_key])

    def broken(key: str, ttl: float) -> bool:
        raise ConnectionError("redis://user:secret@store down")

    verifier = Checked(Verifier(s.config, s.store, broken, clock=s.clock))
    access = bound(issuer_key, agent)
    identity = verifier.verify(request(f"DPoP {access}", proof(agent, access)))
    assert not identity.authenticated
    assert identity.error == Reason.DPOP_INVALID and identity.unavailable
    assert "secret" not in identity.detail


def test_without_a_replay_store_dpop_is_refused_as_unavailable(
    issuer_key: SigningKey, agent: SigningKey
) -> None:
    s = setup([issuer_key])
    verifier = Checked(Verifier(s.config, s.store, None, clock=s.clock))
    access = bound(issuer_key, agent)
    identity = verifier.verify(request(f"DPoP {access}", proof(agent, access)))
    assert identity.error == Reason.DPOP_INVALID and identity.unavailable


def test_the_replay_claim_comes_last(s: Any, issuer_key: SigningKey, agent: SigningKey) -> None:
    # a proof failing a later check (certificate binding) must not consume its jti
    access = token(issuer_key, cnf={"jkt": agent.thumbprint(), "x5t#S256": "A" * 43})
    assert dpop(s, access, proof(agent, access)).error == Reason.CERTIFICATE_MISMATCH
    assert s.claims.calls == []


def test_a_dpop_request_costs_one_signature_check(
    s: Any, issuer_key: SigningKey, agent: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    access = bound(issuer_key, agent)
    assert dpop(s, access, proof(agent, access)).authenticated
    calls = count_signatures(monkeypatch)
    for _ in range(3):
        assert dpop(s, access, proof(agent, access)).authenticated
    assert calls == ["ES256"] * 3  # the proof each time; the token once, from the cache


def test_memory_claims_helper_expires(s: Any) -> None:
    claims = MemoryClaims(s.clock)
    assert claims("k", 10) and not claims("k", 10)
    s.clock.advance(11)
    assert claims("k", 10)


# A replay of a request this process claimed is answered without the signature check


def test_a_replay_is_refused_without_a_signature_check_or_a_store_call(
    s: Any, issuer_key: SigningKey, agent: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    access = bound(issuer_key, agent)
    text = proof(agent, access)
    assert dpop(s, access, text).authenticated
    assert dpop(s, access, text).error == Reason.DPOP_REPLAYED  # the store refuses it
    calls = count_signatures(monkeypatch)
    store_calls = len(s.claims.calls)
    for _ in range(3):
        assert dpop(s, access, text).error == Reason.DPOP_REPLAYED
    assert calls == [] and len(s.claims.calls) == store_calls


def test_the_remembered_replay_answers_only_what_the_full_check_would(
    s: Any, issuer_key: SigningKey, agent: SigningKey
) -> None:
    access = bound(issuer_key, agent)
    text = proof(agent, access)
    assert dpop(s, access, text).authenticated
    # The same proof for another URL or method fails its own check, not as a replay.
    assert dpop(s, access, text, path="/other").error == Reason.DPOP_INVALID
    assert dpop(s, access, text, method="GET").error == Reason.DPOP_INVALID
    # A second look without claiming (the list filter's) still accepts it.
    assert s.verifier.inner.verify(request(f"DPoP {access}", text), claim=False).authenticated
    # Past the proof's lifetime the full check answers: too old.
    s.clock.advance(200)
    identity = dpop(s, access, text)
    assert identity.error == Reason.DPOP_INVALID and "too old" in identity.detail
