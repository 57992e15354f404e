"""The answer to a request, independent of how it travels back to the gateway.

The policy engine produces a :class:`Decision`; the envoy adapter turns it into a CheckResponse;
metrics and the audit log read it. Header mutations always carry an explicit append action
because Envoy changed the meaning of an unset one in 2026.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any


class AppendAction(enum.IntEnum):
    """How a header mutation combines with an existing header (Envoy's HeaderAppendAction)."""

    APPEND_IF_EXISTS_OR_ADD = 0
    ADD_IF_ABSENT = 1
    OVERWRITE_IF_EXISTS_OR_ADD = 2
    OVERWRITE_IF_EXISTS = 3


class DecidedBy(enum.StrEnum):
    """What produced a decision; observers label metrics with it."""

    POLICY = "policy"
    DEFAULT = "default"
    DECODE = "decode"
    # Refused before the policies: no valid credential under `required: true`, or a
    # dependency of verification (keys, the replay store) unavailable.
    IDENTITY = "identity"
    # The caller matched a revocation (the kill switch), before the policies.
    REVOKED = "revoked"
    # approval.Require: the approval gate answered (pending, rejected, or a granted one used).
    APPROVAL = "approval"
    ERROR = "error"
    NO_POLICIES = "no_policies"


@dataclass(frozen=True, slots=True)
class HeaderMutation:
    key: str
    value: str
    action: AppendAction = AppendAction.OVERWRITE_IF_EXISTS_OR_ADD
    keep_empty_value: bool = False


@dataclass(frozen=True, slots=True)
class DryRunResult:
    """What an Audit-mode policy would have decided; reported, never enforced."""

    policy: str
    allowed: bool
    http_status: int = 0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """Allow (with optional mutations) or deny (with status, headers and body).

    For an allow, ``headers`` are mutations to the upstream request; for a deny they are sent to
    the client with the local reply.
    """

    allowed: bool
    http_status: int = 0
    body: str = ""
    headers: tuple[HeaderMutation, ...] = ()
    headers_to_remove: tuple[str, ...] = ()
    response_headers_to_add: tuple[HeaderMutation, ...] = ()
    query_parameters_to_set: tuple[tuple[str, str], ...] = ()
    query_parameters_to_remove: tuple[str, ...] = ()
    dynamic_metadata: Mapping[str, Any] = field(default_factory=dict)
    # google.rpc.Status carried to Envoy; 0 allows, anything else denies.
    grpc_code: int = 0
    message: str = ""
    # Provenance, for observers.
    decided_by: DecidedBy = DecidedBy.POLICY
    policy: str = ""
    validation_index: int = -1
    reason: str = ""
    dry_run: tuple[DryRunResult, ...] = ()
    # Non-empty: a policy answered approval.Require(reason): a person must approve the call
    # first. Such a decision is a denial until the oversight stage finds a granted approval.
    approval: str = ""

    def with_metadata(self, metadata: Mapping[str, Any]) -> Decision:
        """This decision with ``dynamic_metadata`` replaced: what ``dataclasses.replace`` gives,
        for a third of its cost (it runs on every check, to add the decision id). Copies the
        slots directly: ``replace`` builds a keyword dict and runs the frozen ``__init__``, one
        ``object.__setattr__`` per field."""
        if type(self) is not Decision:  # a subclass may hold more than the slots below
            return replace(self, dynamic_metadata=metadata)
        new = object.__new__(Decision)
        for slot in _SLOTS:
            slot.__set__(new, slot.__get__(self))
        _METADATA_SLOT.__set__(new, metadata)
        return new


# Every field's slot descriptor but dynamic_metadata's (Decision.with_metadata).
_SLOTS = tuple(Decision.__dict__[name] for name in Decision.__slots__ if name != "dynamic_metadata")
_METADATA_SLOT = Decision.__dict__["dynamic_metadata"]

PERMISSION_DENIED = 7


def allow(**kwargs: Any) -> Decision:
    return Decision(allowed=True, grpc_code=0, **kwargs)


def deny(http_status: int = 403, reason: str = "", **kwargs: Any) -> Decision:
    kwargs.setdefault("grpc_code", PERMISSION_DENIED)
    return Decision(allowed=False, http_status=http_status, reason=reason, **kwargs)
