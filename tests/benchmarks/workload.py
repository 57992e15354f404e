"""The requests the benchmarks send, as Envoy forwards them.

:func:`check_request` without arguments is the typical request every benchmark has sent so far:
one realistic tools/call chosen to run most of the example policy set: a tools/call (method
conditions), with arguments (argument checks), an ``x-agent-id`` header (the header allow-list)
and a bearer access token from the example issuer with a ``tools`` claim (the identity stage
verifies it; identity-tools-claim reads the claim).

:data:`SHAPES` is the mixed workload of ``make bench`` (issue 18): the typical request beside the
error paths and the other kinds of calls, each with its assumed share of the traffic. A load
generator replays one body per run, so each shape is one fixed frame; see ``frame``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from authz_server.envoy.adapter import CheckRequest

ROOT = Path(__file__).resolve().parents[2]
# The demo issuer key whose public half is in policies/jwks.json (policies/authentication.yaml).
DEMO_KEY = ROOT / "examples/identity/keys/issuer-es256.pem"
DEMO_KID = "demo-es256"
TOOL = "get_pull_request"
RELEASE_TOOLS = ("create_pull_request", "get_pull_request", "list_pull_requests")
# policies/authentication.yaml's dpop.origin: the URL a proof signs is this plus the path.
DPOP_URL = "https://mcp.example.com/mcp"


def _demo_key() -> Any:
    return serialization.load_pem_private_key(DEMO_KEY.read_bytes(), password=None)


def token(
    *,
    tools: tuple[str, ...] | None = RELEASE_TOOLS,
    lifetime: int = 30 * 24 * 3600,
    key: Any = None,
    claims: Mapping[str, Any] | None = None,
) -> str:
    """An access token of the example issuer for release-bot. ``lifetime`` below zero makes an
    expired one; ``key`` signs with another key under the demo key's kid (a bad signature)."""
    now = int(time.time())
    body: dict[str, Any] = {
        "iss": "https://idp.example.com",
        "aud": "https://mcp.example.com/mcp",
        "sub": "release-bot",
        "client_id": "release-bot",
        "iat": now if lifetime > 0 else now + lifetime - 3600,
        "exp": now + lifetime,
        "jti": str(uuid.uuid4()),
    }
    if tools is not None:
        body["tools"] = list(tools)
    body.update(claims or {})
    headers = {"typ": "at+jwt", "kid": DEMO_KID}
    return jwt.encode(body, key or _demo_key(), algorithm="ES256", headers=headers)


def tool_call(name: str = TOOL, arguments: Mapping[str, Any] | None = None) -> bytes:
    if arguments is None:
        arguments = {"owner": "acme", "repo": "payments-api", "pullNumber": 1842}
    message = {
        "jsonrpc": "2.0",
        "id": 42,
        "method": "tools/call",
        "params": {"name": name, "arguments": dict(arguments), "_meta": {"progressToken": 42}},
    }
    return json.dumps(message, separators=(",", ":")).encode()


def body() -> bytes:
    return tool_call()


def check_request(
    payload: bytes | None = None,
    authorization: str | None = "",
    agent: str | None = "release-bot",
    extra: Mapping[str, str] | None = None,
) -> CheckRequest:
    """The CheckRequest Envoy sends for ``payload`` (default: the typical tools/call).
    ``authorization`` "" is a fresh valid bearer token, None no header; ``agent`` None drops
    the x-agent-id header."""
    payload = body() if payload is None else payload
    if authorization == "":
        authorization = f"Bearer {token()}"
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
    headers = {
        ":authority": "github-mcp.internal",
        ":method": "POST",
        ":path": "/mcp",
        ":scheme": "http",
        "accept": "application/json, text/event-stream",
        "content-length": str(len(payload)),
        "content-type": "application/json",
        "mcp-protocol-version": "2025-06-18",
        "mcp-session-id": "3f1c2b1e-8f6a-4c55-9b7e-2d8d1f0a6b31",
        "user-agent": "python-httpx/0.28.1",
        "x-envoy-auth-partial-body": "false",
        "x-forwarded-proto": "http",
        "x-request-id": "6a1f8a4e-0b7c-4d1b-9d0e-3c2b1a0f9e8d",
    }
    if authorization is not None:
        headers["authorization"] = authorization
    if agent is not None:
        headers["x-agent-id"] = agent
    headers.update(extra or {})
    http.headers.update(headers)
    return request


def changed(
    check: CheckRequest,
    headers: Mapping[str, str | None] | None = None,
    body: bytes | None = None,
) -> CheckRequest:
    """A copy of ``check`` with ``headers`` set (None: removed) and, given ``body``, that body
    (its size and content-length with it)."""
    copy = CheckRequest()
    copy.CopyFrom(check)
    http = copy.attributes.request.http
    for name, value in (headers or {}).items():
        if value is None:
            http.headers.pop(name, None)
        else:
            http.headers[name] = value
    if body is not None:
        http.raw_body = body
        http.size = len(body)
        http.headers["content-length"] = str(len(body))
    return copy


def grpc_frame(request: CheckRequest | None = None) -> bytes:
    """The HTTP/2 DATA payload of one unary gRPC call (uncompressed length-prefixed message)."""
    message = (request or check_request()).SerializeToString()
    return b"\x00" + struct.pack(">I", len(message)) + message


def _mint() -> ModuleType:
    """examples/identity/mint.py (not a package): its DPoP helpers and the demo agent key."""
    spec = importlib.util.spec_from_file_location(
        "authz_example_mint", ROOT / "examples/identity/mint.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dpop_request() -> CheckRequest:
    """A DPoP-bound token of the demo issuer with a fresh proof of the demo agent key. The
    proof is single use: replayed (as a load generator does), every request after the first is
    refused as ``dpop_replayed`` (by the process's replay cache, without a signature check)."""
    mint = _mint()
    jkt = mint.thumbprint(mint.public_jwk(mint.load_key(mint.AGENT_KEY)))
    access = token(claims={"cnf": {"jkt": jkt}})
    proof = mint.mint_proof(access, "POST", DPOP_URL, None)
    return check_request(authorization=f"DPoP {access}", extra={"dpop": proof})


def _bad_signature() -> CheckRequest:
    stranger = ec.generate_private_key(ec.SECP256R1())
    return check_request(authorization=f"Bearer {token(key=stranger)}")


@dataclass(frozen=True)
class Shape:
    """One kind of request in the mixed workload. ``build`` is called before each run, so
    time-bound parts (a DPoP proof's iat) are fresh; ``expect`` is the HTTP status the example
    policies answer (0: allowed), checked once before the load runs."""

    name: str
    share: float
    what: str
    build: Callable[[], CheckRequest]
    expect: int


# The shares are an assumption about gateway traffic (most calls are a valid agent's allowed
# call; the error paths are a few percent each), printed with every result.
SHAPES: tuple[Shape, ...] = (
    Shape(
        "valid",
        0.69,
        "valid bearer token, allowed get_pull_request (the typical request)",
        check_request,
        0,
    ),
    Shape(
        "args-checked",
        0.10,
        "read_file with a path: filesystem-paths cleans and matches the path argument",
        lambda: check_request(
            tool_call("read_file", {"path": "/srv/data/./reports/q3.txt"}),
            authorization=f"Bearer {token(tools=('read_file', 'list_directory'))}",
            agent="files-bot",
        ),
        0,
    ),
    Shape(
        "denied",
        0.05,
        "merge_pull_request: github-no-merge, agent-allow-list, the tools "
        "claim and identity-dpop-for-writes all refuse it",
        lambda: check_request(
            tool_call(
                "merge_pull_request", {"owner": "acme", "repo": "payments-api", "pullNumber": 1842}
            )
        ),
        403,
    ),
    Shape(
        "missing",
        0.04,
        "no credential (anonymous; required: false lets the policies decide)",
        lambda: check_request(authorization=None),
        0,
    ),
    Shape(
        "malformed",
        0.02,
        '"Bearer x": refused by identity-refused-credentials',
        lambda: check_request(authorization="Bearer x"),
        401,
    ),
    Shape(
        "expired",
        0.04,
        "a correctly signed token whose exp has passed",
        lambda: check_request(authorization=f"Bearer {token(lifetime=-600)}"),
        401,
    ),
    Shape(
        "bad-signature",
        0.02,
        "a token signed by another key under the demo kid",
        _bad_signature,
        401,
    ),
    Shape(
        "dpop-replay",
        0.02,
        "a DPoP-bound token with a proof; replayed, so after the first "
        "request it is refused as dpop_replayed",
        dpop_request,
        401,
    ),
    Shape(
        "policy-error",
        0.01,
        "read_file with a path that is not a string: filesystem-paths fails at run time "
        "(failurePolicy Fail) and alone is judged on the reference path",
        lambda: check_request(
            tool_call("read_file", {"path": 42}),
            authorization=f"Bearer {token(tools=('read_file', 'list_directory'))}",
            agent="files-bot",
        ),
        403,
    ),
    Shape(
        "undecodable",
        0.01,
        "a body that is not JSON (MCP decode failure)",
        lambda: check_request(b"{not json"),
        400,
    ),
)
assert abs(sum(s.share for s in SHAPES) - 1.0) < 1e-9, "the shares must add up to 1"


def shape(name: str) -> Shape:
    return next(s for s in SHAPES if s.name == name)


def frame(name: str) -> bytes:
    return grpc_frame(shape(name).build())


def fingerprint(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:12]
