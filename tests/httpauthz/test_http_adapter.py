"""The HTTP authorizer's adapter: a received request to the pipeline's Request and to Kyverno's
``object``, and a decision back to the HTTP answer a gateway reads."""

from __future__ import annotations

import json

import pytest

from authz_server.decision import AppendAction, DecidedBy, HeaderMutation, allow, deny
from authz_server.httpauthz import (
    HttpRequest,
    NestedRequestError,
    reply_from_decision,
    request_from_http,
)
from authz_server.request import HTTP

# What Envoy's http_service sends for an agent's tools/call (deploy/envoy/envoy-http-service.yaml
# forwards these headers): the client's method and path, the buffered body.
ENVOY_HEADERS = (
    ("host", "mcp.example.com"),
    ("content-length", "61"),
    ("authorization", "Bearer abc"),
    ("content-type", "application/json"),
    ("mcp-protocol-version", "2025-11-25"),
    ("mcp-session-id", "s-1"),
    ("x-envoy-auth-partial-body", "false"),
    ("x-forwarded-proto", "https"),
    ("x-request-id", "r-9"),
)
BODY = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}'[:61]


def test_a_forwarded_request_is_the_request_to_judge() -> None:
    request = request_from_http(HttpRequest("POST", "/mcp?x=1", "1.1", ENVOY_HEADERS, BODY))
    assert request.transport == HTTP
    assert (request.method, request.path, request.query) == ("POST", "/mcp", "x=1")
    assert (request.host, request.scheme, request.protocol) == (
        "mcp.example.com",
        "https",
        "HTTP/1.1",
    )
    assert request.request_id == "r-9" and request.body == BODY and request.size == len(BODY)
    assert not request.body_truncated
    assert request.header("Authorization") == "Bearer abc"
    assert request.headers[":path"] == "/mcp?x=1" and request.headers[":method"] == "POST"
    assert request.headers[":authority"] == "mcp.example.com"
    attributes = request.check_request.attributes
    assert attributes.method == "POST" and attributes.host == "mcp.example.com"
    assert [v.string_value for v in attributes.header["Mcp-Session-Id"].values] == ["s-1"]
    assert "Host" not in attributes.header  # Go's server keeps it out of Header
    assert attributes.contentLength == len(BODY) and attributes.body == BODY


def test_repeated_header_lines_are_joined_for_the_pipeline_and_listed_for_policies() -> None:
    headers = (("Host", "h"), ("X-Tag", "a"), ("x-tag", "b"))
    request = request_from_http(HttpRequest("GET", "/", "1.1", headers))
    assert request.headers["x-tag"] == "a,b"
    values = request.check_request.attributes.header["X-Tag"].values
    assert [v.string_value for v in values] == ["a", "b"]


def test_the_gateway_marking_the_body_cut_makes_it_truncated() -> None:
    headers = (*ENVOY_HEADERS[:6], ("x-envoy-auth-partial-body", "true"))
    assert request_from_http(HttpRequest("POST", "/mcp", "1.1", headers, BODY)).body_truncated


def test_a_scheme_is_taken_from_x_forwarded_proto_only_when_it_is_http_or_https() -> None:
    for sent, scheme in (("https", "https"), ("HTTP", "http"), ("gopher", ""), ("", "")):
        headers = (("Host", "h"), ("X-Forwarded-Proto", sent))
        assert request_from_http(HttpRequest("GET", "/", "1.1", headers)).scheme == scheme


def test_an_absolute_target_names_scheme_and_host() -> None:
    request = request_from_http(
        HttpRequest("GET", "http://api.example:8080/a%2Fb?c=d", "1.1", (("Host", "proxy"),))
    )
    assert (request.scheme, request.host, request.path) == ("http", "api.example:8080", "/a%2Fb")
    assert request.check_request.attributes.path == "/a/b"  # decoded, as Go's URL.Path


def test_a_nested_request_is_judged_instead_of_the_one_carrying_it() -> None:
    raw = (
        b"PUT /upload?mode=fast HTTP/1.1\r\nHost: http-srv.app\r\nFoo: bar\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )
    outer = HttpRequest("POST", "/", "1.1", (("Host", "authz"), ("Foo", "outer")), raw)
    request = request_from_http(outer, nested=True)
    assert (request.method, request.path, request.query, request.host) == (
        "PUT", "/upload", "mode=fast", "http-srv.app",
    )  # fmt: skip
    assert request.body == b"hello" and request.header("foo") == "bar"
    attributes = request.check_request.attributes
    assert [v.string_value for v in attributes.header["Foo"].values] == ["bar"]
    assert attributes.query["mode"].values[0].string_value == "fast"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not an http request",
        b"GET / HTTP/1.1\r\nHost: h\r\n",  # the head never ends
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nshort",
        b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 requires Host
    ],
)
def test_a_nested_body_that_is_not_one_complete_request_is_refused(raw: bytes) -> None:
    with pytest.raises(NestedRequestError):
        request_from_http(HttpRequest("POST", "/", "1.1", (("Host", "h"),), raw), nested=True)


def test_an_allow_is_200_without_a_body() -> None:
    reply = reply_from_decision(allow(policy="p", dynamic_metadata={"decision_id": "d-1"}))
    assert (reply.status, reply.body) == (200, b"")
    assert ("x-authz-decision-id", "d-1") in reply.headers


def test_a_denial_keeps_its_status_headers_and_body() -> None:
    challenge = HeaderMutation("WWW-Authenticate", 'Bearer error="invalid_token"')
    reply = reply_from_decision(
        deny(401, body="who are you?", headers=(challenge,), decided_by=DecidedBy.IDENTITY)
    )
    assert reply.status == 401 and reply.body == b"who are you?"
    assert ("www-authenticate", 'Bearer error="invalid_token"') in reply.headers
    assert ("content-type", "text/plain; charset=utf-8") in reply.headers


def test_a_denial_is_never_a_2xx_nor_a_3xx() -> None:
    # The -32042 URL elicitation travels as a 200 denial over gRPC; over HTTP any 2xx is an
    # allow to Envoy and agentgateway.
    json_type = HeaderMutation(
        "content-type", "application/json", AppendAction.OVERWRITE_IF_EXISTS_OR_ADD
    )
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "error": {"code": -32042, "message": "ask"}})
    for status in (200, 204, 302, 0, 600):
        reply = reply_from_decision(deny(status, body=body, headers=(json_type,)))
        assert reply.status == 403, status
        assert ("content-type", "application/json") in reply.headers
    assert reply_from_decision(deny(503)).status == 503
    assert reply_from_decision(deny(413)).status == 413
