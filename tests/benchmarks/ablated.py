"""authz-server with stages of its decision path switched off, for ``run.py --breakdown``.

Profilers attribute a served check's time to functions, but in the server every stage runs after
gRPC's threads and the other stages have been through the CPU caches, so what a stage costs there
is not what it costs alone (stages.py measures 2.5-3.5x between the two). Switching a stage off
and measuring the server's CPU per check gives its cost as served, caches included.

A stage switched off still answers: ``decode``, ``identity`` and ``engine`` give the result of
their first call again (the decoded body, the verified caller, the decision), and ``metrics`` and
``audit`` observe nothing. So the rest of the path runs as before, as long as every check is the
same request: the breakdown sends one shape only.

Usage: python -m tests.benchmarks.ablated STAGES serve [authz-server serve options]
STAGES is a comma-separated subset of decode, identity, engine, metrics, audit, or "none". Pass
``--max-worker-rss-mib 0``: a supervisor's workers are new interpreters, without the switches.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from authz_server import cli
from authz_server.identity.stage import Authenticator
from authz_server.observe.audit import AuditLog
from authz_server.observe.metrics import Metrics
from authz_server.pipeline import PolicyAuthorizer
from authz_server.policy.engine import Engine

STAGES = ("decode", "identity", "engine", "metrics", "audit")


def _first_result(original: Callable[..., Any]) -> Callable[..., Any]:
    """``original`` computed once; every later call gets that result."""
    remembered: list[Any] = []

    @functools.wraps(original)
    def replaced(*args: Any, **kwargs: Any) -> Any:
        if not remembered:
            remembered.append(original(*args, **kwargs))
        return remembered[0]

    return replaced


def _nothing(self: Any, *args: Any, **kwargs: Any) -> None:
    return None


def switch_off(stages: set[str]) -> None:
    """Replace the stages' methods in this process (before the server is built)."""
    if "decode" in stages:
        PolicyAuthorizer._decode = _first_result(PolicyAuthorizer._decode)  # type: ignore[method-assign]
    if "identity" in stages:
        Authenticator.verify = _first_result(Authenticator.verify)  # type: ignore[method-assign]
    if "engine" in stages:
        # The engine's per-policy tally for the metrics goes with it: decide() reports it.
        Engine.decide = _first_result(Engine.decide)  # type: ignore[method-assign]
    if "metrics" in stages:
        Metrics.observe = _nothing  # type: ignore[method-assign]
        Metrics.policies_evaluated = _nothing  # type: ignore[method-assign]
    if "audit" in stages:
        AuditLog.observe = _nothing  # type: ignore[method-assign]


def parse_stages(text: str) -> set[str]:
    stages = set() if text == "none" else set(text.split(","))
    unknown = stages - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown stage(s) {', '.join(sorted(unknown))}; known: {STAGES}")
    return stages


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    switch_off(parse_stages(sys.argv[1]))
    sys.exit(cli.main(sys.argv[2:]))


if __name__ == "__main__":
    main()
