"""Policy evaluation cost: per policy, per method bucket, and for the whole Engine.check.

Run with ``.venv/bin/python -m tests.benchmarks.bench_policies [POLICY_DIR]`` (default: the
example ``policies/`` directory). The request is the benchmark workload (``workload.py``: a
tools/call with arguments, an agent header and a bearer JWT). Figures are per call, best of
several rounds; the machine is noisy, so compare them with each other rather than across runs.

"reference" is the per-policy evaluation (``evaluate_policy``, one CEL call per expression);
"fast path" is the bucket's combined program (one CEL call for every applicable policy, see
``authz_server.policy.combined``), which ``Engine.check`` uses unless it falls back.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from authz_server.cel import activation
from authz_server.cel.env import constants
from authz_server.envoy.adapter import request_from_check
from authz_server.mcp import decode
from authz_server.policy import Engine, load_directory
from authz_server.policy.engine import evaluate_policy
from tests.benchmarks import workload

ROUNDS = 5


def _best(fn: Callable[[], object], number: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best * 1e6


def _kind(outcome: object) -> str:
    if outcome.error:  # type: ignore[attr-defined]
        return "error"
    decision = outcome.decision  # type: ignore[attr-defined]
    if decision is None:
        return "no decision"
    return "allow" if decision.allowed else "deny"


def main(argv: list[str]) -> None:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[2] / "policies"
    policies = load_directory(root)
    message = workload.check_request()
    message = type(message).FromString(message.SerializeToString())
    request = request_from_check(message)
    decoded = decode(request.body, request.headers)
    mcp_message = decoded.messages[0]
    view = dict(mcp_message.kyverno)
    data = {**constants(), "object": message, "mcp": view}

    print(f"policies: {root} ({len(policies)} loaded)")
    print(f"request: {mcp_message.method} {mcp_message.tool_name} (tests/benchmarks/workload.py)\n")
    print(f"{'policy (reference path)':32} {'us/eval':>8}  outcome")
    applicable = {p.name for p in policies.for_method(mcp_message.method)}
    for policy in policies.policies:

        def one(policy=policy):
            return evaluate_policy(policy, activation(data), data)

        skipped = "" if policy.name in applicable else "  (skipped by method index)"
        print(f"{policy.name:32} {_best(one, 1000):8.1f}  {_kind(one())}{skipped}")

    print()
    fast = policies.fast_path(mcp_message.method)
    if fast is None:
        print("fast path: none for this bucket (its combined program did not compile)")
    else:
        cost = _best(lambda: fast.evaluate(message, view), 3000)
        label = f"fast path: one program, {len(fast.policies)} policies"
        print(f"{label:40} {cost:8.1f} us")
    activation_us = _best(lambda: activation(data), 20000)
    print(f"{'activation (shared per message)':40} {activation_us:8.1f} us")
    decode_us = _best(lambda: decode(request.body, request.headers), 5000)
    print(f"{'decode (MCP body)':40} {decode_us:8.1f} us")
    for label, engine in (
        ("Engine.check, reference path", Engine(policies, fast_path=False)),
        ("Engine.check", Engine(policies)),
    ):
        decision = engine.check(request, decoded)
        check_us = _best(lambda engine=engine: engine.check(request, decoded), 3000)
        print(f"{label:40} {check_us:8.1f} us  -> allowed={decision.allowed}")
    engine = Engine(policies)
    full = _best(
        lambda: engine.check(
            r := request_from_check(message), decode(r.body, r.headers, truncated=r.body_truncated)
        ),
        3000,
    )
    print(f"{'adapter + decode + Engine.check':40} {full:8.1f} us")


if __name__ == "__main__":
    main(sys.argv[1:])
