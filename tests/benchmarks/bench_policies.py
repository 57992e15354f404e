"""Policy evaluation cost: per policy, and for the whole Engine.check on a typical tools/call.

Run with ``.venv/bin/python -m tests.benchmarks.bench_policies [POLICY_DIR]`` (default: the
example ``policies/`` directory). Figures are per call, best of several rounds; the machine is
noisy, so compare them with each other rather than across runs.
"""

from __future__ import annotations

import json
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
from authz_server.policy.testing import check_request_from_shorthand

ROUNDS = 5


def _best(fn: Callable[[], object], number: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best * 1e6


def main(argv: list[str]) -> None:
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[2] / "policies"
    policies = load_directory(root)
    message = check_request_from_shorthand(
        {
            "tool": "get_issue",
            "arguments": {"owner": "octo", "repo": "hello", "path": "README.md"},
            "headers": {"x-agent-id": "triage-bot"},
        }
    )
    request = request_from_check(message)
    decoded = decode(request.body, request.headers)
    view = decoded.messages[0].kyverno
    data = {**constants(), "object": message, "mcp": view}
    engine = Engine(policies)

    print(f"policies: {root} ({len(policies)} loaded)")
    print(f"request: tools/call {json.loads(request.body)['params']['name']}\n")
    print(f"{'policy':32} {'us/eval':>8}  outcome")
    applicable = {p.name for p in policies.for_method("tools/call")}
    for policy in policies.policies:

        def one(policy=policy):
            return evaluate_policy(policy, activation(data), data)

        outcome = one()
        kind = (
            "error"
            if outcome.error
            else ("allow" if outcome.decision.allowed else "deny")
            if outcome.decision
            else "no decision"
        )
        skipped = "" if policy.name in applicable else "  (skipped by method index)"
        print(f"{policy.name:32} {_best(one, 2000):8.1f}  {kind}{skipped}")

    print()
    print(
        f"{'activation (shared per message)':40} {_best(lambda: activation(data), 20000):8.1f} us"
    )
    decode_us = _best(lambda: decode(request.body, request.headers), 5000)
    print(f"{'decode (MCP body)':40} {decode_us:8.1f} us")
    decision = engine.check(request, decoded)
    check_us = _best(lambda: engine.check(request, decoded), 2000)
    print(f"{'Engine.check (all policies)':40} {check_us:8.1f} us  -> allowed={decision.allowed}")
    full = _best(
        lambda: engine.check(
            r := request_from_check(message), decode(r.body, r.headers, truncated=r.body_truncated)
        ),
        2000,
    )
    print(f"{'adapter + decode + Engine.check':40} {full:8.1f} us")


if __name__ == "__main__":
    main(sys.argv[1:])
