"""Micro-benchmark of authz_server.mcp.decode (not collected by pytest).

Run: ``.venv/bin/python -m tests.benchmarks.bench_decode``. Prints the best-of-N time per call
for a typical tools/call body and for 64 KiB, 256 KiB and 1 MiB bodies, with us/KiB, so linear
growth (a flat us/KiB column) is visible. The large bodies mix what real tool calls carry:
many small objects (keys, numbers, escapes) and long strings.

A second table shows the cost an attacker controls: for bodies of the shapes that cost most per
byte (empty objects and arrays, numbers, strings, whitespace), each as large as the limits let
through and as large as a compressed body can claim (4 MiB), the time to decode them sent plain
and compressed (gzip, brotli; with ``--decode-content-encoding``), and the ratio of the
compressed to the plain cost; then the double-gzipped bomb of issue 13, with and without the
flag.
"""

from __future__ import annotations

import gzip
import json
import timeit
from collections.abc import Callable

import brotli

from authz_server.mcp import DEFAULT_LIMITS, decode
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


def _decode_s(body: bytes, headers: dict[str, str], decompress: bool = False) -> float:
    return per_call(lambda: decode(body, headers, method="POST", decompress=decompress), 0.2)


def attack_bodies() -> list[tuple[str, bytes]]:
    """Tool calls of the costliest shapes: the most values the limits admit, and 4 MiB ones."""
    limit = DEFAULT_LIMITS.max_json_values
    cap = DEFAULT_LIMITS.max_decompressed_bytes

    def call(items: list[bytes]) -> bytes:
        head = (
            b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":['
        )
        return head + b",".join(items) + b"]}}}"

    # The wrapper holds 7 values; an empty container counts twice (see Limits).
    scalars, containers = limit - 8, (limit - 8) // 2
    return [
        (f"{containers} empty objects", call([b"{}"] * containers)),
        (f"{containers} empty arrays", call([b"[]"] * containers)),
        (f"{scalars} integers", call([b"12345"] * scalars)),
        (f"{scalars} big integers", call([b"1" + b"0" * 20] * scalars)),
        (f"{scalars} floats", call([b"1.5e3"] * scalars)),
        (f"{scalars} short strings", call([b'"ab"'] * scalars)),
        ("4 MiB of empty objects", call([b"{}"] * ((cap - 120) // 3))),
        ("4 MiB in one string", call([b'"' + b"a" * (cap - 120) + b'"'])),
        ("4 MiB of whitespace", b" " * (cap - 120) + call([])),
        ("1 MiB ordinary call", large(1024 * 1024)),
    ]


def attacks() -> None:
    encodings: list[tuple[str, Callable[[bytes], bytes]]] = [
        ("gzip", gzip.compress),
        ("br", lambda b: brotli.compress(b, quality=5)),
    ]
    print("\ncost an attacker controls (POST; ratio = compressed cost / plain cost)")
    print(f"{'JSON text':<28}{'bytes':>9}{'plain ms':>10}  outcome")
    rows = []
    for label, text in attack_bodies():
        plain_s = _decode_s(text, {"content-type": "application/json"})
        outcome = decode(text, {}, method="POST").failure
        reason = outcome.reason.value if outcome else "decoded"
        print(f"{label:<28}{len(text):>9}{plain_s * 1e3:>10.2f}  {reason}")
        rows.append((label, text, plain_s))
    print(f"\n{'JSON text':<28}{'encoding':<10}{'sent':>9}{'ms':>9}{'ratio':>7}  outcome")
    for label, text, plain_s in rows:
        for name, compress in encodings:
            body = compress(text)
            headers = {"content-type": "application/json", "content-encoding": name}
            seconds = _decode_s(body, headers, decompress=True)
            failure = decode(body, headers, method="POST", decompress=True).failure
            reason = failure.reason.value if failure else "decoded"
            print(
                f"{label:<28}{name:<10}{len(body):>9}{seconds * 1e3:>9.2f}"
                f"{seconds / plain_s:>7.2f}  {reason}"
            )
    bomb = gzip.compress(gzip.compress(b"[" + b"{}," * (4 * 1024 * 1024 // 3) + b"{}]", 9), 9)
    headers = {"content-type": "application/json", "content-encoding": "gzip, gzip"}
    print(f"\ndouble-gzipped 4 MiB of empty objects, {len(bomb)} bytes sent:")
    for decompress in (False, True):
        seconds = _decode_s(bomb, headers, decompress)
        failure = decode(bomb, headers, method="POST", decompress=decompress).failure
        reason = failure.reason.value if failure else "decoded"
        print(f"  decode-content-encoding {'on ' if decompress else 'off'}: {seconds * 1e3:8.2f} ms"
              f"  ({reason})")  # fmt: skip


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
        options = {"method": "POST", "decompress": "content-encoding" in headers}
        decoded = decode(body, headers, **options)  # type: ignore[arg-type]
        assert decoded.failure is None and decoded.messages, decoded.failure
        seconds = per_call(lambda b=body, h=headers, o=options: decode(b, h, **o))  # type: ignore[misc]
        us = seconds * 1e6
        print(f"{label:<24}{size:>12}{us:>12.1f}{us / (size / 1024):>10.2f}")
    json_s = per_call(lambda: json.loads(small))
    print(f"\nfor scale: json.loads(typical) {json_s * 1e6:.1f} us")
    view = parse(small)
    getter_s = per_call(lambda: get_string_argument(view, "repo", ""))
    print(f"kyverno get_string_argument {getter_s * 1e6:.2f} us")
    attacks()


if __name__ == "__main__":
    main()
