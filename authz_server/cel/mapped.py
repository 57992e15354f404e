"""Several expressions of one policy evaluated for every entry of a list in one CEL call.

List filtering (:mod:`authz_server.listing`) evaluates the expressions that read an entry's name
once per entry; a call into the CEL runtime has a fixed cost of microseconds, so a list of a
hundred tools would cost hundreds of calls. Here a policy's per-entry expressions are put in
one program that maps over the list's views::

    @views.map(mcp, cel.bind(@b0, <variable 0>, ... [code(<expression 0>), code(<expression 1>)]))

``mcp`` is the comprehension variable, so the expressions' own ``mcp`` reads the entry's view;
the variables that read the name are bound per entry with ``cel.bind`` (an erring one holds an
error, which fails exactly the expressions that read it, as the engine's unbound variable does),
the others come from the activation. ``code`` turns a value into a small int without letting an
error escape (CEL's internal ``@not_strictly_false`` is true for an error), so one entry's error
never fails the whole list (each value becomes one digit of a string, the entries' digits
in order):

* a condition: 1 true, 0 false, 2 an error;
* a validation: 0 null, 1 a response that allows, 2 one that denies, 3 one that asks for
  approval (``status.code`` 0, other, 10, as the engine reads it), 4 an error or a value that is
  not a response.

The wrapper is compiled from source (so its macros and types are the checker's), then the
expressions' checked trees are spliced into its placeholders with their node ids shifted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from cel_expr_python import cel

from authz_server.cel import ast
from authz_server.cel.analysis import VARIABLES_PREFIX
from authz_server.cel.env import Program, compile_expression, env_with
from authz_server.cel.errors import CelCompileError
from authz_server.cel.partial import NO_LIMITS, UNKNOWN

VIEWS = "authz_views"
CONDITION_TRUE, CONDITION_FALSE, CONDITION_ERROR = 1, 0, 2
NULL, ALLOWS, DENIES, APPROVAL, ERROR = 0, 1, 2, 3, 4

_NSF = "authz_nsf"
_NSF_OVERLOAD = "authz_nsf_bool"
_PLACEHOLDER = "authz_p"
_EXPRESSION = "authz_e"
_BOUND = "authz_b"


def _never(value: bool) -> bool:
    raise RuntimeError("a placeholder function was called")  # renamed before planning


def _env(variables: Mapping[str, Any], placeholders: int) -> Any:
    declared = {}
    for name, kind in variables.items():
        declared[VARIABLES_PREFIX + name] = kind
    declared[VIEWS] = cel.Type.List(cel.Type.Map(cel.Type.STRING, cel.Type.DYN))
    for index in range(placeholders):
        declared[f"{_PLACEHOLDER}{index}"] = cel.Type.DYN
        declared[f"{_EXPRESSION}{index}"] = cel.Type.DYN
    nsf = cel.FunctionDecl(
        _NSF, [cel.Overload(_NSF_OVERLOAD, cel.Type.BOOL, [cel.Type.BOOL], impl=_never)]
    )
    return env_with(declared, [nsf])


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


def entry_program(
    variables: Mapping[str, Any],
    bound: Sequence[tuple[str, Program | None]],
    expressions: Sequence[tuple[Program | None, bool]],
) -> Program | None:
    """The program for one policy: ``variables`` are its variables' types (name -> CEL type),
    ``bound`` the variables to bind per entry, in declaration order (name, program), and
    ``expressions`` the expressions to code (program, whether it is a condition). A program of
    None is unknown (an error). None when the program cannot be built (the caller then
    evaluates entry by entry)."""
    body = " + ".join(
        f"string({(_condition_code if condition else _value_code)(f'{_EXPRESSION}{index}')})"
        for index, (_, condition) in enumerate(expressions)
    )
    for index in reversed(range(len(bound))):
        body = f"cel.bind({_BOUND}{index}, {_PLACEHOLDER}{index}, {body})"
    source = f"{VIEWS}.map(mcp, {body})"
    env = _env(variables, max(len(bound), len(expressions)))
    try:
        wrapper = compile_expression(env, source, NO_LIMITS)
    except CelCompileError:
        return None
    serialized = wrapper.expression.serialize()
    checked = ast.load(serialized)
    if not _concatenate(checked):
        return None
    renames = {f"{VARIABLES_PREFIX}{name}": f"@b{index}" for index, (name, _) in enumerate(bound)}
    _rename_wrapper(checked, len(bound))
    splices = {f"{_PLACEHOLDER}{i}": program for i, (_, program) in enumerate(bound)}
    splices.update({f"{_EXPRESSION}{i}": program for i, (program, _) in enumerate(expressions)})
    try:
        _splice(checked, splices, renames)
        expression = env.deserialize(ast.dump(checked, serialized))
    except (RuntimeError, ValueError, TypeError):
        return None
    return dataclasses.replace(
        wrapper,
        expression=expression,
        constants=frozenset().union(
            *(p.constants for _, p in bound if p is not None),
            *(p.constants for p, _ in expressions if p is not None),
        ),
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
    checked: Any, splices: Mapping[str, Program | None], renames: Mapping[str, str]
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
                if name in renames:
                    node.ident_expr.name = renames[name]
            highest = max(highest, node.id)
            node.id += offset
        for entry in tree.reference_map:
            added = checked.reference_map.add()
            added.CopyFrom(entry)
            added.key += offset
            if entry.value.name in renames:
                added.value.name = renames[entry.value.name]
        for entry in tree.type_map:
            added = checked.type_map.add()
            added.CopyFrom(entry)
            added.key += offset
        target.CopyFrom(tree.expr)
        offset += highest + 1
