"""Errors raised by the CEL layer.

Compile errors carry every problem the checker reported with its position inside the
expression, so the policy loader can translate them to file positions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from authz_server.errors import AuthzServerError


class CelError(AuthzServerError):
    """Base class of every error the CEL layer raises."""


@dataclass(frozen=True, slots=True)
class CelIssue:
    """One problem in an expression; ``line`` and ``column`` are 1-based, 0 when unknown."""

    line: int
    column: int
    message: str


class CelCompileError(CelError):
    """An expression does not parse or does not type-check."""

    def __init__(self, issues: tuple[CelIssue, ...]) -> None:
        self.issues = issues
        super().__init__("; ".join(_describe(i) for i in issues))


class CelEvaluationError(CelError):
    """An expression failed at run time (a missing key, a bad token, a failed conversion ...)."""


def _describe(issue: CelIssue) -> str:
    if issue.line:
        return f"{issue.line}:{issue.column}: {issue.message}"
    return issue.message


_ISSUE = re.compile(r"ERROR: <input>:(\d+):(\d+): (.*)")
_STATUS_PREFIX = re.compile(r"^[A-Z_]+: ")
_STATUS_SUFFIX = re.compile(r"\s*\[[A-Z_]+\]\s*$")


def issues_from_message(message: str) -> tuple[CelIssue, ...]:
    """Split cel-expr-python's compile failure text into positioned issues.

    The library reports ``ERROR: <input>:LINE:COL: text`` per problem, each followed by a
    snippet with a caret; the snippet is dropped because the loader renders its own.
    """
    found = [
        CelIssue(int(m.group(1)), int(m.group(2)), _STATUS_SUFFIX.sub("", m.group(3)).strip())
        for m in _ISSUE.finditer(message)
    ]
    if found:
        return tuple(found)
    return (CelIssue(0, 0, clean_status(message)),)


def clean_status(message: str) -> str:
    """Strip the absl status decoration (``INVALID_ARGUMENT: ... [INVALID_ARGUMENT]``)."""
    return _STATUS_SUFFIX.sub("", _STATUS_PREFIX.sub("", message.strip(), count=1))
