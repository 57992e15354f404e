"""Per-stage cost of one check with the example policy set, measured in process.

The stages are timed one at a time over the same workload request, so the figures show where a
check's time goes; they are not additive to the last microsecond (caches warm differently).
Usage: python -m tests.benchmarks.stages [POLICY_DIR]
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from authz_server.envoy import request_from_check, response_from_decision
from authz_server.mcp import decode
from authz_server.observe import AuditLog, Metrics
from authz_server.observe.event import DecisionEvent
from authz_server.policy.engine import Engine
from authz_server.policy.loader import load_directory
from tests.benchmarks import workload

ROUNDS = 5


def per_call_us(fn: Callable[[], Any], n: int = 2000) -> float:
    """Best of several rounds: the least disturbed run of a noisy machine."""
    for _ in range(200):
        fn()
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


def measure(policy_dir: Path) -> dict[str, float]:
    wire = workload.check_request().SerializeToString()
    message_type = type(workload.check_request())
    check = message_type.FromString(wire)
    request = request_from_check(check)
    decoded = decode(request.body, request.headers, truncated=request.body_truncated)
    engine = Engine(load_directory(policy_dir))
    decision = engine.check(request, decoded)
    event = DecisionEvent("bench-1", time.time(), 0.0001, request, decoded, decision)
    metrics = Metrics()
    with tempfile.TemporaryDirectory() as scratch:
        audit = AuditLog(str(Path(scratch) / "audit.log"), queue_size=1_000_000)
        figures = {
            "grpc deserialize (CheckRequest)": per_call_us(lambda: message_type.FromString(wire)),
            "adapter: CheckRequest -> Request": per_call_us(lambda: request_from_check(check)),
            "decode: MCP body": per_call_us(
                lambda: decode(request.body, request.headers, truncated=request.body_truncated)
            ),
            "engine: all policies": per_call_us(lambda: engine.check(request, decoded)),
            "adapter: Decision -> CheckResponse": per_call_us(
                lambda: response_from_decision(decision)
            ),
            "grpc serialize (CheckResponse)": per_call_us(
                lambda: response_from_decision(decision).SerializeToString()
            ),
            "metrics: observe": per_call_us(lambda: metrics.observe(event)),
        }
        audit.start()
        figures["audit: enqueue (decision path)"] = per_call_us(lambda: audit.observe(event))
        # The writer thread formats and writes the queued lines; time how long it takes to drain.
        queued = 20_000
        for _ in range(queued):
            audit.observe(event)
        start = time.perf_counter()
        audit.close(timeout=120)
        figures["audit: format + write (writer thread)"] = (
            (time.perf_counter() - start) / queued * 1e6
        )
    metrics.close()
    return figures


def main() -> None:
    warnings.simplefilter("ignore")
    policy_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("policies")
    figures = measure(policy_dir)
    print(f"per-stage cost, us per check (best of {ROUNDS} rounds), policies: {policy_dir}")
    for name, value in figures.items():
        print(f"  {name:<42} {value:8.1f}")


if __name__ == "__main__":
    main()
