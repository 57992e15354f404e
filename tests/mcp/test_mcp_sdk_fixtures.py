"""Real request bodies recorded from the official MCP Python SDK (tests/fixtures/mcp/record.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from authz_server.mcp import NO_MESSAGE, Kind, McpMessage, decode
from authz_server.mcp.kyverno import view

FIXTURES = Path(__file__).parents[1] / "fixtures" / "mcp" / "sdk_bodies.json"
RECORDED: dict[str, dict[str, Any]] = {
    r["name"]: r for r in json.loads(FIXTURES.read_text())["requests"]
}
ARGS_CREATE = {"repo": "octo/widgets", "title": "Fix the flux capacitor", "head": "fix-flux"}
ARGS_MERGE = {"repo": "octo/widgets", "number": 42}
MODERN = "2026-07-28"


def one(name: str) -> McpMessage:
    recorded = RECORDED[name]
    decoded = decode(recorded["body"].encode(), recorded["headers"], method="POST")
    assert decoded.failure is None, decoded.failure
    assert not decoded.batch
    (message,) = decoded.messages
    return message


def test_the_recording_covers_every_flow() -> None:
    transports = {(r["transport"], r["era"]) for r in RECORDED.values()}
    assert transports == {
        ("streamable-http", "legacy"),
        ("streamable-http", MODERN),
        ("sse", "legacy"),
    }
    assert len(RECORDED) >= 25


@pytest.mark.parametrize("decompress", [False, True])
@pytest.mark.parametrize("name", sorted(RECORDED))
def test_every_recorded_body_decodes_like_json_loads(name: str, decompress: bool) -> None:
    recorded = RECORDED[name]
    decoded = decode(
        recorded["body"].encode(),
        recorded["headers"],
        method=recorded["http_method"],
        decompress=decompress,
    )
    assert decoded.failure is None
    if not recorded["body"]:
        assert decoded == NO_MESSAGE
        return
    raw = json.loads(recorded["body"])
    (message,) = decoded.messages
    assert message.method == raw.get("method", "")
    assert message.id == raw.get("id")
    assert message.kind is (Kind.REQUEST if "id" in raw else Kind.NOTIFICATION)
    assert message.kyverno["Method"] == message.method


@pytest.mark.parametrize("name", [n for n in RECORDED if n.endswith(("GET#1", "DELETE#1"))])
def test_get_and_delete_carry_no_message(name: str) -> None:
    method = RECORDED[name]["http_method"]
    assert method in ("GET", "DELETE")
    assert decode(b"", RECORDED[name]["headers"], method=method) is NO_MESSAGE


def test_initialize() -> None:
    m = one("streamable-http/legacy/initialize#1")
    assert (m.kind, m.id, m.method) == (Kind.REQUEST, 1, "initialize")
    assert m.protocol_version == "2025-11-25"
    assert m.client_info == {"name": "mcp", "version": "0.1.0"}
    assert view(m)["Initialize"] == {
        "ProtocolVersion": "2025-11-25",
        "Capabilities": {},
        "ClientInfo": {"Name": "mcp", "Version": "0.1.0"},
    }


def test_initialized_notification() -> None:
    m = one("streamable-http/legacy/notifications/initialized#1")
    assert (m.kind, m.id, m.method) == (Kind.NOTIFICATION, None, "notifications/initialized")
    assert m.protocol_version == "2025-11-25"  # from the MCP-Protocol-Version header


@pytest.mark.parametrize(
    ("name", "tool", "arguments", "version"),
    [
        ("streamable-http/legacy/tools/call#1", "create_pull_request", ARGS_CREATE, "2025-11-25"),
        ("streamable-http/legacy/tools/call#2", "merge_pull_request", ARGS_MERGE, "2025-11-25"),
        (f"streamable-http/{MODERN}/tools/call#1", "create_pull_request", ARGS_CREATE, MODERN),
        (f"streamable-http/{MODERN}/tools/call#2", "merge_pull_request", ARGS_MERGE, MODERN),
        ("sse/legacy/tools/call#1", "merge_pull_request", {**ARGS_MERGE, "number": 7}, ""),
    ],
)
def test_tools_call(name: str, tool: str, arguments: dict[str, Any], version: str) -> None:
    m = one(name)
    assert (m.kind, m.method, m.tool_name, m.arguments) == (
        Kind.REQUEST,
        "tools/call",
        tool,
        arguments,
    )
    assert m.protocol_version == version
    assert view(m)["ToolCall"]["Name"] == tool
    assert view(m)["ToolCall"]["Arguments"] == arguments


def test_modern_requests_carry_meta_and_client_info() -> None:
    m = one(f"streamable-http/{MODERN}/tools/call#2")
    assert m.meta is not None
    assert m.meta["io.modelcontextprotocol/clientCapabilities"] == {}
    assert m.client_info == {"name": "mcp", "version": "0.1.0"}
    assert view(m)["ToolCall"]["Meta"] is m.meta
    assert RECORDED[f"streamable-http/{MODERN}/tools/call#2"]["headers"]["mcp-name"] == (
        "merge_pull_request"
    )


@pytest.mark.parametrize("era", ["legacy", MODERN])
def test_resources_read(era: str) -> None:
    m = one(f"streamable-http/{era}/resources/read#1")
    assert (m.method, m.uri) == ("resources/read", "repo://octo/widgets/readme")
    assert view(m)["ResourceRead"] == {"URI": "repo://octo/widgets/readme", "Arguments": {}}


@pytest.mark.parametrize("era", ["legacy", MODERN])
def test_prompts_get(era: str) -> None:
    m = one(f"streamable-http/{era}/prompts/get#1")
    assert (m.method, m.prompt_name) == ("prompts/get", "review_pr")
    assert m.arguments == {"number": "42", "focus": "tests"}
    assert view(m)["PromptGet"] == {
        "Name": "review_pr",
        "Arguments": {"number": "42", "focus": "tests"},
    }


@pytest.mark.parametrize("method", ["tools/list", "resources/list", "prompts/list"])
def test_list_methods_are_paginated(method: str) -> None:
    m = one(f"streamable-http/legacy/{method}#1")
    assert m.cursor == ""
    assert view(m)["Paginated"] == {"Cursor": ""}


def test_completion() -> None:
    m = one(f"streamable-http/{MODERN}/completion/complete#1")
    assert m.ref == {"type": "ref/prompt", "name": "review_pr"}
    assert m.argument == {"name": "focus", "value": "se"}


def test_ping_and_set_level() -> None:
    assert one("streamable-http/legacy/ping#1").method == "ping"
    m = one("streamable-http/legacy/logging/setLevel#1")
    assert m.log_level == "warning"
    assert view(m)["SetLogLevel"] == {"Level": "warning"}


def test_server_discover() -> None:
    m = one(f"streamable-http/{MODERN}/server/discover#1")
    assert (m.method, m.protocol_version) == ("server/discover", MODERN)


def test_subscriptions_listen() -> None:
    m = one(f"streamable-http/{MODERN}/subscriptions/listen#1")
    assert m.id == "listen-1"
    assert m.subscriptions == ("repo://octo/widgets/readme",)


def test_sse_transport_posts_to_messages() -> None:
    recorded = RECORDED["sse/legacy/tools/call#1"]
    assert recorded["path"].startswith("/messages/?session_id=")
    assert "mcp-protocol-version" not in recorded["headers"]
