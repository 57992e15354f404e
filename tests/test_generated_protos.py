"""The committed generated code describes exactly the messages in proto/.

Descriptors are compared rather than source text, so a newer grpcio-tools that formats the
generated files differently does not fail the test, while any field, number or type drift does.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def _compiled(tmp_path: Path) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    sources = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    out = tmp_path / "set.pb"
    include = Path(protoc.__file__).parent / "_proto"
    assert (
        protoc.main(
            ["protoc", f"-I{PROTO_DIR}", f"-I{include}", f"--descriptor_set_out={out}", *sources]
        )
        == 0
    )
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    for file in files:
        _drop_json_names(file.message_type)
    return {f.name: f for f in files}


def _drop_json_names(messages: list[descriptor_pb2.DescriptorProto]) -> None:
    # protoc adds derived json_name values to descriptor sets but not to embedded descriptors.
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _drop_json_names(message.nested_type)


def test_generated_code_matches_proto_sources(tmp_path: Path) -> None:
    compiled = _compiled(tmp_path)
    assert compiled, "no .proto files found"
    for name, expected in compiled.items():
        module = importlib.import_module(
            "authz_server.envoy.pb." + name.removesuffix(".proto").replace("/", ".") + "_pb2"
        )
        committed = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        assert committed == expected, f"{name}: generated code is stale; run `make proto`"


def test_wire_names_are_upstreams() -> None:
    from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2

    service = external_auth_pb2.DESCRIPTOR.services_by_name["Authorization"]
    assert service.full_name == "envoy.service.auth.v3.Authorization"
    assert service.methods_by_name["Check"].input_type.full_name == (
        "envoy.service.auth.v3.CheckRequest"
    )
    response = external_auth_pb2.CheckResponse.DESCRIPTOR
    assert {f.name: f.number for f in response.fields} == {
        "status": 1,
        "denied_response": 2,
        "ok_response": 3,
        "dynamic_metadata": 4,
        "error_response": 5,
    }


def test_ext_proc_wire_names_are_upstreams() -> None:
    from authz_server.envoy.pb.envoy.service.ext_proc.v3 import external_processor_pb2

    service = external_processor_pb2.DESCRIPTOR.services_by_name["ExternalProcessor"]
    assert service.full_name == "envoy.service.ext_proc.v3.ExternalProcessor"
    process = service.methods_by_name["Process"]
    assert process.client_streaming and process.server_streaming
    assert process.input_type.full_name == "envoy.service.ext_proc.v3.ProcessingRequest"


# agentgateway publishes no Python package: the field table of the released proto (v1.3.0 to
# v1.4.1) is the contract, pinned here field by field.
EXT_MCP_FIELDS = {
    "McpRequest": {
        "service_names": 1,
        "method": 2,
        "metadata_context": 3,
        "mcp_request": 4,
        "headers": 5,
    },
    "McpResponse": {"service_names": 1, "method": 2, "metadata_context": 3, "mcp_response": 4},
    "McpRequestResult": {"pass": 1, "mutated": 2, "error": 3, "header_mutation": 4, "metadata": 5},
    "McpResponseResult": {"pass": 1, "mutated": 2, "error": 3},
    "HeaderMutation": {"set": 1, "remove": 2},
    "McpHeader": {"key": 1, "value": 2},
    "Pass": {},
    "AuthorizationError": {"code": 1, "reason": 2, "mcp_error": 3},
}


def test_ext_mcp_matches_agentgateways_released_proto() -> None:
    from google.protobuf.descriptor import FieldDescriptor

    from authz_server.envoy.pb.agentgateway.dev.ext_mcp import ext_mcp_pb2

    service = ext_mcp_pb2.DESCRIPTOR.services_by_name["ExtMcp"]
    assert service.full_name == "agentgateway.dev.ext_mcp.ExtMcp"
    assert {m.name: (m.input_type.name, m.output_type.name) for m in service.methods} == {
        "CheckRequest": ("McpRequest", "McpRequestResult"),
        "CheckResponse": ("McpResponse", "McpResponseResult"),
    }
    messages = ext_mcp_pb2.DESCRIPTOR.message_types_by_name
    assert {name: {f.name: f.number for f in messages[name].fields} for name in messages} == (
        EXT_MCP_FIELDS
    )
    bytes_fields = {
        (name, f.name)
        for name, message in messages.items()
        for f in message.fields
        if f.type == FieldDescriptor.TYPE_BYTES
    }
    assert bytes_fields == {
        ("McpRequest", "mcp_request"),
        ("McpResponse", "mcp_response"),
        ("McpRequestResult", "mutated"),
        ("McpResponseResult", "mutated"),
        ("McpHeader", "value"),
        ("AuthorizationError", "mcp_error"),
    }
    code = messages["AuthorizationError"].enum_types_by_name["Code"]
    assert {v.name: v.number for v in code.values} == {
        "UNKNOWN": 0,
        "PERMISSION_DENIED": 1,
        "RESOURCE_EXHAUSTED": 2,
        "INVALID": 3,
    }
