"""The MCP decoder stage: HTTP body -> :class:`McpMessage` values (all protocol versions).

It imports nothing from the rest of authz_server; the envoy adapter calls :func:`decode`, the
policy engine reads the result.
"""

from authz_server.mcp.decoder import decode
from authz_server.mcp.limits import DEFAULT_LIMITS, Limits
from authz_server.mcp.message import (
    NO_MESSAGE,
    Decoded,
    DecodeFailure,
    FailureReason,
    Kind,
    McpMessage,
)

__all__ = [
    "DEFAULT_LIMITS",
    "NO_MESSAGE",
    "DecodeFailure",
    "Decoded",
    "FailureReason",
    "Kind",
    "Limits",
    "McpMessage",
    "decode",
]
