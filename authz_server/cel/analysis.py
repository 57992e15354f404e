"""Static checks on a checked expression, for what cel-expr-python cannot bound or check itself.

* Which policy variables an expression reads (variables are declared as qualified names such as
  ``variables.token``, so the checker has already resolved each reference to one name).
* Field names under ``mcp``: the view is a map, so the type checker cannot catch
  ``mcp.ToolCall.name``; this does.
* Evaluation cost: the runtime has no cost or time limit, so nested comprehensions whose ranges
  both come from the request (quadratic or worse in what a client sends) are refused at load.
  A range counts as bounded when it is a literal (or ``lists.range`` of a literal), and as free
  when it is part of an element an enclosing comprehension is visiting (walking nested data is
  linear in its size). The decoder's body limits bound a single request-driven loop.
* The MCP methods a match condition can hold for (``mcp.Method == "tools/call"``, ``... in
  [...]``), so the engine skips a policy without evaluating anything.
* The URLs ``jwks.Fetch`` reads: each must be a string literal, so its keys can be fetched in
  the background before the first request needs them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from authz_server.cel import ast, mcp
from authz_server.cel.errors import CelIssue

VARIABLES_PREFIX = "variables."


@dataclass(frozen=True, slots=True)
class CostLimits:
    """Bounds on nested iteration accepted at load.

    ``max_unbounded_nesting``: how many request-driven loops may nest inside one another.
    ``max_bounded_iterations``: the product of literal-sized loops along one nesting chain.
    """

    max_unbounded_nesting: int = 1
    max_bounded_iterations: int = 1_000_000


def referenced_variables(checked: ast.Checked) -> frozenset[str]:
    names = set()
    for node in ast.walk(checked.root):
        if ast.kind_of(node) == "ident_expr":
            name = checked.references.get(node.id, node.ident_expr.name)
            if name.startswith(VARIABLES_PREFIX):
                names.add(name[len(VARIABLES_PREFIX) :])
    return frozenset(names)


def referenced_names(checked: ast.Checked, names: Mapping[str, object]) -> frozenset[str]:
    """Which of ``names`` (qualified identifiers such as ``mcp.ToolsCallMethod``) are read."""
    found = set()
    for node in ast.walk(checked.root):
        if ast.kind_of(node) == "ident_expr":
            name = checked.references.get(node.id, node.ident_expr.name)
            if name in names:
                found.add(name)
    return frozenset(found)


def binds_name(checked: ast.Checked, name: str) -> bool:
    """Whether a comprehension or ``cel.bind`` in the expression declares a local ``name``."""
    for node in ast.walk(checked.root):
        if ast.kind_of(node) == "comprehension_expr":
            c = node.comprehension_expr
            if name in (c.iter_var, c.iter_var2, c.accu_var):
                return True
    return False


_REQUEST_NAMES = frozenset({"object", "mcp", "identity"})
FETCH = "jwks.Fetch"
# Functions whose result depends on more than their arguments: jwt.Decode reads the clock,
# jwks.Fetch the keys fetched last (a rotation must be seen without a reload).
_IMPURE_FUNCTIONS = frozenset({"jwt.Decode", FETCH})


def reads_request(checked: ast.Checked) -> bool:
    """Whether the value can differ between requests (reads the request, a policy variable or
    the clock); false means it can be computed once at load."""
    for node in ast.walk(checked.root):
        kind = ast.kind_of(node)
        if kind == "ident_expr":
            name = checked.references.get(node.id, node.ident_expr.name)
            if name in _REQUEST_NAMES or name.startswith(VARIABLES_PREFIX):
                return True
        elif kind == "call_expr" and node.call_expr.function in _IMPURE_FUNCTIONS:
            return True
    return False


@dataclass(frozen=True, slots=True)
class FetchSite:
    """A ``jwks.Fetch`` call: its URL and the URL's 1-based place in the expression."""

    url: str
    line: int
    column: int


NOT_CONSTANT_URL = (
    "jwks.Fetch takes a constant URL so the keys can be fetched before requests arrive"
)


def fetch_sites(checked: ast.Checked, source: str) -> tuple[list[FetchSite], list[CelIssue]]:
    """Every ``jwks.Fetch`` call's URL, and an issue for each whose argument is not a string
    literal (a URL computed per request could only be fetched on the request path)."""
    sites: list[FetchSite] = []
    issues: list[CelIssue] = []
    for node in ast.walk(checked.root):
        if ast.kind_of(node) != "call_expr" or node.call_expr.function != FETCH:
            continue
        argument = node.call_expr.args[0] if node.call_expr.args else node
        if ast.kind_of(argument) == "const_expr" and argument.const_expr.HasField("string_value"):
            line, column = position(source, checked.positions.get(argument.id, -1))
            sites.append(FetchSite(str(argument.const_expr.string_value), line, column))
        else:
            # At the argument's first token (a node's own position is its operator's).
            offsets = [checked.positions.get(n.id, -1) for n in ast.walk(argument)]
            line, column = position(source, min((o for o in offsets if o >= 0), default=-1))
            issues.append(CelIssue(line, column, NOT_CONSTANT_URL))
    return sites, issues


def mcp_field_issues(checked: ast.Checked, source: str) -> list[CelIssue]:
    issues = []
    for node in ast.walk(checked.root):
        if ast.kind_of(node) != "select_expr":
            continue
        operand = node.select_expr.operand
        field = node.select_expr.field
        if _is_mcp(checked, operand):
            if field not in mcp.FIELDS:
                issues.append(_issue(checked, source, node, f"mcp has no field {field!r}"))
        elif ast.kind_of(operand) == "select_expr" and _is_mcp(
            checked, operand.select_expr.operand
        ):
            parent = operand.select_expr.field
            allowed = mcp.FIELDS.get(parent)
            if allowed is not None and field not in allowed:
                issues.append(_issue(checked, source, node, f"mcp.{parent} has no field {field!r}"))
    return issues


def _is_mcp(checked: ast.Checked, node: Any) -> bool:
    return (
        ast.kind_of(node) == "ident_expr"
        and checked.references.get(node.id, node.ident_expr.name) == mcp.VARIABLE
    )


def _issue(checked: ast.Checked, source: str, node: Any, message: str) -> CelIssue:
    line, column = position(source, checked.positions.get(node.id, -1))
    return CelIssue(line, column, message)


def position(source: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a code-point offset; (0, 0) when unknown."""
    if offset < 0:
        return 0, 0
    before = source[:offset]
    line = before.count("\n") + 1
    return line, offset - (before.rfind("\n") + 1) + 1


_UNBOUNDED = -1


def cost_issues(checked: ast.Checked, source: str, limits: CostLimits) -> list[CelIssue]:
    issues: list[CelIssue] = []
    _visit_cost(checked, source, limits, checked.root, {}, 0, 1, issues)
    return issues


def _visit_cost(
    checked: ast.Checked,
    source: str,
    limits: CostLimits,
    node: Any,
    scope: dict[str, int],
    unbounded: int,
    bounded: int,
    issues: list[CelIssue],
) -> None:
    if ast.kind_of(node) != "comprehension_expr":
        for child in ast.children(node):
            _visit_cost(checked, source, limits, child, scope, unbounded, bounded, issues)
        return
    c = node.comprehension_expr
    _visit_cost(checked, source, limits, c.iter_range, scope, unbounded, bounded, issues)
    _visit_cost(checked, source, limits, c.accu_init, scope, unbounded, bounded, issues)
    size = _range_size(checked, c.iter_range, scope)
    inner_scope = dict(scope)
    if _is_binding(c):
        # cel.bind: the accumulator is an alias of its initial value.
        inner_scope[c.accu_var] = _range_size(checked, c.accu_init, scope)
    else:
        inner_scope[c.iter_var] = 1
        if size == _UNBOUNDED:
            unbounded += 1
        else:
            bounded *= max(size, 1)
    if unbounded > limits.max_unbounded_nesting or bounded > limits.max_bounded_iterations:
        issues.append(
            _issue(
                checked,
                source,
                node,
                "nested iteration over request data is unbounded in cost "
                f"(more than {limits.max_unbounded_nesting} request-sized loop(s) nested, or "
                f"more than {limits.max_bounded_iterations} literal iterations)",
            )
        )
        return
    for child in (c.loop_condition, c.loop_step, c.result):
        _visit_cost(checked, source, limits, child, inner_scope, unbounded, bounded, issues)


def _is_binding(c: Any) -> bool:
    return ast.kind_of(c.iter_range) == "list_expr" and not c.iter_range.list_expr.elements


def _range_size(checked: ast.Checked, node: Any, scope: dict[str, int]) -> int:
    kind = ast.kind_of(node)
    if kind == "list_expr":
        return len(node.list_expr.elements)
    if kind == "struct_expr" and not node.struct_expr.message_name:
        return len(node.struct_expr.entries)
    if kind == "call_expr" and node.call_expr.function == "lists.range":
        args = node.call_expr.args
        if len(args) == 1 and ast.kind_of(args[0]) == "const_expr":
            return max(int(args[0].const_expr.int64_value), 0)
        return _UNBOUNDED
    # Selections, indexing and member calls (``e.items``, ``e["k"]``, ``e.split(",")``) of a
    # value keep its size class: a part of an element is no larger than the element.
    root = node
    while True:
        kind = ast.kind_of(root)
        if kind == "select_expr":
            root = root.select_expr.operand
        elif kind == "call_expr" and root.call_expr.HasField("target"):
            root = root.call_expr.target
        elif kind == "call_expr" and root.call_expr.function in ("_[_]", "_[?_]"):
            root = root.call_expr.args[0]
        else:
            break
    if ast.kind_of(root) == "ident_expr":
        name = root.ident_expr.name
        if name in scope:
            return scope[name]
    return _UNBOUNDED


def method_guard(checked: ast.Checked, constants: dict[str, str]) -> frozenset[str] | None:
    """The MCP methods for which the expression can be true; None when it cannot be told."""
    return _guard(checked, checked.root, constants)


def _guard(checked: ast.Checked, node: Any, constants: dict[str, str]) -> frozenset[str] | None:
    if ast.kind_of(node) != "call_expr" or node.call_expr.HasField("target"):
        return None
    call = node.call_expr
    if call.function == "_&&_":
        left, right = (_guard(checked, arg, constants) for arg in call.args)
        if left is None:
            return right
        return left if right is None else left & right
    if call.function == "_||_":
        left, right = (_guard(checked, arg, constants) for arg in call.args)
        return None if left is None or right is None else left | right
    if call.function == "_==_":
        a, b = call.args
        if _is_method(checked, a):
            value = _string(checked, b, constants)
        elif _is_method(checked, b):
            value = _string(checked, a, constants)
        else:
            return None
        return None if value is None else frozenset({value})
    if call.function == "@in":
        a, b = call.args
        if not _is_method(checked, a) or ast.kind_of(b) != "list_expr":
            return None
        values = [_string(checked, e, constants) for e in b.list_expr.elements]
        if any(v is None for v in values):
            return None
        return frozenset(v for v in values if v is not None)
    return None


def _is_method(checked: ast.Checked, node: Any) -> bool:
    return (
        ast.kind_of(node) == "select_expr"
        and node.select_expr.field == "Method"
        and not node.select_expr.test_only
        and _is_mcp(checked, node.select_expr.operand)
    )


def _string(checked: ast.Checked, node: Any, constants: dict[str, str]) -> str | None:
    kind = ast.kind_of(node)
    if kind == "const_expr" and node.const_expr.HasField("string_value"):
        return str(node.const_expr.string_value)
    if kind == "ident_expr":
        return constants.get(checked.references.get(node.id, node.ident_expr.name))
    return None
