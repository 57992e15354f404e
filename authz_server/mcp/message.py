"""What the MCP decoder hands to the policy engine.

A body decodes to zero or more :class:`McpMessage` values (zero: a GET, a DELETE, an empty body),
or to a :class:`DecodeFailure` whose :class:`FailureReason` is stable: policies, the audit log and
metrics all key on it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class Kind(enum.StrEnum):
    REQUEST = "request"
    NOTIFICATION = "notification"
    RESULT = "result"
    ERROR = "error"


class FailureReason(enum.StrEnum):
    """Why a body meant as MCP could not be trusted. Values are stable identifiers."""

    TRUNCATED = "truncated"
    TOO_LARGE = "too_large"
    INVALID_JSON = "invalid_json"
    TRAILING_DATA = "trailing_data"
    INVALID_UTF8 = "invalid_utf8"
    BYTE_ORDER_MARK = "byte_order_mark"
    DUPLICATE_KEY = "duplicate_key"
    TOO_DEEP = "too_deep"
    NOT_JSONRPC = "not_jsonrpc"
    INVALID_ID = "invalid_id"
    INVALID_METHOD = "invalid_method"
    EMPTY_BATCH = "empty_batch"
    AMBIGUOUS_MESSAGE = "ambiguous_message"
    DECOMPRESSION_LIMIT = "decompression_limit"
    UNSUPPORTED_ENCODING = "unsupported_encoding"
    UNSUPPORTED_CHARSET = "unsupported_charset"
    HEADER_MISMATCH = "header_mismatch"
    # Added with the decoder: params of a known method that do not have the shape MCP defines
    # (a tools/call whose name is not a string, prompt arguments that are not strings ...).
    INVALID_PARAMS = "invalid_params"
    # A Content-Encoding the decoder knows, but the bytes are not a valid stream of it.
    INVALID_ENCODING = "invalid_encoding"
    # The decoder itself failed; the body is not trusted (never an allow).
    INTERNAL_ERROR = "internal_error"
    # Added with issue 13. A request that must carry a body (a POST, or one with Mcp-Method /
    # Mcp-Name headers) arrived without one: the gateway did not forward it.
    MISSING_BODY = "missing_body"
    # With --decode-content-encoding: the bytes as sent are JSON too, so a reader that does not
    # decompress would run a different request from the one judged.
    AMBIGUOUS_ENCODING = "ambiguous_encoding"
    # U+0000 in a string or a key: CEL's strings end there, so a policy would read less than
    # the server runs (and two keys could become one).
    NUL_CHARACTER = "nul_character"


@dataclass(frozen=True, slots=True)
class DecodeFailure:
    reason: FailureReason
    detail: str = ""


@dataclass(frozen=True, slots=True)
class McpMessage:
    """One JSON-RPC message of an MCP body, with the fields policies key on pulled out.

    ``kyverno`` is Kyverno's MCPRequest view (Go field names: ``Method``, ``ID``,
    ``ToolCall.Name`` ...), which CEL policies see as ``mcp``.
    """

    kind: Kind
    id: str | int | None = None
    method: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    # The protocol version from params._meta, the MCP-Protocol-Version header or initialize.
    protocol_version: str = ""
    tool_name: str = ""
    arguments: Mapping[str, Any] | None = None
    uri: str = ""
    prompt_name: str = ""
    kyverno: Mapping[str, Any] = field(default_factory=dict)
    # params._meta as sent (2026-07-28 carries protocol version, client info, capabilities there).
    meta: Mapping[str, Any] | None = None
    # Self-reported client identity (_meta clientInfo or initialize clientInfo); never proof.
    client_info: Mapping[str, Any] | None = None
    # params.cursor of the list methods.
    cursor: str = ""
    # completion/complete: params.ref ({"type": "ref/prompt", "name"} or {"type": "ref/resource",
    # "uri"}) and params.argument ({"name", "value"}).
    ref: Mapping[str, Any] | None = None
    argument: Mapping[str, Any] | None = None
    # params.taskId of tasks/get, tasks/result, tasks/cancel, tasks/update.
    task_id: str = ""
    # subscriptions/listen: params.notifications.resourceSubscriptions.
    subscriptions: tuple[str, ...] = ()
    # logging/setLevel: params.level.
    log_level: str = ""
    # Responses a client POSTs (legacy eras): the result value, or the error object.
    result: Any = None
    error: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Decoded:
    """The outcome of decoding one request body.

    Exactly one of these holds: ``failure`` is set; or ``messages`` is empty (no MCP message, e.g.
    a GET); or ``messages`` holds one message (``batch`` False) or every element of a batch.
    """

    messages: tuple[McpMessage, ...] = ()
    batch: bool = False
    failure: DecodeFailure | None = None


NO_MESSAGE = Decoded()
