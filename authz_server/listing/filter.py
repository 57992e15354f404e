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

The sets are combined as if the unknown parts each policy reads were independent of the others'.
Every outcome really possible is among the combined ones, so an entry is never hidden while a
call could use it. The converse holds when different policies (and different validations) read
different arguments: a rule set that reads one argument in two places may keep an entry no call
can use, the safe side.

Expressions that do not read the entry's name are evaluated once per list, and a policy none of
whose expressions reads it is judged once per list.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from authz_server.cel import CelEvaluationError, activation, evaluate, mapped
from authz_server.cel.analysis import VARIABLES_PREFIX
from authz_server.cel.env import OBJECT, RESPONSE_TYPE, constants
from authz_server.cel.identity import VARIABLE as IDENTITY
from authz_server.cel.identity import to_message
from authz_server.cel.mapped import VIEWS
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
_VALUE, _FAILED, _UNKNOWN = range(3)
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
        self._prepared: dict[CallShape, tuple[PreparedPolicy, ...]] = {}
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

    def _policies_for(self, shape: CallShape) -> tuple[PreparedPolicy, ...]:
        prepared = self._prepared.get(shape)
        if prepared is None:
            with self._lock:
                prepared = self._prepared.get(shape)
                if prepared is None:
                    prepared = tuple(
                        prepare(policy, shape)
                        for policy in self.policies.for_method(shape.method)
                        if not policy.audit  # a dry run never decides
                    )
                    self._prepared[shape] = prepared
        return prepared


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
        prepared: tuple[PreparedPolicy, ...],
        data: dict[str, Any],
        shape: CallShape,
        options: EngineOptions,
        entry_programs: bool = True,
    ) -> None:
        self._prepared = prepared
        self._entry_programs = entry_programs
        self._data = data
        self._shape = shape
        self._first_match = options.combine is Combine.FIRST_MATCH
        self._default_allows = options.default_decision is Default.ALLOW
        # Per policy: the values of its expressions that do not read the name; the coded values
        # of those that do, for every entry; its fates by those codes.
        self._shared: list[dict[int, Any]] = [{} for _ in prepared]
        self._codes: dict[int, str | None] = {}
        self._by_codes: list[dict[str, Fates]] = [{} for _ in prepared]

    def verdicts(self, names: Sequence[str]) -> list[bool]:
        views = [self._view(name) for name in names]
        data = {**self._data, MCP: views[0]}
        fixed: list[Fates | None] = [
            None if p.per_entry else _fates(_Scope(p, data, self._shared[i]))
            for i, p in enumerate(self._prepared)
        ]
        if self._first_match:
            return [self._first(fixed, position, views) for position in range(len(views))]
        if any(fates == _ONLY_DENY for fates in fixed):
            return [False] * len(views)  # a sure denial of every entry
        could_allow = self._default_allows or any(
            fates is not None and bool(fates & _USABLE) for fates in fixed
        )
        varying = [index for index, fates in enumerate(fixed) if fates is None]
        return [self._overridden(varying, could_allow, p, views) for p in range(len(views))]

    def _overridden(
        self, varying: list[int], could_allow: bool, position: int, views: list[dict[str, Any]]
    ) -> bool:
        """deny-overrides: no policy surely denies, and one can allow (or the default does)."""
        for index in varying:
            fates = self._entry_fates(index, position, views)
            if fates == _ONLY_DENY:
                return False
            if fates & _USABLE:
                could_allow = True
        return could_allow

    def _first(self, fixed: list[Fates | None], position: int, views: list[dict[str, Any]]) -> bool:
        """first-match: in order, a policy can allow before one surely answers otherwise."""
        for index, fates in enumerate(fixed):
            if fates is None:
                fates = self._entry_fates(index, position, views)
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

    def _entry_fates(self, index: int, position: int, views: list[dict[str, Any]]) -> Fates:
        prepared = self._prepared[index]
        every = self._entry_codes(index, views)
        if every is None:
            data = {**self._data, MCP: views[position]}
            return _fates(_Scope(prepared, data, self._shared[index]))
        width = len(prepared.entry_parts)
        codes = every[position * width : (position + 1) * width]
        fates = self._by_codes[index].get(codes)
        if fates is None:
            scope = _Scope(prepared, {**self._data, MCP: views[position]}, self._shared[index])
            scope.codes = dict(zip(map(id, prepared.entry_parts), map(int, codes), strict=True))
            fates = self._by_codes[index][codes] = _fates(scope)
        return fates

    def _entry_codes(self, index: int, views: list[dict[str, Any]]) -> str | None:
        """The coded values of the policy's per-entry expressions for every entry, one digit
        each (None: they are evaluated entry by entry)."""
        if index in self._codes:
            return self._codes[index]
        prepared = self._prepared[index]
        program = prepared.entry_program if self._entry_programs else None
        codes = None
        if program is not None:
            scope = _Scope(prepared, dict(self._data), self._shared[index])
            scope.bind(prepared.entry_needs)
            data = dict(scope.data)
            data[VIEWS] = views
            try:
                value = evaluate(program, activation(data, program.env))
            except CelEvaluationError:
                value = None
            if (
                isinstance(value, str)
                and len(value) == len(views) * len(prepared.entry_parts)
                and value.isdigit()
            ):
                codes = value
        self._codes[index] = codes
        return codes


class _Scope:
    """One policy evaluated for one entry: variables bound when an expression needs them,
    values that do not depend on the entry shared across the list's entries."""

    __slots__ = ("activations", "codes", "data", "evaluated", "prepared", "shared")

    def __init__(
        self, prepared: PreparedPolicy, data: dict[str, Any], shared: dict[int, Any]
    ) -> None:
        self.prepared = prepared
        self.data = data
        self.shared = shared
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
            result = self.shared[id(part)] = self._run(part)
        return result  # type: ignore[no-any-return]

    def _run(self, part: Part) -> tuple[int, Any]:
        if part.program is None:
            return _UNKNOWN, None
        if part.needs:
            self.bind(part.needs)
        program = part.program
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


def _fates(scope: _Scope) -> Fates:
    """Every fate the policy can have for the entry, its failurePolicy applied."""
    prepared = scope.prepared
    fates: set[int] = set()
    failed = False
    for condition in prepared.conditions:
        status, value = scope.run(condition)
        if status == _VALUE:
            if not value:
                return _ONLY_NONE  # any false condition skips the policy
        elif status == _FAILED:
            failed = True
        else:
            fates |= {_NONE, _ERROR}  # it may be false, or fail
    if failed:
        fates.add(_ERROR)
    else:
        fates |= _Rest(scope).exceptions(0)
    if _ERROR in fates:
        fates.discard(_ERROR)
        fates.add(_DENY if prepared.policy.failure_policy is FailurePolicy.FAIL else _NONE)
    return frozenset(fates)


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
        status, value = self.scope.run(conditions[position])
        if status == _VALUE:
            return self._conditions(index, position + 1) if value else self.exceptions(index + 1)
        if status == _FAILED:
            return _ONLY_ERROR
        return self._conditions(index, position + 1) | self.exceptions(index + 1) | _ONLY_ERROR

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
        if status == _VALUE:
            if value is None:
                return self.validations(index + 1)
            if isinstance(value, _Classified):
                return frozenset({value.fate})
            return frozenset({_fate_of(value, self.prepared.policy.name, index)})
        if status == _FAILED:
            return _ONLY_ERROR
        fates = {_ERROR}
        fates.update(_FATE_OF_ANSWER[a] for a in part.answers if a is not Answer.NULL)
        if Answer.NULL in part.answers:
            fates |= self.validations(index + 1)
        return frozenset(fates)


def _fate_of(response: Any, policy: str, index: int) -> int:
    """What the engine makes of a validation's value."""
    if getattr(getattr(response, "DESCRIPTOR", None), "full_name", "") != RESPONSE_TYPE:
        return _ERROR  # the engine's "type error (not a response)"
    decision = cached_decision_from_response(response, policy, index)
    if decision.allowed:
        return _ALLOW
    return _APPROVAL if decision.approval else _DENY
