"""Lists are filtered for the caller who asked: with credentials required and tool calls allowed
only to DPoP callers (``identity_policies/``), a DPoP caller's list keeps the tools and a bearer
caller's list loses them all, through ext_proc (the caller of the stream's request phase, whose
proof is claimed once) and through ExtMcp (the caller from the processor's metadata).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import grpc
import pytest
from conftest import IdentityPolicies, state_environment
from google.protobuf import struct_pb2
from listing_wire import body_of, drive, exchange, names, result_of

from authz_server.envoy.pb.agentgateway.dev.ext_mcp import ext_mcp_pb2 as pb
from authz_server.envoy.pb.agentgateway.dev.ext_mcp import ext_mcp_pb2_grpc
from tests.serving import ServerProcess, start_server, stop_server

NAME = "2026-07-28/tools/list#1"
# Beside identity_policies/: any authenticated caller may ask for the lists.
ALLOW_LISTS = """
apiVersion: policies.kyverno.io/v1
kind: ValidatingPolicy
metadata:
  name: lists
spec:
  evaluation:
    mode: Envoy
  matchConditions:
  - name: list
    expression: mcp.Method.endsWith("/list")
  validations:
  - expression: envoy.Allowed().Response()
"""
ALL_TOOLS = ["list_issues", "create_issue", "hidden_delete_repository"]


@pytest.fixture(scope="module")
def server(
    identity_policies: IdentityPolicies, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    state = tmp_path_factory.mktemp("state")
    (identity_policies.directory / "lists.yaml").write_text(ALLOW_LISTS)
    running = start_server(identity_policies.directory, env=state_environment(state))
    yield running
    stop_server(running)


def _with(headers: dict[str, str], label: str) -> dict:
    case = exchange(NAME, label=label)
    case["request_headers"] = [
        [k, v] for k, v in case["request_headers"] if k not in ("host", ":authority")
    ] + [[":authority", "mcp.example.com"], *map(list, headers.items())]
    return case


def test_ext_proc_filters_for_the_caller_of_the_request_phase(
    identity_policies: IdentityPolicies, server: ServerProcess
) -> None:
    bound = identity_policies.bound_token()
    cases = [
        _with(identity_policies.dpop(bound), "dpop"),
        _with({"authorization": f"Bearer {identity_policies.bearer_token()}"}, "bearer"),
        _with({}, "anonymous"),
    ]
    results = drive(server.target, cases)
    dpop = result_of(body_of(results["dpop"]), "application/json")
    assert names(dpop) == ALL_TOOLS  # the proof was claimed once, by the request phase
    bearer = result_of(body_of(results["bearer"]), "application/json")
    assert names(bearer) == []  # no tools/call of a bearer caller is ever allowed
    assert results["anonymous"]["request_immediate"]["status"] == 401


def test_ext_mcp_filters_for_the_caller_in_the_processors_metadata(
    identity_policies: IdentityPolicies, server: ServerProcess
) -> None:
    from listing_wire import recorded

    raw = base64.b64decode(recorded()[NAME]["response"]["chunks"][0])
    listed = json.dumps(json.loads(raw)["result"]).encode()
    bound = identity_policies.bound_token()
    channel = grpc.insecure_channel(server.target)
    stub = ext_mcp_pb2_grpc.ExtMcpStub(channel)
    seen = {}
    try:
        for label, headers in (
            ("dpop", identity_policies.dpop(bound)),
            ("bearer", {"authorization": f"Bearer {identity_policies.bearer_token()}"}),
        ):
            metadata = struct_pb2.Struct()
            metadata.update({"headers": {**headers, "host": "mcp.example.com"}, "path": "/mcp"})
            response = pb.McpResponse(
                method="tools/list", metadata_context=metadata, mcp_response=listed
            )
            seen[label] = stub.CheckResponse(response, timeout=10)
    finally:
        channel.close()
    assert seen["dpop"].WhichOneof("result") == "pass"  # nothing to hide for this caller
    assert json.loads(seen["bearer"].mutated)["tools"] == []
