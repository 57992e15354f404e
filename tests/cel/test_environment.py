"""Kyverno's CEL environment features, compile errors with positions, and the static bounds."""

from __future__ import annotations

import pytest

from authz_server.cel import CelCompileError, CostLimits, compile_expression


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('object.attributes.request.http.headers[?"x-a"].orValue("none")', "1"),
        ('object.attributes.request.http.headers[?"x-b"].orValue("none")', "none"),
        ('object.attributes.request.http.headers[?"x-a"].hasValue()', True),
        ('"A,B".lowerAscii().split(",")', ["a", "b"]),
        ('"%s=%d".format(["n", 2])', "n=2"),
        ("[[1], [2, 3]].flatten()", [1, 2, 3]),
        ("[3, 1, 2].sort()", [1, 2, 3]),
        ("lists.range(3)", [0, 1, 2]),
        ("sets.contains([1, 2, 3], [2])", True),
        ("sets.intersects([1], [2])", False),
        ("math.greatest(1, 5, 3)", 5),
        ('base64.encode(b"hi")', "aGk="),
        ("cel.bind(x, 2, x * x)", 4),
        ('"abc".matches("^a.c$")', True),
        ('regex.replace("a-b", "-", "+")', "a+b"),
        ("[1, 2].all(i, v, v > i)", True),
    ],
)
def test_extensions(cel_eval, expression, expected):
    assert cel_eval.headers(**{"x-a": "1"})(expression) == expected


def test_undeclared_reference_reports_its_position():
    with pytest.raises(CelCompileError) as caught:
        compile_expression(None, 'mcp.Method == "x" &&\n  objekt.attributes')
    (issue,) = caught.value.issues
    # cel-expr-python points at the selection of a qualified name
    assert (issue.line, issue.column) == (2, 9)
    assert "objekt" in issue.message


def test_unknown_proto_field_reports_its_position():
    with pytest.raises(CelCompileError) as caught:
        compile_expression(None, "object.attributes.reqest")
    assert caught.value.issues[0].column == 18
    assert "reqest" in caught.value.issues[0].message


def test_syntax_error_reports_its_position():
    with pytest.raises(CelCompileError) as caught:
        compile_expression(None, "1 +")
    assert (caught.value.issues[0].line, caught.value.issues[0].column) == (1, 4)


def test_nested_loops_over_request_data_are_refused():
    source = (
        "object.attributes.request.http.headers.exists(k,"
        " object.attributes.request.http.headers.exists(j, k == j))"
    )
    with pytest.raises(CelCompileError, match="unbounded"):
        compile_expression(None, source)


def test_the_bound_is_configurable():
    source = "mcp.ToolCall.Arguments.exists(k, mcp.ToolCall.Arguments.exists(j, k == j))"
    program = compile_expression(None, source, CostLimits(max_unbounded_nesting=2))
    assert program.result_type_name == "BOOL"


@pytest.mark.parametrize(
    "source",
    [
        # walking into the element being visited is linear in the data
        'object.attributes.request.http.headers.exists(k, k.split(",").exists(p, p == "x"))',
        # a literal inner range is bounded
        'mcp.ToolCall.Arguments.exists(k, ["a", "b"].exists(x, x == k))',
        # a binding of a literal stays literal
        'cel.bind(l, ["a"], mcp.ToolCall.Arguments.exists(k, l.exists(x, x == k)))',
    ],
)
def test_linear_iteration_is_accepted(source):
    assert compile_expression(None, source).result_type_name == "BOOL"


def test_literal_iterations_are_bounded_too():
    with pytest.raises(CelCompileError, match="unbounded"):
        compile_expression(None, "lists.range(2000).exists(a, lists.range(2000).exists(b, a == b))")


@pytest.mark.parametrize(
    ("source", "methods"),
    [
        ('mcp.Method == "tools/call"', {"tools/call"}),
        ('"tools/call" == mcp.Method', {"tools/call"}),
        ("mcp.Method == mcp.ToolsCallMethod", {"tools/call"}),
        ('mcp.Method in ["a", "b"]', {"a", "b"}),
        ('mcp.Method == "a" || mcp.Method == "b"', {"a", "b"}),
        ('mcp.Method == "a" && mcp.ToolCall.Name == "x"', {"a"}),
        ('mcp.Method != "a"', None),
        ('mcp.Method == "a" || true', None),
    ],
)
def test_method_guard(source, methods):
    guard = compile_expression(None, source).methods
    assert (set(guard) if guard is not None else None) == methods


def test_referenced_variables_are_recorded():
    from authz_server.cel import new_env

    env = new_env({"a": __import__("cel_expr_python").cel.Type.STRING})
    program = compile_expression(env, 'variables.a == "x"')
    assert program.variables == frozenset({"a"})
