"""``--dispatch``: a real ``serve`` process deciding on its one decision thread (``thread``) or on
the gRPC and HTTP threads that received each call (``inline``). Either way every caller must get
the answer to its own request, with its own decision id and audit line, while many calls from
several threads and both transports are decided at once; ext_proc must judge and filter as
before.

The policies echo the called tool's name into the answer (a header when allowed, the body when
refused), so an answer given to the wrong caller, or built from another call's state, shows.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
from listing_wire import LISTING_POLICIES, body_of, drive, exchange

from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2_grpc
from authz_server.policy.testing import check_request_from_shorthand
from tests.httpauthz.client import send
from tests.serving import ServerProcess, start_server, stop_server

POLICIES = """\
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: echo-envoy
spec:
  evaluation:
    mode: Envoy
  matchConditions:
  - name: tool-calls
    expression: mcp.Method == mcp.ToolsCallMethod
  validations:
  - expression: >
      mcp.ToolCall.Name.startsWith("delete_")
        ? envoy.Denied(403).WithBody("refused " + mcp.ToolCall.Name).Response()
        : envoy.Allowed().WithHeader("x-tool", mcp.ToolCall.Name).Response()
---
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: echo-http
spec:
  evaluation:
    mode: HTTP
  matchConditions:
  - name: tool-calls
    expression: mcp.Method == mcp.ToolsCallMethod
  validations:
  - expression: >
      mcp.ToolCall.Name.startsWith("delete_")
        ? http.Denied("refused " + mcp.ToolCall.Name).Response()
        : http.Allowed().Response()
"""
CALLS = 60
THREADS = 12


@pytest.fixture(scope="module", params=["thread", "inline"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Path]]:
    directory = tmp_path_factory.mktemp(f"dispatch-{request.param}")
    (directory / "policies.yaml").write_text(POLICIES)
    audit = directory / "audit.jsonl"
    server = start_server(
        directory,
        "--dispatch",
        request.param,
        "--audit-log",
        str(audit),
        "--admin-address",
        "",
        "--max-worker-rss-mib",
        "0",  # one process: the dispatch under test decides every call
    )
    yield server, audit
    stop_server(server)


def _body(tool: str, call_id: int) -> bytes:
    message = {
        "jsonrpc": "2.0",
        "id": call_id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": {"repo": "octo/demo"}},
    }
    return json.dumps(message).encode()


def _tool(n: int) -> str:
    return f"delete_{n}" if n % 3 == 0 else f"read_{n}"


def _over_grpc(channel: grpc.Channel, n: int) -> tuple[str, int, str, str]:
    """(transport, status, the echoed tool, the decision id)."""
    check = check_request_from_shorthand({"body": _body(_tool(n), n).decode(), "path": "/mcp"})
    response = external_auth_pb2_grpc.AuthorizationStub(channel).Check(check, timeout=30)
    decision_id = response.dynamic_metadata["decision_id"]
    if response.status.code == 0:
        headers = {h.header.key: h.header.value for h in response.ok_response.headers}
        return "grpc", 200, headers.get("x-tool", ""), decision_id
    denied = response.denied_response
    error = json.loads(denied.body)
    assert error["id"] == n
    return "grpc", denied.status.code, error["error"]["message"], decision_id


def _over_http(server: ServerProcess, n: int) -> tuple[str, int, str, str]:
    headers = (
        ("host", "mcp.example"),
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("x-envoy-auth-partial-body", "false"),
    )
    answer = send(server.http_authz_port, "POST", "/mcp", headers, _body(_tool(n), n))
    decision_id = answer.headers.get("x-authz-decision-id", "")
    if answer.status == 200:
        return "http", 200, _tool(n), decision_id  # HTTP mode has no header to echo into
    error = json.loads(answer.body)
    assert error["id"] == n
    return "http", answer.status, error["error"]["message"], decision_id


def _expected(n: int) -> tuple[int, str]:
    tool = _tool(n)
    return (403, f"refused {tool}") if tool.startswith("delete_") else (200, tool)


def test_concurrent_calls_from_both_transports_each_get_their_own_answer(
    served: tuple[ServerProcess, Path],
) -> None:
    server, audit = served
    channels = [grpc.insecure_channel(server.target) for _ in range(3)]
    try:
        with futures.ThreadPoolExecutor(THREADS) as pool:
            grpc_answers = {
                n: pool.submit(_over_grpc, channels[n % len(channels)], n) for n in range(CALLS)
            }
            http_answers = {n: pool.submit(_over_http, server, n) for n in range(CALLS, CALLS + 20)}
            answers = {n: f.result(60) for n, f in (grpc_answers | http_answers).items()}
    finally:
        for channel in channels:
            channel.close()
    for n, (transport, status, echoed, _) in answers.items():
        assert (status, echoed) == _expected(n), (transport, n)
    ids = [answer[3] for answer in answers.values()]
    assert len(set(ids)) == len(answers) and all(ids)
    # One audit line per decision, each with its own call's tool.
    deadline = time.monotonic() + 10
    while True:
        lines = [json.loads(line) for line in audit.read_text().splitlines() if line]
        by_id = {line["decision_id"]: line for line in lines}
        if all(i in by_id for i in ids) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(lines) == len(by_id) == len(answers)
    for n, (transport, _, _, decision_id) in answers.items():
        line = by_id[decision_id]
        assert line["transport"] == transport, n
        assert [m["tool"] for m in line["mcp"]["messages"]] == [_tool(n)], n


@pytest.fixture(scope="module")
def listing_inline() -> Iterator[ServerProcess]:
    server = start_server(LISTING_POLICIES, "--dispatch", "inline")
    yield server
    stop_server(server)


def test_ext_proc_filters_lists_and_refuses_calls_when_deciding_inline(
    listing_inline: ServerProcess,
) -> None:
    listed = exchange("2026-07-28/tools/list#1", label="list")
    call = exchange("2026-07-28/tools/call#1", label="call")
    hidden = "hidden_delete_repository"
    body = base64.b64decode(call["request_body"]).replace(b"list_issues", hidden.encode())
    call["request_body"] = base64.b64encode(body).decode()
    call["request_headers"] = [
        [k, str(len(body)) if k == "content-length" else hidden if k == "mcp-name" else v]
        for k, v in call["request_headers"]
    ]
    results = drive(listing_inline.target, [listed, call])
    assert b"hidden_" not in body_of(results["list"])
    assert b"list_issues" in body_of(results["list"])
    refused: dict[str, Any] = results["call"]["request_immediate"]
    assert refused["status"] == 403
    assert json.loads(base64.b64decode(refused["body"]))["error"]["message"] == "not for agents"
