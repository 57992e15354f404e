"""The reference path's programs for a policy that failed on the fast path (or whose bucket has
none).

A policy whose own combined program fails is judged expression by expression
(:func:`authz_server.policy.engine.evaluate_policy`), since only that finds Kyverno's answer: the
field that failed and its error class, variables that fail only when read. Its expressions as
loaded call the Python libraries from CEL (``mcp.GetPathArgument`` on the ``mcp`` map, the
``envoy`` builders), and cel-expr-python 0.1.3 keeps every argument and result of such a call:
the whole message, converted for the receiver, on every check. An attacker who can make a
policy fail (an argument of the wrong type) would grow the worker by the size of what they send.

So each expression of such a policy is compiled a second time the way the fast path compiles a
bucket (:mod:`authz_server.policy.combined`): builder chains folded (in HTTP mode, the request's
members and the builders rewritten as the loaded expression is: ``env.http_source``), request
getters reading the current message, calls that read only the request hoisted and made from
Python. The order of evaluation, the lazy variables and the error texts stay the reference's: a
hoisted call that raised is reported with the text it raised, which is what CEL reports for the
call.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from authz_server.cel import CelCompileError, CelEvaluationError, Program, compile_expression
from authz_server.cel.analysis import VARIABLES_PREFIX
from authz_server.cel.env import evaluate, fast_env_with
from authz_server.cel.hoist import PREFIX, Hoisted, hoist
from authz_server.cel.mcp import VARIABLE as MCP
from authz_server.cel.mcp import current_view
from authz_server.policy.combined import NO_LIMITS, binds_mcp, calls_request_getters, fast_source
from authz_server.policy.model import Expression, Policy, expressions

_UNBOUND_CALL = re.compile(rf'No value with name "({PREFIX}\d+)"')


class CallFailed(CelEvaluationError):
    """A hoisted call raised (``message`` is its text) or could not be made (``None``)."""

    def __init__(self, message: str | None) -> None:
        super().__init__(message or "hoisted call not made")
        self.message = message


@dataclass(frozen=True, slots=True)
class LeanExpression:
    """One expression compiled for the fast environment; evaluate with :meth:`evaluate`."""

    program: Program
    hoisted: Hoisted | None
    # Request getters remain (not hoisted): the current message must be bound.
    getters: bool

    def evaluate(self, data: Mapping[str, Any]) -> Any:
        """The expression's value over ``data`` (request, message, constants, variables).

        Raises :class:`~authz_server.cel.CelEvaluationError` as the loaded expression would,
        or :class:`CallFailed` where it reads a hoisted call that failed."""
        values = dict(data)
        failures: dict[str, str] = {}
        if self.hoisted is not None:
            self.hoisted.bind(values, failures)
        try:
            with current_view(values[MCP]) if self.getters else contextlib.nullcontext():
                return evaluate(self.program, self.program.env.Activation(values))
        except Exception as exc:
            match = _UNBOUND_CALL.search(str(exc))
            if match is None:
                raise
            raise CallFailed(failures.get(match.group(1))) from None


def lean_expressions(policy: Policy) -> dict[int, LeanExpression]:
    """Per expression of ``policy`` (by ``id``), its lean program; an expression that cannot
    have one (it rebinds ``mcp``, or does not compile there) is left out and keeps its own."""
    declared = {VARIABLES_PREFIX + v.name: v.program.variable_type for v in policy.variables}
    env = fast_env_with(declared, policy.mode)
    lean: dict[int, LeanExpression] = {}
    for expression in expressions(policy):
        compiled = _compile(expression, env, declared, policy.mode)
        if compiled is not None:
            lean[id(expression)] = compiled
    return lean


def _compile(
    expression: Expression, env: Any, declared: Mapping[str, Any], mode: str
) -> LeanExpression | None:
    if binds_mcp(expression):
        return None
    source = fast_source(expression, mode)
    try:
        program = compile_expression(env, source, NO_LIMITS)
    except CelCompileError:
        return None
    hoisted = hoist(source, program, NO_LIMITS, declared, mode)
    if hoisted is not None:
        program = hoisted.program
    return LeanExpression(program, hoisted, calls_request_getters(program))
