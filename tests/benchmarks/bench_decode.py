"""Micro-benchmark of authz_server.mcp.decode (not collected by pytest).

Run: ``.venv/bin/python -m tests.benchmarks.bench_decode``. Prints the best-of-N time per call
for a typical tools/call body and for 64 KiB, 256 KiB and 1 MiB bodies, with us/KiB, so linear
growth (a flat us/KiB column) is visible. The large bodies mix what real tool calls carry:
many small objects (keys, numbers, escapes) and long strings.
"""

from __future__ import annotations

import gzip
import json
import timeit
from collections.abc import Callable

from authz_server.mcp import decode
from authz_server.mcp.kyverno import get_string_argument, parse

HEADERS = {
    "content-type": "application/json",
    "mcp-protocol-version": "2026-07-28",
    "mcp-method": "tools/call",
    "mcp-name": "create_pull_request",
}
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "agent", "version": "1.0"},
}


def tools_call(arguments: dict[str, object]) -> bytes:
    params = {"name": "create_pull_request", "arguments": arguments, "_meta": META}
    message = {"jsonrpc": "2.0", "id": 42, "method": "tools/call", "params": params}
    return json.dumps(message, separators=(",", ":")).encode()


def typical() -> bytes:
    return tools_call({"repo": "octo/widgets", "title": "Fix the flux capacitor", "head": "fix"})


def large(size: int) -> bytes:
    files: list[dict[str, object]] = []
    body = tools_call({"files": files})
    i = 0
    while len(body) < size:
        chunk = [
            {"path": f"src/m{i + j}.py", "mode": 0o644, "lines": [1, 2, 3], "text": "x\\y\n" * 40}
            for j in range(64)
        ]
        files.extend(chunk)
        i += 64
        body = tools_call({"files": files})
    return body


def per_call(fn: Callable[[], object], budget: float = 0.4) -> float:
    number = 1
    while timeit.timeit(fn, number=number) < budget / 10:
        number *= 2
    return min(timeit.repeat(fn, number=number, repeat=5)) / number


def main() -> None:
    small = typical()
    rows = [("tools/call (typical)", small, HEADERS, len(small))]
    for kib in (64, 256, 1024):
        body = large(kib * 1024)
        rows.append((f"tools/call {kib} KiB", body, HEADERS, len(body)))
    big = large(256 * 1024)
    gzipped = gzip.compress(big)
    rows.append(("256 KiB as gzip", gzipped, {**HEADERS, "content-encoding": "gzip"}, len(big)))
    # us/KiB is per KiB of JSON decoded (after decompression).
    print(f"{'body':<24}{'JSON bytes':>12}{'us/call':>12}{'us/KiB':>10}")
    for label, body, headers, size in rows:
        decoded = decode(body, headers)
        assert decoded.failure is None and decoded.messages, decoded.failure
        seconds = per_call(lambda b=body, h=headers: decode(b, h))
        us = seconds * 1e6
        print(f"{label:<24}{size:>12}{us:>12.1f}{us / (size / 1024):>10.2f}")
    json_s = per_call(lambda: json.loads(small))
    print(f"\nfor scale: json.loads(typical) {json_s * 1e6:.1f} us")
    view = parse(small)
    getter_s = per_call(lambda: get_string_argument(view, "repo", ""))
    print(f"kyverno get_string_argument {getter_s * 1e6:.2f} us")


if __name__ == "__main__":
    main()
