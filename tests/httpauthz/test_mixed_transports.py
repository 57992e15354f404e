"""A mixed policy set served by both transports at once, by a real ``serve`` process with two
workers sharing the ports: gRPC Check answers with the Envoy-mode policies, the HTTP authorizer
with the HTTP-mode ones, and an MCP tools/call is judged the same way over both.

The HTTP requests are shaped as Envoy's ``http_service`` sends them with
``deploy/envoy/envoy-http-service.yaml``: the agent's method and path, the allow-listed headers
(among them ``x-envoy-auth-partial-body``) and the buffered body.
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

from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2_grpc
from authz_server.policy.testing import check_request_from_shorthand
from tests.httpauthz.client import Answer, send
from tests.serving import ServerProcess, start_server, stop_server

REFUSAL = "deleting repositories is not allowed"
POLICIES = f"""\
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: envoy-tools
spec:
  evaluation:
    mode: Envoy
  matchConditions:
  - name: tool-calls
    expression: mcp.Method == mcp.ToolsCallMethod
  validations:
  - expression: >
      mcp.ToolCall.Name == "delete_repo"
        ? envoy.Denied(403).WithBody("{REFUSAL}").Response()
        : mcp.ToolCall.Name == "deploy" ? approval.Require("deploys need a person")
        : mcp.ToolCall.Name == "http_only" ? envoy.Denied(403).Response()
        : envoy.Allowed().Response()
---
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: http-tools
spec:
  evaluation:
    mode: HTTP
  matchConditions:
  - name: tool-calls
    expression: mcp.Method == mcp.ToolsCallMethod
  validations:
  - expression: >
      mcp.ToolCall.Name == "delete_repo"
        ? http.Denied("{REFUSAL}").Response()
        : mcp.ToolCall.Name == "deploy" ? approval.Require("deploys need a person")
        : http.Allowed().Response()
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    directory = tmp_path_factory.mktemp("mixed")
    (directory / "policies.yaml").write_text(POLICIES)
    audit = directory / "audit.jsonl"
    server = start_server(
        directory, "--workers", "2", "--audit-log", str(audit), "--admin-address", ""
    )
    yield server, audit
    stop_server(server)


def _body(tool: str, version: str = "2025-06-18") -> bytes:
    message = {
        "jsonrpc": "2.0",
        "id": 41,
        "method": "tools/call",
        "params": {"name": tool, "arguments": {"repo": "octo/demo"}},
    }
    if version:
        message["params"]["_meta"] = {"io.modelcontextprotocol/protocolVersion": version}
    return json.dumps(message).encode()


def _over_http(server: ServerProcess, body: bytes, partial: str = "false", **extra: str) -> Answer:
    headers = {
        "host": "mcp.example",
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-session-id": "session-1",
        "x-forwarded-proto": "https",
        "x-request-id": "req-http-1",
        "x-envoy-auth-partial-body": partial,
        **extra,
    }
    return send(server.http_authz_port, "POST", "/mcp", tuple(headers.items()), body)


def _over_grpc(server: ServerProcess, body: bytes) -> Any:
    check = check_request_from_shorthand({"body": body.decode(), "path": "/mcp"})
    with grpc.insecure_channel(server.target) as channel:
        return external_auth_pb2_grpc.AuthorizationStub(channel).Check(check, timeout=10)


def test_an_allowed_tool_call_is_allowed_over_both_transports(served) -> None:
    server, _ = served
    answer = _over_http(server, _body("get_issue"))
    assert (answer.status, answer.body) == (200, b"")
    assert _over_grpc(server, _body("get_issue")).status.code == 0


def test_a_denied_tool_call_gets_the_same_json_rpc_error_over_both_transports(served) -> None:
    server, _ = served
    answer = _over_http(server, _body("delete_repo"))
    response = _over_grpc(server, _body("delete_repo"))
    assert answer.status == response.denied_response.status.code == 403
    assert answer.headers["content-type"] == "application/json"
    expected = {"jsonrpc": "2.0", "id": 41, "error": {"code": -31403, "message": REFUSAL}}
    assert json.loads(answer.body) == json.loads(response.denied_response.body) == expected


def test_each_transport_asks_only_its_own_modes_policies(served) -> None:
    server, _ = served
    # Only the Envoy-mode policy refuses `http_only`.
    assert _over_grpc(server, _body("http_only")).status.code == 7
    assert _over_http(server, _body("http_only")).status == 200


def test_a_truncated_body_is_refused_before_any_policy(served) -> None:
    server, _ = served
    cut = _body("get_issue")[:30]
    answer = _over_http(server, cut, partial="true")
    assert answer.status == 413
    error = json.loads(answer.body)["error"]
    assert error["code"] == -32700 and error["message"].startswith("truncated")


def test_a_body_that_is_not_json_rpc_is_refused(served) -> None:
    server, _ = served
    answer = _over_http(server, b'{"not": "json-rpc"}')
    assert answer.status == 400
    assert json.loads(answer.body)["error"]["code"] == -32600


def test_an_approval_answer_is_never_a_2xx_over_http(served) -> None:
    server, _ = served
    body = _body("deploy", version="2025-11-25")
    response = _over_grpc(server, body)
    # Over gRPC the -32042 URL elicitation travels as a denial with HTTP status 200 ...
    assert response.status.code != 0 and response.denied_response.status.code == 200
    # ... over HTTP a 2xx would be an allow to the gateway: the same body comes with 403.
    answer = _over_http(server, body)
    assert answer.status == 403
    assert json.loads(answer.body)["error"]["code"] == -32042
    assert (
        json.loads(answer.body)["error"]["code"]
        == json.loads(response.denied_response.body)["error"]["code"]
    )


def test_keep_alive_connections_carry_many_checks(served) -> None:
    import http.client

    server, _ = served
    connection = http.client.HTTPConnection("127.0.0.1", server.http_authz_port, timeout=10)
    try:
        headers = (("host", "mcp.example"), ("content-type", "application/json"))
        for tool, status in [("get_issue", 200), ("delete_repo", 403)] * 5:
            answer = send(0, "POST", "/mcp", headers, _body(tool), connection=connection)
            assert answer.status == status
    finally:
        connection.close()


def test_metrics_and_audit_lines_name_the_transport(served) -> None:
    server, audit = served
    before = _transport_counts(server)
    _over_http(server, _body("delete_repo"), **{"x-request-id": "req-audited"})
    _over_grpc(server, _body("get_issue"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        after = _transport_counts(server)
        if after.get(("http", "deny"), 0) > before.get(("http", "deny"), 0) and after.get(
            ("grpc", "allow"), 0
        ) > before.get(("grpc", "allow"), 0):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"the transport counters did not move: {before} -> {after}")
    line = _audit_line(audit, "req-audited")
    assert line["transport"] == "http" and line["outcome"] == "deny"
    assert line["request"]["path"] == "/mcp" and line["mcp"]["messages"][0]["tool"] == "delete_repo"
    grpc_lines = [json.loads(text) for text in audit.read_text().splitlines()]
    assert any(entry["transport"] == "grpc" for entry in grpc_lines)


def _transport_counts(server: ServerProcess) -> dict[tuple[str, str], float]:
    counts = {}
    for family in text_string_to_metric_families(server.http("/metrics")[1]):
        for sample in family.samples:
            if sample.name == "authz_transport_decisions_total":
                counts[sample.labels["transport"], sample.labels["outcome"]] = sample.value
    return counts


def _audit_line(audit: Path, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if audit.exists():
            for text in audit.read_text().splitlines():
                line = json.loads(text)
                if line["request"]["request_id"] == request_id:
                    return line
        time.sleep(0.1)
    raise AssertionError(f"no audit line for {request_id}")
