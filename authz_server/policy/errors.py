"""Errors of the policy stage.

A load reports every problem it finds, each with its file, document, policy, field and position,
so one ``authz-server validate`` run shows them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from authz_server.errors import AuthzServerError


class PolicyError(AuthzServerError):
    """Base class of every error the policy stage raises."""


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    """One problem in a policy file.

    ``line``/``column`` are 1-based positions in the file (0 when unknown). For a CEL problem
    they point at the offending character when it can be located in the YAML source, else at
    the start of the expression, and ``expression_line``/``expression_column`` give the position
    inside the expression as the CEL checker reported it.
    """

    file: str
    message: str
    document_index: int = 0
    policy: str = ""
    field: str = ""
    line: int = 0
    column: int = 0
    expression_line: int = 0
    expression_column: int = 0
    snippet: str = ""

    def format(self) -> str:
        location = self.file
        if self.line:
            location += f":{self.line}:{self.column}"
        parts = [location]
        if self.policy:
            parts.append(f"policy {self.policy!r}")
        else:
            parts.append(f"document {self.document_index}")
        if self.field:
            parts.append(self.field)
        text = ": ".join(parts) + f": {self.message}"
        if self.expression_line:
            text += f" (expression {self.expression_line}:{self.expression_column})"
        if self.snippet:
            text += "\n" + self.snippet
        return text


class PolicyLoadError(PolicyError):
    """The policy files do not form a valid policy set; nothing from them is enforced."""

    def __init__(self, issues: Sequence[PolicyIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__(self.format())

    def format(self) -> str:
        count = len(self.issues)
        head = f"{count} problem{'s' if count != 1 else ''} in the policies"
        return head + ":\n" + "\n".join(issue.format() for issue in self.issues)
