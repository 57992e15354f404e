"""Judge a request against a policy set.

Per policy (Kyverno's semantics): match conditions first (any false skips the policy, even if
another errored; otherwise an error is the policy's error); then exceptions (all conditions of
one true skips the policy); then validations in order, the first non-null response being the
policy's answer. Variables are evaluated only when an expression reads them, once per policy
and message, so an erroring variable nobody reads is harmless. A policy error is handled by its
failurePolicy: ``Ignore`` is no answer, ``Fail`` is an explicit denial naming the policy.

Across policies, in name order: ``deny-overrides`` (default) lets any denial win and merges the
mutations of every allowing policy; ``first-match`` is Kyverno's rule, the first answer or error
wins. No answer gives the configured default. Audit policies are evaluated and reported in
``Decision.dry_run``, never enforced, all of them, even those after the policy that decided (so
the record does not depend on evaluation order). A batch is judged element by element with
``mcp`` bound to each; one denied element denies the whole batch.

Two paths compute the answers: the fast path evaluates each method bucket's policies in one
combined CEL program (:mod:`authz_server.policy.combined`); when that program fails in any way,
each policy's own combined program is asked in its place, and the reference path below
(:func:`evaluate_policy`, one CEL call per expression) decides only for a policy whose own
program fails too. A policy that fails at run time is thus judged alone on the reference path,
not with its whole bucket: that path costs several times the fast one. Every call it makes from
CEL into Python would keep its arguments and result (cel-expr-python 0.1.3), so such a policy's
expressions are evaluated by their lean programs (:mod:`authz_server.policy.lean`), folded and
hoisted as the fast path's are. All paths give the same decision;
``tests/policy/test_combined.py`` checks it.

:meth:`Engine.check` never raises: anything unexpected becomes a denial whose reason is a fixed
text (the exception's own text may hold request values; the log gets its class and place).
A policy's runtime error is reported by class (:mod:`authz_server.policy.error_text`), never
with the values CEL or a library function quoted in its message.

The policies asked about each message are reported to ``on_evaluated`` (the metrics) with their
:class:`PolicyResult` s, once per check: the names of the bucket's policies (one tuple per bucket,
reused) and a tuple of results, which the listener can tally as one pattern instead of one
count per policy.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import re
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from authz_server.cel import CelEvaluationError, activation, evaluate, shared_env
from authz_server.cel.analysis import VARIABLES_PREFIX
from authz_server.cel.env import ENVOY, HTTP, OBJECT, RESPONSE_TYPES, constants
from authz_server.cel.identity import VARIABLE as IDENTITY
from authz_server.cel.identity import Messages
from authz_server.cel.mcp import VARIABLE as MCP
from authz_server.cel.mcp import empty_view
from authz_server.decision import DecidedBy, Decision, DryRunResult, allow, deny
from authz_server.frozen import FrozenDict
from authz_server.identity.model import ANONYMOUS, Identity
from authz_server.mcp.message import Decoded, McpMessage
from authz_server.policy import render
from authz_server.policy.compiler import type_text
from authz_server.policy.error_text import error_class
from authz_server.policy.lean import CallFailed, LeanExpression, lean_expressions
from authz_server.policy.model import Expression, FailurePolicy, Policy, PolicySet
from authz_server.policy.response import (
    cached_decision_from_response,
    decision_from_http_response,
    decision_from_response,
)
from authz_server.request import Request

log = logging.getLogger(__name__)


class Combine(enum.StrEnum):
    DENY_OVERRIDES = "deny-overrides"
    FIRST_MATCH = "first-match"


class Default(enum.StrEnum):
    DENY = "deny"
    ALLOW = "allow"


@dataclass(frozen=True, slots=True)
class EngineOptions:
    """How answers combine and what happens when none is given.

    ``decode_failures_to_policies`` hands requests whose body failed to decode to the policies
    (with ``mcp.Method == ""``) instead of denying them up front.
    """

    combine: Combine = Combine.DENY_OVERRIDES
    default_decision: Default = Default.DENY
    decode_failures_to_policies: bool = False

    def __post_init__(self) -> None:
        # Accept the plain strings a CLI flag or config file gives ("first-match", "allow").
        object.__setattr__(self, "combine", Combine(self.combine))
        object.__setattr__(self, "default_decision", Default(self.default_decision))


class PolicyResult(enum.StrEnum):
    """What one policy did with one message (the ``result`` label of policy evaluations)."""

    ALLOW = "allow"
    DENY = "deny"
    # approval.Require: a person must approve the call first.
    APPROVAL = "approval"
    # No answer: match conditions false, an exception applied, or every validation was null.
    NO_MATCH = "no_match"
    ERROR = "error"
    # Not asked: an earlier policy had already decided (Audit policies are always asked).
    SKIPPED = "skipped"


# Enum attribute lookups cost ~0.1 us each; the loop over a bucket's policies reads these.
_ALLOW, _DENY, _NO_MATCH, _ERROR, _SKIPPED = (
    PolicyResult.ALLOW,
    PolicyResult.DENY,
    PolicyResult.NO_MATCH,
    PolicyResult.ERROR,
    PolicyResult.SKIPPED,
)
# Per message: the names of the policies asked about it, and what each did (same order).
Evaluations = list[tuple[tuple[str, ...], tuple[PolicyResult, ...]]]
EvaluationListener = Callable[[Evaluations], None]
INTERNAL_ERROR_REASON = "internal error while evaluating policies"
# Buckets whose failing policies are remembered (a set has a few; a reload brings new ones).
_SUSPECT_BUCKETS = 64
_NO_SUSPECTS: tuple[tuple[int, ...], int] = ((), 0)
# Consecutive failing requests after which the failing policies are no longer asked alone first.
_REPEATED = 2

_MISSING_VARIABLE = re.compile(r'No value with name "variables\.([A-Za-z_][A-Za-z0-9_]*)"')


class _Failed(Exception):
    """A policy's evaluation error, with the field it happened in."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class _Scope:
    """Evaluation state of one policy for one message: lazily computed variables, and one
    activation per compiling environment (see :mod:`authz_server.cel.env`).

    With ``lean`` (a policy that failed on the fast path, or whose bucket has none), an
    expression that has a lean program (:mod:`authz_server.policy.lean`) is evaluated by it
    instead: same value, same error, no call from CEL into Python that keeps request data."""

    __slots__ = ("activations", "data", "errors", "evaluated", "lean", "policy")

    def __init__(
        self,
        policy: Policy,
        shared: Any,
        data: Mapping[str, Any],
        lean: Mapping[int, LeanExpression] | None = None,
    ) -> None:
        self.policy = policy
        self.data = data
        self.activations: dict[int, Any] = {id(shared_env(policy.mode)): shared}
        self.evaluated: set[int] = set()
        self.errors: dict[str, str] = {}
        self.lean = lean

    def run(self, expression: Expression) -> Any:
        if expression.needs:
            self._prepare(expression.needs)
        try:
            return self._value(expression)
        except CelEvaluationError as exc:
            raise _Failed(expression.field, self._explain(str(exc))) from None

    def _value(self, expression: Expression) -> Any:
        lean = self.lean.get(id(expression)) if self.lean else None
        if lean is not None:
            try:
                return lean.evaluate(self.data)
            except CallFailed as exc:
                if exc.message is not None:
                    raise CelEvaluationError(exc.message) from None
                # The call's arguments failed: the loaded expression says how.
        program = expression.program
        act = self.activations.get(id(program.env))
        if act is None:
            act = self.activations[id(program.env)] = activation(self.data, program.env)
        return evaluate(program, act)

    def _prepare(self, needs: tuple[int, ...]) -> None:
        missing = [i for i in needs if i not in self.evaluated]
        if not missing:
            return
        data = dict(self.data)
        variables = self.policy.variables
        if not self.evaluated and self.policy.preset:
            for index, value in self.policy.preset.items():
                data[VARIABLES_PREFIX + variables[index].name] = value
            self.evaluated.update(self.policy.preset)
            missing = [i for i in missing if i not in self.evaluated]
        # In rounds: every variable whose own needs are already bound shares one activation.
        self.data = data
        while missing:
            ready = [i for i in missing if self.evaluated.issuperset(variables[i].needs)]
            if not ready:  # cannot happen for a loaded policy (needs are transitive, ordered)
                ready = missing[:1]
            self.activations = {}
            for index in ready:
                variable = variables[index]
                try:
                    data[VARIABLES_PREFIX + variable.name] = self._value(variable)
                except CelEvaluationError as exc:
                    # Left unbound: an expression that reaches it fails, one that does not is
                    # fine (Kyverno evaluates variables lazily).
                    self.errors[variable.name] = self._explain(str(exc))
            self.evaluated.update(ready)
            missing = [i for i in missing if i not in self.evaluated]
        self.activations = {}

    def _explain(self, message: str) -> str:
        """The error's class (see :mod:`authz_server.policy.error_text`); for a variable that
        failed, the variable's name and its own error's class."""
        match = _MISSING_VARIABLE.search(message)
        if match and match.group(1) in self.errors:
            return f"variable {match.group(1)!r}: {self.errors[match.group(1)]}"
        return error_class(message)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One policy's result for one message: a decision, an error, or nothing (both None)."""

    decision: Decision | None = None
    error: _Failed | None = None


_NOTHING = _Outcome()


def evaluate_policy(
    policy: Policy,
    shared: Any,
    data: Mapping[str, Any],
    lean: Mapping[int, LeanExpression] | None = None,
) -> _Outcome:
    """Evaluate one policy (without applying its failurePolicy); ``lean``: see :class:`_Scope`."""
    scope = _Scope(policy, shared, data, lean)
    error: _Failed | None = None
    for condition in policy.match_conditions:
        try:
            if not scope.run(condition):
                return _NOTHING
        except _Failed as exc:
            error = error or exc
    if error is not None:
        return _Outcome(error=error)
    try:
        for exception in policy.exceptions:
            if all(scope.run(c) for c in exception.conditions):
                return _NOTHING
        for index, validation in enumerate(policy.validations):
            result = scope.run(validation)
            if result is None:
                continue
            kind = getattr(getattr(result, "DESCRIPTOR", None), "full_name", "")
            if kind != RESPONSE_TYPES[policy.mode]:
                raise _Failed(validation.field, f"type error (not a response: {_kind(result)})")
            if policy.mode == HTTP:
                return _Outcome(decision=decision_from_http_response(result, policy.name, index))
            return _Outcome(decision=decision_from_response(result, policy.name, index))
    except _Failed as exc:
        return _Outcome(error=exc)
    return _NOTHING


def _kind(value: Any) -> str:
    """The CEL type name of a value a validation returned, for the error text (never the value:
    it may hold request data)."""
    full_name = getattr(getattr(value, "DESCRIPTOR", None), "full_name", "")
    if full_name:
        return str(full_name)
    names = {bool: "bool", int: "int", float: "double", str: "string", bytes: "bytes"}
    names.update({bytearray: "bytes", list: "list", dict: "map"})
    return type_text(names.get(type(value), type(value).__name__))


def _error_decision(policy: Policy, error: _Failed) -> Decision:
    return deny(
        403,
        reason=f"policy {policy.name!r} failed at {error.field}: {error.message}",
        decided_by=DecidedBy.ERROR,
        policy=policy.name,
        body="",
    )


def _policy_decision(policy: Policy, outcome: _Outcome) -> Decision | None:
    """A policy's answer with its failurePolicy applied: a decision or None (no answer)."""
    if outcome.error is not None:
        if policy.failure_policy is FailurePolicy.IGNORE:
            return None
        return _error_decision(policy, outcome.error)
    return outcome.decision


class _ReferenceOutcomes:
    """Answers from the per-policy evaluation (the reference path), computed when asked.

    ``lean`` gives, for a policy's position, the lean programs it is judged with (see
    :mod:`authz_server.policy.lean`), or None: the expressions as loaded."""

    __slots__ = ("data", "lean", "shared")

    def __init__(
        self,
        shared: Any,
        data: Mapping[str, Any],
        lean: Callable[[int], Mapping[int, LeanExpression] | None] | None = None,
    ) -> None:
        self.shared = shared
        self.data = data
        self.lean = lean

    def __call__(self, index: int, policy: Policy) -> tuple[Decision | None, PolicyResult]:
        lean = self.lean(index) if self.lean is not None else None
        outcome = evaluate_policy(policy, self.shared, self.data, lean)
        if outcome.error is not None:
            result = _ERROR
        elif outcome.decision is None:
            result = _NO_MATCH
        else:
            result = _result_of(outcome.decision)
        return _policy_decision(policy, outcome), result


def _result_of(decision: Decision) -> PolicyResult:
    if decision.allowed:
        return _ALLOW
    return PolicyResult.APPROVAL if decision.approval else _DENY


# A validation's response as a decision, by evaluation mode (the fast path has checked its type).
_FROM_RESPONSE: Mapping[str, Callable[[Any, str, int], Decision]] = {
    ENVOY: cached_decision_from_response,
    HTTP: decision_from_http_response,
}


class _FastOutcomes:
    """Answers from one evaluation of the bucket's combined program (in policy order)."""

    __slots__ = ("results",)

    def __init__(self, results: list[Any]) -> None:
        self.results = results

    def __call__(self, index: int, policy: Policy) -> tuple[Decision | None, PolicyResult]:
        result = self.results[index]
        if result is None:
            return None, _NO_MATCH
        validation, response = result
        decision = _FROM_RESPONSE[policy.mode](response, policy.name, validation)
        return decision, _result_of(decision)


class _IsolatedOutcomes:
    """Answers when the bucket's combined program failed: each policy's own program, and the
    reference path for a policy whose own program fails (built when first needed).

    With ``results`` (:meth:`use`: the combined program evaluated again without the policies
    at ``suspects``, those that failed last time) the others' answers come from them, and the
    suspects go straight to the reference path. ``failed`` collects the positions of the
    policies that failed, for next time."""

    __slots__ = (
        "_answers",
        "_identity",
        "_reference",
        "_request",
        "_results",
        "_singles",
        "_suspects",
        "_view",
        "failed",
    )

    def __init__(
        self,
        singles: tuple[Any, ...],
        check_request: Any,
        view: Mapping[str, Any],
        identity: Any,
        reference: Callable[[], _ReferenceOutcomes],
    ) -> None:
        self._singles = singles
        self._request = check_request
        self._view = view
        self._identity = identity
        self._reference: Callable[[], _ReferenceOutcomes] | _ReferenceOutcomes = reference
        self._results: list[Any] | None = None
        self._suspects: tuple[int, ...] = ()
        # The reference path's answers already computed, by position.
        self._answers: dict[int, tuple[Decision | None, PolicyResult]] = {}
        self.failed: list[int] = []

    def use(self, results: list[Any], suspects: tuple[int, ...]) -> None:
        self._results = results
        self._suspects = suspects

    def __call__(self, index: int, policy: Policy) -> tuple[Decision | None, PolicyResult]:
        if self._results is not None and index not in self._suspects:
            return _FastOutcomes(self._results)(index, policy)
        single = self._singles[index] if self._results is None else None
        if single is not None:
            results = single.evaluate(self._request, self._view, self._identity)
            if results is not None:
                return _FastOutcomes(results)(0, policy)
        decision, result = self.reference(index, policy)
        if result is _ERROR:
            self.failed.append(index)
        return decision, result

    def reference(self, index: int, policy: Policy) -> tuple[Decision | None, PolicyResult]:
        """The reference path's answer for the policy at ``index`` (computed once)."""
        answer = self._answers.get(index)
        if answer is None:
            reference = self._reference
            if not isinstance(reference, _ReferenceOutcomes):
                reference = self._reference = reference()
            answer = self._answers[index] = reference(index, policy)
        return answer


V = TypeVar("V")


class _SetMemo(Generic[V]):
    """Values computed for the policy set in use, by the id of an object the set holds (a
    policy, a bucket): held with the set, so no id is reused while an entry lives, and dropped
    when another set is asked about. One tuple swap keeps it whole for threads deciding at once
    (--dispatch inline): at worst a value is computed twice."""

    __slots__ = ("_state",)

    def __init__(self) -> None:
        self._state: tuple[PolicySet | None, dict[int, V]] = (None, {})

    def get(self, policies: PolicySet, key: object, make: Callable[[], V]) -> V:
        held, values = self._state
        if held is not policies:
            values = {}
            self._state = (policies, values)
        found = values.get(id(key))
        if found is None:
            found = values[id(key)] = make()
        return found


class Engine:
    """Decides requests with one immutable :class:`PolicySet`.

    Build a new engine (cheap) when the set changes, or pass a callable returning the current
    set (``PolicyStore.current``) so one engine follows reloads. ``mode`` is the evaluation mode
    of the set's policies: ``Envoy`` (``request.check_request`` is Envoy's CheckRequest) or
    ``HTTP`` (Kyverno's ``http.CheckRequest``, which the HTTP authorizer's adapter puts there).
    """

    def __init__(
        self,
        policies: PolicySet | Callable[[], PolicySet],
        options: EngineOptions | None = None,
        *,
        fast_path: bool = True,
        on_evaluated: EvaluationListener | None = None,
        mode: str = ENVOY,
    ) -> None:
        self._policies = policies if callable(policies) else (lambda: policies)
        self.mode = mode
        self.options = options or EngineOptions()
        self._on_evaluated = on_evaluated
        # Per bucket of the set in use, its policies' names.
        self._names: _SetMemo[tuple[str, ...]] = _SetMemo()
        # False forces the reference path (differential tests, benchmarks, diagnosis).
        self.fast_path = fast_path
        self._constants = dict(constants())
        self._bound: tuple[PolicySet | None, dict[str, Any]] = (None, {})
        # One view for every request without a message: read-only (CEL takes a dict subclass).
        self._empty_view = FrozenDict(empty_view())
        self._identities = Messages()
        # Per bucket (its fast path, held so that its id is not reused): the positions of the
        # policies that failed at run time the last time its combined program failed, and on
        # how many consecutive requests they failed. Several threads may decide at once
        # (--dispatch inline): entries are only read, replaced or popped, each one dict
        # operation, and a lost update costs one evaluation.
        self._suspects: dict[int, tuple[Any, tuple[int, ...], int]] = {}
        # The lean programs of the policies of the set in use that the reference path judged.
        self._leans: _SetMemo[Mapping[int, LeanExpression]] = _SetMemo()

    def check(
        self, request: Request, decoded: Decoded, identity: Identity | None = None
    ) -> Decision:
        """Decide; never raises (a defect becomes an internal-error denial)."""
        try:
            return self.decide(request, decoded, identity)
        except Exception as exc:  # the engine must answer whatever happens
            log.error("policy evaluation failed: %s", describe_exception(exc))
            decision = deny(500, reason=INTERNAL_ERROR_REASON, decided_by=DecidedBy.ERROR)
            return render.render_denial(decision, decoded, render.INTERNAL_ERROR)

    def decide(
        self, request: Request, decoded: Decoded, identity: Identity | None = None
    ) -> Decision:
        """Decide; a defect raises (for callers that answer it themselves, with a decision id).
        ``identity`` is the verified caller (None: anonymous, as without an identity stage)."""
        who = self._identities.get(identity or ANONYMOUS, (identity or ANONYMOUS).to_cel)
        if self._on_evaluated is None:
            return self._check(request, decoded, who, None)
        evaluated: Evaluations = []
        decision = self._check(request, decoded, who, evaluated)
        if evaluated:
            try:
                self._on_evaluated(evaluated)
            except Exception as exc:  # a listener must never change the decision
                log.error("policy evaluation listener failed: %s", describe_exception(exc))
        return decision

    def _check(
        self, request: Request, decoded: Decoded, identity: Any, evaluated: Evaluations | None
    ) -> Decision:
        policies = self._policies()
        if not policies.policies:
            reason = "no policies are loaded"
            if self.mode != ENVOY:
                reason = f"no {self.mode}-mode policies are loaded"
            decision = deny(503, reason=reason, decided_by=DecidedBy.NO_POLICIES)
            return render.render_denial(decision, decoded, render.NOT_READY)
        if decoded.failure is not None:
            if not self.options.decode_failures_to_policies:
                decision = deny(
                    400, reason=str(decoded.failure.reason), decided_by=DecidedBy.DECODE
                )
                return render.render_decode_failure(decision, decoded)
            messages: tuple[McpMessage | None, ...] = (None,)
        else:
            messages = decoded.messages or (None,)
        dry_run: list[DryRunResult] = []
        allowed: list[Decision] = []
        for message in messages:
            decision = self._judge(policies, request, message, identity, dry_run, evaluated)
            if not decision.allowed:
                decision = _with_dry_run(decision, dry_run)
                code = (
                    render.POLICY_ERROR
                    if decision.decided_by is DecidedBy.ERROR
                    else render.POLICY_DENIED
                )
                return render.render_denial(decision, decoded, code)
            allowed.append(decision)
        return _with_dry_run(_merge(allowed), dry_run)

    def _judge(
        self,
        policies: PolicySet,
        request: Request,
        message: McpMessage | None,
        identity: Any,
        dry_run: list[DryRunResult],
        evaluated: Evaluations | None,
    ) -> Decision:
        if message is None:
            view, method = self._empty_view, ""
        else:
            view = message.kyverno if isinstance(message.kyverno, dict) else dict(message.kyverno)
            method = message.method
        fast = policies.fast_path(method) if self.fast_path else None
        if fast is not None:
            suspects, streak = self._suspected(fast)
            results = None
            # A policy that failed last time is asked alone first (a fraction of the bucket's
            # cost): when it fails again, the bucket is not evaluated in vain before isolation.
            # Once it has failed on consecutive requests (a client sending the same mistake),
            # not even that: isolation judges a request that does not make it fail as well.
            if not suspects or (
                streak < _REPEATED and not self._fail_again(fast, suspects, request, view, identity)
            ):
                results = fast.evaluate(request.check_request, view, identity)
            if results is not None:
                if suspects:
                    self._suspects.pop(id(fast), None)
                return self._combine(
                    policies, fast.policies, _FastOutcomes(results), dry_run, evaluated
                )
            if fast.singles:
                # One policy failed (most likely): judge each alone, so that only the failing
                # one takes the reference path.
                return self._isolate(
                    policies, fast, (suspects, streak), request, view, identity, dry_run, evaluated
                )
        # A bucket of one policy (its own program failed), or one without a fast path. Without
        # the fast path (differential tests) the expressions run as loaded.
        bucket = policies.for_method(method)
        lean = (lambda i: self._lean(policies, bucket[i])) if self.fast_path else None
        outcomes = self._reference(policies, request, view, identity, lean)
        return self._combine(policies, bucket, outcomes, dry_run, evaluated)

    def _isolate(
        self,
        policies: PolicySet,
        fast: Any,
        remembered: tuple[tuple[int, ...], int],
        request: Request,
        view: Mapping[str, Any],
        identity: Any,
        dry_run: list[DryRunResult],
        evaluated: Evaluations | None,
    ) -> Decision:
        """The bucket's answers when its combined program failed. The policies that failed
        last time in this bucket are the ``suspects``: they take the reference path first, and
        the combined program is evaluated again without them (one evaluation for the others),
        nor the policies a suspect's decision leaves unasked. When that fails too, each policy
        is judged by its own program."""
        suspects, streak = remembered
        isolated = _IsolatedOutcomes(
            fast.singles,
            request.check_request,
            view,
            identity,
            lambda: self._reference(
                policies, request, view, identity, lambda i: self._lean(policies, fast.policies[i])
            ),
        )
        if suspects and fast.guarded:
            skip = suspects + self._unasked(fast.policies, suspects, isolated)
            results = fast.evaluate(request.check_request, view, identity, skip)
            if results is not None:
                isolated.use(results, suspects)
        decision = self._combine(policies, fast.policies, isolated, dry_run, evaluated)
        if isolated.failed:
            if len(self._suspects) >= _SUSPECT_BUCKETS:
                self._suspects.clear()
            failed = tuple(isolated.failed)
            self._suspects[id(fast)] = (fast, failed, streak + 1 if failed == suspects else 1)
        elif suspects:
            self._suspects.pop(id(fast), None)
        return decision

    def _unasked(
        self, policies: tuple[Policy, ...], suspects: tuple[int, ...], isolated: _IsolatedOutcomes
    ) -> tuple[int, ...]:
        """The positions :meth:`_combine` will not ask, given the suspects' answers: after the
        first suspect whose decision ends the combination, every policy but the Audit ones
        (and the suspects). Their entries of the combined program need not be computed."""
        first_match = self.options.combine is Combine.FIRST_MATCH
        for index in sorted(suspects):
            policy = policies[index]
            decision, _ = isolated.reference(index, policy)
            if decision is not None and not policy.audit and _ends(decision, first_match):
                return tuple(
                    j
                    for j in range(index + 1, len(policies))
                    if not policies[j].audit and j not in suspects
                )
        return ()

    def _suspected(self, fast: Any) -> tuple[tuple[int, ...], int]:
        """The positions of the bucket's policies that failed last time (usually none), and on
        how many consecutive requests they did."""
        if not self._suspects:
            return _NO_SUSPECTS
        remembered = self._suspects.get(id(fast))
        if remembered is None or remembered[0] is not fast:
            return _NO_SUSPECTS
        return remembered[1], remembered[2]

    @staticmethod
    def _fail_again(
        fast: Any,
        suspects: tuple[int, ...],
        request: Request,
        view: Mapping[str, Any],
        identity: Any,
    ) -> bool:
        for index in suspects:
            single = fast.singles[index] if fast.guarded else None
            if single is None or single.evaluate(request.check_request, view, identity) is None:
                return True
        return False

    def _reference(
        self,
        policies: PolicySet,
        request: Request,
        view: Mapping[str, Any],
        identity: Any,
        lean: Callable[[int], Mapping[int, LeanExpression] | None] | None = None,
    ) -> _ReferenceOutcomes:
        data = {
            **self._constants_for(policies),
            OBJECT: request.check_request,
            MCP: view,
            IDENTITY: identity,
        }
        return _ReferenceOutcomes(activation(data, shared_env(self.mode)), data, lean)

    def _lean(self, policies: PolicySet, policy: Policy) -> Mapping[int, LeanExpression]:
        """The lean programs of ``policy`` (of the set ``policies``), compiled when the reference
        path first judges it (a few ms; most policies never are), and kept with the set."""
        return self._leans.get(policies, policy, lambda: lean_expressions(policy))

    def _combine(
        self,
        policy_set: PolicySet,
        policies: tuple[Policy, ...],
        outcome: Callable[[int, Policy], tuple[Decision | None, PolicyResult]],
        dry_run: list[DryRunResult],
        evaluated: Evaluations | None,
    ) -> Decision:
        """Combine the answers of ``policies`` in order. Once a decision is made only Audit
        policies are still asked, so that the dry-run record does not depend on which policy
        happened to decide (nor on whether the fast path or the reference path ran)."""
        first_match = self.options.combine is Combine.FIRST_MATCH
        decided: Decision | None = None
        approval: Decision | None = None
        allowed: list[Decision] = []
        results: list[PolicyResult] | None = [] if evaluated is not None else None
        for index, policy in enumerate(policies):
            if decided is not None and not policy.audit:
                if results is not None:
                    results.append(_SKIPPED)
                continue
            decision, result = outcome(index, policy)
            if results is not None:
                results.append(result)
            if decision is None:
                continue
            if policy.audit:
                dry_run.append(
                    DryRunResult(
                        policy.name, decision.allowed, decision.http_status, decision.reason
                    )
                )
            elif _ends(decision, first_match):
                decided = decision
            elif decision.approval:
                # A denial still wins over it, and it wins over an allow.
                approval = approval or decision
            else:
                allowed.append(decision)
        if results:
            evaluated.append((self._names_of(policy_set, policies), tuple(results)))  # type: ignore[union-attr]
        if decided is not None:
            return decided
        if approval is not None:
            return approval
        if allowed:
            return _merge(allowed)
        if self.options.default_decision is Default.ALLOW:
            return allow(decided_by=DecidedBy.DEFAULT, reason="no policy decided; default allow")
        return deny(
            403, reason="no policy allowed the request (default deny)", decided_by=DecidedBy.DEFAULT
        )

    def _names_of(self, policy_set: PolicySet, bucket: tuple[Policy, ...]) -> tuple[str, ...]:
        return self._names.get(policy_set, bucket, lambda: tuple(p.name for p in bucket))

    def _constants_for(self, policies: PolicySet) -> dict[str, Any]:
        # Cached per set: binding every constant would cost more than most evaluations.
        cached_set, values = self._bound
        if cached_set is not policies:
            values = {name: self._constants[name] for name in policies.constants}
            self._bound = (policies, values)
        return values


def _ends(decision: Decision, first_match: bool) -> bool:
    """Whether a (non-Audit) policy's decision ends the combination: any decision under
    first-match; under deny-overrides a denial, but not a request for approval (a later denial
    still wins over it)."""
    return first_match or (not decision.allowed and not decision.approval)


def _with_dry_run(decision: Decision, dry_run: list[DryRunResult]) -> Decision:
    # dataclasses.replace costs more than the rest of a typical judgement; skip it if it is a
    # no-op (no Audit policy answered, the usual case).
    if not dry_run and not decision.dry_run:
        return decision
    return dataclasses.replace(decision, dry_run=tuple(dry_run))


def _merge(decisions: list[Decision]) -> Decision:
    """Combine allows: mutations of each, in order; later metadata keys win."""
    if len(decisions) == 1:
        return decisions[0]
    first = decisions[0]
    metadata: dict[str, Any] = {}
    for d in decisions:
        metadata.update(d.dynamic_metadata)
    return dataclasses.replace(
        first,
        headers=tuple(h for d in decisions for h in d.headers),
        headers_to_remove=tuple(h for d in decisions for h in d.headers_to_remove),
        response_headers_to_add=tuple(h for d in decisions for h in d.response_headers_to_add),
        query_parameters_to_set=tuple(q for d in decisions for q in d.query_parameters_to_set),
        query_parameters_to_remove=tuple(
            q for d in decisions for q in d.query_parameters_to_remove
        ),
        dynamic_metadata=metadata,
        message=next((d.message for d in decisions if d.message), ""),
    )


def describe_exception(exc: BaseException) -> str:
    """An exception's class and where it was raised, without its message (which may quote
    request values): what the server log says about an internal error."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    last = frames[-1]
    return f"{type(exc).__name__} at {last.filename}:{last.lineno} in {last.name}"
