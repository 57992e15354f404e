"""The identity stage as the observers see it: verifications and JWK set fetches counted in
Prometheus, the verified caller in the audit line. Identities come from the real verifier, with
real keys, tokens, DPoP proofs and certificates; JWK sets from a loopback HTTP endpoint."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from observe_events import denied, event, series, tool_call, value
from prometheus_client import CollectorRegistry, generate_latest

from authz_server.decision import DecidedBy, allow, deny
from authz_server.identity import JwksSource, KeyStore
from authz_server.identity.model import Identity, Method, Reason
from authz_server.observe.audit import AuditLog
from authz_server.observe.metrics import Metrics
from authz_server.observe.record import audit_view
from authz_server.observe.redact import Clipper
from authz_server.request import Request
from tests.identity.helpers import (
    ISSUER,
    JwksServer,
    SigningKey,
    certificate,
    ec_key,
    proof,
    request,
    rsa_key,
    setup,
    token,
)

VERIFICATIONS = "authz_identity_verifications_total"
# Claims a token carries that must never reach a log: only who called is logged.
PRIVATE_CLAIMS = {"email": "someone@example.com", "internal_note": "s3cr3tCLAIM"}


@pytest.fixture(scope="module")
def issuer_key() -> SigningKey:
    return rsa_key()


@pytest.fixture(scope="module")
def agent() -> SigningKey:
    return ec_key("agent")


@pytest.fixture
def s(issuer_key: SigningKey) -> Any:
    return setup([issuer_key], mtls={"trustDomains": ["example.org"]})


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Iterator[Metrics]:
    metrics = Metrics(registry)
    yield metrics
    metrics.close()


def verified(s: Any, req: Request, *messages: Any, decision: Any = None) -> Any:
    """The event of a check whose identity the real verifier gave for ``req``."""
    return event(decision, *messages, request=req, identity=s.verifier.verify(req))


def dpop_request(issuer_key: SigningKey, agent: SigningKey, **kwargs: Any) -> Request:
    access = token(
        issuer_key,
        cnf={"jkt": agent.thumbprint()},
        sub="agent-42",
        act={"sub": "alice"},
        **PRIVATE_CLAIMS,
    )
    return request(f"DPoP {access}", proof(agent, access), **kwargs)


def write(events: list[Any], path: Path, **options: Any) -> list[dict[str, Any]]:
    audit = AuditLog(str(path), **options)
    audit.start()
    for item in events:
        audit.observe(item)
    assert audit.close()
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- authz_identity_verifications_total --------------------------------------------------------


def test_verifications_by_issuer_method_and_outcome(
    s: Any,
    issuer_key: SigningKey,
    agent: SigningKey,
    metrics: Metrics,
    registry: CollectorRegistry,
) -> None:
    pem, _ = certificate("spiffe://example.org/agent")
    checks = [
        request(f"Bearer {token(issuer_key)}"),
        request(f"Bearer {token(issuer_key)}"),
        dpop_request(issuer_key, agent),
        request(certificate=pem),
        request(),
        request(f"Bearer {token(issuer_key, exp=1)}"),
        request(f"Bearer {token(rsa_key('stranger'))}"),
    ]
    for req in checks:
        metrics.observe(verified(s, req, tool_call("create_issue")))
    assert {
        (labels["issuer"], labels["method"], labels["outcome"]): value(
            registry, VERIFICATIONS, **labels
        )
        for labels in series(registry, VERIFICATIONS)
    } == {
        (ISSUER, "bearer", "verified"): 2,
        (ISSUER, "dpop", "verified"): 1,
        ("", "mtls", "verified"): 1,
        ("", "", "missing"): 1,
        ("", "", "expired"): 1,
        ("", "", "unknown_key"): 1,
    }


def test_no_identity_stage_no_verification_counted(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.observe(event(allow(), tool_call("create_issue")))
    assert series(registry, VERIFICATIONS) == []
    assert value(registry, "authz_decisions_total", outcome="allow", decided_by="policy") == 1


def test_refusals_of_the_identity_stage_are_counted_as_decisions(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    refused = deny(401, reason="missing", decided_by=DecidedBy.IDENTITY)
    metrics.observe(event(refused, identity=Identity.failure(Reason.MISSING, "no credential")))
    assert value(registry, "authz_decisions_total", outcome="deny", decided_by="identity") == 1
    assert value(registry, VERIFICATIONS, issuer="", method="", outcome="missing") == 1


def test_who_called_never_becomes_a_label(
    s: Any,
    issuer_key: SigningKey,
    agent: SigningKey,
    metrics: Metrics,
    registry: CollectorRegistry,
) -> None:
    req = dpop_request(issuer_key, agent)
    metrics.observe(verified(s, req))
    text = generate_latest(registry).decode()
    assert "agent-42" not in text and "alice" not in text and "agent-7" not in text
    assert agent.thumbprint() not in text
    assert "someone@" not in text and "s3cr3t" not in text.lower()


def test_gateway_issuers_are_bounded_and_odd_ones_fold(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    """A gateway's claims name whatever issuer the gateway accepts: the label set stays bounded
    and never carries something credential-shaped."""

    def gateway(issuer: str) -> Identity:
        return Identity(authenticated=True, method=Method.GATEWAY, issuer=issuer, subject="x")

    odd = ["has space", "https://idp.example/?token=s3cr3tISSUER", "i" * 300, "other"]
    for issuer in odd:
        metrics.observe(event(identity=gateway(issuer)))
    for index in range(40):
        metrics.observe(event(identity=gateway(f"https://idp{index}.example")))
    issuers = {labels["issuer"] for labels in series(registry, VERIFICATIONS)}
    assert "other" in issuers and "https://idp0.example" in issuers
    assert len(issuers) <= 21
    assert value(
        registry, VERIFICATIONS, issuer="other", method="gateway", outcome="verified"
    ) == len(odd) + 40 - (len(issuers) - 1)
    text = generate_latest(registry).decode()
    assert "s3cr3t" not in text.lower() and "has space" not in text


def test_an_unknown_error_code_folds(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.observe(event(identity=Identity(error="made_up_reason")))
    metrics.observe(event(identity=Identity(error="made_up_reason", issuer="https://x")))
    assert value(registry, VERIFICATIONS, issuer="", method="", outcome="other") == 2
    assert "made_up_reason" not in generate_latest(registry).decode()


# -- authz_jwks_fetches_total, authz_jwks_keys ------------------------------------------------


def test_jwks_fetches_and_key_counts_from_a_real_key_store(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    first, second = rsa_key("k1"), ec_key("k2")
    server = JwksServer([first])
    store = KeyStore({ISSUER: JwksSource(uri=server.url)}, observer=metrics.jwks)
    try:
        server.down = True
        assert not store.refresh(ISSUER)
        # Never had keys: the gauge exists, at 0, so "== 0" alerts on it.
        assert value(registry, "authz_jwks_fetches_total", issuer=ISSUER, result="error") == 1
        assert registry.get_sample_value("authz_jwks_keys", {"issuer": ISSUER}) == 0
        server.down = False
        assert store.refresh(ISSUER)
        assert registry.get_sample_value("authz_jwks_keys", {"issuer": ISSUER}) == 1
        server.publish([first, second])
        assert store.refresh(ISSUER)
        assert registry.get_sample_value("authz_jwks_keys", {"issuer": ISSUER}) == 2
        server.down = True
        assert not store.refresh(ISSUER)
        # A failed fetch keeps the last good keys, and so does the gauge.
        assert registry.get_sample_value("authz_jwks_keys", {"issuer": ISSUER}) == 2
        assert value(registry, "authz_jwks_fetches_total", issuer=ISSUER, result="ok") == 2
        assert value(registry, "authz_jwks_fetches_total", issuer=ISSUER, result="error") == 2
    finally:
        store.close()
        server.close()


def test_inline_keys_are_counted_without_a_fetch(
    issuer_key: SigningKey, metrics: Metrics, registry: CollectorRegistry
) -> None:
    KeyStore(
        {ISSUER: JwksSource(inline={"keys": [issuer_key.jwk(), ec_key("k2").jwk()]})},
        observer=metrics.jwks,
    )
    assert registry.get_sample_value("authz_jwks_keys", {"issuer": ISSUER}) == 2
    assert series(registry, "authz_jwks_fetches_total") == []


def test_a_credential_in_a_jwks_url_is_masked_in_the_label(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    source = "jwks.Fetch https://keys.example/jwks.json?access_token=s3cr3tQUERY"
    store = KeyStore({source: JwksSource(uri="http://127.0.0.1:9/")}, observer=metrics.jwks)
    assert not store.refresh(source)
    text = generate_latest(registry).decode()
    assert "s3cr3t" not in text.lower()
    assert "access_token=[REDACTED]" in text


# -- the audit line ----------------------------------------------------------------------------


def test_the_audit_line_shows_the_verified_caller_and_no_credential(
    s: Any, issuer_key: SigningKey, agent: SigningKey, tmp_path: Path
) -> None:
    pem, x5t = certificate("spiffe://example.org/agent")
    metadata = {"envoy.filters.http.jwt_authn": {"payload": {"sub": "gateway-says", "iss": "g"}}}
    req = dpop_request(issuer_key, agent, certificate=pem, metadata=metadata)
    bearer = token(issuer_key, sub="bearer-user", **PRIVATE_CLAIMS)
    bearer_req = request(f"Bearer {bearer}")
    (line, plain) = write(
        [
            verified(s, req, tool_call("create_issue")),
            verified(s, bearer_req, tool_call("create_issue")),
        ],
        tmp_path / "audit.jsonl",
    )
    assert line["identity"] == {
        "authenticated": True,
        "method": "dpop",
        "issuer": ISSUER,
        "subject": "agent-42",
        "client_id": "agent-7",
        "actor": "alice",
        "spiffe_id": "spiffe://example.org/agent",
        "certificate_thumbprint": x5t,
        "key_thumbprint": agent.thumbprint(),
    }
    assert plain["identity"] == {
        "authenticated": True,
        "method": "bearer",
        "issuer": ISSUER,
        "subject": "bearer-user",
        "client_id": "agent-7",
    }
    text = (tmp_path / "audit.jsonl").read_text()
    credentials = [req.headers["authorization"].split()[1], req.headers["dpop"], bearer]
    for credential in credentials:
        for part in credential.split("."):
            assert part not in text
    assert "someone@" not in text and "s3cr3t" not in text.lower()
    # The gateway's claims are not the caller when this server verified one.
    assert "gateway-says" not in text


def test_a_refused_caller_is_logged_with_the_reason_only(
    s: Any, issuer_key: SigningKey, tmp_path: Path
) -> None:
    expired = request(f"Bearer {token(issuer_key, exp=1, **PRIVATE_CLAIMS)}")
    refused = deny(401, reason="expired", decided_by=DecidedBy.IDENTITY)
    unavailable = Identity.failure(
        Reason.DPOP_INVALID, "the replay store is unavailable", unavailable=True
    )
    lines = write(
        [
            verified(s, expired, decision=refused),
            verified(s, request(), decision=refused),
            event(deny(503, decided_by=DecidedBy.IDENTITY), identity=unavailable),
        ],
        tmp_path / "audit.jsonl",
    )
    assert [line["identity"] for line in lines] == [
        {"authenticated": False, "error": "expired"},
        {"authenticated": False, "error": "missing"},
        {"authenticated": False, "error": "dpop_invalid", "unavailable": True},
    ]
    assert lines[0]["decided_by"] == "identity"
    text = (tmp_path / "audit.jsonl").read_text()
    # Not the detail: fixed text today, but free text.
    assert "replay store" not in text and "someone@" not in text


def test_a_long_subject_is_cut_and_masked(tmp_path: Path) -> None:
    subjects = ["u" * 5000, "x Bearer s3cr3tSUBJECTtoken0123456789 y"]
    events = [
        event(
            identity=Identity(
                authenticated=True, method=Method.GATEWAY, issuer="https://g", subject=subject
            )
        )
        for subject in subjects
    ]
    long, credential = write(events, tmp_path / "audit.jsonl", max_value_length=64)
    assert long["identity"]["subject"] == "u" * 64 + "...[5000 chars]"
    assert credential["identity"]["subject"] == "x Bearer [REDACTED] y"


def test_the_queue_accounts_for_the_identity_it_holds(tmp_path: Path) -> None:
    """A caller with a megabyte subject costs the queue what its line shows, and every byte
    counted in is counted out once the line is written."""

    def identity(subject: str) -> Identity:
        return Identity(authenticated=True, method=Method.BEARER, issuer=ISSUER, subject=subject)

    clip = Clipper()
    small = audit_view(event(identity=identity("agent")), clip).size
    large = audit_view(event(identity=identity("u" * 1_000_000)), clip).size
    assert clip.keep <= large - small <= 4 * clip.keep
    without = audit_view(event(), clip).size
    assert small > without

    audit = AuditLog(str(tmp_path / "audit.jsonl"), max_pending_bytes=3 * large)
    for _ in range(5):
        audit.observe(event(identity=identity("u" * 1_000_000)))
    assert audit.pending_bytes <= 3 * large
    assert audit.dropped == 2
    assert audit.close()
    assert audit.pending_bytes == 0
    assert len((tmp_path / "audit.jsonl").read_text().splitlines()) == 3


def test_without_the_identity_stage_the_gateway_claims_are_logged(tmp_path: Path) -> None:
    metadata = {"envoy.filters.http.jwt_authn": {"payload": {"sub": "agent", "iss": "https://g"}}}
    (line,) = write([event(denied(), metadata=metadata)], tmp_path / "audit.jsonl")
    assert line["identity"] == {"subject": "agent", "issuer": "https://g"}
