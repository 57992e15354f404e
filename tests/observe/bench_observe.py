"""Per-decision cost of the observers (not a test: timings are printed, never asserted).

Run: .venv/bin/python tests/observe/bench_observe.py
     PROMETHEUS_MULTIPROC_DIR=$(mktemp -d) .venv/bin/python tests/observe/bench_observe.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parent)]

from observe_events import event, tool_call  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

from authz_server.decision import allow  # noqa: E402
from authz_server.observe.audit import AuditLog  # noqa: E402
from authz_server.observe.metrics import Metrics  # noqa: E402

ROUNDS = 100_000


def per_call(function: object, events: list[object]) -> float:
    started = time.perf_counter()
    for item in events:
        function(item)  # type: ignore[operator]
    return (time.perf_counter() - started) / len(events) * 1e6


def main() -> None:
    headers = {
        "content-type": "application/json",
        "authorization": "Bearer abcdefgh12345678",
        "user-agent": "claude-code/2.1.0",
        "mcp-protocol-version": "2025-06-18",
        "mcp-session-id": "1868a90c-5a3b",
    }
    events = [
        event(
            allow(policy="github-no-merge", validation_index=0),
            tool_call(
                f"tool_{index % 20}",
                {
                    "owner": "acme",
                    "repo": f"repo-{index}",
                    "title": f"issue number {index} about things",
                    "labels": ["bug", "p1"],
                },
                id=index,
            ),
            headers=headers,
            decision_id=f"d-{index}",
        )
        for index in range(ROUNDS)
    ]
    mode = "multiprocess" if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else "single-process"
    metrics = Metrics(CollectorRegistry())
    per_call(metrics.observe, events[:1000])
    print(f"Metrics.observe ({mode}): {per_call(metrics.observe, events):.2f} us/decision")

    with open(os.devnull, "wb") as sink:
        # In chunks, each into a fresh queue: the server's writer empties the queue every
        # 50 ms, and a queue of 100,000 views would time the garbage collector walking it.
        chunk, spent = 1000, 0.0
        for start in range(0, ROUNDS, chunk):
            fresh = AuditLog(sink, queue_size=chunk + 1, max_pending_bytes=1 << 40)
            spent += per_call(fresh.observe, events[start : start + chunk]) * chunk
        print(f"AuditLog.observe (clip, enqueue): {spent / ROUNDS:.2f} us/decision")
        audit = AuditLog(sink, queue_size=ROUNDS + 1, max_pending_bytes=1 << 40)
        for item in events:
            audit.observe(item)
        started = time.perf_counter()
        audit.start()
        audit.close(timeout=None)
        writer = (time.perf_counter() - started) / ROUNDS * 1e6
        print(f"AuditLog writer thread (mask, encode, write): {writer:.2f} us/line")


if __name__ == "__main__":
    main()
