"""The MCP server behind the gateway: the official SDK's ``MCPServer`` with GitHub-like tools.

Its tool names are those the example policies in ``policies/github.yaml`` talk about, so the
end-to-end tests exercise the example library as a user would. ``Recorder`` wraps the SDK app and
keeps every HTTP request that reached the upstream, which is how the tests prove that a denied
call never got there and that an allowed one carried the policy's header mutation.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from mcp.server import MCPServer

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

TOOLS = ("create_pull_request", "merge_pull_request", "list_pull_requests")


def build_server() -> MCPServer:
    """A GitHub-like server; the tools answer from memory, nothing leaves the machine."""
    server = MCPServer("github-e2e")

    @server.tool()
    def create_pull_request(owner: str, repo: str, title: str) -> str:
        """Open a pull request."""
        return f"opened {owner}/{repo}#1: {title}"

    @server.tool()
    def merge_pull_request(owner: str, repo: str, pull_number: int) -> str:
        """Merge a pull request."""
        return f"merged {owner}/{repo}#{pull_number}"

    @server.tool()
    def list_pull_requests(owner: str, repo: str) -> str:
        """List open pull requests."""
        return f"{owner}/{repo}#1 open"

    return server


@dataclass(frozen=True)
class Seen:
    """One HTTP request as the upstream received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def tool_call(self) -> str | None:
        """The tool name when this request is a ``tools/call``, else None."""
        if not self.body:
            return None
        try:
            message = json.loads(self.body)
        except ValueError:
            return None
        if isinstance(message, dict) and message.get("method") == "tools/call":
            return str(message.get("params", {}).get("name"))
        return None


@dataclass
class Recorder:
    """ASGI middleware that records each request, then hands it unchanged to the SDK app."""

    app: ASGIApp
    seen: list[Seen] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        query = scope.get("query_string", b"").decode("latin-1")
        self.seen.append(
            Seen(
                method=scope["method"],
                path=scope["path"] + (f"?{query}" if query else ""),
                headers={
                    k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]
                },
                body=body,
            )
        )
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def tool_calls(self, start: int = 0) -> list[tuple[str, dict[str, str]]]:
        """(tool name, headers) of every ``tools/call`` seen since index ``start``."""
        calls = []
        for seen in self.seen[start:]:
            name = seen.tool_call()
            if name is not None:
                calls.append((name, seen.headers))
        return calls


def build_app() -> Recorder:
    """The Streamable HTTP app (both protocol eras on ``/mcp``), wrapped in a recorder."""
    return Recorder(build_server().streamable_http_app())
