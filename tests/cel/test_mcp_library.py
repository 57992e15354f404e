"""The mcp library through CEL: the bound request, Parse, constants, getters (§2.5)."""

from __future__ import annotations

import pytest

from authz_server.cel import CelCompileError, CelEvaluationError

CALL = {
    "jsonrpc": "2.0",
    "id": 3,
    "method": "tools/call",
    "params": {
        "name": "merge_pull_request",
        "arguments": {
            "owner": "octo",
            "n": "12",
            "f": 2.9,
            "flag": "true",
            "count": 1,
            "spaced": " 1_000 ",
            "yes": "yes",
            "names": ["a", "b"],
            "ints": [1, "2", 3.0],
            "floats": [1, "2.5"],
            "bools": [True, "F", 0, "on"],
            "mixed": [1, "x"],
        },
    },
}


@pytest.fixture
def call(cel_eval):
    return cel_eval.message(CALL)


def test_fields_use_kyverno_names(call):
    assert call("mcp.Method") == "tools/call"
    assert call("mcp.ID") == 3
    assert call("mcp.ToolCall.Name") == "merge_pull_request"
    assert call("mcp.ToolCall.Arguments.owner") == "octo"
    assert call("mcp.ResourceRead == null && mcp.PromptGet == null")


def test_no_message_means_empty_method(cel_eval):
    assert cel_eval('mcp.Method == ""')
    assert cel_eval("mcp.ToolCall == null")


def test_method_constants(call):
    assert call("mcp.Method == mcp.ToolsCallMethod")
    assert call("mcp.SetLogLevelMethod") == "logging/setLevel"
    assert call("mcp.ElicitationCreateMethod") == "elicitation/create"


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('mcp.GetStringArgument("owner", "d")', "octo"),
        ('mcp.GetStringArgument("missing", "d")', "d"),
        ('mcp.GetIntArgument("n", 0)', 12),
        ('mcp.GetIntArgument("spaced", 0)', 1000),
        ('mcp.GetFloatArgument("count", 0.0)', 1.0),
        ('mcp.GetFloatArgument("n", 0.0)', 12.0),
        ('mcp.GetBoolArgument("flag", false)', True),
        ('mcp.GetBoolArgument("count", false)', True),
        ('mcp.GetBoolArgument("yes", false)', True),
        ('mcp.GetStringSliceArgument("names", [])', ["a", "b"]),
        ('mcp.GetIntSliceArgument("ints", [])', [1, 2, 3]),
        ('mcp.GetFloatSliceArgument("floats", [])', [1.0, 2.5]),
        ('mcp.GetBoolSliceArgument("bools", [])', [True, False, False, True]),
        ('mcp.GetStringSliceArgument("missing", ["d"])', ["d"]),
    ],
)
def test_getters_convert_as_the_sdk(call, expression, expected):
    assert call(expression) == expected


@pytest.mark.parametrize(
    "expression",
    [
        'mcp.GetStringArgument("count", "d")',
        'mcp.GetIntArgument("f", 0)',
        'mcp.GetIntArgument("owner", -1)',
        'mcp.GetBoolArgument("owner", false)',
        'mcp.GetIntSliceArgument("mixed", [])',
        'mcp.GetStringSliceArgument("owner", ["d"])',
    ],
)
def test_a_present_argument_that_does_not_convert_is_an_error(call, expression):
    with pytest.raises(CelEvaluationError, match="does not convert"):
        call(expression)


@pytest.mark.parametrize(
    "expression",
    [
        'mcp.GetStringArgument("k", 1)',
        'mcp.GetIntArgument("k", "1")',
        "mcp.GetStringArgument(1, 'd')",
        'mcp.GetStringSliceArgument("k", "d")',
    ],
)
def test_getter_with_wrong_types_is_a_compile_error(cel_eval, expression):
    with pytest.raises(CelCompileError):
        cel_eval(expression)


def test_parse_reads_the_body(call):
    assert call("mcp.Parse(object.attributes.request.http.body).ToolCall.Name") == (
        "merge_pull_request"
    )
    assert call('mcp.Parse(object.attributes.request.http.body).GetStringArgument("owner", "")')


def test_parse_of_non_object_arguments_gives_the_getters_defaults(cel_eval):
    text = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":[1]}}'
    assert cel_eval(f"mcp.Parse({text!r}).GetStringArgument('owner', 'none')") == "none"
    assert cel_eval(f"mcp.Parse({text!r}).ToolCall.Name") == "t"


def test_parse_accepts_bytes(cel_eval):
    assert cel_eval('mcp.Parse(b\'{"jsonrpc":"2.0","id":1,"method":"ping"}\').Method') == "ping"


@pytest.mark.parametrize("body", ["{", "[]", '{"jsonrpc":"2.0","id":1,"method":"x"} x'])
def test_parse_of_a_bad_body_is_an_error(cel_eval, body):
    with pytest.raises(CelEvaluationError, match=r"mcp\.Parse"):
        cel_eval(f"mcp.Parse({body!r})")


@pytest.mark.parametrize("expression", ["mcp.Methd", "mcp.ToolCall.name", "mcp.ResourceRead.Uri"])
def test_misspelt_fields_fail_at_compile_time(cel_eval, expression):
    with pytest.raises(CelCompileError, match="has no field"):
        cel_eval(expression)
