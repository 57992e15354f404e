"""Hostile request bodies shared by the decoder tests and the SDK oracle tests."""

from __future__ import annotations

import json
import random
import zlib
from typing import Any

# Printable ASCII that may stand inside a JSON string unescaped.
_STRING_BYTES = [c for c in range(0x20, 0x7F) if c not in (0x22, 0x5C)]


def deflate_polyglot(message: dict[str, Any], seed: int = 13) -> bytes:
    """A body that is ``message`` as JSON and, byte for byte, also a complete raw-deflate stream.

    How: the leading newline is a deflate block header (fixed Huffman, not final); the first
    member's string value holds printable bytes that decode as valid codes, then an end-of-block
    code and a stored-block header whose length bytes (L, H, ~L, ~H) stay inside the string as
    printable ASCII followed by one valid two-byte UTF-8 character. The stored block then covers
    the rest of the JSON exactly. A random search finds such a prefix within a few thousand tries.
    """
    members = json.dumps(message, separators=(",", ":"))[1:-1].encode()
    rng = random.Random(seed)
    for _ in range(1_000_000):
        head = b'\n{"p":"' + bytes(rng.choice(_STRING_BYTES) for _ in range(rng.randint(2, 14)))
        low = rng.choice([c for c in range(0x20, 0x3E) if c != 0x22])
        high = rng.choice([c for c in range(0x40, 0x7F) if c != 0x5C])
        length = low | high << 8
        rest = b'",' + members + b',"q":"'
        filler = length - len(rest) - 2
        if filler < 0:
            continue
        body = head + bytes([low, high, low ^ 0xFF, high ^ 0xFF]) + rest + b"x" * filler + b'"}'
        engine = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            engine.decompress(body)
        except zlib.error:
            continue
        if engine.eof and not engine.unused_data:
            return body
    raise AssertionError("no polyglot found")  # pragma: no cover


def tools_call(name: str, arguments: dict[str, Any], id_: int = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": id_,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }
