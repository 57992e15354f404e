"""The envoy library builds the same CheckResponse Kyverno builds (kyverno-semantics §2.1)."""

from __future__ import annotations

import pytest
from google.protobuf import json_format

from authz_server.cel import CelCompileError, CelEvaluationError
from authz_server.envoy.pb.envoy.service.auth.v3 import external_auth_pb2


def _as_dict(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def test_allowed_response_has_status_zero_and_empty_ok_response(cel_eval):
    response = cel_eval("envoy.Allowed().Response()")
    assert isinstance(response, external_auth_pb2.CheckResponse)
    assert response.HasField("status") and response.status.code == 0
    assert response.HasField("ok_response")
    assert _as_dict(response) == {"status": {}, "ok_response": {}}


def test_denied_response_has_permission_denied_and_http_status(cel_eval):
    response = cel_eval('envoy.Denied(401).WithBody("go away").Response()')
    assert _as_dict(response) == {
        "status": {"code": 7},
        "denied_response": {"status": {"code": "Unauthorized"}, "body": "go away"},
    }


def test_denied_accepts_any_integer_status(cel_eval):
    response = cel_eval("envoy.Denied(299).Response()")
    assert response.denied_response.status.code == 299


def test_header_leaves_append_action_at_its_default(cel_eval):
    option = cel_eval('envoy.Header("x-a", "1")')
    assert _as_dict(option) == {"header": {"key": "x-a", "value": "1"}}
    assert not option.HasField("append")


def test_keep_empty_value_both_overloads(cel_eval):
    assert cel_eval('envoy.Header("x", "").KeepEmptyValue()').keep_empty_value is True
    assert cel_eval('envoy.Header("x", "").KeepEmptyValue(false)').keep_empty_value is False


def test_ok_builders_fill_every_ok_response_field_in_order(cel_eval):
    response = cel_eval(
        "envoy.Allowed()"
        '.WithHeader("x-one", "1")'
        '.WithHeader(envoy.Header("x-two", "2"))'
        '.WithoutHeader("authorization")'
        '.WithResponseHeader("x-resp", "r")'
        '.WithResponseHeader(envoy.Header("x-resp2", "r2").KeepEmptyValue())'
        '.WithQueryParam("a", "b")'
        '.WithQueryParam(envoy.QueryParam("c", "d"))'
        '.WithoutQueryParam("secret")'
        ".Response()"
    )
    assert _as_dict(response) == {
        "status": {},
        "ok_response": {
            "headers": [
                {"header": {"key": "x-one", "value": "1"}},
                {"header": {"key": "x-two", "value": "2"}},
            ],
            "headers_to_remove": ["authorization"],
            "response_headers_to_add": [
                {"header": {"key": "x-resp", "value": "r"}},
                {"header": {"key": "x-resp2", "value": "r2"}, "keep_empty_value": True},
            ],
            "query_parameters_to_set": [{"key": "a", "value": "b"}, {"key": "c", "value": "d"}],
            "query_parameters_to_remove": ["secret"],
        },
    }


def test_denied_with_header_both_overloads(cel_eval):
    response = cel_eval(
        'envoy.Denied(401).WithHeader("www-authenticate", "Bearer")'
        '.WithHeader(envoy.Header("x-b", "2")).Response()'
    )
    headers = [(h.header.key, h.header.value) for h in response.denied_response.headers]
    assert headers == [("www-authenticate", "Bearer"), ("x-b", "2")]


def test_with_message_sets_status_message(cel_eval):
    response = cel_eval('envoy.Denied(403).Response().WithMessage("because")')
    assert response.status.code == 7 and response.status.message == "because"


def test_with_message_on_a_response_without_status_is_an_error(cel_eval):
    with pytest.raises(CelEvaluationError, match="no status"):
        cel_eval('envoy.service.auth.v3.CheckResponse{}.WithMessage("x")')


def test_with_metadata_replaces_the_metadata(cel_eval):
    response = cel_eval(
        'envoy.Allowed().Response().WithMetadata({"a": "1"}).WithMetadata({"b": {"c": 2}})'
    )
    assert _as_dict(response)["dynamic_metadata"] == {"b": {"c": 2.0}}


def test_raw_literals_compile_and_evaluate(cel_eval):
    response = cel_eval(
        "envoy.service.auth.v3.CheckResponse{"
        "status: google.rpc.Status{code: 16},"
        "denied_response: envoy.service.auth.v3.DeniedHttpResponse{body: 'no token'},"
        'dynamic_metadata: {"foo": "bar"}}'
    )
    assert response.status.code == 16
    assert response.denied_response.body == "no token"
    assert _as_dict(response)["dynamic_metadata"] == {"foo": "bar"}


def test_builders_never_change_their_receiver(cel_eval):
    assert cel_eval('cel.bind(d, envoy.Denied(403), d.WithBody("x").Response() != d.Response())')


@pytest.mark.parametrize(
    "source",
    [
        'envoy.Denied(403).WithoutHeader("x")',  # Ok-only builder on a denial
        'envoy.Allowed().WithBody("x")',  # denial-only builder on an allow
        'envoy.Denied("403")',
        "envoy.Header(1, 2)",
    ],
)
def test_misuse_is_a_compile_error(cel_eval, source):
    with pytest.raises(CelCompileError):
        cel_eval(source)
