"""agentgateway's MCP guardrail hook (``agentgateway.dev.ext_mcp.ExtMcp``, v1.3.0 and later).

agentgateway parses MCP itself and asks at the MCP layer: ``CheckRequest`` before a JSON-RPC
request goes upstream (its method, raw ``params`` and the client's headers), ``CheckResponse``
before a result goes back. The request is judged exactly as a ``Check`` of the same call: the
JSON-RPC body is rebuilt around the gateway's raw ``params`` bytes (so the decoder's strict checks
apply to them) and handed to the pipeline with the client's headers. A list result (``*/list``,
after the gateway merged its backends) is filtered for the caller.

Differences from ext_authz that a policy author sees:

* The gateway has already matched ``Mcp-Method``/``Mcp-Name``/``Mcp-Param-*`` to the body, and
  names in ``params`` may be unmuxed while the client's headers are muxed, so those headers are
  dropped before the decoder compares them.
* A denial cannot choose an HTTP status: it becomes a JSON-RPC error whose code the gateway picks
  from :class:`AuthorizationError.Code` (see :func:`error_code`); the policy's message is the
  error message and ``data`` carries the authorizer's own code and the decision id. A 401
  challenge (``WWW-Authenticate``) cannot be sent this way.
* The response hook carries no headers: the caller comes from the processor's ``metadata``
  (the recipe sends ``headers: request.headers``, and ``path``), so without it lists are filtered
  for an anonymous caller.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from google.protobuf import json_format

from authz_server.decision import Decision
from authz_server.envoy.adapter import CheckRequest, request_from_check
from authz_server.envoy.pb.agentgateway.dev.ext_mcp import ext_mcp_pb2 as pb
from authz_server.mcp.responses import LIST_METHODS
from authz_server.request import Request

log = logging.getLogger(__name__)

Judge = Callable[[Request], Decision]
FilterList = Callable[[Request, dict[str, Any], str], tuple[dict[str, Any], int]]

Code = pb.AuthorizationError.Code
# The id of the rebuilt request: the gateway keeps the client's own, which it does not send.
REQUEST_ID = "ext_mcp"
# Where the gateway's metadata_context reaches policies:
# object.attributes.metadata_context.filter_metadata["agentgateway.ext_mcp"].
METADATA_NAMESPACE = "agentgateway.ext_mcp"
# Headers that describe the client's HTTP body, not the rebuilt one, or that the gateway has
# already checked against the body (with names the body may spell differently).
_DROPPED = ("content-length", "content-encoding", "transfer-encoding", "mcp-method", "mcp-name")


def error_code(decision: Decision) -> int:
    """The gateway's error class for a denial (it maps them to JSON-RPC codes: PERMISSION_DENIED
    -32001, RESOURCE_EXHAUSTED -32003, INVALID -32600, UNKNOWN -32603)."""
    status = decision.http_status or 403
    if status == 429:
        return Code.RESOURCE_EXHAUSTED
    if status in (400, 411, 413, 415, 422):
        return Code.INVALID
    if status >= 500:
        return Code.UNKNOWN
    return Code.PERMISSION_DENIED


class ExtMcpAdapter:
    """Answers both RPCs; never raises (a failure is an UNKNOWN error, so the gateway refuses)."""

    def __init__(self, judge: Judge, filter_list: FilterList) -> None:
        self._judge = judge
        self._filter_list = filter_list

    def check_request(self, message: Any) -> Any:
        request = request_from_mcp(
            message.method,
            message.mcp_request if message.HasField("mcp_request") else None,
            _header_pairs(message.headers),
            _plain(message.metadata_context) if message.HasField("metadata_context") else {},
            message.service_names,
        )
        decision = self._judge(request)
        if not decision.allowed:
            return pb.McpRequestResult(error=authorization_error(decision))
        result = pb.McpRequestResult(**{"pass": pb.Pass()})
        for mutation in decision.headers:
            result.header_mutation.set.add(key=mutation.key, value=mutation.value.encode())
        result.header_mutation.remove.extend(decision.headers_to_remove)
        if decision.dynamic_metadata:
            result.metadata.update(dict(decision.dynamic_metadata))
        return result

    def check_response(self, message: Any) -> Any:
        if message.method not in LIST_METHODS:
            return pb.McpResponseResult(**{"pass": pb.Pass()})
        metadata = _plain(message.metadata_context) if message.HasField("metadata_context") else {}
        try:
            listed = json.loads(message.mcp_response)
        except (ValueError, UnicodeDecodeError):
            listed = None
        if not isinstance(listed, dict):
            error = pb.AuthorizationError(
                code=Code.UNKNOWN, reason="the authorizer could not read this list"
            )
            return pb.McpResponseResult(error=error)
        request = response_caller(message.method, metadata, message.service_names)
        filtered, hidden = self._filter_list(request, listed, message.method)
        if not hidden:
            return pb.McpResponseResult(**{"pass": pb.Pass()})
        mutated = json.dumps(filtered, ensure_ascii=False, separators=(",", ":")).encode()
        return pb.McpResponseResult(mutated=mutated)


def request_from_mcp(
    method: str,
    params: bytes | None,
    headers: Iterable[tuple[str, str]],
    metadata: Mapping[str, Any],
    service_names: Iterable[str] = (),
) -> Request:
    """The :class:`Request` of one MCP call as agentgateway describes it: a POST carrying the
    JSON-RPC request rebuilt around ``params`` as the gateway sent them."""
    body = b'{"jsonrpc":"2.0","id":"' + REQUEST_ID.encode() + b'","method":'
    body += json.dumps(method).encode()
    if params is not None:
        body += b',"params":' + params
    body += b"}"
    merged: dict[str, str] = {}
    for key, value in headers:
        key = key.lower()
        if key in _DROPPED or key.startswith("mcp-param-"):
            continue
        merged[key] = f"{merged[key]},{value}" if key in merged else value
    merged.setdefault(":method", str(metadata.get("method") or "POST"))
    merged.setdefault(":path", str(metadata.get("path") or "/"))
    if metadata.get("host"):
        merged.setdefault(":authority", str(metadata["host"]))
    merged["content-type"] = "application/json"
    check = CheckRequest()
    http = check.attributes.request.http
    http.headers.update(merged)
    http.method = merged[":method"]
    http.path = merged[":path"]
    http.host = merged.get(":authority", "")
    http.scheme = merged.get(":scheme", "")
    http.raw_body = body
    http.size = len(body)
    names = list(service_names)
    if names:
        check.attributes.context_extensions["mcp_service_names"] = ",".join(names)
    # The caller's headers (response hook) are headers, not metadata: they hold credentials.
    values = {k: v for k, v in metadata.items() if k != "headers"}
    if values:
        check.attributes.metadata_context.filter_metadata[METADATA_NAMESPACE].update(values)
    return request_from_check(check)


def response_caller(
    method: str, metadata: Mapping[str, Any], service_names: Iterable[str] = ()
) -> Request:
    """The caller of a list, for the response hook, which carries no headers: the processor's
    ``metadata`` brings them (``headers: request.headers``, ``path: request.path``)."""
    return request_from_mcp(method, None, _metadata_headers(metadata), metadata, service_names)


def authorization_error(decision: Decision) -> Any:
    """The gateway's error for a denial: the JSON-RPC message the policy chose, and in ``data``
    the authorizer's own error code and the decision id."""
    error = pb.AuthorizationError(code=error_code(decision))
    message, code, data = _jsonrpc_error(decision.body)
    error.reason = message or decision.reason or "request denied"
    details: dict[str, Any] = {}
    if isinstance(data, dict):
        details.update(data)
    elif data is not None:
        details["data"] = data
    if code is not None:
        details["code"] = code
    decision_id = decision.dynamic_metadata.get("decision_id")
    if decision_id:
        details["decision_id"] = decision_id
    if details:
        error.mcp_error = json.dumps(details, ensure_ascii=False, separators=(",", ":")).encode()
    return error


def _jsonrpc_error(body: str) -> tuple[str, int | None, Any]:
    try:
        payload = json.loads(body) if body else None
    except ValueError:
        return body.strip(), None, None
    if isinstance(payload, list) and payload:
        payload = payload[0]
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return "", None, None
    code = error.get("code")
    return str(error.get("message", "")), code if isinstance(code, int) else None, error.get("data")


def _header_pairs(headers: Iterable[Any]) -> list[tuple[str, str]]:
    return [(h.key, h.value.decode("utf-8", "replace")) for h in headers]


def _metadata_headers(metadata: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The caller's headers as the processor's metadata carries them (``headers:
    request.headers``): values may be strings or lists of strings."""
    headers = metadata.get("headers")
    if not isinstance(headers, Mapping):
        return []
    pairs: list[tuple[str, str]] = []
    for key, value in headers.items():
        for item in value if isinstance(value, list) else (value,):
            if isinstance(item, str):
                pairs.append((str(key), item))
    return pairs


def _plain(struct: Any) -> dict[str, Any]:
    value = json_format.MessageToDict(struct)
    return value if isinstance(value, dict) else {}
