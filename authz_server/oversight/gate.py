"""The approval gate: what happens to a call a policy answered with ``approval.Require``.

The call is keyed by the verified caller, the MCP method, its target (tool, resource or prompt)
and a digest of its canonical arguments (``approvals.approval_key``). A granted approval of that
key lets exactly one call through (``Approvals.consume``, atomic on every replica); otherwise
the call's approval is recorded (or found: retries share it) and the caller is told to wait for a
person, or that a person refused.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from authz_server.identity import Identity
from authz_server.oversight.approvals import (
    APPROVED,
    REJECTED,
    Approval,
    Approvals,
    approval_key,
    caller_of,
    canonical_digest,
)


class Verdict(enum.StrEnum):
    USED = "used"  # an approved approval was consumed: let this one call through
    PENDING = "pending"  # recorded; a person has not decided yet
    REJECTED = "rejected"  # a person refused it


@dataclass(frozen=True, slots=True)
class GateResult:
    verdict: Verdict
    approval: Approval


class ApprovalGate:
    """``approvals`` is the store-backed registry; ``redact`` makes the copy of the arguments a
    person sees (masked and clipped like the audit line: the page must not show a secret the
    audit line would hide)."""

    def __init__(self, approvals: Approvals, redact: Callable[[Any], Any]) -> None:
        self._approvals = approvals
        self._redact = redact

    def judge(
        self, identity: Identity, mcp_method: str, target: str, arguments: Any, reason: str
    ) -> GateResult:
        """Consume a granted approval of this call or record (find) its pending one. Raises
        ``StoreUnavailable`` (answer 503) and ``ApprovalError`` (the call cannot be keyed)."""
        caller = caller_of(identity)
        digest = canonical_digest(arguments)
        key = approval_key(caller, mcp_method, target, digest)
        for _ in range(2):
            used = self._approvals.consume(key)
            if used is not None:
                return GateResult(Verdict.USED, used)
            approval = self._approvals.request(
                caller, mcp_method, target, digest, self._redact(arguments), reason
            )
            if approval.state == REJECTED:
                return GateResult(Verdict.REJECTED, approval)
            if approval.state != APPROVED:
                return GateResult(Verdict.PENDING, approval)
            # Approved between the two reads, or already used by a concurrent retry: look again.
        return GateResult(Verdict.PENDING, approval)
