"""The CEL environment policies compile in, and evaluation with errors as exceptions.

One configuration serves every policy of a mode: Kyverno's extensions (optional types,
strings, lists, sets, math, encoders, bindings, regex, protos, two-variable comprehensions) and
libraries (``json``, ``jwt``/``jwks``, ``mcp``, and this project's ``uri``, ``identity`` and
``approval``), with ``object`` and the response builders of the policy's mode: Envoy's
CheckRequest and the ``envoy`` library (:data:`ENVOY`), or Kyverno's HTTP request and the
``http`` library (:data:`HTTP`, :mod:`authz_server.cel.http`). Per policy only the declared
variables differ: each of ``variables.<name>`` is declared with the type its expression compiled
to, so ``variables.token.Claims`` is checked like any other expression.

An expression must be evaluated with an activation made by the environment that compiled it, and
that environment must outlive the expression (cel-expr-python crashes otherwise; found by this
project's tests). :class:`Program` therefore keeps its environment, and expressions that need no
policy variables are compiled in one shared environment so one activation per MCP message serves
all of them.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cel_expr_python import cel

from authz_server.cel import analysis, ast
from authz_server.cel import approval as approval_lib
from authz_server.cel import envoy as envoy_lib
from authz_server.cel import http as http_lib
from authz_server.cel import identity as identity_lib
from authz_server.cel import json as json_lib
from authz_server.cel import jwt as jwt_lib
from authz_server.cel import mcp as mcp_lib
from authz_server.cel import uri as uri_lib
from authz_server.cel.errors import (
    CelCompileError,
    CelEvaluationError,
    CelIssue,
    clean_status,
    issues_from_message,
)
from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2

# Importing the generated module registers the Envoy descriptors in the default pool, which the
# CEL runtime reads; keep the reference so the import is not considered unused.
_REGISTERED = external_auth_pb2.DESCRIPTOR

OBJECT = "object"
REQUEST_TYPE = "envoy.service.auth.v3.CheckRequest"
RESPONSE_TYPE = "envoy.service.auth.v3.CheckResponse"

# Evaluation modes (``spec.evaluation.mode``): which request ``object`` is and which response a
# validation returns.
ENVOY = "Envoy"
HTTP = "HTTP"
MODES = (ENVOY, HTTP)
RESPONSE_TYPES = {ENVOY: RESPONSE_TYPE, HTTP: http_lib.RESPONSE_TYPE}

_EXTENSIONS = (
    "optional",
    "strings",
    "lists",
    "sets",
    "math",
    "encoders",
    "bindings",
    "regex",
    "protos",
    "two-var-comprehensions",
)


@functools.cache
def _config() -> cel.EnvConfig:
    lines = ["extensions:"]
    for name in _EXTENSIONS:
        lines += [f"- name: {name}", "  version: latest"]
    return cel.NewEnvConfigFromYaml("\n".join(lines) + "\n")


def _functions(mode: str = ENVOY) -> tuple[cel.FunctionDecl, ...]:
    return _mode_functions(mode)


# The memoized functions take the mode positionally from their public wrappers, so that
# ``f()`` and ``f(ENVOY)`` share one cache entry (one environment, not two).
@functools.cache
def _mode_functions(mode: str) -> tuple[cel.FunctionDecl, ...]:
    common = (
        *json_lib.functions(),
        *jwt_lib.functions(),
        *mcp_lib.functions(),
        *uri_lib.functions(),
    )
    if mode == HTTP:
        return (*http_lib.functions(), *common)
    return (*envoy_lib.functions(), *approval_lib.functions(), *common)


def base_variables(mode: str = ENVOY) -> Mapping[str, cel.Type]:
    return _base_variables(mode)


@functools.cache
def _base_variables(mode: str) -> Mapping[str, cel.Type]:
    # Memoized tables are shared by every caller: read-only.
    request = http_lib.variables() if mode == HTTP else {OBJECT: cel.Type(REQUEST_TYPE)}
    return MappingProxyType({**request, **mcp_lib.variables(), **identity_lib.variables()})


@functools.cache
def constants() -> Mapping[str, Any]:
    """Values of the library's named constants; an activation needs only those its expressions
    read (see :attr:`Program.constants`), since each bound name costs on every request.
    Read-only: copy it to bind it."""
    return MappingProxyType(mcp_lib.constants())


def new_env(variables: Mapping[str, cel.Type] | None = None, mode: str = ENVOY) -> cel.Env:
    """An environment with the base declarations of ``mode`` plus policy variables
    (``variables.<name>``)."""
    declared = dict(base_variables(mode))
    for name, kind in (variables or {}).items():
        declared[analysis.VARIABLES_PREFIX + name] = kind
    return cel.NewEnv(config=_config(), variables=declared, functions=list(_functions(mode)))


def shared_env(mode: str = ENVOY) -> cel.Env:
    """The environment of ``mode`` without policy variables (match conditions, variable-free
    policies): one per mode, whichever way it is asked for."""
    return _shared_env(mode)


@functools.cache
def _shared_env(mode: str) -> cel.Env:
    return new_env(mode=mode)


def fast_env(mode: str = ENVOY) -> cel.Env:
    """The shared environment of ``mode`` plus the request getters of
    :func:`mcp_lib.request_functions`, for the fast path's combined programs and the lean
    programs only (policies never compile in it, so they cannot call those functions outside
    an evaluation that binds the current message)."""
    return _fast_env(mode)


@functools.cache
def _fast_env(mode: str) -> cel.Env:
    return fast_env_with({}, mode)


# The fast path's combined programs read the positions of the policies to leave out (their entry
# null) from this variable: empty on the first evaluation, the policies that failed on a second.
SKIP = "authz_skip"


def fast_env_with(variables: Mapping[str, cel.Type], mode: str = ENVOY) -> cel.Env:
    """:func:`fast_env` plus more variables (the fast path's hoisted calls); a new environment
    each time, which the caller keeps alive with its expressions."""
    return cel.NewEnv(
        config=_config(),
        variables={**base_variables(mode), SKIP: cel.Type.List(cel.Type.INT), **variables},
        functions=[*_functions(mode), *mcp_lib.request_functions()],
    )


def env_with(
    variables: Mapping[str, cel.Type], functions: Iterable[cel.FunctionDecl] = ()
) -> cel.Env:
    """The base declarations and libraries plus ``variables`` (full names) and ``functions``;
    a new environment each time, which the caller keeps alive with its expressions."""
    return cel.NewEnv(
        config=_config(),
        variables={**base_variables(), **variables},
        functions=[*_functions(), *functions],
    )


def pure_env(mode: str = ENVOY) -> cel.Env:
    """The base variables of ``mode`` and CEL's own functions, none implemented in Python: an
    expression that compiles here makes no call into Python when evaluated."""
    return _pure_env(mode)


@functools.cache
def _pure_env(mode: str) -> cel.Env:
    return cel.NewEnv(config=_config(), variables=dict(base_variables(mode)))


def strings_env(names: Iterable[str]) -> cel.Env:
    """CEL's own functions, the named constants and the string variables ``names``, nothing
    else (the fast path's prelude over strings read from the request)."""
    declared = dict.fromkeys((*constants(), *names), cel.Type.STRING)
    return cel.NewEnv(config=_config(), variables=declared)


# The type of a variable whose own expression did not compile: later expressions still get
# checked for their own mistakes.
DYN = cel.Type.DYN


def activation(data: Mapping[str, Any], env: cel.Env | None = None) -> Any:
    return (env or shared_env()).Activation(data)


@dataclass(frozen=True, slots=True)
class Program:
    """A compiled expression and what the loader learnt about it."""

    source: str
    expression: Any
    # The compiling environment: activations must come from it, and it must stay alive.
    env: Any
    result_type: Any
    # Policy variables the expression reads directly (by name, without the prefix).
    variables: frozenset[str]
    # MCP methods for which the expression can be true; None when unknown.
    methods: frozenset[str] | None
    # Named constants (``mcp.ToolsCallMethod`` ...) the expression reads.
    constants: frozenset[str] = frozenset()
    # The expression is typed bool (match conditions), which allows a faster evaluation.
    boolean: bool = False
    # The value cannot differ between requests (no request data, variables, clock or keys).
    constant: bool = False
    # The ``jwks.Fetch`` calls, each with its literal URL (the loader checks the URLs).
    fetches: tuple[analysis.FetchSite, ...] = ()

    @property
    def fetch_urls(self) -> frozenset[str]:
        return frozenset(site.url for site in self.fetches)

    @property
    def result_type_name(self) -> str:
        return str(self.result_type.name())

    @property
    def variable_type(self) -> Any:
        """The type a policy variable holding this value is declared with. A message-typed value
        may be null, which the runtime refuses to bind to a message-typed variable, so such
        variables are declared dyn (and checked at run time)."""
        return cel.Type.DYN if self.result_type.is_message() else self.result_type


def compile_expression(
    env: cel.Env | None,
    source: str,
    cost: analysis.CostLimits | None = None,
    mode: str = ENVOY,
) -> Program:
    """Parse and type-check ``source`` (in the shared environment of ``mode`` when ``env`` is
    None, else in ``env``, which must be of ``mode``); raise :class:`CelCompileError` with every
    issue. An HTTP-mode expression is evaluated as :func:`http_lib.rewrite` rewrote it."""
    env = env or shared_env(mode)
    try:
        expression = env.compile(source)
    except RuntimeError as exc:
        raise CelCompileError(issues_from_message(str(exc))) from None
    checked = ast.parse(expression.serialize())
    issues: list[CelIssue] = analysis.mcp_field_issues(checked, source)
    issues += analysis.cost_issues(checked, source, cost or analysis.CostLimits())
    fetches, fetch_issues = analysis.fetch_sites(checked, source)
    issues += fetch_issues
    if issues:
        raise CelCompileError(tuple(issues))
    result_type = expression.return_type()
    if mode == HTTP:
        expression = _rewritten(env, source, expression)
    return Program(
        source=source,
        expression=expression,
        env=env,
        result_type=result_type,
        variables=analysis.referenced_variables(checked),
        methods=analysis.method_guard(checked, dict(constants())),
        constants=analysis.referenced_names(checked, constants()),
        boolean=bool(result_type == cel.Type.BOOL),
        constant=not analysis.reads_request(checked),
        fetches=tuple(fetches),
    )


def _rewritten(env: cel.Env, source: str, expression: Any) -> Any:
    """The expression to evaluate for an HTTP-mode ``source``: its rewrite when there is one that
    compiles to a value of the same kind (a list where a list was, a response where one was),
    else the expression as written."""
    candidate = _http_rewrite(env, source, expression.return_type())[1]
    return expression if candidate is None else candidate


def http_source(env: cel.Env, source: str, written: cel.Type) -> str:
    """The source an HTTP-mode expression of type ``written`` is evaluated as (see
    :func:`compile_expression`): its rewrite, or ``source`` itself."""
    rewritten, candidate = _http_rewrite(env, source, written)
    return source if candidate is None else rewritten


def _http_rewrite(env: cel.Env, source: str, written: cel.Type) -> tuple[str, Any]:
    """The rewrite of ``source`` and its compiled expression; None for the expression when
    there is no rewrite, or it does not compile to a value of the kind ``written``."""
    rewritten = http_lib.rewrite(source)
    if rewritten == source:
        return source, None
    try:
        candidate = env.compile(rewritten)
    except RuntimeError:
        return source, None
    got = candidate.return_type()
    lists = str(written.name()).startswith("LIST") and str(got.name()).startswith("LIST")
    if got == written or lists or written == cel.Type.DYN:
        return rewritten, candidate
    return source, None


_ERROR = cel.Type.ERROR
_NULL = cel.Type.NULL


def evaluate_plain(program: Program, data: Mapping[str, Any]) -> Any:
    """The plain value of one evaluation over ``data``, or None when the runtime raised; an
    error value comes back as its text. The fast path's call: it only accepts a list, so it
    skips :func:`evaluate`'s type checks."""
    try:
        return program.expression.eval(program.env.Activation(data)).plain_value()
    except RuntimeError:
        return None


def evaluate(program: Program, activation: Any) -> Any:
    """Evaluate and return a Python value; a CEL error value becomes :class:`CelEvaluationError`.

    cel-expr-python returns errors as values rather than raising, so the check is explicit.
    """
    try:
        value = program.expression.eval(activation)
    except RuntimeError as exc:
        raise CelEvaluationError(clean_status(str(exc))) from None
    if program.boolean:
        # A bool-typed expression yields a bool or an error (whose plain value is its text):
        # one conversion instead of two type comparisons on the hottest path.
        result = value.plain_value()
        if result is True or result is False:
            return result
        raise CelEvaluationError(clean_status(str(result)))
    kind = value.type()
    if kind == _NULL:
        return None  # also spares a trip through the library's faulty null conversion
    if kind == _ERROR:
        raise CelEvaluationError(clean_status(str(value.value())))
    return value.plain_value()
