"""JSON-RPC responses from an MCP server, as a response hook sees them: which ones answer a list
request, and the same body with those results filtered.

A response is recognised by the id of the request it answers (the request phase of the same
exchange saw the request), never by guessing from its shape, so a response to anything but a
list request is passed on without being parsed. Where the request could not be read here (a
compressed body), :data:`UNKNOWN` asks for recognition by shape instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from authz_server.errors import AuthzServerError

LIST_METHODS = frozenset(
    {"tools/list", "prompts/list", "resources/list", "resources/templates/list"}
)
# The key holding a list result's entries, by method (used to recognise a result by its shape).
_ENTRIES = {
    "tools": "tools/list",
    "prompts": "prompts/list",
    "resourceTemplates": "resources/templates/list",
    "resources": "resources/list",
}

ListRequests = Mapping[Hashable, str]
"""The list requests of one exchange: request id (see :func:`id_key`) -> method."""
UNKNOWN: None = None
"""The requests are not known: recognise list results by their shape."""

Filter = Callable[[dict[str, Any], str], tuple[dict[str, Any], int]]
"""(a list result, its method) -> (the result with hidden entries removed, how many)."""


class ResponseError(AuthzServerError):
    """A response that answers a list request cannot be read, so it cannot be filtered."""


def id_key(value: Any) -> Hashable:
    """A JSON-RPC id as a key that keeps ``1`` and ``"1"`` apart."""
    return (type(value) is str, value)


def list_requests(body: bytes) -> ListRequests | None:
    """The list requests in a request body (one message or a batch); empty when there is
    none; :data:`UNKNOWN` when the body is not JSON as sent (compressed, say)."""
    # Every JSON spelling of "list" either contains it or escapes a character of it.
    if b"list" not in body and b"\\u" not in body:
        return {} if _looks_like_json(body) else UNKNOWN
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return UNKNOWN
    found: dict[Hashable, str] = {}
    for message in document if isinstance(document, list) else (document,):
        if not isinstance(message, dict):
            continue
        method = message.get("method")
        if method in LIST_METHODS and "id" in message and _valid_id(message["id"]):
            found[id_key(message["id"])] = method
    return found


def _looks_like_json(body: bytes) -> bool:
    head = body.lstrip()[:1]
    return head in (b"{", b"[") or not head


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (
        isinstance(value, int | float) and not isinstance(value, bool)
    )


def rewrite(body: bytes, requests: ListRequests | None, keep: Filter) -> tuple[bytes | None, int]:
    """``body`` (one JSON-RPC message or a batch) with the list results it holds filtered:
    (the new body, or None when nothing was hidden; the number of entries hidden).

    :class:`ResponseError` when the body is not JSON: it answers a list request and cannot be
    checked. With ``requests`` :data:`UNKNOWN`, a body that is not JSON is not a list result
    and passes (returns None).
    """
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        if requests is UNKNOWN:
            return None, 0
        raise ResponseError(f"a list response is not JSON: {type(exc).__name__}") from None
    hidden = 0
    if isinstance(document, list):
        for index, message in enumerate(document):
            replaced, count = _filter_message(message, requests, keep)
            if count:
                document[index] = replaced
                hidden += count
    else:
        document, hidden = _filter_message(document, requests, keep)
    if not hidden:
        return None, 0
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode(), hidden


def _filter_message(message: Any, requests: ListRequests | None, keep: Filter) -> tuple[Any, int]:
    if not isinstance(message, dict) or "result" not in message or "id" not in message:
        return message, 0
    result = message["result"]
    if not isinstance(result, dict):
        return message, 0
    if requests is UNKNOWN:
        method = _method_by_shape(result)
    else:
        method = requests.get(id_key(message["id"])) if _valid_id(message["id"]) else None
    if method is None:
        return message, 0
    filtered, hidden = keep(result, method)
    if not hidden:
        return message, 0
    return {**message, "result": filtered}, hidden


def _method_by_shape(result: Mapping[str, Any]) -> str | None:
    if "content" in result or "contents" in result or "messages" in result:
        return None  # a tool call, resource read or prompt: never a list
    for key, method in _ENTRIES.items():
        if isinstance(result.get(key), list):
            return method
    return None
