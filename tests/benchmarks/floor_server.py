"""Floors: how far below the ceiling the work no check can skip already puts a Python server.

Two Check servers on authz-server's own transport (grpcio's synchronous server, as the
bare-sync flavour of bare_server.py) that do part of a check for the example policies, handing
the work to one thread as ``--dispatch thread`` does (authz_server/serve/serial.py):

* ``cel``: one evaluation of the combined CEL program authz-server's fast path runs for the
  benchmark's tools/call, with the MCP view decoded once at start; answers OK;
* ``decide``: the whole decision without its observers (adapter, MCP decode, policy engine,
  response); no decision id, no metrics, no audit line.

And one on the transport the budget is stated against:

* ``aio-decide``: a ``grpc.aio`` server (as bare_server.py's aio flavour) that makes the whole
  decision inline in the coroutine, exactly as authz-server does: the PolicyAuthorizer
  ``serve`` builds (metrics and audit observers, the audit log in a temporary file, the
  default state store) behind the same Check service code. What authz-server would give on
  grpc.aio, for ``run.py --dispatch`` to compare with ``--dispatch thread`` and ``inline``.

``make bench BENCH_ARGS=--floor`` runs them beside the other servers. A floor below 0.80 of the
grpc.aio bare server means no tuning of the remaining stages can meet the design's budget.

Usage: python -m tests.benchmarks.floor_server HOST:PORT cel|decide|aio-decide
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from authz_server.config import Address, ServeConfig
from authz_server.envoy import request_from_check, response_from_decision
from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2_grpc
from authz_server.mcp import decode
from authz_server.pipeline import PolicyAuthorizer
from authz_server.policy.engine import Engine
from authz_server.policy.loader import load_directory
from authz_server.serve.serial import SerialRunner
from authz_server.serve.server import CheckService
from tests.benchmarks import workload
from tests.benchmarks.bare_server import _OPTIONS, OK, serve_sync

POLICIES = Path(__file__).resolve().parents[2] / "policies"


class FloorCheck(external_auth_pb2_grpc.AuthorizationServicer):
    def __init__(self, work: Callable[[Any], Any]) -> None:
        self._work = SerialRunner(work, fallback=None, name="floor")
        self._work.start()

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._work(request)


def cel_only() -> Callable[[Any], Any]:
    sample = request_from_check(workload.check_request())
    decoded = decode(sample.body, sample.headers, truncated=sample.body_truncated)
    message = decoded.messages[0]
    program = load_directory(POLICIES).fast_path(message.method)
    view = dict(message.kyverno)
    if program is None or program.evaluate(sample.check_request, view) is None:
        sys.exit("the workload does not take the fast path: this floor would measure nothing")

    def evaluate(request: Any) -> Any:
        program.evaluate(request, view)
        return OK

    return evaluate


def decide_only() -> Callable[[Any], Any]:
    engine = Engine(load_directory(POLICIES))

    def decide(check: Any) -> Any:
        request = request_from_check(check)
        decoded = decode(request.body, request.headers, truncated=request.body_truncated)
        return response_from_decision(engine.check(request, decoded))

    return decide


FLOORS = {"cel": cel_only, "decide": decide_only}


class AioDecideCheck(external_auth_pb2_grpc.AuthorizationServicer):
    """The server's Check service, answered in the coroutine (no thread at all)."""

    def __init__(self, service: CheckService) -> None:
        self._decide = service.decider

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self._decide(request)


async def serve_aio_decide(address: str) -> None:
    with tempfile.TemporaryDirectory(prefix="aio-decide-") as scratch:
        config = ServeConfig(
            policies=POLICIES,
            grpc_address=Address.parse(address),
            audit_log=str(Path(scratch) / "audit.log"),
            dispatch="inline",
        )
        authorizer = PolicyAuthorizer.from_config(config)
        authorizer.start()
        deadline = time.monotonic() + 30
        while not authorizer.status().serving:
            if time.monotonic() > deadline:
                sys.exit(f"policies not loaded: {authorizer.status().detail}")
            await asyncio.sleep(0.05)
        server = grpc.aio.server(options=_OPTIONS)
        service = AioDecideCheck(CheckService(authorizer, "inline"))
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(service, server)
        server.add_insecure_port(address)
        gc.collect()
        gc.freeze()  # as `serve` does (authz_server/cli.py)
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(f"aio-decide server on {address}", file=sys.stderr, flush=True)
        await stop.wait()
        await server.stop(1)
        authorizer.stop()


if __name__ == "__main__":
    flavours = [*FLOORS, "aio-decide"]
    if len(sys.argv) != 3 or sys.argv[2] not in flavours:
        sys.exit(f"usage: floor_server HOST:PORT {'|'.join(flavours)}")
    if sys.argv[2] == "aio-decide":
        asyncio.run(serve_aio_decide(sys.argv[1]))
    else:
        serve_sync(sys.argv[1], FloorCheck(FLOORS[sys.argv[2]]()))
