"""Kyverno's ``mcp`` CEL library, minus CEL: the MCPRequest view, ``Parse`` and the argument
getters, as pure functions the CEL engine wraps.

Policies written for Kyverno's authz server must read the same values here, so the getters
copy Kyverno's conversion rules (Go ``strconv`` syntax included) rather than Python's, which
are looser (``int(" 1_0 ")`` is 10 in Python, an error in Go). Where Go's result is undefined
(a float beyond int64 truncated to int) the default is returned instead.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from authz_server.errors import AuthzServerError
from authz_server.mcp import _view
from authz_server.mcp.decoder import decode
from authz_server.mcp.message import FailureReason, McpMessage

T = TypeVar("T")

EMPTY_VIEW: Mapping[str, Any] = _view.EMPTY_VIEW
"""The view for a request without an MCP message (read-only: copy it before changing it)."""

METHODS: Mapping[str, str] = {
    "InitializeMethod": "initialize",
    "PingMethod": "ping",
    "ResourcesListMethod": "resources/list",
    "ResourcesTemplatesListMethod": "resources/templates/list",
    "ResourcesReadMethod": "resources/read",
    "PromptsListMethod": "prompts/list",
    "PromptsGetMethod": "prompts/get",
    "ToolsListMethod": "tools/list",
    "ToolsCallMethod": "tools/call",
    "SetLogLevelMethod": "logging/setLevel",
    "ElicitationCreateMethod": "elicitation/create",
}

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_GO_INT = re.compile(r"[+-]?[0-9]+")
_GO_DEC_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_GO_HEX_FLOAT = re.compile(
    r"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)[pP][+-]?[0-9]+"
)
_GO_INF = frozenset({"inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"})
_GO_BOOL = {
    **dict.fromkeys(("1", "t", "T", "TRUE", "true", "True"), True),
    **dict.fromkeys(("0", "f", "F", "FALSE", "false", "False"), False),
}
_PARSE_HEADERS = {"content-type": "application/json"}


class KyvernoParseError(AuthzServerError, ValueError):
    """``mcp.Parse`` refused the text (a CEL evaluation error for the policy)."""

    def __init__(self, message: str, reason: FailureReason | None = None) -> None:
        super().__init__(message)
        self.reason = reason


def view(message: McpMessage) -> dict[str, Any]:
    """Kyverno's MCPRequest for ``message`` (the decoder already built it; this only reads it)."""
    if message.kyverno:
        return message.kyverno  # type: ignore[return-value]
    return _view.build(message.method, message.id, message.params)


def parse(text: str | bytes) -> dict[str, Any]:
    """``mcp.Parse(body)``: one JSON-RPC message to its view, through the same strict decoder.

    Stricter than Kyverno where Go would accept an ambiguous body (duplicate keys, a lone
    surrogate, a batch is refused by both): those raise instead of yielding a view.
    """
    try:
        body = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    except (UnicodeEncodeError, TypeError) as exc:
        raise KyvernoParseError(f"mcp.Parse: {exc}") from None
    decoded = decode(body, _PARSE_HEADERS)
    if decoded.failure is not None:
        failure = decoded.failure
        raise KyvernoParseError(f"mcp.Parse: {failure.reason}: {failure.detail}", failure.reason)
    if not decoded.messages:
        raise KyvernoParseError("mcp.Parse: empty body")
    if decoded.batch:
        raise KyvernoParseError("mcp.Parse: a batch is not one JSON-RPC request")
    return dict(view(decoded.messages[0]))


def arguments(view: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The argument map the getters read: ToolCall (if an object), else ResourceRead, else
    PromptGet."""
    for key in ("ToolCall", "ResourceRead", "PromptGet"):
        typed = view.get(key)
        if typed is not None:
            args = typed.get("Arguments")
            if isinstance(args, Mapping):
                return args
    return None


def _int64(value: int) -> int | None:
    return value if _INT64_MIN <= value <= _INT64_MAX else None


def to_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return _int64(value)
    if isinstance(value, float):
        return _int64(int(value)) if math.isfinite(value) else None
    if isinstance(value, str) and _GO_INT.fullmatch(value):
        return _int64(int(value))
    return None


def to_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        return value
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:
            return None
    if isinstance(value, str):
        return _go_parse_float(value)
    return None


def _go_parse_float(text: str) -> float | None:
    if text.lower() in _GO_INF:
        return -math.inf if text.startswith("-") else math.inf
    if text.lower() == "nan":
        return math.nan
    try:
        if _GO_DEC_FLOAT.fullmatch(text):
            result = float(text)
        elif _GO_HEX_FLOAT.fullmatch(text):
            result = float.fromhex(text)
        else:
            return None
    except (OverflowError, ValueError):
        return None
    # Go reports overflow as an error (ErrRange), and the getter then returns the default.
    return None if math.isinf(result) else result


def to_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        return _GO_BOOL.get(value)
    return None


def to_str(value: Any) -> str | None:
    # Kyverno does not stringify: a number under a string getter yields the default.
    return value if isinstance(value, str) else None


def _get(view: Mapping[str, Any], key: str, default: T, convert: Callable[[Any], T | None]) -> T:
    args = arguments(view)
    if args is None or key not in args:
        return default
    converted = convert(args[key])
    return default if converted is None else converted


def _get_slice(
    view: Mapping[str, Any], key: str, default: list[T], convert: Callable[[Any], T | None]
) -> list[T]:
    args = arguments(view)
    if args is None:
        return default
    items = args.get(key)
    if not isinstance(items, list | tuple):
        return default
    converted = (convert(item) for item in items)
    return [item for item in converted if item is not None]


def get_string_argument(view: Mapping[str, Any], key: str, default: str) -> str:
    return _get(view, key, default, to_str)


def get_int_argument(view: Mapping[str, Any], key: str, default: int) -> int:
    return _get(view, key, default, to_int)


def get_float_argument(view: Mapping[str, Any], key: str, default: float) -> float:
    return _get(view, key, default, to_float)


def get_bool_argument(view: Mapping[str, Any], key: str, default: bool) -> bool:
    return _get(view, key, default, to_bool)


def get_string_slice_argument(
    view: Mapping[str, Any], key: str, default: Sequence[str]
) -> list[str]:
    return _get_slice(view, key, list(default), to_str)


def get_int_slice_argument(view: Mapping[str, Any], key: str, default: Sequence[int]) -> list[int]:
    return _get_slice(view, key, list(default), to_int)


def get_float_slice_argument(
    view: Mapping[str, Any], key: str, default: Sequence[float]
) -> list[float]:
    return _get_slice(view, key, list(default), to_float)


def get_bool_slice_argument(
    view: Mapping[str, Any], key: str, default: Sequence[bool]
) -> list[bool]:
    return _get_slice(view, key, list(default), to_bool)
