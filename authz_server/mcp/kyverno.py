"""Kyverno's ``mcp`` CEL library, minus CEL: the MCPRequest view, ``Parse`` and the argument
getters, as pure functions the CEL engine wraps.

The getters depart from Kyverno's on purpose. Kyverno's (like mcp-go's) return the default when
a present argument does not convert, and convert with Go's ``strconv``; a policy then reads
``force`` as false while the MCP Python SDK hands the tool ``force=True`` for ``"yes"``. Here a
getter converts as the SDK does (pydantic's lax mode, :mod:`authz_server.mcp._lax`) and raises
:class:`ArgumentError` for a present argument that does not convert, so the policy errors
instead of reading the default. An absent argument still reads as the default.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from authz_server.errors import AuthzServerError
from authz_server.mcp import _lax, _view, paths
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
    """``mcp.Parse(body)``: one JSON-RPC message to its view, through the same strict decoder,
    with Kyverno's rules for params (:func:`authz_server.mcp._extract.message`, ``lax``): a
    ``tools/call`` whose ``arguments`` is not an object parses, and its getters give their
    defaults; the params of a method Kyverno does not read are not looked at.

    Stricter than Kyverno where Go would accept an ambiguous body (duplicate keys, a lone
    surrogate, a batch is refused by both): those raise instead of yielding a view.
    """
    try:
        body = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    except (UnicodeEncodeError, TypeError) as exc:
        raise KyvernoParseError(f"mcp.Parse: {exc}") from None
    decoded = decode(body, _PARSE_HEADERS, lax=True)
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


class ArgumentError(AuthzServerError, ValueError):
    """A present argument does not convert to the getter's type: a CEL evaluation error for the
    policy (denied under ``failurePolicy: Fail``), never the default. The text names the getter
    and the type, never the value (it may be a secret)."""


def _to_path(value: Any) -> str | None:
    if not isinstance(value, str) or "\x00" in value:
        return None
    return paths.clean_path(value)


# The getters' conversions, by CEL type name (see authz_server.mcp._lax for the rules); "path"
# is a string cleaned as a filesystem path (authz_server.mcp.paths).
_CONVERT: Mapping[str, Callable[[Any], Any]] = {
    "string": _lax.to_str,
    "int": _lax.to_int,
    "double": _lax.to_float,
    "bool": _lax.to_bool,
    "path": _to_path,
}


def _get(view: Mapping[str, Any], key: str, default: T, name: str, kind: str) -> T:
    args = arguments(view)
    if args is None or key not in args:
        return default
    converted = _CONVERT[kind](args[key])
    if converted is None:
        raise ArgumentError(f"mcp.{name}: the argument does not convert to {kind}")
    return converted  # type: ignore[no-any-return]


def _get_slice(
    view: Mapping[str, Any], key: str, default: list[T], name: str, kind: str
) -> list[T]:
    args = arguments(view)
    if args is None or key not in args:
        return default
    converted = _lax.to_list(args[key], _CONVERT[kind])
    if converted is None:
        raise ArgumentError(f"mcp.{name}: the argument does not convert to list({kind})")
    return converted


def get_string_argument(view: Mapping[str, Any], key: str, default: str) -> str:
    return _get(view, key, default, "GetStringArgument", "string")


def get_int_argument(view: Mapping[str, Any], key: str, default: int) -> int:
    return _get(view, key, default, "GetIntArgument", "int")


def get_float_argument(view: Mapping[str, Any], key: str, default: float) -> float:
    return _get(view, key, default, "GetFloatArgument", "double")


def get_bool_argument(view: Mapping[str, Any], key: str, default: bool) -> bool:
    return _get(view, key, default, "GetBoolArgument", "bool")


def get_string_slice_argument(
    view: Mapping[str, Any], key: str, default: Sequence[str]
) -> list[str]:
    return _get_slice(view, key, list(default), "GetStringSliceArgument", "string")


def get_int_slice_argument(view: Mapping[str, Any], key: str, default: Sequence[int]) -> list[int]:
    return _get_slice(view, key, list(default), "GetIntSliceArgument", "int")


def get_float_slice_argument(
    view: Mapping[str, Any], key: str, default: Sequence[float]
) -> list[float]:
    return _get_slice(view, key, list(default), "GetFloatSliceArgument", "double")


def get_bool_slice_argument(
    view: Mapping[str, Any], key: str, default: Sequence[bool]
) -> list[bool]:
    return _get_slice(view, key, list(default), "GetBoolSliceArgument", "bool")


def get_path_argument(view: Mapping[str, Any], key: str, default: str) -> str:
    """Not Kyverno's: a string argument as the filesystem path it names once cleaned
    (:func:`authz_server.mcp.paths.clean_path`); the default, as given, when absent."""
    return _get(view, key, default, "GetPathArgument", "path")


def get_path_slice_argument(view: Mapping[str, Any], key: str, default: Sequence[str]) -> list[str]:
    """Not Kyverno's: :func:`get_path_argument` for a list of strings."""
    return _get_slice(view, key, list(default), "GetPathSliceArgument", "path")
