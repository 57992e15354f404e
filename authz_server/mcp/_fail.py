"""The internal signal for "this body cannot be trusted"; decode() turns it into a DecodeFailure."""

from __future__ import annotations

from authz_server.errors import AuthzServerError
from authz_server.mcp.message import DecodeFailure, FailureReason


class Fail(AuthzServerError):
    """Raised by the decoding stages; never escapes :func:`authz_server.mcp.decode`."""

    def __init__(self, reason: FailureReason, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def failure(self) -> DecodeFailure:
        return DecodeFailure(self.reason, self.detail)
