"""Cost of one HTTP-mode check in process: the fast path as served against the reference path as
loaded, and the Python memory each keeps per check.

The policies are those of tests/policy/test_http_lean.py (a variable read through
``mcp.GetStringArgument``, a header, a policy that fails on a non-numeric count, an Audit one);
each check is a tools/call with a new 200-byte argument, adapted by the HTTP authorizer's adapter,
decoded and judged. h2load drives gRPC only, so ``make bench`` does not cover this transport.

Usage: python -m tests.benchmarks.bench_http_mode [--checks N] [--rounds N]
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable

from authz_server.policy import load_text
from authz_server.policy.engine import Engine
from tests.benchmarks.stages import per_call_us
from tests.leaks import kept_bytes, steady_growth
from tests.policy.test_http_lean import POLICIES, engines, judge


def _checks(engine: Engine, fail: bool) -> Callable[[], object]:
    counter = itertools.count()

    def run() -> object:
        arguments = {"owner": f"o{next(counter):08d}-" + "o" * 200, "repo": "r"}
        if fail:
            arguments["count"] = "many"
        return judge(engine, arguments)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    served, reference = engines(load_text(POLICIES))
    print("HTTP-mode check in process (adapt, decode, judge): us per check, bytes kept per check")
    print(f"  {'path':<34}{'allowed':>9}{'kept':>7}{'policy fails':>14}{'kept':>7}")
    for name, engine in (("fast path (served)", served), ("reference path as loaded", reference)):
        row = f"  {name:<34}"
        for fail in (False, True):
            run = _checks(engine, fail)
            us = per_call_us(run, args.checks, rounds=args.rounds)
            kept = kept_bytes(steady_growth(run, args.checks, every=2)) / args.checks
            row += f"{us:>{14 if fail else 9}.1f}{kept:>7.0f}"
        print(row)


if __name__ == "__main__":
    main()
