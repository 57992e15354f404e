"""Micro-benchmark of list filtering (not collected by pytest).

Run: ``.venv/bin/python -m tests.benchmarks.bench_listing``. With the example library, prints the
best-of-N time to judge a ``tools/list`` result of 1, 50 and 200 tools for an anonymous caller
and for one whose headers name an agent with an allow-list: with one program per policy over
the whole list (what the server does) and entry by entry (``entry_programs=False``, for
comparison); the time to prepare the set's list filter (done on the reload thread); and
``PolicyAuthorizer.filter_list`` end to end for 50 tools (identity verification and the
decoded result's rewrite included).
"""

from __future__ import annotations

import functools
import time
import timeit
from collections.abc import Callable
from pathlib import Path

from authz_server.envoy.adapter import request_from_check
from authz_server.identity.model import ANONYMOUS
from authz_server.listing import ListFilter, ListingCaller, ListKind
from authz_server.pipeline import PolicyAuthorizer
from authz_server.policy import load_directory
from authz_server.policy.store import PolicyStore
from authz_server.policy.testing import check_request_from_shorthand
from authz_server.request import Request

POLICIES = Path(__file__).resolve().parents[2] / "policies"
KNOWN = [
    "read_file",
    "write_file",
    "list_directory",
    "search_files",
    "get_issue",
    "list_issues",
    "create_pull_request",
    "merge_pull_request",
    "delete_branch",
    "run_command",
]


def tools(count: int) -> list[str]:
    names = KNOWN + [f"tool_{i}" for i in range(count)]
    return names[:count]


def list_request(headers: dict[str, str]) -> Request:
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    return request_from_check(check_request_from_shorthand({"mcp": message, "headers": headers}))


def best(run: Callable[[], object], number: int, repeat: int = 7) -> float:
    """Microseconds per run, best of ``repeat`` rounds of ``number`` runs."""
    return min(timeit.repeat(run, number=number, repeat=repeat)) / number * 1e6


def main() -> None:
    policies = load_directory(POLICIES)
    started = time.perf_counter()
    ListFilter(policies).prepare()
    print(f"prepare the example set's list filter: {(time.perf_counter() - started) * 1e3:.1f} ms")
    callers = {
        "anonymous": ListingCaller(list_request({}), ANONYMOUS),
        "agent header": ListingCaller(list_request({"x-agent-id": "triage-bot"}), ANONYMOUS),
    }
    print(f"{'caller':<14} {'tools':>5} {'one program':>12} {'per entry':>10}   (us per list)")
    for label, caller in callers.items():
        for count in (1, 50, 200):
            names = tools(count)
            timings = []
            for entry_programs in (True, False):
                list_filter = ListFilter(policies, entry_programs=entry_programs)
                list_filter.prepare()
                run = functools.partial(list_filter.visible, caller, ListKind.TOOLS, names)
                timings.append(best(run, max(1, 2000 // count)))
            print(f"{label:<14} {count:>5} {timings[0]:>12.0f} {timings[1]:>10.0f}")
    authorizer = PolicyAuthorizer(PolicyStore(POLICIES))
    authorizer.start()
    try:
        request = list_request({})
        result = {"tools": [{"name": n, "inputSchema": {}} for n in tools(50)]}
        authorizer.filter_list(request, result, "tools/list")  # prepares the filter
        per_list = best(lambda: authorizer.filter_list(request, result, "tools/list"), 50)
        print(f"PolicyAuthorizer.filter_list, 50 tools, anonymous: {per_list:.0f} us")
    finally:
        authorizer.stop()


if __name__ == "__main__":
    main()
