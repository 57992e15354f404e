"""Per-stage cost of one check with the example policy set, measured in process.

The stages are timed one at a time over the same workload request, so the figures show where a
check's time goes; they are not additive to the last microsecond (caches warm differently).

Two figures per stage. "warm" repeats the stage in a tight loop, so its code and data stay in the
CPU caches: the least it can cost. "cold" flushes the caches (copies a buffer larger than L2 and
most of L3) before each call: inside the server each stage runs after gRPC's threads and the
other stages have been through the caches, and measured there (thread CPU time around each stage,
pinned to one core) the stages cost 2.5-3x their warm figure, between the two columns.

The identity rows time the verification of credentials the workload request does not carry
(tests/benchmarks/bench_identity.py): a repeated bearer token is answered from the cache; a new
one costs a full verification with one signature check; a DPoP request with a cached token costs
one signature check (its proof's, next to the check alone for comparison) plus the replay claim.

Usage: python -m tests.benchmarks.stages [POLICY_DIR]
"""

from __future__ import annotations

import statistics
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
# Copied before each cold call: larger than this machine's L2 (1 MiB a core) and half its L3.
FLUSH_BYTES = 16 << 20
IDENTITY_CALLS, IDENTITY_COLD_CALLS = 300, 100


def per_call_us(
    fn: Callable[[], Any], n: int = 2000, *, rounds: int = ROUNDS, warm_up: int = 200
) -> float:
    """Best of ``rounds`` rounds of ``n`` calls: the least disturbed run of a noisy machine."""
    for _ in range(warm_up):
        fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


def per_call_cold_us(fn: Callable[[], Any], n: int = 300) -> float:
    """Median cost of a call made right after the CPU caches were flushed."""
    source = memoryview(bytearray(b"x" * FLUSH_BYTES))
    target = memoryview(bytearray(FLUSH_BYTES))
    fn()
    times = []
    for _ in range(n):
        target[:] = source
        start = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1000


def measure(policy_dir: Path) -> dict[str, tuple[float, float]]:
    """Per stage, (warm, cold) microseconds per call."""
    wire = workload.check_request().SerializeToString()
    message_type = type(workload.check_request())
    check = message_type.FromString(wire)
    request = request_from_check(check)

    def decode_body() -> Any:  # as the pipeline calls it
        return decode(
            request.body, request.headers, method=request.method, truncated=request.body_truncated
        )

    decoded = decode_body()
    engine = Engine(load_directory(policy_dir))
    decision = engine.check(request, decoded)
    event = DecisionEvent("bench-1", time.time(), 0.0001, request, decoded, decision)
    metrics = Metrics()
    # The server's engine also reports each policy's result to the metrics (a tally per check).
    counted = Engine(load_directory(policy_dir), on_evaluated=metrics.policies_evaluated)
    stages: dict[str, Callable[[], Any]] = {
        "grpc deserialize (CheckRequest)": lambda: message_type.FromString(wire),
        "adapter: CheckRequest -> Request": lambda: request_from_check(check),
        "decode: MCP body": decode_body,
        "engine: all policies": lambda: engine.check(request, decoded),
        "engine: all policies, evaluations tallied": lambda: counted.check(request, decoded),
        "adapter: Decision -> CheckResponse": lambda: response_from_decision(decision),
        "grpc serialize (CheckResponse)": lambda: response_from_decision(
            decision
        ).SerializeToString(),
        "metrics: observe": lambda: metrics.observe(event),
    }
    figures = {name: (per_call_us(fn), per_call_cold_us(fn)) for name, fn in stages.items()}
    with tempfile.TemporaryDirectory() as scratch:
        audit = AuditLog(str(Path(scratch) / "audit.log"), queue_size=1_000_000)
        audit.start()

        def enqueue() -> None:
            audit.observe(event)

        figures["audit: enqueue (decision path)"] = (
            per_call_us(enqueue),
            per_call_cold_us(enqueue),
        )
        # The writer thread formats and writes the queued lines in batches, so it runs warm;
        # time how long it takes to drain a backlog.
        queued = 20_000
        for _ in range(queued):
            audit.observe(event)
        start = time.perf_counter()
        audit.close(timeout=120)
        drained = (time.perf_counter() - start) / queued * 1e6
        figures["audit: format + write (writer thread)"] = (drained, float("nan"))
        figures.update(identity(Path(scratch)))
        figures.update(revocations(Path(scratch)))
    metrics.close()
    return figures


def identity(scratch: Path) -> dict[str, tuple[float, float]]:
    """The identity stage per kind of credential (tests/benchmarks/bench_identity.py)."""
    from tests.benchmarks import bench_identity

    calls, store = bench_identity.stage_calls(scratch)
    try:
        # Fewer calls than the other stages: a DPoP call costs a few hundred microseconds, and
        # each needs a fresh proof (bench_identity.STAGE_PROOFS).
        return {
            name: (per_call_us(fn, n=IDENTITY_CALLS), per_call_cold_us(fn, n=IDENTITY_COLD_CALLS))
            for name, fn in calls.items()
        }
    finally:
        store.close()


def revocations(scratch: Path) -> dict[str, tuple[float, float]]:
    """The kill-switch check per request, read from the local mirror, beside one read of the
    store it mirrors: the check must cost a lookup, not a store round trip."""
    from authz_server.identity import Identity, Method
    from authz_server.oversight import Revocations, RevocationWatch
    from authz_server.state import open_store

    store = open_store(f"sqlite:///{scratch}/revocations.db")
    try:
        revocations = Revocations(store)
        for n in range(100):
            revocations.add(subject=f"agent-{n}", reason="benchmark")
        revocations.add(client_id="ci-bot", tools=("merge_pull_request",), reason="benchmark")
        # Never stale here: the cold loop can outlast the default 2 s on a loaded machine.
        watch = RevocationWatch(store, max_staleness=3600.0)
        watch.refresh()
        caller = Identity(
            authenticated=True, method=Method.BEARER, issuer="https://idp", subject="user-1",
            client_id="agent-7", claims={"jti": "abc"},
        )  # fmt: skip

        def check() -> Any:
            return watch.check(caller, "get_issue")

        def store_read() -> Any:
            return store.get("revocation", "none")

        assert check() is None
        return {
            "revocations: check (mirror, 101 entries)": (
                per_call_us(check),
                per_call_cold_us(check),
            ),
            "  (one store read, SQLite, for scale)": (per_call_us(store_read, n=500), float("nan")),
        }
    finally:
        store.close()


def main() -> None:
    warnings.simplefilter("ignore")
    policy_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("policies")
    figures = measure(policy_dir)
    print(f"per-stage cost, us per check, policies: {policy_dir}")
    print(render(figures))


def render(figures: dict[str, tuple[float, float]]) -> str:
    lines = [f"  {'stage':<42} {'warm':>8} {'cold':>8}"]
    for name, (warm, cold) in figures.items():
        shown = "-" if cold != cold else f"{cold:8.1f}"  # NaN: not measured cold
        lines.append(f"  {name:<42} {warm:8.1f} {shown:>8}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
