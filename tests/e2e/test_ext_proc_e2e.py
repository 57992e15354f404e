"""End to end through ext_proc (issue 16): an MCP SDK agent talks to the SDK MCP server through
an Envoy stand-in that runs the ext_proc filter against authz-server serving the example
library in ``policies/``.

What a user relies on: ``list_tools()`` shows exactly the tools some call could be allowed
(``merge_pull_request`` is denied whatever its arguments, so it is not listed), the same in both
protocol eras (SSE responses in the handshake era, JSON in 2026-07-28); a hidden tool called
anyway is refused with the policy's reason and never runs; allowed calls work as with ext_authz.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from mcp.client import Client

from authz_server.policy.render import POLICY_DENIED
from tests.serving import ServerProcess, start_server, stop_server

from .conftest import POLICIES, LoopThread, Served, _serve
from .ext_proc_gateway import ExtProcGateway, Mode
from .mcp_server import Recorder, build_app
from .test_mcp_e2e import MERGE_REASON, MODES, PR, refused, run

# What the example library lets an anonymous agent call on this server (policies/github.yaml:
# opening and listing pull requests; merging is reserved for humans).
VISIBLE = ["create_pull_request", "list_pull_requests"]


@dataclass
class ExtProcStack:
    authz: ServerProcess
    upstream: Recorder
    gateway: ExtProcGateway
    url: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExtProcStack]:
    log = tmp_path_factory.mktemp("e2e-ext-proc") / "authz-server.log"
    authz = start_server(POLICIES, log=log)
    loop = LoopThread()
    started: list[Served] = []
    try:
        upstream = build_app()
        started.append(loop.run(_serve(upstream)))
        gateway = ExtProcGateway(started[0].url, authz.target)
        started.append(loop.run(_serve(gateway)))
        yield ExtProcStack(authz, upstream, gateway, f"{started[1].url}/mcp")
    finally:
        for served in reversed(started):
            with contextlib.suppress(Exception):
                loop.run(served.stop())
        loop.close()
        stop_server(authz)


async def converse(url: str, mode: str) -> dict[str, Any]:
    async with Client(url, mode=mode, read_timeout_seconds=15) as client:
        listed = await client.list_tools()
        created = await client.call_tool("create_pull_request", {**PR, "title": "Listed"})
        merge_error = await refused(client, "merge_pull_request", {**PR, "pull_number": 1})
        return {
            "protocol_version": client.protocol_version,
            "tools": [tool.name for tool in listed.tools],
            "created": created,
            "merge_error": merge_error,
        }


@pytest.fixture(scope="module")
def conversations(stack: ExtProcStack) -> dict[str, dict[str, Any]]:
    done = {}
    for mode in MODES:
        seen = len(stack.upstream.seen)
        done[mode] = run(converse(stack.url, mode))
        done[mode]["upstream"] = stack.upstream.tool_calls(seen)
    return done


@pytest.mark.parametrize("mode", MODES)
def test_the_agent_sees_exactly_the_tools_it_may_use(
    conversations: dict[str, dict[str, Any]], mode: str
) -> None:
    conversation = conversations[mode]
    assert conversation["protocol_version"] == MODES[mode]
    assert sorted(conversation["tools"]) == VISIBLE


def test_sse_and_json_give_the_same_list(
    stack: ExtProcStack, conversations: dict[str, dict[str, Any]]
) -> None:
    assert conversations["legacy"]["tools"] == conversations["auto"]["tools"]
    # Both body kinds really went through the processor: the handshake era's list came as SSE
    # (STREAMED), the 2026-07-28 one as JSON (BUFFERED).
    overrides = [
        answer.mode_override.response_body_mode
        for exchange in stack.gateway.exchanges
        for answer in exchange.answers
        if answer.HasField("mode_override")
    ]
    assert Mode.STREAMED in overrides and Mode.BUFFERED in overrides


@pytest.mark.parametrize("mode", MODES)
def test_a_hidden_tool_called_anyway_is_refused_and_never_runs(
    conversations: dict[str, dict[str, Any]], mode: str
) -> None:
    conversation = conversations[mode]
    error = conversation["merge_error"]
    assert MERGE_REASON in str(error) and error.error.code == POLICY_DENIED
    assert [name for name, _ in conversation["upstream"]] == ["create_pull_request"]


@pytest.mark.parametrize("mode", MODES)
def test_an_allowed_call_carries_the_policys_header_upstream(
    conversations: dict[str, dict[str, Any]], mode: str
) -> None:
    conversation = conversations[mode]
    assert not conversation["created"].is_error
    ((_, headers),) = conversation["upstream"]
    assert headers["x-authz-policy"] == "github-contribute"
