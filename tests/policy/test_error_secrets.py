"""A policy error names the policy, the field and the error class, never a value.

CEL's messages quote values (``Key not found in map : "<key>"``) and a Python function called from
CEL reports its exception text (a repr of its arguments, a JWT ``kid``, a duplicate JSON key);
the redactor cannot recognise secrets in that quoting. Each policy below errors in its own way on
a secret-looking value from the request; the checks go through the real pipeline (decoder,
engine, metrics, audit log), and no secret may appear in the denial body, ``Decision.reason``,
the audit line or the metrics. Internal errors (the engine's catch-all, the decoder's) reach the
client as a stable code and the decision id only.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CollectorRegistry, generate_latest

from authz_server.decision import DecidedBy, Decision
from authz_server.envoy import request_from_check
from authz_server.observe import AuditLog, Metrics
from authz_server.pipeline import PolicyAuthorizer
from authz_server.policy import engine as engine_module
from authz_server.policy.error_text import error_class
from authz_server.policy.store import PolicyStore
from authz_server.policy.testing import check_request_from_shorthand

PASSWORD = "hunter2-Pa55word-7Qx"
KID = "kid-S3cretKid-91"
MAP_KEY = "s3cret-map-key-42"
_SIGNER = ec.generate_private_key(ec.SECP256R1())
# A real ES256 token whose kid no key in the policy's set carries.
TOKEN = jwt.encode({"sub": "agent"}, _SIGNER, algorithm="ES256", headers={"kid": KID})
DOC = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "x", "params": {}}).replace(
    '"params": {}', f'"params": {{"{PASSWORD}": 1, "{PASSWORD}": 2}}'
)
MARKERS = (PASSWORD, KID, MAP_KEY, TOKEN, TOKEN.rsplit(".", 1)[1])


def _keyset() -> str:
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(other))
    jwk["kid"] = "the-only-key"
    return json.dumps(json.dumps({"keys": [jwk]}))


PW = 'mcp.GetStringArgument("password", "")'
KNOWN_LOOKUP = json.dumps('{"known": 1}[' + PW + "]")
KNOWN_CONDITION = json.dumps('{"known": true}[' + PW + "]")
ALLOW = "envoy.Allowed().Response()"
# name -> (validation, extra spec lines, the reason's tail: field and error class)
CORPUS: dict[str, tuple[str, str, str]] = {
    "leak-map-miss": (
        f'{{"known": 1}}[{PW}] == 1 ? {ALLOW} : null',
        "",
        "spec.validations[0].expression: no such key",
    ),
    "leak-map-literal": (
        f'{{"{MAP_KEY}": 1}}[mcp.ToolCall.Name] == 1 ? {ALLOW} : null',
        "",
        "spec.validations[0].expression: no such key",
    ),
    "leak-int": (
        f"int({PW}) > 0 ? {ALLOW} : null",
        "",
        "spec.validations[0].expression: conversion failed",
    ),
    "leak-jwt-malformed": (
        f'jwt.Decode({PW}, "k").Valid ? {ALLOW} : null',
        "",
        "spec.validations[0].expression: jwt.Decode: malformed token",
    ),
    "leak-jwt-kid": (
        f'jwt.Decode(mcp.GetStringArgument("token", ""), jwks.Parse({_keyset()})).Valid'
        f" ? {ALLOW} : null",
        "",
        "spec.validations[0].expression: jwt.Decode: no matching key",
    ),
    "leak-parse": (
        f'mcp.Parse(mcp.GetStringArgument("password_doc", "")).Method == "x" ? {ALLOW} : null',
        "",
        "spec.validations[0].expression: mcp.Parse: duplicate_key",
    ),
    "leak-overload": (
        f"dyn({PW}) + 1 == 2 ? {ALLOW} : null",
        "",
        "spec.validations[0].expression: no matching overload",
    ),
    "leak-division": (
        f"1 / (size({PW}) - {len(PASSWORD)}) == 0 ? {ALLOW} : null",
        "",
        "spec.validations[0].expression: division by zero",
    ),
    "leak-json": (
        f"json.Unmarshal({PW}) == null ? {ALLOW} : null",
        "",
        "spec.validations[0].expression: json.Unmarshal: invalid JSON",
    ),
    "leak-header": (
        '{"x": 1}[object.attributes.request.http.headers["authorization"]] == 1'
        f" ? {ALLOW} : null",
        "",
        "spec.validations[0].expression: no such key",
    ),
    "leak-variable": (
        f"variables.pw == 1 ? {ALLOW} : null",
        f"  variables:\n  - name: pw\n    expression: {KNOWN_LOOKUP}\n",
        "spec.validations[0].expression: variable 'pw': no such key",
    ),
    "leak-condition": (
        ALLOW,
        f"  matchConditions:\n  - name: secret\n    expression: {KNOWN_CONDITION}\n",
        "spec.matchConditions[1].expression: no such key",
    ),
}


def _document(name: str, validation: str, extra: str, actions: str = "") -> str:
    condition = json.dumps('mcp.ToolCall.Name == "' + name + '"')
    guard = f"  - name: tool\n    expression: {condition}\n"
    if "matchConditions:" in extra:
        head, conditions = extra.split("  matchConditions:\n")
        extra = head + "  matchConditions:\n" + guard + conditions
    else:
        extra = "  matchConditions:\n" + guard + extra
    return (
        "apiVersion: policies.kyverno.io/v1\nkind: ValidatingPolicy\n"
        f"metadata:\n  name: {name}\nspec:\n  evaluation:\n    mode: Envoy\n"
        f"  failurePolicy: Fail\n{actions}{extra}"
        f"  validations:\n  - expression: {json.dumps(validation)}\n"
    )


@dataclass
class Pipeline:
    authorizer: PolicyAuthorizer
    registry: CollectorRegistry
    audit: AuditLog
    audit_path: Path

    def check(self, tool: str) -> Decision:
        shorthand = {
            "tool": tool,
            "arguments": {"password": PASSWORD, "token": TOKEN, "password_doc": DOC},
            "headers": {"authorization": f"Bearer {TOKEN}"},
        }
        return self.authorizer.check(request_from_check(check_request_from_shorthand(shorthand)))

    def audit_lines(self) -> list[dict]:
        assert self.audit.close()
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]

    def metrics(self) -> str:
        return generate_latest(self.registry).decode()


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    root = tmp_path / "policies"
    root.mkdir()
    for name, (validation, extra, _) in CORPUS.items():
        (root / f"{name}.yaml").write_text(_document(name, validation, extra))
    (root / "leak-audit.yaml").write_text(
        _document(
            "leak-audit",
            f'{{"known": 1}}[{PW}] == 1 ? {ALLOW} : null',
            "",
            '  validationActions: ["Audit"]\n',
        )
    )
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    audit_path = tmp_path / "audit.jsonl"
    audit = AuditLog(str(audit_path))
    audit.start()
    store = PolicyStore(root)
    assert store.reload(), store.status.last_error
    authorizer = PolicyAuthorizer(store, observers=(metrics, audit), audit=audit, metrics=metrics)
    yield Pipeline(authorizer, registry, audit, audit_path)
    audit.close()
    metrics.close()


def _leaks(text: str) -> list[str]:
    return [marker for marker in MARKERS if marker in text]


def test_error_reasons_name_policy_field_and_class_only(pipeline: Pipeline) -> None:
    decisions = {name: pipeline.check(name) for name in CORPUS}
    for name, decision in decisions.items():
        assert not decision.allowed, name
        assert decision.decided_by is DecidedBy.ERROR, name
        assert decision.reason == f"policy {name!r} failed at {CORPUS[name][2]}", name
        assert not _leaks(decision.reason), name
        assert not _leaks(decision.body), name
    lines = pipeline.audit_lines()
    assert len(lines) == len(CORPUS)
    for line in lines:
        assert line["decided_by"] == "error"
        assert not _leaks(json.dumps(line)), line
    assert not _leaks(pipeline.metrics())


def test_an_audit_policy_error_is_recorded_without_values(pipeline: Pipeline) -> None:
    decision = pipeline.check("leak-audit")
    (result,) = decision.dry_run
    assert result.reason == (
        "policy 'leak-audit' failed at spec.validations[0].expression: no such key"
    )
    (line,) = pipeline.audit_lines()
    assert line["dry_run"][0]["reason"] == result.reason
    assert not _leaks(json.dumps(line))


def test_the_engines_catch_all_tells_the_client_a_code_and_the_decision_id(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def explode(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"cannot judge {PASSWORD!r} with {TOKEN}")

    monkeypatch.setattr(engine_module.Engine, "_judge", explode)
    with caplog.at_level(logging.DEBUG):
        decision = pipeline.check("leak-map-miss")
    assert not decision.allowed and decision.decided_by is DecidedBy.ERROR
    decision_id = decision.dynamic_metadata["decision_id"]
    body = json.loads(decision.body)
    assert body["error"]["code"] == -32603
    assert decision_id in body["error"]["message"]
    assert decision.http_status == 500
    assert "RuntimeError" in caplog.text  # the server log says what failed, not with what
    for text in (decision.reason, decision.body, caplog.text, pipeline.metrics()):
        assert not _leaks(text)
    (line,) = pipeline.audit_lines()
    assert line["decision_id"] == decision_id and line["decided_by"] == "error"
    assert not _leaks(json.dumps(line))


def test_a_decoder_internal_error_is_a_stable_code_and_the_decision_id(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from authz_server.mcp import decoder

    def explode(*args: object) -> None:
        raise ValueError(f"bad byte near {PASSWORD!r}")

    monkeypatch.setattr(decoder, "_decode", explode)
    with caplog.at_level(logging.DEBUG):
        decision = pipeline.check("leak-map-miss")
    assert not decision.allowed and decision.decided_by is DecidedBy.ERROR
    assert decision.http_status == 500
    decision_id = decision.dynamic_metadata["decision_id"]
    assert decision_id in decision.body
    for text in (decision.reason, decision.body, caplog.text, pipeline.metrics()):
        assert not _leaks(text)
    (line,) = pipeline.audit_lines()
    assert line["decided_by"] == "error"
    assert not _leaks(json.dumps(line))


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ('Key not found in map : "hunter2"', "no such key"),
        ("no such key: hunter2", "no such key"),
        ("No matching overloads found : _+_(string, int64)", "no matching overload"),
        ("divide by zero", "division by zero"),
        ("modulus by zero", "division by zero"),
        ("cannot convert string to int", "conversion failed"),
        ("String to Duration conversion failed", "conversion failed"),
        ("Type conversion error from 'string' to 'bool'", "conversion failed"),
        ("Index error: index=21 size=2", "index out of range"),
        ("integer overflow", "overflow"),
        ("invalid regular expression: missing ): hunter2(", "invalid regular expression"),
        # Python functions called from CEL: their exception text, often a repr of arguments.
        ("'hunter2'", "evaluation error"),
        ("{'password': 'hunter2'}", "evaluation error"),
        ("invalid literal for int() with base 10: 'hunter2'", "evaluation error"),
        ("jwt.Decode: bad signature", "jwt.Decode: bad signature"),
        ("jwt.Decode: no key in the set matches kid 'hunter2'", "jwt.Decode: invalid token"),
        (
            "json.Unmarshal: Expecting value: line 1 column 1 (char 0)",
            "json.Unmarshal: invalid JSON",
        ),
        ("mcp.Parse: duplicate_key: duplicate key 'hunter2'", "mcp.Parse: duplicate_key"),
        ("mcp.Parse: 'hunter2'", "mcp.Parse: failed"),
        ("mcp.GetStringArgument: hunter2", "mcp.GetStringArgument: failed"),
        (
            "jwks.Fetch: keys for https://hunter2.example.com/k not fetched yet",
            "jwks.Fetch: keys not fetched yet",
        ),
        ("jwks.Fetch: hunter2", "jwks.Fetch: failed"),
    ],
)
def test_error_classes(message: str, expected: str) -> None:
    assert error_class(message) == expected
    assert "hunter2" not in error_class(message)
