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
