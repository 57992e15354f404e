"""Strict JSON: the stdlib parser plus the checks that make its answer the only possible reading.

A body must mean the same thing to us as to the MCP server behind us. Parsers disagree on
duplicate keys (first wins / last wins / error), on lone surrogates, on a byte order mark, on
``NaN`` and on text after the value; each of those is refused here rather than interpreted.

It must also mean the same thing to the policies: CEL (cel-expr-python) ends a string at U+0000
and holds no integer outside int64/uint64. A U+0000 anywhere is refused; a larger integer becomes
the nearest double, which is how Kyverno's Go decoder reads every JSON number.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

from authz_server.mcp._fail import Fail
from authz_server.mcp.message import FailureReason

_WS = re.compile(r"[ \t\n\r]*")
_BRACKET = re.compile(r"[\[\]{}]")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
# Escapes that can produce a surrogate code unit (pairs are recombined by json) or U+0000 (a raw
# one is a control character, refused by the parser): only their presence, found in one scan,
# triggers the (rarer, costlier) full checks.
_ODD_ESCAPE = re.compile(r"\\u(?:[dD][89a-fA-F]|0000)")
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")
_CEL_INT_MIN, _CEL_UINT_MAX = -(2**63), 2**64 - 1
# Shorter integer literals always fit int64; longer than this they exceed every double
# (JSON allows no leading zeros).
_SHORT_INT, _UINT64_DIGITS, _LONGEST_DOUBLE_INT = 18, 20, 310


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise Fail(FailureReason.DUPLICATE_KEY, f"duplicate key {key!r}")
            seen.add(key)
    return obj


def _no_constant(name: str) -> Any:
    raise Fail(FailureReason.INVALID_JSON, f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise Fail(FailureReason.INVALID_JSON, f"number out of range: {text[:40]}")
    return value


def _cel_int(text: str) -> int | float:
    if len(text) <= _SHORT_INT:
        return int(text)
    if len(text) > _LONGEST_DOUBLE_INT:
        raise Fail(FailureReason.INVALID_JSON, f"number out of range ({len(text)} digits)")
    if len(text) - text.startswith("-") <= _UINT64_DIGITS:
        value = int(text)
        if _CEL_INT_MIN <= value <= _CEL_UINT_MAX:
            return value
    return _finite_float(text)


_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_keys,
    parse_constant=_no_constant,
    parse_float=_finite_float,
    parse_int=_cel_int,
)


def max_depth(text: str) -> int:
    """Nesting depth of arrays and objects, ignoring brackets inside strings."""
    if "\\" in text:
        # Backslashes pair up left to right as JSON reads them; what is left before a quote
        # escapes it. Without escapes, every other quote-separated piece is outside a string.
        text = text.replace("\\\\", "").replace('\\"', "")
    brackets = _BRACKET.findall("".join(text.split('"')[::2]))
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def _has_nul(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            if any("\x00" in key for key in item):
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def is_json_to_someone(body: bytes) -> bool:
    """Whether a lenient reader (the standard library's json.loads, which takes a byte order
    mark, UTF-16/32, NaN and duplicate keys) reads ``body`` as a JSON value."""
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        return False
    return True


def loads(body: bytes, depth_limit: int) -> Any:
    """Parse ``body`` as exactly one strict JSON value, or raise :class:`Fail`."""
    if body.startswith(_BOMS):
        raise Fail(FailureReason.BYTE_ORDER_MARK, "body starts with a byte order mark")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Fail(FailureReason.INVALID_UTF8, f"invalid UTF-8 at byte {exc.start}") from None
    # Counting brackets bounds the depth from above, so the exact scan runs only on bodies with
    # many of them.
    if text.count("{") + text.count("[") > depth_limit and max_depth(text) > depth_limit:
        raise Fail(FailureReason.TOO_DEEP, f"nesting deeper than {depth_limit}")
    start = _WS.match(text).end()  # type: ignore[union-attr]
    try:
        value, end = _DECODER.raw_decode(text, start)
    except RecursionError:
        raise Fail(FailureReason.TOO_DEEP, "nesting too deep to parse") from None
    except ValueError as exc:
        raise Fail(FailureReason.INVALID_JSON, str(exc)[:200]) from None
    if _WS.match(text, end).end() != len(text):  # type: ignore[union-attr]
        raise Fail(FailureReason.TRAILING_DATA, f"data after the JSON value at offset {end}")
    if _ODD_ESCAPE.search(text):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise Fail(FailureReason.INVALID_UTF8, "lone surrogate escape in a string") from None
        if _has_nul(value):
            raise Fail(FailureReason.NUL_CHARACTER, "U+0000 in a string or a key")
    return value
