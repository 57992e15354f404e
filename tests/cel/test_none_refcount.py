"""Nulls flowing out of CEL must not crash the interpreter (cel-expr-python 0.1.3 bug)."""

from __future__ import annotations

from authz_server.cel import activation, compile_expression, evaluate


def test_many_null_results_do_not_exhaust_none():
    program = compile_expression(None, "{'a': null, 'b': [null]}")
    act = activation({})
    for _ in range(20_000):
        assert evaluate(program, act) == {"a": None, "b": [None]}
