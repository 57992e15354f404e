"""CheckRequest -> Request and Decision -> CheckResponse, field by field."""

from __future__ import annotations

import dataclasses
from urllib.parse import quote

import pytest

from authz_server.decision import AppendAction, DecidedBy, HeaderMutation, allow, deny
from authz_server.envoy import request_from_check, response_from_decision
from authz_server.envoy.adapter import CheckRequest
from authz_server.envoy.pb.envoy.config.core.v3 import base_pb2
from authz_server.request import Peer, Request


def _check(**http_fields: object) -> CheckRequest:
    check = CheckRequest()
    http = check.attributes.request.http
    for key, value in http_fields.items():
        if key == "headers":
            http.headers.update(value)  # type: ignore[arg-type]
        else:
            setattr(http, key, value)
    return check


def test_http_attributes_are_copied_and_query_split_from_path() -> None:
    check = _check(
        method="POST",
        path="/messages?sessionId=abc",
        host="mcp.example",
        scheme="https",
        protocol="HTTP/2",
        id="1234",
        headers={":authority": "mcp.example", "Content-Type": "a/b"},
    )
    request = request_from_check(check)
    assert (request.method, request.path, request.query) == ("POST", "/messages", "sessionId=abc")
    assert (request.host, request.scheme, request.protocol) == ("mcp.example", "https", "HTTP/2")
    assert request.request_id == "1234"
    assert request.headers == {":authority": "mcp.example", "content-type": "a/b"}
    assert request.header("Content-Type") == "a/b"
    assert request.check_request is check


def test_raw_body_wins_over_body_and_body_string_is_utf8() -> None:
    assert request_from_check(_check(body="é")).body == "é".encode()
    assert request_from_check(_check(body="text", raw_body=b"\xff\x00")).body == b"\xff\x00"


def test_header_map_lines_merge_like_envoy() -> None:
    check = _check()
    hm = check.attributes.request.http.header_map
    hm.headers.add(key="X-Tool", raw_value=b"a")
    hm.headers.add(key="x-tool", raw_value=b"b")
    hm.headers.add(key="mcp-method", value="tools/call")
    request = request_from_check(check)
    assert request.headers == {"x-tool": "a,b", "mcp-method": "tools/call"}


def test_each_partial_body_signal_marks_the_body_truncated() -> None:
    assert not request_from_check(_check(body="{}", size=2)).body_truncated
    assert request_from_check(
        _check(body="{}", headers={"x-envoy-auth-partial-body": "true"})
    ).body_truncated
    assert not request_from_check(
        _check(body="{}", headers={"x-envoy-auth-partial-body": "false"})
    ).body_truncated
    assert request_from_check(_check(body="{}", size=10)).body_truncated
    assert request_from_check(_check(body="{}", headers={"content-length": "3"})).body_truncated


def test_agentgateway_size_minus_one_means_cut() -> None:
    # agentgateway >= 1.2 sends size -1 if and only if it cut the body at maxRequestBytes.
    request = request_from_check(_check(method="POST", body='{"jsonrpc":"2.0"', size=-1))
    assert request.size == -1
    assert request.body_truncated


def test_a_size_that_differs_from_the_body_either_way_is_truncation() -> None:
    assert request_from_check(_check(body="{}", size=1)).body_truncated
    assert request_from_check(_check(raw_body=b"{}", size=3)).body_truncated
    # No body forwarding configured: size 0, nothing to compare.
    assert not request_from_check(_check(method="GET", size=0)).body_truncated


def test_a_false_partial_body_header_never_proves_completeness() -> None:
    headers = {"x-envoy-auth-partial-body": "false"}
    assert request_from_check(_check(body="{}", size=-1, headers=headers)).body_truncated
    assert request_from_check(_check(body="{}", size=5, headers=headers)).body_truncated


def test_peers_certificate_extensions_and_metadata() -> None:
    check = CheckRequest()
    source = check.attributes.source
    source.address.socket_address.address = "10.0.0.7"
    source.address.socket_address.port_value = 51000
    source.principal = "spiffe://cluster/ns/agents/sa/bot"
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    source.certificate = quote(pem, safe="")
    check.attributes.destination.address.socket_address.address = "10.0.0.1"
    check.attributes.context_extensions["upstream"] = "github"
    check.attributes.metadata_context.filter_metadata["envoy.filters.http.jwt_authn"].update(
        {"payload": {"sub": "agent-1"}}
    )
    request = request_from_check(check)
    assert (request.source.address, request.source.port) == ("10.0.0.7", 51000)
    assert request.source.principal == "spiffe://cluster/ns/agents/sa/bot"
    assert request.source.certificate == pem
    assert request.destination.address == "10.0.0.1"
    assert request.context_extensions == {"upstream": "github"}
    assert request.metadata == {"envoy.filters.http.jwt_authn": {"payload": {"sub": "agent-1"}}}


def _full_check() -> CheckRequest:
    check = _check(method="POST", path="/mcp?x=1", host="h", headers={"a": "b"}, raw_body=b"{}")
    check.attributes.request.http.size = 2
    attributes = check.attributes
    attributes.source.address.socket_address.address = "10.0.0.7"
    attributes.source.labels["team"] = "a"
    attributes.destination.address.socket_address.address = "10.0.0.1"
    attributes.context_extensions["upstream"] = "github"
    attributes.metadata_context.filter_metadata["ns"].update({"k": "v"})
    return check


def _plain(request: Request) -> Request:
    return Request(**{f.name: getattr(request, f.name) for f in dataclasses.fields(Request)})


def test_the_request_is_a_plain_frozen_value_whatever_was_read() -> None:
    # The peers, extensions and metadata are converted when first read: before and after,
    # the request equals (both ways) a Request built directly with the same values, and no
    # field can be assigned.
    check = _full_check()
    unread = request_from_check(check)
    read = request_from_check(check)
    plain = _plain(read)  # reads every field
    assert read == plain and plain == read
    assert unread == plain and plain == unread
    assert unread != dataclasses.replace(plain, destination=Peer(address="10.9.9.9"))
    assert isinstance(unread, Request)
    assert unread.source.labels == {"team": "a"} and unread.metadata == {"ns": {"k": "v"}}
    for name in ("source", "destination", "metadata", "headers"):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(request_from_check(check), name, None)
    copy = dataclasses.replace(request_from_check(check), path="/other")
    assert copy.path == "/other" and copy.destination.address == "10.0.0.1"


def test_empty_check_request_gives_empty_request() -> None:
    request = request_from_check(CheckRequest())
    assert request.method == "" and request.body == b"" and not request.body_truncated


def test_allow_carries_every_mutation_with_explicit_append_action() -> None:
    decision = allow(
        headers=(
            HeaderMutation("x-agent", "bot"),
            HeaderMutation("x-trace", "1", AppendAction.APPEND_IF_EXISTS_OR_ADD),
        ),
        headers_to_remove=("authorization",),
        response_headers_to_add=(HeaderMutation("x-authz", "ok", keep_empty_value=True),),
        query_parameters_to_set=(("a", "1"),),
        query_parameters_to_remove=("token",),
        dynamic_metadata={"decision_id": "d-1"},
    )
    response = response_from_decision(decision)
    assert response.status.code == 0
    assert response.WhichOneof("http_response") == "ok_response"
    ok = response.ok_response
    assert [(h.header.key, h.header.value, h.append_action) for h in ok.headers] == [
        ("x-agent", "bot", base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD),
        ("x-trace", "1", base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD),
    ]
    assert not any(h.HasField("append") for h in ok.headers)
    assert list(ok.headers_to_remove) == ["authorization"]
    assert ok.response_headers_to_add[0].keep_empty_value
    assert [(q.key, q.value) for q in ok.query_parameters_to_set] == [("a", "1")]
    assert list(ok.query_parameters_to_remove) == ["token"]
    assert response.dynamic_metadata["decision_id"] == "d-1"


def test_plain_allow_still_selects_ok_response() -> None:
    response = response_from_decision(allow())
    assert response.status.code == 0
    assert response.WhichOneof("http_response") == "ok_response"


def test_deny_has_nonzero_status_http_code_headers_and_body() -> None:
    decision = deny(
        401,
        reason="no token",
        body='{"error":"x"}',
        headers=(
            HeaderMutation("content-type", "application/json"),
            HeaderMutation("www-authenticate", 'Bearer resource_metadata="u"'),
        ),
        message="no token",
    )
    response = response_from_decision(decision)
    assert response.status.code == 7
    assert response.status.message == "no token"
    denied = response.denied_response
    assert denied.status.code == 401
    assert denied.body == '{"error":"x"}'
    assert {h.header.key: h.header.value for h in denied.headers}["content-type"] == (
        "application/json"
    )


def test_deny_without_status_or_code_still_denies_with_403() -> None:
    from authz_server.decision import Decision

    response = response_from_decision(Decision(allowed=False, decided_by=DecidedBy.DEFAULT))
    assert response.status.code == 7
    assert response.denied_response.status.code == 403


def test_the_decision_id_metadata_copy_keeps_every_other_field() -> None:
    # Decision.with_metadata (run on every check) must equal dataclasses.replace: every field
    # set to a value other than its default survives the copy.
    decision = deny(
        401,
        reason="r",
        body="b",
        headers=(HeaderMutation("k", "v"),),
        headers_to_remove=("x",),
        response_headers_to_add=(HeaderMutation("r", "s"),),
        query_parameters_to_set=(("q", "1"),),
        query_parameters_to_remove=("t",),
        dynamic_metadata={"old": 1},
        message="m",
        decided_by=DecidedBy.IDENTITY,
        policy="p",
        validation_index=3,
        approval="why",
    )
    defaults = deny()
    assert all(
        getattr(decision, f.name) != getattr(defaults, f.name)
        for f in dataclasses.fields(decision)
        if f.name not in ("allowed", "grpc_code", "dry_run")
    )
    copied = decision.with_metadata({"decision_id": "d-1"})
    assert copied == dataclasses.replace(decision, dynamic_metadata={"decision_id": "d-1"})
    assert decision.dynamic_metadata == {"old": 1}


def test_dynamic_metadata_of_every_json_type_reaches_envoy_as_given() -> None:
    from google.protobuf import struct_pb2

    metadata = {
        "decision_id": "d-1",
        "policy": "p",
        "approval": {"id": "a-1", "decided": 1.5, "decided_by": None},
        "count": 3,
        "flag": True,
        "names": ["x", 2],
        "nothing": None,
    }
    expected = struct_pb2.Struct()
    expected.update(metadata)
    for decision in (allow(dynamic_metadata=metadata), deny(dynamic_metadata=metadata)):
        assert response_from_decision(decision).dynamic_metadata == expected
