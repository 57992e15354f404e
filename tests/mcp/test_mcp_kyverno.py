"""Kyverno's MCPRequest view, mcp.Parse and the argument getters."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from authz_server.mcp import FailureReason, McpMessage, decode
from authz_server.mcp import kyverno as k

KEYS = {
    "Method",
    "ID",
    "Paginated",
    "Initialize",
    "ResourceRead",
    "ToolCall",
    "PromptGet",
    "SetLogLevel",
    "Elicitation",
}


def body(method: str, params: dict[str, Any] | None = None, id_: object = 1) -> str:
    message: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        message["params"] = params
    return json.dumps(message)


def tool_view(arguments: Any) -> dict[str, Any]:
    return k.parse(body("tools/call", {"name": "t", "arguments": arguments}))


def plain(value: Any) -> bool:
    if value is None or isinstance(value, str | int | float | bool):
        return True
    if isinstance(value, list):
        return all(plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(key, str) and plain(v) for key, v in value.items())
    return False


# --- view ------------------------------------------------------------------------------------


def test_empty_view() -> None:
    assert set(k.EMPTY_VIEW) == KEYS
    assert k.EMPTY_VIEW["Method"] == ""
    assert all(k.EMPTY_VIEW[key] is None for key in KEYS - {"Method"})
    with pytest.raises(TypeError):
        k.EMPTY_VIEW["Method"] = "tools/call"  # type: ignore[index]


@pytest.mark.parametrize(
    ("text", "filled", "expected"),
    [
        (
            body("tools/call", {"name": "m", "arguments": {"a": 1}, "_meta": {"progressToken": 3}}),
            "ToolCall",
            {"Name": "m", "Arguments": {"a": 1}, "Meta": {"progressToken": 3}},
        ),
        (
            body("tools/call", {"name": "m"}),
            "ToolCall",
            {"Name": "m", "Arguments": None, "Meta": None},
        ),
        (
            body("resources/read", {"uri": "file:///x"}),
            "ResourceRead",
            {"URI": "file:///x", "Arguments": {}},
        ),
        (
            body("prompts/get", {"name": "p", "arguments": {"a": "b"}}),
            "PromptGet",
            {"Name": "p", "Arguments": {"a": "b"}},
        ),
        (body("resources/templates/list", {"cursor": "c"}), "Paginated", {"Cursor": "c"}),
        (body("prompts/list"), "Paginated", {"Cursor": ""}),
        (body("logging/setLevel", {"level": "debug"}), "SetLogLevel", {"Level": "debug"}),
        (
            body("initialize", {"protocolVersion": "2025-06-18", "capabilities": {"roots": {}}}),
            "Initialize",
            {
                "ProtocolVersion": "2025-06-18",
                "Capabilities": {"roots": {}},
                "ClientInfo": {"Name": "", "Version": ""},
            },
        ),
        (
            body("elicitation/create", {"message": "ok?", "requestedSchema": {"type": "object"}}),
            "Elicitation",
            {"Message": "ok?", "RequestedSchema": {"type": "object"}},
        ),
    ],
)
def test_view_fills_exactly_one_typed_field(text: str, filled: str, expected: Any) -> None:
    view = k.parse(text)
    assert set(view) == KEYS
    assert view[filled] == expected
    assert all(view[key] is None for key in KEYS - {"Method", "ID", filled})
    assert plain(view)


@pytest.mark.parametrize("method", ["ping", "notifications/initialized", "server/discover", "x/y"])
def test_view_of_other_methods_has_only_method_and_id(method: str) -> None:
    view = k.parse(body(method, id_="a"))
    assert (view["Method"], view["ID"]) == (method, "a")
    assert all(view[key] is None for key in KEYS - {"Method", "ID"})


def test_view_is_built_once_by_the_decoder() -> None:
    (message,) = decode(body("tools/call", {"name": "m"}).encode(), {}).messages
    assert k.view(message) is message.kyverno
    bare = McpMessage(kind=message.kind, id=2, method="tools/call", params={"name": "n"})
    assert k.view(bare)["ToolCall"]["Name"] == "n"


def test_methods_constants() -> None:
    assert k.METHODS["ToolsCallMethod"] == "tools/call"
    assert k.METHODS["SetLogLevelMethod"] == "logging/setLevel"
    assert k.METHODS["ElicitationCreateMethod"] == "elicitation/create"
    assert len(k.METHODS) == 11


# --- parse -----------------------------------------------------------------------------------


def test_parse_accepts_str_and_bytes() -> None:
    text = body("tools/call", {"name": "merge_pull_request"})
    assert k.parse(text) == k.parse(text.encode())
    assert k.parse(text)["ToolCall"]["Name"] == "merge_pull_request"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not json", FailureReason.INVALID_JSON),
        ("{", FailureReason.INVALID_JSON),
        ("[" + body("ping") + "]", None),
        ("", None),
        (body("prompts/get", {"name": "p", "arguments": {"n": 1}}), FailureReason.INVALID_PARAMS),
        (body("tools/call", {"name": 1}), FailureReason.INVALID_PARAMS),
        ('{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}', FailureReason.DUPLICATE_KEY),
        ("\ud800", None),
    ],
)
def test_parse_errors(text: str, reason: FailureReason | None) -> None:
    with pytest.raises(k.KyvernoParseError) as raised:
        k.parse(text)
    assert raised.value.reason is reason


@pytest.mark.parametrize("arguments", [["a", 1], "owner=me", 42, True])
def test_parse_of_a_tool_call_whose_arguments_are_not_an_object_gives_the_defaults(
    arguments: Any,
) -> None:
    # Kyverno's ToolCall.Arguments is Go's `any`: Parse succeeds and the getters, which read
    # arguments only when they are an object, give their defaults.
    view = tool_view(arguments)
    assert view["Method"] == "tools/call" and view["ToolCall"]["Name"] == "t"
    assert view["ToolCall"]["Arguments"] == arguments
    assert k.get_string_argument(view, "owner", "default") == "default"
    assert k.get_int_argument(view, "0", 7) == 7
    assert k.get_bool_argument(view, "force", False) is False
    assert k.get_string_slice_argument(view, "labels", ["x"]) == ["x"]
    # The request path stays strict: such a body is refused before any policy.
    failure = decode(body("tools/call", {"name": "t", "arguments": arguments}).encode(), {})
    assert failure.failure is not None
    assert failure.failure.reason is FailureReason.INVALID_PARAMS


@pytest.mark.parametrize(
    "params", [[1, 2], "text", {"taskId": 5}, {"ref": "not an object"}, {"_meta": "x"}]
)
@pytest.mark.parametrize(
    "method", ["ping", "notifications/initialized", "tasks/get", "completion/complete", "x/y"]
)
def test_parse_does_not_read_the_params_of_methods_kyverno_does_not_read(
    method: str, params: Any
) -> None:
    view = k.parse(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
    assert view["Method"] == method
    assert all(view[key] is None for key in KEYS - {"Method", "ID"})
    assert k.get_string_argument(view, "k", "d") == "d"


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("tools/call", [1, 2]),
        ("tools/call", {"name": 5}),
        ("resources/read", {"uri": "u", "arguments": [1]}),
        ("prompts/get", {"name": "p", "arguments": "x"}),
        ("tools/list", {"cursor": 3}),
        ("initialize", "x"),
    ],
)
def test_parse_still_refuses_params_kyverno_cannot_unmarshal(method: str, params: Any) -> None:
    with pytest.raises(k.KyvernoParseError) as raised:
        k.parse(json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
    assert raised.value.reason is FailureReason.INVALID_PARAMS


def test_parse_reads_a_missing_name_as_empty_as_go_does() -> None:
    assert k.parse(body("tools/call", {}))["ToolCall"]["Name"] == ""
    assert k.parse(body("resources/read", {}))["ResourceRead"]["URI"] == ""


# --- getters ---------------------------------------------------------------------------------


def test_argument_source_priority() -> None:
    tool = tool_view({"k": "tool"})
    assert k.get_string_argument(tool, "k", "d") == "tool"
    resource = k.parse(body("resources/read", {"uri": "u", "arguments": {"k": "resource"}}))
    assert k.get_string_argument(resource, "k", "d") == "resource"
    prompt = k.parse(body("prompts/get", {"name": "p", "arguments": {"k": "prompt"}}))
    assert k.get_string_argument(prompt, "k", "d") == "prompt"
    assert k.get_int_argument(prompt, "missing", 5) == 5
    hand_built = {
        "ToolCall": {"Arguments": ["not", "a", "map"]},
        "ResourceRead": {"Arguments": {"k": "fallback"}},
    }
    assert k.get_string_argument(hand_built, "k", "d") == "fallback"
    assert k.get_string_argument(k.EMPTY_VIEW, "k", "d") == "d"
    assert k.get_string_argument(tool_view(None), "k", "d") == "d"


# A getter that raises is written as ERROR: the argument is present and does not convert.
ERROR = object()


def read(getter: Any, value: Any, default: Any) -> Any:
    try:
        return getter(tool_view({"v": value}), "v", default)
    except k.ArgumentError:
        return ERROR


@pytest.mark.parametrize(
    ("value", "expected"),
    [("x", "x"), ("", ""), (1, ERROR), (True, ERROR), (None, ERROR), (["x"], ERROR)],
)
def test_get_string_argument(value: Any, expected: str) -> None:
    assert read(k.get_string_argument, value, "d") == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (42, 42),
        (-3, -3),
        (2.0, 2),
        (True, 1),
        ("42", 42),
        ("+7", 7),
        ("-7", -7),
        (" 42\n", 42),
        ("4_2", 42),
        ("1_000.00", 1000),
        ("9223372036854775807", 2**63 - 1),
        (1.9, ERROR),
        ("1.5", ERROR),
        ("1e3", ERROR),
        ("0x10", ERROR),
        ("4__2", ERROR),
        ("٤٢", ERROR),  # Arabic-Indic digits: Python int() accepts them, pydantic not
        ("9223372036854775808", ERROR),  # pydantic accepts it; CEL's int cannot hold it
        (2**63, ERROR),
        (1e300, ERROR),
        (None, ERROR),
        ([1], ERROR),
    ],
)
def test_get_int_argument(value: Any, expected: int) -> None:
    assert read(k.get_int_argument, value, 99) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.5, 1.5),
        (2, 2.0),
        (False, 0.0),
        ("2.5", 2.5),
        ("-1e3", -1000.0),
        (".5", 0.5),
        ("5.", 5.0),
        (" 1", 1.0),
        ("1_000", 1000.0),
        ("Inf", math.inf),
        ("-infinity", -math.inf),
        ("1e400", math.inf),
        ("0x1p-2", ERROR),
        ("0x1", ERROR),
        (" 1_0", ERROR),  # pydantic trims only before its first attempt, not the underscored one
        ("abc", ERROR),
    ],
)
def test_get_float_argument(value: Any, expected: float) -> None:
    assert read(k.get_float_argument, value, -1.0) == expected


def test_get_float_argument_of_an_int_beyond_double() -> None:
    # Built by hand: whether the decoder keeps such a number is the decoder's business.
    view = {"ToolCall": {"Arguments": {"v": 2**1024}}}
    with pytest.raises(k.ArgumentError):
        k.get_float_argument(view, "v", 0.0)


@pytest.mark.parametrize("value", ["NaN", "+nan"])
def test_get_float_argument_nan(value: str) -> None:
    assert math.isnan(k.get_float_argument(tool_view({"v": value}), "v", 0.0))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        *[(s, True) for s in ("1", "t", "T", "TRUE", "true", "tRuE", "y", "yes", "On")],
        *[(s, False) for s in ("0", "f", "F", "FALSE", "false", "n", "No", "OFF")],
        (1, True),
        (0, False),
        (0.0, False),
        (1.0, True),
        (" true", ERROR),
        ("2", ERROR),
        (2, ERROR),
        (-0.5, ERROR),
        ("\u212a", ERROR),  # the Kelvin sign: Unicode lowers it to "k", pydantic does not
        (None, ERROR),
        ({}, ERROR),
    ],
)
def test_get_bool_argument(value: Any, expected: Any) -> None:
    for default in (True, False):
        assert read(k.get_bool_argument, value, default) is expected


def test_slice_getters_convert_every_item_or_fail() -> None:
    assert read(k.get_string_slice_argument, ["a", "2"], ["d"]) == ["a", "2"]
    assert read(k.get_int_slice_argument, [1, "2", 3.0, " 4 "], [9]) == [1, 2, 3, 4]
    assert read(k.get_float_slice_argument, [1, "2", 3.7], [9.0]) == [1.0, 2.0, 3.7]
    assert read(k.get_bool_slice_argument, [True, "t", 1, "off"], [False]) == [
        True,
        True,
        True,
        False,
    ]
    # Kyverno drops the items that do not convert; the SDK refuses the call, the getter fails.
    mixed = ["a", 1, "2", 3.7, True, None, "t", "x", 0]
    for getter in (
        k.get_string_slice_argument,
        k.get_int_slice_argument,
        k.get_float_slice_argument,
        k.get_bool_slice_argument,
    ):
        assert read(getter, mixed, []) is ERROR


def test_slice_getters_read_a_json_array_in_a_string_as_the_sdk_does() -> None:
    assert read(k.get_int_slice_argument, "[1, 2]", []) == [1, 2]
    assert read(k.get_string_slice_argument, '["a"]', []) == ["a"]
    assert read(k.get_string_slice_argument, "a", []) is ERROR
    assert read(k.get_string_slice_argument, "null", []) is ERROR


def test_slice_getters_defaults() -> None:
    view = tool_view({"s": "not a list", "e": []})
    assert k.get_int_slice_argument(view, "missing", [1, 2]) == [1, 2]
    assert k.get_bool_slice_argument(view, "e", [True]) == []
    assert k.get_float_slice_argument(k.EMPTY_VIEW, "e", [1.5]) == [1.5]
