"""A policy as list filtering evaluates it: every expression with the parts of a call its
client chooses made unknown (:mod:`authz_server.cel.partial`), and what each one depends on.

Built once per policy set and call shape, then shared by every list judged with that set.
"""

from __future__ import annotations

from dataclasses import dataclass

from authz_server.cel import Program
from authz_server.cel.mapped import Segment
from authz_server.cel.partial import ANY_ANSWER, Answer, CallShape, residual, response_kinds
from authz_server.policy.model import Expression, Policy


@dataclass(frozen=True, slots=True)
class Part:
    """One expression of a policy.

    ``program`` is None when its value is always unknown. ``unknown``: it may read what the
    call's client chooses, directly or through variables, so an error it yields says nothing.
    ``per_entry``: it reads the entry's name (directly or through variables), else its value
    is the same for every entry of a list. ``answers``: what it can evaluate to (validations
    and variables), when its value is unknown.
    """

    program: Program | None
    field: str
    needs: tuple[int, ...]
    unknown: bool
    per_entry: bool
    answers: frozenset[Answer] = ANY_ANSWER
    condition: bool = False
    # Names standing for its unknown conditions (Residual.atoms), when its values can be
    # enumerated: then no variable it reads is unknown.
    atoms: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PreparedPolicy:
    policy: Policy
    variables: tuple[Part, ...]
    conditions: tuple[Part, ...]
    exceptions: tuple[tuple[Part, ...], ...]
    validations: tuple[Part, ...]
    # Any part reads the entry's name: the policy is judged per entry, else once per list.
    per_entry: bool
    # The parts that read the name, as a segment of the program computing them for every
    # entry of a list at once (:mod:`authz_server.cel.mapped`), which reads the variables
    # ``entry_needs`` bound once per list.
    entry_parts: tuple[Part, ...] = ()
    segment: Segment | None = None
    entry_needs: tuple[int, ...] = ()


def prepare(policy: Policy, shape: CallShape) -> PreparedPolicy:
    variables: list[Part] = []
    kinds: dict[str, frozenset[Answer]] = {}
    for index, variable in enumerate(policy.variables):
        if index in policy.preset:
            # Computed at load: reads nothing of the request.
            variables.append(Part(variable.program, variable.field, (), False, False))
        else:
            variables.append(_part(variable, shape, variables))
        kinds[variable.name] = response_kinds(variable.program, kinds)
    done = tuple(variables)
    conditions = tuple(_part(c, shape, done, condition=True) for c in policy.match_conditions)
    exceptions = tuple(
        tuple(_part(c, shape, done, condition=True) for c in exception.conditions)
        for exception in policy.exceptions
    )
    validations = tuple(_part(v, shape, done, kinds) for v in policy.validations)
    every = (*conditions, *(c for e in exceptions for c in e), *validations)
    entry_parts = tuple(part for part in every if part.per_entry)
    needed = sorted({index for part in entry_parts for index in part.needs})
    shared = tuple(index for index in needed if not done[index].per_entry)
    segment = Segment(
        tuple((policy.variables[i].name, done[i].program) for i in needed if done[i].per_entry),
        tuple(policy.variables[i].name for i in shared),
        tuple((part.program, part.condition) for part in entry_parts),
    )
    return PreparedPolicy(
        policy,
        done,
        conditions,
        exceptions,
        validations,
        bool(entry_parts),
        entry_parts,
        # A part whose values are enumerated over its atoms is judged entry by entry: the one
        # program for the list codes one value per expression and entry.
        segment if entry_parts and not any(part.atoms for part in entry_parts) else None,
        shared,
    )


def _part(
    expression: Expression,
    shape: CallShape,
    variables: list[Part] | tuple[Part, ...],
    kinds: dict[str, frozenset[Answer]] | None = None,
    *,
    condition: bool = False,
) -> Part:
    rest = residual(expression.program, shape)
    needed = [variables[i] for i in expression.needs]
    return Part(
        rest.program,
        expression.field,
        expression.needs,
        rest.unknown or any(v.unknown for v in needed),
        rest.reads_name or any(v.per_entry for v in needed),
        response_kinds(expression.program, kinds) if kinds is not None else ANY_ANSWER,
        condition,
        () if any(v.unknown for v in needed) else rest.atoms,
    )
