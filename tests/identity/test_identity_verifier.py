"""The verifier as a whole: request shape, gateway claims, the Identity value, no crash and no
credential in any output."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from authz_server.identity import (
    AuthenticationConfig,
    Identity,
    KeyStore,
    Method,
    Reason,
    Verifier,
)
from authz_server.identity.jwt import AccessTokenVerifier
from tests.identity.helpers import (
    AUDIENCE,
    ISSUER,
    Checked,
    Clock,
    MemoryClaims,
    certificate,
    count_signatures,
    ec_key,
    proof,
    request,
    rsa_key,
    setup,
    token,
)

CEL_NAMES = [
    "Authenticated",
    "Method",
    "Issuer",
    "Subject",
    "ClientID",
    "Audiences",
    "Scopes",
    "Claims",
    "Actor",
    "SPIFFEID",
    "CertificateThumbprint",
    "KeyThumbprint",
    "Error",
]

JWT_AUTHN = "envoy.filters.http.jwt_authn"


@pytest.fixture(scope="module")
def key() -> Any:
    return rsa_key()


@pytest.fixture
def s(key: Any) -> Any:
    return setup([key])


def test_no_credential_is_missing(s: Any) -> None:
    identity = s.verifier.verify(request())
    assert identity == Identity.failure(Reason.MISSING)
    assert not identity.authenticated and identity.method is Method.NONE


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", Reason.MISSING),
        ("   ", Reason.MISSING),
        ("Basic dXNlcjpwdw==", Reason.MISSING),
        ("Negotiate abc", Reason.MISSING),
        ("Bearer", Reason.MALFORMED),
        ("Bearer ", Reason.MALFORMED),
        ("DPoP x", Reason.MALFORMED),
    ],
)
def test_other_schemes_and_empty_values(s: Any, value: str, reason: Reason) -> None:
    assert s.verifier.verify(request(value)).error == reason


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_bearer_scheme_is_case_insensitive(s: Any, key: Any, scheme: str) -> None:
    assert s.verifier.verify(request(f"{scheme} {token(key)}")).authenticated


def test_two_authorization_headers_are_malformed(s: Any, key: Any) -> None:
    # Envoy joins repeated headers with a comma; Bearer and DPoP together end up here too
    joined = f"Bearer {token(key)},DPoP {token(key)}"
    assert s.verifier.verify(request(joined)).error == Reason.MALFORMED


def test_the_token_value_must_be_one_compact_jws(s: Any, key: Any) -> None:
    assert s.verifier.verify(request(f"Bearer {token(key)} extra")).error == Reason.MALFORMED
    assert s.verifier.verify(request("Bearer " + "a" * 20000)).error == Reason.MALFORMED
    assert s.verifier.verify(request(f"Bearer   {token(key)}  ")).authenticated


def test_the_identity_maps_to_the_cel_names(s: Any, key: Any) -> None:
    identity = s.verifier.verify(request(f"Bearer {token(key, act={'sub': 'bot'})}"))
    cel = identity.to_cel()
    assert list(cel) == CEL_NAMES
    assert cel["Authenticated"] is True and cel["Method"] == "bearer"
    assert cel["Issuer"] == ISSUER and cel["ClientID"] == "agent-7"
    assert cel["Audiences"] == (AUDIENCE,) and cel["Actor"] == "bot"
    assert cel["Error"] == ""
    assert identity.to_cel() is cel
    failed = s.verifier.verify(request("Bearer a.b.c")).to_cel()
    assert failed["Error"] == "malformed" and failed["Authenticated"] is False


def test_the_identity_is_immutable(s: Any, key: Any) -> None:
    identity = s.verifier.verify(request(f"Bearer {token(key)}"))
    with pytest.raises(AttributeError):
        identity.subject = "admin"  # type: ignore[misc]
    with pytest.raises(TypeError):
        identity.to_cel()["Subject"] = "admin"  # type: ignore[index]


# Gateway-verified claims


def gateway_metadata(**claims: Any) -> dict[str, Any]:
    payload = {"iss": "https://gw-idp", "sub": "u", "aud": ["x"], "scope": "a b", **claims}
    return {JWT_AUTHN: {"jwt_payload": payload}}


def test_gateway_claims_when_no_issuer_is_configured() -> None:
    verifier = Checked(Verifier(AuthenticationConfig(), KeyStore({}), MemoryClaims(Clock())))
    identity = verifier.verify(request(metadata=gateway_metadata(act={"sub": "bot"})))
    assert identity.authenticated and identity.method is Method.GATEWAY
    assert (identity.issuer, identity.subject, identity.actor) == ("https://gw-idp", "u", "bot")
    assert identity.scopes == ("a", "b") and identity.audiences == ("x",)
    # Envoy's payload_in_metadata may use any name
    envoy = {JWT_AUTHN: {"my_payload": {"iss": "i", "sub": "v"}}}
    assert verifier.verify(request(metadata=envoy)).subject == "v"
    # a forwarded token does not change that
    assert verifier.verify(request("Bearer a.b.c", metadata=gateway_metadata())).authenticated
    # no metadata, a token, no issuer to check it against
    assert verifier.verify(request("Bearer a.b.c")).error == Reason.WRONG_ISSUER
    assert verifier.verify(request(metadata={JWT_AUTHN: {"a": 1, "b": 2}})).error == (
        Reason.MISSING
    )


def test_gateway_claims_are_ignored_when_issuers_are_configured(s: Any, key: Any) -> None:
    assert s.verifier.verify(request(metadata=gateway_metadata())).error == Reason.MISSING
    forged = request(f"Bearer {token(ec_key('x'))}", metadata=gateway_metadata())
    assert s.verifier.verify(forged).error == Reason.UNKNOWN_KEY


# Never raises; no credential leaks


def test_a_bug_becomes_a_failure_and_its_message_is_not_logged(
    s: Any, key: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    text = token(key)

    def broken(self: Any, value: str) -> Any:
        raise RuntimeError(value)

    monkeypatch.setattr(AccessTokenVerifier, "verify", broken)
    with caplog.at_level(logging.DEBUG):
        identity = s.verifier.inner.verify(request(f"Bearer {text}"))
    assert identity.error == Reason.MALFORMED and not identity.authenticated
    assert identity.detail == "internal error"
    assert "RuntimeError" in caplog.text
    assert text not in caplog.text


def test_no_credential_reaches_the_identity_or_the_logs(
    s: Any, key: Any, caplog: pytest.LogCaptureFixture
) -> None:
    agent = ec_key("agent")
    bound = token(key, cnf={"jkt": agent.thumbprint()})
    pem, _ = certificate("spiffe://example.org/a")
    cases = [
        request(f"Bearer {token(key, exp=1)}"),
        request(f"Bearer {token(key, aud='x')}"),
        request(f"Bearer {token(ec_key('other'))}"),
        request(f"Bearer {bound}"),
        request(f"DPoP {bound}", proof(agent, bound, htm="GET")),
        request(f"DPoP {bound}", proof(ec_key("thief"), bound)),
        request(f"Bearer {token(key)}x"),
        request(f"Bearer {token(key)}", certificate=pem[:-40]),
    ]
    with caplog.at_level(logging.DEBUG):
        results = [s.verifier.verify(r) for r in cases]
    for r, identity in zip(cases, results, strict=True):
        assert not identity.authenticated
        for secret in (r.headers["authorization"].split()[-1], r.headers.get("dpop", "")):
            if secret:
                assert secret not in repr(identity)
                assert secret[:40] not in identity.detail
                assert secret[:40] not in caplog.text


def test_the_token_cache_verifies_a_repeated_token_once(
    s: Any, key: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = count_signatures(monkeypatch)
    text = token(key)
    for _ in range(5):
        assert s.verifier.verify(request(f"Bearer {text}")).authenticated
    forged = text[:-4] + ("AAAA" if not text.endswith("AAAA") else "BBBA")
    for _ in range(5):
        assert s.verifier.verify(request(f"Bearer {forged}")).error in (
            Reason.BAD_SIGNATURE,
            Reason.MALFORMED,
        )
    assert calls == ["RS256", "RS256"]


def test_refusals_are_remembered_apart_from_verified_tokens(
    key: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = setup([key])
    verifier = Verifier(s.config, s.store, s.claims, clock=s.clock, cache_size=2)
    calls = count_signatures(monkeypatch)
    good = request(f"Bearer {token(key)}")
    assert verifier.verify(good).authenticated
    wrong_audience = request(f"Bearer {token(key, aud='https://elsewhere')}")
    for _ in range(3):
        assert verifier.verify(wrong_audience).error == Reason.WRONG_AUDIENCE
    for i in range(10):  # a flood of distinct bad tokens
        assert verifier.verify(request(f"Bearer {token(key, exp=i)}")).error == Reason.EXPIRED
    assert verifier.verify(good).authenticated
    assert calls == ["RS256", "RS256"]  # once for the good token, once for the wrong audience


def test_the_token_cache_is_bounded(key: Any) -> None:
    s = setup([key])
    verifier = Verifier(s.config, s.store, s.claims, clock=s.clock, cache_size=3)
    for i in range(10):
        assert verifier.verify(request(f"Bearer {token(key, jti=f'j{i}')}")).authenticated
    assert len(verifier._tokens._verified) == 3


def test_dpop_and_mtls_together(key: Any) -> None:
    s = setup([key], mtls={"trustDomains": ["example.org"]})
    agent = ec_key("agent")
    pem, x5t = certificate("spiffe://example.org/agent")
    bound = token(key, cnf={"jkt": agent.thumbprint()})
    identity = s.verifier.verify(request(f"DPoP {bound}", proof(agent, bound), certificate=pem))
    assert identity.method is Method.DPOP
    assert (identity.spiffe_id, identity.certificate_thumbprint) == (
        "spiffe://example.org/agent",
        x5t,
    )


def test_an_expired_token_sent_again_is_refused_from_the_cache(
    key: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from authz_server.identity import jwt as jwt_module

    s = setup([key])
    parsed: list[str] = []
    original = jwt_module.parse

    def counting(text: str) -> Any:
        parsed.append(text)
        return original(text)

    monkeypatch.setattr(jwt_module, "parse", counting)
    stale = request(f"Bearer {token(key, exp=int(s.clock()) - 3600)}")
    for _ in range(3):
        identity = s.verifier.verify(stale)
        assert identity.error == Reason.EXPIRED and "expired" in identity.detail
    assert len(parsed) == 1
    # Refused before any key: the cached refusal holds whatever the keys do.
    s.clock.advance(10_000)
    assert s.verifier.verify(stale).error == Reason.EXPIRED
