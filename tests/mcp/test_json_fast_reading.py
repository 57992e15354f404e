"""orjson reads bodies first (``mcp/_json.py``); the strict stdlib reading stays the reference.
Whatever a body holds, both must give the same value, or refuse it for the same reason: a
duplicate key orjson would silently resolve, a U+0000 or lone surrogate written as an escape, a
number no double holds, text after the value.

A client's choice of JSON spelling must not make the two readings differ: that difference is
where a policy would see one tool and the MCP server another.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz_server.mcp import FailureReason, Limits, _json
from authz_server.mcp._fail import Fail

LIMITS = Limits()
MANY = settings(
    max_examples=1500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)

keys = st.sampled_from(["name", "a", "a:b", "id", '"', "\\", "\x00", "é", "\U0001f600"])
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.sampled_from('ab:"\\\x00é\u2028/{}[],'), max_size=6)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=16,
)


def reading(body: bytes, *, fast: bool) -> Any:
    """The value, or the reason of the refusal."""
    try:
        value = _json.loads(body, LIMITS.max_depth, LIMITS.max_json_values, fast=fast)
    except Fail as failure:
        return failure.reason
    return ("value", _exact(value))


def _exact(value: Any) -> Any:
    """``value`` with every number tagged by its type (1 and 1.0 compare equal) and -0.0 kept."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return ("int", value)
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, list):
        return [_exact(item) for item in value]
    return {key: _exact(item) for key, item in value.items()}


def same_reading(body: bytes) -> None:
    assert reading(body, fast=True) == reading(body, fast=False), body


def _escaped(text: str) -> str:
    """``text`` with every character written as \\uXXXX escapes (two beyond the BMP)."""
    units = text.encode("utf-16-be", "surrogatepass")
    return "".join(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2))


@MANY
@given(value=values, ascii_only=st.booleans(), indent=st.sampled_from([None, 1]))
def test_any_value_reads_the_same(value: Any, ascii_only: bool, indent: int | None) -> None:
    same_reading(json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode())


@MANY
@given(
    first=keys,
    before=values,
    after=values,
    between=st.dictionaries(keys, values, max_size=2),
    escape=st.booleans(),
)
def test_a_duplicate_key_is_refused_however_written(
    first: str, before: Any, after: Any, between: dict[str, Any], escape: bool
) -> None:
    """The same key twice in one object, the second possibly spelt with escapes, and a colon
    inside a string that could make up for the member orjson drops."""
    key = json.dumps(first)
    second = f'"{_escaped(first)}"' if escape else key
    middle = "".join(f"{json.dumps(k)}:{json.dumps(v)}," for k, v in between.items() if k != first)
    body = f"{{{key}:{json.dumps(before)},{middle}{second}:{json.dumps(after)}}}".encode()
    assert reading(body, fast=True) is FailureReason.DUPLICATE_KEY
    same_reading(body)


@MANY
@given(tokens=st.lists(st.sampled_from([*'{}[]:,"\\ 01-.eEnultrfa\x00', "\\u0000"])))
def test_any_near_json_text_reads_the_same(tokens: list[str]) -> None:
    same_reading("".join(tokens).encode())


@pytest.mark.parametrize(
    "body",
    [
        b'{"a":1,"a":"\\u003a"}',  # the colon written as an escape makes up the member count
        b'{"a":"x:y","a":1}',
        b'{"a":{"b":1,"b":2}}',
        b'[{"k":1},{"k":1,"k":1}]',
        b'"\\u0000"',
        b'{"\\u0000":1}',
        b'"\\ud800"',
        b'"\\udc00\\ud800"',
        b'"\\ud83d\\ude00"',
        b"1e400",
        b"-1e400",
        b"1.5e-400",
        b"18446744073709551615",
        b"18446744073709551616",
        b"-9223372036854775808",
        b"-9223372036854775809",
        b"1" * 309,
        b"1" * 311,
        b"-0",
        b"-0.0",
        b"NaN",
        b"[1,]",
        b"1 2",
        b" \t\r\n{}\n",
        b"\x0c1",
        b'"\x7f"',
        b'"\xe2\x80\xa8"',
        b"{}",
        b"[]",
        b"",
    ],
)
def test_edge_cases_read_the_same(body: bytes) -> None:
    same_reading(body)


def test_a_body_of_many_small_objects_is_read_by_orjson() -> None:
    """The client-chosen case that made the stdlib parser slow: its value, and no duplicate."""
    body = b'{"a":[' + b",".join([b'{"k":1,"v":"x:y"}'] * 5000) + b"]}"
    assert reading(body, fast=True) == reading(body, fast=False)
    duplicated = body.replace(b'{"k":1,"v"', b'{"k":1,"k"', 1)
    assert reading(duplicated, fast=True) is FailureReason.DUPLICATE_KEY


@pytest.mark.parametrize("depth", [1, 5, 63, 64, 65, 200])
def test_depth_limit_holds_for_well_nested_bodies(depth: int) -> None:
    body = ("[" * depth + "]" * depth).encode()
    outcome = reading(body, fast=True)
    if depth <= LIMITS.max_depth:
        assert outcome != FailureReason.TOO_DEEP
    else:
        assert outcome is FailureReason.TOO_DEEP


@MANY
@given(
    brackets=st.text(alphabet=st.sampled_from("[]{}x:"), max_size=200),
    limit=st.integers(0, 12),
)
def test_the_quick_depth_test_agrees_with_max_depth(brackets: str, limit: int) -> None:
    assert _json._deeper_than(brackets, limit) == (_json.max_depth(brackets) > limit)


def test_finite_values_only() -> None:
    value = _json.loads(b"[1.7976931348623157e308, -0.0]", 64, 100)
    assert value[0] == 1.7976931348623157e308 and math.copysign(1, value[1]) == -1
