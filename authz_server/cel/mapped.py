"""The expressions of a list's policies that read an entry's name, for every entry in one call.

List filtering (:mod:`authz_server.listing`) evaluates those expressions once per entry; a call
into the CEL runtime costs microseconds of its own, and converting a Python dict into a CEL map
several more, so a list of a hundred tools would cost thousands of microseconds. Here they are
put in one program mapping over the list's names::

    authz_names.map(authz_n, cel.bind(mcp, {"Method": "tools/call", ..., "ToolCall": {"Name":
        authz_n}}, (authz_on0 ? cel.bind(@b0, <variable>, code(<e0>) + code(<e1>)) : "00")
        + (authz_on1 ? ... : "0") ...))

``mcp`` is bound to the entry's view built in CEL, so the expressions' own ``mcp`` reads it.
Each policy is a segment behind a switch (off: its policy does not apply to this caller, and its
digits are placeholders). The variables that read the name are bound per entry with
``cel.bind`` (an erring one holds an error, which fails exactly the expressions that read it, as
the engine's unbound variable does); the others are bound once in the activation, under names
unique to their policy. ``code`` turns a value into a digit without letting an error escape
(CEL's internal ``@not_strictly_false`` is true for an error), so one entry's error never fails
the whole list; the digits of an entry, then of the next, make one string:

* a condition: 1 true, 0 false, 2 an error;
* a validation: 0 null, 1 a response that allows, 2 one that denies, 3 one that asks for
  approval (``status.code`` 0, other, 10, as the engine reads it), 4 an error or a value that is
  not a response.

The wrapper is compiled from source (so its macros and types are the checker's), then the
expressions' checked trees are spliced into its placeholders with their node ids shifted, and
their reads of policy variables renamed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from cel_expr_python import cel

from authz_server.cel import ast, mcp
from authz_server.cel.analysis import VARIABLES_PREFIX
from authz_server.cel.env import Program, compile_expression, env_with
from authz_server.cel.errors import CelCompileError
from authz_server.cel.fold import string_literal
from authz_server.cel.partial import NO_LIMITS, UNKNOWN, CallShape

NAMES = "authz_names"
CONDITION_TRUE, CONDITION_FALSE, CONDITION_ERROR = 1, 0, 2
NULL, ALLOWS, DENIES, APPROVAL, ERROR = 0, 1, 2, 3, 4

_NSF = "authz_nsf"
_NSF_OVERLOAD = "authz_nsf_bool"
_PLACEHOLDER = "authz_p"
_BOUND = "authz_b"


@dataclass(frozen=True, slots=True)
class Segment:
    """One policy's part of a list program: the variables to bind per entry, in declaration
    order (name, program), the other variables its expressions may read (bound once per list,
    under :meth:`ListProgram.shared_name`), and the expressions to code (program, whether it
    is a condition). A program of None is unknown: an error."""

    bound: tuple[tuple[str, Program | None], ...]
    shared: tuple[str, ...]
    expressions: tuple[tuple[Program | None, bool], ...]


@dataclass(frozen=True, slots=True)
class ListProgram:
    """The program and how to call it: bind :data:`NAMES`, each segment's switch (False skips
    it: its digits are then meaningless) and its shared variables, under the names given."""

    program: Program
    widths: tuple[int, ...]
    switches: tuple[str, ...]
    shared_names: tuple[Mapping[str, str], ...]


def _never(value: bool) -> bool:
    raise RuntimeError("a placeholder function was called")  # renamed before planning


def _condition_code(x: str) -> str:
    return (
        f"cel.bind(authz_r, {x}, !{_NSF}(!authz_r) ? {CONDITION_TRUE} : "
        f"(!{_NSF}(authz_r) ? {CONDITION_FALSE} : {CONDITION_ERROR}))"
    )


def _value_code(x: str) -> str:
    return (
        f"cel.bind(authz_r, {x}, !{_NSF}(!(authz_r == null)) ? {NULL} : "
        f"(!{_NSF}(!(type(authz_r) == envoy.service.auth.v3.CheckResponse)) ? "
        f"(authz_r.status.code == 0 ? {ALLOWS} : (authz_r.status.code == 10 ? {APPROVAL} "
        f": {DENIES})) : {ERROR}))"
    )


def _view(shape: CallShape) -> str:
    """A map literal equal to the view list filtering binds as ``mcp`` for an entry named
    ``authz_n`` (:data:`authz_server.mcp.kyverno.EMPTY_VIEW`, the method, the typed field
    holding the name alone: the rest of it is unknown and never read)."""
    fields = {key: "null" for key in mcp.empty_view()}
    fields["Method"] = string_literal(shape.method)
    fields[shape.typed] = f"{{{string_literal(shape.name_field or '')}: authz_n}}"
    return "{" + ", ".join(f"{string_literal(k)}: {v}" for k, v in fields.items()) + "}"


def list_program(shape: CallShape, segments: Sequence[Segment]) -> ListProgram | None:
    """One program coding every segment's expressions for every entry of a list of calls of
    ``shape`` (see the module docstring); None when it cannot be built (the caller then
    evaluates entry by entry)."""
    if shape.name_field is None:
        return None  # nothing reads a name that is not known
    placeholders: dict[str, Program | None] = {}
    renames: dict[str, dict[str, str]] = {}
    declared: dict[str, Any] = {NAMES: cel.Type.List(cel.Type.STRING)}
    parts, switches, shared_names = [], [], []
    bound_count = 0
    for number, segment in enumerate(segments):
        names = {
            f"{VARIABLES_PREFIX}{n}": f"authz_s{number}_{i}" for i, n in enumerate(segment.shared)
        }
        declared.update(dict.fromkeys(names.values(), cel.Type.DYN))
        shared_names.append(
            MappingProxyType({n[len(VARIABLES_PREFIX) :]: g for n, g in names.items()})
        )
        local = dict(names)
        for name, _ in segment.bound:
            local[f"{VARIABLES_PREFIX}{name}"] = f"@b{bound_count}"
            bound_count += 1
        codes = []
        for program, condition in segment.expressions:
            placeholder = f"{_PLACEHOLDER}{len(placeholders)}"
            placeholders[placeholder] = program
            renames[placeholder] = local
            codes.append(f"string({(_condition_code if condition else _value_code)(placeholder)})")
        body = " + ".join(codes)
        first = bound_count - len(segment.bound)
        for offset in reversed(range(len(segment.bound))):
            placeholder = f"{_PLACEHOLDER}{len(placeholders)}"
            placeholders[placeholder] = segment.bound[offset][1]
            renames[placeholder] = local
            body = f"cel.bind({_BOUND}{first + offset}, {placeholder}, {body})"
        switch = f"authz_on{number}"
        declared[switch] = cel.Type.BOOL
        switches.append(switch)
        parts.append(f'({switch} ? ({body}) : "{"0" * len(segment.expressions)}")')
    declared.update(dict.fromkeys(placeholders, cel.Type.DYN))
    nsf = cel.FunctionDecl(
        _NSF, [cel.Overload(_NSF_OVERLOAD, cel.Type.BOOL, [cel.Type.BOOL], impl=_never)]
    )
    env = env_with(declared, [nsf])
    source = f"{NAMES}.map(authz_n, cel.bind(mcp, {_view(shape)}, {' + '.join(parts)}))"
    try:
        wrapper = compile_expression(env, source, NO_LIMITS)
    except CelCompileError:
        return None
    serialized = wrapper.expression.serialize()
    checked = ast.load(serialized)
    if not _concatenate(checked):
        return None
    _rename_wrapper(checked, bound_count)
    try:
        _splice(checked, placeholders, renames)
        expression = env.deserialize(ast.dump(checked, serialized))
    except (RuntimeError, ValueError, TypeError):
        return None
    programs = [p for p in placeholders.values() if p is not None]
    program = dataclasses.replace(
        wrapper,
        expression=expression,
        constants=frozenset().union(*(p.constants for p in programs)),
    )
    return ListProgram(
        program,
        tuple(len(segment.expressions) for segment in segments),
        tuple(switches),
        tuple(shared_names),
    )


def _concatenate(checked: Any) -> bool:
    """Make the ``map`` at the root append its elements to a string instead of a list.

    The macro appends with ``@result + [element]``, which copies the list at every step
    (quadratic in the entries: 2.5 ms for 200 of them); strings are copied too, but as bytes,
    and the result is one digit per expression per entry. False when the root is not the
    expected expansion."""
    root = checked.expr
    if ast.kind_of(root) != "comprehension_expr":
        return False
    c = root.comprehension_expr
    step = c.loop_step
    if (
        ast.kind_of(c.accu_init) != "list_expr"
        or c.accu_init.list_expr.elements
        or ast.kind_of(step) != "call_expr"
        or step.call_expr.function != "_+_"
        or len(step.call_expr.args) != 2
        or ast.kind_of(step.call_expr.args[1]) != "list_expr"
        or len(step.call_expr.args[1].list_expr.elements) != 1
    ):
        return False
    init_id = c.accu_init.id
    c.accu_init.Clear()
    c.accu_init.id = init_id
    c.accu_init.const_expr.string_value = ""
    element = step.call_expr.args[1].list_expr.elements[0]
    appended = type(element)()
    appended.CopyFrom(element)
    step.call_expr.args[1].CopyFrom(appended)
    for entry in checked.reference_map:
        if entry.key == step.id:
            del entry.value.overload_id[:]
            entry.value.overload_id.append("add_string")
    return True


def _rename_wrapper(checked: Any, bound: int) -> None:
    """``authz_nsf`` becomes CEL's ``@not_strictly_false``; the binding names become names no
    policy text can hold (``@b0`` ...), so no comprehension of a policy can capture them."""
    names = {f"{_BOUND}{index}": f"@b{index}" for index in range(bound)}
    for node in ast.walk(checked.expr):
        kind = ast.kind_of(node)
        if kind == "call_expr" and node.call_expr.function == _NSF:
            node.call_expr.function = "@not_strictly_false"
        elif kind == "ident_expr" and node.ident_expr.name in names:
            node.ident_expr.name = names[node.ident_expr.name]
        elif kind == "comprehension_expr":
            c = node.comprehension_expr
            c.accu_var = names.get(c.accu_var, c.accu_var)
    for entry in checked.reference_map:
        if _NSF_OVERLOAD in entry.value.overload_id:
            del entry.value.overload_id[:]
            entry.value.overload_id.append("not_strictly_false")
            entry.value.name = "@not_strictly_false"
        elif entry.value.name in names:
            entry.value.name = names[entry.value.name]


def _splice(
    checked: Any,
    splices: Mapping[str, Program | None],
    renames: Mapping[str, Mapping[str, str]],
) -> None:
    """Put each program's tree where the ident it names stands in ``checked``, node ids
    shifted past every id already used; reads of the per-entry variables renamed."""
    offset = max(node.id for node in ast.walk(checked.expr)) + 1
    targets = [
        node
        for node in ast.walk(checked.expr)
        if ast.kind_of(node) == "ident_expr" and node.ident_expr.name in splices
    ]
    for target in targets:
        program = splices[target.ident_expr.name]
        rename = renames[target.ident_expr.name]
        if program is None:
            target_id = target.id
            target.Clear()
            target.id = target_id
            target.ident_expr.name = UNKNOWN
            continue
        tree = ast.load(program.expression.serialize())
        references = {e.key: e.value.name for e in tree.reference_map}
        highest = 0
        for node in ast.walk(tree.expr):
            if ast.kind_of(node) == "ident_expr":
                name = references.get(node.id, node.ident_expr.name)
                if name in rename:
                    node.ident_expr.name = rename[name]
            highest = max(highest, node.id)
            node.id += offset
        for entry in tree.reference_map:
            added = checked.reference_map.add()
            added.CopyFrom(entry)
            added.key += offset
            if entry.value.name in rename:
                added.value.name = rename[entry.value.name]
        for entry in tree.type_map:
            added = checked.type_map.add()
            added.CopyFrom(entry)
            added.key += offset
        target.CopyFrom(tree.expr)
        offset += highest + 1
