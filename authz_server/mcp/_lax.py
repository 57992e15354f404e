"""Argument values read as the MCP Python SDK's tools receive them (pydantic's lax mode).

A policy that reads ``force`` must see what the tool will run with: the SDK validates a tool's
arguments against its signature with pydantic in lax mode, which turns ``"yes"`` into ``True``
and ``" 1_000.0 "`` into ``1000``. These functions give pydantic's answer for a decoded JSON
value, or None where pydantic refuses it (the SDK then refuses the call) or where CEL cannot hold
the answer (an integer beyond int64). The rules were established against pydantic 2.14
(pydantic-core's Rust parsers) and are pinned by property tests that use the SDK as the oracle.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Rust's ``str::trim`` (Unicode White_Space), which pydantic applies before parsing a number;
# Python's ``str.strip`` would also remove U+001C..U+001F, which pydantic keeps (and refuses).
_WHITESPACE = (
    "".join(chr(c) for c in (*range(0x09, 0x0E), 0x20, 0x85, 0xA0, 0x1680, *range(0x2000, 0x200B)))
    + "\u2028\u2029\u202f\u205f\u3000"
)
# An integer in decimal, single underscores between digits, and an all-zero fraction.
_INT = re.compile(r"[+-]?[0-9](?:_?[0-9])*(?:\.0+)?", re.ASCII)
# Rust's f64 syntax; underscores are handled apart (see _float_text).
_FLOAT = re.compile(
    r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)",
    re.ASCII | re.IGNORECASE,
)
_TRUE = frozenset({"1", "t", "y", "on", "yes", "true"})
_FALSE = frozenset({"0", "f", "n", "no", "off", "false"})


def to_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        # Only the numbers 0 and 1 (0.0, -0.0 and 1.0 included); 2 or 0.5 are refused.
        return value == 1 if value in (0, 1) else None
    if isinstance(value, str) and len(value) <= 5:
        # Exact ASCII words in any case, no surrounding space ("tRuE", "Yes", "ON").
        lowered = value.lower() if value.isascii() else ""
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    return None


def to_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        result = value
    elif isinstance(value, float):
        # pydantic: finite, no fraction, strictly inside (-2**63, 2**63) as a double.
        if not (value.is_integer() and -(2.0**63) < value < 2.0**63):
            return None
        result = int(value)
    elif isinstance(value, str):
        text = value.strip(_WHITESPACE)
        if not _INT.fullmatch(text):
            return None
        result = int(text.partition(".")[0].replace("_", ""))
    else:
        return None
    return result if INT64_MIN <= result <= INT64_MAX else None


def to_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            return None
    if isinstance(value, str):
        text = _float_text(value)
        return None if text is None else float(text)
    return None


def _float_text(text: str) -> str | None:
    """The text Rust parses as an f64 for ``text``: trimmed, or else (pydantic's fallback) the
    untrimmed text without its underscores (none leading, trailing or doubled), else None."""
    trimmed = text.strip(_WHITESPACE)
    if _FLOAT.fullmatch(trimmed):
        return trimmed
    if "_" not in text or text[0] == "_" or text[-1] == "_" or "__" in text:
        return None
    stripped = text.replace("_", "")
    return stripped if _FLOAT.fullmatch(stripped) else None


def to_str(value: Any) -> str | None:
    # pydantic's lax str takes no number or bool: 5 for a ``str`` parameter is refused.
    return value if isinstance(value, str) else None


def to_list(value: Any, convert: Callable[[Any], T | None]) -> list[T] | None:
    """A list whose every item converts; a string holding a JSON array is read as that array,
    as the SDK does (``"[1, 2]"`` for a ``list[int]`` parameter)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return None
    if not isinstance(value, list | tuple):
        return None
    items = []
    for item in value:
        converted = convert(item)
        if converted is None:
            return None
        items.append(converted)
    return items
