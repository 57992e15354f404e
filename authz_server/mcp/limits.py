"""Resource bounds for decoding one body; a body beyond any of them is a failure, never a partial
result."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds that keep decoding linear and memory-bounded whatever a client sends.

    ``max_body_bytes`` applies to the bytes as received (before decompression);
    ``max_decompressed_bytes`` to what all decompression layers together produce, so a zip
    bomb stops at the cap instead of allocating; ``max_depth`` counts nested arrays and objects
    (a batch array is one level); ``max_json_values`` bounds the values (containers, scalars,
    empty containers counted twice) the parser may build, so the parse of a body costs no more
    than that of a large ordinary one; ``max_batch`` bounds how many messages one body may carry
    (and how many times the policies run for it).
    """

    max_body_bytes: int = 4 * MIB
    max_decompressed_bytes: int = 4 * MIB
    max_depth: int = 64
    max_json_values: int = 100_000
    max_batch: int = 100
    # Stacked Content-Encodings ("gzip, br") beyond this many are refused; no client stacks them.
    max_encodings: int = 1


DEFAULT_LIMITS = Limits()
