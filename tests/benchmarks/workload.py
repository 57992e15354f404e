"""The request every benchmark sends: one realistic tools/call, as Envoy forwards it.

It is chosen to run most of the example policy set: a tools/call (method conditions), with
arguments (argument checks), an ``x-agent-id`` header (the header allow-list) and a bearer token
with a ``tools`` claim (``jwt.Decode`` in jwt-tools-claim).
"""

from __future__ import annotations

import json
import struct
import time

import jwt

from authz_server.envoy.adapter import CheckRequest

DEMO_KEY = "demo-shared-key-change-me-32-bytes-min"  # the key in policies/jwt-tools-claim.yaml
TOOL = "create_pull_request"


def token() -> str:
    claims = {
        "sub": "release-bot",
        "tools": ["create_pull_request", "get_pull_request", "list_pull_requests"],
        "exp": int(time.time()) + 30 * 24 * 3600,
    }
    return jwt.encode(claims, DEMO_KEY, algorithm="HS256")


def body() -> bytes:
    message = {
        "jsonrpc": "2.0",
        "id": 42,
        "method": "tools/call",
        "params": {
            "name": TOOL,
            "arguments": {
                "owner": "acme",
                "repo": "payments-api",
                "title": "Retry idempotent webhooks",
                "head": "fix/webhook-retries",
                "base": "main",
                "body": "Retries webhook deliveries with exponential backoff. " * 4,
                "draft": False,
            },
            "_meta": {"progressToken": 42},
        },
    }
    return json.dumps(message, separators=(",", ":")).encode()


def check_request() -> CheckRequest:
    payload = body()
    request = CheckRequest()
    attrs = request.attributes
    attrs.source.address.socket_address.address = "10.1.2.3"
    attrs.source.address.socket_address.port_value = 53211
    attrs.destination.address.socket_address.address = "10.1.0.9"
    attrs.destination.address.socket_address.port_value = 8080
    http = attrs.request.http
    http.id = "11739583046023948261"
    http.method = "POST"
    http.path = "/mcp"
    http.host = "github-mcp.internal"
    http.scheme = "http"
    http.protocol = "HTTP/1.1"
    http.size = len(payload)
    http.raw_body = payload
    http.headers.update(
        {
            ":authority": "github-mcp.internal",
            ":method": "POST",
            ":path": "/mcp",
            ":scheme": "http",
            "accept": "application/json, text/event-stream",
            "authorization": f"Bearer {token()}",
            "content-length": str(len(payload)),
            "content-type": "application/json",
            "mcp-protocol-version": "2025-06-18",
            "mcp-session-id": "3f1c2b1e-8f6a-4c55-9b7e-2d8d1f0a6b31",
            "user-agent": "python-httpx/0.28.1",
            "x-agent-id": "release-bot",
            "x-envoy-auth-partial-body": "false",
            "x-forwarded-proto": "http",
            "x-request-id": "6a1f8a4e-0b7c-4d1b-9d0e-3c2b1a0f9e8d",
        }
    )
    return request


def grpc_frame() -> bytes:
    """The HTTP/2 DATA payload of one unary gRPC call (uncompressed length-prefixed message)."""
    message = check_request().SerializeToString()
    return b"\x00" + struct.pack(">I", len(message)) + message
