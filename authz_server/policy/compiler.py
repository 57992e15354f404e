"""Compiling one checked policy document (and the exceptions naming it) into a :class:`Policy`.

Every expression is compiled and type-checked; each problem is reported with its file position,
and a policy with any problem is not built at all.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from authz_server.cel import (
    CelCompileError,
    CelEvaluationError,
    CostLimits,
    Program,
    activation,
    compile_expression,
    evaluate,
    new_env,
    shared_env,
)
from authz_server.cel.env import DYN, ENVOY, HTTP, RESPONSE_TYPES, constants
from authz_server.identity.config import url_problem
from authz_server.policy.documents import Document, PathKey, field_name
from authz_server.policy.errors import PolicyIssue
from authz_server.policy.model import (
    Exception_,
    Expression,
    FailurePolicy,
    Policy,
    Source,
)


@dataclass(frozen=True, slots=True)
class CompileOptions:
    """Load-time choices; ``cost`` bounds nested iteration (see ``authz_server.cel.analysis``)."""

    cost: CostLimits = field(default_factory=CostLimits)


class _Compiler:
    """Compiles one policy's expressions, collecting every problem."""

    def __init__(
        self, name: str, document: Document, options: CompileOptions, mode: str = ENVOY
    ) -> None:
        self.name = name
        self.document = document
        self.options = options
        self.mode = mode
        self.issues: list[PolicyIssue] = []

    def compile(
        self, env: Any, path: PathKey, source: str, document: Document | None = None
    ) -> Program | None:
        document = document or self.document
        try:
            program = compile_expression(env, source, self.options.cost, self.mode)
        except CelCompileError as exc:
            for issue in exc.issues:
                self.report(path, issue.message, issue.line, issue.column, source, document)
            return None
        for site in program.fetches:
            # Fetched like an issuer's jwks.uri, by the identity stage: the same rule.
            problem = url_problem(site.url, loopback_http=True)
            if problem:
                self.report(
                    path, f"jwks.Fetch URL {problem}", site.line, site.column, source, document
                )
        return program

    def report(
        self,
        path: PathKey,
        message: str,
        expr_line: int = 0,
        expr_column: int = 0,
        source: str = "",
        document: Document | None = None,
    ) -> None:
        document = document or self.document
        line, column = document.expression_position(path, expr_line, expr_column)
        self.issues.append(
            PolicyIssue(
                document.file,
                message,
                document_index=document.index,
                policy=self.name,
                field=field_name(path),
                line=line,
                column=column,
                expression_line=expr_line,
                expression_column=expr_column,
                snippet=_snippet(source, expr_line, expr_column),
            )
        )


def _snippet(source: str, line: int, column: int) -> str:
    if not source or line <= 0:
        return ""
    lines = source.splitlines() or [""]
    if line > len(lines):
        return ""
    text = lines[line - 1]
    return f"    | {text}\n    | {' ' * max(column - 1, 0)}^"


def compile_policy(
    name: str,
    document: Document,
    data: Mapping[str, Any],
    exceptions: Iterable[tuple[str, Document, Mapping[str, Any]]],
    options: CompileOptions,
) -> tuple[Policy | None, list[PolicyIssue]]:
    spec = data["spec"]
    mode = str(spec["evaluation"]["mode"])
    compiler = _Compiler(name, document, options, mode)
    base = shared_env(mode)

    conditions = []
    for i, item in enumerate(spec.get("matchConditions") or []):
        path = ("spec", "matchConditions", i, "expression")
        program = compiler.compile(base, path, item["expression"])
        if program is not None:
            if program.result_type_name != "BOOL":
                compiler.report(
                    path,
                    f"a match condition must evaluate to bool, not {program.result_type_name}",
                )
            conditions.append(Expression(item["name"], _field(path), program))

    # Each variable sees only the variables declared before it, with their compiled types.
    types: dict[str, Any] = {}
    variables: list[Expression] = []
    env = base
    variable_ok = True
    for i, item in enumerate(spec.get("variables") or []):
        path = ("spec", "variables", i, "expression")
        program = compiler.compile(env, path, item["expression"])
        if program is None:
            variable_ok = False
            types[item["name"]] = DYN
        else:
            types[item["name"]] = program.variable_type
            variables.append(
                Expression(item["name"], _field(path), program, _needs(program, variables))
            )
        env = new_env(types, mode)
    # Compiled again in the policy's final environment, so that one activation serves all of
    # the policy's expressions (an activation must come from the compiling environment).
    variables = [
        dataclasses.replace(v, program=_recompile(env, v.program, options, mode)) for v in variables
    ]

    validations = []
    for i, item in enumerate(spec.get("validations") or []):
        path = ("spec", "validations", i, "expression")
        program = compiler.compile(env, path, item["expression"])
        if program is None:
            continue
        result = program.result_type_name
        # dyn (a variable holding a response) is checked when evaluated.
        if result not in (RESPONSE_TYPES[mode], "NULL", "DYN"):
            compiler.report(path, not_a_response(mode, result))
        validations.append(
            Expression(f"validations[{i}]", _field(path), program, _needs(program, variables))
        )

    compiled_exceptions = []
    for exception_name, exception_doc, exception_data in exceptions:
        exception_conditions = []
        for i, item in enumerate(exception_data["spec"].get("matchConditions") or []):
            path = ("spec", "matchConditions", i, "expression")
            program = compiler.compile(env, path, item["expression"], exception_doc)
            if program is None:
                continue
            if program.result_type_name != "BOOL":
                compiler.report(
                    path,
                    f"an exception condition must evaluate to bool, not {program.result_type_name}",
                    document=exception_doc,
                )
            exception_conditions.append(
                Expression(item["name"], _field(path), program, _needs(program, variables))
            )
        compiled_exceptions.append(
            Exception_(
                exception_name,
                Source(exception_doc.file, exception_doc.index),
                tuple(exception_conditions),
            )
        )

    if compiler.issues or not variable_ok:
        return None, compiler.issues
    actions = spec.get("validationActions") or ["Deny"]
    return (
        Policy(
            name=name,
            source=Source(document.file, document.index),
            failure_policy=FailurePolicy(spec.get("failurePolicy", "Fail")),
            mode=mode,
            match_conditions=tuple(conditions),
            variables=tuple(variables),
            validations=tuple(validations),
            exceptions=tuple(compiled_exceptions),
            audit="Deny" not in actions,
            methods=_methods(conditions),
            preset=_preset(variables),
        ),
        [],
    )


def _preset(variables: list[Expression]) -> dict[int, object]:
    """Evaluate once the variables that read neither the request nor other variables (literal
    allow-lists, maps of agents to tools ...). One that fails is left to fail per request."""
    values: dict[int, object] = {}
    data = dict(constants())
    for index, variable in enumerate(variables):
        if not variable.program.constant:
            continue
        try:
            values[index] = evaluate(variable.program, activation(data, variable.program.env))
        except CelEvaluationError:
            continue
    return values


def _recompile(env: Any, program: Program, options: CompileOptions, mode: str) -> Program:
    return compile_expression(env, program.source, options.cost, mode)


def type_text(name: str) -> str:
    """A CEL type name as policy authors write it: ``BOOL`` -> ``bool``,
    ``LIST<STRING>`` -> ``list(string)``; message names are left as they are."""
    if not _BUILTIN_TYPE.fullmatch(name):
        return name
    return re.sub(r",\s*", ", ", name.lower().replace("<", "(").replace(">", ")"))


_BUILTIN_TYPE = re.compile(r"[A-Z_]+(<[A-Z_<>, ]+>)?")


def not_a_response(mode: str, result: str) -> str:
    """Why a validation of ``mode`` whose type is ``result`` is refused at load."""
    text = (
        f"a validation must evaluate to {RESPONSE_TYPES[mode]} or null, "
        f"but this one evaluates to {type_text(result)}"
    )
    other = next((m for m, t in RESPONSE_TYPES.items() if t == result and m != mode), None)
    if other is not None:
        text += f" (the response of mode {other}: set spec.evaluation.mode to {other!r})"
    elif mode == HTTP:
        text += " (build one with http.Allowed().Response() or http.Denied(reason).Response())"
    else:
        text += " (build one with envoy.Allowed().Response() or envoy.Denied(code).Response())"
    return text


def _field(path: PathKey) -> str:
    return field_name(path)


def _needs(program: Program, variables: list[Expression]) -> tuple[int, ...]:
    index = {v.name: i for i, v in enumerate(variables)}
    needed: set[int] = set()
    for name in program.variables:
        if name in index:
            needed.add(index[name])
            needed.update(variables[index[name]].needs)
    return tuple(sorted(needed))


def _methods(conditions: list[Expression]) -> frozenset[str] | None:
    # Every condition must hold, so the methods a policy applies to are the intersection.
    methods: frozenset[str] | None = None
    for condition in conditions:
        guard = condition.program.methods
        if guard is not None:
            methods = guard if methods is None else methods & guard
    return methods
