"""CheckResponse -> Decision (header append choice) and the bodies of denials."""

from __future__ import annotations

import json

import pytest
from google.protobuf import wrappers_pb2

from authz_server.decision import AppendAction, DecidedBy, deny
from authz_server.envoy.pb.envoy.config.core.v3 import base_pb2
from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2
from authz_server.mcp import NO_MESSAGE, Decoded, DecodeFailure, FailureReason, Kind, McpMessage
from authz_server.policy.render import (
    HEADER_MISMATCH,
    POLICY_DENIED,
    render_decode_failure,
    render_denial,
)
from authz_server.policy.response import decision_from_response


def _option(append: bool | None = None, action: int = 0) -> base_pb2.HeaderValueOption:
    option = base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key="k", value="v"))
    option.append_action = action
    if append is not None:
        option.append.CopyFrom(wrappers_pb2.BoolValue(value=append))
    return option


@pytest.mark.parametrize(
    ("append", "action", "expected"),
    [
        (True, 0, AppendAction.APPEND_IF_EXISTS_OR_ADD),
        (False, 0, AppendAction.OVERWRITE_IF_EXISTS_OR_ADD),
        (None, 0, AppendAction.OVERWRITE_IF_EXISTS_OR_ADD),  # envoy.Header's default
        (None, 1, AppendAction.ADD_IF_ABSENT),
        (None, 3, AppendAction.OVERWRITE_IF_EXISTS),
    ],
)
def test_upstream_header_append_semantics(append, action, expected):
    response = external_auth_pb2.CheckResponse()
    response.status.code = 0
    response.ok_response.headers.append(_option(append, action))
    (header,) = decision_from_response(response, "p").headers
    assert header.action is expected


def test_response_headers_keep_their_action():
    response = external_auth_pb2.CheckResponse()
    response.ok_response.response_headers_to_add.append(_option())
    (header,) = decision_from_response(response).response_headers_to_add
    assert header.action is AppendAction.APPEND_IF_EXISTS_OR_ADD


def test_every_ok_field_and_metadata_is_preserved():
    response = external_auth_pb2.CheckResponse()
    response.status.message = "fine"
    ok = response.ok_response
    ok.headers_to_remove.append("authorization")
    ok.query_parameters_to_set.add(key="a", value="b")
    ok.query_parameters_to_remove.append("c")
    response.dynamic_metadata.update({"x": "y"})
    decision = decision_from_response(response, "p", 2)
    assert decision.allowed and decision.grpc_code == 0
    assert decision.headers_to_remove == ("authorization",)
    assert decision.query_parameters_to_set == (("a", "b"),)
    assert decision.query_parameters_to_remove == ("c",)
    assert decision.dynamic_metadata == {"x": "y"}
    assert (decision.message, decision.policy, decision.validation_index) == ("fine", "p", 2)


def test_denial_keeps_code_status_headers_body():
    response = external_auth_pb2.CheckResponse()
    response.status.code = 16
    response.denied_response.status.code = 401
    response.denied_response.body = "who are you"
    response.denied_response.headers.append(_option())
    decision = decision_from_response(response, "auth")
    assert (decision.allowed, decision.grpc_code, decision.http_status) == (False, 16, 401)
    assert decision.body == "who are you" and decision.headers[0].key == "k"


def test_denial_without_status_is_403_and_status_zero_allows():
    response = external_auth_pb2.CheckResponse()
    response.status.code = 7
    assert decision_from_response(response).http_status == 403
    allowed = external_auth_pb2.CheckResponse()
    allowed.denied_response.body = "ignored by Envoy"
    assert decision_from_response(allowed).allowed


def _message(kind: Kind = Kind.REQUEST, id_: int | None = 5) -> McpMessage:
    return McpMessage(kind=kind, id=id_, method="tools/call")


def test_mcp_denial_without_body_is_a_jsonrpc_error_with_the_id():
    decision = render_denial(deny(reason="no"), Decoded(messages=(_message(),)))
    assert json.loads(decision.body) == {
        "jsonrpc": "2.0",
        "id": 5,
        "error": {"code": POLICY_DENIED, "message": "no"},
    }
    assert (decision.headers[0].key, decision.headers[0].value) == (
        "content-type",
        "application/json",
    )
    assert decision.http_status == 403


def test_notification_error_has_no_id_and_batch_is_an_array():
    single = render_denial(
        deny(reason="no"), Decoded(messages=(_message(Kind.NOTIFICATION, None),))
    )
    assert "id" not in json.loads(single.body)
    batch = render_denial(
        deny(reason="no"), Decoded(messages=(_message(id_=1), _message(id_=2)), batch=True)
    )
    assert [e["id"] for e in json.loads(batch.body)] == [1, 2]


def test_policy_body_is_sent_as_given_and_non_mcp_gets_text():
    own = deny(body="mine", reason="no")
    assert render_denial(own, Decoded(messages=(_message(),))).body == "mine"
    text = render_denial(deny(reason="no"), NO_MESSAGE)
    assert text.body == "no\n" and text.headers[0].value == "text/plain"


@pytest.mark.parametrize(
    ("reason", "status", "code"),
    [
        (FailureReason.INVALID_JSON, 400, -32700),
        (FailureReason.NOT_JSONRPC, 400, -32600),
        (FailureReason.EMPTY_BATCH, 400, -32600),
        (FailureReason.HEADER_MISMATCH, 400, HEADER_MISMATCH),
        (FailureReason.TOO_LARGE, 413, -32600),
        (FailureReason.TRUNCATED, 413, -32700),
    ],
)
def test_decode_failures(reason, status, code):
    decoded = Decoded(failure=DecodeFailure(reason, "detail"))
    decision = render_decode_failure(deny(reason=str(reason), decided_by=DecidedBy.DECODE), decoded)
    body = json.loads(decision.body)
    assert (decision.http_status, body["error"]["code"], body["id"]) == (status, code, None)
