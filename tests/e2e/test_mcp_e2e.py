"""End to end (issue 6): an MCP SDK agent talks to an SDK MCP server through an Envoy stand-in
that asks authz-server, serving the example policies in ``policies/``.

What a user relies on: the agent can list tools and use the allowed ones (the result arrives,
with the policy's header mutation applied upstream); a denied tool raises an error in the agent
whose message is the policy's reason, and the MCP server never sees that call; a tool no policy
allows is refused by the default decision; bodies over the gateway's limit never reach the tool.
Both protocol eras the SDK speaks are driven: the initialize handshake (``mode="legacy"``) and
the stateless 2026-07-28 era (``mode="auto"``, which probes ``server/discover``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx2
import pytest
from mcp.client import Client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult
from mcp_types.version import LATEST_HANDSHAKE_VERSION, LATEST_MODERN_VERSION

from authz_server.policy.render import PARSE_ERROR, POLICY_DENIED

from .conftest import MAX_REQUEST_BYTES, Stack
from .gateway import PARTIAL_BODY, Exchange
from .mcp_server import TOOLS, Seen

T = TypeVar("T")

MODES = {"legacy": LATEST_HANDSHAKE_VERSION, "auto": LATEST_MODERN_VERSION}
"""SDK connect mode -> the protocol version it must end up speaking through the gateway."""
MERGE_REASON = "reserved for humans"
"""From ``policies/github.yaml``: "merging pull requests is reserved for humans"."""
PR = {"owner": "octo", "repo": "widgets"}
UNKNOWN_TOOL = "transfer_repository"


def run(coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
    """Drive a client coroutine on a fresh loop, bounded in time."""

    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


async def refused(client: Client, tool: str, arguments: dict[str, Any]) -> MCPError:
    """The error the SDK raises for a call; fails the test if the call succeeds."""
    try:
        result = await client.call_tool(tool, arguments)
    except MCPError as error:
        return error
    pytest.fail(f"{tool} was not refused: {result}")


def http_of(exchange: Exchange) -> Any:
    """The ``attributes.request.http`` part of a recorded CheckRequest."""
    return exchange.request.attributes.request.http


def tool_call_name(body: bytes) -> str | None:
    try:
        message = json.loads(body)
    except ValueError:
        return None
    if isinstance(message, dict) and message.get("method") == "tools/call":
        return str(message["params"]["name"])
    return None


@dataclass
class Conversation:
    """One SDK session through the gateway, and everything the stack recorded meanwhile."""

    protocol_version: str
    tool_names: list[str]
    created: CallToolResult
    merge_error: MCPError
    unknown_error: MCPError
    exchanges: list[Exchange]
    upstream: list[Seen]

    def check_for(self, tool: str) -> Exchange:
        (exchange,) = [e for e in self.exchanges if tool_call_name(http_of(e).raw_body) == tool]
        return exchange

    def upstream_calls(self) -> dict[str, dict[str, str]]:
        return {name: seen.headers for seen in self.upstream if (name := seen.tool_call())}


async def converse(url: str, mode: str) -> dict[str, Any]:
    async with Client(url, mode=mode, read_timeout_seconds=15) as client:
        listed = await client.list_tools()
        created = await client.call_tool(
            "create_pull_request", {**PR, "title": "Fix the flux capacitor"}
        )
        merge_error = await refused(client, "merge_pull_request", {**PR, "pull_number": 1})
        unknown_error = await refused(client, UNKNOWN_TOOL, {**PR, "to": "elsewhere"})
        return {
            "protocol_version": client.protocol_version,
            "tool_names": [tool.name for tool in listed.tools],
            "created": created,
            "merge_error": merge_error,
            "unknown_error": unknown_error,
        }


@pytest.fixture(scope="module")
def conversations(stack: Stack) -> dict[str, Conversation]:
    """Run the agent's session once per mode; the tests below read what happened."""
    done = {}
    for mode in MODES:
        checks, seen = len(stack.gateway.exchanges), len(stack.upstream.seen)
        outcome = run(converse(stack.gateway_url, mode))
        done[mode] = Conversation(
            **outcome,
            exchanges=stack.gateway.exchanges[checks:],
            upstream=stack.upstream.seen[seen:],
        )
    return done


@pytest.mark.parametrize("mode", MODES)
def test_the_session_speaks_the_expected_protocol_era(
    conversations: dict[str, Conversation], mode: str
) -> None:
    """Both eras must really be exercised; 'auto' falls back to legacy if discover is refused."""
    assert conversations[mode].protocol_version == MODES[mode]


@pytest.mark.parametrize("mode", MODES)
def test_every_tool_is_listed(conversations: dict[str, Conversation], mode: str) -> None:
    assert sorted(conversations[mode].tool_names) == sorted(TOOLS)


@pytest.mark.parametrize("mode", MODES)
def test_allowed_tool_result_arrives_with_the_policy_header_upstream(
    conversations: dict[str, Conversation], mode: str
) -> None:
    conversation = conversations[mode]
    created = conversation.created
    assert not created.is_error
    assert [c.text for c in created.content] == ["opened octo/widgets#1: Fix the flux capacitor"]
    answer = conversation.check_for("create_pull_request").response
    assert answer is not None and answer.status.code == 0
    mutations = {o.header.key: o.header.value for o in answer.ok_response.headers}
    assert "x-authz-policy" in mutations  # policies/github.yaml names the allowing policy
    upstream = conversation.upstream_calls()["create_pull_request"]
    assert upstream["x-authz-policy"] == mutations["x-authz-policy"]


@pytest.mark.parametrize("mode", MODES)
def test_denied_tool_raises_with_the_policy_reason_and_never_runs(
    conversations: dict[str, Conversation], mode: str
) -> None:
    conversation = conversations[mode]
    error = conversation.merge_error
    assert MERGE_REASON in str(error)
    assert error.error.code == POLICY_DENIED
    answer = conversation.check_for("merge_pull_request").response
    assert answer is not None and answer.status.code != 0
    assert answer.denied_response.status.code == 403
    assert "merge_pull_request" not in conversation.upstream_calls()


@pytest.mark.parametrize("mode", MODES)
def test_tool_no_policy_allows_is_refused_by_default_deny(
    conversations: dict[str, Conversation], mode: str
) -> None:
    conversation = conversations[mode]
    error = conversation.unknown_error
    assert error.error.code == POLICY_DENIED
    assert "default deny" in str(error)
    assert UNKNOWN_TOOL not in conversation.upstream_calls()


@pytest.mark.parametrize("mode", MODES)
def test_the_policy_sees_the_request_as_envoy_sends_it(
    stack: Stack, conversations: dict[str, Conversation], mode: str
) -> None:
    """Lower-case headers with pseudo-headers and no ``host``, the body in ``raw_body``."""
    http = http_of(conversations[mode].check_for("merge_pull_request"))
    headers = dict(http.headers)
    assert all(key == key.lower() for key in headers)
    assert "host" not in headers
    authority = stack.gateway_url.removeprefix("http://").removesuffix("/mcp")
    assert (headers[":method"], headers[":path"], headers[":scheme"]) == ("POST", "/mcp", "http")
    assert headers[":authority"] == http.host == authority
    assert headers[PARTIAL_BODY] == "false"
    assert headers["mcp-protocol-version"] == MODES[mode]
    assert (http.method, http.path, http.protocol) == ("POST", "/mcp", "HTTP/1.1")
    assert not http.body
    message = json.loads(http.raw_body)
    assert message["params"]["arguments"] == {**PR, "pull_number": 1}
    if mode == "auto":  # 2026-07-28 mirrors the method and the tool name in headers
        assert (headers["mcp-method"], headers["mcp-name"]) == ("tools/call", "merge_pull_request")
    else:  # the handshake era carries the session id the server minted
        assert headers["mcp-session-id"]


def test_requests_without_a_body_carry_no_partial_flag_and_pass(
    conversations: dict[str, Conversation],
) -> None:
    """The legacy session ends with a DELETE: no MCP message, allowed by mcp-protocol.yaml."""
    (delete,) = [e for e in conversations["legacy"].exchanges if http_of(e).method == "DELETE"]
    http = http_of(delete)
    assert PARTIAL_BODY not in http.headers and not http.raw_body
    assert delete.response is not None and delete.response.status.code == 0


def test_body_over_the_limit_gets_413_from_the_gateway_and_is_never_checked(
    stack: Stack,
) -> None:
    """Envoy's default (``allow_partial_message: false``): the authorizer is not even asked."""
    checks, seen = len(stack.gateway.exchanges), len(stack.upstream.seen)
    title = "x" * (MAX_REQUEST_BYTES + 1)
    message = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "create_pull_request", "arguments": {**PR, "title": title}},
    }

    async def post() -> httpx2.Response:
        async with httpx2.AsyncClient(timeout=10) as client:
            return await client.post(
                stack.gateway_url,
                json=message,
                headers={"accept": "application/json, text/event-stream"},
            )

    reply = run(post())
    assert reply.status_code == 413
    assert len(stack.gateway.exchanges) == checks
    assert len(stack.upstream.seen) == seen


def test_partial_body_over_the_limit_is_denied_as_truncated(stack: Stack) -> None:
    """With ``allow_partial_message`` the prefix is checked, and a cut MCP body is not trusted."""
    gateway = stack.partial_gateway
    checks, seen = len(gateway.exchanges), len(stack.upstream.seen)

    async def session() -> tuple[CallToolResult, MCPError]:
        async with Client(stack.partial_gateway_url, mode="legacy", read_timeout_seconds=15) as c:
            small = await c.call_tool("create_pull_request", {**PR, "title": "small"})
            big = {**PR, "title": "x" * MAX_REQUEST_BYTES}
            return small, await refused(c, "create_pull_request", big)

    small, error = run(session())
    assert not small.is_error  # the same tool with a body under the limit is allowed
    assert error.error.code == PARSE_ERROR
    assert "truncated" in str(error)
    posts = [http_of(e) for e in gateway.exchanges[checks:] if http_of(e).method == "POST"]
    flags = {len(http.raw_body): http.headers.get(PARTIAL_BODY) for http in posts}
    assert flags[MAX_REQUEST_BYTES] == "true"  # the big call: a prefix, flagged as partial
    assert set(flags.values()) == {"true", "false"}  # the handshake and small call were whole
    bodies = [len(s.body) for s in stack.upstream.seen[seen:] if s.tool_call()]
    assert len(bodies) == 1 and bodies[0] < MAX_REQUEST_BYTES  # only the small call ran
