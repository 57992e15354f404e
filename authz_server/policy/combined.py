"""The fast path: every policy of a method bucket in ONE CEL evaluation.

Evaluating each match condition, variable and validation separately costs a trip into the CEL
runtime (and, for variables, a fresh activation converting the request again) per expression.
Here the policies that apply to one MCP method (``PolicySet.for_method``) are compiled at load
into a single expression whose value is a list with one entry per policy::

    [ (conditions) ? cel.bind(variables, {...}, (exception) ? null : first non-null validation)
                   : null,
      ... ]

An entry is ``null`` (no answer) or ``[validation index, response]``. Variables are bound with
``cel.bind`` to a map named ``variables``, so the policy's own text (``variables.token.Valid``)
reads them unchanged; a round of binds per dependency level lets later variables see earlier
ones, and only variables some validation or exception reads are bound at all.

This is a FAST PATH ONLY; :mod:`authz_server.policy.engine`'s per-policy evaluation stays the
reference. Binding is eager where Kyverno's variables are lazy, and one error anywhere fails the
whole list, so any evaluation error, or a result that is not a response, sends the request to
the reference path. (Each policy also has a program of its own, :attr:`CombinedProgram.singles`:
when the bucket's program fails, the engine asks each policy's own program, so that only the
policy that failed is judged by the reference path, not its whole bucket.) When the program
does yield a value, it computed the same pure functions
of the request the reference would have, combined with the same rules:

* match conditions with ``&&``: CEL's commutative ``&&`` is false if any operand is false (even
  if another errored) and an error otherwise, exactly the reference's condition rule;
* exception conditions with nested ternaries (``c1 ? c2 : false``), which propagate an error as
  the reference's in-order ``all``/``any`` do (``&&`` would hide an error behind a later false);
* validations chained with ``cel.bind`` so each is evaluated once, in order, stopping at the
  first non-null one;
* ``envoy`` builder chains folded into equal message literals, request-dependent string
  arguments kept in them as field values (:mod:`authz_server.cel.fold`);
* ``mcp.Get*Argument`` reading the message from a context variable set for the evaluation
  instead of converting the ``mcp`` map on every call (``request_functions`` in
  :mod:`authz_server.cel.mcp`);
* calls into Python whose arguments read only the request (``jwt.Decode`` of a header, getters
  with constant arguments ...) made from Python before the evaluation and their results bound
  as variables (:mod:`authz_server.cel.hoist`): cel-expr-python leaks the arguments and result
  of every call from CEL into Python. A hoisted call that fails is an error where the program
  reads its result, as the call would have been.

HTTP-mode policies (the HTTP authorizer's set) get their own combined programs, built the same
way in the HTTP environment; instead of folding, their request members (``Header``,
``QueryParam``) and ``http`` builders are rewritten as the loaded expressions are
(``env.http_source``).

``tests/policy/test_combined.py`` checks fast path == reference path over many requests
(``tests/policy/test_http_lean.py`` for HTTP mode).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from authz_server.cel import (
    CelCompileError,
    CostLimits,
    Program,
    ast,
    compile_expression,
    shared_env,
)
from authz_server.cel.analysis import binds_name
from authz_server.cel.env import (
    ENVOY,
    OBJECT,
    RESPONSE_TYPE,
    RESPONSE_TYPES,
    SKIP,
    constants,
    evaluate_plain,
    fast_env,
    http_source,
)
from authz_server.cel.fold import fold_builders
from authz_server.cel.hoist import Hoisted, hoist
from authz_server.cel.identity import VARIABLE as IDENTITY
from authz_server.cel.identity import anonymous
from authz_server.cel.mcp import VARIABLE as MCP
from authz_server.cel.mcp import current_view, view_getters
from authz_server.policy.model import Expression, Policy, PolicySet, expressions

log = logging.getLogger(__name__)

# The fragments were cost-checked one by one at load; their combination adds no iteration.
NO_LIMITS = CostLimits(max_unbounded_nesting=1 << 30, max_bounded_iterations=1 << 62)
_RESULT = "authz_r"


class CombinedProgram:
    """One bucket's policies compiled together; see the module docstring."""

    __slots__ = (
        "_data",
        "_getters",
        "_hoisted",
        "_response",
        "guarded",
        "policies",
        "program",
        "singles",
    )

    def __init__(
        self,
        policies: tuple[Policy, ...],
        program: Program,
        hoisted: Hoisted | None = None,
        singles: tuple[CombinedProgram | None, ...] = (),
        *,
        guarded: bool = False,
    ) -> None:
        self.policies = policies
        # Per policy, its program alone (None: the reference path); empty for one policy.
        self.singles = singles
        self._hoisted = hoisted
        self.program = program if hoisted is None else hoisted.program
        values = constants()
        self._data: dict[str, Any] = {name: values[name] for name in self.program.constants}
        # Whether the program can leave policies out (``skip`` of :meth:`evaluate`).
        self.guarded = guarded
        if guarded:
            self._data[SKIP] = []
        self._getters = calls_request_getters(self.program)
        # The message a validation answers with: Envoy's CheckResponse, or HTTP mode's.
        self._response = RESPONSE_TYPES[policies[0].mode] if policies else RESPONSE_TYPE

    def evaluate(
        self,
        check_request: Any,
        view: Mapping[str, Any],
        identity: Any = None,
        skip: tuple[int, ...] = (),
    ) -> list[Any] | None:
        """Per policy ``None`` or ``(validation index, CheckResponse)``; ``None`` for the whole
        list when the reference path must decide (an error, or a result not a response).
        ``skip``: positions of policies left out, their entries ``None`` (when ``guarded``)."""
        data = self._data.copy()
        if skip:
            data[SKIP] = list(skip)
        data[OBJECT] = check_request
        data[MCP] = view
        data[IDENTITY] = identity if identity is not None else anonymous()
        if self._hoisted is not None:
            try:
                self._hoisted.bind(data)
            except RuntimeError:
                return None
        if self._getters:
            with current_view(view):
                results = evaluate_plain(self.program, data)
        else:
            results = evaluate_plain(self.program, data)
        if type(results) is not list:  # an error, whose plain value is its text
            return None
        for result in results:
            if result is not None and not _is_response(result[1], self._response):
                return None
        return results


def calls_request_getters(program: Program) -> bool:
    """Whether request getters that read :data:`CURRENT_VIEW` remain in the program (those
    hoisted do not): only then is binding it worth its cost."""
    getters = view_getters().keys()
    overloads = ast.parse(program.expression.serialize()).overloads.values()
    return any(overload in getters for ids in overloads for overload in ids)


def _is_response(value: Any, response: str) -> bool:
    return getattr(getattr(value, "DESCRIPTOR", None), "full_name", "") == response


def build(
    policies: tuple[Policy, ...], singles: dict[int, CombinedProgram | None] | None = None
) -> CombinedProgram | None:
    """The combined program of a bucket, or None when it does not compile (the reference path
    then serves the bucket; a policy the loader accepted always compiles on its own).

    With more than one policy, each also gets its program alone (``singles`` shares them
    between buckets: a policy is compiled once per set, keyed by its id)."""
    combined = _compile(policies, guard=len(policies) > 1)
    if combined is None or len(policies) == 1:
        return combined
    cache = {} if singles is None else singles
    for policy in policies:
        if id(policy) not in cache:
            cache[id(policy)] = _compile((policy,))
    combined.singles = tuple(cache[id(p)] for p in policies)
    return combined


def _compile(policies: tuple[Policy, ...], *, guard: bool = False) -> CombinedProgram | None:
    """One program for ``policies``; ``guard``: each entry null when its position is in the
    list ``authz_skip`` (not for a bucket that must compile in the shared environment)."""
    if not policies:
        return None
    # A local named ``mcp`` would hide the request from the request getters (see
    # authz_server.cel.mcp.request_functions): such a bucket keeps the member getters.
    shadowed = any(binds_mcp(e) for p in policies for e in expressions(p))
    mode = policies[0].mode
    entries = [policy_source(p) for p in policies]
    if guard and not shadowed:
        entries = [f"({i} in {SKIP}) ? null : ({entry})" for i, entry in enumerate(entries)]
    source = "[\n" + ",\n".join(entries) + "\n]"
    try:
        env = shared_env(mode) if shadowed else fast_env(mode)
        program = compile_expression(env, source, NO_LIMITS)
    except CelCompileError as exc:
        # Not expected for policies that loaded: a gap in this module, not in the policies.
        log.warning(
            "no fast path for policies %s (the reference path serves them): %s",
            ", ".join(p.name for p in policies),
            exc,
        )
        return None
    hoisted = None if shadowed else hoist(source, program, NO_LIMITS, mode=mode)
    return CombinedProgram(policies, program, hoisted, guarded=guard and not shadowed)


def with_fast_paths(policies: PolicySet) -> PolicySet:
    """``policies`` with a combined program for each bucket of its method index."""
    singles: dict[int, CombinedProgram | None] = {}
    fast = {method: build(bucket, singles) for method, bucket in policies.buckets().items()}
    return dataclasses.replace(policies, fast_paths=fast)


def policy_source(policy: Policy) -> str:
    """One policy as an expression: null, or ``[validation index, response]``."""
    exception_needs = {i for e in policy.exceptions for c in e.conditions for i in c.needs}
    body = _validations(policy, 0, frozenset(exception_needs))
    if policy.exceptions:
        excepted = _any(_all(e.conditions, policy.mode) for e in policy.exceptions)
        body = f"({excepted} ? null : {body})"
    body = _bind(policy, exception_needs, frozenset(), body)
    if policy.match_conditions:
        matched = " && ".join(_paren(c, policy.mode) for c in policy.match_conditions)
        # The middle operand of ?: is not a full expression in CEL's grammar: parenthesised.
        body = f"({matched}) ? ({body}) : null"
    return body


def fast_source(expression: Expression, mode: str) -> str:
    """The expression's text as the fast path and the lean programs evaluate it: builder
    chains folded (Envoy), or HTTP mode's request members and builders rewritten as the loaded
    expression is."""
    program = expression.program
    if mode == ENVOY:
        return fold_builders(program.source)
    # Rewritten in its own environment, which declares the policy's variables.
    return http_source(program.env, program.source, program.result_type)


def _paren(expression: Expression, mode: str) -> str:
    # The newline ends a trailing ``//`` comment before the closing parenthesis.
    return f"({fast_source(expression, mode)}\n)"


def _validations(policy: Policy, index: int, bound: frozenset[int]) -> str:
    """Validations ``index``... chained: each evaluated once, the first non-null one wins.

    The variables a validation reads are bound just before it (those not bound yet), inside
    the branch reached only when every earlier validation was null: as close to Kyverno's lazy
    variables as a bind can be, so fewer requests need the reference path.
    """
    if index == len(policy.validations):
        return "null"
    validation = policy.validations[index]
    new = set(validation.needs) - bound
    rest = _validations(policy, index + 1, bound | new)
    chain = (
        f"cel.bind({_RESULT}, {_paren(validation, policy.mode)}, "
        f"{_RESULT} != null ? dyn([{index}, {_RESULT}]) : {rest})"
    )
    return _bind(policy, new, bound, chain)


def _all(conditions: Sequence[Expression], mode: str) -> str:
    # Python's all(): in order, the first false or error ends it.
    text = "true"
    for condition in reversed(conditions):
        text = f"({_paren(condition, mode)} ? {text} : false)"
    return text


def _any(alternatives: Iterable[str]) -> str:
    text = "false"
    for alternative in reversed(list(alternatives)):
        text = f"({alternative} ? true : {text})"
    return text


def _bind(policy: Policy, new: set[int], bound: frozenset[int], body: str) -> str:
    """Wrap ``body`` in binds of ``variables`` that add the variables ``new`` to those already
    ``bound``, one bind per dependency level so that later variables see earlier ones."""
    if not new:
        return body
    variables = policy.variables
    levels: dict[int, int] = dict.fromkeys(bound, -1)
    for index in sorted(new):
        # needs are transitive and name earlier variables only: in declaration order, each
        # variable's dependencies already have a level.
        levels[index] = max((levels[d] for d in variables[index].needs), default=-1) + 1
    rounds = max(levels[i] for i in new) + 1
    text = body
    for level in reversed(range(rounds)):
        entries = [
            f'"{variables[i].name}": variables.{variables[i].name}'
            for i in sorted(levels)
            if levels[i] < level
        ]
        entries += [
            f'"{variables[i].name}": {_paren(variables[i], policy.mode)}'
            for i in sorted(new)
            if levels[i] == level
        ]
        text = f"cel.bind(variables, {{{', '.join(entries)}}}, {text})"
    return text


def binds_mcp(expression: Expression) -> bool:
    return binds_name(ast.parse(expression.program.expression.serialize()), MCP)
