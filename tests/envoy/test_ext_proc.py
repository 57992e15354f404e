"""ExtProcStream on the paths the wire tests do not drive: streamed and full-duplex request
bodies, trailers, what the request phase hands the pipeline, and the ways a list response is
refused (fail closed)."""

from __future__ import annotations

import gzip
import json
from typing import Any

from authz_server.decision import AppendAction, Decision, HeaderMutation, allow, deny
from authz_server.envoy.ext_proc import (
    ExtProcSettings,
    ExtProcStream,
    Mode,
    Oversize,
    pb,
)
from authz_server.envoy.pb.envoy.config.core.v3 import base_pb2
from authz_server.mcp.responses import ResponseError
from authz_server.request import Request

LIST = b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}'
TOOLS = {"tools": [{"name": "read"}, {"name": "hidden_drop"}]}


def _headers(*pairs: tuple[str, str], end: bool = False) -> Any:
    header_map = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
    )
    return pb.HttpHeaders(headers=header_map, end_of_stream=end)


class Gateway:
    """Feeds one stream; records what the pipeline was asked."""

    def __init__(
        self,
        decision: Decision | None = None,
        request_mode: int = Mode.BUFFERED,
        response_mode: int = Mode.STREAMED,
        settings: ExtProcSettings | None = None,
        filter_error: bool = False,
    ) -> None:
        self.judged: list[Request] = []
        self.decision = decision or allow(dynamic_metadata={"decision_id": "d-1"})
        self.filter_error = filter_error
        self.stream = ExtProcStream(self._judge, self._filter, settings or ExtProcSettings())
        self.modes = (request_mode, response_mode)
        self.first = True

    def _judge(self, request: Request) -> Decision:
        self.judged.append(request)
        return self.decision

    def _filter(self, request: Request, result: dict, method: str) -> tuple[dict, int]:
        if self.filter_error:
            raise ResponseError("the list filter failed")
        kept = [t for t in result["tools"] if not t["name"].startswith("hidden_")]
        return {**result, "tools": kept}, len(result["tools"]) - len(kept)

    def send(self, **field: Any) -> list[Any]:
        message = pb.ProcessingRequest(**field)
        if self.first:
            message.protocol_config.request_body_mode = self.modes[0]
            message.protocol_config.response_body_mode = self.modes[1]
            self.first = False
        return self.stream.handle(message)

    def request(self, body: bytes = LIST, *extra: tuple[str, str], path: str = "/mcp") -> list[Any]:
        answers = self.send(
            request_headers=_headers((":method", "POST"), (":path", path), *extra, end=not body)
        )
        if body:
            answers += self.send(request_body=pb.HttpBody(body=body, end_of_stream=True))
        return answers

    def response_headers(self, *pairs: tuple[str, str]) -> list[Any]:
        return self.send(response_headers=_headers((":status", "200"), *pairs))


def _sse(message: dict) -> bytes:
    return b"event: message\r\ndata: " + json.dumps(message).encode() + b"\r\n\r\n"


def test_a_streamed_request_body_is_judged_whole_and_every_chunk_answered() -> None:
    gateway = Gateway(request_mode=Mode.STREAMED)
    gateway.send(request_headers=_headers((":method", "POST"), (":path", "/mcp")))
    assert gateway.send(request_body=pb.HttpBody(body=LIST[:10])) == []
    assert gateway.send(request_body=pb.HttpBody(body=LIST[10:20])) == []
    answers = gateway.send(request_body=pb.HttpBody(body=LIST[20:], end_of_stream=True))
    assert [a.WhichOneof("response") for a in answers] == ["request_body"] * 3
    assert gateway.judged[0].body == LIST
    assert not any(a.request_body.response.HasField("body_mutation") for a in answers)


def test_a_full_duplex_request_body_goes_on_in_one_streamed_answer() -> None:
    gateway = Gateway(request_mode=Mode.FULL_DUPLEX_STREAMED)
    gateway.send(request_headers=_headers((":method", "POST")))
    assert gateway.send(request_body=pb.HttpBody(body=LIST[:5])) == []
    # agentgateway ends a body with trailers when the client sent some.
    gateway.send(request_body=pb.HttpBody(body=LIST[5:]))
    body, trailers = gateway.send(request_trailers=pb.HttpTrailers())
    streamed = body.request_body.response.body_mutation.streamed_response
    assert streamed.body == LIST and streamed.end_of_stream
    assert trailers.HasField("request_trailers")


def test_a_body_over_the_limit_is_judged_as_truncated() -> None:
    gateway = Gateway(settings=ExtProcSettings(max_request_bytes=16))
    gateway.request(LIST)
    (request,) = gateway.judged
    assert request.body_truncated and request.body == LIST[:17]


def test_the_request_phase_gives_the_pipeline_what_check_would() -> None:
    gateway = Gateway()
    metadata = base_pb2.Metadata()
    metadata.filter_metadata["envoy.filters.http.jwt_authn"].update({"sub": "agent-7"})
    message = pb.ProcessingRequest(
        request_headers=_headers(
            (":method", "POST"), (":path", "/mcp?x=1"), (":authority", "mcp.example"),
            ("x-multi", "a"), ("x-multi", "b"),
        ),
        metadata_context=metadata,
    )  # fmt: skip
    attributes = message.attributes["envoy.filters.http.ext_proc"]
    attributes.update(
        {
            "source.address": "[2001:db8::7]:4711",
            "destination.address": "10.0.0.2:8080",
            "request.id": "req-9",
            "connection.uri_san_peer_certificate": "spiffe://example.org/agent",
        }
    )
    gateway.stream.handle(message)
    gateway.send(request_body=pb.HttpBody(body=LIST, end_of_stream=True))
    (request,) = gateway.judged
    assert (request.method, request.path, request.query, request.host) == (
        "POST", "/mcp", "x=1", "mcp.example",
    )  # fmt: skip
    assert request.headers["x-multi"] == "a,b"
    assert (request.source.address, request.source.port) == ("2001:db8::7", 4711)
    assert request.source.principal == "spiffe://example.org/agent"
    assert (request.destination.address, request.destination.port) == ("10.0.0.2", 8080)
    assert request.request_id == "req-9"
    assert request.metadata["envoy.filters.http.jwt_authn"] == {"sub": "agent-7"}
    # Policies read the same `object` as with Check.
    http = request.check_request.attributes.request.http
    assert http.raw_body == LIST and http.size == len(LIST)


def test_a_denial_is_an_immediate_response_and_ends_the_stream() -> None:
    decision = deny(
        401,
        body='{"jsonrpc":"2.0","id":2,"error":{"code":-31401,"message":"who?"}}',
        headers=(HeaderMutation("www-authenticate", 'Bearer resource_metadata="x"'),),
    )
    gateway = Gateway(decision)
    *_, answer = gateway.request()
    reply = answer.immediate_response
    assert reply.status.code == 401
    assert reply.body == decision.body.encode()
    (option,) = reply.headers.set_headers
    assert (option.header.key, option.header.raw_value) == (
        "www-authenticate",
        b'Bearer resource_metadata="x"',
    )
    assert gateway.stream.finished


def test_allow_mutations_reach_the_upstream_request_and_the_response() -> None:
    decision = allow(
        headers=(HeaderMutation("x-agent", "a1", AppendAction.ADD_IF_ABSENT),),
        headers_to_remove=("authorization",),
        query_parameters_to_set=(("tenant", "t1"),),
        response_headers_to_add=(HeaderMutation("x-authz", "allowed"),),
    )
    gateway = Gateway(decision)
    *_, answer = gateway.request(LIST, path="/mcp?tenant=evil&k=v")
    mutation = answer.request_body.response.header_mutation
    assert list(mutation.remove_headers) == ["authorization"]
    sets = {o.header.key: (o.header.raw_value, o.append_action) for o in mutation.set_headers}
    assert sets["x-agent"] == (b"a1", AppendAction.ADD_IF_ABSENT)
    assert sets[":path"][0] == b"/mcp?k=v&tenant=t1"
    (headers,) = gateway.response_headers(("content-type", "application/json"))
    (added,) = headers.response_headers.response.header_mutation.set_headers
    assert added.header.key == "x-authz"


def test_a_response_without_a_request_phase_is_refused() -> None:
    gateway = Gateway()
    (answer,) = gateway.response_headers(("content-type", "application/json"))
    assert answer.immediate_response.status.code == 502
    assert answer.immediate_response.details == "authz_server_no_request_phase"


def test_a_compressed_list_response_is_refused() -> None:
    gateway = Gateway()
    gateway.request()
    (answer,) = gateway.response_headers(
        ("content-type", "application/json"), ("content-encoding", "gzip")
    )
    assert answer.immediate_response.details == "authz_server_encoded_list"
    error = json.loads(answer.immediate_response.body)
    assert error["id"] == 2 and error["error"]["code"] == -32603


def test_a_gateway_that_sends_no_response_body_cannot_serve_lists() -> None:
    gateway = Gateway(response_mode=Mode.NONE)
    gateway.request()
    (answer,) = gateway.response_headers(("content-type", "application/json"))
    assert answer.immediate_response.details == "authz_server_no_response_body"


def test_a_failing_filter_fails_the_response_closed() -> None:
    gateway = Gateway(filter_error=True, response_mode=Mode.BUFFERED)
    gateway.request()
    gateway.response_headers(("content-type", "application/json"))
    body = json.dumps({"jsonrpc": "2.0", "id": 2, "result": TOOLS}).encode()
    (answer,) = gateway.send(response_body=pb.HttpBody(body=body, end_of_stream=True))
    assert answer.immediate_response.details == "authz_server_unreadable_list"


def test_an_error_status_is_no_list() -> None:
    gateway = Gateway()
    gateway.request()
    (answer,) = gateway.send(
        response_headers=_headers((":status", "404"), ("content-type", "application/json"))
    )
    assert answer.mode_override.response_body_mode == Mode.NONE


def test_a_compressed_request_has_its_list_found_by_shape() -> None:
    gateway = Gateway(response_mode=Mode.BUFFERED)
    gateway.request(gzip.compress(LIST), ("content-encoding", "gzip"))
    gateway.response_headers(("content-type", "application/json"))
    body = json.dumps({"jsonrpc": "2.0", "id": 2, "result": TOOLS}).encode()
    (answer,) = gateway.send(response_body=pb.HttpBody(body=body, end_of_stream=True))
    assert json.loads(answer.response_body.response.body_mutation.body)["result"] == {
        "tools": [{"name": "read"}]
    }


def test_oversize_pass_filters_what_came_before_and_passes_the_rest() -> None:
    settings = ExtProcSettings(max_body_bytes=1024, oversize=Oversize.PASS)
    gateway = Gateway(settings=settings)
    gateway.request(
        b'[{"jsonrpc":"2.0","id":2,"method":"tools/list"},'
        b'{"jsonrpc":"2.0","id":3,"method":"tools/list"}]'
    )
    gateway.response_headers(("content-type", "text/event-stream"))
    small = _sse({"jsonrpc": "2.0", "id": 2, "result": TOOLS})
    large = _sse({"jsonrpc": "2.0", "id": 3, "result": {**TOOLS, "pad": "x" * 2000}})
    (first,) = gateway.send(response_body=pb.HttpBody(body=small + large[:100]))
    # The small list is filtered; the start of the large one is held.
    out = first.response_body.response.body_mutation.body
    assert b'"read"' in out and b"hidden_drop" not in out and not out.endswith(large[:100])
    # The large list outgrows the cap: it goes on as it came, and so does the rest.
    (second,) = gateway.send(response_body=pb.HttpBody(body=large[100:]))
    assert second.response_body.response.body_mutation.body == large
    later = _sse({"jsonrpc": "2.0", "id": 2, "result": TOOLS})
    (third,) = gateway.send(response_body=pb.HttpBody(body=later, end_of_stream=True))
    assert not third.response_body.response.HasField("body_mutation")


def test_full_duplex_trailers_let_out_what_was_held() -> None:
    gateway = Gateway(response_mode=Mode.FULL_DUPLEX_STREAMED)
    gateway.request()
    (headers,) = gateway.response_headers(("content-type", "text/event-stream"))
    assert "content-length" in headers.response_headers.response.header_mutation.remove_headers
    event = _sse({"jsonrpc": "2.0", "id": 2, "result": TOOLS})
    assert gateway.send(response_body=pb.HttpBody(body=event[:-2])) == []
    body, trailers = gateway.send(response_trailers=pb.HttpTrailers())
    streamed = body.response_body.response.body_mutation.streamed_response
    assert b"hidden_drop" not in streamed.body and b'"read"' in streamed.body
    assert not streamed.end_of_stream and trailers.HasField("response_trailers")
