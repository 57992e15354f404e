"""Client certificates (RFC 8705 binding) and SPIFFE IDs, with certificates made by the test."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from authz_server.identity import Method, Reason
from authz_server.identity.spiffe import parse_spiffe_id
from tests.identity.helpers import (
    certificate,
    ec_key,
    proof,
    request,
    rsa_key,
    setup,
    token,
)

AGENT_ID = "spiffe://example.org/ns/agents/sa/planner"


@pytest.fixture(scope="module")
def issuer_key() -> Any:
    return rsa_key()


@pytest.fixture
def s(issuer_key: Any) -> Any:
    return setup([issuer_key], mtls={"trustDomains": ["example.org"]})


def test_the_certificate_thumbprint_is_the_sha256_of_the_der(s: Any) -> None:
    pem, _ = certificate(AGENT_ID)
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)
    expected = base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()
    identity = s.verifier.verify(request(certificate=pem))
    assert identity.certificate_thumbprint == expected


def test_a_spiffe_certificate_alone_authenticates(s: Any) -> None:
    pem, x5t = certificate(AGENT_ID, dns=("planner.agents.svc",))
    identity = s.verifier.verify(request(certificate=pem))
    assert identity.authenticated and identity.method is Method.MTLS
    assert (identity.spiffe_id, identity.certificate_thumbprint) == (AGENT_ID, x5t)
    assert identity.subject == ""


def test_a_spiffe_principal_without_certificate(s: Any) -> None:
    identity = s.verifier.verify(request(principal=AGENT_ID))
    assert identity.authenticated and identity.spiffe_id == AGENT_ID
    assert identity.certificate_thumbprint == ""


def test_a_non_spiffe_principal_or_certificate_is_no_identity(s: Any) -> None:
    assert s.verifier.verify(request(principal="planner.agents.svc")).error == Reason.MISSING
    pem, _ = certificate("https://example.org/agent")
    assert s.verifier.verify(request(certificate=pem)).error == Reason.MISSING


def test_the_certificate_wins_over_the_principal(s: Any) -> None:
    pem, _ = certificate(AGENT_ID)
    identity = s.verifier.verify(request(certificate=pem, principal="spiffe://example.org/x"))
    assert identity.spiffe_id == AGENT_ID


def test_an_x509_svid_has_exactly_one_uri_san(s: Any) -> None:
    pem, _ = certificate(AGENT_ID, "spiffe://example.org/other")
    assert s.verifier.verify(request(certificate=pem)).error == Reason.MALFORMED
    pem, _ = certificate(AGENT_ID, "https://example.org/agent")
    assert s.verifier.verify(request(certificate=pem)).error == Reason.MALFORMED


def test_an_x509_svid_is_a_leaf(s: Any) -> None:
    pem, _ = certificate(AGENT_ID, ca=True)
    assert s.verifier.verify(request(certificate=pem)).error == Reason.MALFORMED


def test_a_foreign_trust_domain_is_refused(s: Any) -> None:
    pem, _ = certificate("spiffe://evil.org/agent")
    assert s.verifier.verify(request(certificate=pem)).error == Reason.WRONG_ISSUER
    assert s.verifier.verify(request(principal="spiffe://evil.org/a")).error == (
        Reason.WRONG_ISSUER
    )


def test_without_mtls_configured_spiffe_ids_are_not_taken(issuer_key: Any) -> None:
    plain = setup([issuer_key])
    pem, x5t = certificate(AGENT_ID)
    assert plain.verifier.verify(request(principal=AGENT_ID)).error == Reason.MISSING
    assert plain.verifier.verify(request(certificate=pem)).error == Reason.MISSING
    # the thumbprint still serves the token binding
    access = token(issuer_key, cnf={"x5t#S256": x5t})
    identity = plain.verifier.verify(request(f"Bearer {access}", certificate=pem))
    assert identity.authenticated and identity.certificate_thumbprint == x5t
    assert identity.spiffe_id == ""


def test_an_unreadable_certificate_is_malformed(s: Any) -> None:
    for pem in ("garbage", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"):
        assert s.verifier.verify(request(certificate=pem)).error == Reason.MALFORMED


@pytest.mark.parametrize(
    "text",
    [
        "spiffe://Example.org/agent",
        "spiffe://example.org:8443/agent",
        "spiffe://user@example.org/agent",
        "spiffe://example.org",
        "spiffe://example.org/",
        "spiffe://example.org/agent/",
        "spiffe://example.org//agent",
        "spiffe://example.org/./agent",
        "spiffe://example.org/../agent",
        "spiffe://example.org/a%20b",
        "spiffe://example.org/agent?x=1",
        "spiffe://example.org/agent#f",
        "spiffe:///agent",
        "spiffe://[::1]/agent",
        "spiffe://example.org/" + "a" * 2048,
        "spiffe://" + "a" * 256 + "/agent",
        "https://example.org/agent",
    ],
)
def test_spiffe_id_rules(s: Any, text: str) -> None:
    assert parse_spiffe_id(text) is None
    assert not s.verifier.verify(request(principal=text)).authenticated


def test_a_certificate_with_a_bad_spiffe_id_is_malformed(s: Any) -> None:
    pem, _ = certificate("spiffe://example.org/agent/")
    assert s.verifier.verify(request(certificate=pem)).error == Reason.MALFORMED


@pytest.mark.parametrize(
    "text",
    [
        AGENT_ID,
        "SPIFFE://example.org/Agent-1_x.y",
        "spiffe://a.b-c_d/x",
        "spiffe://example.org/" + "a" * 2000,
    ],
)
def test_valid_spiffe_ids(text: str) -> None:
    parsed = parse_spiffe_id(text)
    assert parsed is not None
    assert str(parsed) == "spiffe://" + text[len("spiffe://") :]


# RFC 8705 binding


def test_a_certificate_bound_token_needs_that_certificate(s: Any, issuer_key: Any) -> None:
    pem, x5t = certificate(AGENT_ID)
    other, _ = certificate("spiffe://example.org/other")
    access = token(issuer_key, cnf={"x5t#S256": x5t})
    ok = s.verifier.verify(request(f"Bearer {access}", certificate=pem))
    assert ok.authenticated and ok.method is Method.BEARER
    assert (ok.spiffe_id, ok.certificate_thumbprint) == (AGENT_ID, x5t)
    wrong = s.verifier.verify(request(f"Bearer {access}", certificate=other))
    assert wrong.error == Reason.CERTIFICATE_MISMATCH
    # a principal is not a certificate
    none = s.verifier.verify(request(f"Bearer {access}", principal=AGENT_ID))
    assert none.error == Reason.CERTIFICATE_MISMATCH


def test_a_token_bound_to_both_key_and_certificate_needs_both(s: Any, issuer_key: Any) -> None:
    agent = ec_key("agent")
    pem, x5t = certificate(AGENT_ID)
    other, _ = certificate("spiffe://example.org/other")
    access = token(issuer_key, cnf={"jkt": agent.thumbprint(), "x5t#S256": x5t})
    both = s.verifier.verify(request(f"DPoP {access}", proof(agent, access), certificate=pem))
    assert both.authenticated and both.method is Method.DPOP and both.spiffe_id == AGENT_ID
    assert both.key_thumbprint == agent.thumbprint()
    wrong = s.verifier.verify(request(f"DPoP {access}", proof(agent, access), certificate=other))
    assert wrong.error == Reason.CERTIFICATE_MISMATCH
