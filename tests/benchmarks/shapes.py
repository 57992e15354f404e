"""The mixed workload's arithmetic and its check that each shape is what it says.

h2load replays one body per run, so every shape of workload.SHAPES is measured on its own and
the mix is computed: a server that spends 1/rps_i seconds on each request of shape i spends
sum(share_i / rps_i) seconds on an average request of the mix, so

    checks/s of the mix = 1 / sum(share_i / rps_i)          (the share-weighted harmonic mean)

The cost of a shape relative to the typical request ("valid") is rps_valid / rps_shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import grpc

from authz_server.envoy.adapter import CheckRequest
from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2_grpc
from tests.benchmarks import workload

TYPICAL = "valid"


def mix_rps(rps: Mapping[str, float], shares: Mapping[str, float] | None = None) -> float:
    """Checks/s of the mix: the share-weighted harmonic mean of the shapes' checks/s."""
    shares = shares or {s.name: s.share for s in workload.SHAPES}
    return 1.0 / sum(share / rps[name] for name, share in shares.items())


def cost_ratios(rps: Mapping[str, float]) -> dict[str, float]:
    """Each shape's cost per check relative to the typical request's."""
    return {name: rps[TYPICAL] / value for name, value in rps.items()}


def answer(port: int, request: CheckRequest) -> int:
    """What the server answers: 0 for allowed, else the denial's HTTP status."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=10)
    return 0 if reply.status.code == 0 else reply.denied_response.status.code


def write_frame(name: str, path: Path, port: int | None = None) -> None:
    """Build the shape's request afresh (a DPoP proof's iat stays in its window), write its gRPC
    frame to `path`, and, given an authz-server `port`, check the answer is the expected one
    (for dpop-replay the second answer: the load replays the proof)."""
    shape = workload.shape(name)
    request = shape.build()
    if port is not None:
        got = answer(port, request)
        if name == "dpop-replay":
            got = answer(port, request)
        if got != shape.expect:
            raise SystemExit(f"shape {name}: the server answered {got}, expected {shape.expect}")
    path.write_bytes(workload.grpc_frame(request))
