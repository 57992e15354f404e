"""The fast path's argument getters read the message bound for one evaluation."""

from __future__ import annotations

import pytest

from authz_server.cel import CelEvaluationError, compile_expression, evaluate
from authz_server.cel.env import fast_env
from authz_server.cel.mcp import CURRENT_VIEW, current_view
from tests.cel.conftest import mcp_view

VIEW = mcp_view(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "t",
            "arguments": {"s": "v", "n": " 7 ", "b": "yes", "l": ["a", "1"], "m": ["a", 1]},
        },
    }
)


def _eval(source: str, view=VIEW):
    program = compile_expression(fast_env(), source)
    return evaluate(program, fast_env().Activation({"mcp": view}))


@pytest.mark.parametrize(
    "source",
    [
        'mcp.GetStringArgument("s", "d")',
        'mcp.GetStringArgument("missing", "d")',
        'mcp.GetIntArgument("n", 0)',
        'mcp.GetFloatArgument("n", 0.0)',
        'mcp.GetBoolArgument("b", false)',
        'mcp.GetStringSliceArgument("l", [])',
        'mcp.GetIntSliceArgument("missing", [9])',
    ],
)
def test_same_values_as_the_member_getters(cel_eval, source):
    cel_eval.mcp = VIEW
    with current_view(VIEW):
        assert _eval(source) == cel_eval(source)


@pytest.mark.parametrize(
    "source",
    [
        'mcp.GetIntArgument("s", 0)',
        'mcp.GetBoolArgument("n", false)',
        'mcp.GetStringArgument("n", "") == "" || mcp.GetStringSliceArgument("m", []) == []',
        'mcp.GetIntSliceArgument("l", [9])',
    ],
)
def test_an_argument_that_does_not_convert_is_an_error_on_both(cel_eval, source):
    cel_eval.mcp = VIEW
    with current_view(VIEW), pytest.raises(CelEvaluationError, match="does not convert"):
        _eval(source)
    with pytest.raises(CelEvaluationError, match="does not convert"):
        cel_eval(source)


def test_the_binding_ends_with_the_evaluation():
    with current_view(VIEW):
        assert CURRENT_VIEW.get() is VIEW
    assert CURRENT_VIEW.get() is None


def test_without_a_bound_message_the_getter_is_an_error():
    with pytest.raises(CelEvaluationError, match="no MCP message"):
        _eval('mcp.GetStringArgument("s", "")')


def test_getters_on_another_receiver_stay_member_calls():
    source = (
        'mcp.Parse(\'{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        '"params":{"name":"a","arguments":{"s":"parsed"}}}\').GetStringArgument("s", "")'
    )
    with current_view(VIEW):
        assert _eval(source) == "parsed"


def test_policies_cannot_call_them_outside_the_fast_path(cel_eval):
    # The shared environment, where policies compile, resolves the member getter on ``mcp``.
    cel_eval.mcp = VIEW
    assert cel_eval('mcp.GetStringArgument("s", "")') == "v"
