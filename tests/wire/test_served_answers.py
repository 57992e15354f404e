"""A real ``authz-server serve`` process, real gRPC Checks on loopback: what it answers and what it
records for header_map requests, erroring policies and checks it cannot read.

- Headers sent in ``header_map`` (Envoy's ``encode_raw_headers``) reach header-keyed policies as
  headers sent in ``headers`` do.
- A policy erroring on a secret-looking request value answers a denial naming the policy, the
  field and the error class; the secret is in no answer, audit line, metric or log line.
- A CheckRequest the adapter cannot read (metadata holding a NaN number, which has no JSON
  form) is an explicit denial with a decision id, counted and audited, not a bare error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from tests.serving import ServerProcess, start_server, stop_server

SECRET = "wire-Pa55word-hunter2"
POLICIES = """\
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: {name: a-tenant}
spec:
  evaluation: {mode: Envoy}
  validations:
  - expression: >
      object.attributes.request.http.headers[?"x-tenant"].orValue("") == "red"
        ? envoy.Denied(403).WithBody("red tenant is frozen").Response() : null
---
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: {name: b-lookup}
spec:
  evaluation: {mode: Envoy}
  failurePolicy: Fail
  matchConditions:
  - name: lookup
    expression: mcp.ToolCall.Name == "lookup"
  validations:
  - expression: >
      {"known": 1}[mcp.GetStringArgument("password", "")] == 1
        ? envoy.Allowed().Response() : null
---
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata: {name: c-allow}
spec:
  evaluation: {mode: Envoy}
  validations:
  - expression: envoy.Allowed().Response()
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    root = tmp_path_factory.mktemp("served")
    (root / "policies").mkdir()
    (root / "policies" / "policies.yaml").write_text(POLICIES)
    audit = root / "audit.jsonl"
    server = start_server(root / "policies", "--audit-log", str(audit), log=root / "stderr.log")
    try:
        yield server, audit
    finally:
        stop_server(server)


def _check_request(tool: str, headers: dict[str, str], *, raw: bool = False) -> Any:
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 3,
            "method": "tools/call",
            "params": {"name": tool, "arguments": {"password": SECRET}},
        }
    )
    all_headers = {"content-type": "application/json", "accept": "application/json", **headers}
    check = external_auth_pb2.CheckRequest()
    http = check.attributes.request.http
    http.method, http.path, http.host = "POST", "/mcp", "mcp.example"
    if raw:
        for key, value in all_headers.items():
            http.header_map.headers.add(key=key, raw_value=value.encode())
    else:
        http.headers.update(all_headers)
    http.body = body
    http.size = len(body)
    return check


def _call(server: ServerProcess, check: Any) -> Any:
    with grpc.insecure_channel(server.target) as channel:
        return external_auth_pb2_grpc.AuthorizationStub(channel).Check(check, timeout=10)


def _audit_line(audit: Path, decision_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if audit.exists():
            for line in audit.read_text().splitlines():
                record = json.loads(line)
                if record["decision_id"] == decision_id:
                    return record
        time.sleep(0.05)
    raise AssertionError(f"no audit line for {decision_id}")


@pytest.mark.parametrize("raw", [False, True], ids=["headers", "header_map"])
def test_header_keyed_policies_apply_whichever_field_carries_the_headers(
    served: tuple[ServerProcess, Path], raw: bool
) -> None:
    server, _ = served
    denied = _call(server, _check_request("search", {"x-tenant": "red"}, raw=raw))
    assert denied.status.code != 0
    assert denied.denied_response.status.code == 403
    assert "red tenant is frozen" in denied.denied_response.body
    assert denied.dynamic_metadata["policy"] == "a-tenant"
    allowed = _call(server, _check_request("search", {"x-tenant": "blue"}, raw=raw))
    assert allowed.status.code == 0


def test_a_policy_error_names_its_class_and_keeps_the_secret(
    served: tuple[ServerProcess, Path],
) -> None:
    server, audit = served
    response = _call(server, _check_request("lookup", {}))
    assert response.denied_response.status.code == 403
    message = json.loads(response.denied_response.body)["error"]["message"]
    assert message == "policy 'b-lookup' failed at spec.validations[0].expression: no such key"
    record = _audit_line(audit, response.dynamic_metadata["decision_id"])
    assert record["decided_by"] == "error" and record["policy"] == "b-lookup"
    for text in (str(response), audit.read_text(), server.http("/metrics")[1], server.output()):
        assert SECRET not in text


def _errors(server: ServerProcess) -> float:
    for family in text_string_to_metric_families(server.http("/metrics")[1]):
        for sample in family.samples:
            if sample.name == "authz_decisions_total" and sample.labels == {
                "outcome": "error",
                "decided_by": "error",
            }:
                return sample.value
    return 0.0


def test_a_request_the_adapter_cannot_read_is_a_recorded_denial(
    served: tuple[ServerProcess, Path],
) -> None:
    server, audit = served
    before = _errors(server)
    check = _check_request("search", {})
    check.attributes.metadata_context.filter_metadata["envoy.filters.http.jwt_authn"].update(
        {"exp": float("nan")}
    )
    response = _call(server, check)
    assert response.status.code != 0
    assert response.denied_response.status.code == 500
    decision_id = response.dynamic_metadata["decision_id"]
    assert decision_id in response.denied_response.body
    record = _audit_line(audit, decision_id)
    assert record["decided_by"] == "error" and record["outcome"] == "error"
    assert _errors(server) == before + 1
    assert "ValueError" in server.output()  # the log names what failed
