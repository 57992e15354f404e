"""The request every benchmark sends: one realistic tools/call, as Envoy forwards it.

It is chosen to run most of the example policy set: a tools/call (method conditions), with
arguments (argument checks), an ``x-agent-id`` header (the header allow-list) and a bearer
access token from the example issuer with a ``tools`` claim (the identity stage verifies it;
identity-tools-claim reads the claim). The tool only reads: a write tool would need a DPoP proof,
which is single use and cannot be replayed by a load generator.
"""

from __future__ import annotations

import json
import struct
import time
import uuid
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization

from authz_server.envoy.adapter import CheckRequest

# The demo issuer key whose public half is in policies/jwks.json (policies/authentication.yaml).
DEMO_KEY = Path(__file__).resolve().parents[2] / "examples/identity/keys/issuer-es256.pem"
DEMO_KID = "demo-es256"
TOOL = "get_pull_request"


def token() -> str:
    key = serialization.load_pem_private_key(DEMO_KEY.read_bytes(), password=None)
    now = int(time.time())
    claims = {
        "iss": "https://idp.example.com",
        "aud": "https://mcp.example.com/mcp",
        "sub": "release-bot",
        "client_id": "release-bot",
        "iat": now,
        "exp": now + 30 * 24 * 3600,
        "jti": str(uuid.uuid4()),
        "tools": ["create_pull_request", "get_pull_request", "list_pull_requests"],
    }
    headers = {"typ": "at+jwt", "kid": DEMO_KID}
    return jwt.encode(claims, key, algorithm="ES256", headers=headers)


def body() -> bytes:
    message = {
        "jsonrpc": "2.0",
        "id": 42,
        "method": "tools/call",
        "params": {
            "name": TOOL,
            "arguments": {"owner": "acme", "repo": "payments-api", "pullNumber": 1842},
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
