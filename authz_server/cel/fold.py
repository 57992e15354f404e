"""Fold constant ``envoy`` builder chains into message literals the CEL runtime builds natively.

``envoy.Allowed().WithHeader("x-authz-policy", "github").Response()`` calls three Python
functions per evaluation (about 20 us, most of it converting messages between the C++ runtime
and Python); its value never changes. Replaced by the literal
``envoy.service.auth.v3.CheckResponse{status: google.rpc.Status{}, ok_response: ...}`` it costs
a few microseconds and is the same value of the same type.

What is replaced: the longest prefix of a builder chain that starts with a namespaced
constructor (``envoy.Allowed()``, ``envoy.Denied(403)``, ``envoy.Header(k, v)``,
``envoy.QueryParam(k, v)``) and continues with builder methods whose arguments are all literals.
Member calls bind tighter than any operator and associate to the left, so every such prefix is a
complete sub-expression, and a parenthesised literal can stand in for it whatever follows
(``(literal).WithBody(variables.reason).Response()`` still works). The prefix is evaluated once
with the real builders; the literal is only used if the runtime builds an equal message from it,
so a folding mistake can only mean "not folded", never a different value.

Used by the fast path only (:mod:`authz_server.policy.combined`); policies are compiled and
reported on as written.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor

from authz_server.cel import env as cel_env
from authz_server.cel.errors import CelError

_CONSTRUCTORS = frozenset({"Allowed", "Denied", "Header", "QueryParam"})
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

# One token: comment, string (any prefix, triple or single quoted), backquoted name, number,
# identifier, or one punctuation character. Whitespace between tokens is skipped.
_TOKEN = re.compile(
    r"""
    (?P<comment>//[^\n]*)
  | (?P<string>(?:[rR][bB]?|[bB][rR]?)?(?:\"\"\"(?:\\.|[^\\])*?\"\"\"|'''(?:\\.|[^\\])*?'''
                |"(?:\\.|[^\\"\n])*"|'(?:\\.|[^\\'\n])*'))
  | (?P<quoted>`[^`\n]*`)
  | (?P<number>[0-9][0-9a-zA-Z_.]*|\.[0-9][0-9a-zA-Z_]*)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>\S)
    """,
    re.VERBOSE | re.DOTALL,
)
_LITERALS = frozenset({"string", "number"})
_LITERAL_WORDS = frozenset({"true", "false", "null"})


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    start: int
    end: int


def tokens(source: str) -> list[_Token]:
    """CEL tokens of ``source`` (comments dropped); raw strings are a single token even though
    this lexer does not apply their no-escape rule, which can only make it miss a fold."""
    found = []
    for match in _TOKEN.finditer(source):
        kind = match.lastgroup or "punct"
        if kind != "comment":
            found.append(_Token(kind, match.group(), match.start(), match.end()))
    return found


def fold_builders(source: str) -> str:
    """``source`` with every constant builder-chain prefix replaced by an equal literal."""
    toks = tokens(source)
    pieces: list[str] = []
    position = 0
    i = 0
    while i < len(toks):
        ends = _chain(toks, i)
        replaced = False
        for end in reversed(ends):
            literal = _literal_of(source[toks[i].start : toks[end].end])
            if literal is not None:
                pieces += [source[position : toks[i].start], "(", literal, ")"]
                position = toks[end].end
                i = end + 1
                replaced = True
                break
        if not replaced:
            i += 1
    pieces.append(source[position:])
    return "".join(pieces)


def _chain(toks: list[_Token], i: int) -> list[int]:
    """Token indexes where each step of a constant builder chain starting at ``i`` ends."""
    if not (
        toks[i].text == "envoy"
        and not _selected(toks, i)
        and _text(toks, i + 1) == "."
        and _text(toks, i + 2) in _CONSTRUCTORS
    ):
        return []
    end = _call_end(toks, i + 3)
    ends: list[int] = []
    while end is not None:
        ends.append(end)
        if not (_text(toks, end + 1) == "." and _text(toks, end + 2) in _BUILDERS):
            break
        end = _call_end(toks, end + 3)
    return ends


def _selected(toks: list[_Token], i: int) -> bool:
    """Whether token ``i`` is a field name (``x.envoy``, ``x.?envoy``), not the namespace."""
    before = _text(toks, i - 1) if i > 0 else ""
    return before == "." or (before == "?" and i > 1 and _text(toks, i - 2) == ".")


def _call_end(toks: list[_Token], i: int) -> int | None:
    """Index of the ``)`` closing a call at ``i`` whose arguments are all literals."""
    if _text(toks, i) != "(":
        return None
    i += 1
    if _text(toks, i) == ")":
        return i
    while i < len(toks):
        token = toks[i]
        if token.kind not in _LITERALS and token.text not in _LITERAL_WORDS:
            return None
        following = _text(toks, i + 1)
        if following == ")":
            return i + 1
        if following != ",":
            return None
        i += 2
    return None


def _text(toks: list[_Token], i: int) -> str:
    return toks[i].text if i < len(toks) else ""


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


def string_literal(text: str) -> str:
    """A double-quoted CEL string literal for ``text``."""
    out = []
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif " " <= char <= "~":
            out.append(char)
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'
