"""CheckResponse -> Decision (header append choice) and the bodies of denials."""

from __future__ import annotations

import json

import pytest
from google.protobuf import wrappers_pb2

from authz_server.decision import AppendAction, DecidedBy, HeaderMutation, deny
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


def test_policy_text_body_becomes_the_jsonrpc_message_for_an_mcp_request():
    """MCP SDK clients drop a text/plain denial body; the policy's words must reach the agent."""
    own = deny(
        401,
        body="merging pull requests is reserved for humäns",
        reason="no",
        headers=(HeaderMutation("www-authenticate", "Bearer"),),
    )
    decision = render_denial(own, Decoded(messages=(_message(),)))
    assert json.loads(decision.body) == {
        "jsonrpc": "2.0",
        "id": 5,
        "error": {"code": POLICY_DENIED, "message": "merging pull requests is reserved for humäns"},
    }
    assert "humäns" in decision.body  # readable for bodyContains in policy test files
    assert decision.http_status == 401
    assert [(h.key, h.value) for h in decision.headers] == [
        ("content-type", "application/json"),
        ("www-authenticate", "Bearer"),
    ]


def test_policy_body_with_its_own_content_type_is_sent_as_given():
    header = HeaderMutation("Content-Type", "text/plain")
    own = deny(body="mine", reason="no", headers=(header,))
    assert render_denial(own, Decoded(messages=(_message(),))) == own


def test_policy_body_for_a_batch_and_a_notification():
    batch = render_denial(
        deny(body="mine"), Decoded(messages=(_message(id_=1), _message(id_=2)), batch=True)
    )
    assert [(e["id"], e["error"]["message"]) for e in json.loads(batch.body)] == [
        (1, "mine"),
        (2, "mine"),
    ]
    note = render_denial(deny(body="mine"), Decoded(messages=(_message(Kind.NOTIFICATION, None),)))
    assert json.loads(note.body) == {
        "jsonrpc": "2.0",
        "error": {"code": POLICY_DENIED, "message": "mine"},
    }


def test_without_an_mcp_message_policy_body_is_as_given_and_reason_is_text():
    own = deny(body="mine", reason="no")
    assert render_denial(own, NO_MESSAGE) == own
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
