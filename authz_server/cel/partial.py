"""Evaluate a policy expression for a call of which only part is known (list filtering).

A ``tools/list`` entry is hidden when every ``tools/call`` of that tool is denied, whatever the
client puts in the call. The caller (headers, identity, connection) and the tool's name are
known; what the client chooses per call (the arguments, the JSON-RPC id, ``_meta``, the body,
its length, the per-call headers) is not. cel-expr-python has no partial evaluation (its
activations take no unknown patterns), so the checked tree is rewritten instead: every
sub-expression that reads an unknown part is replaced by a reference to :data:`UNKNOWN`, a name
no activation binds, so evaluating it is an error exactly there.

Why a value is then exact: CEL's ``&&`` and ``||`` are commutative over errors (``false && e``
is false, ``true || e`` true, whichever side errs), the conditional evaluates only the branch
its condition picks, the ``all``/``exists`` macros are built on those two, and every other
operation (functions, indexing, list and map construction) is strict: an error argument makes
an error. By induction over the tree, an expression that yields a value with its unknown parts
erring yields that same value for every value of those parts (these are CEL's own rules for
unknowns, which the runtime applies to errors alike). An error result says nothing: the value is
unknown, possibly an error.

:func:`response_kinds` bounds what an expression whose value is unknown can answer: which
``envoy`` builders (or ``approval.Require``) and nulls it can evaluate to, read from the
overloads the type checker chose.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from authz_server.cel import ast, mcp
from authz_server.cel.analysis import VARIABLES_PREFIX, CostLimits
from authz_server.cel.env import OBJECT, Program, compile_expression
from authz_server.cel.errors import CelCompileError
from authz_server.cel.fold import fold_builders

UNKNOWN = "@unknown"
ATOM = "@atom"
# At most this many atoms per expression: each adds a factor of three evaluations.
MAX_ATOMS = 4
# A bool-typed node in the checked tree's type map (Type.primitive = BOOL, serialized).
_BOOL_TYPE = b"\x18\x01"

# Fields of object.attributes.request.http that belong to one request, not to the caller.
_HTTP_PER_CALL = frozenset({"body", "raw_body", "size", "header_map", "id"})
# Headers a call carries of its own (its body's length and encoding, the mirrored name and
# arguments of MCP 2026-07-28, a DPoP proof is single use, tracing ids).
_HEADERS_PER_CALL = frozenset(
    {
        "content-length",
        "content-encoding",
        "mcp-name",
        "dpop",
        "x-request-id",
        "traceparent",
        "tracestate",
        "x-envoy-auth-partial-body",
    }
)
_HEADER_PREFIXES_PER_CALL = ("mcp-param-",)
_HTTP = ("attributes", "request", "http")

# The fragments were cost-checked at load; folding adds no iteration.
NO_LIMITS = CostLimits(max_unbounded_nesting=1 << 30, max_bounded_iterations=1 << 62)


@dataclass(frozen=True, slots=True)
class CallShape:
    """What is known of the call a list entry stands for: its method, the view's field for it
    (``ToolCall``) and the field holding the entry's name (``Name``, ``URI``), or None when the
    name is not known either (a resource template: the URI depends on its variables)."""

    method: str
    typed: str
    name_field: str | None


@dataclass(frozen=True, slots=True)
class Residual:
    """An expression with the unknown parts of a call replaced (see the module docstring).

    ``program`` is None when the rewritten tree could not be planned: its value is unknown.
    ``unknown``: the expression reads something the call's client chooses. ``reads_name``: it
    reads the entry's name (else its value is the same for every entry of a list).
    """

    program: Program | None
    unknown: bool
    reads_name: bool
    # The names standing for its unknown conditions (see :func:`residual`): bind each to true
    # or false, or leave it unbound (an error), for every value the expression can take.
    # Empty when the unknown parts are :data:`UNKNOWN` instead.
    atoms: tuple[str, ...] = ()


def header_per_call(name: str) -> bool:
    """Whether a (lower-case) header belongs to one call rather than to the caller."""
    return name in _HEADERS_PER_CALL or name.startswith(_HEADER_PREFIXES_PER_CALL)


def residual(program: Program, shape: CallShape) -> Residual:
    """``program`` (builder chains folded, so that no ``envoy`` call goes into Python) with
    every read of an unknown part of the call replaced by :data:`UNKNOWN`."""
    program = _folded(program)
    serialized = program.expression.serialize()
    checked = ast.load(serialized)
    rewriter = _Rewriter(checked, shape)
    rewriter.visit(checked.expr)
    if not rewriter.reads:
        return Residual(program, False, rewriter.reads_name)
    atoms = _atoms(checked, rewriter.reads)
    if atoms is None:
        dropped = _replace(rewriter.reads, lambda _: UNKNOWN)
        names: tuple[str, ...] = ()
    else:
        names = tuple(f"{ATOM}{index}" for index in range(len(atoms)))
        dropped = _replace(atoms, lambda index: names[index])
    kept = [entry for entry in checked.reference_map if entry.key not in dropped]
    del checked.reference_map[:]
    checked.reference_map.extend(kept)
    try:
        expression = program.env.deserialize(ast.dump(checked, serialized))
    except (RuntimeError, ValueError, TypeError):
        return Residual(None, True, True)
    return Residual(
        dataclasses.replace(program, expression=expression), True, rewriter.reads_name, names
    )


def _atoms(checked: Any, reads: list[Any]) -> list[Any] | None:
    """For each read of an unknown part, the condition that holds it: its nearest bool-typed
    ancestor (itself included).
    Each such condition is a value in {true, false, error} that the rest of the expression
    combines with known values; as the conditions are taken to be independent, every value
    the expression can really take is among the ones the atoms' combinations give (they may
    give more when two conditions read the same argument). None when a read has no such
    condition (an argument inside a response), a read sits in a comprehension's loop, or there
    are more than :data:`MAX_ATOMS`: the reads are then :data:`UNKNOWN`."""
    booleans = {
        entry.key for entry in checked.type_map if entry.value.SerializeToString() == _BOOL_TYPE
    }
    parents: dict[int, tuple[Any, bool]] = {}
    for node in ast.walk(checked.expr):
        loop: tuple[int, ...] = ()
        if ast.kind_of(node) == "comprehension_expr":
            c = node.comprehension_expr
            loop = (c.loop_condition.id, c.loop_step.id)
        for child in ast.children(node):
            parents[child.id] = (node, child.id in loop)
    chosen: dict[int, Any] = {}
    for read in reads:
        path = [read]
        while path[-1].id in parents:
            parent, in_loop = parents[path[-1].id]
            path.append(parent)
            if in_loop:
                # One name would force every iteration to the same value: reads in a loop
                # stay UNKNOWN (an error there is still absorbed by a known || or &&).
                return None
        atom = next((node for node in path if node.id in booleans), None)
        if atom is None:
            return None
        chosen[atom.id] = atom
    # An atom inside another is part of it.
    inner = {node.id for atom in chosen.values() for node in ast.walk(atom) if node.id != atom.id}
    atoms = [atom for atom in chosen.values() if atom.id not in inner]
    return atoms if len(atoms) <= MAX_ATOMS else None


def _replace(nodes: list[Any], name: Any) -> set[int]:
    """Replace each node by an identifier ``name(index)``; the ids of the nodes removed."""
    removed: set[int] = set()
    for index, node in enumerate(nodes):
        for inner in ast.walk(node):
            removed.add(inner.id)
        node_id = node.id
        node.Clear()
        node.id = node_id
        node.ident_expr.name = name(index)
    return removed


def _folded(program: Program) -> Program:
    source = fold_builders(program.source)
    if source == program.source:
        return program
    try:
        folded = compile_expression(program.env, source, NO_LIMITS)
    except CelCompileError:
        return program
    return dataclasses.replace(folded, constants=program.constants | folded.constants)


class _Rewriter:
    """Walks the tree from the root, replacing the largest sub-expressions that read unknown
    parts; a sub-expression that reads only known parts is left whole."""

    def __init__(self, checked: Any, shape: CallShape) -> None:
        self.references = {e.key: e.value.name for e in checked.reference_map if e.value.name}
        self.shape = shape
        # The largest sub-expressions that read unknown parts.
        self.reads: list[Any] = []
        self.reads_name = False

    def visit(self, node: Any) -> None:
        stack = [node]
        while stack:
            current = stack.pop()
            verdict = self._classify(current)
            if verdict is True:
                continue  # known: evaluated as it is
            if verdict is False:
                self.reads.append(current)
                continue
            stack.extend(ast.children(current))

    def _classify(self, node: Any) -> bool | None:
        """True: reads only known parts; False: reads an unknown part as a whole; None: look
        at its parts."""
        kind = ast.kind_of(node)
        if kind == "call_expr" and node.call_expr.function == "@in":
            # "k" in object.attributes.request.http.headers: a presence test of one header.
            key, container = node.call_expr.args
            path = self._path(container, OBJECT)
            if path is not None and _string(key) is not None:
                return self._known_object((*path, str(_string(key))))
            return None
        for root, known in ((mcp.VARIABLE, self._known_mcp), (OBJECT, self._known_object)):
            path = self._path(node, root)
            if path is not None:
                return known(path)
        return None

    def _path(self, node: Any, root: str) -> tuple[str, ...] | None:
        """The field names from the variable ``root`` to ``node`` when ``node`` is a chain of
        field selections and constant-key indexes (plain, optional or ``has()``) from it."""
        steps: list[str] = []
        while True:
            kind = ast.kind_of(node)
            if kind == "select_expr":
                steps.append(node.select_expr.field)
                node = node.select_expr.operand
            elif kind == "call_expr" and node.call_expr.function in ("_[_]", "_[?_]", "_?._"):
                if node.call_expr.HasField("target") or len(node.call_expr.args) != 2:
                    return None
                key = _string(node.call_expr.args[1])
                if key is None:
                    return None
                steps.append(key)
                node = node.call_expr.args[0]
            elif kind == "ident_expr":
                name = self.references.get(node.id, node.ident_expr.name)
                return tuple(reversed(steps)) if name == root else None
            else:
                return None

    def _known_mcp(self, path: tuple[str, ...]) -> bool:
        shape = self.shape
        if not path or path[0] == "ID" or path[0] not in mcp.FIELDS:
            return False
        if path[0] != shape.typed:
            return True  # Method, and the fields of other methods (null for this one)
        if len(path) >= 2 and shape.name_field is not None and path[1] == shape.name_field:
            self.reads_name = True
            return True
        return False

    def _known_object(self, path: tuple[str, ...]) -> bool:
        if len(path) < 2 or path[0] != "attributes":
            return False
        if path[1] != "request":
            return True  # source, destination, context_extensions, metadata: the connection's
        if len(path) < 3:
            return False
        if path[2] != "http":
            return True  # the time: now
        if len(path) < 4 or path[3] in _HTTP_PER_CALL:
            return False
        if path[3] == "headers":
            return len(path) >= 5 and not header_per_call(path[4])
        return True  # method, path, host, scheme, query, fragment, protocol


def _string(node: Any) -> str | None:
    if ast.kind_of(node) == "const_expr" and node.const_expr.HasField("string_value"):
        return str(node.const_expr.string_value)
    return None


class Answer(enum.Enum):
    """What a validation can evaluate to (an error aside)."""

    NULL = "null"
    ALLOW = "allow"
    DENY = "deny"
    APPROVAL = "approval"


ANY_ANSWER = frozenset(Answer)

# The overloads that make a response, by what the response means (cel/envoy.py, approval.py).
_MAKERS: Mapping[str, frozenset[Answer]] = {
    "ok_response": frozenset({Answer.ALLOW}),
    "denied_response": frozenset({Answer.DENY}),
    "any_response": frozenset({Answer.ALLOW, Answer.DENY}),
    "approval_require": frozenset({Answer.APPROVAL}),
}
# Builders that keep what their receiver means.
_KEEPERS = frozenset({"response_with_message", "response_with_metadata"})


def response_kinds(
    program: Program, variables: Mapping[str, frozenset[Answer]] | None = None
) -> frozenset[Answer]:
    """Every answer ``program`` can evaluate to, over-approximated; ``variables`` gives the
    same for the policy variables it may return (``variables.response``)."""
    checked = ast.parse(program.expression.serialize())
    return _kinds(checked, checked.root, variables or {})


def _kinds(
    checked: ast.Checked, node: Any, variables: Mapping[str, frozenset[Answer]]
) -> frozenset[Answer]:
    kind = ast.kind_of(node)
    if kind == "const_expr":
        return frozenset({Answer.NULL}) if node.const_expr.HasField("null_value") else ANY_ANSWER
    if kind == "ident_expr":
        name = checked.references.get(node.id, node.ident_expr.name)
        if name.startswith(VARIABLES_PREFIX):
            return variables.get(name[len(VARIABLES_PREFIX) :], ANY_ANSWER)
        return ANY_ANSWER
    if kind != "call_expr":
        return ANY_ANSWER
    call = node.call_expr
    if call.function == "_?_:_":
        return _kinds(checked, call.args[1], variables) | _kinds(checked, call.args[2], variables)
    overloads = checked.overloads.get(node.id, ())
    if not overloads:
        return ANY_ANSWER
    found: set[Answer] = set()
    for overload in overloads:
        if overload in _MAKERS:
            found |= _MAKERS[overload]
        elif overload in _KEEPERS and call.HasField("target"):
            found |= _kinds(checked, call.target, variables)
        else:
            return ANY_ANSWER
    return frozenset(found)
