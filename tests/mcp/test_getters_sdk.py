"""The typed argument getters read what the MCP Python SDK hands the tool, or fail.

The oracle is the real SDK: an in-process ``MCPServer`` whose tools take ``v: bool``,
``v: int`` ... and record what they received; ``MCPServer.call_tool`` runs the same argument
validation (the SDK's JSON pre-parsing, then pydantic in lax mode) as a call over HTTP. For the
same JSON text, a getter must either return exactly what the tool received or raise; it may
raise only where the SDK refused the call or where CEL cannot hold the value (an integer
beyond int64). So a present argument never silently reads as the default.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from authz_server.envoy.adapter import request_from_check
from authz_server.mcp import decode
from authz_server.mcp import kyverno as k
from authz_server.policy import Engine, load_text
from authz_server.policy.testing import check_request_from_shorthand
from tests.policy.conftest import ALLOW, DENY, policy_yaml

INT64 = range(-(2**63), 2**63)

_received: list[Any] = []


def _server() -> MCPServer:
    server = MCPServer("getter-oracle")

    def tool(name: str, annotation: Any) -> None:
        async def record(v: Any) -> str:
            _received.append(v)
            return "ok"

        record.__annotations__ = {"v": annotation, "return": str}
        server.add_tool(record, name=name)

    for name, annotation in [
        ("bool", bool),
        ("int", int),
        ("float", float),
        ("str", str),
        ("bool_list", list[bool]),
        ("int_list", list[int]),
        ("float_list", list[float]),
        ("str_list", list[str]),
    ]:
        tool(name, annotation)
    return server


SERVER = _server()
GETTERS: dict[str, tuple[Callable[..., Any], Any]] = {
    "bool": (k.get_bool_argument, False),
    "int": (k.get_int_argument, -424242),
    "float": (k.get_float_argument, -4242.5),
    "str": (k.get_string_argument, "<default>"),
    "bool_list": (k.get_bool_slice_argument, [False, True, False]),
    "int_list": (k.get_int_slice_argument, [-424242]),
    "float_list": (k.get_float_slice_argument, [-4242.5]),
    "str_list": (k.get_string_slice_argument, ["<default>"]),
}
_REFUSED = object()


def sdk_reading(tool: str, text: str) -> Any:
    """What the SDK's tool ``tool`` receives for the arguments in ``text``, or _REFUSED."""
    arguments = json.loads(text)

    async def call() -> Any:
        _received.clear()
        try:
            await SERVER.call_tool(tool, arguments)
        except ToolError:
            return _REFUSED
        (value,) = _received
        return value

    return anyio.run(call)


def getter_reading(tool: str, text: str) -> Any:
    """What the getter returns for the same text (decoded by authz-server), or the exception
    (the decoder's refusal of the whole body included)."""
    try:
        view = k.parse(
            f'{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":'
            f'{{"name":"{tool}","arguments":{text}}}}}'
        )
    except k.KyvernoParseError as exc:
        return exc
    get, default = GETTERS[tool]
    try:
        return get(view, "v", default)
    except ValueError as exc:
        return exc


def same(a: Any, b: Any) -> bool:
    """Equal values of the same type (a float NaN equals itself, 0.0 differs from -0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        )
    return bool(a == b)


def holds_in_cel(value: Any) -> bool:
    if isinstance(value, list):
        return all(holds_in_cel(v) for v in value)
    if isinstance(value, str):
        return "\x00" not in value  # the decoder refuses U+0000: CEL would cut the string there
    return not isinstance(value, int) or isinstance(value, bool) or value in INT64


def check_agreement(tool: str, value: Any) -> None:
    text = json.dumps({"v": value}, allow_nan=False)
    sdk = sdk_reading(tool, text)
    ours = getter_reading(tool, text)
    if isinstance(ours, Exception):
        # Refusing is allowed only where the SDK refused too, or CEL could not hold the value.
        assert sdk is _REFUSED or not holds_in_cel(sdk), (tool, value, sdk)
    else:
        assert sdk is not _REFUSED, (tool, value, ours)
        assert same(ours, sdk), (tool, value, ours, sdk)


# Strings shaped like what the lax parsers look at: signs, digits, underscores, points,
# exponents, the words of bool, the names of the special floats, spaces of every kind.
_SPACES = st.sampled_from(["", " ", "\t", "\n", "\xa0", "\u2003", "\u3000", "\x1c", "\ufeff"])
_DIGITS = st.text(alphabet="0123456789_", min_size=1, max_size=6)
_NUMBER_TEXT = st.builds(
    lambda sign, whole, point, fraction, exponent: sign + whole + point + fraction + exponent,
    st.sampled_from(["", "+", "-", "+_", "-_"]),
    _DIGITS | st.just(""),
    st.sampled_from(["", ".", "._"]),
    st.text(alphabet="0_", max_size=3) | _DIGITS | st.just(""),
    st.sampled_from(["", "e3", "E-2", "e+1_0", "e", "e400", "e-400"]),
)
_WORDS = st.sampled_from(
    [
        "true",
        "false",
        "yes",
        "no",
        "on",
        "off",
        "t",
        "f",
        "y",
        "n",
        "1",
        "0",
        "inf",
        "-Infinity",
        "nan",
        "+NaN",
        "i_nf",
        "0x10",
        "0b1",
        "1e3",
        "1_000",
        "null",
        "[]",
        "[1, 2]",
        '["a", 1]',
        '[true, "on", 0]',
        '[1.0, "2"]',
        '["x"]',
        "{}",
        "\u0664\u0662",
        "\uff11",
        "tRuE",
        "YeS",
        "\u212a",
    ]
)
_CASED = _WORDS.flatmap(lambda w: st.sampled_from([w, w.upper(), w.title()]))
TEXTS = st.builds(lambda a, t, b: a + t + b, _SPACES, _NUMBER_TEXT | _CASED, _SPACES)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=3),
    st.integers(min_value=-(2**65), max_value=2**65),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1.0, 2.0, 0.5, 1e20, 2.0**63, -(2.0**63), 9.2e18]),
    TEXTS,
    st.text(max_size=3),
)
VALUES = SCALARS | st.lists(SCALARS, max_size=3) | st.dictionaries(st.text(max_size=2), SCALARS)
TOOLS = st.sampled_from(sorted(GETTERS))


@settings(max_examples=600, deadline=None)
@given(tool=TOOLS, value=VALUES)
@example(tool="bool", value="yes")
@example(tool="bool", value="on")
@example(tool="int", value="1_000")
@example(tool="int", value=" 1000 ")
@example(tool="int", value="1000.0")
@example(tool="int_list", value="[1, 2]")
@example(tool="str", value=5)
def test_a_getter_returns_what_the_sdk_hands_the_tool_or_fails(tool: str, value: Any) -> None:
    check_agreement(tool, value)


@pytest.mark.parametrize(
    ("tool", "value", "expected"),
    [
        ("bool", "yes", True),
        ("bool", "on", True),
        ("bool", "OFF", False),
        ("int", "1_000", 1000),
        ("int", " 1000 ", 1000),
        ("int", "1000.0", 1000),
        ("float", "1_0.5", 10.5),
        ("int_list", [" 4 ", "1_0"], [4, 10]),
        ("str_list", '["a", "b"]', ["a", "b"]),
    ],
)
def test_the_issue_examples_read_as_the_sdk_reads_them(tool: str, value: Any, expected: Any):
    text = json.dumps({"v": value})
    assert same(sdk_reading(tool, text), expected)
    assert same(getter_reading(tool, text), expected)


@pytest.mark.parametrize(
    ("tool", "value"),
    [
        ("bool", "maybe"),
        ("bool", 2),
        ("bool", None),
        ("int", "1.5"),
        ("int", 1.9),
        ("int", 2**70),  # the SDK takes it; CEL cannot hold it
        ("float", "0x1p-2"),
        ("str", 5),
        ("str", ["a"]),
        ("int_list", ["1", "x"]),
        ("str_list", "a"),
    ],
)
def test_a_present_argument_that_does_not_convert_is_an_error(tool: str, value: Any):
    error = getter_reading(tool, json.dumps({"v": value}))
    assert isinstance(error, ValueError), error


def test_an_absent_argument_reads_as_the_default():
    for tool, (_, default) in GETTERS.items():
        assert same(getter_reading(tool, '{"other": 1}'), default), tool


# --- through a policy: failurePolicy Fail denies, and both evaluation paths agree ----------

POLICIES = load_text(
    "---\n".join(
        [
            policy_yaml(
                "force",
                [f'mcp.GetBoolArgument("force", false) ? {DENY} : {ALLOW}'],
                conditions=['mcp.ToolCall.Name == "bool"'],
            ),
            policy_yaml(
                "count",
                [f'mcp.GetIntArgument("count", 0) > 100 ? {DENY} : {ALLOW}'],
                conditions=['mcp.ToolCall.Name == "int"'],
            ),
        ]
    )
)


def _decide(tool: str, arguments: dict[str, Any], fast: bool) -> Any:
    request = request_from_check(
        check_request_from_shorthand({"tool": tool, "arguments": arguments})
    )
    decoded = decode(request.body, request.headers)
    return Engine(POLICIES, fast_path=fast).check(request, decoded)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tool=st.sampled_from(["bool", "int"]), value=SCALARS)
@example(tool="bool", value="yes")
@example(tool="int", value="1_000")
def test_a_policy_denies_unless_the_tool_would_receive_an_allowed_value(tool: str, value: Any):
    key = "force" if tool == "bool" else "count"
    fast = _decide(tool, {key: value}, fast=True)
    reference = _decide(tool, {key: value}, fast=False)
    assert fast == reference
    received = sdk_reading(tool, json.dumps({"v": value}))
    if received is _REFUSED or not holds_in_cel(received):
        assert not fast.allowed
    else:
        assert fast.allowed == (received is False if tool == "bool" else received <= 100)


def test_the_error_names_the_getter_and_never_the_value():
    secret = "hunter2-s3cr3t"
    for tool, key in (("bool", "force"), ("int", "count")):
        decision = _decide(tool, {key: secret}, fast=True)
        assert not decision.allowed and decision.http_status == 403
        assert "does not convert" in decision.reason, decision.reason
        assert secret not in decision.reason and secret not in decision.body
