"""Expressions evaluated for a call known only in part (cel/partial.py, cel/mapped.py).

What the caller sends with every request (headers, identity, the connection) and the entry's
name are known; what a call carries of its own (arguments, id, _meta, body, per-call headers) is
not. A value that comes out is exact; an error is "unknown".
"""

from __future__ import annotations

from typing import Any

import pytest

from authz_server.cel import CelEvaluationError, activation, compile_expression, evaluate
from authz_server.cel.env import constants
from authz_server.cel.mapped import NAMES, Segment, list_program
from authz_server.cel.partial import (
    Answer,
    CallShape,
    residual,
    response_kinds,
)
from authz_server.mcp.kyverno import EMPTY_VIEW
from authz_server.policy.testing import check_request_from_shorthand

TOOL = CallShape("tools/call", "ToolCall", "Name")
TEMPLATE = CallShape("resources/read", "ResourceRead", None)
LIST = check_request_from_shorthand(
    {
        "mcp": {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        "headers": {"x-agent": "bot", "mcp-param-region": "eu"},
        "principal": "spiffe://example.org/agent",
    }
)


def view(name: str = "search", shape: CallShape = TOOL) -> dict[str, Any]:
    found = dict(EMPTY_VIEW)
    found["Method"] = shape.method
    found[shape.typed] = {shape.name_field: name} if shape.name_field else {}
    return found


def judged(source: str, name: str = "search", shape: CallShape = TOOL) -> tuple[bool, Any]:
    """(reads something unknown, the value or "error")."""
    rest = residual(compile_expression(None, source), shape)
    assert rest.program is not None
    data = {**constants(), "object": LIST, "mcp": view(name, shape)}
    try:
        return rest.unknown, evaluate(rest.program, activation(data, rest.program.env))
    except CelEvaluationError:
        return rest.unknown, "error"


@pytest.mark.parametrize(
    "source",
    [
        'mcp.ToolCall.Name == "search"',
        'mcp.Method == "tools/call"',
        "mcp.PromptGet == null",
        "has(mcp.ToolCall.Name)",
        'object.attributes.request.http.headers["x-agent"] == "bot"',
        '"x-agent" in object.attributes.request.http.headers',
        'object.attributes.request.http.headers[?"x-other"].orValue("none") == "none"',
        'object.attributes.source.principal == "spiffe://example.org/agent"',
        'object.attributes.request.http.method == "POST"',
    ],
)
def test_what_the_caller_sends_with_every_request_is_known(source: str) -> None:
    assert judged(source) == (False, True)


@pytest.mark.parametrize(
    "source",
    [
        'mcp.GetStringArgument("path", "") == ""',
        "mcp.ToolCall.Arguments == null",
        "has(mcp.ToolCall.Arguments)",
        "mcp.ToolCall.Meta == null || mcp.ToolCall.Meta != null",
        "mcp.ID == 1",
        "size(mcp) > 0",
        'mcp["ToolCall"].size() == 1',
        "size(object.attributes.request.http.body) == 0",
        'object.attributes.request.http.headers["content-length"] == "0"',
        '"mcp-param-region" in object.attributes.request.http.headers',
        "object.attributes.request.http.headers.size() > 0",
        'object.attributes.request.http.headers.exists(k, k == "x-agent")',
        "object.attributes.request.http.size > 0",
        'mcp.Parse(object.attributes.request.http.body).ToolCall.Name == "search"',
    ],
)
def test_what_a_call_carries_of_its_own_is_unknown(source: str) -> None:
    assert judged(source) == (True, "error")


def test_a_value_that_does_not_depend_on_the_unknown_comes_out_exact() -> None:
    argument = 'mcp.GetBoolArgument("force", false)'
    assert judged(f'mcp.ToolCall.Name == "search" || {argument}') == (True, True)
    assert judged(f'mcp.ToolCall.Name == "other" && {argument}') == (True, False)
    assert judged(f"mcp.ToolCall.Name == 'other' ? {argument} : true") == (True, True)
    assert judged(f'mcp.ToolCall.Name == "search" && {argument}') == (True, "error")
    assert judged(f"[1, 2].exists(i, i == 2 || {argument})") == (True, True)


def test_a_template_leaves_the_uri_unknown() -> None:
    assert judged('mcp.ResourceRead.URI.startsWith("file:")', shape=TEMPLATE) == (True, "error")
    resource = CallShape("resources/read", "ResourceRead", "URI")
    assert judged('mcp.ResourceRead.URI.startsWith("file:")', "file:///x", resource) == (
        False,
        True,
    )


def test_reading_the_name_is_told_apart() -> None:
    program = compile_expression(None, 'mcp.Method == "tools/call"')
    assert not residual(program, TOOL).reads_name
    program = compile_expression(None, 'mcp.ToolCall.Name == "x"')
    assert residual(program, TOOL).reads_name


@pytest.mark.parametrize(
    ("source", "answers"),
    [
        ("envoy.Allowed().Response()", {Answer.ALLOW}),
        ('x ? envoy.Denied(403).WithBody("no").Response() : null', {Answer.DENY, Answer.NULL}),
        (
            'x ? approval.Require("ask") : envoy.Allowed().Response()',
            {Answer.APPROVAL, Answer.ALLOW},
        ),
        ('envoy.Denied(403).Response().WithMessage("m")', {Answer.DENY}),
        ("x ? null : null", {Answer.NULL}),
    ],
)
def test_what_an_unknown_validation_can_answer(source: str, answers: set[Answer]) -> None:
    source = source.replace("x ?", 'mcp.GetBoolArgument("x", false) ?')
    assert response_kinds(compile_expression(None, source)) == answers


def test_one_program_codes_every_entry_and_an_error_stays_in_its_entry() -> None:
    condition = residual(compile_expression(None, 'mcp.ToolCall.Name.startsWith("a")'), TOOL)
    validation = residual(
        compile_expression(
            None,
            'mcp.ToolCall.Name == "boom" ? (int(mcp.ToolCall.Name) == 1 ? null : null) : '
            '(mcp.ToolCall.Name == "ok" ? envoy.Allowed().Response() : '
            '(mcp.ToolCall.Name == "ask" ? approval.Require("a") : '
            '(mcp.ToolCall.Name == "no" ? envoy.Denied(403).Response() : null)))',
        ),
        TOOL,
    )
    built = list_program(
        TOOL,
        [Segment((), (), ((condition.program, True), (validation.program, False)))],
    )
    assert built is not None
    names = ["abc", "boom", "ok", "ask", "no", "zzz"]
    data = {**constants(), NAMES: names, built.switches[0]: True}
    codes = evaluate(built.program, activation(data, built.program.env))
    # condition: 1 true / 0 false; validation: 0 null, 1 allow, 2 deny, 3 approval, 4 error
    assert [codes[i : i + 2] for i in range(0, len(codes), 2)] == [
        "10",
        "04",
        "01",
        "13",
        "02",
        "00",
    ]
