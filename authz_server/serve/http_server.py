"""The HTTP side server: ``/metrics`` for Prometheus, ``/healthz`` and ``/readyz`` for probes.

A few GET endpoints do not justify a web framework; this speaks just enough HTTP/1.1 for
Prometheus scrapers, kubelet probes and curl, on the same event loop as the gRPC server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from authz_server.config import Address

log = logging.getLogger(__name__)

MAX_REQUEST_HEAD = 8192


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


Route = Callable[[], Reply]

_REASONS = {
    200: "OK",
    404: "Not Found",
    405: "Method Not Allowed",
    400: "Bad Request",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class SideServer:
    """Serves a fixed set of GET routes until closed."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self._routes = routes
        self._server: asyncio.base_events.Server | None = None

    async def start(self, address: Address, *, reuse_port: bool = False) -> int:
        """Start listening and return the bound port."""
        self._server = await asyncio.start_server(
            self._handle, address.host, address.port, reuse_port=reuse_port or None
        )
        return self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            reply, method = self._route(head)
            writer.write(_encode(reply, head_only=method == "HEAD"))
            await writer.drain()
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ConnectionError,
        ):
            pass
        except Exception:
            log.exception("side server failed to answer")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _route(self, head: bytes) -> tuple[Reply, str]:
        if len(head) > MAX_REQUEST_HEAD:
            return Reply(400, b"request head too large\n"), "GET"
        try:
            method, target, _ = head.split(b"\r\n", 1)[0].decode("ascii").split(" ", 2)
        except ValueError:
            return Reply(400, b"bad request line\n"), "GET"
        route = self._routes.get(target.split("?", 1)[0])
        if route is None:
            return Reply(404, b"not found\n"), method
        if method not in ("GET", "HEAD"):
            return Reply(405, b"only GET is served here\n"), method
        return route(), method


def _encode(reply: Reply, *, head_only: bool) -> bytes:
    head = (
        f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Unknown')}\r\n"
        f"Content-Type: {reply.content_type}\r\n"
        f"Content-Length: {len(reply.body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("ascii")
    return head if head_only else head + reply.body
