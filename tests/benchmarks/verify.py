"""A checking client for load runs: every answer must be the expected one, not merely an answer."""

from __future__ import annotations

import threading

import grpc

from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2_grpc
from tests.benchmarks import workload

# The reload benchmark flips github-contribute's header name between these two.
EXPECTED_HEADERS = {"x-authz-policy", "x-authz-policy-v2"}


def verify_checks(port: int, stop: threading.Event, results: dict[str, int]) -> None:
    """Send the workload request until `stop`; count answers that are not the expected allow."""
    results.update(checked=0, wrong=0, errors=0)
    request = workload.check_request()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        while not stop.is_set():
            try:
                reply = stub.Check(request, timeout=5)
            except grpc.RpcError:
                results["errors"] += 1
                continue
            results["checked"] += 1
            keys = {h.header.key for h in reply.ok_response.headers}
            if reply.status.code != 0 or not keys & EXPECTED_HEADERS:
                results["wrong"] += 1
