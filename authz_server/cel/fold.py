"""Fold ``envoy`` builder chains into message literals the CEL runtime builds natively.

``envoy.Allowed().WithHeader("x-authz-policy", "github").Response()`` calls three Python
functions per evaluation (about 20 us, most of it converting messages between the C++ runtime
and Python); its value never changes. Replaced by the literal
``envoy.service.auth.v3.CheckResponse{status: google.rpc.Status{}, ok_response: ...}`` it costs
a few microseconds and is the same value of the same type.

A chain whose string arguments read the request folds too, the argument expressions kept as
field values: ``envoy.Denied(403).WithBody("unknown MCP method " + mcp.Method).Response()``
becomes ``CheckResponse{..., denied_response: DeniedHttpResponse{..., body: ("unknown MCP
method " + mcp.Method)}}``. This is a memory fix as much as a speed-up: cel-expr-python 0.1.3
never frees the arguments and results of a call into Python, so each such denial kept the
client's string (a method name, a tool name) about four times over.

What is replaced: the longest prefix of a builder chain that starts with a namespaced
constructor (``envoy.Allowed()``, ``envoy.Denied(403)``, ``envoy.Header(k, v)``,
``envoy.QueryParam(k, v)``) and continues with builder methods. Member calls bind tighter than
any operator and associate to the left, so every such prefix is a complete sub-expression, and a
parenthesised literal can stand in for it whatever follows
(``(literal).WithMetadata(variables.m)`` still works). The prefix is evaluated once with the real
builders, with placeholder strings where its arguments are not literals; the literal is only used
if the runtime builds an equal message from it and the placeholders come out unchanged as field
values (:func:`_template_of`), so a folding mistake can only mean "not folded", never a different
value.

Used by the fast path only (:mod:`authz_server.policy.combined`); policies are compiled and
reported on as written.
"""

from __future__ import annotations

import functools
import re
import secrets
from typing import Any

from google.protobuf import descriptor

from authz_server.cel import env as cel_env
from authz_server.cel.errors import CelError
from authz_server.cel.tokens import Call, Token, call_at, selected, string_literal, text_at, tokens

# namespace -> constructors that start a foldable chain.
_CONSTRUCTORS = {
    "envoy": frozenset({"Allowed", "Denied", "Header", "QueryParam"}),
    "approval": frozenset({"Require"}),
}
_BUILDERS = frozenset(
    {
        "WithBody",
        "WithHeader",
        "WithoutHeader",
        "WithResponseHeader",
        "WithQueryParam",
        "WithoutQueryParam",
        "KeepEmptyValue",
        "Response",
        "WithMessage",
    }
)

_LITERALS = frozenset({"string", "number"})
_LITERAL_WORDS = frozenset({"true", "false", "null"})


def fold_builders(source: str) -> str:
    """``source`` with every builder-chain prefix that can be built natively replaced by an
    equal literal, the non-literal arguments kept in it as field values."""
    toks = tokens(source)
    pieces: list[str] = []
    position = 0
    i = 0
    while i < len(toks):
        steps = _chain(toks, i)
        for count in range(len(steps), 0, -1):
            literal = _fold(source, toks, i, steps[:count])
            if literal is not None:
                end = steps[count - 1].end
                pieces += [source[position : toks[i].start], "(", literal, ")"]
                position = toks[end].end
                i = end + 1
                break
        else:
            i += 1
    pieces.append(source[position:])
    return "".join(pieces)


def _chain(toks: list[Token], i: int) -> list[Call]:
    """The calls of a builder chain starting at token ``i``: a constructor, then builders."""
    if not (
        toks[i].text in _CONSTRUCTORS
        and not selected(toks, i)
        and text_at(toks, i + 1) == "."
        and text_at(toks, i + 2) in _CONSTRUCTORS[toks[i].text]
    ):
        return []
    step = call_at(toks, i + 3)
    steps: list[Call] = []
    while step is not None:
        steps.append(step)
        if not (text_at(toks, step.end + 1) == "." and text_at(toks, step.end + 2) in _BUILDERS):
            break
        step = call_at(toks, step.end + 3)
    return steps


def _fold(source: str, toks: list[Token], start: int, steps: list[Call]) -> str | None:
    """A literal for the chain ``steps`` starting at token ``start``: literal arguments are
    evaluated into it, the others (slots) are placed in it as field values."""
    texts: list[str] = []
    slots: list[str] = []
    position = toks[start].start
    for step in steps:
        for first, last in step.arguments:
            if first == last and _is_literal(toks[first]):
                continue
            texts.append(source[position : toks[first].start])
            slots.append(source[toks[first].start : toks[last].end])
            position = toks[last].end
    texts.append(source[position : toks[steps[-1].end].end])
    template = _template_of(tuple(texts))
    if template is None:
        return None
    parts, order = template
    pieces = [parts[0]]
    for slot, part in zip(order, parts[1:], strict=True):
        # The newline ends a trailing ``//`` comment of the argument.
        pieces += [f"({fold_builders(slots[slot])}\n)", part]
    return "".join(pieces)


def _is_literal(token: Token) -> bool:
    return token.kind in _LITERALS or token.text in _LITERAL_WORDS


# Placeholders for the slots while a template is made: no policy text contains them.
_NONCE = secrets.token_hex(8)


def _placeholder(slot: int, variant: str) -> str:
    return string_literal(f"Authz-Fold-{variant}{slot}-{_NONCE}")


@functools.lru_cache(maxsize=1024)
def _template_of(texts: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
    """The literal of the chain ``texts`` joins, split where its slots go, and which slot goes
    in each place; None when it cannot be folded.

    The chain is built twice, with two sets of string placeholders of different lengths in the
    slots. A slot can only be a field value when each placeholder appears exactly once, whole,
    in the first literal, and putting the second set in those places gives the second literal:
    the builders stored the argument unchanged. A slot that is not a string (``Denied(code)``)
    does not type-check with a placeholder and leaves the chain unfolded.
    """
    slots = len(texts) - 1
    first = _literal_of(_fill(texts, "a"))
    if first is None or slots == 0:
        return None if first is None else ((first,), ())
    second = _literal_of(_fill(texts, "bb"))
    if second is None:
        return None
    marks = [_placeholder(slot, "a") for slot in range(slots)]
    found = re.split("(" + "|".join(re.escape(mark) for mark in marks) + ")", first)
    parts, order = tuple(found[0::2]), tuple(marks.index(mark) for mark in found[1::2])
    if sorted(order) != list(range(slots)):
        return None
    rebuilt = [parts[0]]
    for slot, part in zip(order, parts[1:], strict=True):
        rebuilt += [_placeholder(slot, "bb"), part]
    if "".join(rebuilt) != second:
        return None
    return parts, order


def _fill(texts: tuple[str, ...], variant: str) -> str:
    pieces = [texts[0]]
    for slot, text in enumerate(texts[1:]):
        pieces += [_placeholder(slot, variant), text]
    return "".join(pieces)


@functools.lru_cache(maxsize=1024)
def _literal_of(chain: str) -> str | None:
    """A literal building the chain's value, or None when it cannot be folded safely."""
    try:
        program = cel_env.compile_expression(None, chain)
        value = cel_env.evaluate(program, cel_env.activation({}))
        literal = message_literal(value)
        rebuilt = cel_env.evaluate(
            cel_env.compile_expression(None, literal), cel_env.activation({})
        )
    except (CelError, _Unsupported):
        return None
    if type(rebuilt) is not type(value) or rebuilt != value:
        return None
    return literal


class _Unsupported(Exception):
    """A value this module does not print as a literal."""


def message_literal(message: Any) -> str:
    """CEL source for a protobuf message: ``full.Name{field: value, ...}``."""
    descriptor_ = getattr(message, "DESCRIPTOR", None)
    if not isinstance(descriptor_, descriptor.Descriptor):
        raise _Unsupported(type(message).__name__)
    if descriptor_.full_name.startswith("google.protobuf."):
        raise _Unsupported(descriptor_.full_name)  # well-known types are not plain messages
    fields = [f"{field.name}: {_field(field, value)}" for field, value in message.ListFields()]
    return f"{descriptor_.full_name}{{{', '.join(fields)}}}"


def _field(field: descriptor.FieldDescriptor, value: Any) -> str:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        raise _Unsupported(field.full_name)
    if _is_repeated(field):
        return "[" + ", ".join(_scalar(field, v) for v in value) + "]"
    return _scalar(field, value)


def _is_repeated(field: descriptor.FieldDescriptor) -> bool:
    repeated = getattr(field, "is_repeated", None)
    if repeated is not None:
        return bool(repeated)
    return bool(field.label == descriptor.FieldDescriptor.LABEL_REPEATED)


def _scalar(field: descriptor.FieldDescriptor, value: Any) -> str:
    kind = field.type
    types = descriptor.FieldDescriptor
    if kind == types.TYPE_MESSAGE:
        return message_literal(value)
    if kind == types.TYPE_STRING:
        return string_literal(value)
    if kind == types.TYPE_BYTES:
        return 'b"' + "".join(f"\\x{b:02x}" for b in value) + '"'
    if kind == types.TYPE_BOOL:
        return "true" if value else "false"
    if kind in (types.TYPE_ENUM, types.TYPE_INT32, types.TYPE_INT64, types.TYPE_SINT32):
        return str(int(value))
    if kind in (types.TYPE_UINT32, types.TYPE_UINT64):
        return f"{int(value)}u"
    raise _Unsupported(field.full_name)
