"""A CEL lexer just precise enough to rewrite call chains in a policy's source.

The fast path's folding (:mod:`authz_server.cel.fold`) and the HTTP library's rewrites
(:mod:`authz_server.cel.http`) replace whole calls by equivalent CEL text. Member calls bind
tighter than any operator and associate to the left, so a call found by its tokens is a complete
sub-expression, and the text standing in for it (parenthesised where needed) keeps the meaning of
whatever surrounds it. Strings and comments are single tokens, so a call spelled inside a string
literal is never touched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    text: str
    start: int
    end: int


def tokens(source: str) -> list[Token]:
    """CEL tokens of ``source`` (comments dropped); raw strings are a single token even though
    this lexer does not apply their no-escape rule, which can only make a rewrite miss."""
    found = []
    for match in _TOKEN.finditer(source):
        kind = match.lastgroup or "punct"
        if kind != "comment":
            found.append(Token(kind, match.group(), match.start(), match.end()))
    return found


@dataclass(frozen=True, slots=True)
class Call:
    """One call's argument list: the index of its closing parenthesis and, per argument, the
    indexes of its first and last token."""

    end: int
    arguments: tuple[tuple[int, int], ...]


def call_at(toks: list[Token], i: int) -> Call | None:
    """The call whose argument list opens at token ``i``, split at its top-level commas."""
    if text_at(toks, i) != "(":
        return None
    depth = 0
    arguments: list[tuple[int, int]] = []
    first = i + 1
    for j in range(i, len(toks)):
        token = toks[j]
        if token.kind != "punct":
            continue
        if token.text in "([{":
            depth += 1
        elif token.text in ")]}":
            depth -= 1
            if depth == 0:
                if j > first:
                    arguments.append((first, j - 1))
                elif arguments:
                    return None  # a trailing comma
                return Call(j, tuple(arguments))
        elif token.text == "," and depth == 1:
            if j == first:
                return None
            arguments.append((first, j - 1))
            first = j + 1
    return None


def text_at(toks: list[Token], i: int) -> str:
    return toks[i].text if 0 <= i < len(toks) else ""


def selected(toks: list[Token], i: int) -> bool:
    """Whether token ``i`` is a field name (``x.envoy``, ``x.?envoy``), not a namespace."""
    before = text_at(toks, i - 1) if i > 0 else ""
    return before == "." or (before == "?" and i > 1 and text_at(toks, i - 2) == ".")


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
