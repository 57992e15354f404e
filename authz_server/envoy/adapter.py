"""Translate between Envoy's ext_authz v3 messages and the pipeline's plain values.

This is the only module that reads or writes CheckRequest/CheckResponse fields; the decoder and
the engine see a :class:`Request` and return a :class:`Decision`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from google.protobuf import json_format

from authz_server.decision import PERMISSION_DENIED, Decision, HeaderMutation
from authz_server.envoy.pb.envoy.config.core.v3 import base_pb2
from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2
from authz_server.request import GRPC, DeferredRequest, Peer, Request, deferred

CheckRequest = external_auth_pb2.CheckRequest
CheckResponse = external_auth_pb2.CheckResponse

PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"


def request_from_check(check: Any) -> Request:
    """Build a :class:`Request` from a CheckRequest.

    The body is marked truncated when the gateway says so (``x-envoy-auth-partial-body: true``,
    or agentgateway's ``size`` of -1, which since v1.2 means "cut"), when ``size`` counts other
    than the bytes forwarded, or when ``content-length`` promises more than arrived. A truncated
    body is never trusted.
    """
    attributes = check.attributes
    http = attributes.request.http
    headers = {k.lower(): v for k, v in http.headers.items()}
    if http.HasField("header_map"):
        _merge_header_map(headers, http.header_map)
        check = _with_headers(check, headers)
    body = http.raw_body or http.body.encode()
    path, _, query = http.path.partition("?")
    return _CheckedRequest.filled(
        method=http.method or headers.get(":method", ""),
        path=path,
        query=query or http.query,
        host=http.host or headers.get(":authority", ""),
        scheme=http.scheme or headers.get(":scheme", ""),
        protocol=http.protocol,
        request_id=http.id,
        headers=headers,
        body=body,
        body_truncated=_is_truncated(headers, body, http.size),
        size=http.size,
        # Converted here, not on first read: metadata the server cannot read (a NaN in a
        # Struct) must fail the check as unreadable, not reach a stage as a missing claim.
        # Without metadata, the common case, it costs one emptiness test.
        metadata=_metadata(attributes.metadata_context),
        check_request=check,
        transport=GRPC,
    )


class _CheckedRequest(DeferredRequest):
    """The Request of a CheckRequest: the peers and context extensions are converted when a
    stage first reads them (the destination and the extensions by none on the common path),
    not on every check."""

    __slots__ = ()
    source = deferred("source", lambda request: _peer_of(request, "source"))
    destination = deferred("destination", lambda request: _peer_of(request, "destination"))
    context_extensions = deferred(
        "context_extensions",
        lambda request: dict(request.check_request.attributes.context_extensions),
    )


def _peer_of(request: Request, which: str) -> Peer:
    attributes = request.check_request.attributes
    return _peer(getattr(attributes, which)) if attributes.HasField(which) else Peer()


def _merge_header_map(headers: dict[str, str], header_map: Any) -> None:
    # With encode_raw_headers Envoy sends one entry per header line and leaves `headers` empty;
    # repeated lines are joined with "," exactly as Envoy does for the `headers` map.
    for entry in header_map.headers:
        key = entry.key.lower()
        value = entry.raw_value.decode("utf-8", "replace") if entry.raw_value else entry.value
        headers[key] = f"{headers[key]},{value}" if key in headers else value


def _with_headers(check: Any, headers: dict[str, str]) -> Any:
    """A copy of ``check`` whose ``headers`` map holds ``headers``.

    Policies read ``object.attributes.request.http.headers``; with ``encode_raw_headers`` that map
    arrives empty and every header-keyed policy would silently stop applying. Only requests that
    use ``header_map`` pay for the copy; the message Envoy sent is left as it was.
    """
    copy = CheckRequest()
    copy.CopyFrom(check)
    target = copy.attributes.request.http.headers
    target.clear()
    target.update(headers)
    return copy


def _is_truncated(headers: dict[str, str], body: bytes, size: int) -> bool:
    # size 0: no body forwarding configured, nothing to compare. A "false" header proves
    # nothing: agentgateway's gRPC mode forwards a client's copy unchanged.
    if size < 0 or (size > 0 and size != len(body)):
        return True
    if headers.get(PARTIAL_BODY_HEADER, "").strip().lower() == "true":
        return True
    length = headers.get("content-length", "")
    return length.isdigit() and int(length) > len(body)


def _peer(peer: Any) -> Peer:
    socket = peer.address.socket_address
    return Peer(
        address=socket.address or peer.address.pipe.path,
        port=socket.port_value,
        principal=peer.principal,
        service=peer.service,
        certificate=unquote(peer.certificate) if peer.certificate else "",
        labels=dict(peer.labels),
    )


def _metadata(metadata: Any) -> dict[str, Any]:
    if not metadata.filter_metadata:
        return {}
    return {
        namespace: json_format.MessageToDict(struct)
        for namespace, struct in metadata.filter_metadata.items()
    }


def response_from_decision(decision: Decision) -> Any:
    """Build the CheckResponse for a decision.

    A denial always carries a non-zero ``status.code``: an empty or zero status means allow to
    Envoy, and a denial must never travel as an aborted RPC (``failure_mode_allow`` would let it
    through).
    """
    response = CheckResponse()
    if decision.allowed:
        response.status.code = 0
        ok = response.ok_response
        ok.SetInParent()
        # Each repeated field only when there is something to add: an empty extend costs as
        # much as a short one.
        if decision.headers:
            ok.headers.extend(_header_options(decision.headers))
        if decision.headers_to_remove:
            ok.headers_to_remove.extend(decision.headers_to_remove)
        if decision.response_headers_to_add:
            ok.response_headers_to_add.extend(_header_options(decision.response_headers_to_add))
        for key, value in decision.query_parameters_to_set:
            ok.query_parameters_to_set.add(key=key, value=value)
        if decision.query_parameters_to_remove:
            ok.query_parameters_to_remove.extend(decision.query_parameters_to_remove)
    else:
        response.status.code = decision.grpc_code or PERMISSION_DENIED
        denied = response.denied_response
        denied.status.code = decision.http_status or 403
        if decision.headers:
            denied.headers.extend(_header_options(decision.headers))
        denied.body = decision.body
    if decision.message:
        response.status.message = decision.message
    if decision.dynamic_metadata:
        _set_metadata(response.dynamic_metadata, decision.dynamic_metadata)
    return response


def _set_metadata(struct: Any, metadata: Mapping[str, Any]) -> None:
    """``struct.update(metadata)``, with the string values (the decision id and the policy on
    every check) set directly: Struct.update converts value by value in Python."""
    fields = struct.fields
    others: dict[str, Any] = {}
    for key, value in metadata.items():
        if type(value) is str:
            fields[key].string_value = value
        else:
            others[key] = value
    if others:
        struct.update(others)


def _header_options(mutations: tuple[HeaderMutation, ...]) -> list[Any]:
    return [
        base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=m.key, value=m.value),
            append_action=int(m.action),
            keep_empty_value=m.keep_empty_value,
        )
        for m in mutations
    ]
