"""One parsed JSON value -> one :class:`McpMessage`: JSON-RPC shape checks and per-method fields.

The fields policies key on (tool name, uri, prompt name, arguments ...) must have the type MCP
defines, or the request is refused: a policy that compares ``ToolCall.Name`` with a string must
never see a number or a list there and fall through to allow.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from authz_server.mcp import _view
from authz_server.mcp._fail import Fail
from authz_server.mcp.message import FailureReason, Kind, McpMessage

META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
_INT64 = (-(2**63), 2**63 - 1)
_URI_METHODS = frozenset({"resources/read", "resources/subscribe", "resources/unsubscribe"})
_LIST_METHODS = _view.PAGINATED_METHODS | {"tasks/list"}
_TASK_METHODS = frozenset({"tasks/get", "tasks/result", "tasks/cancel", "tasks/update"})
# The methods whose params Kyverno's mcp.Parse unmarshals into a typed struct (an error there is
# a Parse error); it reads no params of any other method.
KYVERNO_TYPED = _view.PAGINATED_METHODS | {
    "initialize",
    "resources/read",
    "tools/call",
    "logging/setLevel",
    "prompts/get",
    "elicitation/create",
}


def _bad(method: str, why: str) -> Fail:
    return Fail(FailureReason.INVALID_PARAMS, f"{method}: {why}")


def _opt_str(params: Mapping[str, Any], key: str, method: str) -> str:
    value = params.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _bad(method, f"params.{key} is not a string")
    return value


def _req_str(params: Mapping[str, Any], key: str, method: str) -> str:
    if params.get(key) is None:
        raise _bad(method, f"params.{key} is missing")
    return _opt_str(params, key, method)


def _opt_obj(params: Mapping[str, Any], key: str, method: str) -> dict[str, Any] | None:
    value = params.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise _bad(method, f"params.{key} is not an object")


def _client_info(info: dict[str, Any] | None, method: str) -> dict[str, Any] | None:
    if info is not None:
        _opt_str(info, "name", method)
        _opt_str(info, "version", method)
    return info


def _id(value: Any) -> str | int:
    # bool is an int subclass; JSON true is never an id.
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Fail(
            FailureReason.INVALID_ID,
            f"id must be a string or an integer, not {type(value).__name__}",
        )
    if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
        raise Fail(FailureReason.INVALID_ID, "integer id out of range")
    return value


def message(obj: Any, header_version: str, *, lax: bool = False) -> McpMessage:
    """Validate one JSON-RPC message and pull out what policies need.

    ``lax`` holds the params only to what Kyverno's ``mcp.Parse`` holds them to (Go's typed
    unmarshalling): params only of the methods it reads (:data:`KYVERNO_TYPED`), a missing
    string field is empty, and ``tools/call`` ``arguments`` may be any JSON value (the argument
    getters then give their defaults). The request path never uses it."""
    if not isinstance(obj, dict):
        raise Fail(FailureReason.NOT_JSONRPC, "a message must be a JSON object")
    if obj.get("jsonrpc") != "2.0":
        raise Fail(FailureReason.NOT_JSONRPC, 'jsonrpc is not "2.0"')
    has_result = "result" in obj
    has_error = "error" in obj
    if "method" in obj:
        if has_result or has_error:
            raise Fail(FailureReason.AMBIGUOUS_MESSAGE, "method together with result or error")
        method = obj["method"]
        if not isinstance(method, str) or not method:
            raise Fail(FailureReason.INVALID_METHOD, "method must be a non-empty string")
        if "id" in obj:
            return _request(Kind.REQUEST, _id(obj["id"]), method, obj, header_version, lax)
        return _request(Kind.NOTIFICATION, None, method, obj, header_version, lax)
    if has_result and has_error:
        raise Fail(FailureReason.AMBIGUOUS_MESSAGE, "both result and error")
    if has_result:
        if "id" not in obj:
            raise Fail(FailureReason.INVALID_ID, "result without id")
        id_ = _id(obj["id"])
        return McpMessage(
            kind=Kind.RESULT, id=id_, result=obj["result"], kyverno=_view.build("", id_, {})
        )
    if has_error:
        error = obj["error"]
        if not isinstance(error, dict):
            raise Fail(FailureReason.NOT_JSONRPC, "error is not an object")
        # The one place a null id is legal: the error answers a request whose id was unreadable.
        id_ = None if obj.get("id") is None else _id(obj["id"])
        return McpMessage(kind=Kind.ERROR, id=id_, error=error, kyverno=_view.build("", id_, {}))
    raise Fail(FailureReason.NOT_JSONRPC, "neither method, result nor error")


def _request(
    kind: Kind,
    id_: str | int | None,
    method: str,
    obj: dict[str, Any],
    header_version: str,
    lax: bool = False,
) -> McpMessage:
    params = obj.get("params")
    if lax and method not in KYVERNO_TYPED:
        # Kyverno keeps just the method and id of these, whatever the params hold.
        return McpMessage(kind=kind, id=id_, method=method, kyverno=_view.build(method, id_, {}))
    if params is None:
        params = {}
    elif not isinstance(params, dict):
        raise _bad(method, "params is not an object")
    required = _opt_str if lax else _req_str
    meta = _opt_obj(params, "_meta", method)
    fields: dict[str, Any] = {}
    version = ""
    client_info = None
    if meta is not None:
        version = _opt_str(meta, META_VERSION, method)
        client_info = _client_info(_opt_obj(meta, META_CLIENT_INFO, method), method)
    version = version or header_version
    if method == "tools/call":
        fields["tool_name"] = required(params, "name", method)
        arguments = params.get("arguments")
        if lax and not isinstance(arguments, dict):
            arguments = None  # the view keeps the value as sent (see _view.build)
        else:
            arguments = _opt_obj(params, "arguments", method)
        fields["arguments"] = arguments
    elif method in _URI_METHODS:
        fields["uri"] = required(params, "uri", method)
        if method == "resources/read":
            fields["arguments"] = _opt_obj(params, "arguments", method)
    elif method == "prompts/get":
        fields["prompt_name"] = required(params, "name", method)
        arguments = _opt_obj(params, "arguments", method)
        if arguments is not None and not all(isinstance(v, str) for v in arguments.values()):
            raise _bad(method, "prompt arguments must be strings")
        fields["arguments"] = arguments
    elif method in _LIST_METHODS:
        fields["cursor"] = _opt_str(params, "cursor", method)
    elif method == "completion/complete":
        fields["ref"] = _opt_obj(params, "ref", method)
        fields["argument"] = _opt_obj(params, "argument", method)
    elif method in _TASK_METHODS:
        fields["task_id"] = _opt_str(params, "taskId", method)
    elif method == "subscriptions/listen":
        fields["subscriptions"] = _subscriptions(params, method)
    elif method == "logging/setLevel":
        fields["log_level"] = required(params, "level", method)
    elif method == "elicitation/create":
        _opt_str(params, "message", method)
    elif method == "initialize":
        version = version or _opt_str(params, "protocolVersion", method)
        client_info = client_info or _client_info(_opt_obj(params, "clientInfo", method), method)
        _opt_obj(params, "capabilities", method)
    return McpMessage(
        kind=kind,
        id=id_,
        method=method,
        params=params,
        protocol_version=version,
        meta=meta,
        client_info=client_info,
        kyverno=_view.build(method, id_, params),
        **fields,
    )


def _subscriptions(params: dict[str, Any], method: str) -> tuple[str, ...]:
    notifications = _opt_obj(params, "notifications", method) or {}
    uris = notifications.get("resourceSubscriptions")
    if uris is None:
        return ()
    if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
        raise _bad(method, "resourceSubscriptions must be a list of strings")
    return tuple(uris)
