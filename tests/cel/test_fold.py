"""Folding constant envoy builder chains into message literals (fast path only)."""

from __future__ import annotations

import pytest

from authz_server.cel import activation, ast, compile_expression, evaluate
from authz_server.cel.fold import fold_builders, string_literal, tokens


def _value(source: str):
    return evaluate(compile_expression(None, source), activation({}))


@pytest.mark.parametrize(
    "source",
    [
        "envoy.Allowed().Response()",
        'envoy.Allowed().WithHeader("x-authz-policy", "github").Response()',
        'envoy.Allowed().WithHeader(envoy.Header("k", "").KeepEmptyValue()).Response()',
        'envoy.Allowed().WithoutHeader("cookie").WithResponseHeader("a", "b")'
        '.WithQueryParam("q", "1").WithoutQueryParam("r").Response().WithMessage("m")',
        'envoy.Denied(401).WithHeader("www-authenticate", "Bearer error=\\"invalid_token\\"")'
        '.WithBody("expired").Response()',
        'envoy.Denied(403).WithBody("é ü 😀 \\n\\t \\\\ \' \\" end").Response()',
        "envoy.Denied(403).WithBody('''tri\"ple''').Response()",
        'envoy.Header("k", "v").KeepEmptyValue(false)',
        'envoy.QueryParam("k", "v")',
    ],
)
def test_folded_chain_is_the_same_value(source):
    folded = fold_builders(source)
    assert folded != source
    assert _value(folded) == _value(source)


def test_a_whole_constant_chain_becomes_one_literal():
    folded = fold_builders('x ? envoy.Allowed().WithHeader("k", "v").Response() : null')
    assert folded == (
        "x ? (envoy.service.auth.v3.CheckResponse{status: google.rpc.Status{}, ok_response: "
        "envoy.service.auth.v3.OkHttpResponse{headers: [envoy.config.core.v3.HeaderValueOption{"
        'header: envoy.config.core.v3.HeaderValue{key: "k", value: "v"}}]}}) : null'
    )


# Chains with arguments read from the request: each must fold to a literal holding the argument
# expressions (no call into Python left), with the value of the chain for every request.
DYNAMIC = [
    'envoy.Denied(403).WithBody("agent " + mcp.Method).Response()',
    'envoy.Denied(403).WithBody(mcp.Method).Response().WithMessage(mcp.Method + "!")',
    'envoy.Allowed().WithHeader("x-method", mcp.Method).WithoutHeader(mcp.Method)'
    '.WithResponseHeader(mcp.Method, "v").WithQueryParam("m", mcp.Method)'
    ".WithoutQueryParam(mcp.Method).Response()",
    'envoy.Denied(401).WithHeader(mcp.Method, "x").WithBody(mcp.Method // a comment\n).Response()',
    'envoy.Header("k", mcp.Method).KeepEmptyValue()',
    'envoy.Denied(403).WithBody(mcp.Method.size() > 3 ? "long " + mcp.Method : "short").Response()',
]


METHODS = ["", "tools/call", "x" * 300, 'a "quoted" \\ é 😀', "Authz-Fold-"]


@pytest.mark.parametrize("source", DYNAMIC)
@pytest.mark.parametrize("method", METHODS)
def test_a_chain_with_request_arguments_folds_to_one_literal(source, method):
    folded = fold_builders(source)
    original = compile_expression(None, source)
    rewritten = compile_expression(None, folded)
    assert not [o for o in _overloads(rewritten) if o.startswith(_BUILDER_PREFIXES)], folded
    data = {"mcp": {"Method": method}}
    assert evaluate(rewritten, activation(data)) == evaluate(original, activation(data))


# Overload ids of authz_server.cel.envoy: every builder is implemented in Python.
_BUILDER_PREFIXES = ("envoy_", "ok_", "denied_", "any_", "header_", "response_")


def _overloads(program) -> list[str]:
    checked = ast.parse(program.expression.serialize())
    return [overload for ids in checked.overloads.values() for overload in ids]


def test_the_unknown_method_denial_calls_no_python():
    source = 'envoy.Denied(403).WithBody("unknown MCP method " + mcp.Method).Response()'
    assert fold_builders(source) == (
        "(envoy.service.auth.v3.CheckResponse{status: google.rpc.Status{code: 7}, "
        "denied_response: envoy.service.auth.v3.DeniedHttpResponse{status: "
        'envoy.type.v3.HttpStatus{code: 403}, body: ("unknown MCP method " + mcp.Method\n)}})'
    )


def test_an_argument_that_is_not_a_string_keeps_its_builder():
    # A header option built elsewhere cannot be a field value: the prefix before it folds.
    source = 'envoy.Allowed().WithHeader("a", mcp.Method).WithHeader(variables.option).Response()'
    folded = fold_builders(source)
    assert folded.startswith("(envoy.service.auth.v3.OkHttpResponse{headers: [")
    assert folded.endswith(").WithHeader(variables.option).Response()")


@pytest.mark.parametrize(
    "source",
    [
        '"envoy.Allowed().Response()"',  # in a string
        "'envoy.Allowed()' + r\"envoy.Allowed()\"",
        "x.envoy.Allowed()",  # a field, not the namespace
        "x.?envoy.Allowed()",
        "mcp.Method // envoy.Allowed().Response()",  # in a comment
        "envoy.Denied(mcp.code)",  # not a literal argument
        'envoy.Allowed().Response().WithMetadata({"k": 1})',  # map argument: prefix only
    ],
)
def test_what_is_not_a_constant_chain_is_left_alone(source):
    folded = fold_builders(source)
    if "WithMetadata" in source:
        assert folded.endswith('.WithMetadata({"k": 1})') and folded.startswith("(envoy.")
    else:
        assert folded == source


def test_a_chain_that_fails_is_not_folded():
    # Runtime errors (here: int32 overflow of the status code) stay runtime errors.
    source = "envoy.Denied(99999999999).Response()"
    assert fold_builders(source) == source


def test_tokens_keep_strings_whole():
    found = [t.text for t in tokens("a.\"b.c\"  // d\n+ '''e\nf''' `g.h`")]
    assert found == ["a", ".", '"b.c"', "+", "'''e\nf'''", "`g.h`"]


def test_string_literal_round_trips():
    text = 'quote " backslash \\ unicode é 😀 newline \n nul \x00'
    assert _value(string_literal(text)) == text
