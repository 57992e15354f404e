"""The ceiling: an Authorization/Check server that answers OK without doing any work.

Two flavours, both with the same generated code as authz-server:

* ``aio`` (default): a ``grpc.aio`` handler, the ceiling the performance budget is stated
  against (design.md);
* ``sync``: grpcio's synchronous server on a thread pool, the transport authz-server itself
  runs (see authz_server/server.py), so the difference measured against it is the decision path
  alone.

Usage: python -m tests.benchmarks.bare_server HOST:PORT [aio|sync]
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
from concurrent import futures
from typing import Any

import grpc

from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from authz_server.serve.server import CHECK_THREADS

OK = external_auth_pb2.CheckResponse()
OK.status.code = 0
_OPTIONS = [("grpc.max_receive_message_length", 8 * 1024 * 1024)]


class BareCheck(external_auth_pb2_grpc.AuthorizationServicer):
    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return OK


class BareSyncCheck(external_auth_pb2_grpc.AuthorizationServicer):
    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:
        return OK


async def serve_aio(address: str) -> None:
    server = grpc.aio.server(options=_OPTIONS)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(BareCheck(), server)
    server.add_insecure_port(address)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"bare aio server on {address}", file=sys.stderr, flush=True)
    await stop.wait()
    await server.stop(1)


def serve_sync(
    address: str, servicer: external_auth_pb2_grpc.AuthorizationServicer | None = None
) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(CHECK_THREADS), options=_OPTIONS)
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(servicer or BareSyncCheck(), server)
    server.add_insecure_port(address)
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"sync server on {address}", file=sys.stderr, flush=True)
    stop.wait()
    server.stop(1).wait()


if __name__ == "__main__":
    flavour = sys.argv[2] if len(sys.argv) > 2 else "aio"
    if flavour == "sync":
        serve_sync(sys.argv[1])
    elif flavour == "aio":
        asyncio.run(serve_aio(sys.argv[1]))
    else:
        sys.exit(f"unknown flavour {flavour!r}: aio or sync")
