"""Kyverno's ``http`` library: the rewrite that keeps the request out of Python computes exactly
what the calls as written compute, and leaves everything else alone."""

from __future__ import annotations

from typing import Any

import pytest

from authz_server.cel import compile_expression, evaluate
from authz_server.cel import http as http_lib
from authz_server.cel.env import HTTP, shared_env
from authz_server.cel.identity import anonymous
from authz_server.cel.mcp import empty_view


def _request() -> Any:
    return http_lib.request_message(
        method="GET",
        headers=[("foo", "bar"), ("FOO", "baz"), ("X-Custom Header", "odd"), ("x-a-b", "c")],
        host="http-srv.app",
        protocol="HTTP/1.1",
        body=b"{}",
        scheme="",
        path="/get",
        query=[("foo", "bar"), ("foo", "")],
    )


def _evaluate(expression: Any) -> Any:
    data = {"object": _request(), "mcp": empty_view(), "identity": anonymous()}
    return evaluate(expression, shared_env(HTTP).Activation(data))


@pytest.mark.parametrize(
    "source",
    [
        'object.attributes.Header("foo")',
        'object.attributes.Header("Foo")',
        "object.attributes.Header('x-a-b')",
        'object.attributes.Header("X-Custom Header")',  # not a token: not canonicalised (as Go)
        'object.attributes.Header("x-" + "a-b")',
        'object.attributes.Header("missing")',
        'object.attributes.QueryParam("foo")',
        'object.attributes.QueryParam("Foo")',
        'object.attributes.QueryParam(("f" + "oo"))',
        'size(object.attributes.Header("foo")) == 2 && "baz" in object.attributes.Header("foo")',
        'http.Denied("not allowed: " + object.attributes.Header("foo")[0]).Response()',
        "http.Allowed().Response()",
        '[http.Denied("a").Response(), http.Allowed().Response()][0]',
        '"object.attributes.Header(\\"foo\\")"',
    ],
)
def test_the_rewrite_computes_what_the_calls_compute(source: str) -> None:
    program = compile_expression(None, source, mode=HTTP)
    as_written = shared_env(HTTP).compile(source)
    assert _evaluate(program) == _evaluate(_Program(program, as_written))


class _Program:
    """``program`` with the expression compiled as written (no rewrite)."""

    def __init__(self, program: Any, expression: Any) -> None:
        self.__dict__.update(
            {name: getattr(program, name) for name in ("source", "env", "result_type", "boolean")}
        )
        self.expression = expression


@pytest.mark.parametrize(
    ("source", "rewritten"),
    [
        (
            'object.attributes.Header("x-gateway")',
            'object.attributes.header[?"X-Gateway"].orValue([])',
        ),
        (
            "object.attributes.QueryParam('q')",
            "object.attributes.query[?('q'\n)].orValue([])",
        ),
        (
            'http.Denied("no").Response()',
            '(http.CheckResponse{denied: http.CheckResponseDenied{reason: ("no"\n)}})',
        ),
        # Left alone: a string that spells a call, a comment, a call on another namespace.
        ('".Header(\\"a\\")" // .Header("b")', '".Header(\\"a\\")" // .Header("b")'),
        ("x.http.Allowed().Response()", "x.http.Allowed().Response()"),
    ],
)
def test_the_rewrite_of_source_text(source: str, rewritten: str) -> None:
    assert http_lib.rewrite(source) == rewritten


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("x-gateway", "X-Gateway"),
        ("CONTENT-TYPE", "Content-Type"),
        ("mcp-session-id", "Mcp-Session-Id"),
        ("dpop", "Dpop"),
        ("x_under", "X_under"),
        ("has space", "has space"),
        ("", ""),
    ],
)
def test_header_names_are_canonical_as_in_go(name: str, canonical: str) -> None:
    assert http_lib.canonical_header_key(name) == canonical


def test_one_shared_environment_per_mode_however_it_is_asked_for() -> None:
    # An activation must come from the environment that compiled the expression: callers that
    # name the mode and callers that rely on the default must get the same one.
    from authz_server.cel.env import ENVOY, activation

    assert shared_env() is shared_env(ENVOY) is shared_env(mode=ENVOY)
    assert shared_env(HTTP) is not shared_env()
    program = compile_expression(None, "1 + 1")
    assert evaluate(program, activation({})) == 2
