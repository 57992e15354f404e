"""An Envoy stand-in built only from the official Envoy protos (PyPI xds-protos).

Runs in its own interpreter (the wire virtual environment): the official modules and the
project's generated ones register the same proto names and must never share a process. It sends
each scenario as Envoy would and prints what came back, decoded with the official types, as one
JSON document on stdout.

Usage: python official_client.py HOST:PORT SCENARIO [SCENARIO ...]

A scenario ``call:LABEL`` sends a tools/call with the extra request headers that stdin's JSON
object gives under LABEL (credentials: the test mints tokens and proofs, which this interpreter
cannot, and stdin keeps them out of process listings).
"""

from __future__ import annotations

import json
import sys

import grpc
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

TOOLS_CALL = (
    '{"jsonrpc":"2.0","id":7,"method":"tools/call",'
    '"params":{"name":"%s","arguments":{"owner":"acme","repo":"api"}}}'
)


def check_request(
    tool: str, *, raw: bool = False, padding: int = 0, extra: dict[str, str] | None = None
) -> object:
    request = external_auth_pb2.CheckRequest()
    attrs = request.attributes
    attrs.source.address.socket_address.address = "127.0.0.1"
    attrs.source.address.socket_address.port_value = 40000
    http = attrs.request.http
    body = TOOLS_CALL % tool
    if padding:
        body = body[:-1] + ',"pad":"' + "p" * padding + '"}'
    http.id = "1"
    http.method = "POST"
    http.path = "/mcp"
    http.host = "mcp.example"
    http.scheme = "http"
    http.protocol = "HTTP/1.1"
    http.headers.update(
        {
            ":authority": "mcp.example",
            ":method": "POST",
            ":path": "/mcp",
            ":scheme": "http",
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2025-06-18",
            "x-envoy-auth-partial-body": "false",
            "content-length": str(len(body.encode())),
            **(extra or {}),
        }
    )
    http.size = len(body.encode())
    if raw:
        http.raw_body = body.encode()
    else:
        http.body = body
    return request


def as_dict(message: object) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def main() -> None:
    target, scenarios = sys.argv[1], sys.argv[2:]
    channel = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 1 << 24)])
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    raw_check = channel.unary_unary(
        "/envoy.service.auth.v3.Authorization/Check",
        request_serializer=lambda b: b,
        response_deserializer=external_auth_pb2.CheckResponse.FromString,
    )
    headers = json.load(sys.stdin) if any(s.startswith("call:") for s in scenarios) else {}
    results: dict[str, object] = {}
    for scenario in scenarios:
        try:
            if scenario.startswith("call:"):
                extra = headers[scenario.removeprefix("call:")]
                request = check_request("get_issue", extra=extra)
                results[scenario] = as_dict(stub.Check(request, timeout=10))
                continue
            results[scenario] = run(scenario, stub, raw_check, channel)
        except grpc.RpcError as err:
            results[scenario] = {"rpc_error": err.code().name}
    json.dump(results, sys.stdout)


def run(scenario: str, stub, raw_check, channel) -> object:  # type: ignore[no-untyped-def]
    if scenario == "allow":
        return as_dict(stub.Check(check_request("create_pull_request"), timeout=10))
    if scenario == "deny":
        return as_dict(stub.Check(check_request("merge_pull_request"), timeout=10))
    if scenario == "raw_body_deny":
        return as_dict(stub.Check(check_request("merge_pull_request", raw=True), timeout=10))
    if scenario == "one_mib_allow":
        request = check_request("create_pull_request", raw=True, padding=1024 * 1024)
        return as_dict(stub.Check(request, timeout=30))
    if scenario == "unknown_fields":
        # Field numbers this schema does not define, as a newer Envoy might send: one at the top
        # level (field 99, varint) and one inside HttpRequest (field 50, string).
        request = check_request("create_pull_request")
        request.attributes.request.http.ClearField("body")
        http_bytes = request.attributes.request.http.SerializeToString()
        body = (TOOLS_CALL % "create_pull_request").encode()
        http_bytes += b"\x5a" + _varint(len(body)) + body  # field 11 (body)
        http_bytes += b"\x92\x03\x03new"  # field 50, length-delimited
        attr = request.attributes
        attr.request.ClearField("http")
        request_bytes = attr.request.SerializeToString() + b"\x12" + _varint(len(http_bytes))
        request_bytes += http_bytes
        attr.ClearField("request")
        attrs_bytes = attr.SerializeToString() + b"\x22" + _varint(len(request_bytes))
        attrs_bytes += request_bytes
        payload = b"\x0a" + _varint(len(attrs_bytes)) + attrs_bytes + b"\x98\x06\x01"
        return as_dict(raw_check(payload, timeout=10))
    if scenario == "garbage":
        return as_dict(raw_check(b"\xff\xff\xff\xff\xff\x01 not a protobuf", timeout=10))
    if scenario == "health":
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status
        named = health.Check(
            health_pb2.HealthCheckRequest(service="envoy.service.auth.v3.Authorization"),
            timeout=5,
        ).status
        name = health_pb2.HealthCheckResponse.ServingStatus.Name
        return {"": name(status), "envoy.service.auth.v3.Authorization": name(named)}
    raise SystemExit(f"unknown scenario {scenario}")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


if __name__ == "__main__":
    main()
