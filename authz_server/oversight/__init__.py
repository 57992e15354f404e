"""Oversight: the kill switch (revocations) and human approval of sensitive calls, both kept in
the state store so every worker and replica sees them. See ``docs/oversight.md``."""

from authz_server.oversight.approvals import Approval, Approvals, caller_of, canonical_digest
from authz_server.oversight.errors import (
    ApprovalError,
    ApprovalNotFound,
    ApprovalNotPending,
    OversightError,
    RevocationError,
)
from authz_server.oversight.revocations import (
    Revocation,
    RevocationIndex,
    Revocations,
    RevocationWatch,
    parse_duration,
)

__all__ = [
    "Approval",
    "ApprovalError",
    "ApprovalNotFound",
    "ApprovalNotPending",
    "Approvals",
    "OversightError",
    "Revocation",
    "RevocationError",
    "RevocationIndex",
    "RevocationWatch",
    "Revocations",
    "caller_of",
    "canonical_digest",
    "parse_duration",
]
