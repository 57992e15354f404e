"""Read the checked syntax tree that cel-expr-python hands out as a serialized message.

cel-expr-python offers no AST API, but ``Expression.serialize()`` returns a
``google.protobuf.Any`` holding a ``cel.expr.CheckedExpr``. The loader needs the tree for checks
the library cannot do (which ``variables`` an expression reads, typos in ``mcp`` fields, nesting
of comprehensions, the MCP-method index), so the subset of the CEL AST schema those checks read is
declared here in a private descriptor pool; fields outside the subset are skipped as unknown.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto

# (message, [(field name, number, type, label, type_name)])
_MESSAGES: list[tuple[str, list[tuple[str, int, int, int, str]]]] = [
    (
        "Constant",
        [
            # google.protobuf.NullValue, an enum: read as the varint it is on the wire.
            ("null_value", 1, _F.TYPE_INT32, _F.LABEL_OPTIONAL, ""),
            ("bool_value", 2, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, ""),
            ("int64_value", 3, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
            ("uint64_value", 4, _F.TYPE_UINT64, _F.LABEL_OPTIONAL, ""),
            ("double_value", 5, _F.TYPE_DOUBLE, _F.LABEL_OPTIONAL, ""),
            ("string_value", 6, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
            ("bytes_value", 7, _F.TYPE_BYTES, _F.LABEL_OPTIONAL, ""),
        ],
    ),
    ("Ident", [("name", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, "")]),
    (
        "Select",
        [
            ("operand", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Expr"),
            ("field", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
            ("test_only", 3, _F.TYPE_BOOL, _F.LABEL_OPTIONAL, ""),
        ],
    ),
    (
        "Call",
        [
            ("target", 1, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Expr"),
            ("function", 2, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
            ("args", 3, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "Expr"),
        ],
    ),
    ("CreateList", [("elements", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "Expr")]),
    (
        "Entry",
        [
            ("map_key", 3, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Expr"),
            ("value", 4, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Expr"),
        ],
    ),
    (
        "CreateStruct",
        [
            ("message_name", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
            ("entries", 2, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "Entry"),
        ],
    ),
    (
        "Comprehension",
        [
            ("iter_var", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
            ("iter_range", 2, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Expr"),
            ("accu_var", 3, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
            ("accu_init", 4, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Expr"),
            ("loop_condition", 5, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Expr"),
            ("loop_step", 6, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Expr"),
            ("result", 7, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Expr"),
            ("iter_var2", 8, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
        ],
    ),
    (
        "Expr",
        [
            ("id", 2, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
            ("const_expr", 3, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Constant"),
            ("ident_expr", 4, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Ident"),
            ("select_expr", 5, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Select"),
            ("call_expr", 6, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Call"),
            ("list_expr", 7, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "CreateList"),
            ("struct_expr", 8, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "CreateStruct"),
            ("comprehension_expr", 9, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Comprehension"),
        ],
    ),
    (
        "Reference",
        [
            ("name", 1, _F.TYPE_STRING, _F.LABEL_OPTIONAL, ""),
            ("overload_id", 3, _F.TYPE_STRING, _F.LABEL_REPEATED, ""),
        ],
    ),
    (
        "ReferenceEntry",
        [
            ("key", 1, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
            ("value", 2, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Reference"),
        ],
    ),
    (
        "PositionEntry",
        [
            ("key", 1, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
            ("value", 2, _F.TYPE_INT32, _F.LABEL_OPTIONAL, ""),
        ],
    ),
    (
        "SourceInfo",
        [
            ("line_offsets", 3, _F.TYPE_INT32, _F.LABEL_REPEATED, ""),
            ("positions", 4, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "PositionEntry"),
        ],
    ),
    # cel.expr.Type, left opaque: its fields stay unknown fields, copied and written back whole.
    ("Type", []),
    (
        "TypeEntry",
        [
            ("key", 1, _F.TYPE_INT64, _F.LABEL_OPTIONAL, ""),
            ("value", 2, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Type"),
        ],
    ),
    (
        "CheckedExpr",
        [
            ("reference_map", 2, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "ReferenceEntry"),
            ("type_map", 3, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "TypeEntry"),
            ("expr", 4, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "Expr"),
            ("source_info", 5, _F.TYPE_MESSAGE, _F.LABEL_OPTIONAL, "SourceInfo"),
        ],
    ),
]

_PACKAGE = "authz_server.celast"


def _build() -> Any:
    # Map fields are read as repeated key/value entries, which is what they are on the wire.
    file = descriptor_pb2.FileDescriptorProto(name="authz_server/celast.proto", package=_PACKAGE)
    file.syntax = "proto3"
    for name, fields in _MESSAGES:
        msg = file.message_type.add(name=name)
        if name == "Constant":
            # A real oneof, so that HasField tells an empty string from no string.
            msg.oneof_decl.add(name="constant_kind")
        for fname, number, ftype, label, type_name in fields:
            field = msg.field.add(name=fname, number=number, type=ftype, label=label)
            if name == "Constant":
                field.oneof_index = 0
            if type_name:
                field.type_name = f".{_PACKAGE}.{type_name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.CheckedExpr"))


_CHECKED_EXPR = _build()


@dataclass(frozen=True, slots=True)
class Checked:
    """A checked expression: its root node, the name each resolved identifier refers to, the
    source offset of each node, and the overloads each call can dispatch to."""

    root: Any
    references: dict[int, str]
    positions: dict[int, int]
    overloads: dict[int, tuple[str, ...]] = field(default_factory=dict)


def load(serialized: bytes) -> Any:
    """The mutable ``CheckedExpr`` message of a serialized expression (fields outside the subset
    are kept as unknown fields, so :func:`dump` writes them back unchanged)."""
    wrapper = any_pb2.Any()
    wrapper.ParseFromString(serialized)
    checked = _CHECKED_EXPR()
    checked.ParseFromString(wrapper.value)
    return checked


def dump(checked: Any, like: bytes) -> bytes:
    """``checked`` serialized in the wrapper of ``like`` (what ``Expression.serialize()``
    returned), for ``Env.deserialize``."""
    wrapper = any_pb2.Any()
    wrapper.ParseFromString(like)
    wrapper.value = checked.SerializeToString()
    return wrapper.SerializeToString()


def parse(serialized: bytes) -> Checked:
    checked = load(serialized)
    refs = {entry.key: entry.value.name for entry in checked.reference_map if entry.value.name}
    positions = {entry.key: entry.value for entry in checked.source_info.positions}
    overloads = {
        entry.key: tuple(entry.value.overload_id)
        for entry in checked.reference_map
        if entry.value.overload_id
    }
    return Checked(root=checked.expr, references=refs, positions=positions, overloads=overloads)


def children(node: Any) -> Iterator[Any]:
    """The direct sub-expressions of a node."""
    kind = kind_of(node)
    if kind == "select_expr":
        yield node.select_expr.operand
    elif kind == "call_expr":
        if node.call_expr.HasField("target"):
            yield node.call_expr.target
        yield from node.call_expr.args
    elif kind == "list_expr":
        yield from node.list_expr.elements
    elif kind == "struct_expr":
        for entry in node.struct_expr.entries:
            if entry.HasField("map_key"):
                yield entry.map_key
            yield entry.value
    elif kind == "comprehension_expr":
        c = node.comprehension_expr
        yield from (c.iter_range, c.accu_init, c.loop_condition, c.loop_step, c.result)


_KINDS = (
    "const_expr",
    "ident_expr",
    "select_expr",
    "call_expr",
    "list_expr",
    "struct_expr",
    "comprehension_expr",
)


def kind_of(node: Any) -> str:
    for kind in _KINDS:
        if node.HasField(kind):
            return kind
    return ""


def walk(node: Any) -> Iterator[Any]:
    """Every node below and including ``node``, parents before children."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(children(current))
