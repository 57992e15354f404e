"""Kyverno's MCPRequest, as plain values (the shape CEL policies written for Kyverno expect).

Field names are Kyverno's Go names. Conventions where Go's zero values have no direct Python
twin: an unset typed sub-object is None (Go nil pointer); a missing map inside a set one is {}
(Go nil map reads as empty); ``ToolCall.Arguments`` is None when absent (Go nil interface);
``ToolCall.Meta`` and ``Initialize.Capabilities`` carry the JSON objects as sent (JSON names,
not Go names). Only the methods Kyverno's parser fills are filled; others carry just Method/ID.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

KEYS = (
    "Method",
    "ID",
    "Paginated",
    "Initialize",
    "ResourceRead",
    "ToolCall",
    "PromptGet",
    "SetLogLevel",
    "Elicitation",
)

PAGINATED_METHODS = frozenset(
    {"resources/list", "resources/templates/list", "tools/list", "prompts/list"}
)

EMPTY_VIEW: Mapping[str, Any] = MappingProxyType({"Method": "", **dict.fromkeys(KEYS[1:])})


def _str(params: Mapping[str, Any], key: str) -> str:
    value = params.get(key)
    return value if isinstance(value, str) else ""


def _obj(params: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = params.get(key)
    return value if isinstance(value, dict) else {}


def build(method: str, id_: str | int | None, params: Mapping[str, Any]) -> dict[str, Any]:
    """The view of one message whose params the decoder has already validated."""
    view: dict[str, Any] = {"Method": method, "ID": id_, **dict.fromkeys(KEYS[2:])}
    if method == "tools/call":
        meta = params.get("_meta")
        view["ToolCall"] = {
            "Name": _str(params, "name"),
            "Arguments": params.get("arguments"),
            "Meta": meta if isinstance(meta, dict) else None,
        }
    elif method == "resources/read":
        view["ResourceRead"] = {"URI": _str(params, "uri"), "Arguments": _obj(params, "arguments")}
    elif method == "prompts/get":
        view["PromptGet"] = {"Name": _str(params, "name"), "Arguments": _obj(params, "arguments")}
    elif method in PAGINATED_METHODS:
        view["Paginated"] = {"Cursor": _str(params, "cursor")}
    elif method == "initialize":
        client = _obj(params, "clientInfo")
        view["Initialize"] = {
            "ProtocolVersion": _str(params, "protocolVersion"),
            "Capabilities": _obj(params, "capabilities"),
            "ClientInfo": {"Name": _str(client, "name"), "Version": _str(client, "version")},
        }
    elif method == "logging/setLevel":
        view["SetLogLevel"] = {"Level": _str(params, "level")}
    elif method == "elicitation/create":
        view["Elicitation"] = {
            "Message": _str(params, "message"),
            "RequestedSchema": params.get("requestedSchema"),
        }
    return view
