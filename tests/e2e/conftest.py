"""Start the end-to-end stack on loopback: authz-server, the MCP server, and two gateways.

authz-server runs as a real ``python -m authz_server serve`` process on the example library in
``policies/`` (what ``make run`` serves). The SDK MCP server and the Envoy stand-ins run under
uvicorn on one background event loop, each on an ephemeral 127.0.0.1 port: one gateway refuses
bodies over its limit with 413 as Envoy does by default, the other sends the partial body
(``allow_partial_message``). Everything is module-scoped to keep the run short, every wait has a
deadline, and the fixture stops what it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvicorn

from tests.serving import ServerProcess, start_server, stop_server

from .gateway import Gateway
from .mcp_server import Recorder, build_app

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
MAX_REQUEST_BYTES = 16 * 1024
"""The gateways' ``with_request_body.max_request_bytes``; SDK messages are far smaller."""

T = TypeVar("T")


class LoopThread:
    """An event loop in a daemon thread, so servers keep serving while a test drives a client."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="e2e-servers", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 20) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


@dataclass
class Served:
    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 15)


async def _serve(app: Any) -> Served:
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
    return Served(server, task, server.servers[0].sockets[0].getsockname()[1])


@dataclass
class Stack:
    authz: ServerProcess
    upstream: Recorder
    gateway: Gateway
    gateway_url: str
    partial_gateway: Gateway
    partial_gateway_url: str


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole chain: SDK client -> gateway -> (authz-server) -> SDK MCP server."""
    log = tmp_path_factory.mktemp("e2e") / "authz-server.log"
    authz = start_server(POLICIES, log=log)
    loop = LoopThread()
    started: list[Served] = []
    try:
        upstream = build_app()
        started.append(loop.run(_serve(upstream)))
        mcp_url = started[0].url
        gateway = Gateway(mcp_url, authz.target, max_request_bytes=MAX_REQUEST_BYTES)
        partial = Gateway(
            mcp_url, authz.target, max_request_bytes=MAX_REQUEST_BYTES, allow_partial_message=True
        )
        started.append(loop.run(_serve(gateway)))
        started.append(loop.run(_serve(partial)))
        yield Stack(
            authz=authz,
            upstream=upstream,
            gateway=gateway,
            gateway_url=f"{started[1].url}/mcp",
            partial_gateway=partial,
            partial_gateway_url=f"{started[2].url}/mcp",
        )
    finally:
        for served in reversed(started):
            with contextlib.suppress(Exception):
                loop.run(served.stop())
        loop.close()
        stop_server(authz)
