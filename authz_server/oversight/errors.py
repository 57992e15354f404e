"""The oversight package's errors: one branch below :class:`AuthzServerError`.

They mean "the operator or caller asked for something that cannot be done" (a revocation without a
reason, approving an approval that is already decided). A store that cannot answer is not one of
them: that stays :class:`~authz_server.state.StoreUnavailable`, which callers answer with 503.
Messages say why and never quote a credential.
"""

from __future__ import annotations

from authz_server.errors import AuthzServerError


class OversightError(AuthzServerError):
    """Base class of the kill switch's and the approvals' deliberate errors."""


class RevocationError(OversightError, ValueError):
    """A revocation that cannot be made as asked: no selector or several, no reason, a bad
    duration or tool name."""


class ApprovalError(OversightError):
    """An approval request or decision that cannot be carried out."""


class ApprovalNotFound(ApprovalError):
    """No live approval has this id (never existed, or expired)."""


class ApprovalNotPending(ApprovalError):
    """The approval exists but was already decided or used: only a pending one can be decided."""
