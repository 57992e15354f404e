"""Strict JSON: the stdlib parser plus the checks that make its answer the only possible reading.

A body must mean the same thing to us as to the MCP server behind us. Parsers disagree on
duplicate keys (first wins / last wins / error), on lone surrogates, on a byte order mark, on
``NaN`` and on text after the value; each of those is refused here rather than interpreted.

It must also mean the same thing to the policies: CEL (cel-expr-python) ends a string at U+0000
and holds no integer outside int64/uint64. A U+0000 anywhere is refused; a larger integer becomes
the nearest double, which is how Kyverno's Go decoder reads every JSON number.

The work a body may cause is bounded by what it holds (nesting depth, number of values) before
the parser runs, so a small body cannot cost more than a large ordinary one.

orjson reads a body first: the stdlib parser calls back into Python for every object and every
integer (the checks above), which made a body of many small objects (a client's choice) cost
milliseconds. orjson refuses what the strict reading refuses (``NaN``, lone surrogates, text after
the value, numbers beyond a double) and reads integers and doubles to the same values; what it
cannot settle alone goes to the stdlib parser, which decides as before: a body with a duplicate
key (orjson keeps the last), with an escape that can make U+0000 or a surrogate, or one orjson
refuses (for the precise error).
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

import orjson

from authz_server.mcp._fail import Fail
from authz_server.mcp.message import FailureReason

_WS = re.compile(r"[ \t\n\r]*")
_BRACKET = re.compile(r"[\[\]{}]")
# Bytes to brackets only, all square: a table and the bytes it deletes.
_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
# Escapes that can produce a surrogate code unit (pairs are recombined by json) or U+0000 (a raw
# one is a control character, refused by the parser): only their presence, found in one scan,
# triggers the (rarer, costlier) full checks.
_ODD_ESCAPE = re.compile(r"\\u(?:[dD][89a-fA-F]|0000)")
_ESCAPED_COLON = re.compile(r"\\u003[aA]")
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
        raise Fail(FailureReason.INVALID_JSON, f"number out of range ({len(text)} characters)")
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


def _outside_strings(text: str) -> str:
    """``text`` with every string literal removed (the JSON structure around them is kept)."""
    if "\\" in text:
        # Backslashes pair up left to right as JSON reads them; what is left before a quote
        # escapes it. Without escapes, every other quote-separated piece is outside a string.
        text = text.replace("\\\\", "").replace('\\"', "")
    return "".join(text.split('"')[::2])


def _members(text: str) -> int:
    """How many object members ``text`` holds: a colon outside strings separates each one's key
    from its value."""
    return _outside_strings(text).count(":")


_STRICT = object()


def _fast(body: bytes, text: str) -> Any:
    """orjson's reading of ``body``, or :data:`_STRICT` when the strict parser must decide."""
    if "\\" in text and _ODD_ESCAPE.search(text):
        return _STRICT
    try:
        value = orjson.loads(body)
        if ":" in text and not _same_members(text, orjson.dumps(value)):
            return _STRICT
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return _STRICT  # refused, or deeper than orjson writes (Limits.max_depth over 254)
    return value


def _same_members(text: str, dumped: bytes) -> bool:
    """Whether the value orjson read (``dumped``) kept every object member of ``text``: a
    duplicate key leaves its object a member short.

    Each member has one colon outside strings; orjson writes the colons inside strings as they
    were read. So unless the text writes a colon as an escape (``\\u003a``), its colons outnumber
    those dumped exactly when a member was lost, and counting them all is enough.
    """
    if "\\" in text and _ESCAPED_COLON.search(text):
        return _members(text) == _members(dumped.decode())
    return text.count(":") == dumped.count(b":")


def max_depth(text: str) -> int:
    """Nesting depth of arrays and objects, ignoring brackets inside strings."""
    brackets = _BRACKET.findall(_outside_strings(text))
    return max(accumulate(map(_DEPTH_STEP.__getitem__, brackets)), default=0)


def _deeper_than(structure: str, limit: int) -> bool:
    """Whether the brackets of ``structure`` (its strings removed) nest deeper than ``limit``:
    :func:`max_depth` > ``limit``, in a few C-level passes for the bodies that are not.

    Each pass removes the innermost pairs, one level of a well-nested sequence; one that empties
    within ``limit`` passes nests no deeper. Anything else (deeper, or not well nested, which the
    parser will refuse) is measured by :func:`max_depth`.
    """
    rest = structure.encode().translate(_SQUARE, _NOT_BRACKET)
    for _ in range(limit):
        if not rest:
            return False
        shorter = rest.replace(b"[]", b"")
        if len(shorter) == len(rest):
            break
        rest = shorter
    return bool(rest) and max_depth(structure) > limit


def _values_bound(text: str) -> int:
    # A value is the whole text, or an element or member of a container: every one but the
    # first of a container follows a comma. So 1 + commas + containers bounds the count.
    return 1 + text.count(",") + text.count("{") + text.count("[")


def check_size(text: str, depth_limit: int, values_limit: int) -> None:
    """Refuse more values or deeper nesting than the limits allow, before anything is parsed.

    Counting characters bounds both from above; only a body over a bound is scanned again with
    its strings removed, and that scan costs a few C-level passes over the text.
    """
    containers = text.count("{") + text.count("[")
    # Every value takes at least a character, an empty container two for the two it counts.
    over_values = len(text) >= values_limit and containers + text.count(",") + 1 > values_limit
    if not over_values and containers <= depth_limit:
        return
    structure = _outside_strings(text)
    if over_values and _values_bound(structure) > values_limit:
        raise Fail(FailureReason.TOO_LARGE, f"more than {values_limit} JSON values")
    if containers > depth_limit and _deeper_than(structure, depth_limit):
        raise Fail(FailureReason.TOO_DEEP, f"nesting deeper than {depth_limit}")


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


def is_json_to_someone(body: bytes, values_limit: int) -> bool:
    """Whether a lenient reader (the standard library's json.loads, which takes a byte order
    mark, UTF-16/32, NaN and duplicate keys) reads ``body`` as a JSON value.

    Bytes that could hold more values than the limit are refused rather than parsed, so this
    costs no more than a strict parse; compressed data comes nowhere near the bound (about 1
    byte in 85 of random data is a comma or an opening bracket).
    """
    if 1 + body.count(b",") + body.count(b"{") + body.count(b"[") > values_limit:
        raise Fail(FailureReason.TOO_LARGE, f"more than {values_limit} JSON values as sent")
    try:
        json.loads(body)
    except (ValueError, RecursionError):
        return False
    return True


def loads(body: bytes, depth_limit: int, values_limit: int, *, fast: bool = True) -> Any:
    """Parse ``body`` as exactly one strict JSON value, or raise :class:`Fail`. ``fast=False``
    leaves orjson out: the reference reading, for differential tests."""
    if body.startswith(_BOMS):
        raise Fail(FailureReason.BYTE_ORDER_MARK, "body starts with a byte order mark")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Fail(FailureReason.INVALID_UTF8, f"invalid UTF-8 at byte {exc.start}") from None
    check_size(text, depth_limit, values_limit)
    value = _fast(body, text) if fast else _STRICT
    return _strict(text) if value is _STRICT else value


def _strict(text: str) -> Any:
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
