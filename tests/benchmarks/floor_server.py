"""Floors: how far below the ceiling the work no check can skip already puts a Python server.

Two Check servers on authz-server's own transport (grpcio's synchronous server, as the
bare-sync flavour of bare_server.py) that do part of a check for the example policies:

Both hand the work to one thread, as authz-server does (authz_server/serial.py).

* ``cel``: one evaluation of the combined CEL program authz-server's fast path runs for the
  benchmark's tools/call, with the MCP view decoded once at start; answers OK;
* ``decide``: the whole decision without its observers (adapter, MCP decode, policy engine,
  response); no decision id, no metrics, no audit line.

``make bench BENCH_ARGS=--floor`` runs them beside the other servers. A floor below 0.80 of the
grpc.aio bare server means no tuning of the remaining stages can meet the design's budget.

Usage: python -m tests.benchmarks.floor_server HOST:PORT cel|decide
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from authz_server.envoy import request_from_check, response_from_decision
from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2_grpc
from authz_server.mcp import decode
from authz_server.policy.engine import Engine
from authz_server.policy.loader import load_directory
from authz_server.serve.serial import SerialRunner
from tests.benchmarks import workload
from tests.benchmarks.bare_server import OK, serve_sync

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

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[2] not in FLOORS:
        sys.exit(f"usage: floor_server HOST:PORT {'|'.join(FLOORS)}")
    serve_sync(sys.argv[1], FloorCheck(FLOORS[sys.argv[2]]()))
