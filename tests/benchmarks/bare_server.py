"""The ceiling: a grpc.aio Authorization/Check server that answers OK without doing any work.

It uses the same generated code as authz-server, so the difference measured against it is the
decision path alone. Usage: python -m tests.benchmarks.bare_server HOST:PORT
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import Any

import grpc

from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc

_OK = external_auth_pb2.CheckResponse()
_OK.status.code = 0


class BareCheck(external_auth_pb2_grpc.AuthorizationServicer):
    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return _OK


async def main(address: str) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 8 * 1024 * 1024)])
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(BareCheck(), server)
    server.add_insecure_port(address)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"bare server on {address}", file=sys.stderr, flush=True)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
