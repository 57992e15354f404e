"""A policy's response to a :class:`Decision`: Envoy's CheckResponse (Envoy mode) or Kyverno's
``http.CheckResponse`` (HTTP mode, :func:`decision_from_http_response`).

Header append semantics: Envoy up to 1.36 overwrote upstream headers unless the deprecated
``append`` wrapper said true, and ignored ``append_action``; later versions use ``append_action``
when ``append`` is absent, where the default (0) adds a second header line. ``envoy.Header``
leaves both unset, so the same policy would behave differently on old and new Envoy. Every
mutation here therefore carries an explicit action: ``append`` true gives APPEND_IF_EXISTS_OR_ADD,
false OVERWRITE_IF_EXISTS_OR_ADD; with no ``append`` an explicit non-zero action is kept and the
default 0 becomes OVERWRITE_IF_EXISTS_OR_ADD (what old Envoy did, so both agree). Response
headers (``response_headers_to_add``) always honoured ``append_action``, so theirs is kept as is.
"""

from __future__ import annotations

import functools
from typing import Any

from google.protobuf import json_format

from authz_server.cel.approval import APPROVAL_CODE
from authz_server.cel.http import response_kind
from authz_server.decision import (
    PERMISSION_DENIED,
    AppendAction,
    DecidedBy,
    Decision,
    HeaderMutation,
)
from authz_server.envoy.pb.envoy.service.auth.v3.external_auth_pb2 import CheckResponse
from authz_server.frozen import FrozenDict, freeze

FORBIDDEN = 403


def _action(option: Any, default_overwrite: bool) -> AppendAction:
    if option.HasField("append"):
        return (
            AppendAction.APPEND_IF_EXISTS_OR_ADD
            if option.append.value
            else AppendAction.OVERWRITE_IF_EXISTS_OR_ADD
        )
    action = int(option.append_action)
    if action == 0 and default_overwrite:
        return AppendAction.OVERWRITE_IF_EXISTS_OR_ADD
    try:
        return AppendAction(action)
    except ValueError:
        return AppendAction.OVERWRITE_IF_EXISTS_OR_ADD


def _mutations(options: Any, default_overwrite: bool = True) -> tuple[HeaderMutation, ...]:
    return tuple(
        HeaderMutation(
            key=o.header.key,
            value=o.header.value or o.header.raw_value.decode("utf-8", "replace"),
            action=_action(o, default_overwrite),
            keep_empty_value=o.keep_empty_value,
        )
        for o in options
    )


_EMPTY = FrozenDict()


def _struct(struct: Any) -> FrozenDict:
    # Frozen: a cached decision's metadata is shared by every request that got the same answer.
    return freeze(json_format.MessageToDict(struct)) if struct.fields else _EMPTY


def decision_from_response(response: Any, policy: str = "", validation_index: int = -1) -> Decision:
    """Translate what a validation returned. ``status.code`` 0 allows, as Envoy reads it."""
    code = int(response.status.code)
    message = response.status.message
    metadata = _struct(response.dynamic_metadata)
    if code == 0:
        ok = response.ok_response
        # Envoy lets the deprecated ok_response.dynamic_metadata override the response's.
        if ok.HasField("dynamic_metadata"):
            metadata = _struct(ok.dynamic_metadata)
        return Decision(
            allowed=True,
            grpc_code=0,
            headers=_mutations(ok.headers),
            headers_to_remove=tuple(ok.headers_to_remove),
            response_headers_to_add=_mutations(ok.response_headers_to_add, False),
            query_parameters_to_set=tuple((q.key, q.value) for q in ok.query_parameters_to_set),
            query_parameters_to_remove=tuple(ok.query_parameters_to_remove),
            dynamic_metadata=metadata,
            message=message,
            decided_by=DecidedBy.POLICY,
            policy=policy,
            validation_index=validation_index,
        )
    which = response.WhichOneof("http_response")
    denied = getattr(response, which) if which in ("denied_response", "error_response") else None
    status = int(denied.status.code) if denied is not None else 0
    if code == APPROVAL_CODE:
        reason = message or f"policy {policy!r} asks for a person's approval"
        return Decision(
            allowed=False,
            http_status=FORBIDDEN,
            grpc_code=code,
            decided_by=DecidedBy.POLICY,
            policy=policy,
            validation_index=validation_index,
            reason=f"approval required: {reason}",
            approval=reason,
        )
    return Decision(
        allowed=False,
        http_status=status or FORBIDDEN,
        body=denied.body if denied is not None else "",
        headers=_mutations(denied.headers) if denied is not None else (),
        dynamic_metadata=metadata,
        grpc_code=code,
        message=message,
        decided_by=DecidedBy.POLICY,
        policy=policy,
        validation_index=validation_index,
        reason=message or f"denied by policy {policy!r}",
    )


def decision_from_http_response(
    response: Any, policy: str = "", validation_index: int = -1
) -> Decision:
    """Translate an ``http.CheckResponse`` as Kyverno's default output does: ``ok`` allows (200),
    ``denied`` denies with 403 and its reason as the body. A response with both set is a denial
    here (Kyverno's output would allow it); one with neither denies, as Kyverno's does."""
    kind = response_kind(response)
    if kind == "ok":
        return Decision(
            allowed=True,
            grpc_code=0,
            decided_by=DecidedBy.POLICY,
            policy=policy,
            validation_index=validation_index,
        )
    if kind == "approval":
        reason = response.approval.reason or f"policy {policy!r} asks for a person's approval"
        return Decision(
            allowed=False,
            http_status=FORBIDDEN,
            grpc_code=APPROVAL_CODE,
            decided_by=DecidedBy.POLICY,
            policy=policy,
            validation_index=validation_index,
            reason=f"approval required: {reason}",
            approval=reason,
        )
    reason = response.denied.reason
    return Decision(
        allowed=False,
        http_status=FORBIDDEN,
        body=reason,
        grpc_code=PERMISSION_DENIED,
        decided_by=DecidedBy.POLICY,
        policy=policy,
        validation_index=validation_index,
        reason=reason or f"denied by policy {policy!r}",
    )


# Most answers are the same few responses (a constant allow, a fixed denial), and translating one
# costs more than evaluating all policies on the fast path. A Decision is an immutable value (its
# mappings are never mutated), so one instance can serve every request that got the same
# response from the same validation. Its metadata is frozen (:mod:`authz_server.frozen`), so no
# caller can change it for the next request. Large responses (a body echoing request data)
# bypass the cache to keep it a bounded amount of memory.
DECISION_CACHE_SIZE = 512
MAX_CACHED_RESPONSE = 4096


def cached_decision_from_response(response: Any, policy: str, validation_index: int) -> Decision:
    """:func:`decision_from_response`, memoized on the serialized response."""
    serialized = response.SerializeToString()
    if len(serialized) > MAX_CACHED_RESPONSE:
        return decision_from_response(response, policy, validation_index)
    return _decision_from_bytes(serialized, policy, validation_index)


@functools.lru_cache(maxsize=DECISION_CACHE_SIZE)
def _decision_from_bytes(serialized: bytes, policy: str, validation_index: int) -> Decision:
    return decision_from_response(CheckResponse.FromString(serialized), policy, validation_index)
