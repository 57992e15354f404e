"""agentgateway's ExtMcp hook against a real ``authz-server serve``: calls judged as Check judges
them, list results filtered, denials as the errors agentgateway turns into JSON-RPC codes.

agentgateway publishes no Python stubs, so the client uses the project's, whose field numbers
tests/test_generated_protos.py pins to the released proto's table.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import struct_pb2
from listing_wire import LISTING_POLICIES, recorded

from authz_server.envoy.pb.agentgateway.dev.ext_mcp import ext_mcp_pb2 as pb
from authz_server.envoy.pb.agentgateway.dev.ext_mcp import ext_mcp_pb2_grpc
from tests.serving import ServerProcess, start_server, stop_server

Code = pb.AuthorizationError.Code
HEADERS = [
    (":method", "POST"),
    (":path", "/mcp"),
    ("content-type", "application/json"),
    ("mcp-protocol-version", "2026-07-28"),
]


@pytest.fixture(scope="module")
def stub() -> Iterator[ext_mcp_pb2_grpc.ExtMcpStub]:
    server: ServerProcess = start_server(LISTING_POLICIES)
    channel = grpc.insecure_channel(server.target)
    try:
        yield ext_mcp_pb2_grpc.ExtMcpStub(channel)
    finally:
        channel.close()
        stop_server(server)


def call(name: str, *headers: tuple[str, str]) -> pb.McpRequest:
    params = json.dumps({"name": name, "arguments": {"repo": "octo/widgets"}}).encode()
    return pb.McpRequest(
        service_names=["github"],
        method="tools/call",
        mcp_request=params,
        headers=[pb.McpHeader(key=k, value=v.encode()) for k, v in (*HEADERS, *headers)],
    )


def test_an_allowed_call_passes_with_the_decisions_headers_and_metadata(
    stub: ext_mcp_pb2_grpc.ExtMcpStub,
) -> None:
    # The client's Mcp-Name header names the tool as the gateway shows it (muxed): the
    # gateway, not the authorizer, matches it to the body.
    result = stub.CheckRequest(call("list_issues", ("mcp-name", "github_list_issues")), timeout=10)
    assert result.WhichOneof("result") == "pass"
    (header,) = result.header_mutation.set
    assert (header.key, header.value) == ("x-authz-policy", b"hidden-tools")
    assert result.metadata["policy"] == "hidden-tools" and result.metadata["decision_id"]


def test_a_denied_call_is_a_permission_error_with_the_policys_message(
    stub: ext_mcp_pb2_grpc.ExtMcpStub,
) -> None:
    result = stub.CheckRequest(call("hidden_delete_repository"), timeout=10)
    error = result.error
    assert error.code == Code.PERMISSION_DENIED  # agentgateway: JSON-RPC -32001
    assert error.reason == "not for agents"
    data = json.loads(error.mcp_error)
    assert data["code"] == -31403 and data["decision_id"]


def test_params_that_are_not_json_are_invalid(stub: ext_mcp_pb2_grpc.ExtMcpStub) -> None:
    request = call("list_issues")
    request.mcp_request = b'{"name": "list_issues", '
    result = stub.CheckRequest(request, timeout=10)
    assert result.error.code == Code.INVALID  # agentgateway: JSON-RPC -32600


def test_a_merged_tool_list_loses_the_hidden_tools(stub: ext_mcp_pb2_grpc.ExtMcpStub) -> None:
    raw = base64.b64decode(recorded()["2026-07-28/tools/list#1"]["response"]["chunks"][0])
    listed = json.loads(raw)["result"]
    metadata = struct_pb2.Struct()
    metadata.update({"headers": {"authorization": "Bearer not-checked-here"}, "path": "/mcp"})
    response = pb.McpResponse(
        service_names=["github", "jira"],
        method="tools/list",
        metadata_context=metadata,
        mcp_response=json.dumps(listed).encode(),
    )
    result = stub.CheckResponse(response, timeout=10)
    assert result.WhichOneof("result") == "mutated"
    mutated = json.loads(result.mutated)
    assert [t["name"] for t in mutated["tools"]] == ["list_issues", "create_issue"]
    assert mutated["nextCursor"] == "page-2" and mutated["resultType"] == "complete"


def test_results_that_are_no_list_pass(stub: ext_mcp_pb2_grpc.ExtMcpStub) -> None:
    response = pb.McpResponse(method="tools/call", mcp_response=b'{"content":[]}')
    assert stub.CheckResponse(response, timeout=10).WhichOneof("result") == "pass"


def test_an_unreadable_list_fails_closed(stub: ext_mcp_pb2_grpc.ExtMcpStub) -> None:
    response = pb.McpResponse(method="tools/list", mcp_response=b'{"tools": [')
    assert stub.CheckResponse(response, timeout=10).error.code == Code.UNKNOWN
