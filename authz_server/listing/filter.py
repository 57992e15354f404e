"""Which entries of a list a caller may see: those some call of theirs could be allowed to use.

An entry (a tool, a prompt, a resource) stays when the caller's policies could allow a call that
uses it (``tools/call`` of the tool ...), or could ask for a person's approval of one; it is
hidden when every such call is denied, whatever the client puts in it. The call is the one the
caller would send: the list request's headers, connection and identity, the entry's name, and
unknown arguments, id, ``_meta`` and body (:mod:`authz_server.cel.partial`).

Each policy of the call method's bucket is evaluated as the engine evaluates it (match
conditions, exceptions, validations in order, ``failurePolicy``), with each expression
yielding a value, a concrete error, or "unknown" (an error where it read an unknown part). An
unknown match condition may be true, false or an error; an unknown validation may be null (the
next one is asked), an error, or any response it can build (:func:`~authz_server.cel.partial.
response_kinds`). That gives each policy the set of fates it can have for the entry, and the
engine's rule combines them: under ``deny-overrides`` an entry is kept when no policy surely
denies and some policy can allow (or ask for approval), or the default allows; under
``first-match`` when, in order, a policy can allow before one surely answers otherwise. Audit
policies never decide.

An expression whose unknown reads each sit in a bool-typed condition (``mcp.GetStringArgument(
"env", "") == "dev"``) is evaluated once for every value those conditions can take, true, false
or an error (:func:`~authz_server.cel.partial.residual`'s atoms, at most four), so what CEL makes
of them with the known values is followed exactly: ``error && (argument)`` is false or an error,
never true. A policy with such an expression that reads the entry's name is judged entry by
entry. Other unknown expressions (an argument inside a response, a read inside a comprehension's
loop, a reader of a variable whose own value is unknown) yield "unknown", as described above.

The sets are combined as if the unknown parts each policy reads were independent of the others'.
Every outcome really possible is among the combined ones, so an entry is never hidden while a
call could use it. The converse holds when different conditions read different arguments, each
can be true and false, and no variable whose value is unknown holds a failure of its own.
Otherwise an entry no call can use may be kept (the safe side): a rule set reading one argument
in two places, a condition no argument satisfies (``size(mcp.ToolCall.Arguments) < 0``), or a
variable ``v = identity.Claims.tools.size() > 0 && (argument)`` read by a validation, for a
caller without that claim.

Cost: expressions that do not read the entry's name are evaluated once per list (a condition
shared by several policies once); a policy whose such condition is false is skipped; a policy
none of whose expressions reads the name is judged once. The expressions that do read it are
evaluated for every entry in one program (:mod:`authz_server.cel.mapped`), and an entry's
verdict is computed once per distinct row of their values.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from authz_server.cel import CelEvaluationError, activation, evaluate, mapped
from authz_server.cel.analysis import VARIABLES_PREFIX
from authz_server.cel.env import OBJECT, RESPONSE_TYPE, constants
from authz_server.cel.identity import VARIABLE as IDENTITY
from authz_server.cel.identity import to_message
from authz_server.cel.mapped import NAMES, ListProgram, list_program
from authz_server.cel.mcp import VARIABLE as MCP
from authz_server.cel.partial import Answer, CallShape
from authz_server.identity.model import Identity
from authz_server.listing.kinds import ListKind
from authz_server.listing.prepare import Part, PreparedPolicy, prepare
from authz_server.mcp.kyverno import EMPTY_VIEW
from authz_server.policy.engine import Combine, Default, EngineOptions
from authz_server.policy.model import FailurePolicy, PolicySet
from authz_server.policy.response import cached_decision_from_response
from authz_server.request import Request


@dataclass(frozen=True, slots=True)
class ListingCaller:
    """Who asked for the list: the list request (headers, connection, the CheckRequest CEL
    reads as ``object``) and the identity verified for it."""

    request: Request
    identity: Identity


# What one policy can do with a call (plain ints: sets of them are built per entry, and an
# enum member's hash is a Python call).
_NONE, _ALLOW, _DENY, _APPROVAL, _ERROR = range(5)
Fates = frozenset[int]
_ONLY_NONE = frozenset({_NONE})
_ONLY_DENY = frozenset({_DENY})
_ONLY_ERROR = frozenset({_ERROR})
_USABLE = frozenset({_ALLOW, _APPROVAL})
_FATE_OF_ANSWER = {Answer.ALLOW: _ALLOW, Answer.DENY: _DENY, Answer.APPROVAL: _APPROVAL}

# What evaluating one expression gave.
_VALUE, _FAILED, _UNKNOWN, _SOME = range(4)
# Among the values of a _SOME result: the evaluation failed.
_ERR = object()
_UNBOUND = object()
_UNSET = object()


class ListFilter:
    """Judges list entries for one policy set. Thread-safe; the per-policy preparation is
    done once per call shape (:meth:`prepare` does it ahead, on the reload thread)."""

    def __init__(
        self,
        policies: PolicySet,
        options: EngineOptions | None = None,
        *,
        entry_programs: bool = True,
    ) -> None:
        self.policies = policies
        self.options = options or EngineOptions()
        # False evaluates per-entry expressions entry by entry, never with one program for
        # the whole list (differential tests, diagnosis).
        self.entry_programs = entry_programs
        values = constants()
        self._constants = {name: values[name] for name in policies.constants}
        self._prepared: dict[CallShape, _Prepared] = {}
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Prepare every call shape now rather than on the first list of each kind."""
        for kind in ListKind:
            self._policies_for(kind.call)

    def visible(
        self, caller: ListingCaller, kind: ListKind, names: Sequence[str]
    ) -> tuple[bool, ...]:
        """Per name: True to keep the entry (some call using it could be allowed, or its fate
        depends on what the call carries), False to hide it (every such call is denied)."""
        if not names:
            return ()
        if not self.policies.policies:
            return (False,) * len(names)  # no policies: every call is refused
        if kind is ListKind.RESOURCE_TEMPLATES:
            # A template without variables names one URI: judged as that resource.
            fixed = [name for name in names if "{" not in name]
            verdicts = dict(
                zip(fixed, self.visible(caller, ListKind.RESOURCES, fixed), strict=True)
            )
            if len(fixed) < len(names):
                # The URI is unknown: one verdict for every template with variables.
                unknown_uri = self._judge(caller, kind.call, [""])[0]
                verdicts.update((name, unknown_uri) for name in names if "{" in name)
            return tuple(verdicts[name] for name in names)
        return self._judge(caller, kind.call, names)

    def _judge(
        self, caller: ListingCaller, shape: CallShape, names: Sequence[str]
    ) -> tuple[bool, ...]:
        prepared = self._policies_for(shape)
        data = {
            **self._constants,
            OBJECT: _call_request(caller.request.check_request, shape.method),
            IDENTITY: to_message(caller.identity.to_cel()),
        }
        distinct = list(dict.fromkeys(names))
        judge = _ListJudge(prepared, data, shape, self.options, self.entry_programs)
        judged = judge.verdicts(distinct)
        verdicts = dict(zip(distinct, judged, strict=True))
        return tuple(verdicts[name] for name in names)

    def _policies_for(self, shape: CallShape) -> _Prepared:
        prepared = self._prepared.get(shape)
        if prepared is None:
            with self._lock:
                prepared = self._prepared.get(shape)
                if prepared is None:
                    prepared = self._prepared[shape] = _prepare(self.policies, shape)
        return prepared


@dataclass(frozen=True, slots=True)
class _Prepared:
    """The bucket of a call shape, prepared: its policies (Audit ones left out: a dry run never
    decides), and the program computing the per-entry expressions of all of them for a whole
    list (None: evaluated entry by entry), with each policy's place in its digits."""

    policies: tuple[PreparedPolicy, ...]
    program: ListProgram | None
    # Per policy: its segment's number and first digit in an entry's row, or None.
    segments: tuple[tuple[int, int] | None, ...]
    width: int


def _prepare(policies: PolicySet, shape: CallShape) -> _Prepared:
    prepared = tuple(
        prepare(policy, shape) for policy in policies.for_method(shape.method) if not policy.audit
    )
    segments: list[tuple[int, int] | None] = []
    found = []
    width = 0
    for policy in prepared:
        if policy.segment is None:
            segments.append(None)
            continue
        segments.append((len(found), width))
        found.append(policy.segment)
        width += len(policy.entry_parts)
    program = list_program(shape, found) if found else None
    return _Prepared(prepared, program, tuple(segments), width)


def _call_request(check_request: Any, method: str) -> Any:
    """The CheckRequest of the call, as far as it is known: the list request's, with the
    ``mcp-method`` header a 2026-07-28 client mirrors. What belongs to the call alone (the body,
    its length, per-call headers) is unknown to the expressions anyway."""
    if check_request is None:
        return None
    if "mcp-method" not in check_request.attributes.request.http.headers:
        return check_request
    call = type(check_request)()
    call.CopyFrom(check_request)
    http = call.attributes.request.http
    http.ClearField("body")
    http.ClearField("raw_body")
    http.headers["mcp-method"] = method
    return call


class _ListJudge:
    """The entries of one list. Policies that do not read the entry's name are judged once;
    the expressions that do are evaluated for every entry in one call per policy
    (:mod:`authz_server.cel.mapped`), and a policy's fates are computed once per distinct
    combination of their values."""

    def __init__(
        self,
        bucket: _Prepared,
        data: dict[str, Any],
        shape: CallShape,
        options: EngineOptions,
        entry_programs: bool = True,
    ) -> None:
        self._bucket = bucket
        self._prepared = prepared = bucket.policies
        self._program = bucket.program if entry_programs else None
        self._data = data
        self._shape = shape
        self._first_match = options.combine is Combine.FIRST_MATCH
        self._default_allows = options.default_decision is Default.ALLOW
        # Per policy: the values of its expressions that do not read the name; the coded values
        # of those that do, for every entry; its fates by those codes.
        self._shared: list[dict[int, Any]] = [{} for _ in prepared]
        self._codes: str | None = None
        self._names: Sequence[str] = ()
        self._common: dict[str, tuple[int, Any]] = {}
        self._by_codes: list[dict[str, Fates]] = [{} for _ in prepared]

    def verdicts(self, names: Sequence[str]) -> list[bool]:
        self._names = names
        data = {**self._data, MCP: self._view(names[0])}
        fixed: list[Fates | None] = []
        for index, prepared in enumerate(self._prepared):
            scope = _Scope(prepared, data, self._shared[index], self._common)
            if not prepared.per_entry:
                fixed.append(_fates(scope))
            elif _skipped(scope):
                fixed.append(_ONLY_NONE)  # the policy does not apply to this caller
            else:
                fixed.append(None)
        if self._first_match:
            judge = functools.partial(self._first, fixed)
        else:
            if any(fates == _ONLY_DENY for fates in fixed):
                return [False] * len(names)  # a sure denial of every entry
            could_allow = self._default_allows or any(
                fates is not None and bool(fates & _USABLE) for fates in fixed
            )
            varying = [index for index, fates in enumerate(fixed) if fates is None]
            judge = functools.partial(self._overridden, varying, could_allow)
        self._codes = codes = self._list_codes(fixed, names, data)
        unsegmented = any(
            fates is None and place is None
            for fates, place in zip(fixed, self._bucket.segments, strict=True)
        )
        if codes is None or unsegmented:
            # Entry by entry: a policy judged without codes (see prepare) has no digits.
            return [judge(position) for position in range(len(names))]
        # An entry's verdict depends only on its digits: most entries share a few rows.
        width = self._bucket.width
        by_row: dict[str, bool] = {}
        verdicts = []
        for position in range(len(names)):
            row = codes[position * width : (position + 1) * width]
            verdict = by_row.get(row)
            if verdict is None:
                verdict = by_row[row] = judge(position)
            verdicts.append(verdict)
        return verdicts

    def _overridden(self, varying: list[int], could_allow: bool, position: int) -> bool:
        """deny-overrides: no policy surely denies, and one can allow (or the default does)."""
        for index in varying:
            fates = self._entry_fates(index, position)
            if fates == _ONLY_DENY:
                return False
            if fates & _USABLE:
                could_allow = True
        return could_allow

    def _first(self, fixed: list[Fates | None], position: int) -> bool:
        """first-match: in order, a policy can allow before one surely answers otherwise."""
        for index, fates in enumerate(fixed):
            if fates is None:
                fates = self._entry_fates(index, position)
            if fates & _USABLE:
                return True
            if _NONE not in fates:
                return False
        return self._default_allows

    def _view(self, name: str) -> dict[str, Any]:
        view = dict(EMPTY_VIEW)
        view["Method"] = self._shape.method
        view[self._shape.typed] = (
            {self._shape.name_field: name} if self._shape.name_field is not None else {}
        )
        return view

    def _entry_fates(self, index: int, position: int) -> Fates:
        prepared = self._prepared[index]
        place = self._bucket.segments[index]
        if self._codes is None or place is None:
            data = {**self._data, MCP: self._view(self._names[position])}
            return _fates(_Scope(prepared, data, self._shared[index], self._common))
        start = position * self._bucket.width + place[1]
        codes = self._codes[start : start + len(prepared.entry_parts)]
        fates = self._by_codes[index].get(codes)
        if fates is None:
            data = {**self._data, MCP: self._view(self._names[position])}
            scope = _Scope(prepared, data, self._shared[index], self._common)
            scope.codes = dict(zip(map(id, prepared.entry_parts), map(int, codes), strict=True))
            fates = self._by_codes[index][codes] = _fates(scope)
        return fates

    def _list_codes(
        self, fixed: list[Fates | None], names: Sequence[str], first: dict[str, Any]
    ) -> str | None:
        """The coded values of the per-entry expressions of the policies still to judge
        (``fixed`` None), for every entry, in one evaluation; None: entry by entry."""
        program = self._program
        if program is None or all(fates is not None for fates in fixed):
            return None
        data = dict(self._data)
        data[NAMES] = names
        for switch in program.switches:
            data[switch] = False
        for index, place in enumerate(self._bucket.segments):
            if place is None or fixed[index] is not None:
                continue
            number = place[0]
            data[program.switches[number]] = True
            prepared = self._prepared[index]
            scope = _Scope(prepared, first, self._shared[index], self._common)
            scope.bind(prepared.entry_needs)
            for name, shared in program.shared_names[number].items():
                value = scope.data.get(VARIABLES_PREFIX + name, _UNSET)
                if value is not _UNSET:
                    data[shared] = value
        try:
            value = evaluate(program.program, activation(data, program.program.env))
        except CelEvaluationError:
            return None
        if (
            not isinstance(value, str)
            or len(value) != len(names) * self._bucket.width
            or not value.isdigit()
        ):
            return None
        return value


class _Scope:
    """One policy evaluated for one entry: variables bound when an expression needs them,
    values that do not depend on the entry shared across the list's entries."""

    __slots__ = ("activations", "codes", "common", "data", "evaluated", "prepared", "shared")

    def __init__(
        self,
        prepared: PreparedPolicy,
        data: dict[str, Any],
        shared: dict[int, Any],
        common: dict[str, tuple[int, Any]] | None = None,
    ) -> None:
        self.prepared = prepared
        self.data = data
        self.shared = shared
        # Values of conditions that read no variable and not the name, by source, shared by
        # the list's policies (``mcp.Method == "tools/call"`` opens most of them).
        self.common = common if common is not None else {}
        self.activations: dict[int, Any] = {}
        self.evaluated: set[int] = set()
        # The per-entry expressions' coded values for this entry, when computed for the list.
        self.codes: dict[int, int] | None = None

    def run(self, part: Part) -> tuple[int, Any]:
        """(_VALUE, value), (_FAILED, None) for an error that does not depend on the call's
        unknown parts, or (_UNKNOWN, None). A validation's value may come as its Fate."""
        if part.per_entry:
            if self.codes is not None:
                return _decode(part, self.codes[id(part)])
            return self._run(part)
        result = self.shared.get(id(part))
        if result is None:
            if part.condition and not part.needs and part.program is not None:
                result = self.common.get(part.program.source)
                if result is None:
                    result = self.common[part.program.source] = self._run(part)
            else:
                result = self._run(part)
            self.shared[id(part)] = result
        return result  # type: ignore[no-any-return]

    def _run(self, part: Part) -> tuple[int, Any]:
        if part.program is None:
            return _UNKNOWN, None
        if part.needs:
            self.bind(part.needs)
        program = part.program
        if part.atoms:
            return _SOME, _enumerate(program, part.atoms, self.data)
        act = self.activations.get(id(program.env))
        if act is None:
            act = self.activations[id(program.env)] = activation(self.data, program.env)
        try:
            return _VALUE, evaluate(program, act)
        except CelEvaluationError:
            return (_UNKNOWN if part.unknown else _FAILED), None

    def bind(self, needs: tuple[int, ...]) -> None:
        """Bind the variables ``needs`` (indexes, in declaration order) in :attr:`data`."""
        missing = [index for index in needs if index not in self.evaluated]
        if not missing:
            return
        data = self.data = dict(self.data)
        self.activations = {}
        variables = self.prepared.policy.variables
        preset = self.prepared.policy.preset
        # ``needs`` lists every variable needed, transitively, in declaration order.
        for index in missing:
            self.evaluated.add(index)
            if index in preset:
                value = preset[index]
            else:
                part = self.prepared.variables[index]
                if part.per_entry:
                    value = _variable(part, data)
                else:
                    value = self.shared.get(id(part), _UNSET)
                    if value is _UNSET:
                        value = self.shared[id(part)] = _variable(part, data)
            # One that failed is left unbound, as the engine does: reading it fails.
            if value is not _UNBOUND:
                data[VARIABLES_PREFIX + variables[index].name] = value


_CONDITION_CODES = {
    mapped.CONDITION_TRUE: (_VALUE, True),
    mapped.CONDITION_FALSE: (_VALUE, False),
}


@dataclass(frozen=True, slots=True)
class _Classified:
    """A validation's value as the entry program coded it: a response's fate."""

    fate: int


_VALUE_CODES = {
    mapped.NULL: (_VALUE, None),
    mapped.ALLOWS: (_VALUE, _Classified(_ALLOW)),
    mapped.DENIES: (_VALUE, _Classified(_DENY)),
    mapped.APPROVAL: (_VALUE, _Classified(_APPROVAL)),
}


def _enumerate(program: Any, atoms: tuple[str, ...], data: Mapping[str, Any]) -> tuple[Any, ...]:
    """Every value the expression takes over its atoms' values (true, false, or unbound: an
    error), :data:`_ERR` for an error. Bools, null and _ERR appear once each; a response may
    appear more than once (each evaluation builds its own)."""
    values: list[Any] = []
    for choice in itertools.product((True, False, None), repeat=len(atoms)):
        bound = dict(data)
        bound.update((n, v) for n, v in zip(atoms, choice, strict=True) if v is not None)
        try:
            value = evaluate(program, activation(bound, program.env))
        except CelEvaluationError:
            value = _ERR
        if not any(value is seen for seen in values):
            values.append(value)
    return tuple(values)


def _decode(part: Part, code: int) -> tuple[int, Any]:
    result = (_CONDITION_CODES if part.condition else _VALUE_CODES).get(code)
    if result is not None:
        return result
    return (_UNKNOWN if part.unknown else _FAILED), None


def _variable(part: Part, data: Mapping[str, Any]) -> Any:
    """A variable's value, or _UNBOUND when it fails (or is always unknown)."""
    if part.program is None:
        return _UNBOUND
    try:
        return evaluate(part.program, activation(data, part.program.env))
    except CelEvaluationError:
        return _UNBOUND


def _skipped(scope: _Scope) -> bool:
    """Whether a match condition that does not read the entry's name is false: the policy
    has no answer for any entry (its other expressions need not be evaluated)."""
    for condition in scope.prepared.conditions:
        if not condition.per_entry and scope.run(condition) == (_VALUE, False):
            return True
    return False


def _fates(scope: _Scope) -> Fates:
    """Every fate the policy can have for the entry, its failurePolicy applied.

    The engine skips the policy when a match condition is false, fails it when one fails and
    none is false, and goes on when all hold; with each condition's possible outcomes taken as
    independent of the others', each of the three is possible when some combination gives it.
    """
    prepared = scope.prepared
    outcomes = [_condition_outcomes(scope.run(condition)) for condition in prepared.conditions]
    if any(o == _ONLY_FALSE for o in outcomes):
        return _ONLY_NONE  # any false condition skips the policy
    fates: set[int] = set()
    if any(False in o for o in outcomes):
        fates.add(_NONE)
    if any(_ERR in o for o in outcomes) and all(o - _ONLY_FALSE for o in outcomes):
        fates.add(_ERROR)
    if all(True in o for o in outcomes):
        fates |= _Rest(scope).exceptions(0)
    if _ERROR in fates:
        fates.discard(_ERROR)
        fates.add(_DENY if prepared.policy.failure_policy is FailurePolicy.FAIL else _NONE)
    return frozenset(fates)


_ONLY_FALSE = frozenset({False})
_ANY_OUTCOME = frozenset({True, False, _ERR})


def _condition_outcomes(result: tuple[int, Any]) -> frozenset[Any]:
    """What a condition can be: True, False, :data:`_ERR` (a value that is not a bool fails)."""
    status, value = result
    if status == _VALUE:
        return frozenset({value}) if value is True or value is False else frozenset({_ERR})
    if status == _FAILED:
        return frozenset({_ERR})
    if status == _SOME:
        return frozenset(v if v is True or v is False else _ERR for v in value)
    return _ANY_OUTCOME


class _Rest:
    """The fates from the exceptions on, for a policy whose conditions may all hold: each
    unknown value branches, and each branch is followed once."""

    def __init__(self, scope: _Scope) -> None:
        self.scope = scope
        self.prepared = scope.prepared
        self._exceptions: dict[int, Fates] = {}
        self._validations: dict[int, Fates] = {}

    def exceptions(self, index: int) -> Fates:
        """The fates when the exceptions before ``index`` did not apply."""
        if index == len(self.prepared.exceptions):
            return self.validations(0)
        known = self._exceptions.get(index)
        if known is None:
            known = self._exceptions[index] = self._conditions(index, 0)
        return known

    def _conditions(self, index: int, position: int) -> Fates:
        conditions = self.prepared.exceptions[index]
        if position == len(conditions):
            return _ONLY_NONE  # every condition holds: the exception applies
        outcomes = _condition_outcomes(self.scope.run(conditions[position]))
        fates: Fates = frozenset()
        if True in outcomes:
            fates |= self._conditions(index, position + 1)
        if False in outcomes:
            fates |= self.exceptions(index + 1)
        if _ERR in outcomes:
            fates |= _ONLY_ERROR
        return fates

    def validations(self, index: int) -> Fates:
        """The fates when the validations before ``index`` answered null."""
        if index == len(self.prepared.validations):
            return _ONLY_NONE
        known = self._validations.get(index)
        if known is None:
            known = self._validations[index] = self._validation(index)
        return known

    def _validation(self, index: int) -> Fates:
        part = self.prepared.validations[index]
        status, value = self.scope.run(part)
        if status == _SOME:
            fates: set[int] = set()
            for one in value:
                fates |= self._value(one, index)
            return frozenset(fates)
        if status == _VALUE:
            return self._value(value, index)
        if status == _FAILED:
            return _ONLY_ERROR
        unknown = {_ERROR}
        unknown.update(_FATE_OF_ANSWER[a] for a in part.answers if a is not Answer.NULL)
        if Answer.NULL in part.answers:
            unknown |= self.validations(index + 1)
        return frozenset(unknown)

    def _value(self, value: Any, index: int) -> Fates:
        """The fates of validation ``index`` evaluating to ``value``."""
        if value is _ERR:
            return _ONLY_ERROR
        if value is None:
            return self.validations(index + 1)
        if isinstance(value, _Classified):
            return frozenset({value.fate})
        return frozenset({_fate_of(value, self.prepared.policy.name, index)})


def _fate_of(response: Any, policy: str, index: int) -> int:
    """What the engine makes of a validation's value."""
    if getattr(getattr(response, "DESCRIPTOR", None), "full_name", "") != RESPONSE_TYPE:
        return _ERROR  # the engine's "type error (not a response)"
    decision = cached_decision_from_response(response, policy, index)
    if decision.allowed:
        return _ALLOW
    return _APPROVAL if decision.approval else _DENY
